//! `argmax(x) axis=a`: the int32 index of the first largest element along `axis`, which is
//! removed; MIL's `reduce_argmax` with `keep_dims=false`. Not known to run on the Neural
//! Engine.

use super::attr::Visit;
use super::{arity, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, NOT_KNOWN, X};
use crate::mil::LowerError;
use crate::tensor::DType;

pub const NAME: &str = "argmax";

pub const MIL: &[MilOp] = &[MilOp::new("reduce_argmax", X).off_ane(NOT_KNOWN)];

pub fn infer(inputs: &[&TensorType], axis: &usize) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    let x = inputs[0];
    if *axis >= x.rank() {
        return Err(format!("axis {axis} out of range for {x}"));
    }
    let mut shape = x.shape.clone();
    shape.remove(*axis);
    Ok(TensorType::new(DType::I32, shape))
}

pub fn eval(args: &[&Array], _sizes: &Sizes, axis: &usize) -> Result<Array, String> {
    Ok(kernels::argmax(args[0], *axis))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, axis: &mut usize) -> Result<(), String> {
    v.attr("axis", axis)
}

pub fn lower(e: &mut Emitter, id: ValueId, axis: &usize) -> Result<(), LowerError> {
    let out = e.name(id);
    let a = e.int(&out, "axis", *axis);
    let k = e.flag(&out, "keep_dims", false);
    let x = e.input(id, 0);
    e.op(
        id,
        "reduce_argmax",
        vec![("x", x), ("axis", a), ("keep_dims", k)],
    )
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[2,S] = input(\"x\")\n  %y: int32[2] = argmax(%x) axis=1\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
