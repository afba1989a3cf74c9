//! Activation ranges of an emitted package on calibration inputs (`mlc inspect --ranges`): the
//! package's own MIL program is evaluated, fp16 storage of activations included, so what is
//! measured is what ships.

use super::{Calibration, CalibrationError, ImageFeed, SampleSpec};
use crate::build::{BuildOptions, Plan};
use crate::mil::eval::{ActivationStats, EvalOptions};
use crate::models::Role;
use crate::package::Package;
use crate::run::FeatureShape;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The inputs `function` of `pkg` takes, and, for a package mlc built (its `mlc.model`
/// metadata names the model), how photos feed it: directly for an encoder, through the model's
/// encoder for a decoder (weights from `encoder_weights`, else the published ones).
pub fn package_target(
    pkg: &Package,
    function: &str,
    encoder_weights: Option<&Path>,
) -> Result<SampleSpec, CalibrationError> {
    let bad = |r: String| CalibrationError::Model(format!("{}: {r}", pkg.path.display()));
    let mut inputs = Vec::new();
    for name in crate::run::input_names(pkg, function) {
        let shape = match crate::run::feature_shape(pkg, function, &name) {
            Some(FeatureShape::Array(s)) => s
                .iter()
                .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| bad(format!("input {name:?} has shape {s:?}")))?,
            Some(FeatureShape::Image) => {
                return Err(bad(format!(
                    "input {name:?} is a Core ML image; ranges are measured on array inputs \
                     (build with --input-type array)"
                )))
            }
            None => return Err(bad(format!("input {name:?} is not an array"))),
        };
        inputs.push((name, shape));
    }
    let build = mlc_build(pkg);
    let images = match build.as_ref().and_then(|o| Plan::resolve(o).ok()) {
        None => ImageFeed::Refused(
            "the package does not say which mlc model it is (no mlc.model metadata), so photos \
             cannot be turned into its inputs; give them as a safetensors file"
                .into(),
        ),
        Some(plan) => {
            let (model, part, iface) = (plan.model, plan.part, &plan.interface);
            let feed = match (iface.inputs.first(), inputs.first()) {
                (Some(f), Some((_, shape)))
                    if matches!(f.role, Role::Latent | Role::Image) && shape.len() == 4 =>
                {
                    let b = iface
                        .bindings(f.role, [shape[2], shape[3]])
                        .map_err(|e| bad(e.to_string()))?;
                    Some(SampleSpec::for_model(
                        model,
                        part,
                        iface,
                        &plan.opts.model_options,
                        &b,
                        None,
                        encoder_weights,
                    )?)
                }
                _ => None,
            };
            match feed {
                Some(t) => t.images,
                None => ImageFeed::Refused(format!(
                    "{} {part} takes no images; give its inputs as a safetensors file",
                    model.name()
                )),
            }
        }
    };
    Ok(SampleSpec {
        inputs,
        images,
        upscale: false,
    })
}

/// The build the package's metadata names (`mlc.model`, `mlc.part`), for its plan to resolve
/// the model, part and interface; the metadata records no other options, so they are the
/// defaults.
fn mlc_build(pkg: &Package) -> Option<BuildOptions> {
    let meta = pkg.model.description.as_ref()?.metadata.as_ref()?;
    let mut opts = BuildOptions::new(meta.user_defined.get("mlc.model")?, PathBuf::new());
    opts.part = meta.user_defined.get("mlc.part").cloned();
    // Photos never read the package's own weights; only a decoder's encoder is read.
    opts.weights = None;
    Some(opts)
}

/// Evaluates `function` of `pkg` on every calibration sample with fp16 activations rounded as
/// a device stores them, returning every op's range merged over the samples.
pub fn package_ranges(
    pkg: &Package,
    function: &str,
    cal: &Calibration,
    progress: bool,
) -> Result<ActivationStats, CalibrationError> {
    let options = EvalOptions {
        fp16_activations: true,
        ranges: true,
        ..Default::default()
    };
    let mut total = ActivationStats::default();
    for i in 0..cal.len() {
        if progress {
            eprint!("\rmeasuring ranges: sample {}/{}", i + 1, cal.len());
            let _ = std::io::stderr().flush();
        }
        let (_, stats) =
            crate::run::run_with(pkg, function, &cal.sample(i), options).map_err(|e| {
                CalibrationError::Eval {
                    sample: cal.source(i).to_string(),
                    reason: e.to_string(),
                }
            })?;
        total.merge(stats);
    }
    if progress && !cal.is_empty() {
        eprintln!();
    }
    Ok(total)
}
