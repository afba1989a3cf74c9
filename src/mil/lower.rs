//! Lowering: IR graph → Core ML `Model` protobuf with an ML Program, plus its `weight.bin`.
//!
//! One MIL op per IR op. Op parameters (strides, axes, dtype names, …) become `const` ops of
//! their own, named `<op>_<param>`, exactly as coremltools writes them, so coremltools reads our
//! programs as its own. Constants of 10 or more elements go to `weight.bin`; smaller ones are
//! immediate values. The value an output is taken from is named after the output feature.

use super::target::Target;
use super::values::{
    arg, blob_value, bool_value, f16_bytes_value, floats_value, ints_value, name_attr, named,
    string_value, tensor_type,
};
use crate::ir::{ConstData, Graph, Op, TensorType, ValueId};
use crate::package::{BlobDType, BlobWriter};
use crate::proto::mil_spec as pb;
use crate::proto::specification as spec;
use crate::tensor::{DType, Tensor, TensorData};
use std::collections::BTreeMap;

/// Constants with at least this many elements are stored in `weight.bin` (coremltools' rule).
pub const BLOB_MIN_ELEMENTS: usize = 10;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelInfo {
    pub short_description: String,
    pub author: String,
    pub license: String,
    pub version: String,
    /// `userDefined` metadata, e.g. the model name and weight digest.
    pub user_defined: BTreeMap<String, String>,
    /// Per-feature descriptions, by feature name.
    pub feature_descriptions: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LowerError {
    #[error("node {node}: {op} has no MIL lowering; run the pass that lowers it first")]
    Unlowered { node: String, op: &'static str },
    #[error("feature {name}: shape {ty} has symbolic dimensions but no enumerated sizes")]
    Symbolic { name: String, ty: TensorType },
    #[error("value name {0:?} is taken twice (an output must not be named like another value)")]
    NameClash(String),
}

pub struct Lowered {
    pub model: spec::Model,
    /// The contents of `weight.bin`, if any constant went there.
    pub weight_bin: Option<Vec<u8>>,
}

/// Lowers a verified graph whose ops all have MIL forms.
pub fn lower(g: &Graph, target: Target, info: &ModelInfo) -> Result<Lowered, LowerError> {
    let mut names: Vec<String> = g.nodes().map(|(_, n)| n.name.clone()).collect();
    for (out, v) in g.outputs() {
        if names
            .iter()
            .enumerate()
            .any(|(i, n)| n == out && i != v.index())
        {
            return Err(LowerError::NameClash(out.clone()));
        }
        names[v.index()] = out.clone();
    }
    let mut f = FnLowering {
        g,
        names: &names,
        ops: Vec::new(),
        blobs: BlobWriter::default(),
    };
    let mut inputs = Vec::new();
    for (id, node) in g.nodes() {
        match &node.op {
            Op::Input { .. } => inputs.push(named(&names[id.index()], tensor_type(&node.ty))),
            _ => f.node(id)?,
        }
    }
    let block = pb::Block {
        inputs: vec![],
        outputs: g.outputs().iter().map(|(n, _)| n.clone()).collect(),
        operations: f.ops,
        attributes: Default::default(),
    };
    let function = pb::Function {
        inputs,
        opset: target.opset().to_string(),
        block_specializations: BTreeMap::from([(target.opset().to_string(), block)]),
        attributes: Default::default(),
    };
    let program = pb::Program {
        version: 1,
        functions: BTreeMap::from([("main".to_string(), function)]),
        doc_string: String::new(),
        attributes: Default::default(),
    };
    let feature = |name: &str, v: ValueId| feature(name, g.ty(v), info);
    let description = spec::ModelDescription {
        input: g
            .inputs()
            .iter()
            .map(|&v| feature(&names[v.index()], v))
            .collect::<Result<_, _>>()?,
        output: g
            .outputs()
            .iter()
            .map(|(n, v)| feature(n, *v))
            .collect::<Result<_, _>>()?,
        metadata: Some(spec::Metadata {
            short_description: info.short_description.clone(),
            version_string: info.version.clone(),
            author: info.author.clone(),
            license: info.license.clone(),
            user_defined: info.user_defined.clone().into_iter().collect(),
        }),
        ..Default::default()
    };
    let model = spec::Model {
        specification_version: target.spec_version(),
        description: Some(description),
        is_updatable: false,
        r#type: Some(spec::model::Type::MlProgram(program)),
    };
    let weight_bin = (!f.blobs.is_empty()).then(|| f.blobs.finish());
    Ok(Lowered { model, weight_bin })
}

fn feature(
    name: &str,
    ty: &TensorType,
    info: &ModelInfo,
) -> Result<spec::FeatureDescription, LowerError> {
    let shape = ty.known_shape().ok_or_else(|| LowerError::Symbolic {
        name: name.to_string(),
        ty: ty.clone(),
    })?;
    let data_type = match ty.dtype {
        DType::F16 => spec::array_feature_type::ArrayDataType::Float16,
        DType::I32 => spec::array_feature_type::ArrayDataType::Int32,
        _ => spec::array_feature_type::ArrayDataType::Float32,
    };
    Ok(spec::FeatureDescription {
        name: name.to_string(),
        short_description: info
            .feature_descriptions
            .get(name)
            .cloned()
            .unwrap_or_default(),
        r#type: Some(spec::FeatureType {
            is_optional: false,
            r#type: Some(spec::feature_type::Type::MultiArrayType(
                spec::ArrayFeatureType {
                    shape: shape.iter().map(|&n| n as i64).collect(),
                    data_type: data_type as i32,
                    ..Default::default()
                },
            )),
        }),
    })
}

struct FnLowering<'a> {
    g: &'a Graph,
    names: &'a [String],
    ops: Vec<pb::Operation>,
    blobs: BlobWriter,
}

impl FnLowering<'_> {
    /// Emits a `const` op holding `val` and returns its name.
    fn konst(&mut self, name: String, val: pb::Value) -> String {
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

    fn tensor_value(&mut self, t: &Tensor) -> pb::Value {
        let ty = tensor_type(&TensorType::known(t.dtype(), &t.shape));
        if t.len() >= BLOB_MIN_ELEMENTS {
            let blob_dtype = match t.dtype() {
                DType::F16 => Some(BlobDType::F16),
                DType::F32 => Some(BlobDType::F32),
                _ => None,
            };
            if let Some(dt) = blob_dtype {
                let offset = self.blobs.add(dt, &t.to_le_bytes());
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

    fn ints(&mut self, op: &str, param: &str, v: &[usize]) -> String {
        self.konst(
            format!("{op}_{param}"),
            ints_value(&[v.len()], v.iter().map(|&x| x as i32).collect()),
        )
    }

    /// A scalar parameter in the dtype of the tensor it applies to.
    fn scalar(&mut self, op: &str, param: &str, v: f32, dtype: DType) -> String {
        let val = match dtype {
            DType::F16 => f16_bytes_value(&[], half::f16::from_f32(v).to_le_bytes().to_vec()),
            _ => floats_value(&[], vec![v]),
        };
        self.konst(format!("{op}_{param}"), val)
    }

    fn node(&mut self, id: ValueId) -> Result<(), LowerError> {
        let (g, names) = (self.g, self.names);
        let node = g.node(id);
        let out = names[id.index()].clone();
        let x = |i: usize| names[node.inputs[i].index()].clone();
        let dtype = node.ty.dtype;
        let (ty, inputs): (&str, Vec<(&str, String)>) = match &node.op {
            Op::Input { .. } => unreachable!("inputs are function inputs"),
            Op::Const(ConstData::Dense(t)) => {
                let val = self.tensor_value(t);
                self.konst(out, val);
                return Ok(());
            }
            Op::Conv2d(p) => {
                let mut inputs = vec![("x", x(0)), ("weight", x(1))];
                if node.inputs.len() > 2 {
                    inputs.push(("bias", x(2)));
                }
                inputs.push(("strides", self.ints(&out, "strides", &p.strides)));
                inputs.push((
                    "pad_type",
                    self.konst(format!("{out}_pad_type"), string_value("custom")),
                ));
                inputs.push(("pad", self.ints(&out, "pad", &p.pads)));
                inputs.push(("dilations", self.ints(&out, "dilations", &p.dilations)));
                let groups = self.konst(
                    format!("{out}_groups"),
                    ints_value(&[], vec![p.groups as i32]),
                );
                inputs.push(("groups", groups));
                ("conv", inputs)
            }
            Op::Relu => ("relu", vec![("x", x(0))]),
            Op::Tanh => ("tanh", vec![("x", x(0))]),
            Op::Add => ("add", vec![("x", x(0)), ("y", x(1))]),
            Op::Sub => ("sub", vec![("x", x(0)), ("y", x(1))]),
            Op::Mul => ("mul", vec![("x", x(0)), ("y", x(1))]),
            Op::Div => ("real_div", vec![("x", x(0)), ("y", x(1))]),
            Op::Rsqrt { epsilon } => {
                let eps = self.scalar(&out, "epsilon", *epsilon, dtype);
                ("rsqrt", vec![("x", x(0)), ("epsilon", eps)])
            }
            Op::Upsample { scale } => {
                let sh = self.konst(
                    format!("{out}_scale_factor_height"),
                    floats_value(&[], vec![*scale as f32]),
                );
                let sw = self.konst(
                    format!("{out}_scale_factor_width"),
                    floats_value(&[], vec![*scale as f32]),
                );
                (
                    "upsample_nearest_neighbor",
                    vec![
                        ("x", x(0)),
                        ("scale_factor_height", sh),
                        ("scale_factor_width", sw),
                    ],
                )
            }
            Op::GroupNorm { .. } => {
                return Err(LowerError::Unlowered {
                    node: node.name.clone(),
                    op: node.op.name(),
                })
            }
            Op::ReduceMean { axes, keep_dims } => {
                let a = self.ints(&out, "axes", axes);
                let k = self.konst(format!("{out}_keep_dims"), bool_value(*keep_dims));
                (
                    "reduce_mean",
                    vec![("x", x(0)), ("axes", a), ("keep_dims", k)],
                )
            }
            Op::Reshape { shape } => (
                "reshape",
                vec![("x", x(0)), ("shape", self.ints(&out, "shape", shape))],
            ),
            Op::Tile { reps } => (
                "tile",
                vec![("x", x(0)), ("reps", self.ints(&out, "reps", reps))],
            ),
            Op::Transpose { perm } => (
                "transpose",
                vec![("x", x(0)), ("perm", self.ints(&out, "perm", perm))],
            ),
            Op::Cast { dtype } => {
                let d = self.konst(format!("{out}_dtype"), string_value(dtype.mil_name()));
                ("cast", vec![("x", x(0)), ("dtype", d)])
            }
        };
        self.ops.push(pb::Operation {
            r#type: ty.to_string(),
            inputs: inputs
                .into_iter()
                .map(|(k, v)| (k.to_string(), arg(&v)))
                .collect(),
            outputs: vec![named(&out, tensor_type(&node.ty))],
            blocks: vec![],
            attributes: [name_attr(&out)].into_iter().collect(),
        });
        Ok(())
    }
}
