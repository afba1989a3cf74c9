//! `clip(x) min=a max=b`: `min(max(x, min), max)`, elementwise; MIL's `clip` with `alpha` and
//! `beta` in x's dtype.

use super::attr::Visit;
use super::{arity, float, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, X};
use crate::mil::LowerError;

pub const NAME: &str = "clip";

pub const MIL: &[MilOp] = &[MilOp::new("clip", X)];

pub fn infer(inputs: &[&TensorType], _min: &f32, _max: &f32) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    float(inputs[0])?;
    Ok(inputs[0].clone())
}

pub fn eval(args: &[&Array], _sizes: &Sizes, min: &f32, max: &f32) -> Result<Array, String> {
    Ok(kernels::clip(args[0], *min, *max))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, min: &mut f32, max: &mut f32) -> Result<(), String> {
    v.attr("min", min)?;
    v.attr("max", max)
}

pub fn lower(e: &mut Emitter, id: ValueId, min: &f32, max: &f32) -> Result<(), LowerError> {
    let out = e.name(id);
    let dtype = e.g.node(id).ty.dtype;
    let lo = e.scalar(&out, "alpha", *min, dtype);
    let hi = e.scalar(&out, "beta", *max, dtype);
    let x = e.input(id, 0);
    e.op(id, "clip", vec![("x", x), ("alpha", lo), ("beta", hi)])
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[2,H] = input(\"x\")\n  %y: fp32[2,H] = clip(%x) min=-1.0 max=6.0\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
