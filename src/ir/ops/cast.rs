//! `cast(x) dtype=d`: x converted to `dtype`. To fp16 it rounds (the evaluator rounds the
//! same way), to int32 it truncates. MIL's `cast` between fp32 and fp16 runs outside the Neural
//! Engine (fp32 model I/O, the edges of fp32 regions), which the report says.

use super::attr::Visit;
use super::{arity, Sizes};
use crate::ir::eval::round_f16;
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::Array;
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, X};
use crate::mil::values::string_value;
use crate::mil::LowerError;
use crate::tensor::DType;

pub const NAME: &str = "cast";

pub const MIL: &[MilOp] = &[MilOp::new("cast", X).off_ane(CAST_OFF_ANE).moves_data()];

pub fn infer(inputs: &[&TensorType], dtype: &DType) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    Ok(inputs[0].with_dtype(*dtype))
}

pub fn eval(args: &[&Array], _sizes: &Sizes, dtype: &DType) -> Result<Array, String> {
    let mut a = args[0].clone();
    match dtype {
        DType::F16 => round_f16(&mut a),
        DType::I32 => a.data.iter_mut().for_each(|x| *x = x.trunc()),
        DType::F32 | DType::Bool => {}
    }
    Ok(a)
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, dtype: &mut DType) -> Result<(), String> {
    v.attr("dtype", dtype)
}

pub fn lower(e: &mut Emitter, id: ValueId, dtype: &DType) -> Result<(), LowerError> {
    let out = e.name(id);
    let d = e.konst(format!("{out}_dtype"), string_value(dtype.mil_name()));
    let x = e.input(id, 0);
    e.op(id, "cast", vec![("x", x), ("dtype", d)])
}

const CAST_OFF_ANE: &str =
    "cast between fp32 and fp16 runs outside the ANE (fp32 model I/O, avoided with fp16 I/O; or the edge of a region the model keeps fp32)";

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[2,H] = input(\"x\")\n  %y: fp16[2,H] = cast(%x) dtype=fp16\n  return y=%y\n}\n",
        "graph t {\n  %x: fp32[2] = input(\"x\")\n  %y: int32[2] = cast(%x) dtype=int32\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
