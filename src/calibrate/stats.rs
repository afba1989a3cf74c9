//! Running statistics of every value of a graph over the calibration samples: one evaluation per
//! sample, each activation summarised as it is computed and then dropped, so memory is the
//! evaluator's own plus a fixed amount per value (the histogram and per-channel sums).

use super::histogram::Histogram;
use super::{Calibration, CalibrationError};
use crate::ir::{eval, Graph, ValueId};
use crate::kernels::Array;
use std::collections::BTreeMap;
use std::io::Write;

/// What the calibration saw of one value.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueStats {
    /// Finite elements seen.
    pub count: u64,
    /// NaNs and infinities seen (left out of everything else).
    pub nonfinite: u64,
    pub min: f32,
    pub max: f32,
    pub abs_max: f32,
    /// Per channel (axis 1; one channel for rank < 2): element count, sum and sum of squares,
    /// in f64 so that millions of f32 terms add without drift.
    pub channel_count: Vec<u64>,
    pub channel_sum: Vec<f64>,
    pub channel_sum_sq: Vec<f64>,
    pub histogram: Histogram,
}

impl ValueStats {
    fn new(channels: usize) -> ValueStats {
        ValueStats {
            count: 0,
            nonfinite: 0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            abs_max: 0.0,
            channel_count: vec![0; channels],
            channel_sum: vec![0.0; channels],
            channel_sum_sq: vec![0.0; channels],
            histogram: Histogram::default(),
        }
    }

    /// Folds in one activation. A channel count other than the first seen is an error (the
    /// same graph computes the same channels for every sample).
    pub fn observe(&mut self, a: &Array) -> Result<(), String> {
        let (outer, channels, inner) = layout(&a.shape);
        if channels != self.channel_sum.len() {
            return Err(format!(
                "shape {:?} has {channels} channels, earlier samples had {}",
                a.shape,
                self.channel_sum.len()
            ));
        }
        let mut abs_max = 0f32;
        for o in 0..outer {
            for c in 0..channels {
                let chunk = &a.data[(o * channels + c) * inner..][..inner];
                let (mut n, mut sum, mut sq) = (0u64, 0f64, 0f64);
                for &x in chunk {
                    if !x.is_finite() {
                        self.nonfinite += 1;
                        continue;
                    }
                    n += 1;
                    let v = x as f64;
                    sum += v;
                    sq += v * v;
                    self.min = self.min.min(x);
                    self.max = self.max.max(x);
                    abs_max = abs_max.max(x.abs());
                }
                self.count += n;
                self.channel_count[c] += n;
                self.channel_sum[c] += sum;
                self.channel_sum_sq[c] += sq;
            }
        }
        self.abs_max = self.abs_max.max(abs_max);
        self.histogram.add(&a.data, abs_max);
        Ok(())
    }

    /// Per-channel mean (0 for a channel with no finite value).
    pub fn channel_mean(&self) -> Vec<f64> {
        ratio(&self.channel_sum, &self.channel_count)
    }

    /// Per-channel mean of x², the weight each input channel carries in a layer's output error.
    pub fn channel_second_moment(&self) -> Vec<f64> {
        ratio(&self.channel_sum_sq, &self.channel_count)
    }

    /// The symmetric clipping magnitude for `bits`-bit signed quantization that minimises the
    /// expected squared quantization error (rounding + clipping) over the histogram; never more
    /// than the largest magnitude seen. See [`Histogram::clip_range`].
    pub fn clip_range(&self, bits: u32) -> f32 {
        self.histogram.clip_range(bits).min(self.abs_max)
    }
}

fn ratio(num: &[f64], den: &[u64]) -> Vec<f64> {
    num.iter()
        .zip(den)
        .map(|(s, &n)| if n == 0 { 0.0 } else { s / n as f64 })
        .collect()
}

/// (elements before axis 1, channels, elements after it) of a row-major shape.
fn layout(shape: &[usize]) -> (usize, usize, usize) {
    match shape {
        [] => (1, 1, 1),
        [n] => (1, 1, *n),
        [n, c, rest @ ..] => (*n, *c, rest.iter().product()),
    }
}

/// Statistics of every value a graph computes (not its constants), by value id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub values: BTreeMap<ValueId, ValueStats>,
    /// Samples evaluated.
    pub samples: usize,
    /// The calibration set's hash ([`Calibration::hash`]), for the package metadata.
    pub calibration_sha256: String,
}

/// Evaluates `g` once per calibration sample with the IR evaluator, folding every value into
/// its statistics as it is computed. With `progress`, a line on stderr counts the samples.
pub fn collect(g: &Graph, cal: &Calibration, progress: bool) -> Result<Stats, CalibrationError> {
    let mut stats = Stats {
        samples: 0,
        calibration_sha256: cal.hash(),
        values: BTreeMap::new(),
    };
    let n = cal.len();
    for i in 0..n {
        if progress {
            eprint!("\rcalibrating: sample {}/{n}", i + 1);
            let _ = std::io::stderr().flush();
        }
        let inputs = cal.sample(i);
        let mut failed: Option<String> = None;
        let mut observe = |id: ValueId, a: &Array| {
            if failed.is_some() {
                return;
            }
            let s = stats
                .values
                .entry(id)
                .or_insert_with(|| ValueStats::new(layout(&a.shape).1));
            if let Err(e) = s.observe(a) {
                failed = Some(format!("{}: {e}", g.node(id).name));
            }
        };
        eval::evaluate_observed(g, &inputs, &mut observe).map_err(|e| CalibrationError::Eval {
            sample: cal.source(i).to_string(),
            reason: e.to_string(),
        })?;
        if let Some(reason) = failed {
            return Err(CalibrationError::Eval {
                sample: cal.source(i).to_string(),
                reason,
            });
        }
        stats.samples += 1;
    }
    if progress && n > 0 {
        eprintln!();
    }
    Ok(stats)
}
