//! `reduce_mean(x) axes=[..] keep_dims=b`: the mean over `axes`, which are kept as size 1 or
//! removed; MIL's `reduce_mean`.

use super::attr::Visit;
use super::{arity, float, Sizes};
use crate::ir::types::{Dim, TensorType};
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, X};
use crate::mil::LowerError;

pub const NAME: &str = "reduce_mean";

pub const MIL: &[MilOp] = &[MilOp::new("reduce_mean", X)];

pub fn infer(
    inputs: &[&TensorType],
    axes: &[usize],
    keep_dims: &bool,
) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    let x = inputs[0];
    float(x)?;
    if axes.iter().any(|&a| a >= x.rank()) {
        return Err(format!("axes {axes:?} out of range for {x}"));
    }
    let shape = (0..x.rank())
        .filter_map(|i| match (axes.contains(&i), keep_dims) {
            (false, _) => Some(x.shape[i].clone()),
            (true, true) => Some(Dim::Known(1)),
            (true, false) => None,
        })
        .collect();
    Ok(TensorType::new(x.dtype, shape))
}

pub fn eval(
    args: &[&Array],
    _sizes: &Sizes,
    axes: &[usize],
    keep_dims: &bool,
) -> Result<Array, String> {
    Ok(kernels::reduce_mean(args[0], axes, *keep_dims))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(
    v: &mut impl Visit,
    axes: &mut Vec<usize>,
    keep_dims: &mut bool,
) -> Result<(), String> {
    v.attr("axes", axes)?;
    v.attr("keep_dims", keep_dims)
}

pub fn lower(
    e: &mut Emitter,
    id: ValueId,
    axes: &[usize],
    keep_dims: &bool,
) -> Result<(), LowerError> {
    let out = e.name(id);
    let a = e.ints(&out, "axes", axes);
    let k = e.flag(&out, "keep_dims", *keep_dims);
    let x = e.input(id, 0);
    e.op(
        id,
        "reduce_mean",
        vec![("x", x), ("axes", a), ("keep_dims", k)],
    )
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[1,4,H,W] = input(\"x\")\n  %y: fp32[1,4,1,1] = reduce_mean(%x) axes=[2, 3] keep_dims=true\n  return y=%y\n}\n",
        "graph t {\n  %x: fp32[2,3] = input(\"x\")\n  %y: fp32[2] = reduce_mean(%x) axes=[1] keep_dims=false\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
