//! `input("name")`: a graph input, named as the model's feature. Its type is declared by the
//! graph, not inferred; the evaluator binds its value (and the symbols of its shape) and the
//! lowering makes it a function input, so the op itself computes and emits nothing.

use super::attr::Visit;
use super::Sizes;
use crate::ir::{TensorType, ValueId};
use crate::kernels::Array;
use crate::mil::emit::Emitter;
use crate::mil::ops::MilOp;
use crate::mil::LowerError;

pub const NAME: &str = "input";

pub const MIL: &[MilOp] = &[];

pub fn infer(_inputs: &[&TensorType], _name: &str) -> Result<TensorType, String> {
    Err("an input's type is declared, not inferred".into())
}

pub fn eval(_args: &[&Array], _sizes: &Sizes, name: &str) -> Result<Array, String> {
    Err(format!("input {name:?} is bound by the caller"))
}

/// The feature name is written inside the parentheses, not as an attribute.
pub fn attrs(_v: &mut impl Visit, _name: &mut String) -> Result<(), String> {
    Ok(())
}

pub fn lower(e: &mut Emitter, id: ValueId, _name: &str) -> Result<(), LowerError> {
    Err(LowerError::Unlowered {
        node: e.g.node(id).name.clone(),
        op: "input (a function input, not an op)",
    })
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    vec!["graph t {\n  %x: fp32[1,3,H,W] = input(\"x\")\n  return y=%x\n}\n".into()]
}
