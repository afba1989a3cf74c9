//! Writing a build: the package opened first so the lowering streams its weights into it, the
//! passes dumped if asked, and the package finished atomically.

use super::driver::{build_program_to, lower_programmed, program_file, Compiled, Functions};
use super::error::{option_error, BuildError, BuildOption};
use super::options::BuildOptions;
use super::plan::Plan;
use super::report::{count_ops, BuildReport};
use crate::package::{self, BlobWriter};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    build_plan(&Plan::new(opts)?)
}

/// [`build`] for options already resolved and checked.
pub fn build_plan(plan: &Plan) -> Result<BuildReport, BuildError> {
    let opts = plan.opts;
    let out = plan.output_path();
    // Opened first, so the lowering writes weight.bin straight into the package; dropped on an
    // error, it removes what it made.
    let writer = package::PackageWriter::begin(&out)?;
    let blobs = BlobWriter::to_file(&writer.weights_path())?;
    let mut dumper = match &opts.dump_passes {
        Some(dir) => Some(
            crate::dump::Dumper::new(dir, opts.target, plan.lowering())
                .map_err(BuildError::Dump)?,
        ),
        None => None,
    };
    let compiled = build_program_to(plan, blobs, |pass, g| {
        if let Some(d) = dumper.as_mut() {
            d.dump(pass, g);
        }
    })?;
    if let Some(d) = dumper {
        d.finish().map_err(BuildError::Dump)?;
    }
    finish(plan, writer, out, compiled)
}

/// The package written: the report of a compiled program.
fn finish(
    plan: &Plan,
    writer: package::PackageWriter,
    out: PathBuf,
    compiled: Compiled,
) -> Result<BuildReport, BuildError> {
    let opts = plan.opts;
    let Compiled {
        model,
        part,
        lowered,
        largest_intermediate,
        weights_sha256,
        mut timings,
        kept_float,
        fp32_ops,
        loras,
    } = compiled;
    opts.progress.begin(crate::progress::Stage::Package);
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
        fp32_ops,
        loras,
    })
}

/// [`build`] as two packages, `outputs[0]` then `outputs[1]`, cut where each holds about half
/// the weights ([`crate::ir::split`]): every value crossing the cut is an output of the first
/// and an input of the second, the model's outputs are the second's. For devices that cannot
/// map one large model (Apple's `UnetChunk1`/`UnetChunk2`). One function, one size.
pub fn build_chunks(
    opts: &BuildOptions,
    outputs: [&Path; 2],
) -> Result<[BuildReport; 2], BuildError> {
    let plan = Plan::new(opts)?;
    if opts.multifunction || plan.sizes.len() > 1 || !opts.adapters.is_empty() {
        return option_error(
            BuildOption::Sizes,
            "a model in two chunks has one function at one size",
        );
    }
    let (p, loras) = program_file(&plan, |_, _| {})?;
    let Functions::One(g) = p.functions else {
        return option_error(BuildOption::Sizes, "a model in two chunks has one function");
    };
    let split = |source| crate::passes::PassError {
        pass: "split",
        source,
    };
    let cut = crate::ir::split::best_cut(&g).map_err(split)?;
    let halves = crate::ir::split::split_at_owned(g, cut).map_err(split)?;
    let mut reports = Vec::with_capacity(2);
    for (i, (half, out)) in halves.into_iter().zip(outputs).enumerate() {
        let mut info = p.info.clone();
        info.user_defined
            .insert("mlc.chunk".into(), format!("{} of 2", i + 1));
        let writer = package::PackageWriter::begin(out)?;
        let blobs = BlobWriter::to_file(&writer.weights_path())?;
        let part = super::driver::Programmed {
            functions: Functions::One(half),
            info,
            largest_intermediate: p.largest_intermediate.clone(),
            digest: p.digest.clone(),
            timings: p.timings.clone(),
            kept_float: p.kept_float.clone(),
            fp32_ops: p.fp32_ops,
        };
        let mut compiled = lower_programmed(&plan, part, blobs)?;
        compiled.loras = loras.clone();
        reports.push(finish(&plan, writer, out.to_path_buf(), compiled)?);
    }
    let [a, b]: [BuildReport; 2] = reports.try_into().map_err(|_| BuildError::Option {
        option: BuildOption::Sizes,
        reason: "two chunks expected".into(),
    })?;
    Ok([a, b])
}
