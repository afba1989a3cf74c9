//! What each conv's weights multiply on the calibration set: the statistics output-aware
//! weight compression minimises a layer's output error with.
//!
//! A conv computes `y[o] = Σ_j W[o, j] · p[j] + b[o]` at every output position, where `p` is the
//! input patch in the weight's column order (`j = (c, ky, kx)` row-major, as `[O, I, kh, kw]`
//! stores it). Replacing `W` by `W + ΔW` moves every output by `ΔW[o] · p`, whose mean square is
//! `ΔW[o]ᵀ H ΔW[o]` with `H = E[p pᵀ]` (the patch Gram matrix) and whose mean is `ΔW[o] · E[p]`.
//! So per conv we keep:
//!
//! - per input channel, the mean and mean square over every element seen (exact, cheap): the
//!   diagonal of `H` up to border effects, which weights the k-means;
//! - `H` itself and `E[p]` over a deterministic sample of output positions, when the patch is
//!   short enough ([`MAX_GRAM_DIM`]) and the total stays within [`MAX_GRAM_BYTES`]: error feedback
//!   and palette refits need the correlations between columns, bias correction needs `E[p]`.
//!
//! Nothing is stored per position: each activation is summarised when the evaluator computes it.

use super::{Calibration, CalibrationError};
use crate::compress::output_aware::LayerData;
use crate::ir::{ConstData, Conv2d, Graph, Op, ValueId};
use crate::kernels::Array;
use std::collections::HashMap;

/// Longest patch (input channels per group × kernel area) whose Gram matrix is kept: the
/// compression solves `d × d` systems per layer, O(d³).
pub const MAX_GRAM_DIM: usize = 2304;
/// Most bytes all Gram matrices together may take (f64); layers past it keep only the
/// per-channel moments.
pub const MAX_GRAM_BYTES: usize = 512 << 20;
/// Output positions sampled per sample and layer for the Gram matrix.
pub const POSITIONS_PER_SAMPLE: usize = 2048;

/// The calibration statistics of one conv's input, in its weight's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerInput {
    /// Per input channel of the conv (all groups): mean and mean of x².
    pub channel_mean: Vec<f64>,
    pub channel_second_moment: Vec<f64>,
    /// Patch length `d` (input channels per group × kh × kw).
    pub dim: usize,
    /// kh × kw.
    pub kernel_area: usize,
    /// The conv's groups: output row `o` of `O` reads channels of group `o / (O / groups)`.
    pub groups: usize,
    /// `E[p pᵀ]`, row-major `d × d`, over the sampled positions (groups = 1 only).
    pub gram: Option<Vec<f64>>,
    /// `E[p]` over the same positions.
    pub patch_mean: Option<Vec<f64>>,
    /// Patches in `gram`.
    pub positions: u64,
}

impl LayerInput {
    /// Per column of a row of group `group`, the mean square and the mean of the input it
    /// multiplies: from the sampled patches when kept, else from its channel's moments (which
    /// leave out the zero padding at the borders).
    fn columns(&self, group: usize) -> (Vec<f64>, Vec<f64>) {
        if let (Some(h), Some(m)) = (&self.gram, &self.patch_mean) {
            return (
                (0..self.dim).map(|j| h[j * self.dim + j]).collect(),
                m.clone(),
            );
        }
        let area = self.kernel_area.max(1);
        let per_group = self.dim / area;
        let channel = |j: usize| group * per_group + j / area;
        let at = |v: &[f64], j: usize| v.get(channel(j)).copied().unwrap_or(0.0);
        (
            (0..self.dim)
                .map(|j| at(&self.channel_second_moment, j))
                .collect(),
            (0..self.dim).map(|j| at(&self.channel_mean, j)).collect(),
        )
    }

    /// The statistics in the terms [`crate::compress::output_aware`] works in.
    pub fn data(&self) -> LayerData<'_> {
        let (column_weights, column_means) =
            (0..self.groups.max(1)).map(|g| self.columns(g)).unzip();
        LayerData {
            column_weights,
            column_means,
            gram: self.gram.as_deref(),
        }
    }
}

/// Per conv weight (the constant's value id): what its conv saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerInputs {
    pub layers: HashMap<ValueId, LayerInput>,
    pub samples: usize,
}

/// One conv whose weight is a constant used by nothing else.
struct Site {
    weight: ValueId,
    conv: Conv2d,
    /// `[O, I/groups, kh, kw]`.
    wshape: [usize; 4],
    /// Keeps a Gram matrix.
    gram: bool,
    /// Its index in the sampling order (a different pseudo-random sample per layer).
    index: u64,
}

/// Running sums of one site.
struct Acc {
    channel_count: Vec<u64>,
    channel_sum: Vec<f64>,
    channel_sum_sq: Vec<f64>,
    gram: Option<Vec<f64>>,
    patch_sum: Option<Vec<f64>>,
    positions: u64,
}

/// The convs of `g` whose weight is a constant read by that conv alone, by the value they read.
fn sites(g: &Graph) -> HashMap<ValueId, Vec<Site>> {
    let uses = g.use_counts();
    let mut by_input: HashMap<ValueId, Vec<Site>> = HashMap::new();
    let mut gram_bytes = 0usize;
    let mut index = 0;
    for (_, n) in g.nodes() {
        let Op::Conv2d(conv) = &n.op else { continue };
        let (Some(&x), Some(&w)) = (n.inputs.first(), n.inputs.get(1)) else {
            continue;
        };
        let wn = g.node(w);
        if !matches!(wn.op, Op::Const(ConstData::Dense(_) | ConstData::Half(_)))
            || uses[w.index()] != 1
        {
            continue;
        }
        let Some(&[o, i, kh, kw]) = wn.ty.known_shape().as_deref() else {
            continue;
        };
        let dim = i * kh * kw;
        let bytes = dim * dim * 8;
        let gram = conv.groups == 1 && dim <= MAX_GRAM_DIM && gram_bytes + bytes <= MAX_GRAM_BYTES;
        if gram {
            gram_bytes += bytes;
        }
        by_input.entry(x).or_default().push(Site {
            weight: w,
            conv: conv.clone(),
            wshape: [o, i, kh, kw],
            gram,
            index,
        });
        index += 1;
    }
    by_input
}

/// Evaluates `g` on every calibration sample, summarising the input of each conv with a
/// constant weight. With `progress`, a line on stderr counts the samples.
pub fn collect(
    g: &Graph,
    cal: &Calibration,
    progress: bool,
) -> Result<LayerInputs, CalibrationError> {
    let mut c = Collector::new(g);
    super::stats::evaluate_samples(g, cal, progress, "calibrating weights", &mut |s, id, a| {
        c.observe(s, id, a)
    })?;
    Ok(c.finish(cal.len()))
}

/// The running sums of [`collect`], for a caller that evaluates the samples itself (and
/// gathers other statistics in the same evaluation).
pub struct Collector<'g> {
    g: &'g Graph,
    sites: HashMap<ValueId, Vec<Site>>,
    acc: HashMap<ValueId, Acc>,
}

impl<'g> Collector<'g> {
    pub fn new(g: &'g Graph) -> Collector<'g> {
        Collector {
            g,
            sites: sites(g),
            acc: HashMap::new(),
        }
    }

    /// Folds in value `id` of sample `sample`, if a conv reads it.
    pub fn observe(&mut self, sample: usize, id: ValueId, a: &Array) -> Result<(), String> {
        let Some(list) = self.sites.get(&id) else {
            return Ok(());
        };
        let name = || self.g.node(id).name.clone();
        let &[1, c, h, w] = a.shape.as_slice() else {
            return Err(format!(
                "{}: conv input of shape {:?} (expected [1, C, H, W])",
                name(),
                a.shape
            ));
        };
        // Per channel (the batch is 1): sum and sum of squares, on every core.
        let moments = super::stats::all_moments(&a.data, h * w);
        for site in list {
            let e = self.acc.entry(site.weight).or_insert_with(|| Acc {
                channel_count: vec![0; c],
                channel_sum: vec![0.0; c],
                channel_sum_sq: vec![0.0; c],
                gram: site.gram.then(|| vec![0.0; site.dim() * site.dim()]),
                patch_sum: site.gram.then(|| vec![0.0; site.dim()]),
                positions: 0,
            });
            if e.channel_sum.len() != c {
                return Err(format!("{}: channel count changed", name()));
            }
            for (k, m) in moments.iter().enumerate() {
                // Non-finite values are left out, as the activation statistics leave them out.
                e.channel_count[k] += (h * w) as u64 - m.nonfinite;
                e.channel_sum[k] += m.sum;
                e.channel_sum_sq[k] += m.sum_sq;
            }
            if let (Some(gram), Some(psum)) = (&mut e.gram, &mut e.patch_sum) {
                let p = sample_patches(a, site, sample as u64);
                e.positions += accumulate(gram, psum, &p, site.dim()) as u64;
            }
        }
        Ok(())
    }

    /// The statistics over `samples` samples.
    pub fn finish(self, samples: usize) -> LayerInputs {
        let sites = self.sites;
        let layers = self
            .acc
            .into_iter()
            .map(|(w, a)| {
                let div = |v: &[f64], n: u64| -> Vec<f64> {
                    v.iter()
                        .map(|x| if n == 0 { 0.0 } else { x / n as f64 })
                        .collect()
                };
                let per_channel = |v: &[f64]| -> Vec<f64> {
                    v.iter()
                        .zip(&a.channel_count)
                        .map(|(s, &n)| if n == 0 { 0.0 } else { s / n as f64 })
                        .collect()
                };
                let site = sites.values().flatten().find(|s| s.weight == w);
                let layer = LayerInput {
                    channel_mean: per_channel(&a.channel_sum),
                    channel_second_moment: per_channel(&a.channel_sum_sq),
                    dim: site.map_or(0, Site::dim),
                    kernel_area: site.map_or(1, |s| s.wshape[2] * s.wshape[3]),
                    groups: site.map_or(1, |s| s.conv.groups),
                    gram: a.gram.as_deref().map(|g| div(g, a.positions)),
                    patch_mean: a.patch_sum.as_deref().map(|p| div(p, a.positions)),
                    positions: a.positions,
                };
                (w, layer)
            })
            .collect();
        LayerInputs { layers, samples }
    }
}

impl Site {
    fn dim(&self) -> usize {
        self.wshape[1] * self.wshape[2] * self.wshape[3]
    }
}

/// Patches (rows of `d` values, zero outside the image) at up to [`POSITIONS_PER_SAMPLE`]
/// output positions, chosen pseudo-randomly from the sample and layer index (deterministic; a
/// regular stride would alias with the image width).
fn sample_patches(a: &Array, site: &Site, sample: u64) -> Vec<f32> {
    let [_, c, h, w] = [a.shape[0], a.shape[1], a.shape[2], a.shape[3]];
    let [_, _, kh, kw] = site.wshape;
    let conv = &site.conv;
    let span = |size: usize, pad0: usize, pad1: usize, k: usize, dil: usize, stride: usize| {
        let full = size + pad0 + pad1;
        let reach = dil * (k - 1) + 1;
        if full < reach {
            0
        } else {
            (full - reach) / stride + 1
        }
    };
    let ho = span(
        h,
        conv.pads[0],
        conv.pads[1],
        kh,
        conv.dilations[0],
        conv.strides[0],
    );
    let wo = span(
        w,
        conv.pads[2],
        conv.pads[3],
        kw,
        conv.dilations[1],
        conv.strides[1],
    );
    let total = ho * wo;
    let positions: Vec<usize> = if total <= POSITIONS_PER_SAMPLE {
        (0..total).collect()
    } else {
        let mut state = (sample << 32 | site.index) ^ 0x9e37_79b9_7f4a_7c15;
        let mut pick: Vec<usize> = (0..POSITIONS_PER_SAMPLE)
            .map(|_| {
                // splitmix64: cheap, deterministic, no aliasing with the image width.
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                ((z ^ (z >> 31)) % total as u64) as usize
            })
            .collect();
        pick.sort_unstable();
        pick
    };
    let d = c * kh * kw;
    let mut out = vec![0f32; positions.len() * d];
    for (r, &pos) in positions.iter().enumerate() {
        let (oy, ox) = (pos / wo, pos % wo);
        let row = &mut out[r * d..(r + 1) * d];
        for ch in 0..c {
            let plane = &a.data[ch * h * w..(ch + 1) * h * w];
            for ky in 0..kh {
                let y = (oy * conv.strides[0] + ky * conv.dilations[0]) as isize
                    - conv.pads[0] as isize;
                if y < 0 || y >= h as isize {
                    continue;
                }
                for kx in 0..kw {
                    let x = (ox * conv.strides[1] + kx * conv.dilations[1]) as isize
                        - conv.pads[2] as isize;
                    if x < 0 || x >= w as isize {
                        continue;
                    }
                    row[(ch * kh + ky) * kw + kx] = plane[y as usize * w + x as usize];
                }
            }
        }
    }
    out
}

/// Adds `Pᵀ P` and the column sums of the patch rows `p` (`n × d`) to `gram` and `psum`;
/// returns `n`.
fn accumulate(gram: &mut [f64], psum: &mut [f64], p: &[f32], d: usize) -> usize {
    let n = p.len() / d;
    if n == 0 {
        return 0;
    }
    let mut g = vec![0f32; d * d];
    // Pᵀ P: (d × n) · (n × d), P row-major n × d read transposed through its strides.
    unsafe {
        matrixmultiply::sgemm(
            d,
            n,
            d,
            1.0,
            p.as_ptr(),
            1,
            d as isize,
            p.as_ptr(),
            d as isize,
            1,
            0.0,
            g.as_mut_ptr(),
            d as isize,
            1,
        );
    }
    for (acc, v) in gram.iter_mut().zip(&g) {
        *acc += f64::from(*v);
    }
    for row in p.chunks_exact(d) {
        for (s, v) in psum.iter_mut().zip(row) {
            *s += f64::from(*v);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::TensorType;
    use crate::tensor::{DType, Tensor};
    use std::collections::BTreeMap;

    /// A 3x3 conv (padding 1) on a 2-channel 4x4 input small enough that every position is
    /// sampled: the Gram matrix and patch mean equal a direct computation over all patches,
    /// and the channel moments equal the input's.
    #[test]
    fn gram_and_moments_equal_a_direct_computation() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 2, 4, 4]));
        let w = g.constant("w", Tensor::f32(vec![3, 2, 3, 3], vec![0.1; 54]));
        let y = g.add(Op::Conv2d(Conv2d::same(3)), &[x, w], "conv").unwrap();
        g.set_output("y", y);
        let data: Vec<f32> = (0..32).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let input = Array::new(vec![1, 2, 4, 4], data.clone());
        let cal = Calibration::from_samples(
            BTreeMap::from([("x".to_string(), vec![input])]),
            vec!["s".into()],
        )
        .unwrap();
        let stats = collect(&g, &cal, false).unwrap();
        let l = &stats.layers[&w];
        assert_eq!((l.dim, l.positions), (18, 16));
        let at = |c: usize, y: isize, x: isize| {
            if (0..4).contains(&y) && (0..4).contains(&x) {
                data[c * 16 + y as usize * 4 + x as usize]
            } else {
                0.0
            }
        };
        let mut gram = vec![0f64; 18 * 18];
        let mut mean = vec![0f64; 18];
        for oy in 0..4isize {
            for ox in 0..4isize {
                let p: Vec<f32> = (0..18)
                    .map(|j| {
                        at(
                            j / 9,
                            oy + (j % 9 / 3) as isize - 1,
                            ox + (j % 3) as isize - 1,
                        )
                    })
                    .collect();
                for a in 0..18 {
                    mean[a] += f64::from(p[a]) / 16.0;
                    for b in 0..18 {
                        gram[a * 18 + b] += f64::from(p[a] * p[b]) / 16.0;
                    }
                }
            }
        }
        let got = l.gram.as_ref().unwrap();
        for (a, b) in got.iter().zip(&gram) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(l.patch_mean.as_ref().unwrap(), &mean);
        for c in 0..2 {
            let ch = &data[c * 16..(c + 1) * 16];
            let m: f64 = ch.iter().map(|&v| f64::from(v)).sum::<f64>() / 16.0;
            let q: f64 = ch.iter().map(|&v| f64::from(v * v)).sum::<f64>() / 16.0;
            assert_eq!((l.channel_mean[c], l.channel_second_moment[c]), (m, q));
        }
        // The Gram diagonal weights each weight column; the patch mean recentres the bias.
        let data = l.data();
        assert_eq!(data.column_weights[0][4], gram[4 * 18 + 4]);
        assert_eq!(data.column_means[0], mean);
    }
}
