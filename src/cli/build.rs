//! `mlc build`: flags, grouped as `--help` shows them, resolved into library options; the
//! library's errors named by the flag at fault; the report printed.

use super::progress::Bar;
use super::CalibrationArgs;
use crate::build::{
    self, ActivationRanges, ArrayLayout, BuildError, BuildOption, BuildOptions, BuildReport,
    CalibrationSource, Compression, InputType, OutputType, Precision, QuantMode, Remedy, Sizes,
};
use crate::mil::Target;
use crate::models::{ModelError, ModelOptions, TransformerLayout};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Model. Tiny autoencoders: taesd, taesdxl (SD 1.x/2.x and SDXL, 4 latent channels),
    /// taesd3, taef1 / flux1 (16), taef2 / flux2 (32). Full VAEs: sd-vae (sd15-vae, sd21-vae),
    /// sdxl-vae (4), sd3-vae, flux1-vae (16), flux2-vae (32). CLIP text encoders: clip-l
    /// (SD 1.x, SDXL), clip-bigg (SDXL's second), clip-h (SD 2.x). CLIP image encoder:
    /// clip-vision (image prompts). The architecture is checked against the weights; an option
    /// the model's part does not take is refused.
    pub model: String,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub io: IoArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
    #[command(flatten)]
    pub compression: CompressionArgs,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Input and weights")]
pub struct InputArgs {
    /// Which of the model's parts (an unknown name is refused with the list): decoder (latent →
    /// image) or encoder (image → latent; token ids → hidden states); unet for the UNets.
    /// [default: the model's first part: decoder for autoencoders, encoder for CLIP, unet]
    #[arg(long, value_name = "PART")]
    pub part: Option<String>,
    /// Weights. TAESD: .safetensors (upstream `1.weight` or diffusers `decoder.layers.0.weight`
    /// keys; f32, f16 or bf16) or a PyTorch .pth checkpoint. Full VAEs: a diffusers
    /// `diffusion_pytorch_model.safetensors` (its config.json beside it is checked) or an
    /// original single file (CompVis/LDM, FLUX `ae.safetensors`, a full SD checkpoint's
    /// `first_stage_model.`). UNets: a diffusers `unet/diffusion_pytorch_model[.fp16].safetensors`
    /// (config.json beside it checked and used) or a single-file checkpoint (.safetensors or
    /// .ckpt; the UNet under `model.diffusion_model.`). Without it, a TAESD decoder's published
    /// weights are taken from
    /// the Hugging Face cache ($HF_HOME/hub), downloaded there first if missing ($HF_ENDPOINT
    /// picks the host; HF_HUB_OFFLINE=1 forbids the network); other parts need it.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// A LoRA fused into the weights as they are read, at WEIGHT (default 1.0; negative
    /// subtracts it); repeat for several, whose deltas add. UNets and CLIP text encoders;
    /// kohya-ss (diffusers or original single-file module names, LoCon), LyCORIS LoHa/LoKr and
    /// diffusers/PEFT files, .safetensors or .pt/.ckpt. Keys for another model of the pipeline
    /// (a text encoder's while building the UNet) are skipped and counted in --json.
    #[arg(long = "lora", value_name = "FILE[:WEIGHT]", value_parser = parse_lora)]
    pub loras: Vec<crate::lora::LoraSpec>,
    /// A switchable LoRA (iOS18): the package gets a function NAME that runs the model with
    /// this LoRA beside the default function `main` (the model without it), the base weights
    /// stored once; the LoRA's low-rank pair stays two small layers beside each weight it
    /// adapts. Repeat for several. An app picks one by function name.
    #[arg(long = "adapter", value_name = "NAME=FILE[:WEIGHT]", value_parser = parse_adapter)]
    pub adapters: Vec<crate::lora::AdapterSpec>,
}

fn parse_adapter(s: &str) -> Result<crate::lora::AdapterSpec, String> {
    crate::lora::AdapterSpec::parse(s)
}

pub(super) fn parse_lora(s: &str) -> Result<crate::lora::LoraSpec, String> {
    crate::lora::LoraSpec::parse(s)
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Sizes and I/O")]
pub struct IoArgs {
    /// Latent sizes, comma-separated, each N or HxW; the first is the default. One size gives a
    /// static model; several give one package that accepts each of them [default: the model's:
    /// a 768x768 image for TAESD, 512 for sd-vae, 1024 for the others; a 64x64 latent for
    /// sd-unet, 128x128 for sdxl-unet]. With --input packed, the packed latent's size.
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
    /// Encoders: array (an [1, 3, H, W] multi-array in the model's range: [0, 1] for TAESD,
    /// [-1, 1] for full VAEs, CLIP-normalised pixel_values for clip-vision) or image (a Core ML
    /// RGB image; the mapping of its 0..255 pixels to the model's range, and clip-vision's
    /// per-channel mean and std, happen inside the model).
    #[arg(long, value_enum, default_value_t = TypeArg::Array, value_name = "TYPE")]
    pub input_type: TypeArg,
    /// Decoders: array (an [1, 3, H, W] multi-array in about [0, 1]) or image (a Core ML RGB
    /// image; the clamping and the scaling to [0, 255] happen inside the model).
    #[arg(long, value_enum, default_value_t = TypeArg::Array, value_name = "TYPE")]
    pub output_type: TypeArg,
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
    /// Full-VAE encoders: one output `latent` [1, 2C, h, w], the posterior's mean and
    /// log-variance concatenated on channels (unclamped), as Apple's Swift pipeline reads
    /// `VAEEncoder`; not with --logvar or --latent-scaling.
    #[arg(long, conflicts_with_all = ["logvar", "latent_scaling"])]
    pub moments: bool,
    /// Text encoders: also output `hidden_state`, transformers' `hidden_states[-N]` (the
    /// output N-1 layers before the last, without the final layer norm): `penultimate` (N = 2)
    /// is what SDXL and SD 2.x condition on.
    #[arg(long, value_name = "penultimate|N", value_parser = parse_hidden_layer)]
    pub hidden_layer: Option<usize>,
    /// Projecting text encoders (clip-bigg, clip-h): also output `pooled`, the final-norm EOS
    /// state before text_projection (a CLIPTextModel's pooler_output).
    #[arg(long)]
    pub pooled: bool,
    /// UNets: the batch size every input and the output have [default: 2, classifier-free
    /// guidance's negative and positive prompt in one call, as Apple's Swift pipeline runs it].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub batch: Option<u32>,
    /// UNets: the length of the text conditioning, `encoder_hidden_states`' token axis
    /// [default: 77, what SD pipelines tokenize to].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub tokens: Option<u32>,
    /// Single-file checkpoints (.ckpt, .safetensors): read the EMA copy of the UNet's weights
    /// (`model_ema.`) instead of the trained ones (`model.diffusion_model.`).
    #[arg(long)]
    pub ema: bool,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Precision and target")]
pub struct ComputeArgs {
    /// Precision of weights and compute.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fp16)]
    pub precision: PrecisionArg,
    /// Precision of the model's input and output arrays [default: same as --precision].
    /// fp16 I/O avoids two casts on device; fp32 suits callers that hold float arrays.
    #[arg(long, value_enum, value_name = "PRECISION")]
    pub io_precision: Option<PrecisionArg>,
    /// Deployment target: ios16 (spec 7), ios17, ios18, or macos13, macos14, macos15.
    #[arg(long, default_value = "ios16", value_parser = Target::parse)]
    pub target: Target,
    /// Transformers (CLIP) and UNets: `standard` computes on [B, tokens, hidden] with linear
    /// layers as matmuls (as traced PyTorch models do); `ane` on [B, hidden, 1, tokens] with 1x1
    /// convolutions and attention split per head, the layout Apple recommends for the Neural
    /// Engine. Same numbers; a UNet's encoder_hidden_states is then [B, D, 1, 77], as Apple's
    /// Swift pipeline passes it.
    #[arg(long, value_enum, default_value_t = TransformerLayoutArg::Standard)]
    pub layout: TransformerLayoutArg,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Compression")]
pub struct CompressionArgs {
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
    /// Compress only weights with at least N elements (smaller ones stay dense).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub min_elements: usize,
    /// Quantize activations to int8 (with --quantize int8: W8A8): quantize-dequantize pairs on
    /// the inputs of convs and of adds of two activations, clipped to ranges measured with
    /// --calibration; --target ios17 or newer.
    #[arg(long, value_enum, value_name = "TYPE", requires = "calibration")]
    pub quantize_activations: Option<ActivationQuantArg>,
    /// With --quantize-activations: keep float activations on the fewest convs and adds (the
    /// most sensitive, as measured on the calibration set) that hold the model's output there at
    /// DB dB PSNR against the same model without int8 activations; the build prints which.
    #[arg(long, value_name = "DB", requires = "calibration")]
    pub activation_min_psnr: Option<f64>,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Output package [default: <model>_<part>.mlpackage]. Written atomically.
    #[arg(short, long, value_name = "OUT.mlpackage")]
    pub output: Option<PathBuf>,
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
    /// After each pass, write the IR (.ir.txt), a Graphviz graph (.dot), the MIL text (.mil.txt)
    /// and a package Netron opens (.mlpackage) into DIR, named NN_<pass>.
    #[arg(long, value_name = "DIR")]
    pub dump_passes: Option<PathBuf>,
    /// Print the time each stage and pass took.
    #[arg(long)]
    pub timings: bool,
    /// Print a machine-readable JSON report (inputs, outputs, sizes, op counts, timings) instead
    /// of the summary line.
    #[arg(long)]
    pub json: bool,
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

/// `--input-type`, `--output-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TypeArg {
    Array,
    Image,
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

/// `N` or `HxW`, comma-separated.
pub(super) fn parse_sizes(s: &str) -> Result<SizeList, String> {
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
    /// Resolves flags into library options (checked by the library's plan, not here).
    pub fn options(&self) -> Result<BuildOptions> {
        let (i, io, c, z, out) = (
            &self.input,
            &self.io,
            &self.compute,
            &self.compression,
            &self.output,
        );
        let mut o = BuildOptions::published(&self.model);
        o.weights = i.weights.clone();
        o.loras = i.loras.clone();
        o.adapters = i.adapters.clone();
        o.output = out.output.clone();
        o.part = i.part.clone();
        o.precision = c.precision.into();
        o.io_precision = c.io_precision.map(Into::into);
        o.target = c.target;
        o.model_options = ModelOptions {
            latent_scaling: io.latent_scaling,
            packed_input: io.input == InputForm::Packed,
            logvar_output: io.logvar,
            moments_output: io.moments,
            hidden_layer: io.hidden_layer,
            pooled_output: io.pooled,
            batch: io.batch.map(|n| n as usize),
            tokens: io.tokens.map(|n| n as usize),
            ema: io.ema,
            layout: match c.layout {
                TransformerLayoutArg::Standard => TransformerLayout::Standard,
                TransformerLayoutArg::Ane => TransformerLayout::Ane,
            },
        };
        o.sizes = match (&io.latent_size, &io.image_size) {
            (Some(SizeList(s)), _) => Sizes::Latent(s.clone()),
            (None, Some(SizeList(s))) => Sizes::Image(s.clone()),
            (None, None) => Sizes::Default,
        };
        o.multifunction = io.multifunction;
        o.dump_passes = out.dump_passes.clone();
        let layout = |l: LayoutArg| match l {
            LayoutArg::Nchw => ArrayLayout::Nchw,
            LayoutArg::Nhwc => ArrayLayout::Nhwc,
        };
        o.input_layout = layout(io.input_layout);
        o.output_layout = layout(io.output_layout);
        o.input_type = match io.input_type {
            TypeArg::Array => InputType::Array,
            TypeArg::Image => InputType::Image,
        };
        o.output_type = match io.output_type {
            TypeArg::Array => OutputType::Array,
            TypeArg::Image => OutputType::Image,
        };
        o.compression = match (z.palettize, z.quantize) {
            (Some(_), Some(_)) => {
                bail!("--palettize and --quantize together have no defined meaning; choose one")
            }
            (Some(bits), None) => Some(Compression::Palettize {
                bits,
                group_size: z.granularity.clone().and_then(|g| g.0),
                min_elements: z.min_elements,
            }),
            (None, Some(q)) => Some(Compression::Quantize {
                mode: match q {
                    QuantArg::Int8 => QuantMode::Int8,
                    QuantArg::Uint8 => QuantMode::Uint8,
                },
                block_size: z.block_size,
                min_elements: z.min_elements,
            }),
            (None, None) => None,
        };
        let cal = &self.calibration;
        o.calibration = cal.calibration.as_ref().map(|path| CalibrationSource {
            path: path.clone(),
            encoder_weights: cal.encoder_weights.clone(),
            upscale: cal.upscale,
        });
        o.quantize_activations = z
            .quantize_activations
            .map(|ActivationQuantArg::Int8| ActivationRanges::Calibrated);
        o.activation_min_psnr = z.activation_min_psnr;
        Ok(o)
    }

    fn compiling(&self) -> bool {
        self.output.compile || self.output.compile_to.is_some()
    }

    /// A library error in the command line's terms: an option error names the flag at fault.
    fn flagged(&self, e: BuildError) -> anyhow::Error {
        use BuildOption as O;
        if let Some(r) = e.remedy() {
            let flag = match r {
                Remedy::WeightsFile => "--weights FILE".to_string(),
                Remedy::Fp32 => "--precision fp32".into(),
                Remedy::Part(p) => format!("--part {p}"),
            };
            return anyhow::anyhow!("{e} ({flag})");
        }
        let size_flag = match (&self.io.latent_size, &self.io.image_size) {
            (Some(_), _) => Some("--latent-size"),
            (None, Some(_)) => Some("--image-size"),
            (None, None) => None,
        };
        let (option, reason) = match e {
            BuildError::Option { option, reason } => (option, reason),
            BuildError::Model(e @ ModelError::NoPart { .. }) => {
                return anyhow::anyhow!("--part: {e}")
            }
            BuildError::Model(ModelError::Size { reason }) => match size_flag {
                Some(flag) => return anyhow::anyhow!("{flag}: {reason}"),
                None => return ModelError::Size { reason }.into(),
            },
            e => return e.into(),
        };
        let flag = match option {
            O::Weights => "--weights".to_string(),
            O::Sizes => size_flag.unwrap_or("--latent-size").into(),
            O::Multifunction => "--multifunction".into(),
            O::Palettize(bits) => format!("--palettize {bits}"),
            O::Granularity => "--granularity per-grouped-channel".into(),
            O::BlockSize => "--block-size".into(),
            O::OutputType => "--output-type image".into(),
            O::InputType => "--input-type image".into(),
            O::QuantizeActivations => "--quantize-activations int8".into(),
            O::Calibration => "--calibration".into(),
            O::Compile => "--compile".into(),
            O::Adapter => "--adapter".into(),
            // Not a flag of `mlc build`: what `mlc pipeline` asks for.
            O::Features => "features".into(),
        };
        anyhow::anyhow!("{flag}: {reason}")
    }
}

pub fn main(a: &BuildArgs) -> Result<()> {
    let mut opts = a.options()?;
    let bar = Bar::on_stderr(a.output.json);
    opts.progress = Bar::observer(&bar);
    let plan = opts.plan().map_err(|e| a.flagged(e))?;
    if a.compiling() && a.output.compiler == CompilerArg::Mlc {
        plan.check_mlc_compilable().map_err(|e| a.flagged(e))?;
    }
    let built = build::write::build_plan(&plan);
    // Gone before anything else is printed, the error too.
    if let Some(b) = &bar {
        b.clear();
    }
    let r = built.map_err(|e| a.flagged(e))?;
    print_report(a, &r, opts.target)?;
    if a.compiling() {
        compile(a, &r.package)?;
    }
    Ok(())
}

/// The summary line (or the JSON report) on stdout; what is worth a word on stderr.
fn print_report(a: &BuildArgs, r: &BuildReport, target: Target) -> Result<()> {
    if a.output.json {
        let pkg = crate::package::read_package_model(&r.package)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&crate::report::build_json(r, &pkg))?
        );
    } else {
        println!(
            "wrote {} ({} ops, {} weight bytes, {} {} {target})",
            r.package.display(),
            r.ops,
            r.weight_bytes,
            r.model,
            r.part,
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
    for l in &r.loras {
        let skipped: Vec<String> = l
            .skipped
            .iter()
            .map(|(s, n)| format!("{n} for {s}"))
            .collect();
        eprintln!(
            "lora {} at {}: {} weights changed{}",
            l.path.display(),
            l.weight,
            l.modules,
            match skipped.is_empty() {
                true => String::new(),
                false => format!(", keys skipped ({})", skipped.join(", ")),
            }
        );
    }
    if r.fp32_ops > 0 {
        eprintln!(
            "mixed precision: {} ops compute in fp32 (the regions {} keeps fp32 in fp16 builds)",
            r.fp32_ops, r.model
        );
    }
    if a.output.timings {
        let total: f64 = r.timings.iter().map(|(_, t)| t.as_secs_f64()).sum();
        for (stage, t) in &r.timings {
            eprintln!("{:>9.3} ms  {stage}", t.as_secs_f64() * 1e3);
        }
        eprintln!("{:>9.3} ms  total", total * 1e3);
    }
    if let Some(l) = &r.largest_intermediate {
        // Conv activations are as large as the image asks; an attention score matrix past the
        // chunk budget is worth a word: it happens only when no part count divides the query
        // count at every enumerated size.
        if l.bytes > crate::passes::lower_attention::MAX_SCORE_BYTES && l.name.contains("attention")
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
    Ok(())
}

/// `--compile`, `--compile-to`: the package compiled into a .mlmodelc.
fn compile(a: &BuildArgs, package: &std::path::Path) -> Result<()> {
    let dir = a
        .output
        .compile_to
        .clone()
        .unwrap_or_else(|| package.parent().map(PathBuf::from).unwrap_or_default());
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    match a.output.compiler {
        CompilerArg::Xcrun => {
            let c = crate::coremlc::compile_with_xcrun(package, &dir)?;
            if !c.output.is_empty() {
                eprintln!("{}", c.output);
            }
            println!("compiled {}", c.mlmodelc.display());
        }
        CompilerArg::Mlc => {
            let name = crate::mlmodelc::default_output(package);
            let out = dir.join(name.file_name().unwrap_or_default());
            Bar::compiling(&out, a.output.json, || {
                crate::mlmodelc::compile(package, &out, &Default::default())
            })?;
            println!("compiled {}", out.display());
        }
    }
    Ok(())
}
