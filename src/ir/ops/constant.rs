//! `const(...)`: constant data, which owns its values. Weights change representation (dense,
//! palettized, linearly quantized), never identity: every form has the same type and stands for
//! the same (approximate) values. The text form writes a constant's values inside the
//! parentheses (see [`crate::ir::print`]); the lowering picks the MIL form for the target.

use super::attr::Visit;
use super::{arity, Sizes};
use crate::ir::{TensorType, ValueId};
use crate::kernels::Array;
use crate::mil::emit::Emitter;
use crate::mil::ops::MilOp;
use crate::mil::target::Target;
use crate::mil::values::{ints_value, raw_bytes_value, tensor_type};
use crate::mil::LowerError;
use crate::package::BlobDType;
use crate::proto::mil_spec as pb;
use crate::tensor::{DType, Tensor};
use crate::weights::Spilled;

/// Constant data. Weights change representation (dense, palettized, linearly quantized), never
/// identity: every form has the same type and stands for the same (approximate) values.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstData {
    Dense(Tensor),
    /// An fp32 constant whose values are all exactly fp16, stored as fp16: weights read from an
    /// fp16 file keep half the memory in the graph. An fp16 build keeps the bits as they are
    /// (`cast_fp16`); elsewhere the values are widened one constant at a time where they are
    /// needed (evaluation, folding, compression, lowering), never the whole model at once.
    Half(Tensor),
    /// A weight set aside in a spill file as it was read ([`crate::weights::spill`]), typed
    /// `dtype` (fp32, or fp16 once `cast_fp16` has run: the stored values are rounded when
    /// read, as a dense constant's would have been). Read back where its values are needed,
    /// one constant at a time.
    Spilled {
        data: Spilled,
        dtype: DType,
    },
    Palettized(Palettized),
    Quantized(Quantized),
}

/// `value[e] = lut[g][indices[e]]`, where `g` is the group of `e`'s output channel (axis 0):
/// `shape[0] / group_size` look-up tables of `2^bits` entries each.
#[derive(Clone, Debug, PartialEq)]
pub struct Palettized {
    pub shape: Vec<usize>,
    pub bits: u32,
    /// Output channels per table (`shape[0]` for one table per tensor).
    pub group_size: usize,
    /// `[groups, 2^bits]`, in the model's dtype; unused entries are zero.
    pub lut: Tensor,
    pub indices: Vec<u16>,
}

/// Linear quantization: `value = scale * (q - zero_point)` per block (see
/// [`crate::compress::quantize::Quantized`]), with scales in `dtype`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub q: crate::compress::quantize::Quantized,
    pub dtype: DType,
}

impl ConstData {
    pub fn ty(&self) -> TensorType {
        match self {
            ConstData::Dense(t) => TensorType::known(t.dtype(), &t.shape),
            ConstData::Half(t) => TensorType::known(DType::F32, &t.shape),
            ConstData::Spilled { data, dtype } => TensorType::known(*dtype, &data.shape),
            ConstData::Palettized(p) => TensorType::known(p.lut.dtype(), &p.shape),
            ConstData::Quantized(q) => TensorType::known(q.dtype, &q.q.shape),
        }
    }

    /// The values as the model computes with them (decompressed for compressed forms, read
    /// back for spilled ones; only that can fail).
    pub fn dense(&self) -> Result<std::borrow::Cow<'_, Tensor>, String> {
        use std::borrow::Cow;
        Ok(match self {
            ConstData::Dense(t) => Cow::Borrowed(t),
            ConstData::Half(t) => Cow::Owned(t.cast(DType::F32)),
            ConstData::Spilled { data, dtype } => {
                let t = read_back(data)?;
                Cow::Owned(match t.dtype() == *dtype {
                    true => t,
                    false => t.cast(*dtype),
                })
            }
            ConstData::Palettized(p) => {
                let lut = p.lut.to_f32();
                let table = 1usize << p.bits;
                let per_group = p.group_size * p.shape[1..].iter().product::<usize>();
                let values = p
                    .indices
                    .iter()
                    .enumerate()
                    .map(|(e, &i)| lut[(e / per_group) * table + i as usize])
                    .collect();
                Cow::Owned(Tensor::f32(p.shape.clone(), values).cast(p.lut.dtype()))
            }
            ConstData::Quantized(q) => {
                Cow::Owned(Tensor::f32(q.q.shape.clone(), q.q.dequantize()).cast(q.dtype))
            }
        })
    }

    /// This constant with its values in memory: a spilled one read back (as [`ConstData::Half`]
    /// when stored as f16 and typed fp32, as a graph built from memory holds it), any other as
    /// it is. For the passes that change values (compression, folding, adapters).
    pub fn in_memory(&self) -> Result<std::borrow::Cow<'_, ConstData>, String> {
        use std::borrow::Cow;
        let ConstData::Spilled { data, dtype } = self else {
            return Ok(Cow::Borrowed(self));
        };
        let t = read_back(data)?;
        Ok(Cow::Owned(match (t.dtype(), *dtype) {
            (DType::F16, DType::F32) => ConstData::Half(t),
            (stored, dtype) if stored == dtype => ConstData::Dense(t),
            (_, dtype) => ConstData::Dense(t.cast(dtype)),
        }))
    }
}

fn read_back(data: &Spilled) -> Result<Tensor, String> {
    data.read()
        .map_err(|e| match crate::weights::deferred::is_change_failure(&e) {
            true => e.to_string(),
            false => format!("cannot read the weight back from its temporary file: {e}"),
        })
}

pub const MIL: &[MilOp] = &[
    MilOp::new("constexpr_lut_to_dense", &["indices", "lut"]),
    MilOp::new("constexpr_affine_dequantize", &["quantized_data"]),
    MilOp::new("constexpr_blockwise_shift_scale", &["data"]).since(Target::Ios18),
];

pub fn name(_c: &ConstData) -> &'static str {
    "const"
}

/// Constants are read by the parser from their own syntax, never from a bare name.
pub fn from_name(_name: &str) -> Option<ConstData> {
    None
}

pub fn infer(inputs: &[&TensorType], c: &ConstData) -> Result<TensorType, String> {
    arity(inputs, 0..=0)?;
    Ok(c.ty())
}

pub fn eval(_args: &[&Array], _sizes: &Sizes, c: &ConstData) -> Result<Array, String> {
    let t = c.dense()?;
    Ok(Array::new(t.shape.clone(), t.to_f32()))
}

/// The data is written inside the parentheses, not as attributes.
pub fn attrs(_v: &mut impl Visit, _c: &mut ConstData) -> Result<(), String> {
    Ok(())
}

pub fn lower(e: &mut Emitter, id: ValueId, c: &ConstData) -> Result<(), LowerError> {
    let out = e.name(id);
    let g = e.g;
    let ty = &g.node(id).ty;
    match c {
        ConstData::Dense(t) => {
            let val = e.tensor_value(t);
            e.konst(out, val);
            Ok(())
        }
        // An fp32 build, or an fp16 build's fp32 region (elsewhere it made them dense fp16).
        ConstData::Half(t) => {
            let val = e.tensor_value(&t.cast(DType::F32));
            e.konst(out, val);
            Ok(())
        }
        // Read back, rounded to its type if that is fp16, written, and dropped: one weight in
        // memory at a time.
        ConstData::Spilled { .. } => {
            let t = c.dense().map_err(|why| LowerError::Weight {
                node: out.clone(),
                why,
            })?;
            let val = e.tensor_value(&t);
            e.konst(out, val);
            Ok(())
        }
        ConstData::Palettized(p) => palettized(e, &out, ty, p),
        ConstData::Quantized(q) => quantized(e, &out, ty, q),
    }
}

fn constexpr(
    e: &mut Emitter,
    kind: &'static str,
    out: &str,
    ty: &TensorType,
    inputs: Vec<(&str, String)>,
) -> Result<(), LowerError> {
    e.check_target(kind, out)?;
    e.push(kind, inputs, out, tensor_type(ty));
    Ok(())
}

/// iOS16/17: `constexpr_lut_to_dense(indices: packed uint8, lut: [2^bits], shape: uint32)`,
/// one table per tensor. iOS18: `constexpr_lut_to_dense(indices: uintN[shape],
/// lut: [groups, 1, …, 2^bits, 1])`, one table per group of output channels.
fn palettized(
    e: &mut Emitter,
    out: &str,
    ty: &TensorType,
    p: &Palettized,
) -> Result<(), LowerError> {
    let table = 1usize << p.bits;
    let groups = p.shape[0] / p.group_size;
    let packed = crate::compress::pack::pack_bits(&p.indices, p.bits);
    let bad = |why: String| {
        Err(LowerError::Compression {
            node: out.to_string(),
            why,
        })
    };
    if e.target < Target::Ios18 {
        if groups != 1 {
            return bad(format!(
                "{groups} look-up tables (per-grouped-channel) need target ios18 or newer"
            ));
        }
        if ![1, 2, 4, 6, 8].contains(&p.bits) {
            return bad(format!(
                "{}-bit palettes need target ios18 or newer",
                p.bits
            ));
        }
        let n = packed.len();
        let indices = e.raw_const(
            format!("{out}_indices"),
            pb::DataType::Uint8,
            &[n],
            packed,
            BlobDType::U8,
        );
        let lut = e.tensor_value(&p.lut.reshaped(vec![table]));
        let lut = e.konst(format!("{out}_lut"), lut);
        let shape: Vec<u8> = p
            .shape
            .iter()
            .flat_map(|&d| (d as u32).to_le_bytes())
            .collect();
        let shape = e.konst(
            format!("{out}_shape"),
            raw_bytes_value(pb::DataType::Uint32, &[p.shape.len()], shape),
        );
        constexpr(
            e,
            "constexpr_lut_to_dense",
            out,
            ty,
            vec![("indices", indices), ("lut", lut), ("shape", shape)],
        )?;
    } else {
        let (dt, blob) = match p.bits {
            1 => (pb::DataType::Uint1, BlobDType::U1),
            2 => (pb::DataType::Uint2, BlobDType::U2),
            3 => (pb::DataType::Uint3, BlobDType::U3),
            4 => (pb::DataType::Uint4, BlobDType::U4),
            6 => (pb::DataType::Uint6, BlobDType::U6),
            8 => (pb::DataType::Uint8, BlobDType::U8),
            b => return bad(format!("{b}-bit palettes are not supported")),
        };
        let indices = e.raw_const(format!("{out}_indices"), dt, &p.shape, packed, blob);
        let mut lut_shape = vec![groups];
        lut_shape.extend(std::iter::repeat_n(1, p.shape.len() - 1));
        lut_shape.extend([table, 1]);
        let lut = e.tensor_value(&p.lut.reshaped(lut_shape));
        let lut = e.konst(format!("{out}_lut"), lut);
        constexpr(
            e,
            "constexpr_lut_to_dense",
            out,
            ty,
            vec![("indices", indices), ("lut", lut)],
        )?;
    }
    Ok(())
}

/// iOS16/17: `constexpr_affine_dequantize` (per output channel); iOS18:
/// `constexpr_blockwise_shift_scale` (any block shape).
fn quantized(e: &mut Emitter, out: &str, ty: &TensorType, q: &Quantized) -> Result<(), LowerError> {
    use crate::compress::quantize::QuantData;
    let shape = &q.q.shape;
    let (dt, blob, data, zero_points): (_, _, Vec<u8>, Option<&Vec<u8>>) = match &q.q.data {
        QuantData::Symmetric(v) => (
            pb::DataType::Int8,
            BlobDType::I8,
            v.iter().map(|&x| x as u8).collect(),
            None,
        ),
        QuantData::Affine { data, zero_point } => (
            pb::DataType::Uint8,
            BlobDType::U8,
            data.clone(),
            Some(zero_point),
        ),
    };
    let data = e.raw_const(format!("{out}_data"), dt, shape, data, blob);
    let scale_t = Tensor::f32(q.q.scale_shape.clone(), q.q.scale.clone()).cast(q.dtype);
    if e.target < Target::Ios18 {
        let Some(axis) = q.q.axis() else {
            return Err(LowerError::Compression {
                node: out.to_string(),
                why: "per-block scales need target ios18 or newer".into(),
            });
        };
        let c = shape[axis];
        let scale = e.tensor_value(&scale_t.reshaped(vec![c]));
        let scale = e.konst(format!("{out}_scale"), scale);
        let zp = match zero_points {
            None => e.konst(
                format!("{out}_zero_point"),
                raw_bytes_value(pb::DataType::Int8, &[], vec![0]),
            ),
            Some(z) => e.raw_const(
                format!("{out}_zero_point"),
                pb::DataType::Uint8,
                &[c],
                z.clone(),
                BlobDType::U8,
            ),
        };
        let axis = e.konst(format!("{out}_axis"), ints_value(&[], vec![axis as i32]));
        constexpr(
            e,
            "constexpr_affine_dequantize",
            out,
            ty,
            vec![
                ("quantized_data", data),
                ("zero_point", zp),
                ("scale", scale),
                ("axis", axis),
            ],
        )?;
    } else {
        let scale = e.tensor_value(&scale_t);
        let scale = e.konst(format!("{out}_scale"), scale);
        let mut inputs = vec![("data", data), ("scale", scale)];
        if let Some(z) = zero_points {
            inputs.push((
                "offset",
                e.raw_const(
                    format!("{out}_offset"),
                    pb::DataType::Uint8,
                    &q.q.scale_shape,
                    z.clone(),
                    BlobDType::U8,
                ),
            ));
        }
        constexpr(e, "constexpr_blockwise_shift_scale", out, ty, inputs)?;
    }
    Ok(())
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    vec![
        "graph t {\n  %a: fp32[2,2] = const([1.0, -2.5, 0.0, 3.0])\n  %b: fp16[] = const(0.33325195)\n  %c: int32[3] = const([1, -2, 3])\n  return a=%a, b=%b, c=%c\n}\n".into(),
    ]
}
