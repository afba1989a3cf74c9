//! `tile(x) reps=[..]`: x repeated `reps[i]` times along each axis i; MIL's `tile`.

use super::attr::Visit;
use super::{arity, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, X};
use crate::mil::LowerError;

pub const NAME: &str = "tile";

pub const MIL: &[MilOp] = &[MilOp::new("tile", X).moves_data()];

pub fn infer(inputs: &[&TensorType], reps: &[usize]) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    let x = inputs[0];
    if reps.len() != x.rank() {
        return Err(format!("reps {reps:?} do not match {x}"));
    }
    let shape = x
        .shape
        .iter()
        .zip(reps)
        .map(|(d, &r)| d.scaled(r))
        .collect();
    Ok(TensorType::new(x.dtype, shape))
}

pub fn eval(args: &[&Array], _sizes: &Sizes, reps: &[usize]) -> Result<Array, String> {
    Ok(kernels::tile(args[0], reps))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, reps: &mut Vec<usize>) -> Result<(), String> {
    v.attr("reps", reps)
}

pub fn lower(e: &mut Emitter, id: ValueId, reps: &[usize]) -> Result<(), LowerError> {
    let out = e.name(id);
    let x = e.input(id, 0);
    let r = e.ints(&out, "reps", reps);
    e.op(id, "tile", vec![("x", x), ("reps", r)])
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[1,2,H] = input(\"x\")\n  %y: fp32[3,2,2*H] = tile(%x) reps=[3, 1, 2]\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
