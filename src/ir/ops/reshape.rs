//! `reshape(x) shape=[..]`: x with a target shape of the same element count. Dimensions may be
//! symbolic (`H*W`); the evaluator resolves them with the bound sizes, the lowering writes the one
//! symbolic dimension as MIL's `-1` (two or more cannot lower). A reshape that changes the last
//! axis is a memory copy on the Neural Engine, which the report hints at.

use super::attr::Visit;
use super::{arity, Sizes};
use crate::ir::types::{Dim, TensorType};
use crate::ir::ValueId;
use crate::kernels::Array;
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, X};
use crate::mil::values::ints_value;
use crate::mil::LowerError;
use std::collections::BTreeMap;

pub const NAME: &str = "reshape";

pub const MIL: &[MilOp] = &[MilOp::new("reshape", X).moves_data()];

pub fn infer(inputs: &[&TensorType], shape: &[Dim]) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    let x = inputs[0];
    let to = TensorType::new(x.dtype, shape.to_vec());
    if x.elements() != to.elements() {
        return Err(format!("cannot reshape {x} to {to}"));
    }
    Ok(to)
}

pub fn eval(args: &[&Array], sizes: &Sizes, shape: &[Dim]) -> Result<Array, String> {
    let shape = reshape_target(shape, &args[0].shape, sizes)?;
    Ok(args[0].clone().reshape(shape))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, shape: &mut Vec<Dim>) -> Result<(), String> {
    v.attr("shape", shape)
}

pub fn lower(e: &mut Emitter, id: ValueId, shape: &[Dim]) -> Result<(), LowerError> {
    let target = reshape_spec(shape).ok_or_else(|| LowerError::Unlowered {
        node: e.g.node(id).name.clone(),
        op: "reshape with more than one symbolic dimension",
    })?;
    let out = e.name(id);
    let shape = e.konst(format!("{out}_shape"), ints_value(&[target.len()], target));
    let x = e.input(id, 0);
    e.op(id, "reshape", vec![("x", x), ("shape", shape)])
}

/// The target shape with its symbols bound (None if a quotient is not whole).
pub fn bind(shape: &[Dim], b: &BTreeMap<String, usize>) -> Option<Vec<Dim>> {
    shape.iter().map(|d| d.bind(b)).collect()
}

/// The concrete target of a reshape: symbolic dimensions resolve with the bound sizes, or, when
/// exactly one does not, from the input's element count (as a MIL reshape's `-1` would).
fn reshape_target(
    shape: &[Dim],
    input: &[usize],
    sizes: &BTreeMap<String, usize>,
) -> Result<Vec<usize>, String> {
    let n: usize = input.iter().product();
    let known: Vec<Option<usize>> = shape
        .iter()
        .map(|d| d.resolve(&|s| sizes.get(s).copied()))
        .collect();
    let unknown = known.iter().filter(|d| d.is_none()).count();
    let rest: usize = known.iter().flatten().product();
    let out: Vec<usize> = match unknown {
        0 => known.into_iter().flatten().collect(),
        1 if rest > 0 && n % rest == 0 => known.iter().map(|d| d.unwrap_or(n / rest)).collect(),
        _ => {
            return Err(format!(
                "reshape of {input:?} to {shape:?}: more than one dimension depends on the input"
            ))
        }
    };
    if out.iter().product::<usize>() != n {
        return Err(format!("cannot reshape {input:?} to {out:?}"));
    }
    Ok(out)
}

/// A MIL reshape target: known sizes, and `-1` for the one symbolic dimension (MIL infers it from
/// the element count); None with two or more symbolic dimensions.
fn reshape_spec(shape: &[Dim]) -> Option<Vec<i32>> {
    if shape.iter().filter(|d| d.known().is_none()).count() > 1 {
        return None;
    }
    shape
        .iter()
        .map(|d| match d.known() {
            Some(n) => i32::try_from(n).ok(),
            None => Some(-1),
        })
        .collect()
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[1,8,H,W] = input(\"x\")\n  %y: fp32[1,2,4,H*W] = reshape(%x) shape=[1, 2, 4, H*W]\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
