//! The command line: each subcommand's flags are parsed and resolved into library calls in its
//! own file; nothing here computes.

mod build;
mod compile;
mod inspect;
mod pipeline;
pub mod progress;
mod run;

pub use build::BuildArgs;
pub use compile::CompileArgs;
pub use inspect::InspectArgs;
pub use pipeline::PipelineArgs;
pub use run::RunArgs;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "mlc",
    version,
    about = "Compile diffusion models' autoencoders (TAESD family, full SD/SDXL/SD3/FLUX VAEs), CLIP text and image encoders and SD/SDXL UNets into Core ML .mlpackage files, in pure Rust",
    long_about = "mlc declares the TAESD autoencoders, the full VAEs of SD, SDXL, SD3, FLUX.1 and FLUX.2, the CLIP text \
and image encoders and the Stable Diffusion UNets (SD 1.x/2.x, inpainting, SDXL) in Rust, loads real weights (safetensors, or PyTorch .pth), \
fuses LoRAs into them or keeps them as switchable functions (--lora, --adapter), optimizes the graph (group-norm and \
attention lowering, constant folding, fp16, compression) and writes a Core ML ML Program package for the Apple \
Neural Engine, which it can also compile, inspect and run. No Python, no PyTorch, no coremltools.",
    after_help = "Examples:\n  mlc build flux2 --weights taef2_decoder.safetensors -o taef2.mlpackage\n  \
mlc build sd-unet --weights v1-5-pruned-emaonly.safetensors --lora style.safetensors:0.8\n  \
mlc pipeline sd --weights v1-5-pruned-emaonly.safetensors -o Resources\n  \
mlc compile taef2.mlpackage\n  mlc inspect taef2.mlpackage\n  mlc run taef2.mlpackage --input latent.safetensors --output image.png"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build a model's part (a decoder or an encoder) into an .mlpackage.
    Build(Box<BuildArgs>),
    /// Describe a package: inputs, outputs, metadata, op histogram, sizes and MIL text.
    Inspect(InspectArgs),
    /// Evaluate a package on the CPU (mlc's reference evaluator): an image output is written as
    /// PNG, anything else (an encoder's latent) as safetensors.
    Run(RunArgs),
    /// Compile an .mlpackage into the .mlmodelc bundle apps load, without Apple's tools (the
    /// files coremlc writes: model.mil, coremldata.bin, metadata.json, weights).
    Compile(CompileArgs),
    /// Build every model of a Stable Diffusion checkpoint (single file or diffusers folder)
    /// into the Resources folder Apple's Swift package `StableDiffusion` loads: text
    /// encoder(s), UNet, VAE decoder and encoder as .mlmodelc, plus the tokenizer files.
    Pipeline(Box<PipelineArgs>),
}

/// Real inputs to calibrate on, for `build` (compression fitted to them) and `inspect --ranges`
/// (activation ranges measured on them).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Calibration")]
pub struct CalibrationArgs {
    /// Real inputs: a folder of PNG/JPEG photos (sorted by name; scaled by area average to
    /// cover the model's size, then centre-cropped), one photo, or a safetensors file of the
    /// model's inputs by name (one sample, or a batch [N, ...]). A decoder's photos are first
    /// encoded into latents by its model's encoder, evaluated by mlc. build: with --palettize
    /// or --quantize, the weights of each conv and linear layer (matmul by a constant) are
    /// fitted to its output on them (weighted k-means, error-feedback rounding, table refit,
    /// bias correction) instead of to the weights alone, and with --quantize-activations the
    /// ranges are measured on them; their sha256 goes into the package's metadata. inspect
    /// --ranges: the package is evaluated on them.
    #[arg(long, value_name = "DIR|FILE")]
    pub calibration: Option<PathBuf>,
    /// With --calibration photos for a decoder: the encoder weights that turn them into latents
    /// [default: building a full VAE, the model's own file; else the published encoder
    /// (inspecting a full VAE's package, give the checkpoint, which holds its encoder)].
    #[arg(long, value_name = "FILE", requires = "calibration")]
    pub encoder_weights: Option<PathBuf>,
    /// With --calibration: scale photos smaller than the model's size up (area average) instead
    /// of refusing them.
    #[arg(long, requires = "calibration")]
    pub upscale: bool,
}

pub fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(a) => build::main(&a),
        Command::Compile(a) => compile::main(&a),
        Command::Inspect(a) => inspect::main(&a),
        Command::Run(a) => run::main(&a),
        Command::Pipeline(a) => pipeline::main(&a),
    }
}

/// A package, or a compiled bundle read as one, so that inspect and run take either.
fn read_model(path: &std::path::Path) -> Result<crate::package::Package> {
    Ok(if crate::run::inputs::has_extension(path, "mlmodelc") {
        crate::mlmodelc::read_as_package(path)?
    } else {
        crate::package::read_package(path)?
    })
}
