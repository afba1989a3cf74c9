//! The emitter of one MIL function: what an op file's `lower` writes with.
//!
//! Op parameters (strides, axes, dtype names, …) become `const` ops of their own, named
//! `<op>_<param>`, exactly as coremltools writes them, so coremltools reads our programs as its
//! own. Constants of [`BLOB_MIN_ELEMENTS`] or more elements go to `weight.bin`; smaller ones are
//! immediate values.

use super::lower::LowerError;
use super::target::Target;
use super::values::{
    arg, blob_value, bool_value, f16_bytes_value, floats_value, ints_value, name_attr, named,
    raw_blob_value, raw_bytes_value, tensor_type,
};
use crate::ir::{Graph, TensorType, ValueId};
use crate::package::{BlobDType, BlobWriter};
use crate::proto::mil_spec as pb;
use crate::tensor::{DType, Tensor, TensorData};
use std::collections::BTreeMap;

/// Constants with at least this many elements are stored in `weight.bin` (coremltools' rule).
pub const BLOB_MIN_ELEMENTS: usize = 10;

pub struct Emitter<'a> {
    pub(crate) g: &'a Graph,
    pub(crate) target: Target,
    /// Each value's MIL name (see [`super::lower`]); an alias takes its value's name.
    names: Vec<String>,
    pub(crate) ops: Vec<pb::Operation>,
    blobs: &'a mut BlobWriter,
    /// `split` groups already emitted: (input, axis, parts) → the value name of each part.
    pub(crate) splits: BTreeMap<(ValueId, usize, usize), Vec<String>>,
}

impl<'a> Emitter<'a> {
    pub(crate) fn new(
        g: &'a Graph,
        target: Target,
        names: &[String],
        blobs: &'a mut BlobWriter,
    ) -> Emitter<'a> {
        Emitter {
            g,
            target,
            names: names.to_vec(),
            ops: Vec::new(),
            blobs,
            splits: BTreeMap::new(),
        }
    }

    /// Emits node `id` through its op's file.
    pub(crate) fn node(&mut self, id: ValueId) -> Result<(), LowerError> {
        let g = self.g;
        g.node(id).op.lower(self, id)
    }

    /// The MIL name of value `id`.
    pub fn name(&self, id: ValueId) -> String {
        self.names[id.index()].clone()
    }

    /// Makes node `id` another name for value `of`: a node that computes nothing in MIL (an
    /// fp32 build's precision fence) emits no op, and its users read `of` itself. Nodes are
    /// emitted in order, so every user sees the alias.
    pub fn alias(&mut self, id: ValueId, of: ValueId) {
        self.names[id.index()] = self.names[of.index()].clone();
    }

    /// The MIL name of node `id`'s input `i`.
    pub fn input(&self, id: ValueId, i: usize) -> String {
        self.name(self.g.node(id).inputs[i])
    }

    /// The type of node `id`'s input `i`.
    pub fn input_type(&self, id: ValueId, i: usize) -> &'a TensorType {
        let g = self.g;
        g.ty(g.node(id).inputs[i])
    }

    /// Emits the one MIL op `kind` computing node `id`, after checking the target has it.
    pub fn op(
        &mut self,
        id: ValueId,
        kind: &'static str,
        inputs: Vec<(&str, String)>,
    ) -> Result<(), LowerError> {
        let node = self.g.node(id);
        self.check_target(kind, &node.name)?;
        let out = self.name(id);
        self.push(kind, inputs, &out, tensor_type(&node.ty));
        Ok(())
    }

    /// Appends an op with one output, without checks.
    pub fn push(&mut self, kind: &str, inputs: Vec<(&str, String)>, out: &str, ty: pb::ValueType) {
        self.ops.push(pb::Operation {
            r#type: kind.to_string(),
            inputs: inputs
                .into_iter()
                .map(|(k, v)| (k.to_string(), arg(&v)))
                .collect(),
            outputs: vec![named(out, ty)],
            blocks: vec![],
            attributes: [name_attr(out)].into_iter().collect(),
        });
    }

    /// Emits a `const` op holding `val` and returns its name.
    pub fn konst(&mut self, name: String, val: pb::Value) -> String {
        let ty = val.r#type.clone().expect("values carry their type");
        self.ops.push(pb::Operation {
            r#type: "const".into(),
            inputs: Default::default(),
            outputs: vec![named(&name, ty)],
            blocks: vec![],
            attributes: BTreeMap::from([name_attr(&name), ("val".to_string(), val)])
                .into_iter()
                .collect(),
        });
        name
    }

    /// A tensor as a value: in `weight.bin` from [`BLOB_MIN_ELEMENTS`] on (float types),
    /// immediate otherwise.
    pub fn tensor_value(&mut self, t: &Tensor) -> pb::Value {
        let ty = tensor_type(&TensorType::known(t.dtype(), &t.shape));
        if t.len() >= BLOB_MIN_ELEMENTS {
            let blob_dtype = match t.dtype() {
                DType::F16 => Some(BlobDType::F16),
                DType::F32 => Some(BlobDType::F32),
                _ => None,
            };
            if let Some(dt) = blob_dtype {
                let offset = self.blobs.add(dt, &t.le_bytes());
                return blob_value(ty, offset);
            }
        }
        match &t.data {
            TensorData::F32(v) => floats_value(&t.shape, v.clone()),
            TensorData::F16(_) => f16_bytes_value(&t.shape, t.to_le_bytes()),
            TensorData::I32(v) => ints_value(&t.shape, v.clone()),
            TensorData::Bool(v) => {
                let mut b = bool_value(false);
                if let Some(pb::value::Value::ImmediateValue(iv)) = &mut b.value {
                    iv.value = Some(pb::value::immediate_value::Value::Tensor(pb::TensorValue {
                        value: Some(pb::tensor_value::Value::Bools(
                            pb::tensor_value::RepeatedBools { values: v.clone() },
                        )),
                    }));
                }
                b.r#type = Some(ty);
                b
            }
        }
    }

    /// Raw integer data as a const: in `weight.bin` from 10 elements on (packed for sub-byte
    /// types), inline otherwise.
    pub fn raw_const(
        &mut self,
        name: String,
        dt: pb::DataType,
        shape: &[usize],
        bytes: Vec<u8>,
        blob: BlobDType,
    ) -> String {
        let count: usize = shape.iter().product();
        let val = if count >= BLOB_MIN_ELEMENTS {
            let offset = if blob.is_sub_byte() {
                self.blobs.add_sub_byte(blob, &bytes, count as u64)
            } else {
                self.blobs.add(blob, &bytes)
            };
            raw_blob_value(dt, shape, offset)
        } else {
            raw_bytes_value(dt, shape, bytes)
        };
        self.konst(name, val)
    }

    /// Refuses an op the target's opset does not have (the op table knows since when it has).
    pub fn check_target(&self, op: &'static str, node: &str) -> Result<(), LowerError> {
        let def = super::ops::lookup(op).ok_or_else(|| LowerError::Unlowered {
            node: node.to_string(),
            op,
        })?;
        if def.since > self.target {
            return Err(LowerError::TargetTooOld {
                node: node.to_string(),
                op,
                since: def.since,
                target: self.target,
            });
        }
        Ok(())
    }

    /// An int32 list parameter `<op>_<param>`.
    pub fn ints(&mut self, op: &str, param: &str, v: &[usize]) -> String {
        self.konst(
            format!("{op}_{param}"),
            ints_value(&[v.len()], v.iter().map(|&x| x as i32).collect()),
        )
    }

    /// An int32 scalar parameter `<op>_<param>`.
    pub fn int(&mut self, op: &str, param: &str, v: usize) -> String {
        self.konst(format!("{op}_{param}"), ints_value(&[], vec![v as i32]))
    }

    /// A boolean parameter `<op>_<param>`.
    pub fn flag(&mut self, op: &str, param: &str, v: bool) -> String {
        self.konst(format!("{op}_{param}"), bool_value(v))
    }

    /// A scalar parameter in the dtype of the tensor it applies to.
    pub fn scalar(&mut self, op: &str, param: &str, v: f32, dtype: DType) -> String {
        let val = match dtype {
            DType::F16 => f16_bytes_value(&[], half::f16::from_f32(v).to_le_bytes().to_vec()),
            _ => floats_value(&[], vec![v]),
        };
        self.konst(format!("{op}_{param}"), val)
    }
}
