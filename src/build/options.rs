//! What the user asks a build for: the options, their enumerations and defaults. Nothing here
//! resolves or checks them ([`super::plan`], [`super::validate`] do).

use crate::mil::Target;
use crate::models::ModelOptions;
pub use crate::passes::quantize::Mode as QuantMode;
pub use crate::passes::Compression;
use crate::progress::Observer;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp16,
    Fp32,
}

/// Memory layout of a model input or output array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrayLayout {
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
    /// Which of the model's parts ([`crate::models::Model::parts`]) by name; `None` builds
    /// its first (an autoencoder's decoder). A name the model does not list is refused.
    pub part: Option<String>,
    /// Folded pre/post-processing (latent scaling, packed input, logvar output).
    pub model_options: ModelOptions,
    /// The weights file; `None` takes the model's published weights from the Hugging Face cache,
    /// downloading them there first if needed (see [`crate::hub`]).
    pub weights: Option<PathBuf>,
    /// The package to write; defaults to `<model>_<part>.mlpackage` in the current directory.
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
    pub input_layout: ArrayLayout,
    pub output_layout: ArrayLayout,
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
    /// LoRAs fused into the weights as they are read ([`crate::lora`]), in order.
    pub loras: Vec<crate::lora::LoraSpec>,
    /// Switchable adapters (iOS18): one function each beside the base model's
    /// ([`crate::lora::BASE_FUNCTION`]), sharing its weights.
    pub adapters: Vec<crate::lora::AdapterSpec>,
    /// The package's features as a consumer with its own names reads them (renamed, some
    /// outputs only, token ids as floats): `mlc pipeline` builds Apple's interfaces with it.
    pub features: crate::passes::edit_features::FeatureEdits,
    /// Who hears how far the build is ([`crate::progress`]); nobody by default. Not part of
    /// what gets built: options that differ only here are equal.
    pub progress: Observer,
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
    /// Defaults: the model's first part, fp16, iOS16, the model's default size (96x96 latents
    /// for TAESD decoders), NCHW arrays.
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
            input_layout: ArrayLayout::Nchw,
            output_layout: ArrayLayout::Nchw,
            output_type: OutputType::Array,
            input_type: InputType::Array,
            calibration: None,
            quantize_activations: None,
            activation_min_psnr: None,
            loras: Vec::new(),
            adapters: Vec::new(),
            features: Default::default(),
            progress: Observer::none(),
        }
    }

    /// Options for the model's published weights (from the Hugging Face cache or the hub).
    pub fn published(model: &str) -> BuildOptions {
        BuildOptions {
            weights: None,
            ..BuildOptions::new(model, "")
        }
    }
}
