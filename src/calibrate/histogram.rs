//! A bounded histogram of |x| and the clipping range it implies.
//!
//! The bins cover `[0, BINS * width)`. When a value beyond the range arrives the width doubles
//! (as often as needed) and pairs of bins merge, which is exact: no count is ever split between
//! bins, unlike re-binning by interpolation (PyTorch's `HistogramObserver`). Exact zeros (ReLU
//! outputs) are counted apart, since they quantize without error whatever the range.

use crate::parallel::parallel_map_on;

/// Bins per histogram: fine enough that a bin is far narrower than an int8 step (BINS / 127
/// bins per step at the full range), small enough that the search over ranges stays cheap.
pub const BINS: usize = 2048;

#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// Bin width; 0 until the first non-zero value.
    width: f64,
    counts: Vec<u64>,
    zeros: u64,
    /// Largest |x| seen (the top bin's values are taken to end here, not at its edge).
    abs_max: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            width: 0.0,
            counts: vec![0; BINS],
            zeros: 0,
            abs_max: 0.0,
        }
    }
}

impl Histogram {
    /// Adds the finite values of `data`; `abs_max` is their largest magnitude and `finite`
    /// says whether all of them are finite (the caller has both from its own pass).
    pub fn add(&mut self, data: &[f32], abs_max: f32, finite: bool) {
        let abs_max = abs_max as f64;
        if abs_max > 0.0 {
            if self.width == 0.0 {
                self.width = abs_max / BINS as f64;
            }
            while abs_max > self.width * BINS as f64 {
                self.double();
            }
            self.abs_max = self.abs_max.max(abs_max);
        }
        let inv = if self.width > 0.0 {
            1.0 / self.width
        } else {
            0.0
        };
        if finite && (inv as f32).is_finite() {
            // Branch-free: zeros land in bin 0 and are moved to their own count afterwards.
            let inv = inv as f32;
            let bin = |data: &[f32]| {
                let mut counts = vec![0u64; BINS];
                let mut zeros = 0u64;
                for &x in data {
                    counts[((x.abs() * inv) as usize).min(BINS - 1)] += 1;
                    zeros += u64::from(x == 0.0);
                }
                counts[0] -= zeros;
                (counts, zeros)
            };
            // Large activations are binned across the cores, each into its own counts.
            let threads = crate::kernels::num_threads()
                .min(data.len() / crate::kernels::PAR_MIN_ELEMS)
                .max(1);
            let parts: Vec<(Vec<u64>, u64)> = if threads == 1 {
                vec![bin(data)]
            } else {
                let parts: Vec<&[f32]> = data.chunks(data.len().div_ceil(threads)).collect();
                parallel_map_on(threads, &parts, |p| p.len(), |p| bin(p))
            };
            for (counts, zeros) in parts {
                for (total, n) in self.counts.iter_mut().zip(counts) {
                    *total += n;
                }
                self.zeros += zeros;
            }
            return;
        }
        for &x in data {
            if x == 0.0 {
                self.zeros += 1;
            } else if x.is_finite() {
                let i = ((x.abs() as f64 * inv) as usize).min(BINS - 1);
                self.counts[i] += 1;
            }
        }
    }

    /// Twice the width: bin `i` takes the counts of old bins `2i` and `2i + 1`.
    fn double(&mut self) {
        for i in 0..BINS / 2 {
            self.counts[i] = self.counts[2 * i] + self.counts[2 * i + 1];
        }
        self.counts[BINS / 2..].fill(0);
        self.width *= 2.0;
    }

    pub fn width(&self) -> f64 {
        self.width
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    pub fn zeros(&self) -> u64 {
        self.zeros
    }

    pub fn total(&self) -> u64 {
        self.zeros + self.counts.iter().sum::<u64>()
    }

    /// The symmetric clipping magnitude `c` for `bits`-bit signed quantization (levels
    /// `-q..=q` of step `c / q`, `q = 2^(bits-1) - 1`) that minimises the expected squared
    /// error, rounding plus clipping, with the values of each bin spread uniformly over it.
    ///
    /// The error of one bin is integrated in closed form, so the search is over the range only:
    /// candidates are the bin edges (and the largest value), tried at a stride of 1/128 of the
    /// occupied range and then one by one around the best. 0 when every value is 0.
    pub fn clip_range(&self, bits: u32) -> f32 {
        let q = ((1u64 << (bits.clamp(2, 24) - 1)) - 1) as f64;
        if self.width == 0.0 || self.abs_max == 0.0 {
            return 0.0;
        }
        // (lower edge, upper edge, count) of the occupied bins; the top one ends at abs_max.
        let bins: Vec<(f64, f64, f64)> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| {
                let a = i as f64 * self.width;
                let b = ((i + 1) as f64 * self.width).min(self.abs_max).max(a);
                (a, b, n as f64)
            })
            .collect();
        let top = (self.abs_max / self.width).ceil().max(1.0) as usize;
        let candidate = |j: usize| {
            if j >= top {
                self.abs_max
            } else {
                j as f64 * self.width
            }
        };
        let stride = (top / 128).max(1);
        let mut best = (f64::INFINITY, top);
        let mut j = stride;
        loop {
            let e = expected_error(&bins, candidate(j), q);
            if e < best.0 {
                best = (e, j);
            }
            if j >= top {
                break;
            }
            j = (j + stride).min(top);
        }
        let (lo, hi) = (
            best.1.saturating_sub(stride).max(1),
            (best.1 + stride).min(top),
        );
        for j in lo..=hi {
            let e = expected_error(&bins, candidate(j), q);
            if e < best.0 {
                best = (e, j);
            }
        }
        candidate(best.1) as f32
    }
}

/// Total squared error of quantizing the bins' values with clipping magnitude `c` and `q`
/// levels each side of zero (values uniform within each bin).
pub fn expected_error(bins: &[(f64, f64, f64)], c: f64, q: f64) -> f64 {
    let s = c / q;
    let mut total = 0.0;
    for &(a, b, n) in bins {
        let len = b - a;
        if len <= 0.0 {
            // All of the bin's values sit at one point.
            let e = if a > c {
                (a - c).powi(2)
            } else {
                let r = a - s * (a / s).round();
                r * r
            };
            total += n * e;
            continue;
        }
        // Inside the range: the rounding error's integral; beyond it: the clipping error's.
        let inside = saw_integral(b.min(c), s) - saw_integral(a.min(c), s);
        let lo = a.max(c) - c;
        let hi = b.max(c) - c;
        let outside = (hi.powi(3) - lo.powi(3)) / 3.0;
        total += n * (inside + outside) / len;
    }
    total
}

/// `∫_0^x (t - s·round(t/s))² dt`: whole steps contribute `s³/12` each; the rest rises as
/// `r³/3` up to half a step, then approaches the step's total as `(s - r)³/3` shrinks.
fn saw_integral(x: f64, s: f64) -> f64 {
    let k = (x / s).floor();
    let r = x - k * s;
    let part = if r <= s / 2.0 {
        r.powi(3) / 3.0
    } else {
        s.powi(3) / 12.0 - (s - r).powi(3) / 3.0
    };
    k * s.powi(3) / 12.0 + part
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_merges_counts_exactly() {
        let mut h = Histogram::default();
        h.add(&[1.0, -0.5, 0.0, 0.25], 1.0, true);
        assert_eq!(h.total(), 4);
        assert_eq!(h.zeros(), 1);
        let w = h.width();
        h.add(&[3.0, f32::NAN], 3.0, false);
        assert_eq!(h.width(), 4.0 * w);
        assert_eq!(h.total(), 5);
        // 0.25 and 0.5 now share the bins of width 4w = 2/2048.
        let at = |x: f64| h.counts()[((x / h.width()) as usize).min(BINS - 1)];
        assert_eq!(at(0.25), 1);
        assert_eq!(at(0.5), 1);
        // The first range's largest value sat in its top bin, which stays below 1.0.
        assert_eq!(at(0.999), 1);
        assert_eq!(at(3.0), 1);
    }

    #[test]
    fn saw_integral_matches_numeric_integration() {
        let s = 0.3;
        for x in [0.0, 0.1, 0.15, 0.2, 0.3, 0.71, 2.0] {
            let n = 200_000;
            let dt = x / n as f64;
            let numeric: f64 = (0..n)
                .map(|i| {
                    let t = (i as f64 + 0.5) * dt;
                    (t - s * (t / s).round()).powi(2) * dt
                })
                .sum();
            assert!((saw_integral(x, s) - numeric).abs() < 1e-9, "x = {x}");
        }
    }

    #[test]
    fn all_zeros_clip_at_zero() {
        let mut h = Histogram::default();
        h.add(&[0.0; 10], 0.0, true);
        assert_eq!(h.clip_range(8), 0.0);
    }
}
