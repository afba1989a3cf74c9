//! Lowering: IR graph → Core ML `Model` protobuf with an ML Program, plus its `weight.bin`.
//!
//! One MIL op per IR op. Op parameters (strides, axes, dtype names, …) become `const` ops of
//! their own, named `<op>_<param>`, exactly as coremltools writes them, so coremltools reads our
//! programs as its own. Constants of 10 or more elements go to `weight.bin`; smaller ones are
//! immediate values. The value an output is taken from is named after the output feature.

use super::target::Target;
use super::values::{
    arg, args, blob_value, bool_value, bools_value, f16_bytes_value, floats_value, ints_value,
    name_attr, named, raw_blob_value, raw_bytes_value, raw_tensor_type, string_value, tensor_type,
};
use crate::ir::{ConstData, Dim, Graph, Op, Palettized, Quantized, TensorType, ValueId};
use crate::package::{BlobDType, BlobWriter};
use crate::passes::specialize_shapes::Bindings;
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
    #[error("feature {name}: {why}, got {ty}")]
    Image {
        name: String,
        ty: TensorType,
        why: String,
    },
    #[error("weight {node}: {why}")]
    Compression { node: String, why: String },
    #[error("multifunction packages need iOS18 or newer, not {0}")]
    Multifunction(Target),
    #[error("node {node}: MIL op {op} needs target {since} or newer, not {target}")]
    TargetTooOld {
        node: String,
        op: &'static str,
        since: Target,
        target: Target,
    },
    #[error("value name {0:?} is taken twice (an output must not be named like another value)")]
    NameClash(String),
}

pub struct Lowered {
    pub model: spec::Model,
    /// The contents of `weight.bin`, if any constant went there (in-memory lowering).
    pub weight_bin: Option<Vec<u8>>,
    /// The length of `weight.bin` when the lowering streamed it to a file
    /// ([`BlobWriter::to_file`]); None when no constant went there.
    pub weight_file: Option<u64>,
}

impl Lowered {
    /// Whether the package has a `weight.bin`.
    pub fn has_weights(&self) -> bool {
        self.weight_bin.is_some() || self.weight_file.is_some()
    }

    /// The size of `weight.bin` in bytes (0 without one).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bin
            .as_ref()
            .map_or(self.weight_file.unwrap_or(0), |b| b.len() as u64)
    }
}

/// How the model's features are described beyond their MIL types.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interface {
    /// Symbol values of each enumerated size, default first; empty for static shapes.
    pub sizes: Vec<Bindings>,
    /// Outputs are Core ML RGB images (fp32 `[1, 3, H, W]` values in [0, 255]).
    pub image_outputs: bool,
    /// Inputs are Core ML RGB images (fp32 `[1, 3, H, W]` values in [0, 255]).
    pub image_inputs: bool,
}

/// Lowers a verified graph whose ops all have MIL forms into a model with one function, `main`.
pub fn lower(
    g: &Graph,
    target: Target,
    info: &ModelInfo,
    iface: &Interface,
) -> Result<Lowered, LowerError> {
    let mut blobs = BlobWriter::default();
    let model = lower_into(g, target, info, iface, &mut blobs)?;
    Ok(in_memory(model, blobs))
}

/// The model and in-memory `weight.bin` of a finished lowering.
pub fn in_memory(model: spec::Model, blobs: BlobWriter) -> Lowered {
    Lowered {
        model,
        weight_bin: (!blobs.is_empty()).then(|| blobs.finish()),
        weight_file: None,
    }
}

/// [`lower`], with the weights going to `blobs` (in memory, or streamed to a file).
pub fn lower_into(
    g: &Graph,
    target: Target,
    info: &ModelInfo,
    iface: &Interface,
    blobs: &mut BlobWriter,
) -> Result<spec::Model, LowerError> {
    let function = lower_function(g, target, blobs)?;
    let (input, output) = features(g, info, iface)?;
    let description = spec::ModelDescription {
        input,
        output,
        metadata: Some(metadata(info)),
        ..Default::default()
    };
    Ok(finish(
        target,
        description,
        BTreeMap::from([("main".to_string(), function)]),
    ))
}

/// Lowers one static graph per function into a multifunction model (iOS18+). Identical weights
/// are stored once and shared by every function.
pub fn lower_multifunction(
    functions: &[(String, Graph)],
    target: Target,
    info: &ModelInfo,
    iface: &Interface,
) -> Result<Lowered, LowerError> {
    let mut blobs = BlobWriter::default();
    let model = lower_multifunction_into(functions, target, info, iface, &mut blobs)?;
    Ok(in_memory(model, blobs))
}

/// [`lower_multifunction`], with the weights going to `blobs`.
pub fn lower_multifunction_into(
    functions: &[(String, Graph)],
    target: Target,
    info: &ModelInfo,
    iface: &Interface,
    blobs: &mut BlobWriter,
) -> Result<spec::Model, LowerError> {
    if target < Target::Ios18 {
        return Err(LowerError::Multifunction(target));
    }
    let mut fns = BTreeMap::new();
    let mut descriptions = Vec::new();
    for (name, g) in functions {
        fns.insert(name.clone(), lower_function(g, target, blobs)?);
        let (input, output) = features(g, info, iface)?;
        descriptions.push(spec::FunctionDescription {
            name: name.clone(),
            input,
            output,
            ..Default::default()
        });
    }
    let description = spec::ModelDescription {
        default_function_name: functions
            .first()
            .map(|(n, _)| n.clone())
            .unwrap_or_default(),
        functions: descriptions,
        metadata: Some(metadata(info)),
        ..Default::default()
    };
    Ok(finish(target, description, fns))
}

fn finish(
    target: Target,
    description: spec::ModelDescription,
    functions: BTreeMap<String, pb::Function>,
) -> spec::Model {
    let program = pb::Program {
        version: 1,
        functions,
        doc_string: String::new(),
        attributes: Default::default(),
    };
    spec::Model {
        specification_version: target.spec_version(),
        description: Some(description),
        is_updatable: false,
        r#type: Some(spec::model::Type::MlProgram(program)),
    }
}

fn metadata(info: &ModelInfo) -> spec::Metadata {
    spec::Metadata {
        short_description: info.short_description.clone(),
        version_string: info.version.clone(),
        author: info.author.clone(),
        license: info.license.clone(),
        user_defined: info.user_defined.clone().into_iter().collect(),
    }
}

/// Value names: node names, except that an output's value is named after the output feature.
fn value_names(g: &Graph) -> Result<Vec<String>, LowerError> {
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
    Ok(names)
}

fn lower_function(
    g: &Graph,
    target: Target,
    blobs: &mut BlobWriter,
) -> Result<pb::Function, LowerError> {
    let names = value_names(g)?;
    let mut f = FnLowering {
        g,
        target,
        names: &names,
        ops: Vec::new(),
        blobs,
        splits: BTreeMap::new(),
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
    Ok(pb::Function {
        inputs,
        opset: target.opset().to_string(),
        block_specializations: BTreeMap::from([(target.opset().to_string(), block)]),
        attributes: Default::default(),
    })
}

/// Input and output feature descriptions of a graph.
fn features(g: &Graph, info: &ModelInfo, iface: &Interface) -> Result<FeaturePair, LowerError> {
    let names = value_names(g)?;
    let inputs = g
        .inputs()
        .iter()
        .map(|&v| {
            if iface.image_inputs {
                image_feature(&names[v.index()], g.ty(v), info, &iface.sizes)
            } else {
                array_feature(&names[v.index()], g.ty(v), info, &iface.sizes, true)
            }
        })
        .collect::<Result<_, _>>()?;
    let outputs = g
        .outputs()
        .iter()
        .map(|(n, v)| {
            if iface.image_outputs {
                image_feature(n, g.ty(*v), info, &iface.sizes)
            } else {
                array_feature(n, g.ty(*v), info, &iface.sizes, false)
            }
        })
        .collect::<Result<_, _>>()?;
    Ok((inputs, outputs))
}

type FeaturePair = (Vec<spec::FeatureDescription>, Vec<spec::FeatureDescription>);

fn resolve(ty: &TensorType, b: Option<&Bindings>) -> Option<Vec<usize>> {
    ty.shape
        .iter()
        .map(|d| d.resolve(&|s| b.and_then(|b| b.get(s).copied())))
        .collect()
}

/// A multi-array feature. A symbolic input lists its enumerated shapes (default first); a
/// symbolic output has no fixed shape, as coremltools writes it.
fn array_feature(
    name: &str,
    ty: &TensorType,
    info: &ModelInfo,
    sizes: &[Bindings],
    input: bool,
) -> Result<spec::FeatureDescription, LowerError> {
    use spec::array_feature_type::{ArrayDataType, EnumeratedShapes, Shape, ShapeFlexibility};
    let data_type = match ty.dtype {
        DType::F16 => ArrayDataType::Float16,
        DType::I32 => ArrayDataType::Int32,
        _ => ArrayDataType::Float32,
    };
    let mut array = spec::ArrayFeatureType {
        data_type: data_type as i32,
        ..Default::default()
    };
    match (ty.known_shape(), input) {
        (Some(shape), _) => array.shape = shape.iter().map(|&n| n as i64).collect(),
        (None, true) => {
            let all: Vec<Vec<i64>> = sizes
                .iter()
                .map(|b| resolve(ty, Some(b)).map(|s| s.iter().map(|&n| n as i64).collect()))
                .collect::<Option<_>>()
                .filter(|v: &Vec<Vec<i64>>| !v.is_empty())
                .ok_or_else(|| LowerError::Symbolic {
                    name: name.to_string(),
                    ty: ty.clone(),
                })?;
            array.shape = all[0].clone();
            array.shape_flexibility = Some(ShapeFlexibility::EnumeratedShapes(EnumeratedShapes {
                shapes: all.into_iter().map(|shape| Shape { shape }).collect(),
            }));
        }
        (None, false) => {}
    }
    Ok(describe(
        name,
        info,
        spec::feature_type::Type::MultiArrayType(array),
    ))
}

/// An RGB image feature from an fp32 `[1, 3, H, W]` value.
fn image_feature(
    name: &str,
    ty: &TensorType,
    info: &ModelInfo,
    sizes: &[Bindings],
) -> Result<spec::FeatureDescription, LowerError> {
    use spec::image_feature_type::{ColorSpace, EnumeratedImageSizes, ImageSize, SizeFlexibility};
    let bad = |why: &str| LowerError::Image {
        name: name.to_string(),
        ty: ty.clone(),
        why: why.to_string(),
    };
    if ty.dtype != DType::F32 || ty.rank() != 4 || ty.shape[..2] != [Dim::Known(1), Dim::Known(3)] {
        return Err(bad("an RGB image output must be fp32 [1, 3, H, W]"));
    }
    let dims: Vec<Vec<usize>> = if sizes.is_empty() {
        vec![ty
            .known_shape()
            .ok_or_else(|| bad("symbolic size without enumerated sizes"))?]
    } else {
        sizes
            .iter()
            .map(|b| resolve(ty, Some(b)))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("unbound size"))?
    };
    let mut image = spec::ImageFeatureType {
        height: dims[0][2] as i64,
        width: dims[0][3] as i64,
        color_space: ColorSpace::Rgb as i32,
        size_flexibility: None,
    };
    if ty.known_shape().is_none() {
        image.size_flexibility = Some(SizeFlexibility::EnumeratedSizes(EnumeratedImageSizes {
            sizes: dims
                .iter()
                .map(|d| ImageSize {
                    width: d[3] as u64,
                    height: d[2] as u64,
                })
                .collect(),
        }));
    }
    Ok(describe(
        name,
        info,
        spec::feature_type::Type::ImageType(image),
    ))
}

fn describe(name: &str, info: &ModelInfo, t: spec::feature_type::Type) -> spec::FeatureDescription {
    spec::FeatureDescription {
        name: name.to_string(),
        short_description: info
            .feature_descriptions
            .get(name)
            .cloned()
            .unwrap_or_default(),
        r#type: Some(spec::FeatureType {
            is_optional: false,
            r#type: Some(t),
        }),
    }
}

struct FnLowering<'a> {
    g: &'a Graph,
    target: Target,
    names: &'a [String],
    ops: Vec<pb::Operation>,
    blobs: &'a mut BlobWriter,
    /// `split` groups already emitted: (input, axis, parts) → the value name of each part.
    splits: BTreeMap<(ValueId, usize, usize), Vec<String>>,
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
    fn raw_const(
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

    fn constexpr(
        &mut self,
        kind: &'static str,
        out: &str,
        ty: &TensorType,
        inputs: Vec<(&str, String)>,
    ) -> Result<(), LowerError> {
        self.check_target(kind, out)?;
        self.ops.push(pb::Operation {
            r#type: kind.to_string(),
            inputs: inputs
                .into_iter()
                .map(|(k, v)| (k.to_string(), arg(&v)))
                .collect(),
            outputs: vec![named(out, tensor_type(ty))],
            blocks: vec![],
            attributes: [name_attr(out)].into_iter().collect(),
        });
        Ok(())
    }

    /// Refuses an op the target's opset does not have (the op table knows since when it has).
    fn check_target(&self, op: &'static str, node: &str) -> Result<(), LowerError> {
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

    /// iOS16/17: `constexpr_lut_to_dense(indices: packed uint8, lut: [2^bits], shape: uint32)`,
    /// one table per tensor. iOS18: `constexpr_lut_to_dense(indices: uintN[shape],
    /// lut: [groups, 1, …, 2^bits, 1])`, one table per group of output channels.
    fn palettized(&mut self, out: &str, ty: &TensorType, p: &Palettized) -> Result<(), LowerError> {
        let table = 1usize << p.bits;
        let groups = p.shape[0] / p.group_size;
        let packed = crate::compress::pack::pack_bits(&p.indices, p.bits);
        let bad = |why: String| {
            Err(LowerError::Compression {
                node: out.to_string(),
                why,
            })
        };
        if self.target < Target::Ios18 {
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
            let indices = self.raw_const(
                format!("{out}_indices"),
                pb::DataType::Uint8,
                &[n],
                packed,
                BlobDType::U8,
            );
            let lut = self.tensor_value(&p.lut.reshaped(vec![table]));
            let lut = self.konst(format!("{out}_lut"), lut);
            let shape: Vec<u8> = p
                .shape
                .iter()
                .flat_map(|&d| (d as u32).to_le_bytes())
                .collect();
            let shape = self.konst(
                format!("{out}_shape"),
                raw_bytes_value(pb::DataType::Uint32, &[p.shape.len()], shape),
            );
            self.constexpr(
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
            let indices = self.raw_const(format!("{out}_indices"), dt, &p.shape, packed, blob);
            let mut lut_shape = vec![groups];
            lut_shape.extend(std::iter::repeat_n(1, p.shape.len() - 1));
            lut_shape.extend([table, 1]);
            let lut = self.tensor_value(&p.lut.reshaped(lut_shape));
            let lut = self.konst(format!("{out}_lut"), lut);
            self.constexpr(
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
    fn quantized(&mut self, out: &str, ty: &TensorType, q: &Quantized) -> Result<(), LowerError> {
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
        let data = self.raw_const(format!("{out}_data"), dt, shape, data, blob);
        let scale_t = Tensor::f32(q.q.scale_shape.clone(), q.q.scale.clone()).cast(q.dtype);
        if self.target < Target::Ios18 {
            let Some(axis) = q.q.axis() else {
                return Err(LowerError::Compression {
                    node: out.to_string(),
                    why: "per-block scales need target ios18 or newer".into(),
                });
            };
            let c = shape[axis];
            let scale = self.tensor_value(&scale_t.reshaped(vec![c]));
            let scale = self.konst(format!("{out}_scale"), scale);
            let zp = match zero_points {
                None => self.konst(
                    format!("{out}_zero_point"),
                    raw_bytes_value(pb::DataType::Int8, &[], vec![0]),
                ),
                Some(z) => self.raw_const(
                    format!("{out}_zero_point"),
                    pb::DataType::Uint8,
                    &[c],
                    z.clone(),
                    BlobDType::U8,
                ),
            };
            let axis = self.konst(format!("{out}_axis"), ints_value(&[], vec![axis as i32]));
            self.constexpr(
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
            let scale = self.tensor_value(&scale_t);
            let scale = self.konst(format!("{out}_scale"), scale);
            let mut inputs = vec![("data", data), ("scale", scale)];
            if let Some(z) = zero_points {
                inputs.push((
                    "offset",
                    self.raw_const(
                        format!("{out}_offset"),
                        pb::DataType::Uint8,
                        &q.q.scale_shape,
                        z.clone(),
                        BlobDType::U8,
                    ),
                ));
            }
            self.constexpr("constexpr_blockwise_shift_scale", out, ty, inputs)?;
        }
        Ok(())
    }

    /// One MIL `split` for every part of `key` = (input, axis, parts): each part's value is
    /// named after the first node that takes it (parts no node takes get a name of their own),
    /// so sibling `Split` nodes share the op.
    fn split(&mut self, first: ValueId, key: (ValueId, usize, usize)) -> Result<(), LowerError> {
        let (g, names) = (self.g, self.names);
        let (input, axis, parts) = key;
        let base = names[first.index()].clone();
        let mut outs: Vec<Option<String>> = vec![None; parts];
        for (id, node) in g.nodes() {
            if let Op::Split {
                axis: a,
                parts: p,
                index,
            } = node.op
            {
                if node.inputs[0] == input && (a, p) == (axis, parts) && outs[index].is_none() {
                    outs[index] = Some(names[id.index()].clone());
                }
            }
        }
        let outs: Vec<String> = outs
            .into_iter()
            .enumerate()
            .map(|(i, n)| n.unwrap_or_else(|| format!("{base}_unused_part{i}")))
            .collect();
        let n = self.konst(
            format!("{base}_num_splits"),
            ints_value(&[], vec![parts as i32]),
        );
        let a = self.konst(format!("{base}_axis"), ints_value(&[], vec![axis as i32]));
        self.check_target("split", &g.node(first).name)?;
        // Equal parts: every one has the type of the first.
        let ty = tensor_type(&g.node(first).ty);
        self.ops.push(pb::Operation {
            r#type: "split".into(),
            inputs: [
                ("x".to_string(), arg(&names[input.index()])),
                ("num_splits".to_string(), arg(&n)),
                ("axis".to_string(), arg(&a)),
            ]
            .into_iter()
            .collect(),
            outputs: outs.iter().map(|o| named(o, ty.clone())).collect(),
            blocks: vec![],
            attributes: [name_attr(&base)].into_iter().collect(),
        });
        self.splits.insert(key, outs);
        Ok(())
    }

    /// iOS17 `quantize(input, zero_point, scale, output_dtype="int8")` to an int8 tensor, then
    /// `dequantize(input, zero_point, scale)` back to the float type: the pattern Core ML fuses
    /// into int8 compute. Both ops read the same scalar scale (in x's dtype) and int8 zero point.
    fn fake_quantize(
        &mut self,
        out: &str,
        x: &str,
        ty: &TensorType,
        scale: f32,
        zero_point: i8,
    ) -> Result<(), LowerError> {
        self.check_target("quantize", out)?;
        self.check_target("dequantize", out)?;
        let s = self.scalar(out, "scale", scale, ty.dtype);
        let zp = self.konst(
            format!("{out}_zero_point"),
            raw_bytes_value(pb::DataType::Int8, &[], vec![zero_point as u8]),
        );
        let dt = self.konst(format!("{out}_output_dtype"), string_value("int8"));
        let q = format!("{out}_int8");
        let op =
            |kind: &str, inputs: Vec<(&str, &str)>, name: &str, ty: pb::ValueType| pb::Operation {
                r#type: kind.to_string(),
                inputs: inputs
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), arg(v)))
                    .collect(),
                outputs: vec![named(name, ty)],
                blocks: vec![],
                attributes: [name_attr(name)].into_iter().collect(),
            };
        self.ops.push(op(
            "quantize",
            vec![
                ("input", x),
                ("zero_point", &zp),
                ("scale", &s),
                ("output_dtype", &dt),
            ],
            &q,
            raw_tensor_type(pb::DataType::Int8, &ty.shape),
        ));
        self.ops.push(op(
            "dequantize",
            vec![("input", &q), ("zero_point", &zp), ("scale", &s)],
            out,
            tensor_type(ty),
        ));
        Ok(())
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
            // Only an fp32 build lowers these (an fp16 one has made them dense fp16).
            Op::Const(ConstData::Half(t)) => {
                let val = self.tensor_value(&t.cast(DType::F32));
                self.konst(out, val);
                return Ok(());
            }
            Op::Const(ConstData::Palettized(p)) => return self.palettized(&out, &node.ty, p),
            Op::Const(ConstData::Quantized(q)) => return self.quantized(&out, &node.ty, q),
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
            Op::Unary(u) => (u.mil_name(), vec![("x", x(0))]),
            Op::Binary(b) => (b.mil_name(), vec![("x", x(0)), ("y", x(1))]),
            Op::Rsqrt { epsilon } => {
                let eps = self.scalar(&out, "epsilon", *epsilon, dtype);
                ("rsqrt", vec![("x", x(0)), ("epsilon", eps)])
            }
            Op::Clip { min, max } => {
                let lo = self.scalar(&out, "alpha", *min, dtype);
                let hi = self.scalar(&out, "beta", *max, dtype);
                ("clip", vec![("x", x(0)), ("alpha", lo), ("beta", hi)])
            }
            Op::FakeQuantize { scale, zero_point } => {
                return self.fake_quantize(&out, &x(0), &node.ty, *scale, *zero_point)
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
            Op::Reshape { shape } => {
                let target = reshape_spec(shape).ok_or_else(|| LowerError::Unlowered {
                    node: node.name.clone(),
                    op: "reshape with more than one symbolic dimension",
                })?;
                let shape = self.konst(format!("{out}_shape"), ints_value(&[target.len()], target));
                ("reshape", vec![("x", x(0)), ("shape", shape)])
            }
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
            Op::MatMul {
                transpose_x,
                transpose_y,
            } => {
                let tx = self.konst(format!("{out}_transpose_x"), bool_value(*transpose_x));
                let ty = self.konst(format!("{out}_transpose_y"), bool_value(*transpose_y));
                (
                    "matmul",
                    vec![
                        ("x", x(0)),
                        ("y", x(1)),
                        ("transpose_x", tx),
                        ("transpose_y", ty),
                    ],
                )
            }
            Op::Softmax { axis } => {
                let a = self.konst(format!("{out}_axis"), ints_value(&[], vec![*axis as i32]));
                ("softmax", vec![("x", x(0)), ("axis", a)])
            }
            Op::Attention { scale } => {
                // MIL's op scales by 1/sqrt(D); another scale needs the decomposed form.
                let d = g.ty(node.inputs[0]).shape[2].known();
                let default = d.map(|d| (1.0 / (d as f32).sqrt() - scale).abs() <= 1e-6 * scale);
                if default != Some(true) {
                    return Err(LowerError::Unlowered {
                        node: node.name.clone(),
                        op: "attention with a scale other than 1/sqrt(D); run lower_attention",
                    });
                }
                let mut inputs = vec![("query", x(0)), ("key", x(1)), ("value", x(2))];
                if node.inputs.len() > 3 {
                    inputs.push(("attn_mask", x(3)));
                }
                ("scaled_dot_product_attention", inputs)
            }
            Op::LayerNorm { axis, epsilon } => {
                let axes = self.ints(&out, "axes", &[*axis]);
                let eps = self.scalar(&out, "epsilon", *epsilon, dtype);
                (
                    "layer_norm",
                    vec![
                        ("x", x(0)),
                        ("axes", axes),
                        ("gamma", x(1)),
                        ("beta", x(2)),
                        ("epsilon", eps),
                    ],
                )
            }
            Op::Gather { axis } => {
                let a = self.konst(format!("{out}_axis"), ints_value(&[], vec![*axis as i32]));
                ("gather", vec![("x", x(0)), ("indices", x(1)), ("axis", a)])
            }
            Op::ArgMax { axis } => {
                let a = self.konst(format!("{out}_axis"), ints_value(&[], vec![*axis as i32]));
                let k = self.konst(format!("{out}_keep_dims"), bool_value(false));
                (
                    "reduce_argmax",
                    vec![("x", x(0)), ("axis", a), ("keep_dims", k)],
                )
            }
            Op::Slice { axis, begin, end } => {
                let rank = node.ty.rank();
                let mut b = vec![0usize; rank];
                let mut e = vec![0usize; rank];
                let mut end_mask = vec![true; rank];
                b[*axis] = *begin;
                e[*axis] = *end;
                end_mask[*axis] = false;
                let b = self.ints(&out, "begin", &b);
                let e = self.ints(&out, "end", &e);
                let m = self.konst(format!("{out}_end_mask"), bools_value(&end_mask));
                (
                    "slice_by_index",
                    vec![("x", x(0)), ("begin", b), ("end", e), ("end_mask", m)],
                )
            }
            Op::Split { axis, parts, index } => {
                let key = (node.inputs[0], *axis, *parts);
                if !self.splits.contains_key(&key) {
                    self.split(id, key)?;
                }
                let part = &self.splits[&key][*index];
                if *part == out {
                    return Ok(());
                }
                // A second node for a part already emitted (no pass merges duplicates).
                ("identity", vec![("x", part.clone())])
            }
            Op::ReshapeLike => {
                let target = match g.ty(node.inputs[1]).known_shape() {
                    Some(shape) => {
                        let v = shape.iter().map(|&n| n as i32).collect();
                        self.konst(format!("{out}_shape"), ints_value(&[shape.len()], v))
                    }
                    None => {
                        // The reference's size is only known when the model runs.
                        let name = format!("{out}_shape");
                        let rank = g.ty(node.inputs[1]).rank();
                        self.check_target("shape", &node.name)?;
                        self.ops.push(pb::Operation {
                            r#type: "shape".into(),
                            inputs: [("x".to_string(), arg(&x(1)))].into_iter().collect(),
                            outputs: vec![named(
                                &name,
                                tensor_type(&TensorType::known(DType::I32, &[rank])),
                            )],
                            blocks: vec![],
                            attributes: [name_attr(&name)].into_iter().collect(),
                        });
                        name
                    }
                };
                ("reshape", vec![("x", x(0)), ("shape", target)])
            }
            Op::Concat { axis } => {
                let a = self.konst(format!("{out}_axis"), ints_value(&[], vec![*axis as i32]));
                let i = self.konst(format!("{out}_interleave"), bool_value(false));
                let values: Vec<String> = (0..node.inputs.len()).map(x).collect();
                self.check_target("concat", &node.name)?;
                self.ops.push(pb::Operation {
                    r#type: "concat".into(),
                    inputs: [
                        ("values".to_string(), args(&values)),
                        ("axis".to_string(), arg(&a)),
                        ("interleave".to_string(), arg(&i)),
                    ]
                    .into_iter()
                    .collect(),
                    outputs: vec![named(&out, tensor_type(&node.ty))],
                    blocks: vec![],
                    attributes: [name_attr(&out)].into_iter().collect(),
                });
                return Ok(());
            }
            Op::PixelShuffle { factor } => {
                let f = self.konst(
                    format!("{out}_upscale_factor"),
                    ints_value(&[], vec![*factor as i32]),
                );
                ("pixel_shuffle", vec![("x", x(0)), ("upscale_factor", f)])
            }
        };
        self.check_target(ty, &node.name)?;
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
