//! `softmax(x) axis=a`: `exp(x - max) / sum(exp(x - max))` along `axis`; MIL's `softmax`.

use super::attr::Visit;
use super::{arity, float, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, X};
use crate::mil::LowerError;

pub const NAME: &str = "softmax";

pub const MIL: &[MilOp] = &[MilOp::new("softmax", X)];

pub fn infer(inputs: &[&TensorType], axis: &usize) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    float(inputs[0])?;
    if *axis >= inputs[0].rank() {
        return Err(format!("axis {axis} out of range for {}", inputs[0]));
    }
    Ok(inputs[0].clone())
}

pub fn eval(args: &[&Array], _sizes: &Sizes, axis: &usize) -> Result<Array, String> {
    Ok(kernels::softmax(args[0], *axis))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, axis: &mut usize) -> Result<(), String> {
    v.attr("axis", axis)
}

pub fn lower(e: &mut Emitter, id: ValueId, axis: &usize) -> Result<(), LowerError> {
    let out = e.name(id);
    let a = e.int(&out, "axis", *axis);
    let x = e.input(id, 0);
    e.op(id, "softmax", vec![("x", x), ("axis", a)])
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[2,H] = input(\"x\")\n  %y: fp32[2,H] = softmax(%x) axis=1\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
