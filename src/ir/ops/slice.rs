//! `slice(x) axis=a range=b..e`: elements `b..e` of `axis` (static bounds, so the axis has a
//! known size); MIL's `slice_by_index` with every other axis taken whole (`end_mask`).

use super::attr::Visit;
use super::{arity, Sizes};
use crate::ir::types::{Dim, TensorType};
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, X};
use crate::mil::values::bools_value;
use crate::mil::LowerError;

pub const NAME: &str = "slice";

pub const MIL: &[MilOp] = &[MilOp::new("slice_by_index", X).moves_data()];

pub fn infer(
    inputs: &[&TensorType],
    axis: &usize,
    begin: &usize,
    end: &usize,
) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    let x = inputs[0];
    let n = x
        .shape
        .get(*axis)
        .and_then(Dim::known)
        .ok_or_else(|| format!("axis {axis} of {x} must exist and have a known size"))?;
    if begin >= end || *end > n {
        return Err(format!("{begin}..{end} is not a slice of {n} elements"));
    }
    let mut shape = x.shape.clone();
    shape[*axis] = Dim::Known(end - begin);
    Ok(TensorType::new(x.dtype, shape))
}

pub fn eval(
    args: &[&Array],
    _sizes: &Sizes,
    axis: &usize,
    begin: &usize,
    end: &usize,
) -> Result<Array, String> {
    let x = args[0];
    let mut b = vec![0; x.shape.len()];
    let mut e = x.shape.clone();
    b[*axis] = *begin;
    e[*axis] = *end;
    Ok(kernels::slice(x, &b, &e, &vec![1; x.shape.len()]))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(
    v: &mut impl Visit,
    axis: &mut usize,
    begin: &mut usize,
    end: &mut usize,
) -> Result<(), String> {
    v.attr("axis", axis)?;
    let mut range = *begin..*end;
    v.attr("range", &mut range)?;
    (*begin, *end) = (range.start, range.end);
    Ok(())
}

pub fn lower(
    e: &mut Emitter,
    id: ValueId,
    axis: &usize,
    begin: &usize,
    end: &usize,
) -> Result<(), LowerError> {
    let out = e.name(id);
    let rank = e.g.node(id).ty.rank();
    let mut b = vec![0usize; rank];
    let mut en = vec![0usize; rank];
    let mut end_mask = vec![true; rank];
    b[*axis] = *begin;
    en[*axis] = *end;
    end_mask[*axis] = false;
    let b = e.ints(&out, "begin", &b);
    let en = e.ints(&out, "end", &en);
    let m = e.konst(format!("{out}_end_mask"), bools_value(&end_mask));
    let x = e.input(id, 0);
    e.op(
        id,
        "slice_by_index",
        vec![("x", x), ("begin", b), ("end", en), ("end_mask", m)],
    )
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[1,6,H] = input(\"x\")\n  %y: fp32[1,3,H] = slice(%x) axis=1 range=2..5\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
