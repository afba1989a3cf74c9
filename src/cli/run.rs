//! `mlc run`: flags to the library's run (inputs read, package evaluated, outputs written), and
//! what it did printed.

use super::read_model;
use crate::run::inputs::{self, InputSource, OutputForm};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

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

/// `mlc run`: inputs from safetensors, a PNG or token ids; an image output to PNG, anything else
/// (an encoder's latent) to safetensors.
pub fn main(a: &RunArgs) -> Result<()> {
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
        .unwrap_or_else(|| crate::run::default_function(&pkg));
    // Where the output goes is decided before the (slow) evaluation.
    let form = inputs::output_form(&pkg, &function, &a.output)?;
    let source = match (&a.input, &a.tokens) {
        (Some(p), _) => InputSource::File(p),
        (None, Some(TokenList(ids))) => InputSource::Tokens(ids),
        (None, None) => bail!("give --input or --tokens"),
    };
    let inputs = inputs::read_inputs(&pkg, &function, source)?;
    let options = crate::mil::eval::EvalOptions {
        fp16_activations: a.fp16_activations,
        ..Default::default()
    };
    let (outputs, stats) = crate::run::run_with(&pkg, &function, &inputs, options)
        .with_context(|| format!("evaluating {}", a.package.display()))?;
    if a.fp16_activations {
        report_activations(&stats);
    }
    let written = inputs::write_outputs(&pkg, &function, &outputs, form, &a.output)?;
    let out = a.output.display();
    match (form, &written[..]) {
        (OutputForm::Png, [(name, shape)]) => {
            println!("wrote {out} (function {function}, output {name}, shape {shape:?})")
        }
        _ => {
            let listed: Vec<String> = written
                .iter()
                .map(|(n, shape)| format!("{n} {shape:?}"))
                .collect();
            println!(
                "wrote {out} (function {function}, f32 {})",
                listed.join(", ")
            );
        }
    }
    Ok(())
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
