//! The exact solver: prefix sums over the unique values, the Lagrangian search, and the
//! constrained DP with its checkpoint recursion (see the module doc of `kmeans`).

use super::lagrange;
use super::weight::{LargeCount, Weight};
use super::CHECKPOINTS;

/// Minimum candidates scanned per row in Knuth layers (see [`Layer::knuth`]).
const KNUTH_SPAN: usize = 4;

/// Largest element count for which the solver divides through a table of reciprocals (2 MiB):
/// past it, building the table costs more than it saves ([`LargeCount`]).
pub(super) const RECIP_TABLE_MAX: u64 = 1 << 18;

/// [`cluster_unique`] of element counts, through the reciprocal table where it pays. Both ways
/// give the same bits.
pub(super) fn cluster_counts(uniq: &[f32], counts: &[u32], k: usize) -> (Vec<f32>, Vec<u16>, f64) {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if total <= RECIP_TABLE_MAX {
        return cluster_unique(uniq, counts, k);
    }
    let counts: Vec<LargeCount> = counts.iter().map(|&c| LargeCount(c)).collect();
    cluster_unique(uniq, &counts, k)
}

/// Optimal LUT of the sorted unique values `uniq` with element `counts`, the cluster of each
/// unique value, and the squared error (in f64, against the f32 LUT).
pub(super) fn cluster_unique<W: Weight>(
    uniq: &[f32],
    counts: &[W],
    k: usize,
) -> (Vec<f32>, Vec<u16>, f64) {
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

/// Prefix sums over the unique values: index `j` covers unique values `0..j`.
pub(super) struct Prefix<W> {
    /// Element counts (exact integers) or summed real weights.
    pub(super) w: Vec<W>,
    pub(super) s1: Vec<f64>,
    pub(super) s2: Vec<f64>,
    /// `recip[t] = 1 / t` for counts: cluster weights are integers up to the element count, so
    /// a table lookup replaces the division in the hot loop (a multiply is several times
    /// cheaper). Empty for real weights.
    pub(super) recip: Vec<f64>,
}

impl<W: Weight> Prefix<W> {
    pub(super) fn new(uniq: &[f32], counts: &[W]) -> Prefix<W> {
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
    pub(super) fn cost(&self, i: usize, j: usize) -> f64 {
        let d = self.s1[j] - self.s1[i];
        (self.s2[j] - self.s2[i]) - W::quotient(d * d, &self.recip, self.w[j], self.w[i])
    }
}

/// Starts of the `k` clusters of an optimal partition of the `n` unique values (`k < n`),
/// followed by `n`: the Lagrangian search when it lands on `k`, else the constrained DP.
pub(super) fn optimal_starts<W: Weight>(p: &Prefix<W>, n: usize, k: usize) -> Vec<usize> {
    if k > 1 {
        if let Some(starts) = lagrange::Wqs::default().solve(p, n, k) {
            return starts;
        }
    }
    constrained_starts(p, n, k)
}

/// [`optimal_starts`] by the constrained DP alone.
pub(super) fn constrained_starts<W: Weight>(p: &Prefix<W>, n: usize, k: usize) -> Vec<usize> {
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
