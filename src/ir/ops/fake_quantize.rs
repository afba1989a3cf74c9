//! `fake_quantize(x) scale=s zero_point=z`: an int8 quantize–dequantize pair: `q =
//! clamp(round_half_even(x / scale) + zero_point, -128, 127)`, then `(q - zero_point) * scale`, as
//! MIL's iOS17 `quantize` and `dequantize` define them. The IR keeps the result in x's float type
//! (the int8 values exist only between the two MIL ops); `scale` is positive, finite and exact in
//! x's dtype, so the evaluator and the lowered package use the same number. Core ML fuses the
//! `dequantize` into the conv or add that reads it (int8 compute on the Neural Engine).

use super::attr::Visit;
use super::{arity, float, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::MilOp;
use crate::mil::target::Target;
use crate::mil::values::{raw_bytes_value, raw_tensor_type, string_value, tensor_type};
use crate::mil::LowerError;
use crate::proto::mil_spec as pb;
use crate::tensor::DType;

pub const NAME: &str = "fake_quantize";

pub const MIL: &[MilOp] = &[
    MilOp::new("quantize", &["input"]).since(Target::Ios17),
    MilOp::new("dequantize", &["input"]).since(Target::Ios17),
];

pub fn infer(inputs: &[&TensorType], scale: &f32, _zero_point: &i8) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    let x = inputs[0];
    float(x)?;
    let exact = x.dtype != DType::F16 || half::f16::from_f32(*scale).to_f32() == *scale;
    if !(scale.is_finite() && *scale > 0.0 && exact) {
        return Err(format!(
            "scale {scale:?} must be positive, finite and exact in {}",
            x.dtype
        ));
    }
    Ok(x.clone())
}

pub fn eval(
    args: &[&Array],
    _sizes: &Sizes,
    scale: &f32,
    zero_point: &i8,
) -> Result<Array, String> {
    Ok(kernels::fake_quantize_i8(args[0], *scale, *zero_point))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, scale: &mut f32, zero_point: &mut i8) -> Result<(), String> {
    v.attr("scale", scale)?;
    v.attr("zero_point", zero_point)
}

pub fn lower(e: &mut Emitter, id: ValueId, scale: &f32, zero_point: &i8) -> Result<(), LowerError> {
    // iOS17 `quantize(input, zero_point, scale, output_dtype="int8")` to an int8 tensor, then
    // `dequantize(input, zero_point, scale)` back to the float type. Both ops read the same scalar
    // scale (in x's dtype) and int8 zero point.
    let out = e.name(id);
    let x = e.input(id, 0);
    let ty = e.g.node(id).ty.clone();
    e.check_target("quantize", &out)?;
    e.check_target("dequantize", &out)?;
    let s = e.scalar(&out, "scale", *scale, ty.dtype);
    let zp = e.konst(
        format!("{out}_zero_point"),
        raw_bytes_value(pb::DataType::Int8, &[], vec![*zero_point as u8]),
    );
    let dt = e.konst(format!("{out}_output_dtype"), string_value("int8"));
    let q = format!("{out}_int8");
    e.push(
        "quantize",
        vec![
            ("input", x),
            ("zero_point", zp.clone()),
            ("scale", s.clone()),
            ("output_dtype", dt),
        ],
        &q,
        raw_tensor_type(pb::DataType::Int8, &ty.shape),
    );
    e.push(
        "dequantize",
        vec![("input", q), ("zero_point", zp), ("scale", s)],
        &out,
        tensor_type(&ty),
    );
    Ok(())
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[2,H] = input(\"x\")\n  %y: fp32[2,H] = fake_quantize(%x) scale=0.5 zero_point=-3\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
