//! What a build reports: the package, its size and op count, stage timings, the Neural Engine
//! verdict and the largest value it computes.

use crate::ir::Graph;
use crate::models::Part;
use crate::passes::specialize_shapes::Bindings;
use std::path::PathBuf;
use std::time::Duration;

/// What a build produced.
#[derive(Clone, Debug)]
pub struct BuildReport {
    pub package: PathBuf,
    /// The model's canonical name.
    pub model: &'static str,
    pub part: Part,
    /// Non-const MIL ops.
    pub ops: usize,
    pub weight_bytes: usize,
    pub weights_sha256: String,
    /// Wall time of each stage, in order.
    pub timings: Vec<(String, Duration)>,
    /// How the emitted program fits the Neural Engine.
    pub ane: crate::ane::AneReport,
    /// The largest value the program computes (not a weight), at the size where it is largest.
    pub largest_intermediate: Option<Intermediate>,
    /// What `--activation-min-psnr` kept float.
    pub kept_float: Option<KeptFloat>,
    /// Ops an fp16 build computes in fp32: the regions the model fences (0 in fp32 builds).
    pub fp32_ops: usize,
    /// The LoRAs fused into the weights, in order.
    pub loras: Vec<crate::lora::LoraSummary>,
}

/// The layers whose inputs `--activation-min-psnr` kept float.
#[derive(Clone, Debug, PartialEq)]
pub struct KeptFloat {
    /// The convs and adds (node names) whose inputs stayed float.
    pub names: Vec<String>,
    /// Sites that could take int8 activations.
    pub sites: usize,
    /// Output PSNR on the calibration set with the rest in int8.
    pub psnr: f64,
}

/// One computed value of the final graph at one size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intermediate {
    pub name: String,
    pub shape: Vec<usize>,
    pub bytes: usize,
}

/// The largest non-constant value of `g` over every size in `sizes` (the graph's own known
/// shapes when `sizes` is empty).
pub fn largest_intermediate(g: &Graph, sizes: &[Bindings]) -> Option<Intermediate> {
    let none = [Bindings::new()];
    let sizes = if sizes.is_empty() { &none[..] } else { sizes };
    let mut best: Option<Intermediate> = None;
    for b in sizes {
        for (_, node) in g.nodes() {
            if matches!(node.op, crate::ir::Op::Const(_)) {
                continue;
            }
            let Some(shape) = node
                .ty
                .shape
                .iter()
                .map(|d| d.resolve(&|s| b.get(s).copied()))
                .collect::<Option<Vec<usize>>>()
            else {
                continue;
            };
            let bytes = shape
                .iter()
                .try_fold(node.ty.dtype.byte_size(), |acc, &d| acc.checked_mul(d))
                .unwrap_or(usize::MAX);
            if best.as_ref().is_none_or(|x| bytes > x.bytes) {
                best = Some(Intermediate {
                    name: node.name.clone(),
                    shape,
                    bytes,
                });
            }
        }
    }
    best
}

/// Non-const MIL ops of every function of a model.
pub fn count_ops(model: &crate::proto::specification::Model) -> usize {
    match &model.r#type {
        Some(crate::proto::specification::model::Type::MlProgram(p)) => p
            .functions
            .values()
            .flat_map(|f| f.block_specializations.values())
            .flat_map(|b| &b.operations)
            .filter(|op| op.r#type != "const")
            .count(),
        _ => 0,
    }
}
