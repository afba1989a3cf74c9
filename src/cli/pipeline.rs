//! `mlc pipeline`: a checkpoint into the Resources folder of Apple's Stable Diffusion Swift
//! package. Flags only; [`crate::pipeline`] does the work.

use super::build::{parse_lora, parse_sizes, PrecisionArg, QuantArg, SizeList};
use super::progress::Bar;
use crate::build::{Compression, QuantMode};
use crate::mil::Target;
use crate::models::TransformerLayout;
use crate::pipeline::{PipelineOptions, PipelineReport};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    /// Stable Diffusion 1.x and 2.x (`StableDiffusionPipeline`).
    Sd,
    /// SDXL base (`StableDiffusionXLPipeline`).
    Sdxl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttentionArg {
    /// Apple's Neural Engine layout ([B, C, 1, S], attention split per head): mlc's `ane`.
    SplitEinsum,
    /// The traced PyTorch layout: mlc's `standard`.
    Original,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  mlc pipeline sd --weights v1-5-pruned-emaonly.safetensors -o Resources\n  \
mlc pipeline sdxl --weights sd_xl_base_1.0.safetensors -o Resources --palettize 6\n  \
mlc pipeline sd --weights stable-diffusion-v1-5/ -o Resources --lora style.safetensors:0.8"
)]
pub struct PipelineArgs {
    /// The family: sd (SD 1.x, 2.x) or sdxl (SDXL base). The checkpoint's tensors are checked
    /// to be of it (SD 1.x vs 2.x is told from the text encoder).
    #[arg(value_enum)]
    pub family: FamilyArg,
    /// The checkpoint: a single file (.safetensors or .ckpt, the parts under
    /// model.diffusion_model., first_stage_model., cond_stage_model. / conditioner.embedders.)
    /// or a diffusers folder (model_index.json, unet/, vae/, text_encoder/, text_encoder_2/,
    /// tokenizer/).
    #[arg(long, value_name = "FILE|DIR")]
    pub weights: PathBuf,
    /// The Resources folder to write: TextEncoder(2).mlmodelc, Unet.mlmodelc,
    /// VAEDecoder.mlmodelc, VAEEncoder.mlmodelc, vocab.json, merges.txt and mlc.json. Written
    /// atomically; an existing folder is replaced only if mlc wrote it (it has mlc.json).
    #[arg(short, long, value_name = "DIR", default_value = "Resources")]
    pub output: PathBuf,
    /// The image size, N or HxW, a multiple of 8 [default: 512 for SD 1.x, 768 for SD 2.x
    /// (the 768-v models; give 512 for SD 2.x base), 1024 for SDXL].
    #[arg(long, value_name = "N|HxW", value_parser = parse_sizes)]
    pub image_size: Option<SizeList>,
    /// The UNet's attention: split-einsum (the Neural Engine layout) or original.
    #[arg(long, value_enum, default_value_t = AttentionArg::SplitEinsum)]
    pub attention: AttentionArg,
    /// Palettize the text encoders' and the UNet's weights to BITS (1, 2, 4, 6, 8; 3 at
    /// --target ios18); the VAE stays float, as Apple's converter keeps it.
    #[arg(long, value_name = "BITS", conflicts_with = "quantize")]
    pub palettize: Option<u32>,
    /// Quantize the text encoders' and the UNet's weights to 8 bits (int8 or uint8).
    #[arg(long, value_enum, value_name = "TYPE")]
    pub quantize: Option<QuantArg>,
    /// The VAE's precision [default: fp16; fp32 for SDXL, whose VAE overflows fp16 (its
    /// activations pass 65504)]. A VAE in fp16 is first evaluated with fp16 activations on a
    /// test input (the decoder; both parts when fp16 is asked for) and refused if they pass half
    /// of 65504; the largest goes to mlc.json.
    #[arg(long, value_enum, value_name = "PRECISION")]
    pub vae_precision: Option<PrecisionArg>,
    /// A LoRA fused into every part it has keys for (UNet, text encoders), at WEIGHT
    /// (default 1.0). Repeat for several.
    #[arg(long = "lora", value_name = "FILE[:WEIGHT]", value_parser = parse_lora)]
    pub loras: Vec<crate::lora::LoraSpec>,
    /// Deployment target: ios16, ios17, ios18, or macos13, macos14, macos15.
    #[arg(long, default_value = "ios16", value_parser = Target::parse)]
    pub target: Target,
    /// sdxl: an SDXL refiner checkpoint (single file or diffusers folder) whose UNet goes beside
    /// the base's as UnetRefiner.mlmodelc (Apple's pipeline runs it with the base's text
    /// encoders); --lora reaches the base's parts only.
    #[arg(long, value_name = "FILE|DIR")]
    pub refiner: Option<PathBuf>,
    /// Keep each <Name>.mlpackage beside its <Name>.mlmodelc.
    #[arg(long)]
    pub keep_packages: bool,
    /// Write the UNet as UnetChunk1.mlmodelc + UnetChunk2.mlmodelc (what iOS devices load),
    /// cut where each holds about half the weights; compressed like the whole UNet would be.
    #[arg(long)]
    pub chunk_unet: bool,
    /// A folder with vocab.json and merges.txt to copy [default: the diffusers folder's
    /// tokenizer/, else generated from CLIP's public BPE list].
    #[arg(long, value_name = "DIR")]
    pub tokenizer: Option<PathBuf>,
    /// Print a machine-readable JSON report instead of the summary lines.
    #[arg(long)]
    pub json: bool,
}

impl PipelineArgs {
    pub fn options(&self) -> Result<PipelineOptions> {
        let command = match self.family {
            FamilyArg::Sd => "sd",
            FamilyArg::Sdxl => "sdxl",
        };
        let mut o = PipelineOptions::new(command, &self.weights, &self.output);
        o.image_size = match &self.image_size {
            None => None,
            Some(SizeList(s)) if s.len() == 1 => Some(s[0]),
            Some(_) => bail!("--image-size: give one size (a Resources folder has one)"),
        };
        o.layout = match self.attention {
            AttentionArg::SplitEinsum => TransformerLayout::Ane,
            AttentionArg::Original => TransformerLayout::Standard,
        };
        o.compression = match (self.palettize, self.quantize) {
            (Some(bits), _) => Some(Compression::Palettize {
                bits,
                group_size: None,
                min_elements: 2048,
            }),
            (None, Some(q)) => Some(Compression::Quantize {
                mode: match q {
                    QuantArg::Int8 => QuantMode::Int8,
                    QuantArg::Uint8 => QuantMode::Uint8,
                },
                block_size: None,
                min_elements: 2048,
            }),
            (None, None) => None,
        };
        o.vae_precision = self.vae_precision.map(Into::into);
        o.target = self.target;
        o.loras = self.loras.clone();
        o.keep_packages = self.keep_packages;
        o.chunk_unet = self.chunk_unet;
        o.refiner = self.refiner.clone();
        o.tokenizer = self.tokenizer.clone();
        Ok(o)
    }
}

pub fn main(a: &PipelineArgs) -> Result<()> {
    let mut opts = a.options()?;
    if !a.json {
        opts.progress = |name| {
            eprintln!("building {name}");
            Bar::observer(&Bar::on_stderr(false))
        };
    }
    let r = crate::pipeline::write(&opts)?;
    report_fp16_checks(&r);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json(&r))?);
        return Ok(());
    }
    for p in &r.parts {
        eprintln!(
            "  {}: {} {}, {} ops, {} weight bytes",
            p.name, p.build.model, p.build.part, p.build.ops, p.build.weight_bytes
        );
    }
    println!(
        "wrote {} ({}, {}x{} images, {} models)",
        r.folder.display(),
        r.family.name(),
        r.image_size[0],
        r.image_size[1],
        r.parts.len()
    );
    Ok(())
}

/// One line for the parts [`crate::pipeline::vae_check`] evaluated (the VAE built in fp16).
fn report_fp16_checks(r: &PipelineReport) {
    let checked: Vec<String> = r
        .parts
        .iter()
        .filter_map(|p| {
            let c = p.fp16_check.as_ref()?;
            Some(format!(
                "{} {:.3e} at {} ({:.1}%)",
                p.name,
                c.largest,
                c.at,
                100.0 * c.fraction()
            ))
        })
        .collect();
    if !checked.is_empty() {
        eprintln!(
            "fp16 check passed (largest activation on a test input, % of fp16's 65504): {}",
            checked.join("; ")
        );
    }
}

fn json(r: &PipelineReport) -> serde_json::Value {
    serde_json::json!({
        "folder": r.folder,
        "family": r.family.name(),
        "image_size": r.image_size,
        "checkpoint_sha256": r.checkpoint_sha256,
        "parts": r.parts.iter().map(|p| { let mut j = serde_json::json!({
            "name": p.name,
            "bundle": p.bundle,
            "model": p.build.model,
            "part": p.build.part.name(),
            "ops": p.build.ops,
            "weight_bytes": p.build.weight_bytes,
            "weights_sha256": p.build.weights_sha256,
            "bundle_sha256": p.bundle_sha256,
            "loras": p.build.loras.iter().map(|l| serde_json::json!({
                "file": l.path, "weight": l.weight, "modules": l.modules,
            })).collect::<Vec<_>>(),
            "seconds": p.build.timings.iter().map(|(_, d)| d.as_secs_f64()).sum::<f64>()
                + p.compile_time.as_secs_f64(),
        });
        if let Some(c) = &p.fp16_check {
            let mut check = crate::pipeline::vae_check::to_json(c);
            check["seconds"] = c.time.as_secs_f64().into();
            j["fp16_activations"] = check;
        }
        j }).collect::<Vec<_>>(),
    })
}
