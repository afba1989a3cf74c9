//! The library entry point: build options in, package path and report out. The CLI and build
//! scripts both call [`build`]; nothing here prints.

use crate::ir::{Dim, Graph};
use crate::mil::{self, ModelInfo, Target};
use crate::models::{self, ModelError, ModelKind};
use crate::package::{self, PackageError};
use crate::passes::{self, PassError, PipelineOptions};
use crate::weights::Weights;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp16,
    Fp32,
}

/// Everything that decides what gets built.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildOptions {
    /// `taesd`, `taesdxl`, `taesd3`, `taef1`/`flux1`, `taef2`/`flux2`.
    pub model: String,
    pub weights: PathBuf,
    /// Defaults to `<model>_decoder.mlpackage` in the current directory.
    pub output: Option<PathBuf>,
    pub precision: Precision,
    /// Precision of the model's input and output arrays; defaults to `precision`.
    pub io_precision: Option<Precision>,
    pub target: Target,
    /// Latent height and width (image size / 8).
    pub latent_size: [usize; 2],
}

impl BuildOptions {
    /// Defaults: fp16, iOS16, 96x96 latents (768x768 images).
    pub fn new(model: &str, weights: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            model: model.to_string(),
            weights: weights.into(),
            output: None,
            precision: Precision::Fp16,
            io_precision: None,
            target: Target::Ios16,
            latent_size: [96, 96],
        }
    }

    pub fn output_path(&self) -> Result<PathBuf, BuildError> {
        let kind = ModelKind::parse(&self.model)?;
        Ok(self
            .output
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}_decoder.mlpackage", kind.name()))))
    }
}

/// What a build produced.
#[derive(Clone, Debug)]
pub struct BuildReport {
    pub package: PathBuf,
    pub model: ModelKind,
    /// Non-const MIL ops.
    pub ops: usize,
    pub weight_bytes: usize,
    pub weights_sha256: String,
    /// Wall time of each stage, in order.
    pub timings: Vec<(String, Duration)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Lower(#[from] mil::LowerError),
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("--latent-size: {0}")]
    Size(String),
}

/// A built model in memory, before it is written.
pub struct Compiled {
    pub model: ModelKind,
    pub lowered: mil::Lowered,
    pub weights_sha256: String,
    pub timings: Vec<(String, Duration)>,
}

/// The IR of `opts`' model as the builder declares it (before any pass).
pub fn declare(opts: &BuildOptions, weights: &Weights) -> Result<Graph, BuildError> {
    let kind = ModelKind::parse(&opts.model)?;
    let [h, w] = opts.latent_size;
    if h == 0 || w == 0 {
        return Err(BuildError::Size(format!(
            "sizes must be positive, got {h}x{w}"
        )));
    }
    Ok(models::build_decoder(
        kind,
        weights,
        [Dim::Known(h), Dim::Known(w)],
    )?)
}

/// The pass pipeline `opts` asks for.
pub fn pipeline_options(opts: &BuildOptions) -> PipelineOptions {
    let fp16 = opts.precision == Precision::Fp16;
    PipelineOptions {
        fp16,
        fp16_io: fp16 && opts.io_precision.unwrap_or(opts.precision) == Precision::Fp16,
    }
}

/// Loads weights, declares, optimizes and lowers the model; `after_pass` sees the graph after
/// each pass.
pub fn compile(
    opts: &BuildOptions,
    after_pass: impl FnMut(&str, &Graph),
) -> Result<Compiled, BuildError> {
    let t = Instant::now();
    ModelKind::parse(&opts.model)?;
    let weights = Weights::load(&opts.weights).map_err(ModelError::from)?;
    let mut c = compile_weights(opts, &weights, after_pass)?;
    c.timings
        .insert(0, ("load weights".to_string(), t.elapsed()));
    Ok(c)
}

/// [`compile`] with weights already in memory (`opts.weights` is ignored).
pub fn compile_weights(
    opts: &BuildOptions,
    weights: &Weights,
    mut after_pass: impl FnMut(&str, &Graph),
) -> Result<Compiled, BuildError> {
    let mut timings = Vec::new();
    let kind = ModelKind::parse(&opts.model)?;

    let t = Instant::now();
    let g = declare(opts, weights)?;
    timings.push(("declare".to_string(), t.elapsed()));

    let list = passes::pipeline(&pipeline_options(opts));
    let mut t = Instant::now();
    let g = passes::run(g, &list, |p, g| {
        timings.push((p.name().to_string(), t.elapsed()));
        after_pass(p.name(), g);
        t = Instant::now();
    })?;

    let t = Instant::now();
    let weights_sha256 = weights.content_sha256();
    let info = model_info(kind, weights, &weights_sha256, opts);
    let lowered = mil::lower(&g, opts.target, &info)?;
    timings.push(("lower".to_string(), t.elapsed()));
    Ok(Compiled {
        model: kind,
        lowered,
        weights_sha256,
        timings,
    })
}

/// Builds the package `opts` describes and writes it atomically.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let out = opts.output_path()?;
    let Compiled {
        model,
        lowered,
        weights_sha256,
        mut timings,
    } = compile(opts, |_, _| {})?;
    let t = Instant::now();
    package::write_package(&out, &lowered.model, lowered.weight_bin.as_deref())?;
    timings.push(("write".to_string(), t.elapsed()));
    Ok(BuildReport {
        package: out,
        model,
        ops: count_ops(&lowered.model),
        weight_bytes: lowered.weight_bin.as_ref().map_or(0, Vec::len),
        weights_sha256,
        timings,
    })
}

fn count_ops(model: &crate::proto::specification::Model) -> usize {
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

fn model_info(kind: ModelKind, weights: &Weights, sha256: &str, opts: &BuildOptions) -> ModelInfo {
    let cfg = kind.config();
    let [h, w] = opts.latent_size;
    let user_defined = BTreeMap::from([
        ("mlc.model".to_string(), kind.name().to_string()),
        (
            "mlc.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("mlc.target".to_string(), opts.target.name().to_string()),
        (
            "mlc.weights.source".to_string(),
            weight_source(&weights.path),
        ),
        ("mlc.weights.sha256".to_string(), sha256.to_string()),
    ]);
    ModelInfo {
        short_description: format!(
            "{} decoder (Tiny AutoEncoder): latent [1, {}, {h}, {w}] to RGB image [1, 3, {}, {}] in about [0, 1]",
            kind.name().to_uppercase(),
            cfg.latent_channels,
            8 * h,
            8 * w
        ),
        author: "mlc (decoder weights: madebyollin/taesd, MIT)".to_string(),
        license: "MIT".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        user_defined,
        feature_descriptions: BTreeMap::from([
            ("latent".to_string(), format!("Diffusion latent, {} channels, NCHW", cfg.latent_channels)),
            ("image".to_string(), "RGB image, NCHW, values in about [0, 1] (not clamped)".to_string()),
        ]),
    }
}

/// The weights' source as recorded in metadata: the file stem, so that the same weights in
/// another container (`taef2_decoder.pth`, `taef2_decoder.safetensors`) give the same package.
fn weight_source(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
