//! `transpose(x) perm=[..]`: axis i of the result is axis `perm[i]` of x; MIL's `transpose`
//! (a memory copy on the Neural Engine, which the report hints at).

use super::attr::Visit;
use super::{arity, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, X};
use crate::mil::LowerError;

pub const NAME: &str = "transpose";

pub const MIL: &[MilOp] = &[MilOp::new("transpose", X).moves_data()];

pub fn infer(inputs: &[&TensorType], perm: &[usize]) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    let x = inputs[0];
    let mut seen = perm.to_vec();
    seen.sort_unstable();
    if seen != (0..x.rank()).collect::<Vec<_>>() {
        return Err(format!("perm {perm:?} is not a permutation of {x}'s axes"));
    }
    Ok(TensorType::new(
        x.dtype,
        perm.iter().map(|&p| x.shape[p].clone()).collect(),
    ))
}

pub fn eval(args: &[&Array], _sizes: &Sizes, perm: &[usize]) -> Result<Array, String> {
    Ok(kernels::transpose(args[0], perm))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, perm: &mut Vec<usize>) -> Result<(), String> {
    v.attr("perm", perm)
}

pub fn lower(e: &mut Emitter, id: ValueId, perm: &[usize]) -> Result<(), LowerError> {
    let out = e.name(id);
    let x = e.input(id, 0);
    let p = e.ints(&out, "perm", perm);
    e.op(id, "transpose", vec![("x", x), ("perm", p)])
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[1,2,H] = input(\"x\")\n  %y: fp32[H,1,2] = transpose(%x) perm=[2, 0, 1]\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
