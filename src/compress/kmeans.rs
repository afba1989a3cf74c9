//! Exact, deterministic 1-D k-means for palettization, in memory linear in the tensor size.
//!
//! # Problem
//!
//! Given the values of a tensor, find at most `k` centroids minimising the total squared error
//! when every value is replaced by a centroid. In one dimension every optimal clustering is a
//! partition of the *sorted* values into contiguous runs, each represented by its mean. Equal
//! values always share a cluster, so the dynamic programme runs over the `n` sorted **unique**
//! values weighted by their counts (fp16-exact weights have far fewer unique values than
//! elements):
//!
//! `D[m][j] = min_{i<j} D[m-1][i] + cost(i, j)`, where `D[m][j]` is the least error of splitting
//! the first `j` unique values into `m` clusters and `cost(i, j)` is the weighted squared error of
//! unique values `i..j` around their weighted mean. Prefix sums of `w`, `w·x` and `w·x²` (in
//! f64) make `cost` O(1). The cost is Monge (it satisfies the quadrangle inequality), so the
//! optimal split `opt[m][j]` is non-decreasing in `j` and in `m` (Knuth/Yao).
//!
//! The data-aware variant ([`kmeans_1d_weighted`]) minimises `sum_e h_e (x_e - c(e))²` with a
//! real weight `h_e >= 0` per element (for palettization, the second moment of the input channel
//! the weight multiplies). All of the above still holds with each unique value weighted by the
//! sum of its elements' `h_e` instead of their count, so the same solver is exact there too; the
//! weight type is a parameter of the solver (module `weight`). Unique values of (near) zero
//! total weight are raised to a tiny floor (`WEIGHT_FLOOR`), which keeps every cluster's mean
//! defined.
//!
//! # Time
//!
//! First a Lagrangian search (module `lagrange`): with a penalty per cluster instead of a
//! cluster count the DP has one layer, solved in O(n log n) (candidate deque, binary search for
//! the crossovers), and a few penalties (about 3 for k = 16, 8 for k = 256 on the TAEF2
//! weights) find one whose optimum has exactly `k` clusters, which is then an optimal
//! `k`-clustering. At a breakpoint of the error curve (several cluster counts tie for the
//! penalty; common for equally spaced values, never seen on real weights) it gives up and the
//! constrained DP below runs instead.
//!
//! Each layer `m` is a row-minima problem over a totally monotone matrix. Two solvers, chosen per
//! layer by an estimate of their work:
//!
//! * divide and conquer over `j` (each row's search window is bounded by the optima of already
//!   solved rows on both sides and, from below, by `opt[m-1][j]`): O(n log n) per layer;
//! * Knuth's bound `opt[m-1][j] <= opt[m][j] <= opt[m][j+1]`, rows visited right to left: the
//!   window shrinks like `j / m²`; on the TAEF2 weights the layers past ~40 of an 8-bit palette
//!   cost 2–4 evaluations per cell, against 8–14 for divide and conquer.
//!
//! With counts, cluster weights are integers up to the element count, so `1 / w` comes from a
//! table of reciprocals (O(N) for N elements) and the hot loop has no division; with real
//! weights it divides (no table). Both are monomorphised instances of one generic solver, so the
//! count path compiles as if written for counts alone. Short scans select the minimum without
//! branches; long ones branch (well predicted there).
//!
//! # Memory: O(n), no `k × n` table
//!
//! The textbook solution keeps `opt[m][j]` for all `m, j` to walk the boundaries back: `k × n`
//! words (the reference tool's exact k-means needs O(k·n) memory and fails on large models).
//! Here a forward pass keeps only two DP rows. Besides `D` and `opt` every row carries, for at
//! most [`CHECKPOINTS`] chosen layers `t`, the position where the optimal path to `(m, j)`
//! crosses from cluster `t` to `t+1` (copied from the row it extends, so O(1) per cell). One
//! forward pass therefore yields up to `CHECKPOINTS` boundaries of the optimum; the segments
//! between them are independent subproblems with fewer clusters and fewer values, solved the same
//! way (a Hirschberg-style recursion on `k`, with fan-out `CHECKPOINTS + 1` instead of 2). When
//! a subproblem has at most `CHECKPOINTS + 1` clusters the single pass yields all its
//! boundaries. Total work is the top-level pass times `1 + 1/(C+1) + 1/(C+1)² + … < 1.15`.
//!
//! Live allocations at any time: the sort buffer, the reciprocal table (counts only) and the
//! output (O(N) for N elements), the unique values and prefix sums (O(n)), and the scratch rows (five words plus
//! two `[u32; CHECKPOINTS]` per unique value), all independent of `k`. Recursion depth is
//! `log_{C+1} k`, with one boundary list of at most `k` entries per level. Nothing anywhere is
//! indexed by both a layer and a position: the only per-layer state is the current and previous
//! row.
//!
//! # Determinism
//!
//! Sorting is a radix sort on the bit patterns, every search takes the leftmost minimum, the
//! floating-point operations are plain IEEE (no FMA contraction, no reassociation), and the
//! parallel batch functions only distribute whole, independent tensors: the output is a function
//! of the input bits alone.

use super::parallel::parallel_map;

use half::f16;

mod lagrange;
mod weight;

use weight::Weight;

/// Boundaries recorded per forward pass. More means less recursion (the recursion adds at most
/// `1/CHECKPOINTS` to the top-level pass) but a bigger copy per DP cell; at 7 the copy is one
/// 28-byte move and the recursion overhead is about 14%.
pub const CHECKPOINTS: usize = 7;

/// Minimum candidates scanned per row in Knuth layers (see [`Layer::knuth`]).
const KNUTH_SPAN: usize = 4;

/// A palettized tensor: `values[e] ≈ lut[indices[e]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Palette {
    /// Centroids, sorted ascending; as many as there are clusters (`<= k`).
    pub lut: Vec<f32>,
    /// LUT index of every input value, in input order.
    pub indices: Vec<u16>,
    /// Sum of squared differences between the input values and `lut[indices]`, each multiplied
    /// by its element's weight for the weighted functions (computed in f64 with the f32 LUT
    /// actually stored).
    pub sse: f64,
}

impl Palette {
    /// The values the palette represents (what `constexpr_lut_to_dense` reconstructs).
    pub fn dequantize(&self) -> Vec<f32> {
        self.indices
            .iter()
            .map(|&i| self.lut[usize::from(i)])
            .collect()
    }

    /// The same palette with every LUT entry rounded to fp16 (as Core ML stores LUTs of fp16
    /// models) and each value re-assigned to its nearest rounded entry, which can only lower the
    /// error with that LUT. `values` must be the tensor this palette was computed from.
    pub fn with_f16_lut(&self, values: &[f32]) -> Palette {
        self.rounded_lut(values, |_| 1.0)
    }

    /// [`Palette::with_f16_lut`] for a palette from [`kmeans_1d_weighted`]: nearest is still the
    /// right re-assignment (each element's term of the weighted error is independent), and
    /// `sse` stays the weighted error.
    ///
    /// # Panics
    /// If `values` or `weights` do not match the palette in length.
    pub fn with_f16_lut_weighted(&self, values: &[f32], weights: &[f32]) -> Palette {
        assert_eq!(
            weights.len(),
            self.indices.len(),
            "weights do not match the palette"
        );
        self.rounded_lut(values, |e| f64::from(weights[e]))
    }

    /// The fp16-rounded palette, with `sse` summing `weight(e)` times element `e`'s squared
    /// error.
    fn rounded_lut(&self, values: &[f32], weight: impl Fn(usize) -> f64) -> Palette {
        assert_eq!(
            values.len(),
            self.indices.len(),
            "values do not match the palette"
        );
        // Rounding is monotone, so the LUT stays sorted (ties are possible only for values that
        // are not themselves fp16-exact).
        let lut: Vec<f32> = self
            .lut
            .iter()
            .map(|&c| f16::from_f32(c).to_f32())
            .collect();
        let mut indices = Vec::with_capacity(values.len());
        let mut sse = 0.0;
        for (e, &v) in values.iter().enumerate() {
            let i = nearest(&lut, v);
            indices.push(i as u16);
            let d = f64::from(v) - f64::from(lut[i]);
            sse += weight(e) * (d * d);
        }
        Palette { lut, indices, sse }
    }
}

/// Index of the LUT entry nearest to `v` (the lower one on a tie) in a sorted LUT.
///
/// `v` is f64 so that error feedback, whose running values are f64, shares it; an f32 value
/// widens exactly and compares as before.
pub(crate) fn nearest(lut: &[f32], v: impl Into<f64>) -> usize {
    let v: f64 = v.into();
    let hi = lut.partition_point(|&c| f64::from(c) < v);
    if hi == 0 {
        return 0;
    }
    if hi == lut.len() {
        return hi - 1;
    }
    let below = v - f64::from(lut[hi - 1]);
    let above = f64::from(lut[hi]) - v;
    if above < below {
        hi
    } else {
        hi - 1
    }
}

/// Minimum-squared-error k-means of `values` into at most `k` clusters, exact and deterministic.
///
/// If `values` has at most `k` distinct values the LUT is exactly those values (error 0);
/// otherwise it has exactly `k` entries, the weighted means of the optimal clusters. `-0.0` is
/// treated as `0.0`.
///
/// # Panics
/// If `k` is 0 or above 65536 (indices are u16), or a value is not finite.
pub fn kmeans_1d(values: &[f32], k: usize) -> Palette {
    assert!(
        (1..=1 << 16).contains(&k),
        "k must be in 1..=65536, got {k}"
    );
    assert!(
        values.iter().all(|v| v.is_finite()),
        "k-means input must be finite"
    );
    if values.is_empty() {
        return Palette {
            lut: Vec::new(),
            indices: Vec::new(),
            sse: 0.0,
        };
    }

    if values.len() >= COUNTING_MIN {
        if let Some(keys) = f16_keys(values) {
            return HISTOGRAM.with(|h| counting_kmeans(&keys, k, &mut h.borrow_mut()));
        }
    }

    let sorted = sort_with_index(values);
    // Unique values with their counts, in ascending order.
    let mut uniq: Vec<f32> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    let mut prev_key = None;
    for &e in &sorted {
        let key = (e >> 32) as u32;
        if prev_key == Some(key) {
            *counts.last_mut().unwrap() += 1;
        } else {
            uniq.push(key_to_f32(key));
            counts.push(1);
            prev_key = Some(key);
        }
    }
    let (lut, cluster_of_unique, sse) = cluster_unique(&uniq, &counts, k);

    let mut indices = vec![0u16; values.len()];
    let mut u = usize::MAX;
    let mut prev_key = None;
    for &e in &sorted {
        let key = (e >> 32) as u32;
        if prev_key != Some(key) {
            u = u.wrapping_add(1);
            prev_key = Some(key);
        }
        indices[(e & 0xffff_ffff) as usize] = cluster_of_unique[u];
    }
    Palette { lut, indices, sse }
}

/// Tensors at least this large whose values are all fp16-exact are counted over the 65536 fp16
/// bit patterns instead of sorted (below it, scanning the table costs more than the sort).
const COUNTING_MIN: usize = 4096;

thread_local! {
    /// Per-thread counting table over order-preserving fp16 keys; all zero between calls.
    static HISTOGRAM: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Optimal LUT of the sorted unique values `uniq` with element `counts`, the cluster of each
/// unique value, and the squared error (in f64, against the f32 LUT).
fn cluster_unique<W: Weight>(uniq: &[f32], counts: &[W], k: usize) -> (Vec<f32>, Vec<u16>, f64) {
    let n = uniq.len();
    // starts[c] = first unique index of cluster c; starts[clusters] = n.
    let starts: Vec<usize> = if n <= k {
        (0..=n).collect()
    } else {
        let prefix = Prefix::new(uniq, counts);
        optimal_starts(&prefix, n, k)
    };
    let clusters = starts.len() - 1;

    let mut lut = Vec::with_capacity(clusters);
    let mut cluster_of_unique = Vec::with_capacity(n);
    let mut sse = 0.0f64;
    for c in 0..clusters {
        let (a, b) = (starts[c], starts[c + 1]);
        let (mut sw, mut sx) = (0.0f64, 0.0f64);
        for u in a..b {
            sw += counts[u].to_f64();
            sx += counts[u].to_f64() * f64::from(uniq[u]);
        }
        let centroid = (sx / sw) as f32;
        lut.push(centroid);
        for u in a..b {
            let d = f64::from(uniq[u]) - f64::from(centroid);
            sse += counts[u].to_f64() * (d * d);
        }
        cluster_of_unique.extend(std::iter::repeat_n(c as u16, b - a));
    }
    (lut, cluster_of_unique, sse)
}

/// Order-preserving 16-bit key of every value if all are fp16-exact (`-0.0` as `0.0`): the fp16
/// bit pattern with the sign handled like [`f32_key`].
fn f16_keys(values: &[f32]) -> Option<Vec<u16>> {
    let mut keys = Vec::with_capacity(values.len());
    let mut exact = true;
    for &v in values {
        let (key, ok) = f16_key(v);
        exact &= ok;
        keys.push(key);
    }
    exact.then_some(keys)
}

/// `(key, exact)`: the order-preserving fp16 key of `x`, valid if `exact` (`x` is fp16-exact).
#[inline]
fn f16_key(x: f32) -> (u16, bool) {
    let b = (x + 0.0).to_bits();
    let a = b & 0x7fff_ffff;
    let exp = a >> 23;
    let (h, exact) = if a == 0 {
        (0, true)
    } else if (113..=142).contains(&exp) {
        // Normal fp16: rebias the exponent, drop 13 mantissa bits.
        ((a - (112 << 23)) >> 13, a & 0x1fff == 0)
    } else if (103..=112).contains(&exp) {
        // Subnormal fp16: the significand with its implicit bit, shifted to units of 2^-24.
        let m = 0x80_0000 | (a & 0x7f_ffff);
        let shift = 126 - exp;
        (m >> shift, m & ((1 << shift) - 1) == 0)
    } else {
        (0, false)
    };
    let h = h as u16;
    let key = if b & 0x8000_0000 != 0 {
        !(h | 0x8000)
    } else {
        h | 0x8000
    };
    (key, exact)
}

/// The value of an order-preserving fp16 key.
fn f16_key_to_f32(key: u16) -> f32 {
    let h = if key & 0x8000 != 0 {
        key & 0x7fff
    } else {
        !key
    };
    f16::from_bits(h).to_f32()
}

/// [`kmeans_1d`] by counting the fp16 keys of the values: O(N + 65536), no sort.
fn counting_kmeans(keys: &[u16], k: usize, hist: &mut Vec<u32>) -> Palette {
    hist.resize(1 << 16, 0);
    let (mut lo, mut hi) = (u16::MAX, 0u16);
    for &key in keys {
        hist[usize::from(key)] += 1;
        lo = lo.min(key);
        hi = hi.max(key);
    }
    let mut uniq_keys: Vec<u16> = Vec::new();
    let mut uniq: Vec<f32> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    for key in lo..=hi {
        let c = hist[usize::from(key)];
        if c != 0 {
            uniq_keys.push(key);
            uniq.push(f16_key_to_f32(key));
            counts.push(c);
        }
    }
    let (lut, cluster_of_unique, sse) = cluster_unique(&uniq, &counts, k);
    // The table now maps each key to its cluster.
    for (&key, &c) in uniq_keys.iter().zip(&cluster_of_unique) {
        hist[usize::from(key)] = u32::from(c);
    }
    let indices = keys
        .iter()
        .map(|&key| hist[usize::from(key)] as u16)
        .collect();
    for &key in &uniq_keys {
        hist[usize::from(key)] = 0;
    }
    Palette { lut, indices, sse }
}

/// [`kmeans_1d`] of several tensors, run on all available cores (whole tensors per thread, so
/// the results are identical to the sequential ones).
pub fn kmeans_1d_batch(tensors: &[&[f32]], k: usize) -> Vec<Palette> {
    parallel_map(tensors, |t| t.len(), |t| kmeans_1d(t, k))
}

/// One palette per group of `group_size` consecutive output channels (axis 0) of a row-major
/// tensor of `shape`, as Core ML's per-grouped-channel palettization stores them: group `g`
/// covers rows `g·group_size .. (g+1)·group_size`, and its `indices` are in the order of those
/// rows' elements.
///
/// # Panics
/// If `shape` does not match `values`, is empty, or `group_size` does not divide `shape[0]`.
pub fn palettize_grouped(
    values: &[f32],
    shape: &[usize],
    group_size: usize,
    k: usize,
) -> Vec<Palette> {
    let group_len = group_len(values.len(), shape, group_size);
    if group_len == 0 {
        return vec![kmeans_1d(&[], k); shape[0] / group_size];
    }
    let groups: Vec<&[f32]> = values.chunks(group_len).collect();
    kmeans_1d_batch(&groups, k)
}

/// Elements per group of [`palettize_grouped`], after checking `shape` against `len` elements.
fn group_len(len: usize, shape: &[usize], group_size: usize) -> usize {
    assert!(
        !shape.is_empty(),
        "palettize_grouped needs a tensor of rank >= 1"
    );
    assert_eq!(
        shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)),
        Some(len),
        "shape does not match values"
    );
    assert!(
        group_size > 0 && shape[0] % group_size == 0,
        "group size {group_size} must divide the {} output channels",
        shape[0]
    );
    // Cannot overflow: it divides the checked product.
    group_size * shape[1..].iter().product::<usize>()
}

/// Unique values whose summed weight is below this fraction of the mean per unique value are
/// raised to it, for two reasons. A cluster whose elements all have weight 0 has no weighted
/// mean (0/0); with the floor its entry is the plain mean of its unique values, and since such
/// elements do not count in the error, where that entry goes hardly matters. And every step of
/// the f64 prefix sums of the weights must be positive for `w[j] - w[i]` to be a positive
/// divisor: the floor is `1e-6 · total / n`, above the rounding `total · 2^-53` of the sums for
/// every `n <= u32::MAX` unique values. The objective then differs from the true weighted error
/// by at most the floor times the squared errors of the raised values: a relative `1e-6` of the
/// mean weight, far below what fp16 storage of the LUT changes.
const WEIGHT_FLOOR: f64 = 1e-6;

/// Minimum weighted-squared-error k-means: minimises `sum_e weights[e] · (values[e] -
/// lut[indices[e]])²` over at most `k` entries, exactly and deterministically (unique values
/// whose summed weight is below 1e-6 of the mean per unique value count as that much, which
/// keeps the mean of an all-zero-weight cluster defined). Data-aware palettization uses it with `weights[e]` the second moment of
/// the input channel the weight multiplies.
///
/// Each LUT entry is the weighted mean of its cluster (clusters are still contiguous runs of
/// sorted values, equal values sharing one, so the same DP is exact with summed real weights).
/// Every element, including those of weight 0, is indexed to its nearest LUT entry, which is
/// what the optimum assigns and never raises the error with the rounded f32 LUT. `sse` is the
/// weighted error. If every weight is 0 the objective is empty: the result is [`kmeans_1d`]'s
/// LUT and indices, with `sse` 0. `-0.0` is treated as `0.0`.
///
/// # Panics
/// If `k` is 0 or above 65536, the lengths differ, a value is not finite, or a weight is
/// negative or not finite.
pub fn kmeans_1d_weighted(values: &[f32], weights: &[f32], k: usize) -> Palette {
    assert!(
        (1..=1 << 16).contains(&k),
        "k must be in 1..=65536, got {k}"
    );
    assert_eq!(
        values.len(),
        weights.len(),
        "k-means needs one weight per value"
    );
    assert!(
        values.iter().all(|v| v.is_finite()),
        "k-means input must be finite"
    );
    assert!(
        weights.iter().all(|w| w.is_finite() && *w >= 0.0),
        "k-means weights must be finite and >= 0"
    );
    if weights.iter().all(|&w| w == 0.0) {
        return Palette {
            sse: 0.0,
            ..kmeans_1d(values, k)
        };
    }

    let sorted = sort_with_index(values);
    // Unique values with their summed weights (in sorted order, so the sums are deterministic).
    let mut uniq: Vec<f32> = Vec::new();
    let mut sums: Vec<f64> = Vec::new();
    let mut prev_key = None;
    for &e in &sorted {
        let key = (e >> 32) as u32;
        let w = f64::from(weights[(e & 0xffff_ffff) as usize]);
        if prev_key == Some(key) {
            *sums.last_mut().unwrap() += w;
        } else {
            uniq.push(key_to_f32(key));
            sums.push(w);
            prev_key = Some(key);
        }
    }
    let floor = WEIGHT_FLOOR * sums.iter().sum::<f64>() / uniq.len() as f64;
    let floored: Vec<f64> = sums.iter().map(|&w| w.max(floor)).collect();
    let (lut, _, _) = cluster_unique(&uniq, &floored, k);

    let nearest_of_unique: Vec<u16> = uniq.iter().map(|&x| nearest(&lut, x) as u16).collect();
    let sse = uniq
        .iter()
        .zip(&sums)
        .zip(&nearest_of_unique)
        .map(|((&x, &w), &c)| {
            let d = f64::from(x) - f64::from(lut[usize::from(c)]);
            w * (d * d)
        })
        .sum();
    let mut indices = vec![0u16; values.len()];
    let mut u = usize::MAX;
    let mut prev_key = None;
    for &e in &sorted {
        let key = (e >> 32) as u32;
        if prev_key != Some(key) {
            u = u.wrapping_add(1);
            prev_key = Some(key);
        }
        indices[(e & 0xffff_ffff) as usize] = nearest_of_unique[u];
    }
    Palette { lut, indices, sse }
}

/// [`kmeans_1d_weighted`] of several `(values, weights)` tensors on all available cores (whole
/// tensors per thread, so the results are identical to the sequential ones).
pub fn kmeans_1d_weighted_batch(tensors: &[(&[f32], &[f32])], k: usize) -> Vec<Palette> {
    parallel_map(tensors, |t| t.0.len(), |t| kmeans_1d_weighted(t.0, t.1, k))
}

/// [`palettize_grouped`] with the weighted objective: `weights` has the shape of `values` and
/// is grouped the same way.
///
/// # Panics
/// As [`palettize_grouped`], and if `weights` is not as long as `values`.
pub fn palettize_grouped_weighted(
    values: &[f32],
    weights: &[f32],
    shape: &[usize],
    group_size: usize,
    k: usize,
) -> Vec<Palette> {
    assert_eq!(
        values.len(),
        weights.len(),
        "k-means needs one weight per value"
    );
    let group_len = group_len(values.len(), shape, group_size);
    if group_len == 0 {
        return vec![kmeans_1d(&[], k); shape[0] / group_size];
    }
    let groups: Vec<(&[f32], &[f32])> = values
        .chunks(group_len)
        .zip(weights.chunks(group_len))
        .collect();
    kmeans_1d_weighted_batch(&groups, k)
}

/// Order-preserving map of a finite f32 (with -0.0 folded into 0.0) to u32.
fn f32_key(x: f32) -> u32 {
    // Adding +0.0 turns -0.0 into +0.0 and leaves every other value unchanged.
    let b = (x + 0.0).to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

fn key_to_f32(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 {
        k & 0x7fff_ffff
    } else {
        !k
    })
}

/// `(key << 32) | original index` for every value, sorted by key (then index). LSD radix sort
/// on the key: an order of magnitude faster than a comparison sort at these sizes.
fn sort_with_index(values: &[f32]) -> Vec<u64> {
    assert!(values.len() <= u32::MAX as usize, "tensor too large");
    let mut a: Vec<u64> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (u64::from(f32_key(v)) << 32) | i as u64)
        .collect();
    const DIGITS: [(u32, usize); 3] = [(32, 11), (43, 11), (54, 10)];
    let mut hist = [[0usize; 1 << 11]; 3];
    for &e in &a {
        for (h, &(shift, bits)) in hist.iter_mut().zip(&DIGITS) {
            h[((e >> shift) & ((1 << bits) - 1)) as usize] += 1;
        }
    }
    let mut b = vec![0u64; a.len()];
    for (h, &(shift, bits)) in hist.iter_mut().zip(&DIGITS) {
        // A digit shared by every element (common for the exponent bits) needs no pass.
        if h.contains(&a.len()) {
            continue;
        }
        let mut sum = 0;
        for c in h.iter_mut() {
            let t = *c;
            *c = sum;
            sum += t;
        }
        for &e in &a {
            let d = ((e >> shift) & ((1 << bits) - 1)) as usize;
            b[h[d]] = e;
            h[d] += 1;
        }
        std::mem::swap(&mut a, &mut b);
    }
    a
}

/// Prefix sums over the unique values: index `j` covers unique values `0..j`.
struct Prefix<W> {
    /// Element counts (exact integers) or summed real weights.
    w: Vec<W>,
    s1: Vec<f64>,
    s2: Vec<f64>,
    /// `recip[t] = 1 / t` for counts: cluster weights are integers up to the element count, so
    /// a table lookup replaces the division in the hot loop (a multiply is several times
    /// cheaper). Empty for real weights.
    recip: Vec<f64>,
}

impl<W: Weight> Prefix<W> {
    fn new(uniq: &[f32], counts: &[W]) -> Prefix<W> {
        let n = uniq.len();
        let (mut w, mut s1, mut s2) = (
            Vec::with_capacity(n + 1),
            Vec::with_capacity(n + 1),
            Vec::with_capacity(n + 1),
        );
        let (mut a, mut b, mut c) = (W::ZERO, 0.0f64, 0.0f64);
        w.push(a);
        s1.push(b);
        s2.push(c);
        for (&x, &cnt) in uniq.iter().zip(counts) {
            let x = f64::from(x);
            a = a.add(cnt);
            b += cnt.to_f64() * x;
            c += cnt.to_f64() * x * x;
            w.push(a);
            s1.push(b);
            s2.push(c);
        }
        let recip = W::recip_table(a);
        Prefix { w, s1, s2, recip }
    }

    /// Weighted squared error of unique values `i..j` around their mean.
    #[cfg(test)]
    fn cost(&self, i: usize, j: usize) -> f64 {
        let d = self.s1[j] - self.s1[i];
        (self.s2[j] - self.s2[i]) - W::quotient(d * d, &self.recip, self.w[j], self.w[i])
    }
}

/// Starts of the `k` clusters of an optimal partition of the `n` unique values (`k < n`),
/// followed by `n`: the Lagrangian search when it lands on `k`, else the constrained DP.
fn optimal_starts<W: Weight>(p: &Prefix<W>, n: usize, k: usize) -> Vec<usize> {
    if k > 1 {
        if let Some(starts) = lagrange::Wqs::default().solve(p, n, k) {
            return starts;
        }
    }
    constrained_starts(p, n, k)
}

/// [`optimal_starts`] by the constrained DP alone.
fn constrained_starts<W: Weight>(p: &Prefix<W>, n: usize, k: usize) -> Vec<usize> {
    let mut bounds = Vec::with_capacity(k + 1);
    bounds.push(0);
    let mut scratch = Scratch::default();
    solve(p, 0, n, k, &mut bounds, &mut scratch);
    bounds.push(n);
    bounds
}

/// Reusable rows of the forward pass (indexed by position relative to the subproblem start).
#[derive(Default)]
struct Scratch {
    d_prev: Vec<f64>,
    d_cur: Vec<f64>,
    /// `D[m-1][i] - s2[i]`: the part of a candidate's value that does not depend on the row.
    base: Vec<f64>,
    opt_prev: Vec<u32>,
    opt_cur: Vec<u32>,
    /// Checkpoint boundaries on the optimal path to each row (first `passed` entries valid).
    ptr_prev: Vec<[u32; CHECKPOINTS]>,
    ptr_cur: Vec<[u32; CHECKPOINTS]>,
}

/// Appends to `out` the optimal starts of clusters 2..=k of unique values `lo..hi` split into
/// exactly `k` non-empty clusters (`k <= hi - lo`).
fn solve<W: Weight>(
    p: &Prefix<W>,
    lo: usize,
    hi: usize,
    k: usize,
    out: &mut Vec<usize>,
    s: &mut Scratch,
) {
    debug_assert!(k >= 1 && k <= hi - lo);
    if k == 1 {
        return;
    }
    if k == hi - lo {
        out.extend(lo + 1..hi);
        return;
    }
    // Checkpoint layers t: boundary between cluster t and t+1 (1-based), spread evenly.
    let c = CHECKPOINTS.min(k - 1);
    let layers: Vec<usize> = (1..=c).map(|r| r * k / (c + 1)).collect();
    let bounds = forward(p, lo, hi, k, &layers, s);
    if c == k - 1 {
        out.extend_from_slice(&bounds);
        return;
    }
    let mut seg_lo = lo;
    let mut seg_layer = 0;
    for (&b, &t) in bounds.iter().zip(&layers) {
        solve(p, seg_lo, b, t - seg_layer, out, s);
        out.push(b);
        seg_lo = b;
        seg_layer = t;
    }
    solve(p, seg_lo, hi, k - seg_layer, out, s);
}

/// One forward DP pass over unique values `lo..hi` with `k` clusters. Returns, for each
/// checkpoint layer `t` in `layers` (ascending, in `1..k`), the start of cluster `t+1` in an
/// optimal partition.
fn forward<W: Weight>(
    p: &Prefix<W>,
    lo: usize,
    hi: usize,
    k: usize,
    layers: &[usize],
    s: &mut Scratch,
) -> Vec<usize> {
    let n = hi - lo;
    let c = layers.len();
    // Local views: position j means "the first j unique values of the subproblem".
    let w = &p.w[lo..=hi];
    let s1 = &p.s1[lo..=hi];
    let s2 = &p.s2[lo..=hi];
    for v in [&mut s.d_prev, &mut s.d_cur, &mut s.base] {
        v.clear();
        v.resize(n + 1, 0.0);
    }
    for v in [&mut s.opt_prev, &mut s.opt_cur] {
        v.clear();
        v.resize(n + 1, 0);
    }
    for v in [&mut s.ptr_prev, &mut s.ptr_cur] {
        v.clear();
        v.resize(n + 1, [0; CHECKPOINTS]);
    }

    // Layer 1: one cluster over 0..j, for every j that leaves room for the other k-1 clusters.
    for j in 1..=n - (k - 1) {
        let d1 = s1[j] - s1[0];
        s.d_prev[j] = (s2[j] - s2[0]) - W::quotient(d1 * d1, &p.recip, w[j], w[0]);
        s.opt_prev[j] = 0;
    }
    // Estimated work of Knuth's method for the next layer; unknown for layer 2 (where it is
    // quadratic anyway).
    let mut knuth_estimate = usize::MAX;
    let mut passed = 0;
    for m in 2..=k {
        // Rows j of layer m: m clusters need j >= m, and the other k-m need n - j >= k - m.
        // Only the full range matters for the last layer.
        let jmax = n - (k - m);
        let jmin = if m == k { n } else { m };
        // Candidates: valid rows of layer m-1.
        let imin = m - 1;
        let imax = jmax - 1;
        for ((b, &d), &q) in s.base[imin..=imax]
            .iter_mut()
            .zip(&s.d_prev[imin..=imax])
            .zip(&s2[imin..=imax])
        {
            *b = d - q;
        }
        let rows = jmax - jmin + 1;
        let dc_estimate = rows * (usize::BITS - rows.leading_zeros()) as usize;
        let layer = Layer {
            w,
            recip: &p.recip,
            s1,
            s2,
            base: &s.base,
            lower: &s.opt_prev,
            imin,
            imax,
        };
        if knuth_estimate < dc_estimate {
            layer.knuth(jmin, jmax, &mut s.d_cur, &mut s.opt_cur);
        } else {
            layer.divide_and_conquer(jmin, jmax, &mut s.d_cur, &mut s.opt_cur);
        }
        // Knuth's window for layer m+1 at row j is opt[m+1][j+1] - opt[m][j], which is about
        // (m-1)/(m+1) times the same quantity one layer down.
        if m < k {
            let mut sum = 0usize;
            for j in jmin..jmax {
                sum += (s.opt_cur[j + 1] as usize).saturating_sub(s.opt_prev[j.min(imax)] as usize)
                    + 1;
            }
            knuth_estimate = sum * (m - 1) / (m + 1);
        }

        // Carry the checkpoint boundaries along the optimal paths.
        let record = layers.get(passed) == Some(&(m - 1));
        for j in jmin..=jmax {
            let i = s.opt_cur[j] as usize;
            // Copying the whole fixed-size array is cheaper than a variable-length copy.
            s.ptr_cur[j] = s.ptr_prev[i];
            if record {
                s.ptr_cur[j][passed] = i as u32;
            }
        }
        if record {
            passed += 1;
        }
        std::mem::swap(&mut s.d_prev, &mut s.d_cur);
        std::mem::swap(&mut s.opt_prev, &mut s.opt_cur);
        std::mem::swap(&mut s.ptr_prev, &mut s.ptr_cur);
    }
    debug_assert_eq!(passed, c);
    s.ptr_prev[n][..c]
        .iter()
        .map(|&b| lo + b as usize)
        .collect()
}

/// One DP layer: row j's value is `min_i base[i] - (s1[j]-s1[i])² / (w[j]-w[i]) + s2[j]`
/// over candidates `i` in `imin..=imax`.
struct Layer<'a, W> {
    w: &'a [W],
    recip: &'a [f64],
    s1: &'a [f64],
    s2: &'a [f64],
    base: &'a [f64],
    /// Optima of the previous layer: `opt[m-1][j] <= opt[m][j]`.
    lower: &'a [u32],
    imin: usize,
    imax: usize,
}

impl<W: Weight> Layer<'_, W> {
    /// Leftmost minimising candidate of row `j` within `a..=b`, and the row's value.
    #[inline(always)]
    fn row_min(&self, j: usize, a: usize, b: usize) -> (f64, usize) {
        let (s1j, wj) = (self.s1[j], self.w[j]);
        let mut best = f64::INFINITY;
        let mut arg = 0;
        let base = &self.base[a..=b];
        let len = base.len();
        // Equal-length slices let the compiler drop the bounds checks in the loop.
        let (s1, w) = (&self.s1[a..a + len], &self.w[a..a + len]);
        let recip = W::row_table(self.recip, wj);
        if len <= 8 {
            // Short windows (most rows of the Knuth layers): a data-dependent branch here
            // mispredicts about once per row, which costs more than the evaluations, so select
            // without branching.
            for t in 0..len {
                let d = s1j - s1[t];
                let v = base[t] - W::quotient(d * d, recip, wj, w[t]);
                let better = v < best;
                best = if better { v } else { best };
                arg = if better { t } else { arg };
            }
        } else {
            for t in 0..len {
                let d = s1j - s1[t];
                let v = base[t] - W::quotient(d * d, recip, wj, w[t]);
                if v < best {
                    best = v;
                    arg = t;
                }
            }
        }
        (best + self.s2[j], a + arg)
    }

    /// Lower bound on row j's optimum from the previous layer (rows past that layer's last
    /// valid row use its last row, which is smaller still).
    #[inline]
    fn lower(&self, j: usize) -> usize {
        (self.lower[j.min(self.imax)] as usize).max(self.imin)
    }

    /// Rows `jmin..=jmax` by divide and conquer, one level at a time: first the row at offset
    /// `s` (largest power of two), then the rows halfway between solved ones, and so on. Each
    /// row's window is bounded by its solved neighbours `s` rows away and by the previous layer.
    /// Rows of one level are independent, so the CPU overlaps them; the recursive formulation
    /// serialises every row behind its parent.
    fn divide_and_conquer(&self, jmin: usize, jmax: usize, d: &mut [f64], opt: &mut [u32]) {
        let rows = jmax - jmin + 1;
        let mut step = 1usize << (usize::BITS - 1 - rows.leading_zeros());
        while step >= 1 {
            // Offsets x in 1..=rows that are odd multiples of `step`.
            let mut x = step;
            while x <= rows {
                let j = jmin + x - 1;
                let left = if x > step {
                    opt[j - step] as usize
                } else {
                    self.imin
                };
                let right = if x + step <= rows {
                    opt[j + step] as usize
                } else {
                    self.imax
                };
                let hi = right.min(j - 1);
                // Floating-point rounding can make bounds cross by a hair; the window is then
                // a single candidate.
                let lo = left.max(self.lower(j)).min(hi);
                let (v, i) = self.row_min(j, lo, hi);
                d[j] = v;
                opt[j] = i as u32;
                x += 2 * step;
            }
            step /= 2;
        }
    }

    /// Rows `jmin..=jmax`, right to left, each searched in `opt[m-1][j] ..= opt[m][j+1]`.
    fn knuth(&self, jmin: usize, jmax: usize, d: &mut [f64], opt: &mut [u32]) {
        let mut upper = self.imax;
        for j in (jmin..=jmax).rev() {
            let hi = upper.min(j - 1);
            let lo = self.lower(j).min(hi);
            // The window's right end depends on the row just solved, which would chain every
            // row's loads and arithmetic behind the previous row's. Scanning at least
            // KNUTH_SPAN candidates from `lo` (a superset of the window, so the leftmost
            // minimum is unchanged) makes the common case independent of that result.
            let span_end = (lo + KNUTH_SPAN - 1).min(j - 1).min(self.imax);
            let (v, i) = self.row_min(j, lo, hi.max(span_end));
            d[j] = v;
            opt[j] = i as u32;
            upper = i;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift generator: the tests must not depend on a random seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Weighted squared error of sorted unique `(x, w)` pairs split at `starts`.
    fn partition_sse(xs: &[(f64, f64)], starts: &[usize]) -> f64 {
        let mut total = 0.0;
        for c in 0..starts.len() - 1 {
            let run = &xs[starts[c]..starts[c + 1]];
            let sw: f64 = run.iter().map(|p| p.1).sum();
            let mean = run.iter().map(|p| p.0 * p.1).sum::<f64>() / sw;
            total += run
                .iter()
                .map(|p| p.1 * (p.0 - mean) * (p.0 - mean))
                .sum::<f64>();
        }
        total
    }

    /// Sorted unique values with their counts, as the references see the data.
    fn weighted_unique(values: &[f32]) -> Vec<(f64, f64)> {
        let mut u: Vec<f32> = values.to_vec();
        u.sort_by(f32::total_cmp);
        let mut xs: Vec<(f64, f64)> = Vec::new();
        for v in u {
            match xs.last_mut() {
                Some(last) if last.0 == f64::from(v) => last.1 += 1.0,
                _ => xs.push((f64::from(v), 1.0)),
            }
        }
        xs
    }

    /// Minimum over every split of the sorted unique values into exactly `k` runs.
    fn brute_force(values: &[f32], k: usize) -> f64 {
        brute_force_pairs(&weighted_unique(values), k)
    }

    /// Minimum over every split of sorted unique `(x, w)` pairs into exactly `k` runs.
    fn brute_force_pairs(xs: &[(f64, f64)], k: usize) -> f64 {
        let n = xs.len();
        if n <= k {
            return 0.0;
        }
        let mut best = f64::INFINITY;
        // Every (k-1)-subset of the n-1 gaps, as a bitmask.
        for mask in 0u32..1 << (n - 1) {
            if mask.count_ones() as usize != k - 1 {
                continue;
            }
            let mut starts = vec![0];
            starts.extend((0..n - 1).filter(|g| mask >> g & 1 == 1).map(|g| g + 1));
            starts.push(n);
            best = best.min(partition_sse(xs, &starts));
        }
        best
    }

    fn check_consistent(values: &[f32], p: &Palette, k: usize) {
        assert!(p.lut.len() <= k);
        assert!(
            p.lut.windows(2).all(|w| w[0] < w[1]),
            "LUT not strictly ascending: {:?}",
            p.lut
        );
        assert_eq!(p.indices.len(), values.len());
        let sse: f64 = values
            .iter()
            .zip(&p.indices)
            .map(|(&v, &i)| (f64::from(v) - f64::from(p.lut[usize::from(i)])).powi(2))
            .sum();
        assert!(
            (sse - p.sse).abs() <= 1e-12 * (1.0 + sse),
            "reported {} vs {}",
            p.sse,
            sse
        );
        // Clusters of an optimal 1-D partition are contiguous in value order.
        let mut pairs: Vec<(f32, u16)> = values
            .iter()
            .copied()
            .zip(p.indices.iter().copied())
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        assert!(
            pairs.windows(2).all(|w| w[0].1 <= w[1].1),
            "clusters interleave"
        );
    }

    #[test]
    fn matches_brute_force_on_small_tensors() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..400 {
            let len = 1 + rng.below(40) as usize;
            // Few distinct levels so that values repeat and the weights matter.
            let levels = 1 + rng.below(14);
            let spread = [0.01f32, 1.0, 300.0][case % 3];
            let values: Vec<f32> = (0..len)
                .map(|_| (rng.below(levels) as f32 - 3.0) * spread + (rng.below(3) as f32) * 1e-3)
                .collect();
            for k in 1..=6 {
                let p = kmeans_1d(&values, k);
                check_consistent(&values, &p, k);
                let best = brute_force(&values, k);
                // p.sse uses the f32-rounded LUT, so it may exceed the exact optimum by the
                // rounding of the means, never by a worse partition.
                let tol =
                    1e-9 * (1.0 + best) + 1e-12 * values.iter().map(|v| v * v).sum::<f32>() as f64;
                assert!(
                    (p.sse - best).abs() <= tol,
                    "case {case} k {k}: got {} want {best} for {values:?}",
                    p.sse
                );
            }
        }
    }

    /// Exercises the recursion (k > CHECKPOINTS + 1) and the Knuth layers against an
    /// independent full-table DP.
    #[test]
    fn matches_full_table_dp_with_many_clusters() {
        let mut rng = Rng(12345);
        // Sizes keep the O(k·n²) reference fast enough for unoptimised test builds.
        for &(len, k) in &[
            (900usize, 40usize),
            (1200, 9),
            (500, 200),
            (700, 100),
            (300, 17),
        ] {
            let values: Vec<f32> = (0..len)
                .map(|_| {
                    // Heavy-tailed, fp16-exact, with many repeats near zero.
                    let g = (rng.below(2001) as f32 - 1000.0) / 1000.0;
                    f16::from_f32(g * g * g).to_f32()
                })
                .collect();
            let p = kmeans_1d(&values, k);
            check_consistent(&values, &p, k);
            let want = full_table_dp(&values, k);
            assert!(
                (p.sse - want).abs() <= 1e-9 * want + 1e-12,
                "len {len} k {k}: {} vs {want}",
                p.sse
            );
        }
    }

    /// O(k·n²) reference DP with a complete table and no monotonicity assumptions; the chosen
    /// partition is re-scored exactly.
    fn full_table_dp(values: &[f32], k: usize) -> f64 {
        let xs = weighted_unique(values);
        let n = xs.len();
        if n <= k {
            return 0.0;
        }
        let (mut w, mut s1, mut s2) = (vec![0.0], vec![0.0], vec![0.0]);
        for &(x, c) in &xs {
            w.push(w.last().unwrap() + c);
            s1.push(s1.last().unwrap() + c * x);
            s2.push(s2.last().unwrap() + c * x * x);
        }
        let cost = |i: usize, j: usize| {
            let d = s1[j] - s1[i];
            (s2[j] - s2[i]) - d * d / (w[j] - w[i])
        };
        partition_sse(&xs, &full_table_starts(n, k, cost))
    }

    /// Starts (then `n`) of the least-cost split of `n` positions into `k` runs, by the complete
    /// `k × n` table.
    fn full_table_starts(n: usize, k: usize, cost: impl Fn(usize, usize) -> f64) -> Vec<usize> {
        let mut d = vec![vec![f64::INFINITY; n + 1]; k + 1];
        let mut arg = vec![vec![0usize; n + 1]; k + 1];
        d[0][0] = 0.0;
        for m in 1..=k {
            for j in m..=n {
                for i in m - 1..j {
                    let v = d[m - 1][i] + cost(i, j);
                    if v < d[m][j] {
                        d[m][j] = v;
                        arg[m][j] = i;
                    }
                }
            }
        }
        let mut starts = vec![n];
        let mut j = n;
        for m in (1..=k).rev() {
            j = arg[m][j];
            starts.push(j);
        }
        starts.reverse();
        starts
    }

    /// Total cost of a partition given by its starts (followed by `n`).
    fn starts_cost<W: Weight>(p: &Prefix<W>, starts: &[usize]) -> f64 {
        starts.windows(2).map(|s| p.cost(s[0], s[1])).sum()
    }

    fn prefix_of(values: &[f32]) -> (Prefix<u32>, usize) {
        let mut u: Vec<f32> = values.iter().map(|&v| v + 0.0).collect();
        u.sort_by(f32::total_cmp);
        let (mut uniq, mut counts) = (Vec::new(), Vec::<u32>::new());
        for v in u {
            if uniq.last() == Some(&v) {
                *counts.last_mut().unwrap() += 1;
            } else {
                uniq.push(v);
                counts.push(1);
            }
        }
        let n = uniq.len();
        (Prefix::new(&uniq, &counts), n)
    }

    /// The Lagrangian search, whenever it answers, finds a partition as good as the
    /// constrained DP's, on random, heavily repeated and equally spaced (tie-prone) values.
    #[test]
    fn lagrangian_matches_constrained_dp() {
        let mut rng = Rng(0x5eed);
        // Per kind of input: (answered by the Lagrangian search, instances).
        let mut answered = [(0usize, 0usize); 4];
        for case in 0..240 {
            let len = 2 + rng.below([60, 600, 4000][case % 3]) as usize;
            let values: Vec<f32> = match case % 4 {
                // Heavy-tailed, fp16-exact.
                0 => (0..len)
                    .map(|_| {
                        let g = (rng.below(2001) as f32 - 1000.0) / 1000.0;
                        f16::from_f32(g * g * g).to_f32()
                    })
                    .collect(),
                // Few levels, many repeats.
                1 => {
                    let levels = 2 + rng.below(40);
                    (0..len).map(|_| rng.below(levels) as f32 * 0.25).collect()
                }
                // Equally spaced, equal counts: many exact ties between cluster counts.
                2 => (0..len).map(|i| (i % (1 + len / 3)) as f32).collect(),
                // Equally spaced, all distinct.
                _ => (0..len).map(|i| i as f32 * 0.5 - 7.0).collect(),
            };
            let (p, n) = prefix_of(&values);
            for _ in 0..4 {
                let k = 2 + rng.below(299) as usize;
                if k >= n {
                    continue;
                }
                answered[case % 4].1 += 1;
                let want = starts_cost(&p, &constrained_starts(&p, n, k));
                if let Some(starts) = lagrange::Wqs::default().solve(&p, n, k) {
                    answered[case % 4].0 += 1;
                    assert_eq!(starts.len(), k + 1);
                    assert_eq!((starts[0], starts[k]), (0, n));
                    assert!(starts.windows(2).all(|s| s[0] < s[1]));
                    let got = starts_cost(&p, &starts);
                    assert!(
                        (got - want).abs() <= 1e-9 * want + 1e-12,
                        "case {case} n {n} k {k}: {got} vs {want}"
                    );
                }
                let got = starts_cost(&p, &optimal_starts(&p, n, k));
                assert!(
                    (got - want).abs() <= 1e-9 * want + 1e-12,
                    "case {case} n {n} k {k}: {got} vs {want}"
                );
            }
        }
        println!("Lagrangian search answered (of): {answered:?}");
        // Generic data must take the fast path, or it is pointless; equally spaced values are
        // full of breakpoints and mostly fall back.
        assert!(answered[0].0 * 10 >= answered[0].1 * 9, "{answered:?}");
    }

    #[test]
    fn deterministic() {
        let mut rng = Rng(7);
        let values: Vec<f32> = (0..20000)
            .map(|_| rng.below(5000) as f32 / 977.0 - 2.0)
            .collect();
        let a = kmeans_1d(&values, 16);
        for _ in 0..3 {
            assert_eq!(a, kmeans_1d(&values, 16));
        }
        let batch = kmeans_1d_batch(&[&values, &values[..7000], &values], 16);
        assert_eq!(batch[0], a);
        assert_eq!(batch[2], a);
        assert_eq!(batch[1], kmeans_1d(&values[..7000], 16));
    }

    #[test]
    fn few_unique_values_are_the_lut() {
        let values = [0.5f32, -1.0, 0.5, 2.0, -0.0, 0.0, 2.0];
        let p = kmeans_1d(&values, 4);
        assert_eq!(p.lut, vec![-1.0, 0.0, 0.5, 2.0]);
        assert_eq!(p.indices, vec![2, 0, 2, 3, 1, 1, 3]);
        assert_eq!(p.sse, 0.0);
        assert_eq!(p.dequantize(), vec![0.5, -1.0, 0.5, 2.0, 0.0, 0.0, 2.0]);
        // More clusters than values: still only the unique values.
        let p = kmeans_1d(&values, 256);
        assert_eq!(p.lut.len(), 4);
        assert_eq!(p.sse, 0.0);
    }

    #[test]
    fn constant_tensor() {
        let values = vec![0.25f32; 5000];
        for k in [1, 2, 16] {
            let p = kmeans_1d(&values, k);
            assert_eq!(p.lut, vec![0.25]);
            assert!(p.indices.iter().all(|&i| i == 0));
            assert_eq!(p.sse, 0.0);
        }
    }

    #[test]
    fn one_cluster_is_the_mean() {
        let p = kmeans_1d(&[1.0, 2.0, 6.0], 1);
        assert_eq!(p.lut, vec![3.0]);
        assert_eq!(p.sse, 4.0 + 1.0 + 9.0);
        assert!(kmeans_1d(&[], 3).lut.is_empty());
    }

    #[test]
    fn weights_pull_the_split() {
        // Three 0s and one 10 against 4 and 5: {0,0,0},{4,5,10} costs 2·(7-4)²/… ; brute force
        // decides, this only pins that counts (not just unique values) are used.
        let values = [0.0f32, 0.0, 0.0, 4.0, 5.0, 10.0, 10.0, 10.0, 10.0];
        let p = kmeans_1d(&values, 2);
        assert!((p.sse - brute_force(&values, 2)).abs() < 1e-12);
        assert_eq!(p.lut.len(), 2);
    }

    #[test]
    fn f16_lut_is_fp16_exact_and_not_worse_than_plain_rounding() {
        let mut rng = Rng(99);
        let values: Vec<f32> = (0..4096)
            .map(|_| f16::from_f32(rng.below(100_000) as f32 / 7e5 - 0.07).to_f32())
            .collect();
        let p = kmeans_1d(&values, 16);
        let q = p.with_f16_lut(&values);
        assert!(q.lut.iter().all(|&c| f16::from_f32(c).to_f32() == c));
        let rounded_same_indices: f64 = values
            .iter()
            .zip(&p.indices)
            .map(|(&v, &i)| (f64::from(v) - f64::from(q.lut[usize::from(i)])).powi(2))
            .sum();
        assert!(q.sse <= rounded_same_indices);
        assert!(
            q.sse >= p.sse * 0.999,
            "fp16 rounding cannot beat the optimum by much"
        );
    }

    #[test]
    fn grouped_palettes_cover_their_rows() {
        let mut rng = Rng(5);
        let shape = [8usize, 3, 2, 2];
        let values: Vec<f32> = (0..96).map(|_| rng.below(1000) as f32 / 100.0).collect();
        let ps = palettize_grouped(&values, &shape, 2, 4);
        assert_eq!(ps.len(), 4);
        for (g, p) in ps.iter().enumerate() {
            assert_eq!(p, &kmeans_1d(&values[g * 24..(g + 1) * 24], 4));
        }
    }

    #[test]
    fn f16_keys_order_every_fp16_value() {
        let mut seen = Vec::new();
        for h in 0..=u16::MAX {
            let x = f16::from_bits(h).to_f32();
            if !x.is_finite() {
                continue;
            }
            let (key, exact) = f16_key(x);
            assert!(exact, "{x}");
            assert_eq!(f16_key_to_f32(key), x + 0.0, "{h:#x}");
            seen.push((x, key));
        }
        seen.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(seen
            .windows(2)
            .all(|w| (w[0].0 + 0.0 == w[1].0 + 0.0) == (w[0].1 == w[1].1)));
        assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1));
        for x in [
            1.0f32 + f32::EPSILON,
            1e-8,
            70000.0,
            3e-5 + 1e-9,
            f32::MIN_POSITIVE,
        ] {
            assert!(!f16_key(x).1, "{x}");
        }
    }

    /// The counting path (large fp16-exact tensors) and the sorting path agree.
    #[test]
    fn counting_path_matches_sorting_path() {
        let mut rng = Rng(31);
        let values: Vec<f32> = (0..3 * COUNTING_MIN)
            .map(|_| f16::from_f32((rng.below(40_000) as f32 - 20_000.0) * 3e-6).to_f32())
            .collect();
        assert!(f16_keys(&values).is_some());
        // One value that is not fp16-exact sends the whole tensor down the sorting path.
        let mut perturbed = values.clone();
        perturbed.push(1.0 + f32::EPSILON);
        assert!(f16_keys(&perturbed).is_none());
        for k in [1, 5, 16, 256] {
            check_consistent(&values, &kmeans_1d(&values, k), k);
            check_consistent(&perturbed, &kmeans_1d(&perturbed, k), k);
        }
        // The counting path's result equals the sorting path's on the same values.
        let sorted = sort_with_index(&values);
        let p = kmeans_1d(&values, 16);
        let mut uniq: Vec<f32> = Vec::new();
        let mut counts: Vec<u32> = Vec::new();
        for &e in &sorted {
            let v = key_to_f32((e >> 32) as u32);
            if uniq.last() == Some(&v) {
                *counts.last_mut().unwrap() += 1;
            } else {
                uniq.push(v);
                counts.push(1);
            }
        }
        let (lut, cluster_of_unique, sse) = cluster_unique(&uniq, &counts, 16);
        assert_eq!((p.lut.clone(), p.sse), (lut, sse));
        for &e in &sorted {
            let v = key_to_f32((e >> 32) as u32);
            let u = uniq.partition_point(|&x| x < v);
            assert_eq!(p.indices[(e & 0xffff_ffff) as usize], cluster_of_unique[u]);
        }
    }

    #[test]
    fn radix_sort_orders_like_total_order() {
        let mut rng = Rng(3);
        let mut values: Vec<f32> = (0..3000)
            .map(|_| f32::from_bits(rng.next() as u32 & 0xbfff_ffff))
            .collect();
        values.extend([
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-40,
        ]);
        let sorted = sort_with_index(&values);
        let keys: Vec<f32> = sorted
            .iter()
            .map(|&e| key_to_f32((e >> 32) as u32))
            .collect();
        let mut want: Vec<f32> = values.iter().map(|&v| v + 0.0).collect();
        want.sort_by(f32::total_cmp);
        assert_eq!(keys, want);
        for &e in &sorted {
            assert_eq!(
                values[(e & 0xffff_ffff) as usize] + 0.0,
                key_to_f32((e >> 32) as u32)
            );
        }
    }

    /// Sorted unique values with their summed weights.
    fn weighted_unique_with(values: &[f32], weights: &[f32]) -> Vec<(f64, f64)> {
        let mut u: Vec<(f32, f32)> = values
            .iter()
            .map(|&v| v + 0.0)
            .zip(weights.iter().copied())
            .collect();
        u.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut xs: Vec<(f64, f64)> = Vec::new();
        for (v, w) in u {
            match xs.last_mut() {
                Some(last) if last.0 == f64::from(v) => last.1 += f64::from(w),
                _ => xs.push((f64::from(v), f64::from(w))),
            }
        }
        xs
    }

    /// Least weighted error over every split of the unique values into at most `k` runs.
    fn brute_force_weighted(values: &[f32], weights: &[f32], k: usize) -> f64 {
        brute_force_pairs(&weighted_unique_with(values, weights), k)
    }

    /// Weighted error of `p` recomputed from its indices, and the structural checks of
    /// [`check_consistent`].
    fn check_weighted(values: &[f32], weights: &[f32], p: &Palette, k: usize) {
        assert!(p.lut.len() <= k);
        assert!(p.lut.iter().all(|c| c.is_finite()), "{:?}", p.lut);
        assert!(p.lut.windows(2).all(|w| w[0] < w[1]), "{:?}", p.lut);
        assert_eq!(p.indices.len(), values.len());
        let sse: f64 = values
            .iter()
            .zip(weights)
            .zip(&p.indices)
            .map(|((&v, &w), &i)| {
                f64::from(w) * (f64::from(v) - f64::from(p.lut[usize::from(i)])).powi(2)
            })
            .sum();
        assert!(
            (sse - p.sse).abs() <= 1e-12 * (1.0 + sse),
            "reported {} vs {sse}",
            p.sse
        );
        // Every element sits at its nearest entry.
        for (&v, &i) in values.iter().zip(&p.indices) {
            assert_eq!(usize::from(i), nearest(&p.lut, v), "{v} in {:?}", p.lut);
        }
    }

    /// Random weights spanning four orders of magnitude.
    fn random_weights(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| 10f32.powf(rng.below(4001) as f32 / 1000.0 - 2.0))
            .collect()
    }

    #[test]
    fn weighted_matches_brute_force_on_small_tensors() {
        let mut rng = Rng(0xdead_beef);
        for case in 0..300 {
            let len = 1 + rng.below(30) as usize;
            let levels = 1 + rng.below(14);
            let spread = [0.01f32, 1.0, 300.0][case % 3];
            let values: Vec<f32> = (0..len)
                .map(|_| (rng.below(levels) as f32 - 3.0) * spread + (rng.below(3) as f32) * 1e-3)
                .collect();
            let weights = random_weights(&mut rng, len);
            for k in 1..=6 {
                let p = kmeans_1d_weighted(&values, &weights, k);
                check_weighted(&values, &weights, &p, k);
                let best = brute_force_weighted(&values, &weights, k);
                let scale: f64 = values
                    .iter()
                    .zip(&weights)
                    .map(|(&v, &w)| f64::from(w) * f64::from(v) * f64::from(v))
                    .sum();
                let tol = 1e-9 * (1.0 + best) + 1e-12 * scale;
                assert!(
                    (p.sse - best).abs() <= tol,
                    "case {case} k {k}: got {} want {best} for {values:?} {weights:?}",
                    p.sse
                );
            }
        }
    }

    /// Weight `c` behaves like `c` copies of the value: same LUT, same index per element.
    #[test]
    fn integer_weights_equal_repeated_values() {
        let mut rng = Rng(0xfeed);
        for case in 0..60 {
            let len = 2 + rng.below([20, 300, 1500][case % 3]) as usize;
            // Irregular values (no exact ties between partitions), some repeated.
            let values: Vec<f32> = (0..len)
                .map(|_| (rng.below(1 + len as u64 / 2) as f32).sqrt() * 0.37 - 1.1)
                .collect();
            let counts: Vec<u32> = (0..len).map(|_| 1 + rng.below(5) as u32).collect();
            let weights: Vec<f32> = counts.iter().map(|&c| c as f32).collect();
            let mut repeated = Vec::new();
            let mut first_copy = Vec::new();
            for (&v, &c) in values.iter().zip(&counts) {
                first_copy.push(repeated.len());
                repeated.extend(std::iter::repeat_n(v, c as usize));
            }
            for k in [2usize, 5, 16, 40] {
                let w = kmeans_1d_weighted(&values, &weights, k);
                let r = kmeans_1d(&repeated, k);
                assert_eq!(w.lut, r.lut, "case {case} k {k}");
                for (e, &f) in first_copy.iter().enumerate() {
                    assert_eq!(w.indices[e], r.indices[f], "case {case} k {k} element {e}");
                }
                assert!((w.sse - r.sse).abs() <= 1e-12 * (1.0 + r.sse));
            }
        }
    }

    /// Prefix sums of random real weights over sorted unique values.
    fn weighted_prefix_of(values: &[f32], weights: &[f32]) -> (Prefix<f64>, usize) {
        let xs = weighted_unique_with(values, weights);
        let uniq: Vec<f32> = xs.iter().map(|p| p.0 as f32).collect();
        let w: Vec<f64> = xs.iter().map(|p| p.1).collect();
        (Prefix::new(&uniq, &w), xs.len())
    }

    #[test]
    fn weighted_lagrangian_matches_constrained_dp() {
        let mut rng = Rng(0xa11ce);
        let (mut answered, mut instances) = (0usize, 0usize);
        for case in 0..120 {
            let len = 2 + rng.below([60, 600, 3000][case % 3]) as usize;
            let values: Vec<f32> = match case % 2 {
                0 => (0..len)
                    .map(|_| {
                        let g = (rng.below(2001) as f32 - 1000.0) / 1000.0;
                        f16::from_f32(g * g * g).to_f32()
                    })
                    .collect(),
                _ => (0..len).map(|i| i as f32 * 0.5 - 7.0).collect(),
            };
            let weights = random_weights(&mut rng, len);
            let (p, n) = weighted_prefix_of(&values, &weights);
            for _ in 0..4 {
                let k = 2 + rng.below(150) as usize;
                if k >= n {
                    continue;
                }
                instances += 1;
                let want = starts_cost(&p, &constrained_starts(&p, n, k));
                if let Some(starts) = lagrange::Wqs::default().solve(&p, n, k) {
                    answered += 1;
                    assert_eq!(starts.len(), k + 1);
                    assert_eq!((starts[0], starts[k]), (0, n));
                    assert!(starts.windows(2).all(|s| s[0] < s[1]));
                    let got = starts_cost(&p, &starts);
                    assert!(
                        (got - want).abs() <= 1e-9 * want + 1e-12,
                        "case {case} n {n} k {k}: {got} vs {want}"
                    );
                }
            }
        }
        println!("weighted Lagrangian search answered {answered} of {instances}");
        // Random weights break the ties of equally spaced values: most take the fast path.
        assert!(answered * 10 >= instances * 9, "{answered} of {instances}");
    }

    /// The constrained DP (with the recursion and Knuth layers) on real weights against the
    /// O(k·n²) full-table reference.
    #[test]
    fn weighted_constrained_dp_matches_full_table() {
        let mut rng = Rng(777);
        for &(len, k) in &[(600usize, 40usize), (400, 9), (300, 120)] {
            let values: Vec<f32> = (0..len)
                .map(|_| (rng.below(100_000) as f32 / 1e5 - 0.5).powi(3))
                .collect();
            let weights = random_weights(&mut rng, len);
            let xs = weighted_unique_with(&values, &weights);
            let (p, n) = weighted_prefix_of(&values, &weights);
            let got = partition_sse(&xs, &constrained_starts(&p, n, k));
            let starts = full_table_starts(n, k, |i, j| p.cost(i, j));
            let want = partition_sse(&xs, &starts);
            assert!(
                (got - want).abs() <= 1e-9 * want + 1e-12,
                "len {len} k {k}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn weighted_is_deterministic() {
        let mut rng = Rng(8);
        let values: Vec<f32> = (0..20000)
            .map(|_| rng.below(5000) as f32 / 977.0 - 2.0)
            .collect();
        let weights = random_weights(&mut rng, values.len());
        let a = kmeans_1d_weighted(&values, &weights, 16);
        check_weighted(&values, &weights, &a, 16);
        for _ in 0..3 {
            assert_eq!(a, kmeans_1d_weighted(&values, &weights, 16));
        }
        let batch = kmeans_1d_weighted_batch(
            &[
                (&values, &weights),
                (&values[..7000], &weights[..7000]),
                (&values, &weights),
            ],
            16,
        );
        assert_eq!(batch[0], a);
        assert_eq!(batch[2], a);
        assert_eq!(
            batch[1],
            kmeans_1d_weighted(&values[..7000], &weights[..7000], 16)
        );
        // The weights matter: uniform weights give a different palette here.
        assert_ne!(a.lut, kmeans_1d(&values, 16).lut);
    }

    #[test]
    fn zero_weights() {
        let values = [0.0f32, 1.0, 10.0, 11.0, 20.0, 21.0];
        // All zero: the unweighted palette, with no weighted error.
        let p = kmeans_1d_weighted(&values, &[0.0; 6], 3);
        let q = kmeans_1d(&values, 3);
        assert_eq!((&p.lut, &p.indices, p.sse), (&q.lut, &q.indices, 0.0));

        // A cluster of zero-weight values only: its entry is their plain mean, and the weighted
        // error is exactly that of the positive values, all represented exactly.
        let weights = [0.0f32, 0.0, 1.0, 2.0, 3.0, 4.0];
        let p = kmeans_1d_weighted(&values, &weights, 5);
        check_weighted(&values, &weights, &p, 5);
        assert_eq!(p.lut, vec![0.5, 10.0, 11.0, 20.0, 21.0]);
        assert_eq!(p.sse, 0.0);

        // Zero-weight elements anywhere: they still get their nearest entry, and the error is
        // the optimum of the positive elements alone (up to the floor's pull).
        let mut rng = Rng(21);
        for case in 0..100 {
            let len = 2 + rng.below(25) as usize;
            let values: Vec<f32> = (0..len).map(|_| rng.below(40) as f32 * 0.25).collect();
            let mut weights = random_weights(&mut rng, len);
            for w in weights.iter_mut() {
                if rng.below(3) == 0 {
                    *w = 0.0;
                }
            }
            for k in 1..=5 {
                let p = kmeans_1d_weighted(&values, &weights, k);
                check_weighted(&values, &weights, &p, k);
                let (pv, pw): (Vec<f32>, Vec<f32>) =
                    values.iter().zip(&weights).filter(|p| *p.1 > 0.0).unzip();
                let best = brute_force_weighted(&pv, &pw, k);
                let total: f64 = pw.iter().map(|&w| f64::from(w)).sum();
                // The floor's bound: floor · (raised values) · (value range)², with the floor at
                // most WEIGHT_FLOOR · total.
                let slack = WEIGHT_FLOOR * total * len as f64 * 100.0;
                assert!(
                    p.sse >= best - 1e-9 * (1.0 + best) && p.sse <= best + slack + 1e-9,
                    "case {case} k {k}: got {} want {best}",
                    p.sse
                );
            }
        }
    }

    #[test]
    fn weighted_grouped_and_f16_lut() {
        let mut rng = Rng(55);
        let shape = [8usize, 3, 2, 2];
        let values: Vec<f32> = (0..96).map(|_| rng.below(1000) as f32 / 100.0).collect();
        let weights = random_weights(&mut rng, 96);
        let ps = palettize_grouped_weighted(&values, &weights, &shape, 2, 4);
        assert_eq!(ps.len(), 4);
        for (g, p) in ps.iter().enumerate() {
            let r = g * 24..(g + 1) * 24;
            assert_eq!(p, &kmeans_1d_weighted(&values[r.clone()], &weights[r], 4));
        }

        let values: Vec<f32> = (0..4096)
            .map(|_| f16::from_f32(rng.below(100_000) as f32 / 7e5 - 0.07).to_f32())
            .collect();
        let weights = random_weights(&mut rng, values.len());
        let p = kmeans_1d_weighted(&values, &weights, 16);
        let q = p.with_f16_lut_weighted(&values, &weights);
        assert!(q.lut.iter().all(|&c| f16::from_f32(c).to_f32() == c));
        check_weighted(&values, &weights, &q, 16);
        let rounded_same_indices: f64 = values
            .iter()
            .zip(&weights)
            .zip(&p.indices)
            .map(|((&v, &w), &i)| {
                f64::from(w) * (f64::from(v) - f64::from(q.lut[usize::from(i)])).powi(2)
            })
            .sum();
        assert!(q.sse <= rounded_same_indices);
        assert!(q.sse >= p.sse * 0.999);
    }
}
