//! `gather(x, indices) axis=a`: rows of x picked along `axis` by int32 indices: the result has
//! x's axes before `axis`, then the indices' axes, then x's axes after `axis`. An embedding lookup
//! is a table [V, D] gathered along 0 by ids [1, S]; MIL's `gather`.

use super::attr::Visit;
use super::{arity, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::MilOp;
use crate::mil::LowerError;
use crate::tensor::DType;

pub const NAME: &str = "gather";

pub const MIL: &[MilOp] = &[MilOp::new("gather", &["x", "indices"]).moves_data()];

pub fn infer(inputs: &[&TensorType], axis: &usize) -> Result<TensorType, String> {
    arity(inputs, 2..=2)?;
    let (x, i) = (inputs[0], inputs[1]);
    if *axis >= x.rank() || i.dtype != DType::I32 {
        return Err(format!(
            "needs int32 indices and an axis of x, got {x} by {i} along {axis}"
        ));
    }
    let mut shape = x.shape[..*axis].to_vec();
    shape.extend(i.shape.iter().cloned());
    shape.extend(x.shape[axis + 1..].iter().cloned());
    Ok(TensorType::new(x.dtype, shape))
}

pub fn eval(args: &[&Array], _sizes: &Sizes, axis: &usize) -> Result<Array, String> {
    kernels::gather(args[0], args[1], *axis)
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, axis: &mut usize) -> Result<(), String> {
    v.attr("axis", axis)
}

pub fn lower(e: &mut Emitter, id: ValueId, axis: &usize) -> Result<(), LowerError> {
    let out = e.name(id);
    let a = e.int(&out, "axis", *axis);
    let (x, i) = (e.input(id, 0), e.input(id, 1));
    e.op(id, "gather", vec![("x", x), ("indices", i), ("axis", a)])
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %t: fp32[4,2] = const([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])\n  %i: int32[1,S] = input(\"ids\")\n  %y: fp32[1,S,2] = gather(%t, %i) axis=0\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
