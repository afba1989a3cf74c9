//! Output-aware compression of one layer's weights: the palette or the int8 codes that move the
//! layer's *output* on the calibration inputs least, rather than the weights themselves.
//!
//! The layer is seen as `rows × d` weights (a conv's `[O, I, kh, kw]` as `O × (I·kh·kw)`, a
//! linear layer's `[out, in]` as is; [`crate::ir::weighted_layer`]) and what the calibration
//! measured of the inputs they multiply ([`LayerData`]). Three steps, each kept only where it
//! lowers the measured output error:
//!
//! 1. the k-means table, optionally weighted by each column's input energy (its mean square), so
//!    that the table spends its entries where errors reach the output (off by default: on
//!    held-out photos unlike the calibration set it loses more than it gains elsewhere);
//! 2. with the patch Gram matrix: rounding with error feedback ([`super::feedback`]) and a
//!    least-squares refit of the table for those assignments ([`super::refit`]), alternated;
//! 3. bias correction ([`bias_shift`]): the mean output shift the compression leaves is folded
//!    into the layer's bias by the caller.

use super::feedback::{output_error, round_with_feedback, Feedback};
use super::kmeans::{kmeans_1d, kmeans_1d_weighted, nearest, Palette};
use super::quantize::{scale_cells, QuantData, Quantized};
use super::refit::refit_lut;
use half::f16;

/// Which steps run. Every step is kept only where it lowers the measured output error; turning
/// one off measures what it buys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steps {
    /// k-means weighted by each column's input energy (else plain k-means on the weights).
    pub weighted_kmeans: bool,
    /// Error-feedback rounding through the Gram matrix (palettes and int8 codes).
    pub feedback: bool,
    /// Least-squares table refits, each followed by a feedback assignment.
    pub refits: usize,
    /// Bias correction.
    pub bias_correction: bool,
}

impl Steps {
    /// What wins on held-out photos (README, "Output-aware weight compression"): plain k-means
    /// tables, refitted; weighting the k-means by the calibration photos' channel energies
    /// gains 0.1 dB on images like them and loses up to 2.8 dB on one unlike them.
    pub const DEFAULT: Steps = Steps {
        weighted_kmeans: false,
        feedback: true,
        refits: 2,
        bias_correction: true,
    };
}

/// What the calibration saw of a layer's inputs, per column of its weight rows.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerData<'a> {
    /// Per conv group: the mean square of the input each of the `d` columns multiplies.
    pub column_weights: Vec<Vec<f64>>,
    /// Per conv group: the mean input of each column.
    pub column_means: Vec<Vec<f64>>,
    /// `E[p pᵀ]` (`d × d`) of a single-group layer, when measured.
    pub gram: Option<&'a [f64]>,
}

impl LayerData<'_> {
    /// The conv group of row `o` of `rows`.
    fn group(&self, o: usize, rows: usize) -> usize {
        let groups = self.column_weights.len().max(1);
        o / (rows / groups).max(1)
    }

    /// Per-element weights of rows `lo..hi`.
    pub fn element_weights(&self, lo: usize, hi: usize, rows: usize) -> Vec<f64> {
        (lo..hi)
            .flat_map(|o| self.column_weights[self.group(o, rows)].iter().copied())
            .collect()
    }
}

/// One table per `group_rows` consecutive rows of the `rows × d` weights `w` (`k` entries,
/// stored in fp16 when `f16_lut`), fitted to the layer's output.
#[allow(clippy::too_many_arguments)]
pub fn palettize(
    w: &[f32],
    rows: usize,
    d: usize,
    group_rows: usize,
    k: usize,
    f16_lut: bool,
    data: &LayerData,
    steps: Steps,
) -> Vec<Palette> {
    let per = group_rows * d;
    (0..rows / group_rows)
        .map(|g| {
            let values = &w[g * per..(g + 1) * per];
            let mut p = if steps.weighted_kmeans {
                let weights: Vec<f32> = data
                    .element_weights(g * group_rows, (g + 1) * group_rows, rows)
                    .iter()
                    // Non-finite statistics (a NaN activation) carry no information: weight 0.
                    .map(|&x| {
                        if x.is_finite() && x > 0.0 {
                            (x as f32).min(f32::MAX)
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let p = kmeans_1d_weighted(values, &weights, k);
                if f16_lut {
                    p.with_f16_lut_weighted(values, &weights)
                } else {
                    p
                }
            } else {
                kmeans_1d(values, k)
            };
            if f16_lut && !steps.weighted_kmeans {
                p = p.with_f16_lut(values);
            }
            match data.gram.filter(|_| steps.feedback) {
                Some(h) => refine(values, d, h, p, f16_lut, steps.refits),
                None => p,
            }
        })
        .collect()
}

/// Alternates feedback assignment and least-squares refits from the k-means palette `p`; the
/// result never has a larger output error than `p`.
fn refine(
    values: &[f32],
    d: usize,
    h: &[f64],
    p: Palette,
    f16_lut: bool,
    refits: usize,
) -> Palette {
    let Some(feedback) = Feedback::new(h, d) else {
        return p;
    };
    let error_of = |p: &Palette| output_error(values, &p.dequantize(), d, h);
    let mut best_error = error_of(&p);
    let mut best = p;
    let mut lut = best.lut.clone();
    for round in 0..=refits {
        let indices = assign(values, &feedback, &lut);
        let candidate = palette(values, lut.clone(), indices);
        let e = error_of(&candidate);
        if e < best_error {
            (best, best_error) = (candidate.clone(), e);
        }
        if round == refits {
            break;
        }
        lut = refit_lut(values, &candidate.indices, d, h, &lut);
        if f16_lut {
            lut.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32());
        }
        lut.sort_by(f32::total_cmp);
    }
    best
}

/// Feedback assignment of `values` to the sorted table `lut`.
fn assign(values: &[f32], feedback: &Feedback, lut: &[f32]) -> Vec<u16> {
    let codes = feedback.round(values, |_, _, v| {
        let i = nearest(lut, v);
        (i as u32, f64::from(lut[i]))
    });
    codes.into_iter().map(|c| c as u16).collect()
}

fn palette(values: &[f32], lut: Vec<f32>, indices: Vec<u16>) -> Palette {
    let sse = values
        .iter()
        .zip(&indices)
        .map(|(&v, &i)| (f64::from(v) - f64::from(lut[usize::from(i)])).powi(2))
        .sum();
    Palette { lut, indices, sse }
}

/// The codes of `q` (a data-free quantization of the `rows × d` weights `w`, whose scales and
/// zero points are kept) re-rounded with error feedback through `gram`; `q` itself if that
/// does not lower the output error.
pub fn requantize(w: &[f32], rows: usize, d: usize, gram: &[f64], q: Quantized) -> Quantized {
    // The scale entry of every element, in row-major order.
    let cells: Vec<usize> = scale_cells(&q.shape, &q.block_sizes()).collect();
    let cell = |r: usize, c: usize| cells[r * d + c];
    let codes = match &q.data {
        QuantData::Symmetric(_) => round_with_feedback(w, rows, d, gram, |r, c, v| {
            let s = f64::from(q.scale[cell(r, c)]);
            let code = (v / s).round_ties_even().clamp(-127.0, 127.0);
            ((code as i32) as u32, code * s)
        }),
        QuantData::Affine { zero_point, .. } => round_with_feedback(w, rows, d, gram, |r, c, v| {
            let k = cell(r, c);
            let (s, z) = (f64::from(q.scale[k]), f64::from(zero_point[k]));
            let code = ((v / s).round_ties_even() + z).clamp(0.0, 255.0);
            (code as u32, (code - z) * s)
        }),
    };
    let Some(codes) = codes else { return q };
    let data = match &q.data {
        QuantData::Symmetric(_) => {
            QuantData::Symmetric(codes.iter().map(|&c| c as i32 as i8).collect())
        }
        QuantData::Affine { zero_point, .. } => QuantData::Affine {
            data: codes.iter().map(|&c| c as u8).collect(),
            zero_point: zero_point.clone(),
        },
    };
    let fed = Quantized { data, ..q.clone() };
    if output_error(w, &fed.dequantize(), d, gram) < output_error(w, &q.dequantize(), d, gram) {
        fed
    } else {
        q
    }
}

/// Per row of the `rows × d` weights: minus the mean output shift of replacing `w` by `q`,
/// `−Σ_j (q − w)[o][j] · E[p_j]`, which added to the bias recentres the layer's output.
pub fn bias_shift(w: &[f32], q: &[f32], rows: usize, d: usize, data: &LayerData) -> Vec<f64> {
    (0..rows)
        .map(|o| {
            let mean = &data.column_means[data.group(o, rows)];
            let (wr, qr) = (&w[o * d..(o + 1) * d], &q[o * d..(o + 1) * d]);
            -wr.iter()
                .zip(qr)
                .zip(mean)
                .map(|((&a, &b), m)| (f64::from(b) - f64::from(a)) * m)
                .sum::<f64>()
        })
        .collect()
}
