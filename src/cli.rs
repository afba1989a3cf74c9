//! The command line: flags are parsed and resolved into library options here, in one place.

use crate::compiler::{self, BuildOptions, Precision};
use crate::mil::Target;
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "mlc",
    version,
    about = "Compile tiny diffusion image decoders (TAESD family) into Core ML .mlpackage files, in pure Rust",
    long_about = "mlc declares the TAESD decoder family in Rust, loads real weights (safetensors or PyTorch .pth), \
optimizes the graph (group-norm lowering, constant folding, fp16) and writes a Core ML ML Program package \
that runs on the Apple Neural Engine. No Python, no PyTorch, no coremltools.",
    after_help = "Examples:\n  mlc build flux2 --weights taef2_decoder.safetensors -o taef2.mlpackage\n  \
mlc inspect taef2.mlpackage\n  mlc run taef2.mlpackage --input latent.safetensors --output image.png"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build a decoder into an .mlpackage.
    Build(BuildArgs),
    /// Describe a package: inputs, outputs, metadata, op histogram, sizes and MIL text.
    Inspect(InspectArgs),
    /// Evaluate a package on the CPU (mlc's reference evaluator) and write the image as PNG.
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Model: taesd, taesdxl (SD 1.x/2.x and SDXL, 4 latent channels), taesd3, taef1 / flux1 (16),
    /// taef2 / flux2 (32). The architecture variant is checked against the weights.
    pub model: String,
    /// Decoder weights: .safetensors (upstream `1.weight` or diffusers `decoder.layers.0.weight`
    /// keys; f32, f16 or bf16) or a PyTorch .pth checkpoint.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Output package [default: <model>_decoder.mlpackage]. Written atomically.
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
    /// Latent size, N or HxW (the image is 8 times larger) [default: 96, i.e. 768x768 images].
    #[arg(long, value_name = "N|HxW", conflicts_with = "image_size", value_parser = parse_size)]
    pub latent_size: Option<[usize; 2]>,
    /// Image size, N or HxW, each a multiple of 8.
    #[arg(long, value_name = "N|HxW", value_parser = parse_size)]
    pub image_size: Option<[usize; 2]>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The .mlpackage to describe (mlc's or coremltools').
    pub package: PathBuf,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The .mlpackage to evaluate.
    pub package: PathBuf,
    /// A safetensors file holding the input, under the model input's name (e.g. `latent`) or as
    /// its only tensor.
    #[arg(long, value_name = "FILE.safetensors")]
    pub input: PathBuf,
    /// Where to write the output image (PNG, values clamped to [0, 1]).
    #[arg(long, value_name = "FILE.png")]
    pub output: PathBuf,
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

fn parse_target(s: &str) -> Result<Target, String> {
    Target::parse(s)
}

/// `N` or `HxW`.
fn parse_size(s: &str) -> Result<[usize; 2], String> {
    let parse = |p: &str| {
        p.trim()
            .parse::<usize>()
            .map_err(|_| format!("{p:?} is not a whole number"))
    };
    let size = match s.split_once(['x', 'X']) {
        Some((h, w)) => [parse(h)?, parse(w)?],
        None => [parse(s)?; 2],
    };
    if size.contains(&0) {
        return Err(format!("sizes must be positive, got {s:?}"));
    }
    Ok(size)
}

impl BuildArgs {
    /// Resolves flags into library options.
    pub fn options(&self) -> Result<BuildOptions> {
        let mut o = BuildOptions::new(&self.model, &self.weights);
        o.output = self.output.clone();
        o.precision = self.precision.into();
        o.io_precision = self.io_precision.map(Into::into);
        o.target = self.target;
        if let Some(s) = self.latent_size {
            o.latent_size = s;
        }
        if let Some([h, w]) = self.image_size {
            if h % 8 != 0 || w % 8 != 0 {
                bail!("--image-size {h}x{w}: each size must be a multiple of 8 (the decoder upsamples latents 8x)");
            }
            o.latent_size = [h / 8, w / 8];
        }
        Ok(o)
    }
}

pub fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(a) => {
            let opts = a.options()?;
            let r = compiler::build(&opts)?;
            println!(
                "wrote {} ({} ops, {} weight bytes, {} {})",
                r.package.display(),
                r.ops,
                r.weight_bytes,
                r.model.name(),
                opts.target
            );
            Ok(())
        }
        Command::Inspect(a) => {
            let pkg = crate::package::read_package(&a.package)?;
            print!("{}", crate::inspect::describe(&pkg)?);
            Ok(())
        }
        Command::Run(a) => {
            let pkg = crate::package::read_package(&a.package)?;
            let mut tensors = crate::run::read_safetensors(&a.input)?;
            let names = crate::run::input_names(&pkg);
            let mut inputs = std::collections::BTreeMap::new();
            for name in &names {
                let t = match tensors.remove(name) {
                    Some(t) => t,
                    None if tensors.len() == 1 && names.len() == 1 => {
                        tensors.pop_first().expect("one").1
                    }
                    None => bail!(
                        "{}: no tensor named {name:?} (the model's input)",
                        a.input.display()
                    ),
                };
                inputs.insert(name.clone(), t);
            }
            let outputs = crate::run::run(&pkg, "main", &inputs)
                .with_context(|| format!("evaluating {}", a.package.display()))?;
            let (name, image) = outputs.iter().next().context("the model has no outputs")?;
            crate::run::write_png(image, &a.output)?;
            println!(
                "wrote {} (output {name}, shape {:?})",
                a.output.display(),
                image.shape
            );
            Ok(())
        }
    }
}
