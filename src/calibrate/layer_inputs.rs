//! What each layer's weights multiply on the calibration set: the statistics output-aware
//! weight compression minimises a layer's output error with.
//!
//! The layers are those whose weight is a constant they alone read ([`WeightedLayer`]): convs,
//! and matmuls by a constant (linear layers in the `standard` transformer layout). Such a layer
//! computes `y[o] = Σ_j W[o, j] · p[j] (+ b[o])` at every output position, where `p` is the
//! patch the position reads in the weight's column order: a conv's receptive field
//! (`j = (c, ky, kx)` row-major, as `[O, I, kh, kw]` stores it), a matmul's feature vector (one
//! token, `j` = input feature). Replacing `W` by `W + ΔW` moves every output by `ΔW[o] · p`,
//! whose mean square is `ΔW[o]ᵀ H ΔW[o]` with `H = E[p pᵀ]` (the patch Gram matrix) and whose
//! mean is `ΔW[o] · E[p]`. So per layer we keep:
//!
//! - per input channel (a matmul's feature), the mean and mean square over every element seen
//!   (exact, cheap): the diagonal of `H` up to a conv's border effects, which weights the
//!   k-means;
//! - `H` itself and `E[p]` over a deterministic sample of output positions, when the patch is
//!   short enough ([`MAX_GRAM_DIM`]) and the total stays within [`MAX_GRAM_BYTES`]: error feedback
//!   and palette refits need the correlations between columns, bias correction needs `E[p]`.
//!
//! Nothing is stored per position: each activation is summarised when the evaluator computes it.

use super::{Calibration, CalibrationError};
use crate::compress::output_aware::LayerData;
use crate::ir::weighted_layer::{Kind, WeightedLayer};
use crate::ir::{Conv2d, Graph, ValueId};
use crate::kernels::Array;
use std::collections::HashMap;
use std::sync::Arc;

/// Longest patch (input channels per group × kernel area) whose Gram matrix is kept: the
/// compression solves `d × d` systems per layer, O(d³).
pub const MAX_GRAM_DIM: usize = 2304;
/// Most bytes all Gram matrices together may take (f64); layers past it keep only the
/// per-channel moments.
pub const MAX_GRAM_BYTES: usize = 512 << 20;
/// Output positions sampled per sample and layer for the Gram matrix.
pub const POSITIONS_PER_SAMPLE: usize = 2048;

/// The calibration statistics of one layer's input, in its weight's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerInput {
    /// Per input channel of the layer (all groups; a matmul's features): mean and mean of x².
    pub channel_mean: Vec<f64>,
    pub channel_second_moment: Vec<f64>,
    /// Patch length `d` (input channels per group × kh × kw; a matmul's input features).
    pub dim: usize,
    /// kh × kw (1 for a matmul).
    pub kernel_area: usize,
    /// The conv's groups: output row `o` of `O` reads channels of group `o / (O / groups)`.
    pub groups: usize,
    /// `E[p pᵀ]`, row-major `d × d`, over the sampled positions (groups = 1 only); one copy for
    /// the layers that read the same patches of the same value (a transformer's q, k and v).
    pub gram: Option<Arc<[f64]>>,
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

/// Per layer weight (the constant's value id): what its layer saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerInputs {
    pub layers: HashMap<ValueId, LayerInput>,
    pub samples: usize,
}

/// One layer being measured.
struct Site {
    layer: WeightedLayer,
    /// The weight of the first site reading the same patches of the same value (this one's
    /// own if none): that site's sums are this one's too.
    owner: ValueId,
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

/// The layers of `g` with a constant weight read by them alone ([`WeightedLayer`]), by the
/// value they read.
fn sites(g: &Graph) -> HashMap<ValueId, Vec<Site>> {
    let mut by_input: HashMap<ValueId, Vec<Site>> = HashMap::new();
    let mut gram_bytes = 0usize;
    for (index, layer) in WeightedLayer::find(g.node_slice(), &g.use_counts())
        .into_iter()
        .enumerate()
    {
        let same = by_input.get(&layer.input).and_then(|list| {
            list.iter()
                .find(|s| s.layer.kind == layer.kind && s.layer.dim == layer.dim)
        });
        if let Some(first) = same {
            let (owner, gram, index) = (first.owner, first.gram, first.index);
            by_input.entry(layer.input).or_default().push(Site {
                layer,
                owner,
                gram,
                index,
            });
            continue;
        }
        let dim = layer.dim;
        let bytes = dim.saturating_mul(dim).saturating_mul(8);
        let gram = layer.groups() == 1
            && dim <= MAX_GRAM_DIM
            && gram_bytes.saturating_add(bytes) <= MAX_GRAM_BYTES;
        if gram {
            gram_bytes += bytes;
        }
        by_input.entry(layer.input).or_default().push(Site {
            owner: layer.weight,
            layer,
            gram,
            index: index as u64,
        });
    }
    by_input
}

/// Evaluates `g` on every calibration sample, summarising the input of each layer with a
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

    /// Folds in value `id` of sample `sample`, if a layer with a constant weight reads it.
    pub fn observe(&mut self, sample: usize, id: ValueId, a: &Array) -> Result<(), String> {
        let Some(list) = self.sites.get(&id) else {
            return Ok(());
        };
        let name = || self.g.node(id).name.clone();
        if a.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) != Some(a.data.len()) {
            return Err(format!(
                "{}: {} values for shape {:?}",
                name(),
                a.data.len(),
                a.shape
            ));
        }
        // The layers reading one value share its per-channel moments; work them out once per
        // way of reading it.
        let mut moments: HashMap<Patches, Vec<ChannelMoments>> = HashMap::new();
        for site in list.iter().filter(|s| s.owner == s.layer.weight) {
            let layout = Patches::of(&site.layer);
            let m = match moments.entry(layout) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    channel_moments(a, &site.layer).map_err(|r| format!("{}: {r}", name()))?,
                ),
            };
            let c = m.len();
            let dim = site.layer.dim;
            let e = self.acc.entry(site.layer.weight).or_insert_with(|| Acc {
                channel_count: vec![0; c],
                channel_sum: vec![0.0; c],
                channel_sum_sq: vec![0.0; c],
                gram: site.gram.then(|| vec![0.0; dim * dim]),
                patch_sum: site.gram.then(|| vec![0.0; dim]),
                positions: 0,
            });
            if e.channel_sum.len() != c {
                return Err(format!("{}: channel count changed", name()));
            }
            for (k, m) in m.iter().enumerate() {
                e.channel_count[k] += m.count;
                e.channel_sum[k] += m.sum;
                e.channel_sum_sq[k] += m.sum_sq;
            }
            if let (Some(gram), Some(psum)) = (&mut e.gram, &mut e.patch_sum) {
                let p = sample_patches(a, site, sample as u64);
                e.positions += accumulate(gram, psum, &p, dim) as u64;
            }
        }
        Ok(())
    }

    /// The statistics over `samples` samples.
    pub fn finish(self, samples: usize) -> LayerInputs {
        let div = |v: &[f64], n: &[u64]| -> Vec<f64> {
            v.iter()
                .zip(n.iter().cycle())
                .map(|(x, &n)| if n == 0 { 0.0 } else { x / n as f64 })
                .collect()
        };
        let owned: HashMap<ValueId, LayerInput> = self
            .acc
            .into_iter()
            .map(|(w, a)| {
                let layer = LayerInput {
                    channel_mean: div(&a.channel_sum, &a.channel_count),
                    channel_second_moment: div(&a.channel_sum_sq, &a.channel_count),
                    dim: 0,
                    kernel_area: 1,
                    groups: 1,
                    gram: a.gram.as_deref().map(|g| div(g, &[a.positions]).into()),
                    patch_mean: a.patch_sum.as_deref().map(|p| div(p, &[a.positions])),
                    positions: a.positions,
                };
                (w, layer)
            })
            .collect();
        // Every site from its owner's sums (the Gram matrix shared, not copied).
        let layers = self
            .sites
            .values()
            .flatten()
            .filter_map(|s| {
                let mut layer = owned.get(&s.owner)?.clone();
                layer.dim = s.layer.dim;
                layer.kernel_area = s.layer.kernel_area();
                layer.groups = s.layer.groups();
                Some((s.layer.weight, layer))
            })
            .collect();
        LayerInputs { layers, samples }
    }
}

/// How a layer reads patches from its input: the key under which layers reading the same
/// value share its channel moments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Patches {
    /// A conv's `[1, C, H, W]` channels.
    Channels,
    /// A matmul's features along the last axis (true) or the second-to-last.
    Features { last: bool },
}

impl Patches {
    fn of(layer: &WeightedLayer) -> Patches {
        match layer.kind {
            Kind::Conv { .. } => Patches::Channels,
            Kind::Linear { features_last, .. } => Patches::Features {
                last: features_last,
            },
        }
    }
}

/// Finite values, their sum and sum of squares, of one input channel of one sample.
struct ChannelMoments {
    count: u64,
    sum: f64,
    sum_sq: f64,
}

/// Per input channel of `layer` (a conv's channels, a matmul's features), the moments of `a`
/// (whose element count matches its shape). Non-finite values are left out, as the activation
/// statistics leave them out.
fn channel_moments(a: &Array, layer: &WeightedLayer) -> Result<Vec<ChannelMoments>, String> {
    let moments = |inner: usize, channels: usize| -> Vec<ChannelMoments> {
        let mut out: Vec<ChannelMoments> = (0..channels)
            .map(|_| ChannelMoments {
                count: 0,
                sum: 0.0,
                sum_sq: 0.0,
            })
            .collect();
        // On every core, one chunk of `inner` values per (outer, channel).
        for (k, m) in super::stats::all_moments(&a.data, inner).iter().enumerate() {
            let c = &mut out[k % channels];
            c.count += inner as u64 - m.nonfinite;
            c.sum += m.sum;
            c.sum_sq += m.sum_sq;
        }
        out
    };
    let rank = a.shape.len();
    match &layer.kind {
        Kind::Conv { .. } => {
            let &[1, c, h, w] = a.shape.as_slice() else {
                return Err(format!(
                    "conv input of shape {:?} (expected [1, C, H, W])",
                    a.shape
                ));
            };
            Ok(match c * h * w {
                0 => Vec::new(),
                _ => moments(h * w, c),
            })
        }
        Kind::Linear { features_last, .. } => {
            let axis = rank.checked_sub(if *features_last { 1 } else { 2 });
            if axis.map(|x| a.shape[x]) != Some(layer.dim) {
                return Err(format!(
                    "matmul input of shape {:?} (expected {} features on axis {})",
                    a.shape,
                    layer.dim,
                    if *features_last { -1 } else { -2 }
                ));
            }
            if a.data.is_empty() {
                return Ok(Vec::new());
            }
            if !features_last {
                return Ok(moments(a.shape[rank - 1], layer.dim));
            }
            let mut out: Vec<ChannelMoments> = (0..layer.dim)
                .map(|_| ChannelMoments {
                    count: 0,
                    sum: 0.0,
                    sum_sq: 0.0,
                })
                .collect();
            for row in a.data.chunks_exact(layer.dim) {
                for (c, &x) in out.iter_mut().zip(row) {
                    if x.is_finite() {
                        let x = f64::from(x);
                        c.count += 1;
                        c.sum += x;
                        c.sum_sq += x * x;
                    }
                }
            }
            Ok(out)
        }
    }
}

/// Up to [`POSITIONS_PER_SAMPLE`] of `total` positions: all of them, or a pseudo-random
/// sample drawn from the sample and layer index (deterministic; a regular stride would alias
/// with the image width).
fn sample_positions(total: usize, sample: u64, index: u64) -> Vec<usize> {
    if total <= POSITIONS_PER_SAMPLE {
        return (0..total).collect();
    }
    let mut rng = crate::rng::SplitMix64((sample << 32 | index) ^ 0x9e37_79b9_7f4a_7c15);
    let mut pick: Vec<usize> = (0..POSITIONS_PER_SAMPLE)
        .map(|_| rng.below(total))
        .collect();
    pick.sort_unstable();
    pick
}

/// The patches (rows of `d` values) of `site` at up to [`POSITIONS_PER_SAMPLE`] of its output
/// positions ([`sample_positions`]); `a` was checked by [`channel_moments`].
fn sample_patches(a: &Array, site: &Site, sample: u64) -> Vec<f32> {
    match &site.layer.kind {
        Kind::Conv { conv, kernel } => conv_patches(a, conv, *kernel, site.index, sample),
        Kind::Linear { features_last, .. } => {
            let d = site.layer.dim;
            let total = a.data.len() / d;
            let positions = sample_positions(total, sample, site.index);
            if *features_last {
                if positions.len() == total {
                    return a.data[..total * d].to_vec();
                }
                return positions
                    .iter()
                    .flat_map(|&p| &a.data[p * d..(p + 1) * d])
                    .copied()
                    .collect();
            }
            // [.., d, m]: position p is column p % m of matrix p / m.
            let m = a.shape[a.shape.len() - 1];
            let mut out = Vec::with_capacity(positions.len() * d);
            for &p in &positions {
                let (base, col) = ((p / m) * d * m, p % m);
                out.extend((0..d).map(|j| a.data[base + j * m + col]));
            }
            out
        }
    }
}

/// A conv's patches (zero outside the image) at up to [`POSITIONS_PER_SAMPLE`] output
/// positions of `a` ([1, C, H, W]).
fn conv_patches(a: &Array, conv: &Conv2d, kernel: [usize; 2], index: u64, sample: u64) -> Vec<f32> {
    let [_, c, h, w] = [a.shape[0], a.shape[1], a.shape[2], a.shape[3]];
    let [kh, kw] = kernel;
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
    let positions = sample_positions(ho * wo, sample, index);
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
    use crate::ir::{Op, TensorType};
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

    /// A linear layer as the `standard` layout writes it (`x · Wᵀ`, W `[4, 3]`) and the same
    /// layer with the weight stored `[in, out]` and the input transposed: both see the rows of
    /// `x` (two samples of 5 tokens) as patches, so the Gram matrix, patch mean and per-feature
    /// moments equal a direct computation over every token of both samples.
    #[test]
    fn matmul_gram_and_moments_equal_a_direct_computation() {
        let x0: Vec<f32> = (0..15).map(|i| ((i * 5) % 7) as f32 - 3.0).collect();
        let x1: Vec<f32> = (0..15).map(|i| ((i * 3) % 8) as f32 * 0.5).collect();
        let mut gram = vec![0f64; 9];
        let mut mean = vec![0f64; 3];
        let mut square = vec![0f64; 3];
        for row in x0.chunks(3).chain(x1.chunks(3)) {
            for a in 0..3 {
                mean[a] += f64::from(row[a]) / 10.0;
                square[a] += f64::from(row[a] * row[a]) / 10.0;
                for b in 0..3 {
                    gram[a * 3 + b] += f64::from(row[a] * row[b]) / 10.0;
                }
            }
        }
        for transposed in [false, true] {
            let mut g = Graph::new("t");
            let shape = if transposed { [1, 3, 5] } else { [1, 5, 3] };
            let x = g.input("x", TensorType::known(DType::F32, &shape));
            let wshape = if transposed { vec![3, 4] } else { vec![4, 3] };
            let w = g.constant("w", Tensor::f32(wshape, vec![0.1; 12]));
            let op = Op::MatMul {
                transpose_x: transposed,
                transpose_y: !transposed,
            };
            let y = g.add(op, &[x, w], "matmul").unwrap();
            g.set_output("y", y);
            let feed = |v: &[f32]| {
                let t = Tensor::f32(vec![5, 3], v.to_vec());
                let t = if transposed {
                    t.transposed().unwrap()
                } else {
                    t
                };
                Array::new(shape.to_vec(), t.to_f32())
            };
            let cal = Calibration::from_samples(
                BTreeMap::from([("x".to_string(), vec![feed(&x0), feed(&x1)])]),
                vec!["a".into(), "b".into()],
            )
            .unwrap();
            let stats = collect(&g, &cal, false).unwrap();
            let l = &stats.layers[&w];
            assert_eq!((l.dim, l.kernel_area, l.groups, l.positions), (3, 1, 1, 10));
            let close = |a: &[f64], b: &[f64]| {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-9)
            };
            assert!(
                close(l.gram.as_ref().unwrap(), &gram),
                "{transposed}: {:?}",
                l.gram
            );
            assert!(close(l.patch_mean.as_ref().unwrap(), &mean), "{transposed}");
            assert!(close(&l.channel_mean, &mean), "{transposed}");
            assert!(close(&l.channel_second_moment, &square), "{transposed}");
        }
    }

    /// Projections reading the same tokens (a transformer's q, k and v) share one Gram matrix,
    /// counted once against the budget; a layer reading the same value another way (a conv
    /// of its `[1, C, H, W]` view) keeps its own.
    #[test]
    fn layers_reading_the_same_patches_share_one_gram() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 4, 2, 3]));
        let mm = Op::MatMul {
            transpose_x: false,
            transpose_y: true,
        };
        let mut outs = Vec::new();
        for (i, rows) in [5, 6, 3].into_iter().enumerate() {
            let w = g.constant(
                format!("w{i}"),
                Tensor::f32(vec![rows, 3], vec![0.1; rows * 3]),
            );
            outs.push((w, g.add(mm.clone(), &[x, w], format!("p{i}")).unwrap()));
        }
        let wc = g.constant("wc", Tensor::f32(vec![2, 4, 1, 1], vec![0.1; 8]));
        let c = g
            .add(Op::Conv2d(Conv2d::same(1)), &[x, wc], "conv")
            .unwrap();
        g.set_output("c", c);
        for (i, (_, y)) in outs.iter().enumerate() {
            g.set_output(&format!("y{i}"), *y);
        }
        let data: Vec<f32> = (0..24).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
        let cal = Calibration::from_samples(
            BTreeMap::from([("x".to_string(), vec![Array::new(vec![1, 4, 2, 3], data)])]),
            vec!["s".into()],
        )
        .unwrap();
        let stats = collect(&g, &cal, false).unwrap();
        let gram = |w: ValueId| stats.layers[&w].gram.clone().unwrap();
        let first = gram(outs[0].0);
        assert_eq!(first.len(), 9);
        for (w, _) in &outs[1..] {
            assert!(Arc::ptr_eq(&first, &gram(*w)));
            assert_eq!(stats.layers[w].positions, 8);
        }
        let conv = gram(wc);
        assert_eq!((conv.len(), stats.layers[&wc].positions), (16, 6));
    }
}
