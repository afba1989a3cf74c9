//! The library entry point: build options in, package path and report out. The CLI and build
//! scripts both call [`build`]; nothing here prints.

use crate::ir::{Dim, Graph};
use crate::mil::{self, lower::Interface, ModelInfo, Target};
use crate::models::{self, ModelError, ModelKind};
use crate::package::{self, PackageError};
pub use crate::passes::quantize::Mode as QuantMode;
use crate::passes::specialize_shapes::{specialize, Bindings};
pub use crate::passes::Compression;
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

/// Memory layout of a model input or output array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[1, C, H, W]`, what the decoder computes in.
    Nchw,
    /// `[1, H, W, C]`, channels last.
    Nhwc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputType {
    /// A multi-array with values in about [0, 1].
    Array,
    /// A Core ML RGB image (clamped and scaled to [0, 255] inside the model).
    Image,
}

/// The most sizes one package may enumerate (Core ML compiles every one of them).
pub const MAX_SIZES: usize = 128;

/// Everything that decides what gets built.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildOptions {
    /// `taesd`, `taesdxl`, `taesd3`, `taef1`/`flux1`, `taef2`/`flux2`.
    pub model: String,
    /// The weights file; `None` takes the model's published weights from the Hugging Face cache,
    /// downloading them there first if needed (see [`crate::hub`]).
    pub weights: Option<PathBuf>,
    /// Defaults to `<model>_decoder.mlpackage` in the current directory.
    pub output: Option<PathBuf>,
    pub precision: Precision,
    /// Precision of the model's input and output arrays; defaults to `precision`.
    pub io_precision: Option<Precision>,
    pub target: Target,
    /// Latent sizes `[height, width]` (image size / 8), the default first. One size gives a
    /// static model; several give enumerated shapes, or one function each with `multifunction`.
    pub latent_sizes: Vec<[usize; 2]>,
    /// One fully static function per size (iOS18+), sharing the weights.
    pub multifunction: bool,
    /// Write the graph after every pass here (IR text, Graphviz, MIL text, a package).
    pub dump_passes: Option<PathBuf>,
    /// Weight compression (palettization or 8-bit quantization).
    pub compression: Option<Compression>,
    pub input_layout: Layout,
    pub output_layout: Layout,
    pub output_type: OutputType,
}

impl BuildOptions {
    /// Defaults: fp16, iOS16, one 96x96 latent size (768x768 images), NCHW arrays.
    pub fn new(model: &str, weights: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            model: model.to_string(),
            weights: Some(weights.into()),
            output: None,
            precision: Precision::Fp16,
            io_precision: None,
            target: Target::Ios16,
            latent_sizes: vec![[96, 96]],
            multifunction: false,
            dump_passes: None,
            compression: None,
            input_layout: Layout::Nchw,
            output_layout: Layout::Nchw,
            output_type: OutputType::Array,
        }
    }

    /// Options for the model's published weights (from the Hugging Face cache or the hub).
    pub fn published(model: &str) -> BuildOptions {
        BuildOptions {
            weights: None,
            ..BuildOptions::new(model, "")
        }
    }

    /// The weights file to read: the given one, or the published one, fetched if not cached.
    pub fn weights_path(&self) -> Result<PathBuf, BuildError> {
        if let Some(p) = &self.weights {
            return Ok(p.clone());
        }
        let src = crate::hub::require_source(&self.model)?;
        Ok(crate::hub::resolve(src, &crate::hub::HubConfig::from_env())?.path)
    }

    pub fn output_path(&self) -> Result<PathBuf, BuildError> {
        let kind = ModelKind::parse(&self.model)?;
        Ok(self
            .output
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}_decoder.mlpackage", kind.name()))))
    }

    /// Checks option combinations before any work is done.
    pub fn validate(&self) -> Result<(), BuildError> {
        let bad = |m: String| Err(BuildError::Options(m));
        let sizes = &self.latent_sizes;
        if sizes.is_empty() {
            return bad("no size given".into());
        }
        if sizes.len() > MAX_SIZES {
            return bad(format!(
                "{} sizes given; at most {MAX_SIZES} can be enumerated",
                sizes.len()
            ));
        }
        for (i, s) in sizes.iter().enumerate() {
            if s.contains(&0) {
                return bad(format!("latent size {}x{} is empty", s[0], s[1]));
            }
            if sizes[..i].contains(s) {
                return bad(format!(
                    "size {}x{} (image {}x{}) is given twice",
                    s[0],
                    s[1],
                    8 * s[0],
                    8 * s[1]
                ));
            }
        }
        if self.multifunction {
            if self.target < Target::Ios18 {
                return bad(format!(
                    "--multifunction needs --target ios18 or newer (got {})",
                    self.target
                ));
            }
            if sizes.len() < 2 {
                return bad(
                    "--multifunction needs at least two sizes (one function per size)".into(),
                );
            }
        }
        match &self.compression {
            Some(Compression::Palettize {
                bits, group_size, ..
            }) => {
                let ok: &[u32] = if self.target >= Target::Ios18 {
                    &[1, 2, 3, 4, 6, 8]
                } else {
                    &[1, 2, 4, 6, 8]
                };
                if !ok.contains(bits) {
                    let also = if *bits == 3 {
                        " (3 needs --target ios18)"
                    } else {
                        ""
                    };
                    return bad(format!(
                        "--palettize {bits}: {} supports {ok:?} bits{also}",
                        self.target
                    ));
                }
                if let Some(g) = group_size {
                    if *g == 0 {
                        return bad(
                            "--granularity per-grouped-channel=0: the group size must be positive"
                                .into(),
                        );
                    }
                    if self.target < Target::Ios18 {
                        return bad(format!(
                            "--granularity per-grouped-channel needs --target ios18 (got {})",
                            self.target
                        ));
                    }
                }
            }
            Some(Compression::Quantize {
                mode,
                block_size: Some(b),
                ..
            }) => {
                if *b == 0 {
                    return bad("--block-size 0: the block size must be positive".into());
                }
                if self.target < Target::Ios18 {
                    return bad(format!(
                        "--block-size needs --target ios18 (got {})",
                        self.target
                    ));
                }
                if *mode == QuantMode::Uint8 {
                    return bad("--block-size works with --quantize int8 only".into());
                }
            }
            Some(Compression::Quantize {
                block_size: None, ..
            }) => {}
            None => {}
        }
        if self.output_type == OutputType::Image {
            if self.io_precision == Some(Precision::Fp16) {
                return bad("--output-type image: Core ML image outputs are fp32 arrays; drop --io-precision fp16".into());
            }
            if self.output_layout == Layout::Nhwc {
                return bad(
                    "--output-type image has its own layout; drop --output-layout nhwc".into(),
                );
            }
        }
        Ok(())
    }

    /// Symbol values per size for the axes whose size varies (empty for a static model).
    fn bindings(&self) -> Vec<Bindings> {
        let (hs, ws) = self.symbolic_axes();
        if !hs && !ws {
            return vec![];
        }
        self.latent_sizes
            .iter()
            .map(|&[h, w]| {
                let mut b = Bindings::new();
                if hs {
                    b.insert("H".into(), h);
                }
                if ws {
                    b.insert("W".into(), w);
                }
                b
            })
            .collect()
    }

    /// Whether height and width vary across the sizes.
    fn symbolic_axes(&self) -> (bool, bool) {
        let first = self.latent_sizes[0];
        (
            self.latent_sizes.iter().any(|s| s[0] != first[0]),
            self.latent_sizes.iter().any(|s| s[1] != first[1]),
        )
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
    /// How the emitted program fits the Neural Engine.
    pub ane: crate::ane::AneReport,
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
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    #[error("--dump-passes: {0}")]
    Dump(std::io::Error),
}

/// A built model in memory, before it is written.
pub struct Compiled {
    pub model: ModelKind,
    pub lowered: mil::Lowered,
    pub weights_sha256: String,
    pub timings: Vec<(String, Duration)>,
}

/// The IR of `opts`' model as the builder declares it (before any pass). A spatial axis whose
/// size differs between the enumerated sizes is symbolic (`H`, `W`).
pub fn declare(opts: &BuildOptions, weights: &Weights) -> Result<Graph, BuildError> {
    opts.validate()?;
    let kind = ModelKind::parse(&opts.model)?;
    let (hs, ws) = opts.symbolic_axes();
    let [h, w] = opts.latent_sizes[0];
    let h = if hs { Dim::sym("H") } else { Dim::Known(h) };
    let w = if ws { Dim::sym("W") } else { Dim::Known(w) };
    Ok(models::build_decoder(kind, weights, [h, w])?)
}

/// The pass pipeline `opts` asks for.
pub fn pipeline_options(opts: &BuildOptions) -> PipelineOptions {
    let fp16 = opts.precision == Precision::Fp16;
    let fp16_io = fp16 && opts.io_precision.unwrap_or(opts.precision) == Precision::Fp16;
    let image = opts.output_type == OutputType::Image;
    PipelineOptions {
        fp16,
        fp16_inputs: fp16_io,
        fp16_outputs: fp16_io && !image,
        input_nhwc: opts.input_layout == Layout::Nhwc,
        output_nhwc: opts.output_layout == Layout::Nhwc,
        image_output: image,
        sizes: if opts.multifunction {
            vec![]
        } else {
            opts.bindings()
        },
        compression: opts.compression.clone(),
    }
}

/// Function names of a multifunction package: the image size each decodes to.
pub fn function_name(latent: [usize; 2]) -> String {
    format!("decode_{}x{}", 8 * latent[0], 8 * latent[1])
}

/// Loads weights, declares, optimizes and lowers the model; `after_pass` sees the declared graph
/// (as `"declare"`) and the graph after each pass.
pub fn compile(
    opts: &BuildOptions,
    after_pass: impl FnMut(&str, &Graph),
) -> Result<Compiled, BuildError> {
    let t = Instant::now();
    ModelKind::parse(&opts.model)?;
    let path = opts.weights_path()?;
    let weights = Weights::load(&path).map_err(ModelError::from)?;
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
    after_pass("declare", &g);

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
    let iface = interface(opts);
    let lowered = if opts.multifunction {
        let functions = opts
            .latent_sizes
            .iter()
            .zip(opts.bindings())
            .map(|(&size, b)| {
                Ok((
                    function_name(size),
                    specialize(&g, &b).map_err(|source| PassError {
                        pass: "specialize_shapes",
                        source,
                    })?,
                ))
            })
            .collect::<Result<Vec<_>, BuildError>>()?;
        mil::lower::lower_multifunction(&functions, opts.target, &info, &iface)?
    } else {
        mil::lower(&g, opts.target, &info, &iface)?
    };
    timings.push(("lower".to_string(), t.elapsed()));
    Ok(Compiled {
        model: kind,
        lowered,
        weights_sha256,
        timings,
    })
}

/// Builds the package `opts` describes and writes it atomically.
///
/// Prints nothing, so it can run in a build script: with mlc as a build dependency, an app crate
/// compiles its decoder into `OUT_DIR` and bakes the path in (examples/buildscript does this).
///
/// ```no_run
/// // build.rs
/// use mlc::compiler::{build, BuildOptions};
/// use std::path::PathBuf;
///
/// let weights = "weights/taef2_decoder.safetensors";
/// println!("cargo:rerun-if-changed={weights}");
/// let mut opts = BuildOptions::new("flux2", weights);
/// let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
/// opts.output = Some(out_dir.join("taef2.mlpackage"));
/// opts.latent_sizes = vec![[32, 32]]; // 256x256 images
/// let report = build(&opts).unwrap_or_else(|e| panic!("mlc: {e}"));
/// // In the crate: `env!("TAEF2_MLPACKAGE")`.
/// println!("cargo:rustc-env=TAEF2_MLPACKAGE={}", report.package.display());
/// ```
pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let out = opts.output_path()?;
    let mut dumper = match &opts.dump_passes {
        Some(dir) => Some(
            crate::dump::Dumper::new(dir, opts.target, interface(opts))
                .map_err(BuildError::Dump)?,
        ),
        None => None,
    };
    let compiled = compile(opts, |pass, g| {
        if let Some(d) = dumper.as_mut() {
            d.dump(pass, g);
        }
    })?;
    if let Some(d) = dumper {
        d.finish().map_err(BuildError::Dump)?;
    }
    let Compiled {
        model,
        lowered,
        weights_sha256,
        mut timings,
    } = compiled;
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
        ane: crate::ane::analyze(&lowered.model),
    })
}

/// How the package's features are described for `opts`.
fn interface(opts: &BuildOptions) -> Interface {
    Interface {
        sizes: if opts.multifunction {
            vec![]
        } else {
            opts.bindings()
        },
        image_outputs: opts.output_type == OutputType::Image,
    }
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
    let sizes: Vec<String> = opts
        .latent_sizes
        .iter()
        .map(|s| format!("{}x{}", 8 * s[0], 8 * s[1]))
        .collect();
    let user_defined = BTreeMap::from([
        ("mlc.model".to_string(), kind.name().to_string()),
        (
            "mlc.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("mlc.target".to_string(), opts.target.name().to_string()),
        ("mlc.image_sizes".to_string(), sizes.join(",")),
        (
            "mlc.weights.source".to_string(),
            weight_source(&weights.path),
        ),
        ("mlc.weights.sha256".to_string(), sha256.to_string()),
    ]);
    ModelInfo {
        short_description: format!(
            "{} decoder (Tiny AutoEncoder): {}-channel latents to RGB images ({})",
            kind.name().to_uppercase(),
            cfg.latent_channels,
            sizes.join(", ")
        ),
        author: "mlc (decoder weights: madebyollin/taesd, MIT)".to_string(),
        license: "MIT".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        user_defined,
        feature_descriptions: BTreeMap::from([
            (
                "latent".to_string(),
                format!("Diffusion latent, {} channels, NCHW", cfg.latent_channels),
            ),
            (
                "image".to_string(),
                "RGB image, NCHW, values in about [0, 1] (not clamped)".to_string(),
            ),
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
