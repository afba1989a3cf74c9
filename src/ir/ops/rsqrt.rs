//! `rsqrt(x) epsilon=e`: `1 / sqrt(x + epsilon)`, elementwise (group norm's lowering uses it).
//! MIL's `rsqrt` takes the same epsilon, in x's dtype.

use super::attr::Visit;
use super::{arity, float, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, X};
use crate::mil::LowerError;

pub const NAME: &str = "rsqrt";

pub const MIL: &[MilOp] = &[MilOp::new("rsqrt", X)];

pub fn infer(inputs: &[&TensorType], _epsilon: &f32) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    float(inputs[0])?;
    Ok(inputs[0].clone())
}

pub fn eval(args: &[&Array], _sizes: &Sizes, epsilon: &f32) -> Result<Array, String> {
    let e = *epsilon;
    Ok(kernels::map(args[0], move |x| 1.0 / (x + e).sqrt()))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, epsilon: &mut f32) -> Result<(), String> {
    v.attr("epsilon", epsilon)
}

pub fn lower(e: &mut Emitter, id: ValueId, epsilon: &f32) -> Result<(), LowerError> {
    let out = e.name(id);
    let dtype = e.g.node(id).ty.dtype;
    let eps = e.scalar(&out, "epsilon", *epsilon, dtype);
    let x = e.input(id, 0);
    e.op(id, "rsqrt", vec![("x", x), ("epsilon", eps)])
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[2,H] = input(\"x\")\n  %y: fp32[2,H] = rsqrt(%x) epsilon=1e-5\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
