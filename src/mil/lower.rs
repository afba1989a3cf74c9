//! Lowering: IR graph → Core ML `Model` protobuf with an ML Program, plus its `weight.bin`.
//!
//! Each IR op's file (`src/ir/ops/`) lowers its nodes through the [`Emitter`]; this module
//! makes the functions, their feature descriptions and the model around them. The value an
//! output is taken from is named after the output feature.

use super::emit::Emitter;
use super::target::Target;
use super::values::{named, tensor_type};
use crate::ir::{Dim, Graph, Op, TensorType};
use crate::package::BlobWriter;
use crate::passes::specialize_shapes::Bindings;
use crate::proto::mil_spec as pb;
use crate::proto::specification as spec;
use crate::tensor::DType;
use std::collections::BTreeMap;

pub use super::emit::BLOB_MIN_ELEMENTS;

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
    #[error("weight {node}: {why}")]
    Weight { node: String, why: String },
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

/// How the function's inputs and outputs are typed as Core ML features: multi-arrays or RGB
/// images, with the enumerated sizes of symbolic shapes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeatureTypes {
    /// Symbol values of each enumerated size, default first; empty for static shapes.
    pub sizes: Vec<Bindings>,
    /// The outputs that are Core ML RGB images (fp32 `[1, 3, H, W]` values in [0, 255]), by
    /// name; the others are multi-arrays.
    pub image_outputs: Vec<String>,
    /// The inputs that are Core ML RGB images, by name; the others are multi-arrays.
    pub image_inputs: Vec<String>,
}

/// Lowers a verified graph whose ops all have MIL forms into a model with one function, `main`.
pub fn lower(
    g: &Graph,
    target: Target,
    info: &ModelInfo,
    iface: &FeatureTypes,
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
    iface: &FeatureTypes,
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
    iface: &FeatureTypes,
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
    iface: &FeatureTypes,
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
    let mut f = Emitter::new(g, target, &names, blobs);
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
fn features(g: &Graph, info: &ModelInfo, iface: &FeatureTypes) -> Result<FeaturePair, LowerError> {
    let names = value_names(g)?;
    let inputs = g
        .inputs()
        .iter()
        .map(|&v| {
            let name = &names[v.index()];
            if iface.image_inputs.contains(name) {
                image_feature(name, g.ty(v), info, &iface.sizes)
            } else {
                array_feature(name, g.ty(v), info, &iface.sizes, true)
            }
        })
        .collect::<Result<_, _>>()?;
    let outputs = g
        .outputs()
        .iter()
        .map(|(n, v)| {
            if iface.image_outputs.contains(n) {
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
