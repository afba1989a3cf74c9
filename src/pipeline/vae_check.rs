//! The fp16 check of a VAE part built in fp16: before the part is built, the same build at a
//! small size is evaluated in memory by mlc's MIL evaluator with every fp16 activation rounded
//! as a device stores it ([`EvalOptions::fp16_activations`], what `mlc run --fp16-activations`
//! reports), on a deterministic probe input. A part whose activations overflow fp16, or come
//! within [`MARGIN`] of it, is refused: on a device its image would be NaN or black (SDXL's VAE
//! is the known case). Which parts get the check, with which probe, is
//! [`super::parts::PartSpec::fp16_check`]: both VAE parts when the user asks for fp16
//! (`--vae-precision fp16`), the decoder alone when fp16 is the family's default (SD 1.x/2.x,
//! whose VAEs Apple ships in fp16): its activations are the large ones, and the check then
//! costs the default build well under a second.

use super::write::PipelineError;
use crate::build::{BuildOptions, Precision, Sizes};
use crate::kernels::Array;
use crate::mil::eval::{EvalOptions, FP16_MAX};
use crate::package::Package;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The probe's latent side (its image is 8x, 32x32): small enough that the full-size VAE's
/// decoder builds and evaluates in under a second, large enough that the deepest level's
/// GroupNorms see 16 positions per channel (256 values per group at 512 channels).
pub const PROBE_LATENT: usize = 4;

/// A part is refused when an fp16 activation on the probe passes fp16's largest value divided by
/// this. The probe is one random latent at a small size: a denoised latent has heavier local
/// extremes than a Gaussian, and the mid-block attention sees more positions at full size, so a
/// peak within 2x of 65,504 on the probe leaves no room for real images. (Real SD 1.x/2.x VAEs,
/// which ship in fp16, peak well below half the range; SDXL's, which does not, passes it.)
pub const MARGIN: f32 = 2.0;

/// Which parts are checked ([`super::parts::PartSpec::fp16_check`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Check {
    pub probe: Probe,
    /// Also when fp16 is the family's default, not only when the user asks for it.
    pub by_default: bool,
}

/// What a part is fed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Probe {
    /// A decoder: N(0, 1) values divided by the family's scaling factor, the VAE's own latent
    /// scale (the Swift code divides the denoised latent by it before decoding).
    Latent { scaling: f32 },
    /// An encoder: an image of values uniform in [-1, 1], noisier than a photo.
    Image,
}

/// A part that passed: its largest fp16 activation on the probe, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp16Check {
    pub largest: f32,
    /// The op (its output's name in the program) that produced it.
    pub at: String,
    /// The probe's input shape.
    pub probe: Vec<usize>,
    pub time: Duration,
}

impl Fp16Check {
    /// `largest` as a fraction of fp16's largest value.
    pub fn fraction(&self) -> f32 {
        self.largest / FP16_MAX
    }
}

/// Checks the part `build` describes if it is built in fp16 and `check` asks for it (None
/// otherwise). `asked` says whether the user chose fp16 (`--vae-precision fp16`); `part` names
/// the part in the error.
pub fn check(
    part: &'static str,
    check: Option<Check>,
    build: &BuildOptions,
    asked: bool,
) -> Result<Option<Fp16Check>, PipelineError> {
    let Some(Check { probe, .. }) =
        check.filter(|c| build.precision == Precision::Fp16 && (asked || c.by_default))
    else {
        return Ok(None);
    };
    let t = Instant::now();
    let mut small = build.clone();
    let side = PROBE_LATENT * 8;
    small.sizes = Sizes::Image(vec![[side, side]]);
    small.output = None;
    small.progress = Default::default();
    let fail = |reason: String| PipelineError::Option(format!("{part}: fp16 check: {reason}"));
    // The ordinary build's program (same passes, same fp16 casts), lowered in memory.
    let compiled =
        crate::build::build_program(&small, |_, _| {}).map_err(|e| PipelineError::Build {
            part,
            source: Box::new(e),
        })?;
    let pkg = Package {
        path: format!("{part} (fp16 check)").into(),
        model: compiled.lowered.model,
        weights: compiled.lowered.weight_bin,
    };
    let function = crate::run::default_function(&pkg);
    let mut inputs = BTreeMap::new();
    for f in crate::run::features(&pkg, &function).0 {
        let shape = match crate::run::feature_shape(&pkg, &function, &f.name) {
            Some(crate::run::FeatureShape::Array(s)) => s
                .iter()
                .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
                .collect::<Option<Vec<usize>>>(),
            _ => None,
        }
        .ok_or_else(|| fail(format!("input {:?} is not a fixed-shape array", f.name)))?;
        inputs.insert(f.name.clone(), probe_input(probe, shape));
    }
    let options = EvalOptions {
        fp16_activations: true,
        ranges: true,
        ..Default::default()
    };
    let (_, stats) = crate::run::run_with(&pkg, &function, &inputs, options)
        .map_err(|e| fail(format!("evaluating: {e}")))?;
    let limit = FP16_MAX / MARGIN;
    // The first op in program order past the limit: where the trouble starts (everything after
    // an overflow is infinite or NaN).
    if let Some(r) = stats
        .ops
        .iter()
        .find(|r| r.fp16 && (r.overflows_fp16() || r.abs_max > limit))
    {
        let magnitude = match r.abs_max > limit {
            true => r.abs_max,
            false => f32::INFINITY,
        };
        let why = match r.overflows_fp16() {
            true => format!("past fp16's largest value {FP16_MAX} (infinite on a device)"),
            false => format!(
                "within {MARGIN}x of fp16's largest value {FP16_MAX} (real inputs go further)"
            ),
        };
        let (flag, advice) = match asked {
            true => (
                "--vae-precision fp16",
                "drop --vae-precision fp16 (the VAE is then built in fp32)",
            ),
            false => (
                "fp16 (the default)",
                "build the VAE in fp32 with --vae-precision fp32",
            ),
        };
        return Err(PipelineError::Fp16Activations {
            part,
            flag,
            op: r.op.clone(),
            magnitude,
            probe: match probe {
                Probe::Latent { .. } => "latent",
                Probe::Image => "image",
            },
            reason: format!("{why}; {advice}"),
        });
    }
    let probe_shape = inputs.values().next().map(|a| a.shape.clone());
    Ok(Some(Fp16Check {
        largest: stats.largest,
        at: stats.largest_at,
        probe: probe_shape.unwrap_or_default(),
        time: t.elapsed(),
    }))
}

/// What `mlc.json` and `--json` record of a part that passed.
pub fn to_json(c: &Fp16Check) -> serde_json::Value {
    serde_json::json!({
        "largest": c.largest,
        "at": c.at,
        "fraction_of_fp16_max": c.fraction(),
        "probe_shape": c.probe,
        "refused_above": FP16_MAX / MARGIN,
    })
}

/// The deterministic probe of `shape`.
fn probe_input(probe: Probe, shape: Vec<usize>) -> Array {
    let n = shape.iter().product();
    let mut rng = crate::rng::SplitMix64(0x5eed_f16c);
    let data = match probe {
        Probe::Latent { scaling } => (0..n).map(|_| rng.normal() / scaling).collect(),
        Probe::Image => (0..n).map(|_| 2.0 * rng.uniform() - 1.0).collect(),
    };
    Array { shape, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_deterministic_and_scaled() {
        let shape = vec![1, 4, 16, 16];
        let a = probe_input(Probe::Latent { scaling: 0.13025 }, shape.clone());
        let b = probe_input(Probe::Latent { scaling: 0.13025 }, shape.clone());
        assert_eq!(a, b);
        // N(0, 1) / 0.13025: standard deviation about 7.7.
        let n = a.data.len() as f32;
        let mean = a.data.iter().sum::<f32>() / n;
        let sd = (a.data.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
        assert!(mean.abs() < 1.0 && (sd - 7.68).abs() < 0.6, "{mean} {sd}");
        let img = probe_input(Probe::Image, shape);
        assert!(img.data.iter().all(|x| (-1.0..1.0).contains(x)));
        assert!(img.data.iter().any(|&x| x < -0.9) && img.data.iter().any(|&x| x > 0.9));
    }
}
