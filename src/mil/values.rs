//! Small constructors for MIL protobuf values and types, so that the lowering reads as MIL.

use crate::ir::{Dim, TensorType};
use crate::proto::mil_spec as pb;
use crate::tensor::DType;

pub fn data_type(d: DType) -> pb::DataType {
    match d {
        DType::F32 => pb::DataType::Float32,
        DType::F16 => pb::DataType::Float16,
        DType::I32 => pb::DataType::Int32,
        DType::Bool => pb::DataType::Bool,
    }
}

pub fn dtype_of(d: i32) -> Option<DType> {
    match pb::DataType::try_from(d).ok()? {
        pb::DataType::Float32 => Some(DType::F32),
        pb::DataType::Float16 => Some(DType::F16),
        pb::DataType::Int32 => Some(DType::I32),
        pb::DataType::Bool => Some(DType::Bool),
        _ => None,
    }
}

fn dimension(d: &Dim) -> pb::Dimension {
    use pb::dimension::{ConstantDimension, Dimension, UnknownDimension};
    pb::Dimension {
        dimension: Some(match d {
            Dim::Known(n) => Dimension::Constant(ConstantDimension { size: *n as u64 }),
            Dim::Sym(_) => Dimension::Unknown(UnknownDimension { variadic: false }),
        }),
    }
}

pub fn tensor_type(t: &TensorType) -> pb::ValueType {
    value_type(t.dtype, &t.shape)
}

pub fn value_type(dtype: DType, shape: &[Dim]) -> pb::ValueType {
    raw_tensor_type(data_type(dtype), shape)
}

pub fn raw_tensor_type(data_type: pb::DataType, shape: &[Dim]) -> pb::ValueType {
    pb::ValueType {
        r#type: Some(pb::value_type::Type::TensorType(pb::TensorType {
            data_type: data_type as i32,
            rank: shape.len() as i64,
            dimensions: shape.iter().map(dimension).collect(),
            attributes: Default::default(),
        })),
    }
}

pub fn named(name: &str, ty: pb::ValueType) -> pb::NamedValueType {
    pb::NamedValueType {
        name: name.to_string(),
        r#type: Some(ty),
    }
}

fn immediate(ty: pb::ValueType, v: pb::tensor_value::Value) -> pb::Value {
    pb::Value {
        doc_string: String::new(),
        r#type: Some(ty),
        value: Some(pb::value::Value::ImmediateValue(
            pb::value::ImmediateValue {
                value: Some(pb::value::immediate_value::Value::Tensor(pb::TensorValue {
                    value: Some(v),
                })),
            },
        )),
    }
}

fn dims(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&n| Dim::Known(n)).collect()
}

pub fn string_value(s: &str) -> pb::Value {
    use pb::tensor_value::{RepeatedStrings, Value};
    immediate(
        raw_tensor_type(pb::DataType::String, &[]),
        Value::Strings(RepeatedStrings {
            values: vec![s.to_string()],
        }),
    )
}

pub fn bool_value(b: bool) -> pb::Value {
    use pb::tensor_value::{RepeatedBools, Value};
    immediate(
        value_type(DType::Bool, &[]),
        Value::Bools(RepeatedBools { values: vec![b] }),
    )
}

/// A bool vector.
pub fn bools_value(v: &[bool]) -> pb::Value {
    use pb::tensor_value::{RepeatedBools, Value};
    immediate(
        value_type(DType::Bool, &dims(&[v.len()])),
        Value::Bools(RepeatedBools { values: v.to_vec() }),
    )
}

/// An int32 tensor of `shape` (rank 0 for a scalar).
pub fn ints_value(shape: &[usize], values: Vec<i32>) -> pb::Value {
    use pb::tensor_value::{RepeatedInts, Value};
    immediate(
        value_type(DType::I32, &dims(shape)),
        Value::Ints(RepeatedInts { values }),
    )
}

pub fn floats_value(shape: &[usize], values: Vec<f32>) -> pb::Value {
    use pb::tensor_value::{RepeatedFloats, Value};
    immediate(
        value_type(DType::F32, &dims(shape)),
        Value::Floats(RepeatedFloats { values }),
    )
}

/// fp16 immediates are stored as their little-endian bytes.
pub fn f16_bytes_value(shape: &[usize], bytes: Vec<u8>) -> pb::Value {
    use pb::tensor_value::{RepeatedBytes, Value};
    immediate(
        value_type(DType::F16, &dims(shape)),
        Value::Bytes(RepeatedBytes { values: bytes }),
    )
}

pub fn blob_value(ty: pb::ValueType, offset: u64) -> pb::Value {
    pb::Value {
        doc_string: String::new(),
        r#type: Some(ty),
        value: Some(pb::value::Value::BlobFileValue(pb::value::BlobFileValue {
            file_name: crate::package::WEIGHTS_FILE_REF.to_string(),
            offset,
        })),
    }
}

/// An argument bound to a named value.
pub fn arg(name: &str) -> pb::Argument {
    pb::Argument {
        arguments: vec![pb::argument::Binding {
            binding: Some(pb::argument::binding::Binding::Name(name.to_string())),
        }],
    }
}

/// A tuple argument binding several values in order (concat's `values`).
pub fn args(names: &[String]) -> pb::Argument {
    pb::Argument {
        arguments: names
            .iter()
            .map(|n| pb::argument::Binding {
                binding: Some(pb::argument::binding::Binding::Name(n.clone())),
            })
            .collect(),
    }
}

/// The string-valued `name` attribute every op carries.
pub fn name_attr(name: &str) -> (String, pb::Value) {
    ("name".to_string(), string_value(name))
}

/// A tensor of `data_type` (uint8, int8, uint32, uintN…) whose immediate value is its raw
/// little-endian bytes, as MIL stores these types.
pub fn raw_bytes_value(data_type: pb::DataType, shape: &[usize], bytes: Vec<u8>) -> pb::Value {
    use pb::tensor_value::{RepeatedBytes, Value};
    immediate(
        raw_tensor_type(data_type, &dims(shape)),
        Value::Bytes(RepeatedBytes { values: bytes }),
    )
}

/// A tensor of `data_type` stored in `weight.bin` at `offset`.
pub fn raw_blob_value(data_type: pb::DataType, shape: &[usize], offset: u64) -> pb::Value {
    blob_value(raw_tensor_type(data_type, &dims(shape)), offset)
}
