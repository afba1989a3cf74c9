//! The library entry point: build options in, package path and report out. The CLI and build
//! scripts both call [`build`]; nothing here prints.

use crate::ir::Graph;
use crate::mil::{self, lower::FeatureTypes, ModelInfo, Target};
use crate::models::{self, Model, ModelError, ModelOptions, Part, Role};
use crate::package::{self, BlobWriter, PackageError};
use crate::passes::image_input::PixelMap;
pub use crate::passes::quantize::Mode as QuantMode;
use crate::passes::specialize_shapes::{Bindings, Specialize};
pub use crate::passes::Compression;
use crate::passes::{self, PassError, PipelineOptions};
use crate::weights::Weights;
use std::collections::BTreeMap;
use std::path::PathBuf;
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

/// How the model's image input is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputType {
    /// A multi-array in the model's own range.
    Array,
    /// A Core ML RGB image (0..255 pixels mapped to the model's range inside the model).
    Image,
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

/// The largest image side a package may be built for, in pixels (2048 latent pixels for models
/// whose image is 8x the latent). Larger sizes are refused before anything is computed.
pub const MAX_IMAGE_SIDE: usize = 16384;

/// The sizes a package is built for, as the user names them; each is `[height, width]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sizes {
    /// The model's default size.
    Default,
    /// Spatial sizes of the model's latent (input of a decoder, output of an encoder).
    Latent(Vec<[usize; 2]>),
    /// Spatial sizes of the model's image.
    Image(Vec<[usize; 2]>),
}

/// Everything that decides what gets built.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildOptions {
    /// A name in the model registry (`mlc::models::known_names()`), e.g. `flux2`.
    pub model: String,
    /// Which part of the model; `None` builds its first (the decoder).
    pub part: Option<Part>,
    /// Folded pre/post-processing (latent scaling, packed input, logvar output).
    pub model_options: ModelOptions,
    /// The weights file; `None` takes the model's published weights from the Hugging Face cache,
    /// downloading them there first if needed (see [`crate::hub`]).
    pub weights: Option<PathBuf>,
    /// Defaults to `<model>_decoder.mlpackage` in the current directory.
    pub output: Option<PathBuf>,
    pub precision: Precision,
    /// Precision of the model's input and output arrays; defaults to `precision`.
    pub io_precision: Option<Precision>,
    pub target: Target,
    /// The sizes, the default first. One size gives a static model; several give enumerated
    /// shapes, or one function each with `multifunction`.
    pub sizes: Sizes,
    /// One fully static function per size (iOS18+), sharing the weights.
    pub multifunction: bool,
    /// Write the graph after every pass here (IR text, Graphviz, MIL text, a package).
    pub dump_passes: Option<PathBuf>,
    /// Weight compression (palettization or 8-bit quantization).
    pub compression: Option<Compression>,
    pub input_layout: Layout,
    pub output_layout: Layout,
    pub output_type: OutputType,
    pub input_type: InputType,
    /// Real inputs (`--calibration`): weight compression fits each conv's and linear layer's
    /// (matmul by a constant) weights to its output on them, and calibrated int8 activations take their ranges from them.
    pub calibration: Option<CalibrationSource>,
    /// int8 activations (`--quantize-activations int8`, iOS17+): quantize–dequantize pairs on
    /// conv and add inputs, clipped to ranges from this source.
    pub quantize_activations: Option<ActivationRanges>,
    /// With calibrated int8 activations: keep float the fewest layers (most sensitive first)
    /// that hold the output on the calibration set at this PSNR in dB.
    pub activation_min_psnr: Option<f64>,
}

/// Where the clipping range of each quantized activation comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ActivationRanges {
    /// Measured on the build's calibration set ([`BuildOptions::calibration`]): each value's
    /// clipping range minimises the int8 quantization error over its histogram
    /// ([`crate::calibrate`]).
    Calibrated,
    /// The largest magnitude each value takes on these model inputs (by input name): plain
    /// max-abs on data the caller chooses, for tests and measurements, not a held-out
    /// calibration.
    MaxAbs(BTreeMap<String, crate::kernels::Array>),
}

/// A calibration set as the user names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalibrationSource {
    /// A folder of PNG/JPEG photos, or a safetensors file of model inputs.
    pub path: PathBuf,
    /// For a decoder calibrated on photos: the weights of the encoder that turns them into
    /// latents (else the model's own file where it holds one, or the published encoder).
    pub encoder_weights: Option<PathBuf>,
    /// Scale photos smaller than the model's size up instead of refusing them.
    pub upscale: bool,
}

impl BuildOptions {
    /// Defaults: the decoder, fp16, iOS16, the model's default size (96x96 latents for TAESD
    /// decoders), NCHW arrays.
    pub fn new(model: &str, weights: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            model: model.to_string(),
            part: None,
            model_options: ModelOptions::default(),
            weights: Some(weights.into()),
            output: None,
            precision: Precision::Fp16,
            io_precision: None,
            target: Target::Ios16,
            sizes: Sizes::Default,
            multifunction: false,
            dump_passes: None,
            compression: None,
            input_layout: Layout::Nchw,
            output_layout: Layout::Nchw,
            output_type: OutputType::Array,
            input_type: InputType::Array,
            calibration: None,
            quantize_activations: None,
            activation_min_psnr: None,
        }
    }

    /// Options for the model's published weights (from the Hugging Face cache or the hub).
    pub fn published(model: &str) -> BuildOptions {
        BuildOptions {
            weights: None,
            ..BuildOptions::new(model, "")
        }
    }

    /// The model and part asked for.
    pub fn model_part(&self) -> Result<(&'static dyn Model, Part), BuildError> {
        let model = models::lookup(&self.model)?;
        let part = match self.part {
            None => model.parts()[0],
            Some(p) if model.parts().contains(&p) => p,
            Some(p) => {
                return Err(ModelError::NoPart {
                    model: model.name(),
                    part: p,
                    has: model
                        .parts()
                        .iter()
                        .map(|p| p.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
                .into())
            }
        };
        Ok((model, part))
    }

    /// The weights file to read: the given one, or the published one, fetched if not cached.
    pub fn weights_path(&self) -> Result<PathBuf, BuildError> {
        if let Some(p) = &self.weights {
            return Ok(p.clone());
        }
        let (model, part) = self.model_part()?;
        let src = match (model.published(part), part) {
            (Some(src), _) => src,
            (None, Part::Decoder) => crate::hub::require_source(model.name())?,
            (None, Part::Encoder) => {
                return option_error(
                    BuildOption::Weights,
                    format!(
                        "no published {part} weights for {} are known; give a weights file",
                        model.name()
                    ),
                )
            }
        };
        Ok(crate::hub::resolve(src, &crate::hub::HubConfig::from_env())?.path)
    }

    pub fn output_path(&self) -> Result<PathBuf, BuildError> {
        let (model, part) = self.model_part()?;
        Ok(self
            .output
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}_{part}.mlpackage", model.name()))))
    }

    /// The interface symbols' values for every size, the default first.
    pub fn size_bindings(&self) -> Result<Vec<Bindings>, BuildError> {
        let (model, part) = self.model_part()?;
        let iface = model.interface(part, &self.model_options);
        let (role, sizes) = match &self.sizes {
            Sizes::Default => return Ok(vec![iface.default_size.clone()]),
            Sizes::Latent(s) => (Role::Latent, s),
            Sizes::Image(s) => (Role::Image, s),
        };
        let bad = |m: String| option_error(BuildOption::Sizes, m);
        if sizes.is_empty() {
            return bad("no size given".into());
        }
        if sizes.len() > MAX_SIZES {
            return bad(format!(
                "{} sizes given; at most {MAX_SIZES} can be enumerated",
                sizes.len()
            ));
        }
        let mut out: Vec<Bindings> = Vec::with_capacity(sizes.len());
        for s in sizes {
            if s.contains(&0) {
                return bad(format!("{} size {}x{} is empty", role.name(), s[0], s[1]));
            }
            let too_big = |side: &[usize; 2]| side.iter().any(|&n| n > MAX_IMAGE_SIDE);
            if too_big(s) {
                return bad(format!(
                    "{} size {}x{} is over the limit of {MAX_IMAGE_SIDE} per side",
                    role.name(),
                    s[0],
                    s[1]
                ));
            }
            let b = iface.bindings(role, *s)?;
            if let Some(image) = iface.size_of(Role::Image, &b).filter(too_big) {
                return bad(format!(
                    "{} size {}x{} gives {}x{} images, over the limit of {MAX_IMAGE_SIDE} pixels per side",
                    role.name(),
                    s[0],
                    s[1],
                    image[0],
                    image[1]
                ));
            }
            if out.contains(&b) {
                return bad(format!(
                    "{} size {}x{} is given twice",
                    role.name(),
                    s[0],
                    s[1]
                ));
            }
            out.push(b);
        }
        Ok(out)
    }

    /// Checks option combinations before any work is done.
    pub fn validate(&self) -> Result<(), BuildError> {
        use BuildOption as O;
        let sizes = self.size_bindings()?;
        let (model, part) = self.model_part()?;
        model.check_options(part, &self.model_options)?;
        let ios18 = |o: BuildOption| {
            option_error(
                o,
                format!("needs target ios18 or newer (got {})", self.target),
            )
        };
        if self.multifunction {
            if self.target < Target::Ios18 {
                return ios18(O::Multifunction);
            }
            if sizes.len() < 2 {
                return option_error(
                    O::Multifunction,
                    "needs at least two sizes (one function per size)",
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
                        " (3 needs target ios18)"
                    } else {
                        ""
                    };
                    return option_error(
                        O::Palettize(*bits),
                        format!("{} supports {ok:?} bits{also}", self.target),
                    );
                }
                if let Some(g) = group_size {
                    if *g == 0 {
                        return option_error(O::Granularity, "the group size must be positive");
                    }
                    if self.target < Target::Ios18 {
                        return ios18(O::Granularity);
                    }
                }
            }
            Some(Compression::Quantize {
                mode,
                block_size: Some(b),
                ..
            }) => {
                if *b == 0 {
                    return option_error(O::BlockSize, "the block size must be positive");
                }
                if self.target < Target::Ios18 {
                    return ios18(O::BlockSize);
                }
                if *mode == QuantMode::Uint8 {
                    return option_error(
                        O::BlockSize,
                        "block scales are for int8 only (uint8 keeps one scale per channel)",
                    );
                }
            }
            Some(Compression::Quantize {
                block_size: None, ..
            }) => {}
            None => {}
        }
        if let Some(src) = &self.quantize_activations {
            if self.target < Target::Ios17 {
                return option_error(
                    O::QuantizeActivations,
                    format!(
                        "needs target ios17 or newer for MIL's quantize op (got {})",
                        self.target
                    ),
                );
            }
            if let Some(p) = self.activation_min_psnr.filter(|p| !p.is_finite()) {
                return option_error(
                    O::QuantizeActivations,
                    format!("--activation-min-psnr {p}: needs a finite number of dB"),
                );
            }
            if let (Some(p), ActivationRanges::MaxAbs(_)) = (self.activation_min_psnr, src) {
                return option_error(
                    O::QuantizeActivations,
                    format!("--activation-min-psnr {p} needs a calibration set"),
                );
            }
            if *src == ActivationRanges::Calibrated && self.calibration.is_none() {
                return option_error(O::QuantizeActivations, "needs a calibration set");
            }
        }
        if let Some(c) = &self.calibration {
            if self.compression.is_none() && self.quantize_activations.is_none() {
                return option_error(
                    O::Calibration,
                    "calibrates compression: give a weight compression or int8 activations",
                );
            }
            if std::fs::metadata(&c.path).is_err() {
                return option_error(
                    O::Calibration,
                    format!("calibration {}: not found", c.path.display()),
                );
            }
        }
        let iface = model.interface(part, &self.model_options);
        // An image size with no default is the weights' (clip-vision's position table): one
        // size can be checked against them, several cannot all be it.
        if sizes.len() > 1
            && iface.feature(Role::Image).is_some()
            && iface.size_of(Role::Image, &iface.default_size).is_none()
        {
            return option_error(
                O::Sizes,
                format!(
                    "{} sizes given, but {}'s weights fix its one image size",
                    sizes.len(),
                    model.name()
                ),
            );
        }
        if self.output_type == OutputType::Image && image_range(&iface.outputs).is_none() {
            return option_error(
                O::OutputType,
                format!("the {part}'s output is not an RGB image"),
            );
        }
        if self.input_type == InputType::Image {
            if image_range(&iface.inputs).is_none() {
                return option_error(
                    O::InputType,
                    format!("the {part}'s input is not an RGB image"),
                );
            }
            if self.io_precision == Some(Precision::Fp16) {
                return option_error(
                    O::InputType,
                    "Core ML image inputs are fp32 arrays; fp16 I/O precision cannot apply",
                );
            }
            if self.input_layout == Layout::Nhwc {
                return option_error(
                    O::InputType,
                    "an image has its own layout; an NHWC input layout cannot apply",
                );
            }
        }
        if self.output_type == OutputType::Image {
            if self.io_precision == Some(Precision::Fp16) {
                return option_error(
                    O::OutputType,
                    "Core ML image outputs are fp32 arrays; fp16 I/O precision cannot apply",
                );
            }
            if self.output_layout == Layout::Nhwc {
                return option_error(
                    O::OutputType,
                    "an image has its own layout; an NHWC output layout cannot apply",
                );
            }
        }
        Ok(())
    }

    /// Symbol values per size for the symbols whose size varies (empty for a static model).
    fn bindings(&self) -> Result<Vec<Bindings>, BuildError> {
        let all = self.size_bindings()?;
        let fixed = fixed_symbols(&all);
        if all.len() < 2 {
            return Ok(vec![]);
        }
        Ok(all
            .into_iter()
            .map(|b| {
                b.into_iter()
                    .filter(|(k, _)| !fixed.contains_key(k))
                    .collect()
            })
            .collect())
    }
}

/// The symbols whose value is the same at every size, with that value.
fn fixed_symbols(all: &[Bindings]) -> Bindings {
    let Some(first) = all.first() else {
        return Bindings::new();
    };
    first
        .iter()
        .filter(|(k, v)| all.iter().all(|b| b.get(*k) == Some(v)))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// A build option, as errors name it (the CLI maps each to its flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildOption {
    Weights,
    Sizes,
    Multifunction,
    /// Palettization with this many bits.
    Palettize(u32),
    Granularity,
    BlockSize,
    OutputType,
    InputType,
    QuantizeActivations,
    Calibration,
}

impl std::fmt::Display for BuildOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildOption::Weights => f.write_str("weights"),
            BuildOption::Sizes => f.write_str("sizes"),
            BuildOption::Multifunction => f.write_str("multifunction"),
            BuildOption::Palettize(b) => write!(f, "palettization to {b} bits"),
            BuildOption::Granularity => f.write_str("per-grouped-channel palettes"),
            BuildOption::BlockSize => f.write_str("blockwise quantization"),
            BuildOption::OutputType => f.write_str("image output"),
            BuildOption::InputType => f.write_str("image input"),
            BuildOption::QuantizeActivations => f.write_str("int8 activations"),
            BuildOption::Calibration => f.write_str("calibration"),
        }
    }
}

fn option_error<T>(option: BuildOption, reason: impl Into<String>) -> Result<T, BuildError> {
    Err(BuildError::Option {
        option,
        reason: reason.into(),
    })
}

/// Clipping ranges of the values int8 activations need, by value.
pub type Ranges = std::collections::HashMap<crate::ir::ValueId, f32>;

/// The calibration set `opts` names, read into the model's inputs at its first size (a decoder's
/// photos encoded by its encoder); `None` without `--calibration`.
pub fn load_calibration(
    opts: &BuildOptions,
) -> Result<Option<crate::calibrate::Calibration>, BuildError> {
    calibration(opts, None)
}

/// [`load_calibration`], with the sizes the options leave open taken from the `declared`
/// graph's inputs where it is given.
fn calibration(
    opts: &BuildOptions,
    declared: Option<&Graph>,
) -> Result<Option<crate::calibrate::Calibration>, BuildError> {
    let Some(c) = &opts.calibration else {
        return Ok(None);
    };
    let failed = |reason: String| BuildError::Option {
        option: BuildOption::Calibration,
        reason,
    };
    let (model, part) = opts.model_part()?;
    let mut b = opts.size_bindings()?.into_iter().next().unwrap_or_default();
    if let Some(g) = declared {
        bind_from_graph(&mut b, &model.interface(part, &opts.model_options), g);
    }
    let weights = opts.weights_path()?;
    let mut target = crate::calibrate::SampleSpec::for_model(
        model,
        part,
        &opts.model_options,
        &b,
        Some(&weights),
        c.encoder_weights.as_deref(),
    )
    .map_err(|e| failed(e.to_string()))?;
    target.upscale = c.upscale;
    crate::calibrate::Calibration::load(&c.path, &target)
        .map(Some)
        .map_err(|e| failed(e.to_string()))
}

/// Binds the interface's size symbols the options leave open from the declared graph's inputs:
/// where the weights fix a size (an image encoder's position embeddings), the graph has it and
/// the options do not.
fn bind_from_graph(b: &mut Bindings, iface: &models::Interface, g: &Graph) {
    for &v in g.inputs() {
        let n = g.node(v);
        let Some(f) = iface.inputs.iter().find(|f| f.name == n.name) else {
            continue;
        };
        if f.shape.len() != n.ty.rank() {
            continue;
        }
        use crate::ir::Dim;
        for (d, got) in f.shape.iter().zip(&n.ty.shape) {
            // Only a bare symbol (`H`, not `8*H`) names its size directly.
            if let (Dim::Sym(s), Dim::Known(size)) = (d, got) {
                if let Some(sym) = s.symbols().next().filter(|&sym| *d == Dim::sym(sym)) {
                    b.entry(sym.to_string()).or_insert(*size);
                }
            }
        }
    }
}

/// Whether to print progress on stderr (a terminal is watching).
fn progress() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// The symmetric clipping magnitude of every value the activation pass can quantize in `g` (the
/// final graph, whose value ids the pass reads): from `cal` ([`load_calibration`]) for
/// [`ActivationRanges::Calibrated`].
pub fn activation_ranges(
    g: &Graph,
    src: &ActivationRanges,
    cal: Option<&crate::calibrate::Calibration>,
) -> Result<Ranges, BuildError> {
    let wanted = activation_inputs(g);
    let failed = |reason: String| BuildError::Option {
        option: BuildOption::QuantizeActivations,
        reason,
    };
    match src {
        ActivationRanges::Calibrated => {
            let cal = cal.ok_or_else(|| failed("needs a calibration set".into()))?;
            let stats = crate::calibrate::collect_values(g, cal, progress(), Some(&wanted))
                .map_err(|e| failed(e.to_string()))?;
            Ok(stats
                .values
                .iter()
                .map(|(&v, s)| (v, s.clip_range(8)))
                .collect())
        }
        ActivationRanges::MaxAbs(inputs) => {
            let mut ranges = std::collections::HashMap::new();
            crate::ir::eval::evaluate_observed(g, inputs, &mut |v, a| {
                if wanted.contains(&v) {
                    let m = a.data.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let r = ranges.entry(v).or_insert(0f32);
                    *r = r.max(m);
                }
            })
            .map_err(|e| failed(format!("measuring activation ranges: {e}")))?;
            Ok(ranges)
        }
    }
}

/// The layers' input statistics for calibrated weight compression, measured on `g` (the graph
/// about to be compressed); with calibrated int8 activations, their clipping ranges too, by
/// node name, from the same evaluation (one decoder run per sample instead of two: compression
/// leaves the activations it would measure within its own small error).
#[allow(clippy::type_complexity)]
fn calibrate_weights(
    g: &Graph,
    cal: &crate::calibrate::Calibration,
    activations: &Option<ActivationRanges>,
) -> Result<
    (
        std::sync::Arc<crate::calibrate::layer_inputs::LayerInputs>,
        Option<std::collections::HashMap<String, f32>>,
    ),
    BuildError,
> {
    let ranged = *activations == Some(ActivationRanges::Calibrated);
    let wanted = match ranged {
        true => activation_inputs(g),
        false => Default::default(),
    };
    let mut layers = crate::calibrate::layer_inputs::Collector::new(g);
    let mut stats = crate::calibrate::Stats::new(cal);
    crate::calibrate::stats::evaluate_samples(
        g,
        cal,
        progress(),
        "calibrating",
        &mut |s, id, a| {
            layers.observe(s, id, a)?;
            match ranged {
                true => stats.observe(g, id, a, Some(&wanted)),
                false => Ok(()),
            }
        },
    )
    .map_err(|e| BuildError::Option {
        option: BuildOption::Calibration,
        reason: e.to_string(),
    })?;
    let ranges = ranged.then(|| {
        stats
            .values
            .iter()
            .map(|(&v, s)| (g.node(v).name.clone(), s.clip_range(8)))
            .collect()
    });
    Ok((std::sync::Arc::new(layers.finish(cal.len())), ranges))
}

/// `ranges` (by node name) for the activation sites of `g`; `None` if a site has none (it was
/// not measured under that name).
fn ranges_by_name(g: &Graph, ranges: &std::collections::HashMap<String, f32>) -> Option<Ranges> {
    activation_inputs(g)
        .into_iter()
        .map(|v| Some((v, *ranges.get(&g.node(v).name)?)))
        .collect()
}

/// The values the activation pass can quantize in `g`: the inputs of its sites.
fn activation_inputs(g: &Graph) -> std::collections::BTreeSet<crate::ir::ValueId> {
    passes::quantize_activations::sites(g)
        .into_iter()
        .flat_map(|(_, inputs)| inputs)
        .collect()
}

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
    /// An option (combination) that cannot be built; the CLI names the flag.
    #[error("{option}: {reason}")]
    Option { option: BuildOption, reason: String },
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    #[error("dumping passes: {0}")]
    Dump(std::io::Error),
    /// A weight the package cannot hold (non-finite, or beyond the precision's range).
    #[error("{path}: weight {tensor:?} {reason}")]
    Weight {
        path: String,
        tensor: String,
        reason: String,
    },
    /// A finite weight beyond fp16's range in an fp16 build.
    #[error(
        "{path}: weight {tensor:?} holds {peak} ({over} value(s) beyond fp16's largest, \
         {FP16_MAX}); build with fp32 precision"
    )]
    Fp16Range {
        path: String,
        tensor: String,
        peak: f32,
        over: usize,
    },
}

/// What gets a build past an error, for a front end to name in its own terms (the CLI as a
/// flag); the message says it in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// A weights file on disk instead of a download.
    WeightsFile,
    /// fp32 precision.
    Fp32,
    /// Building this part of the model instead.
    Part(Part),
}

impl BuildError {
    pub fn remedy(&self) -> Option<Remedy> {
        match self {
            BuildError::Hub(h) if h.local_file_helps() => Some(Remedy::WeightsFile),
            BuildError::Fp16Range { .. } => Some(Remedy::Fp32),
            BuildError::Model(ModelError::OtherPart { other, .. }) => Some(Remedy::Part(*other)),
            _ => None,
        }
    }
}

/// Largest finite fp16 value.
const FP16_MAX: f32 = 65504.0;

/// Refuses weights a package cannot hold: NaN or infinite values at any precision, and in an
/// fp16 build finite values beyond fp16's range (they would be stored as infinities).
pub fn check_weights(weights: &Weights, precision: Precision) -> Result<(), BuildError> {
    for (key, t) in &weights.tensors {
        let err = |reason: String| BuildError::Weight {
            path: weights.path.display().to_string(),
            tensor: key.clone(),
            reason,
        };
        // Every finite f16 is within fp16's range: most checkpoints pass here, at memory speed.
        if let crate::tensor::TensorData::F16(v) = &t.data {
            if crate::weights::f16_all_finite(v) {
                continue;
            }
        }
        let (mut nan, mut inf, mut over, mut peak) = (0usize, 0usize, 0usize, 0f32);
        // A batch at a time: an f16 tensor is never widened whole.
        crate::weights::for_each_f32_batch(t, |values| {
            for &v in values {
                if v.is_nan() {
                    nan += 1;
                } else if v.is_infinite() {
                    inf += 1;
                } else if v.abs() > FP16_MAX {
                    over += 1;
                    peak = peak.max(v.abs());
                }
            }
        });
        if nan + inf > 0 {
            return Err(err(format!(
                "holds {nan} NaN and {inf} infinite value(s) of {}; weights must be finite",
                t.len()
            )));
        }
        if precision == Precision::Fp16 && over > 0 {
            return Err(BuildError::Fp16Range {
                path: weights.path.display().to_string(),
                tensor: key.clone(),
                peak,
                over,
            });
        }
    }
    Ok(())
}

/// A built model in memory, before it is written.
pub struct Compiled {
    pub model: &'static str,
    pub part: Part,
    pub lowered: mil::Lowered,
    pub largest_intermediate: Option<Intermediate>,
    pub weights_sha256: String,
    pub timings: Vec<(String, Duration)>,
    pub kept_float: Option<KeptFloat>,
}

/// The IR of `opts`' model as the builder declares it (before any pass). A size whose value
/// differs between the enumerated sizes stays symbolic (`H`, `W`).
pub fn declare(opts: &BuildOptions, weights: &Weights) -> Result<Graph, BuildError> {
    opts.validate()?;
    let (model, part) = opts.model_part()?;
    let fixed = fixed_symbols(&opts.size_bindings()?);
    Ok(model.build(part, weights, &fixed, &opts.model_options)?)
}

/// [`declare`] that moves the weights into the graph rather than copying them.
pub fn declare_owned(opts: &BuildOptions, weights: Weights) -> Result<Graph, BuildError> {
    opts.validate()?;
    let (model, part) = opts.model_part()?;
    let fixed = fixed_symbols(&opts.size_bindings()?);
    Ok(model.build_owned(part, weights, &fixed, &opts.model_options)?)
}

/// The pass pipeline `opts` asks for.
pub fn pipeline_options(opts: &BuildOptions) -> Result<PipelineOptions, BuildError> {
    let fp16 = opts.precision == Precision::Fp16;
    let fp16_io = fp16 && opts.io_precision.unwrap_or(opts.precision) == Precision::Fp16;
    let image = opts.output_type == OutputType::Image;
    let image_in = opts.input_type == InputType::Image;
    let (model, part) = opts.model_part()?;
    let iface = model.interface(part, &opts.model_options);
    Ok(PipelineOptions {
        fp16,
        fp16_inputs: fp16_io && !image_in,
        fp16_outputs: fp16_io && !image,
        input_nhwc: opts.input_layout == Layout::Nhwc,
        output_nhwc: opts.output_layout == Layout::Nhwc,
        image_output: if image {
            image_range(&iface.outputs)
        } else {
            None
        },
        image_input: if image_in {
            image_pixels(&iface.inputs)
        } else {
            None
        },
        sizes: if opts.multifunction {
            vec![]
        } else {
            opts.bindings()?
        },
        compression: opts.compression.clone(),
        fused_attention: opts.target >= Target::Ios18,
        lower_attention: !opts.multifunction,
    })
}

/// Function names of a multifunction package: what it does and the image size it does it at
/// (`decode_768x1024`).
pub fn function_name(part: Part, image: [usize; 2]) -> String {
    let verb = match part {
        Part::Decoder => "decode",
        Part::Encoder => "encode",
    };
    format!("{verb}_{}x{}", image[0], image[1])
}

/// Loads weights, declares, optimizes and lowers the model; `after_pass` sees the declared graph
/// (as `"declare"`) and the graph after each pass. The loaded weights move into the graph, so
/// the model's tensors are in memory once.
pub fn compile(
    opts: &BuildOptions,
    after_pass: impl FnMut(&str, &Graph),
) -> Result<Compiled, BuildError> {
    compile_to(opts, BlobWriter::new(), after_pass)
}

/// [`compile`], with the weights going to `blobs`: a file-backed writer streams them into the
/// package being written, so they are in memory once (in the graph), not twice.
fn compile_to(
    opts: &BuildOptions,
    blobs: BlobWriter,
    after_pass: impl FnMut(&str, &Graph),
) -> Result<Compiled, BuildError> {
    let t = Instant::now();
    let (model, part) = opts.model_part()?;
    model.check_options(part, &opts.model_options)?;
    let path = opts.weights_path()?;
    let source = crate::weights::open(&path).map_err(ModelError::from)?;
    let weights = model.load(part, &*source, &opts.model_options)?;
    let load = ("load weights".to_string(), t.elapsed());
    let mut c = compile_from(opts, WeightsIn::Owned(weights), blobs, after_pass)?;
    c.timings.insert(0, load);
    Ok(c)
}

/// [`compile`] with weights already in memory (`opts.weights` is ignored); the graph copies
/// the tensors it needs.
pub fn compile_weights(
    opts: &BuildOptions,
    weights: &Weights,
    after_pass: impl FnMut(&str, &Graph),
) -> Result<Compiled, BuildError> {
    compile_from(
        opts,
        WeightsIn::Borrowed(weights),
        BlobWriter::new(),
        after_pass,
    )
}

enum WeightsIn<'w> {
    Borrowed(&'w Weights),
    Owned(Weights),
}

fn compile_from(
    opts: &BuildOptions,
    weights: WeightsIn,
    mut blobs: BlobWriter,
    mut after_pass: impl FnMut(&str, &Graph),
) -> Result<Compiled, BuildError> {
    let mut timings = Vec::new();
    let (model, part) = opts.model_part()?;

    // Hashed before declaring: an owned model's tensors leave the weights for the graph.
    let t = Instant::now();
    let w = match &weights {
        WeightsIn::Borrowed(w) => w,
        WeightsIn::Owned(w) => w,
    };
    let weights_sha256 = w.content_sha256();
    let weights_path = w.path.clone();
    timings.push(("hash weights".to_string(), t.elapsed()));
    // Before the graph takes the tensors: NaN, infinities, values fp16 cannot hold.
    check_weights(w, opts.precision)?;

    let t = Instant::now();
    let g = match weights {
        WeightsIn::Borrowed(w) => declare(opts, w)?,
        WeightsIn::Owned(w) => declare_owned(opts, w)?,
    };
    timings.push(("declare".to_string(), t.elapsed()));
    after_pass("declare", &g);

    let t = Instant::now();
    let cal = calibration(opts, Some(&g))?;
    if cal.is_some() {
        timings.push(("load calibration".to_string(), t.elapsed()));
    }

    let pipeline = pipeline_options(opts)?;
    let mut t = Instant::now();
    let g = passes::run(g, &passes::prepare(&pipeline), |p, g| {
        timings.push((p.name().to_string(), t.elapsed()));
        after_pass(p.name(), g);
        t = Instant::now();
    })?;
    // Measured on the graph as it will compute, just before its weights are compressed.
    let t_stats = Instant::now();
    let (layers, early_ranges) = match (&cal, &opts.compression) {
        (Some(cal), Some(_)) => {
            let (layers, ranges) = calibrate_weights(&g, cal, &opts.quantize_activations)?;
            timings.push(("weight statistics".to_string(), t_stats.elapsed()));
            (Some(passes::calibrated::Calibrated::new(layers)), ranges)
        }
        _ => (None, None),
    };
    let mut t = Instant::now();
    let g = passes::run(g, &passes::finish(&pipeline, layers), |p, g| {
        timings.push((p.name().to_string(), t.elapsed()));
        after_pass(p.name(), g);
        t = Instant::now();
    })?;

    // Last, on the final graph: the ranges are measured on the values the package computes.
    let mut kept_float = None;
    let g = match &opts.quantize_activations {
        Some(src) => {
            let t = Instant::now();
            let ranges = match early_ranges.as_ref().and_then(|r| ranges_by_name(&g, r)) {
                Some(r) => r,
                None => {
                    let r = activation_ranges(&g, src, cal.as_ref())?;
                    timings.push(("activation ranges".to_string(), t.elapsed()));
                    r
                }
            };
            let keep_float = match (opts.activation_min_psnr, &cal) {
                (Some(db), Some(cal)) => {
                    let t = Instant::now();
                    let choice = crate::calibrate::search::keep_float_for(&g, &ranges, cal, db)
                        .map_err(|e| BuildError::Option {
                            option: BuildOption::QuantizeActivations,
                            reason: e.to_string(),
                        })?;
                    timings.push(("activation search".to_string(), t.elapsed()));
                    kept_float = Some(KeptFloat {
                        names: choice
                            .keep_float
                            .iter()
                            .map(|&v| g.node(v).name.clone())
                            .collect(),
                        sites: choice.sites,
                        psnr: choice.psnr,
                    });
                    choice.keep_float
                }
                _ => Default::default(),
            };
            let list: Vec<Box<dyn passes::Pass>> = vec![Box::new(
                passes::quantize_activations::QuantizeActivations { ranges, keep_float },
            )];
            let t = Instant::now();
            let g = passes::run(g, &list, |p, g| after_pass(p.name(), g))?;
            timings.push(("quantize_activations".to_string(), t.elapsed()));
            g
        }
        None => g,
    };

    let mut largest = largest_intermediate(&g, &opts.size_bindings()?);
    let t = Instant::now();
    let mut info = model_info(model, part, &weights_path, &weights_sha256, opts)?;
    if let Some(cal) = &cal {
        info.user_defined
            .insert("mlc.calibration.sha256".into(), cal.hash());
        if opts.compression.is_some() {
            info.user_defined.insert(
                "mlc.weights.fit".into(),
                "layer outputs (calibrated)".into(),
            );
        }
    }
    if opts.quantize_activations == Some(ActivationRanges::Calibrated) {
        info.user_defined
            .insert("mlc.activations".into(), "int8 (calibrated)".into());
    }
    let iface = interface(opts)?;
    let lowered = if opts.multifunction {
        let image_sizes = image_sizes(opts)?;
        let mut functions = Vec::new();
        // Each function is its own run of the pass manager: specialised, verified, dumpable.
        for (b, size) in opts.bindings()?.into_iter().zip(image_sizes) {
            let name = function_name(part, size);
            let list: Vec<Box<dyn passes::Pass>> = vec![
                Box::new(Specialize {
                    sizes: b,
                    function: name.clone(),
                }),
                // Static now, so the query count is known and attention can be chunked.
                Box::new(passes::attention_pass(&pipeline)),
            ];
            let f = passes::run(g.clone(), &list, |p, g| after_pass(p.name(), g))?;
            functions.push((name, f));
        }
        largest = functions
            .iter()
            .filter_map(|(_, f)| largest_intermediate(f, &[]))
            .max_by_key(|l| l.bytes);
        drop(g);
        timings.push(("specialize_shapes".to_string(), t.elapsed()));
        mil::lower::lower_multifunction_into(&functions, opts.target, &info, &iface, &mut blobs)?
    } else {
        mil::lower::lower_into(&g, opts.target, &info, &iface, &mut blobs)?
    };
    let lowered = if blobs.is_file() {
        let weight_file = match blobs.is_empty() {
            true => None,
            false => Some(blobs.finish_file()?),
        };
        mil::Lowered {
            model: lowered,
            weight_bin: None,
            weight_file,
        }
    } else {
        mil::lower::in_memory(lowered, blobs)
    };
    timings.push(("lower".to_string(), t.elapsed()));
    Ok(Compiled {
        model: model.name(),
        part,
        lowered,
        largest_intermediate: largest,
        weights_sha256,
        timings,
        kept_float,
    })
}

/// Builds the package `opts` describes and writes it atomically.
///
/// Prints nothing, so it can run in a build script: with mlc as a build dependency, an app crate
/// compiles its decoder into `OUT_DIR` and bakes the path in (tests/buildscript does this).
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
/// opts.sizes = mlc::compiler::Sizes::Latent(vec![[32, 32]]); // 256x256 images
/// let report = build(&opts).unwrap_or_else(|e| panic!("mlc: {e}"));
/// // In the crate: `env!("TAEF2_MLPACKAGE")`.
/// println!("cargo:rustc-env=TAEF2_MLPACKAGE={}", report.package.display());
/// ```
pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let out = opts.output_path()?;
    opts.validate()?;
    // Opened first, so the lowering writes weight.bin straight into the package; dropped on an
    // error, it removes what it made.
    let writer = package::PackageWriter::begin(&out)?;
    let blobs = BlobWriter::to_file(&writer.weights_path())?;
    let mut dumper = match &opts.dump_passes {
        Some(dir) => Some(
            crate::dump::Dumper::new(dir, opts.target, interface(opts)?)
                .map_err(BuildError::Dump)?,
        ),
        None => None,
    };
    let compiled = compile_to(opts, blobs, |pass, g| {
        if let Some(d) = dumper.as_mut() {
            d.dump(pass, g);
        }
    })?;
    if let Some(d) = dumper {
        d.finish().map_err(BuildError::Dump)?;
    }
    let Compiled {
        model,
        part,
        lowered,
        largest_intermediate,
        weights_sha256,
        mut timings,
        kept_float,
    } = compiled;
    let t = Instant::now();
    writer.finish(&lowered.model, lowered.has_weights())?;
    timings.push(("write".to_string(), t.elapsed()));
    Ok(BuildReport {
        package: out,
        model,
        part,
        ops: count_ops(&lowered.model),
        weight_bytes: lowered.weight_bytes() as usize,
        weights_sha256,
        timings,
        ane: crate::ane::analyze(&lowered.model),
        largest_intermediate,
        kept_float,
    })
}

/// How the package's features are described for `opts`.
fn interface(opts: &BuildOptions) -> Result<FeatureTypes, BuildError> {
    Ok(FeatureTypes {
        sizes: if opts.multifunction {
            vec![]
        } else {
            opts.bindings()?
        },
        image_outputs: opts.output_type == OutputType::Image,
        image_inputs: opts.input_type == InputType::Image,
    })
}

/// The value range of the one RGB image among `features`, if there is one.
fn image_range(features: &[models::Feature]) -> Option<(f32, f32)> {
    match features {
        [f] => f.range,
        _ => None,
    }
}

/// How the one RGB image input among `features` maps 0..255 pixels to the model's values.
fn image_pixels(features: &[models::Feature]) -> Option<PixelMap> {
    let [f] = features else {
        return None;
    };
    let (low, high) = f.range?;
    Some(match f.normalization {
        None => PixelMap::range(low, high),
        Some(n) => PixelMap::normalized(low, high, n.mean, n.std),
    })
}

/// The image size at every enumerated size, `[height, width]`.
fn image_sizes(opts: &BuildOptions) -> Result<Vec<[usize; 2]>, BuildError> {
    let (model, part) = opts.model_part()?;
    let iface = model.interface(part, &opts.model_options);
    opts.size_bindings()?
        .iter()
        .map(|b| {
            iface
                .size_of(Role::Image, b)
                .ok_or_else(|| BuildError::Option {
                    option: BuildOption::Sizes,
                    reason: format!("{} has no image size", model.name()),
                })
        })
        .collect()
}

/// Whether the image size is the weights' alone: no size given, and the interface has none by
/// default (`clip-vision`, whose position embeddings fix it).
fn fixed_by_weights(opts: &BuildOptions, iface: &models::Interface) -> Result<bool, BuildError> {
    Ok(opts
        .size_bindings()?
        .iter()
        .any(|b| iface.size_of(Role::Image, b).is_none()))
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

fn model_info(
    model: &dyn Model,
    part: Part,
    weights_path: &std::path::Path,
    sha256: &str,
    opts: &BuildOptions,
) -> Result<ModelInfo, BuildError> {
    let iface = model.interface(part, &opts.model_options);
    // Text encoders have no image; an image encoder's weights fix its size (none is recorded
    // unless one was asked for).
    let sizes: Vec<String> = match iface.feature(Role::Image) {
        Some(_) if !fixed_by_weights(opts, &iface)? => image_sizes(opts)?
            .iter()
            .map(|s| format!("{}x{}", s[0], s[1]))
            .collect(),
        _ => Vec::new(),
    };
    let mut user_defined = BTreeMap::from([
        ("mlc.model".to_string(), model.name().to_string()),
        (
            "mlc.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("mlc.target".to_string(), opts.target.name().to_string()),
        ("mlc.weights.sha256".to_string(), sha256.to_string()),
    ]);
    if !sizes.is_empty() {
        user_defined.insert("mlc.image_sizes".to_string(), sizes.join(","));
    }
    if let Some(source) = model.weights_source(weights_path) {
        user_defined.insert("mlc.weights.source".to_string(), source);
    }
    if part != model.parts()[0] {
        user_defined.insert("mlc.part".to_string(), part.name().to_string());
    }
    let d = model.description(part, &sizes.join(", "));
    Ok(ModelInfo {
        short_description: d.short,
        author: d.author,
        license: d.license,
        version: env!("CARGO_PKG_VERSION").to_string(),
        user_defined,
        feature_descriptions: iface
            .inputs
            .iter()
            .map(|f| (f, opts.input_type == InputType::Image))
            .chain(
                iface
                    .outputs
                    .iter()
                    .map(|f| (f, opts.output_type == OutputType::Image)),
            )
            .map(|(f, as_image)| (f.name.clone(), feature_description(f, as_image)))
            .collect(),
    })
}

/// What a feature's description says; an RGB image passed as a Core ML image is described as
/// one, since the interface's text speaks of the array the model computes on.
fn feature_description(f: &crate::models::Feature, as_image: bool) -> String {
    match (as_image, f.role, f.range) {
        (true, Role::Image, Some((lo, hi))) => format!(
            "RGB image, 8 bits per channel (pixels 0..255 are the model's [{lo}, {hi}]{})",
            if f.normalization.is_some() {
                ", then normalised per channel"
            } else {
                ""
            }
        ),
        _ => f.description.clone(),
    }
}
