//! Running statistics of every value of a graph over the calibration samples: one evaluation per
//! sample, each activation summarised as it is computed and then dropped, so memory is the
//! evaluator's own plus a fixed amount per value (the histogram and per-channel sums).

use super::histogram::Histogram;
use super::{Calibration, CalibrationError};
use crate::ir::{eval, Graph, ValueId};
use crate::kernels::Array;
use crate::parallel::parallel_map_on;
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
    /// Nothing seen yet, for a value of `channels` channels.
    pub fn new(channels: usize) -> ValueStats {
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
        let nonfinite_before = self.nonfinite;
        if outer * channels * inner == 0 || a.data.len() != outer * channels * inner {
            return Ok(());
        }
        for (k, m) in all_moments(&a.data, inner).into_iter().enumerate() {
            {
                let c = k % channels;
                self.nonfinite += m.nonfinite;
                let n = inner as u64 - m.nonfinite;
                if n > 0 {
                    self.min = self.min.min(m.min);
                    self.max = self.max.max(m.max);
                    abs_max = abs_max.max(m.min.abs()).max(m.max.abs());
                }
                self.count += n;
                self.channel_count[c] += n;
                self.channel_sum[c] += m.sum;
                self.channel_sum_sq[c] += m.sum_sq;
            }
        }
        self.abs_max = self.abs_max.max(abs_max);
        let finite = self.nonfinite == nonfinite_before;
        self.histogram.add(&a.data, abs_max, finite);
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

/// The moments of each `inner`-long slice of `data`, across the cores for a large activation
/// (the evaluator waits meanwhile, so the cores are free).
pub(super) fn all_moments(data: &[f32], inner: usize) -> Vec<Moments> {
    let slices: Vec<&[f32]> = data.chunks(inner).collect();
    let threads = crate::kernels::num_threads()
        .min(data.len() / crate::kernels::PAR_MIN_ELEMS)
        .min(slices.len())
        .max(1);
    if threads == 1 {
        return slices.iter().map(|x| Moments::of(x)).collect();
    }
    // One group of consecutive slices per thread: slices can be tiny, groups never are.
    let groups: Vec<&[&[f32]]> = slices.chunks(slices.len().div_ceil(threads)).collect();
    let moments = |group: &&[&[f32]]| group.iter().map(|x| Moments::of(x)).collect::<Vec<_>>();
    parallel_map_on(threads, &groups, |g| g.len(), moments)
        .into_iter()
        .flatten()
        .collect()
}

/// Min, max, sum and sum of squares of the finite values of a slice.
pub(super) struct Moments {
    min: f32,
    max: f32,
    pub(super) sum: f64,
    pub(super) sum_sq: f64,
    pub(super) nonfinite: u64,
}

impl Moments {
    /// Eight independent lanes, so the loop vectorises; a non-finite value makes the sum
    /// non-finite, and only then is the slice gone through again value by value.
    fn of(data: &[f32]) -> Moments {
        const L: usize = 8;
        let (mut mn, mut mx) = ([f32::INFINITY; L], [f32::NEG_INFINITY; L]);
        let (mut s, mut q) = ([0f64; L], [0f64; L]);
        let mut chunks = data.chunks_exact(L);
        for ch in &mut chunks {
            for k in 0..L {
                let x = ch[k];
                mn[k] = if x < mn[k] { x } else { mn[k] };
                mx[k] = if x > mx[k] { x } else { mx[k] };
                let v = x as f64;
                s[k] += v;
                q[k] += v * v;
            }
        }
        let mut m = Moments {
            min: mn.iter().copied().fold(f32::INFINITY, f32::min),
            max: mx.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            sum: s.iter().sum(),
            sum_sq: q.iter().sum(),
            nonfinite: 0,
        };
        for &x in chunks.remainder() {
            m.min = m.min.min(x);
            m.max = m.max.max(x);
            m.sum += x as f64;
            m.sum_sq += x as f64 * x as f64;
        }
        if m.sum.is_finite() && m.sum_sq.is_finite() {
            return m;
        }
        let mut m = Moments {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            sum: 0.0,
            sum_sq: 0.0,
            nonfinite: 0,
        };
        for &x in data {
            if !x.is_finite() {
                m.nonfinite += 1;
                continue;
            }
            m.min = m.min.min(x);
            m.max = m.max.max(x);
            m.sum += x as f64;
            m.sum_sq += x as f64 * x as f64;
        }
        m
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
    collect_values(g, cal, progress, None)
}

/// [`collect`] for the values in `only` (all when None): the statistics of values nobody reads
/// are not worth their time.
pub fn collect_values(
    g: &Graph,
    cal: &Calibration,
    progress: bool,
    only: Option<&std::collections::BTreeSet<ValueId>>,
) -> Result<Stats, CalibrationError> {
    let mut stats = Stats::new(cal);
    evaluate_samples(g, cal, progress, "calibrating", &mut |_, id, a| {
        stats.observe(g, id, a, only)
    })?;
    stats.samples = cal.len();
    Ok(stats)
}

impl Stats {
    /// Nothing seen yet of `cal`.
    pub fn new(cal: &Calibration) -> Stats {
        Stats {
            samples: 0,
            calibration_sha256: cal.hash(),
            values: BTreeMap::new(),
        }
    }

    /// Folds in value `id` of `g` (if in `only`, when given).
    pub fn observe(
        &mut self,
        g: &Graph,
        id: ValueId,
        a: &Array,
        only: Option<&std::collections::BTreeSet<ValueId>>,
    ) -> Result<(), String> {
        if only.is_some_and(|o| !o.contains(&id)) {
            return Ok(());
        }
        self.values
            .entry(id)
            .or_insert_with(|| ValueStats::new(layout(&a.shape).1))
            .observe(a)
            .map_err(|e| format!("{}: {e}", g.node(id).name))
    }
}

/// Evaluates `g` once per calibration sample with the IR evaluator, showing `observe` every
/// value as it is computed (sample index, value, array); the first error it returns ends the
/// run, naming the sample. With `progress`, `label` and a sample count on stderr.
pub fn evaluate_samples(
    g: &Graph,
    cal: &Calibration,
    progress: bool,
    label: &str,
    observe: &mut dyn FnMut(usize, ValueId, &Array) -> Result<(), String>,
) -> Result<(), CalibrationError> {
    let n = cal.len();
    for i in 0..n {
        if progress {
            eprint!("\r{label}: sample {}/{n}", i + 1);
            let _ = std::io::stderr().flush();
        }
        let mut failed: Option<String> = None;
        let mut each = |id: ValueId, a: &Array| {
            if failed.is_none() {
                failed = observe(i, id, a).err();
            }
        };
        eval::evaluate_observed(g, &cal.sample(i), &mut each).map_err(|e| {
            CalibrationError::Eval {
                sample: cal.source(i).to_string(),
                reason: e.to_string(),
            }
        })?;
        if let Some(reason) = failed {
            return Err(CalibrationError::Eval {
                sample: cal.source(i).to_string(),
                reason,
            });
        }
    }
    if progress && n > 0 {
        eprintln!();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_counted_apart() {
        let mut s = ValueStats::new(2);
        let data = vec![
            1.0,
            2.0,
            f32::NAN,
            f32::INFINITY,
            -3.0,
            0.0,
            0.5,
            4.0,
            0.0,
            0.0,
            9.0,
        ];
        // Two channels of 5 and 6 values do not fit one shape: use [1, 1, 11] for one channel.
        assert!(s
            .observe(&Array::new(vec![1, 1, 11], data.clone()))
            .is_err());
        let mut s = ValueStats::new(1);
        s.observe(&Array::new(vec![1, 1, 11], data)).unwrap();
        assert_eq!((s.count, s.nonfinite), (9, 2));
        assert_eq!((s.min, s.max, s.abs_max), (-3.0, 9.0, 9.0));
        assert_eq!(s.channel_sum, [13.5]);
        assert_eq!(s.channel_sum_sq, [1.0 + 4.0 + 9.0 + 0.25 + 16.0 + 81.0]);
        assert_eq!(s.histogram.total(), 9);
        assert_eq!(s.histogram.zeros(), 3);
    }

    /// Large enough to be split across threads: the same numbers as one plain pass.
    #[test]
    fn threaded_statistics_equal_a_plain_pass() {
        let (c, hw) = (4, 256 * 256);
        let data: Vec<f32> = (0..c * hw)
            .map(|i| ((i * 7919) % 2001) as f32 - 1000.0)
            .collect();
        let mut s = ValueStats::new(c);
        s.observe(&Array::new(vec![1, c, 256, 256], data.clone()))
            .unwrap();
        for ch in 0..c {
            let part = &data[ch * hw..(ch + 1) * hw];
            // Integers below 2^53 in total: every order of summation is exact.
            assert_eq!(
                s.channel_sum[ch],
                part.iter().map(|&x| x as f64).sum::<f64>()
            );
            assert_eq!(
                s.channel_sum_sq[ch],
                part.iter().map(|&x| x as f64 * x as f64).sum::<f64>()
            );
        }
        assert_eq!((s.min, s.max, s.abs_max), (-1000.0, 1000.0, 1000.0));
        let mut plain = Histogram::default();
        plain.add(&data, 1000.0, false);
        assert_eq!(s.histogram, plain);
    }

    #[test]
    fn the_vectorised_moments_equal_a_plain_loop() {
        let data: Vec<f32> = (0..1003).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let m = Moments::of(&data);
        assert_eq!(m.min, -50.0);
        assert_eq!(m.max, 50.0);
        let sum: f64 = data.iter().map(|&x| x as f64).sum();
        let sq: f64 = data.iter().map(|&x| x as f64 * x as f64).sum();
        // Integers: every order of summation is exact.
        assert_eq!((m.sum, m.sum_sq, m.nonfinite), (sum, sq, 0));
    }
}
