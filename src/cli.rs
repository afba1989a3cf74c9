//! The command line: flags are parsed and resolved into library options here, in one place.

use crate::compiler::{
    self, BuildOptions, Compression, InputType, Layout, OutputType, Precision, QuantMode, Sizes,
};
use crate::mil::Target;
use crate::models::Part;
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "mlc",
    version,
    about = "Compile diffusion autoencoders (TAESD family, full SD/SDXL/SD3/FLUX VAEs) into Core ML .mlpackage files, in pure Rust",
    long_about = "mlc declares the TAESD autoencoders and the full VAEs of SD, SDXL, SD3, FLUX.1 and FLUX.2 in Rust, \
loads real weights (safetensors, or PyTorch .pth for TAESD), optimizes the graph (group-norm and attention \
lowering, constant folding, fp16, compression) and writes a Core ML ML Program package for the Apple \
Neural Engine. No Python, no PyTorch, no coremltools.",
    after_help = "Examples:\n  mlc build flux2 --weights taef2_decoder.safetensors -o taef2.mlpackage\n  \
mlc compile taef2.mlpackage\n  mlc inspect taef2.mlpackage\n  mlc run taef2.mlpackage --input latent.safetensors --output image.png"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build a decoder or encoder into an .mlpackage.
    Build(BuildArgs),
    /// Describe a package: inputs, outputs, metadata, op histogram, sizes and MIL text.
    Inspect(InspectArgs),
    /// Evaluate a package on the CPU (mlc's reference evaluator): an image output is written as
    /// PNG, anything else (an encoder's latent) as safetensors.
    Run(RunArgs),
    /// Compile an .mlpackage into the .mlmodelc bundle apps load, without Apple's tools (the
    /// files coremlc writes: model.mil, coremldata.bin, metadata.json, weights).
    Compile(CompileArgs),
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    /// The ML Program package (or a bare .mlmodel with its weights/ directory beside it).
    pub package: PathBuf,
    /// Output bundle [default: the package's path with .mlmodelc]. Written atomically.
    #[arg(short, long, value_name = "OUT.mlmodelc")]
    pub output: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransformerLayoutArg {
    Standard,
    Ane,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompilerArg {
    Mlc,
    Xcrun,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Model. Tiny autoencoders: taesd, taesdxl (SD 1.x/2.x and SDXL, 4 latent channels),
    /// taesd3, taef1 / flux1 (16), taef2 / flux2 (32). Full VAEs: sd-vae (sd15-vae, sd21-vae),
    /// sdxl-vae (4), sd3-vae, flux1-vae (16), flux2-vae (32). CLIP text encoders: clip-l
    /// (SD 1.x, SDXL), clip-bigg (SDXL's second), clip-h (SD 2.x). CLIP image encoder:
    /// clip-vision (image prompts). The architecture is checked against the weights.
    pub model: String,
    /// Which part of the autoencoder: decoder (latent → image) or encoder (image → latent).
    /// [default: the model's first part: decoder for autoencoders, encoder for text encoders]
    #[arg(long, value_enum)]
    pub part: Option<PartArg>,
    /// Full VAEs: fold the diffusion model's latent scaling into the model, so a decoder takes
    /// and an encoder returns latents as the diffusion model uses them (`z / scaling + shift` in,
    /// `(z - shift) * scaling` out; e.g. 0.18215 for sd-vae, 0.3611 / 0.1159 for flux1-vae).
    #[arg(long)]
    pub latent_scaling: bool,
    /// flux2-vae decoder: `packed` takes the FLUX.2 transformer's [1, 128, h/2, w/2] latents
    /// (batch-norm un-normalisation and the 2x2 unpatchify folded in).
    #[arg(long, value_enum, value_name = "FORM", default_value_t = InputForm::Latent)]
    pub input: InputForm,
    /// Full-VAE encoders: also output the posterior's `logvar`.
    #[arg(long)]
    pub logvar: bool,
    /// Text encoders: also output `hidden_state`, transformers' `hidden_states[-N]` (the
    /// output N-1 layers before the last, without the final layer norm): `penultimate` (N = 2)
    /// is what SDXL and SD 2.x condition on.
    #[arg(long, value_name = "penultimate|N", value_parser = parse_hidden_layer)]
    pub hidden_layer: Option<usize>,
    /// Transformers: `standard` computes on [1, tokens, hidden] with linear layers as matmuls
    /// (as traced PyTorch models do); `ane` on [1, hidden, 1, tokens] with 1x1 convolutions and
    /// attention split per head, the layout Apple recommends for the Neural Engine. Same
    /// numbers, same inputs and outputs.
    #[arg(long, value_enum, default_value_t = TransformerLayoutArg::Standard)]
    pub layout: TransformerLayoutArg,
    /// Weights. TAESD: .safetensors (upstream `1.weight` or diffusers `decoder.layers.0.weight`
    /// keys; f32, f16 or bf16) or a PyTorch .pth checkpoint. Full VAEs: a diffusers
    /// `diffusion_pytorch_model.safetensors` (its config.json beside it is checked) or an
    /// original single file (CompVis/LDM, FLUX `ae.safetensors`, a full SD checkpoint's
    /// `first_stage_model.`). Without it, a TAESD decoder's published weights are taken from
    /// the Hugging Face cache ($HF_HOME/hub), downloaded there first if missing ($HF_ENDPOINT
    /// picks the host; HF_HUB_OFFLINE=1 forbids the network); other parts need it.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Output package [default: <model>_<part>.mlpackage]. Written atomically.
    #[arg(short, long, value_name = "OUT.mlpackage")]
    pub output: Option<PathBuf>,
    /// Precision of weights and compute.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fp16)]
    pub precision: PrecisionArg,
    /// Precision of the model's input and output arrays [default: same as --precision].
    /// fp16 I/O avoids two casts on device; fp32 suits callers that hold float arrays.
    #[arg(long, value_enum, value_name = "PRECISION")]
    pub io_precision: Option<PrecisionArg>,
    /// Deployment target: ios16 (spec 7), ios17, ios18, or macos13, macos14, macos15.
    #[arg(long, default_value = "ios16", value_parser = parse_target)]
    pub target: Target,
    /// Latent sizes, comma-separated, each N or HxW; the first is the default. One size gives a
    /// static model; several give one package that accepts each of them [default: the model's:
    /// a 768x768 image for TAESD, 512 for sd-vae, 1024 for the others]. With --input packed,
    /// the packed latent's size.
    #[arg(long, value_name = "N|HxW,...", conflicts_with = "image_size", value_parser = parse_sizes)]
    pub latent_size: Option<SizeList>,
    /// Image sizes, comma-separated, each N or HxW and a multiple of 8 (the latent is 8x
    /// smaller); the first is the default. E.g. 768,1024 or 768x1024.
    #[arg(long, value_name = "N|HxW,...", value_parser = parse_sizes)]
    pub image_size: Option<SizeList>,
    /// One fully static function per size (the Neural Engine runs static shapes best), sharing
    /// one copy of the weights; needs --target ios18 and two or more sizes.
    #[arg(long)]
    pub multifunction: bool,
    /// Layout of the input (a decoder's latent, an encoder's image): nchw [1, C, H, W] or nhwc
    /// [1, H, W, C] (channels last).
    #[arg(long, value_enum, default_value_t = LayoutArg::Nchw)]
    pub input_layout: LayoutArg,
    /// Layout of the output array (a decoder's image, an encoder's latent).
    #[arg(long, value_enum, default_value_t = LayoutArg::Nchw)]
    pub output_layout: LayoutArg,
    /// array: an [1, 3, H, W] multi-array in about [0, 1]; image: a Core ML RGB image (the
    /// clamping and the scaling to [0, 255] happen inside the model).
    #[arg(long, value_enum, default_value_t = OutputTypeArg::Array)]
    pub output_type: OutputTypeArg,
    /// Encoders: array (an [1, 3, H, W] multi-array in the model's range: [0, 1] for TAESD,
    /// [-1, 1] for full VAEs, CLIP-normalised pixel_values for clip-vision) or image (a Core ML
    /// RGB image; the mapping of its 0..255 pixels to the model's range, and clip-vision's
    /// per-channel mean and std, happen inside the model).
    #[arg(long, value_enum, default_value_t = OutputTypeArg::Array, value_name = "TYPE")]
    pub input_type: OutputTypeArg,
    /// Palettize weights: each weight tensor becomes a table of 2^BITS values (exact optimal
    /// k-means) plus BITS-bit indices. BITS: 1, 2, 4, 6, 8 (and 3 at --target ios18).
    #[arg(long, value_name = "BITS")]
    pub palettize: Option<u32>,
    /// With --palettize: per-tensor (one table per weight) or per-grouped-channel=G (one table
    /// per G output channels; --target ios18; a weight whose rows G does not divide gets one
    /// table).
    #[arg(long, value_name = "per-tensor|per-grouped-channel=G", value_parser = parse_granularity, requires = "palettize")]
    pub granularity: Option<Granularity>,
    /// Quantize weights to 8 bits: int8 (symmetric, one scale per output channel) or uint8
    /// (asymmetric, with zero points).
    #[arg(long, value_enum, value_name = "TYPE")]
    pub quantize: Option<QuantArg>,
    /// With --quantize int8: one scale per B input channels of each output channel
    /// (--target ios18; a weight whose input channels B does not divide gets one scale per
    /// output channel).
    #[arg(long, value_name = "B", requires = "quantize")]
    pub block_size: Option<usize>,
    /// Quantize activations to int8 (with --quantize int8: W8A8): quantize-dequantize pairs on
    /// the inputs of convs and of adds of two activations, clipped to ranges measured with
    /// --calibration; --target ios17 or newer.
    #[arg(long, value_enum, value_name = "TYPE", requires = "calibration")]
    pub quantize_activations: Option<ActivationQuantArg>,
    /// Real inputs to fit compression to: with --palettize or --quantize, the weights of each
    /// conv and linear layer (matmul by a constant) are fitted to its output on them (weighted k-means, error-feedback rounding, table refit,
    /// bias correction) instead of to the weights alone; with --quantize-activations, the ranges
    /// are measured on them. A folder of PNG/JPEG photos (sorted by name; scaled by area
    /// average to cover the model's size, then centre-cropped) or a safetensors file of the
    /// model's inputs by name (one sample, or a batch [N, ...]). A decoder's photos are first
    /// encoded into latents by its model's encoder, evaluated by mlc. Its sha256 goes into the
    /// package's metadata.
    #[arg(long, value_name = "DIR|FILE")]
    pub calibration: Option<PathBuf>,
    /// With --quantize-activations: keep float activations on the fewest convs and adds (the
    /// most sensitive, as measured on the calibration set) that hold the model's output there at
    /// DB dB PSNR against the same model without int8 activations; the build prints which.
    #[arg(long, value_name = "DB", requires = "calibration")]
    pub activation_min_psnr: Option<f64>,
    /// With --calibration photos for a decoder: the encoder weights that turn them into latents
    /// [default: the model's own file for a full VAE, else the published encoder].
    #[arg(long, value_name = "FILE", requires = "calibration")]
    pub encoder_weights: Option<PathBuf>,
    /// With --calibration: scale photos smaller than the model's size up instead of refusing
    /// them.
    #[arg(long, requires = "calibration")]
    pub upscale: bool,
    /// Compress only weights with at least N elements (smaller ones stay dense).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub min_elements: usize,
    /// After each pass, write the IR (.ir.txt), a Graphviz graph (.dot), the MIL text (.mil.txt)
    /// and a package Netron opens (.mlpackage) into DIR, named NN_<pass>.
    #[arg(long, value_name = "DIR")]
    pub dump_passes: Option<PathBuf>,
    /// Also compile the package to a .mlmodelc (what apps load), with mlc's own compiler unless
    /// --compiler xcrun says otherwise.
    #[arg(long)]
    pub compile: bool,
    /// Where --compile writes the .mlmodelc [default: beside the package]. Implies --compile.
    #[arg(long, value_name = "DIR")]
    pub compile_to: Option<PathBuf>,
    /// Which compiler --compile uses: mlc (its own, any OS) or xcrun (Apple's coremlc; macOS
    /// with Xcode).
    #[arg(long, value_enum, default_value_t = CompilerArg::Mlc)]
    pub compiler: CompilerArg,
    /// Print the time each stage and pass took.
    #[arg(long)]
    pub timings: bool,
    /// Print a machine-readable JSON report (inputs, outputs, sizes, op counts, timings) instead
    /// of the summary line.
    #[arg(long)]
    pub json: bool,
}

/// `--granularity` as given: `None` per tensor, `Some(G)` per group of G output channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granularity(pub Option<usize>);

fn parse_granularity(s: &str) -> Result<Granularity, String> {
    if s == "per-tensor" {
        return Ok(Granularity(None));
    }
    let g = s
        .strip_prefix("per-grouped-channel=")
        .ok_or_else(|| format!("{s:?}: expected per-tensor or per-grouped-channel=G"))?;
    g.parse::<usize>()
        .map(|g| Granularity(Some(g)))
        .map_err(|_| format!("{g:?} is not a whole number"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputForm {
    Latent,
    Packed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PartArg {
    Decoder,
    Encoder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QuantArg {
    Int8,
    Uint8,
}

/// `--quantize-activations`: int8 is the type Core ML computes activations in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ActivationQuantArg {
    Int8,
}

/// Sizes as given on the command line, `[height, width]` each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeList(pub Vec<[usize; 2]>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    Nchw,
    Nhwc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputTypeArg {
    Array,
    Image,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The .mlpackage to describe (mlc's or coremltools'), or a compiled .mlmodelc (mlc's or
    /// Apple's coremlc's), read back from its model.mil and coremldata.bin.
    pub package: PathBuf,
    /// Report, op by op, whether the model fits the Neural Engine's known constraints.
    #[arg(long)]
    pub ane: bool,
    /// Print the program as a Graphviz graph (one node per op) instead.
    #[arg(long, conflicts_with = "ane")]
    pub dot: bool,
    /// Evaluate the package (its own MIL program, fp16 activations rounded as a device stores
    /// them) on --calibration and print, op by op, the largest activation magnitude and the RMS,
    /// flagged where fp16 overflows (beyond 65,504) or loses precision (half the fp16 spacing at
    /// the largest value over 10% of the RMS, or over 1% of values fp16 subnormals): how to
    /// learn before shipping that a model needs fp32 or rescaled weights. Ranges are measured
    /// on a package (build it first), so they include what the build's passes did.
    #[arg(long, requires = "calibration", conflicts_with_all = ["ane", "dot"])]
    pub ranges: bool,
    /// With --ranges: a folder of PNG/JPEG photos (sorted by name; scaled down by area average
    /// so the shorter side fits, then centre-cropped to the package's size), one photo, or a
    /// safetensors file of the inputs by name (one sample, or a batch [N, ...]). A decoder's
    /// photos are first encoded into latents by its model's encoder, evaluated by mlc.
    #[arg(long, value_name = "DIR|FILE")]
    pub calibration: Option<PathBuf>,
    /// With --ranges on a decoder calibrated with photos: the encoder weights that turn them
    /// into latents [default: the model's published encoder; for a full VAE, give the
    /// checkpoint, which holds its encoder].
    #[arg(long, value_name = "FILE", requires = "ranges")]
    pub encoder_weights: Option<PathBuf>,
    /// With --ranges: scale photos smaller than the package's size up (area average) instead of
    /// refusing them.
    #[arg(long, requires = "ranges")]
    pub upscale: bool,
    /// With --ranges: the function to evaluate [default: the package's default].
    #[arg(long, requires = "ranges")]
    pub function: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The .mlpackage to evaluate, or a compiled .mlmodelc (mlc's or Apple's).
    pub package: PathBuf,
    /// The input: a safetensors file holding it under the model input's name (e.g. `latent`,
    /// `image`, `input_ids`; int32 or int64 ids are read as they are) or as its only tensor; or,
    /// for a model taking an RGB image (an encoder), an 8-bit RGB PNG (read as values in [0, 1]).
    #[arg(
        long,
        value_name = "FILE.safetensors|FILE.png",
        required_unless_present = "tokens"
    )]
    pub input: Option<PathBuf>,
    /// Text encoders: the token ids themselves, comma-separated (`49406,320,1125,49407`),
    /// padded to the input's length by repeating the last one (SD 1.x pads with the EOS id
    /// 49407; the outputs at the prompt's positions and the pooled state do not depend on the
    /// padding, since attention is causal and pooling takes the first largest id).
    #[arg(long, value_name = "ID,ID,...", conflicts_with = "input", value_parser = parse_tokens)]
    pub tokens: Option<TokenList>,
    /// Where to write the output: .png for an image output (values clamped to [0, 1]);
    /// .safetensors for any output, written as f32 tensors named after the outputs (an encoder's
    /// `latent`). Another extension picks PNG for an image, safetensors otherwise.
    #[arg(long, value_name = "FILE.png|FILE.safetensors")]
    pub output: PathBuf,
    /// The function to run in a multifunction package [default: the package's default].
    #[arg(long)]
    pub function: Option<String>,
    /// Overwrite --output if it exists.
    #[arg(long)]
    pub force: bool,
    /// Round every fp16 intermediate to fp16, as a device computing in fp16 stores it (values
    /// beyond 65,504 become infinite), and report the largest activation against fp16's range:
    /// how to see on Linux that a model overflows in fp16 before shipping it.
    #[arg(long)]
    pub fp16_activations: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    Fp16,
    Fp32,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::Fp16 => Precision::Fp16,
            PrecisionArg::Fp32 => Precision::Fp32,
        }
    }
}

/// Token ids as given on the command line (one value: clap would take a bare `Vec` for a
/// repeated flag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenList(pub Vec<i64>);

/// Comma-separated token ids.
fn parse_tokens(s: &str) -> Result<TokenList, String> {
    let ids = s
        .split(',')
        .map(|t| {
            let t = t.trim();
            t.parse::<i64>()
                .ok()
                .filter(|v| (0..=i32::MAX as i64).contains(v))
                .ok_or_else(|| format!("{t:?} is not a token id (a whole number >= 0)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TokenList(ids))
}

/// `penultimate` or a whole number N >= 1 (layers counted from the end).
fn parse_hidden_layer(s: &str) -> Result<usize, String> {
    match s {
        "penultimate" => Ok(2),
        _ => match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!(
                "{s:?} is neither \"penultimate\" nor a layer count N >= 1 from the end"
            )),
        },
    }
}

fn parse_target(s: &str) -> Result<Target, String> {
    Target::parse(s)
}

/// `N` or `HxW`, comma-separated.
fn parse_sizes(s: &str) -> Result<SizeList, String> {
    let parse = |p: &str| {
        p.trim()
            .parse::<usize>()
            .map_err(|_| format!("{p:?} is not a whole number"))
    };
    let sizes = s
        .split(',')
        .map(|item| {
            let size = match item.split_once(['x', 'X']) {
                Some((h, w)) => [parse(h)?, parse(w)?],
                None => [parse(item)?; 2],
            };
            if size.contains(&0) {
                return Err(format!("sizes must be positive, got {item:?}"));
            }
            Ok(size)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SizeList(sizes))
}

impl BuildArgs {
    /// Resolves flags into library options.
    pub fn options(&self) -> Result<BuildOptions> {
        let mut o = BuildOptions::published(&self.model);
        o.weights = self.weights.clone();
        o.output = self.output.clone();
        o.precision = self.precision.into();
        o.io_precision = self.io_precision.map(Into::into);
        o.target = self.target;
        o.part = self.part.map(|p| match p {
            PartArg::Decoder => Part::Decoder,
            PartArg::Encoder => Part::Encoder,
        });
        o.model_options = crate::models::ModelOptions {
            latent_scaling: self.latent_scaling,
            packed_input: self.input == InputForm::Packed,
            logvar_output: self.logvar,
            hidden_layer: self.hidden_layer,
            layout: match self.layout {
                TransformerLayoutArg::Standard => crate::models::TransformerLayout::Standard,
                TransformerLayoutArg::Ane => crate::models::TransformerLayout::Ane,
            },
        };
        let flag = match (&self.latent_size, &self.image_size) {
            (Some(SizeList(s)), _) => {
                o.sizes = Sizes::Latent(s.clone());
                "--latent-size"
            }
            (None, Some(SizeList(s))) => {
                o.sizes = Sizes::Image(s.clone());
                "--image-size"
            }
            (None, None) => "",
        };
        if let Err(e) = o.size_bindings() {
            return Err(match flag {
                "" => self.flagged(e),
                flag => anyhow::Error::new(e).context(flag),
            });
        }
        o.multifunction = self.multifunction;
        o.dump_passes = self.dump_passes.clone();
        let layout = |l: LayoutArg| match l {
            LayoutArg::Nchw => Layout::Nchw,
            LayoutArg::Nhwc => Layout::Nhwc,
        };
        o.input_layout = layout(self.input_layout);
        o.output_layout = layout(self.output_layout);
        o.output_type = match self.output_type {
            OutputTypeArg::Array => OutputType::Array,
            OutputTypeArg::Image => OutputType::Image,
        };
        o.input_type = match self.input_type {
            OutputTypeArg::Array => InputType::Array,
            OutputTypeArg::Image => InputType::Image,
        };
        o.compression = match (self.palettize, self.quantize) {
            (Some(_), Some(_)) => {
                bail!("--palettize and --quantize together have no defined meaning; choose one")
            }
            (Some(bits), None) => Some(Compression::Palettize {
                bits,
                group_size: self.granularity.clone().and_then(|g| g.0),
                min_elements: self.min_elements,
            }),
            (None, Some(q)) => Some(Compression::Quantize {
                mode: match q {
                    QuantArg::Int8 => QuantMode::Int8,
                    QuantArg::Uint8 => QuantMode::Uint8,
                },
                block_size: self.block_size,
                min_elements: self.min_elements,
            }),
            (None, None) => None,
        };
        o.calibration = self
            .calibration
            .as_ref()
            .map(|path| compiler::CalibrationSource {
                path: path.clone(),
                encoder_weights: self.encoder_weights.clone(),
                upscale: self.upscale,
            });
        o.quantize_activations = self
            .quantize_activations
            .map(|ActivationQuantArg::Int8| compiler::ActivationRanges::Calibrated);
        o.activation_min_psnr = self.activation_min_psnr;
        o.validate().map_err(|e| self.flagged(e))?;
        Ok(o)
    }

    /// A library error in the command line's terms: an option error names the flag at fault.
    /// Refuses, before building, a `--compile` mlc's compiler would refuse after: several sizes
    /// in one function are enumerated shapes, whose keys in coremlc's output are an unknown hash.
    fn check_compile(&self) -> Result<()> {
        let compiling = self.compile || self.compile_to.is_some();
        let sizes = self.latent_size.as_ref().or(self.image_size.as_ref());
        if compiling
            && self.compiler == CompilerArg::Mlc
            && !self.multifunction
            && sizes.is_some_and(|s| s.0.len() > 1)
        {
            anyhow::bail!(
                "--compile: several sizes in one function are enumerated shapes, which mlc's compiler cannot write (coremlc keys them by an unknown hash); add --multifunction (--target ios18) or use --compiler xcrun"
            );
        }
        Ok(())
    }

    fn flagged(&self, e: compiler::BuildError) -> anyhow::Error {
        use compiler::{BuildError, BuildOption as O, Remedy};
        if let Some(r) = e.remedy() {
            let flag = match r {
                Remedy::WeightsFile => "--weights FILE".to_string(),
                Remedy::Fp32 => "--precision fp32".into(),
                Remedy::Part(p) => format!("--part {p}"),
            };
            return anyhow::anyhow!("{e} ({flag})");
        }
        let BuildError::Option { option, reason } = e else {
            return e.into();
        };
        let flag = match option {
            O::Weights => "--weights".to_string(),
            O::Sizes if self.image_size.is_some() => "--image-size".into(),
            O::Sizes => "--latent-size".into(),
            O::Multifunction => "--multifunction".into(),
            O::Palettize(bits) => format!("--palettize {bits}"),
            O::Granularity => "--granularity per-grouped-channel".into(),
            O::BlockSize => "--block-size".into(),
            O::OutputType => "--output-type image".into(),
            O::InputType => "--input-type image".into(),
            O::QuantizeActivations => "--quantize-activations int8".into(),
            O::Calibration => "--calibration".into(),
        };
        anyhow::anyhow!("{flag}: {reason}")
    }
}

pub fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(a) => {
            let opts = a.options()?;
            a.check_compile()?;
            let r = compiler::build(&opts).map_err(|e| a.flagged(e))?;
            if a.json {
                let pkg = crate::package::read_package(&r.package)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&crate::report::build_json(&r, &pkg))?
                );
            } else {
                println!(
                    "wrote {} ({} ops, {} weight bytes, {} {} {})",
                    r.package.display(),
                    r.ops,
                    r.weight_bytes,
                    r.model,
                    r.part,
                    opts.target
                );
            }
            if let Some(k) = &r.kept_float {
                eprintln!(
                    "int8 activations on {} of {} convs and adds (output {:.2} dB on the calibration set); kept fp16: {}",
                    k.sites - k.names.len(),
                    k.sites,
                    k.psnr,
                    if k.names.is_empty() { "none".to_string() } else { k.names.join(", ") }
                );
            }
            if a.timings {
                let total: f64 = r.timings.iter().map(|(_, t)| t.as_secs_f64()).sum();
                for (stage, t) in &r.timings {
                    eprintln!("{:>9.3} ms  {stage}", t.as_secs_f64() * 1e3);
                }
                eprintln!("{:>9.3} ms  total", total * 1e3);
            }
            if let Some(l) = &r.largest_intermediate {
                // Conv activations are as large as the image asks; an attention score matrix
                // past the chunk budget is worth a word: it happens only when no part count
                // divides the query count at every enumerated size.
                if l.bytes > crate::passes::lower_attention::MAX_SCORE_BYTES
                    && l.name.contains("attention")
                {
                    eprintln!(
                        "note: the largest intermediate, {} {:?}, takes {:.0} MiB: no chunk count divides the attention's query count at every enumerated size; --multifunction chunks each size",
                        l.name,
                        l.shape,
                        l.bytes as f64 / (1 << 20) as f64,
                    );
                }
            }
            if !r.ane.fits() {
                eprintln!("warning: {}", r.ane.verdict());
                for n in &r.ane.notes {
                    eprintln!("warning: {n}");
                }
                for o in r.ane.misfits().take(5) {
                    eprintln!(
                        "warning: {} ({}): {}",
                        o.name,
                        o.op_type,
                        o.reasons.join("; ")
                    );
                }
                eprintln!("(details: mlc inspect {} --ane)", r.package.display());
            }
            if a.compile || a.compile_to.is_some() {
                let dir = a
                    .compile_to
                    .clone()
                    .unwrap_or_else(|| r.package.parent().map(PathBuf::from).unwrap_or_default());
                let dir = if dir.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    dir
                };
                match a.compiler {
                    CompilerArg::Xcrun => {
                        let c = crate::coremlc::compile(&r.package, &dir)?;
                        if !c.output.is_empty() {
                            eprintln!("{}", c.output);
                        }
                        println!("compiled {}", c.mlmodelc.display());
                    }
                    CompilerArg::Mlc => {
                        let name = crate::mlmodelc::default_output(&r.package);
                        let out = dir.join(name.file_name().unwrap_or_default());
                        crate::mlmodelc::compile(&r.package, &out, &Default::default())?;
                        println!("compiled {}", out.display());
                    }
                }
            }
            Ok(())
        }
        Command::Compile(a) => {
            let out = a
                .output
                .clone()
                .unwrap_or_else(|| crate::mlmodelc::default_output(&a.package));
            crate::mlmodelc::compile(&a.package, &out, &Default::default())?;
            println!("compiled {}", out.display());
            Ok(())
        }
        Command::Inspect(a) => {
            let pkg = read_model(&a.package)?;
            if a.ranges {
                print!("{}", inspect_ranges(&pkg, &a)?);
            } else if a.ane {
                print!("{}", crate::ane::report(&pkg.model));
            } else if a.dot {
                print!("{}", crate::inspect::dot(&pkg.model));
            } else {
                print!("{}", crate::inspect::describe(&pkg)?);
            }
            Ok(())
        }
        Command::Run(a) => run(&a),
    }
}

/// `mlc inspect --ranges`: the package on its calibration inputs, op by op.
fn inspect_ranges(pkg: &crate::package::Package, a: &InspectArgs) -> Result<String> {
    use crate::calibrate::{ranges, Calibration};
    use std::io::IsTerminal;
    let path = a
        .calibration
        .as_ref()
        .context("--ranges needs --calibration")?;
    let function = a
        .function
        .clone()
        .unwrap_or_else(|| crate::run::default_function(pkg));
    let mut target = ranges::package_target(pkg, &function, a.encoder_weights.as_deref())?;
    target.upscale = a.upscale;
    let cal = Calibration::load(path, &target)?;
    let stats = ranges::package_ranges(pkg, &function, &cal, std::io::stderr().is_terminal())?;
    Ok(crate::inspect::ranges(&stats, cal.len(), &cal.hash()))
}

/// What `--fp16-activations` found: the largest fp16 activation and any overflow.
fn report_activations(stats: &crate::mil::eval::ActivationStats) {
    use crate::mil::eval::FP16_MAX;
    if stats.largest_at.is_empty() {
        eprintln!("fp16 activations: the program computes nothing in fp16");
        return;
    }
    eprintln!(
        "fp16 activations: largest magnitude {:.6e} at {} ({:.1}% of fp16's {FP16_MAX})",
        stats.largest,
        stats.largest_at,
        100.0 * stats.largest / FP16_MAX
    );
    if let Some(first) = stats.overflowed.first() {
        eprintln!(
            "warning: {} ops overflow fp16 (first: {first}); their values became infinite, as on a device computing in fp16: build with --precision fp32",
            stats.overflowed.len()
        );
    }
}

/// A package, or a compiled bundle read as one, so that inspect and run take either.
fn read_model(path: &std::path::Path) -> Result<crate::package::Package> {
    Ok(if has_extension(path, "mlmodelc") {
        crate::mlmodelc::read_as_package(path)?
    } else {
        crate::package::read_package(path)?
    })
}

/// Whether `path` ends in `.ext` (any case).
fn has_extension(path: &std::path::Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case(ext))
}

/// `mlc run`: inputs from safetensors or a PNG; an image output to PNG, anything else (an
/// encoder's latent) to safetensors.
fn run(a: &RunArgs) -> Result<()> {
    use crate::run::{self as r, FeatureShape};
    if !a.force && std::fs::symlink_metadata(&a.output).is_ok() {
        bail!(
            "{}: already exists; pass --force to overwrite it",
            a.output.display()
        );
    }
    let pkg = read_model(&a.package)?;
    let function = a
        .function
        .clone()
        .unwrap_or_else(|| r::default_function(&pkg));
    let names = r::input_names(&pkg, &function);
    let outputs = r::features(&pkg, &function).1;
    // Decide where the output goes before the (slow) evaluation.
    let first_out = outputs.first().context("the model has no outputs")?;
    let out_shape = r::feature_shape(&pkg, &function, &first_out.name);
    let to_png = if has_extension(&a.output, "png") {
        match &out_shape {
            Some(s) if !s.is_rgb() => bail!(
                "{}: the model's output {:?} is {s}, not an image; write it to a .safetensors file",
                a.output.display(),
                first_out.name
            ),
            _ => true,
        }
    } else if has_extension(&a.output, "safetensors") {
        false
    } else {
        out_shape.as_ref().is_some_and(FeatureShape::is_rgb) && outputs.len() == 1
    };

    let mut inputs = std::collections::BTreeMap::new();
    // The ids of --tokens are bound here; a file is read below.
    let input = match (&a.input, &a.tokens) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(TokenList(ids))) => {
            let [name] = &names[..] else {
                bail!(
                    "--tokens gives one input, but the model takes {}",
                    names.join(", ")
                );
            };
            let len = match r::feature_shape(&pkg, &function, name) {
                Some(FeatureShape::Array(s))
                    if r::is_int_input(&pkg, &function, name) && s.len() == 2 && s[0] == 1 =>
                {
                    s[1] as usize
                }
                shape => bail!(
                    "--tokens: the model's input {name:?} is {}, not int32 token ids [1, N]",
                    shape.map_or("unknown".to_string(), |s| s.to_string())
                ),
            };
            if ids.is_empty() || ids.len() > len {
                bail!(
                    "--tokens: {} ids given; the model takes 1 to {len}",
                    ids.len()
                );
            }
            let last = *ids.last().expect("not empty");
            let data: Vec<f32> = ids
                .iter()
                .copied()
                .chain(std::iter::repeat(last))
                .take(len)
                .map(|v| v as f32)
                .collect();
            inputs.insert(name.clone(), crate::kernels::Array::new(vec![1, len], data));
            None
        }
        (None, None) => bail!("give --input or --tokens"),
    };
    if let Some(input) = &input {
        if has_extension(input, "png") {
            let [name] = &names[..] else {
                bail!(
                    "{}: a PNG gives one input, but the model takes {}",
                    input.display(),
                    names.join(", ")
                );
            };
            let shape = r::feature_shape(&pkg, &function, name);
            let mut image = r::read_png(input)?;
            match &shape {
            Some(s) if !s.is_rgb() => bail!(
                "{}: a PNG is an RGB image, but the model's input {name:?} is {s}; give it as safetensors",
                input.display()
            ),
            Some(s) if s.is_nhwc_rgb() => {
                image = crate::kernels::transpose(&image, &[0, 2, 3, 1]);
            }
            _ => {}
        }
            if r::is_image_input(&pkg, &function, name) {
                // A Core ML image input takes the pixels themselves.
                image
                    .data
                    .iter_mut()
                    .for_each(|v| *v = (*v * 255.0).round());
            }
            inputs.insert(name.clone(), image);
        } else {
            let mut tensors = r::read_safetensors(input)?;
            for name in &names {
                let t = match tensors.remove(name) {
                    Some(t) => t,
                    None if tensors.len() == 1 && names.len() == 1 => {
                        tensors.pop_first().expect("one").1
                    }
                    None => bail!(
                        "{}: no tensor named {name:?} (the model's input)",
                        input.display()
                    ),
                };
                inputs.insert(name.clone(), t);
            }
        }
    }
    let options = crate::mil::eval::EvalOptions {
        fp16_activations: a.fp16_activations,
        ..Default::default()
    };
    let (outputs, stats) = r::run_with(&pkg, &function, &inputs, options)
        .with_context(|| format!("evaluating {}", a.package.display()))?;
    if a.fp16_activations {
        report_activations(&stats);
    }
    if to_png {
        let (name, image) = outputs.iter().next().context("the model has no outputs")?;
        let peak = if r::is_image_output(&pkg, &function, name) {
            255.0
        } else {
            1.0
        };
        r::write_png(image, peak, &a.output)?;
        println!(
            "wrote {} (function {function}, output {name}, shape {:?})",
            a.output.display(),
            image.shape
        );
    } else {
        r::write_safetensors(&outputs, &a.output)?;
        let listed: Vec<String> = outputs
            .iter()
            .map(|(n, t)| format!("{n} {:?}", t.shape))
            .collect();
        println!(
            "wrote {} (function {function}, f32 {})",
            a.output.display(),
            listed.join(", ")
        );
    }
    Ok(())
}
