//! `mlc inspect`: a package described, checked against the Neural Engine, drawn, or evaluated
//! for its activation ranges.

use super::{read_model, CalibrationArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

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
    /// With --ranges: the function to evaluate [default: the package's default].
    #[arg(long, requires = "ranges")]
    pub function: Option<String>,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
}

pub fn main(a: &InspectArgs) -> Result<()> {
    if a.calibration.calibration.is_some() && !a.ranges {
        bail!("--calibration: inspect measures ranges on it; add --ranges");
    }
    let pkg = read_model(&a.package)?;
    if a.ranges {
        print!("{}", ranges(&pkg, a)?);
    } else if a.ane {
        print!("{}", crate::ane::report(&pkg.model));
    } else if a.dot {
        print!("{}", crate::inspect::dot(&pkg.model));
    } else {
        print!("{}", crate::inspect::describe(&pkg)?);
    }
    Ok(())
}

/// `mlc inspect --ranges`: the package on its calibration inputs, op by op.
fn ranges(pkg: &crate::package::Package, a: &InspectArgs) -> Result<String> {
    use crate::calibrate::{ranges, Calibration};
    use std::io::IsTerminal;
    let c = &a.calibration;
    let path = c
        .calibration
        .as_ref()
        .context("--ranges needs --calibration")?;
    let function = a
        .function
        .clone()
        .unwrap_or_else(|| crate::run::default_function(pkg));
    let mut target = ranges::package_target(pkg, &function, c.encoder_weights.as_deref())?;
    target.upscale = c.upscale;
    let cal = Calibration::load(path, &target)?;
    let stats = ranges::package_ranges(pkg, &function, &cal, std::io::stderr().is_terminal())?;
    Ok(crate::inspect::ranges(&stats, cal.len(), &cal.hash()))
}
