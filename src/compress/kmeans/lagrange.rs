//! Lagrangian relaxation ("WQS binary search", "aliens trick") of the exact-`k` problem.
//!
//! Charging a penalty `λ` per cluster and dropping the cluster-count constraint gives the
//! one-dimensional DP `F(j) = min_{i<j} F(i) + cost(i, j) + λ`. `cost` satisfies the quadrangle
//! inequality, so for any two candidates `i1 < i2` the set of rows where `i2` beats `i1` is a
//! suffix: a deque of candidates with the row where each takes over (found by binary search)
//! solves the DP in O(n log n) time and O(n) memory, independently of `k`.
//!
//! `OPT(c)`, the least error with exactly `c` clusters, is convex in `c`. A penalised optimum with
//! `c` clusters and error `E` is a vertex `(c, E)` of the lower convex hull of `OPT`, and it is an
//! optimal `c`-clustering. The search keeps two hull points bracketing `k` (initially `(1, cost
//! of everything)` and `(n, 0)`). Until both brackets come from computed points it takes
//! power-law steps (`λ ∝ c^-3`, the high-resolution law, from the last point); then it
//! evaluates the penalty equal to the slope between the brackets (a Newton / Eisner–Severance
//! step): either the answer has exactly `k` clusters (done), or it is a new hull vertex strictly
//! below the chord that replaces one bracket, or the chord is a hull edge and `k` sits strictly
//! inside it (a breakpoint where several cluster counts tie). The caller falls back to the
//! constrained DP in the last case and when the iteration cap is hit.
//!
//! The first penalty comes from the same problem with boundaries allowed only at every
//! `STRIDE`-th unique value (recursively seeded the same way while the coarse problem keeps
//! enough positions per cluster): on the TAEF2 weights with k = 16 the full-size search then
//! needs 1.05 penalised DPs per tensor instead of 3.2, and all levels together cost about 1.5
//! full-size DPs.

use super::dp::Prefix;
use super::weight::Weight;

/// Cap on penalised DP evaluations before giving up (the search normally needs far fewer).
const MAX_ITERATIONS: usize = 64;

/// Coarsening factor of the seed levels (see [`Wqs::seed`]).
const STRIDE: usize = 4;

/// A coarse level is used only if it keeps at least this many positions per cluster.
const MIN_POSITIONS_PER_CLUSTER: usize = 16;

/// Prefix sums at the allowed cluster boundaries: position `j` covers unique values
/// `0..pos(j)` of the full problem (every unique value at the finest level, every `STRIDE`-th
/// one level up, …), so costs between positions are exact costs of the real values.
struct Sums<'a, W> {
    w: &'a [W],
    s1: &'a [f64],
    s2: &'a [f64],
    recip: &'a [f64],
}

impl<W: Weight> Sums<'_, W> {
    fn cost(&self, i: usize, j: usize) -> f64 {
        let d = self.s1[j] - self.s1[i];
        (self.s2[j] - self.s2[i]) - W::quotient(d * d, self.recip, self.w[j], self.w[i])
    }
}

/// Reusable buffers of the penalised DP.
#[derive(Default)]
pub(super) struct Wqs {
    /// `F(i) - s2[i]`.
    base: Vec<f64>,
    count: Vec<u32>,
    parent: Vec<u32>,
    /// Candidate and the first row where it is the best candidate, in deque order.
    deque: Vec<(u32, u32)>,
}

/// Penalty at which a model `OPT(c) ≈ A·c^-α` of the error curve has its optimum at `k`
/// clusters: `OPT(k-½) - OPT(k+½)`. The model goes through the last point `a` and, when `b`
/// (the point before) is usable, through `b` too (a secant step in log-log space); otherwise
/// `α = 2`, the high-resolution quantisation law.
fn model_lambda(a: (usize, f64), b: Option<(usize, f64)>, k: usize) -> Option<f64> {
    let alpha = match b {
        Some(b) if b.0 != a.0 && b.1 > 0.0 && a.1 > 0.0 && b.1 != a.1 => {
            (b.1 / a.1).ln() / (a.0 as f64 / b.0 as f64).ln()
        }
        _ => 2.0,
    };
    let alpha = alpha.clamp(0.5, 8.0);
    let scale = a.1 * (a.0 as f64).powf(alpha);
    let kf = k as f64;
    let lambda = scale * ((kf - 0.5).powf(-alpha) - (kf + 0.5).powf(-alpha));
    (lambda.is_finite() && lambda > 0.0).then_some(lambda)
}

impl Wqs {
    /// Optimal starts of clusters `0..k` of the `n` unique values plus `n`, if the Lagrangian
    /// search lands exactly on `k` clusters; `None` at a breakpoint (or if the search stalls).
    pub(super) fn solve<W: Weight>(
        &mut self,
        p: &Prefix<W>,
        n: usize,
        k: usize,
    ) -> Option<Vec<usize>> {
        debug_assert!(1 < k && k < n);
        let fine = Sums {
            w: &p.w,
            s1: &p.s1,
            s2: &p.s2,
            recip: &p.recip,
        };
        let seed = self.seed(&fine, n, k);
        self.search(&fine, n, k, seed).ok()?;
        Some(self.starts(n, k))
    }

    /// A penalty likely to give `k` clusters on `v`: the one that gives `k` clusters when
    /// boundaries may only fall on every `STRIDE`-th position (itself seeded the same way). The
    /// error curve of the coarse problem is close to the fine one, so the fine search mostly
    /// needs one or two penalised DPs instead of three to eight, for about a third of one in
    /// coarse work. `None` if the coarse level would be too coarse for `k` clusters.
    fn seed<W: Weight>(&mut self, v: &Sums<W>, n: usize, k: usize) -> Option<f64> {
        let cn = n.div_ceil(STRIDE);
        if cn < MIN_POSITIONS_PER_CLUSTER * k {
            return None;
        }
        let pos = |t: usize| (t * STRIDE).min(n);
        let w: Vec<W> = (0..=cn).map(|t| v.w[pos(t)]).collect();
        let s1: Vec<f64> = (0..=cn).map(|t| v.s1[pos(t)]).collect();
        let s2: Vec<f64> = (0..=cn).map(|t| v.s2[pos(t)]).collect();
        let coarse = Sums {
            w: &w,
            s1: &s1,
            s2: &s2,
            recip: v.recip,
        };
        let seed = self.seed(&coarse, cn, k);
        Some(match self.search(&coarse, cn, k, seed) {
            Ok(lambda) | Err(lambda) => lambda,
        })
    }

    /// Searches for a penalty whose penalised optimum of `v` has exactly `k` clusters, starting
    /// with `seed` if given. `Ok(λ)` leaves that optimum's parents in `self.parent`; `Err(λ)` is
    /// the best guess at a breakpoint or when the search stalls.
    fn search<W: Weight>(
        &mut self,
        v: &Sums<W>,
        n: usize,
        k: usize,
        seed: Option<f64>,
    ) -> Result<f64, f64> {
        let total = v.cost(0, n);
        // Bracketing hull points (clusters, error), and whether each came from a penalised DP
        // (rather than being the trivial end (1, total) or (n, 0)).
        let (mut lo_c, mut lo_e, mut lo_seen) = (1usize, total, false);
        let (mut hi_c, mut hi_e, mut hi_seen) = (n, 0.0f64, false);
        let mut lambda = seed
            .or_else(|| model_lambda((1, total), None, k))
            .unwrap_or(total / (n - 1) as f64);
        for _ in 0..MAX_ITERATIONS {
            // Chord steps once `k` is bracketed by computed points (they guarantee progress or
            // detect a breakpoint); before that, power-law steps from the last point.
            let chord_step = lo_seen && hi_seen;
            let (c, f) = self.penalised(v, n, lambda);
            if c == k {
                return Ok(lambda);
            }
            let e = f - lambda * c as f64;
            if !e.is_finite() {
                return Err(lambda);
            }
            let inside = lo_c < c && c < hi_c;
            if chord_step {
                // The chord through both brackets has value lo_e + λ·lo_c at this λ; a point on
                // or above it means the chord is a hull edge.
                let chord = lo_e + lambda * lo_c as f64;
                if !inside || f >= chord - 1e-13 * chord.abs() {
                    return Err(lambda);
                }
            }
            if c < k && c >= lo_c {
                (lo_c, lo_e, lo_seen) = (c, e, true);
            } else if c > k && c <= hi_c {
                (hi_c, hi_e, hi_seen) = (c, e, true);
            }
            lambda = if lo_seen && hi_seen {
                (lo_e - hi_e) / (hi_c - lo_c) as f64
            } else {
                // λ(c) ~ c^-3 (error ~ c^-2, the high-resolution law), between interval centres.
                lambda * ((c as f64 + 0.5) / (k as f64 + 0.5)).powi(3)
            };
        }
        Err((lo_e - hi_e) / (hi_c - lo_c) as f64)
    }

    fn starts(&self, n: usize, k: usize) -> Vec<usize> {
        let mut starts = vec![0usize; k + 1];
        let mut j = n;
        for s in starts.iter_mut().rev() {
            *s = j;
            if j > 0 {
                j = self.parent[j] as usize;
            }
        }
        debug_assert_eq!(j, 0);
        debug_assert_eq!(starts[0], 0);
        starts
    }

    /// Solves `F(j) = min_i F(i) + cost(i, j) + λ` for `j` up to `n`; returns the cluster count
    /// and value of `F(n)`.
    fn penalised<W: Weight>(&mut self, v: &Sums<W>, n: usize, lambda: f64) -> (usize, f64) {
        let (w, s1, s2, recip) = (&v.w[..=n], &v.s1[..=n], &v.s2[..=n], v.recip);
        self.base.clear();
        self.base.resize(n + 1, 0.0);
        self.count.clear();
        self.count.resize(n + 1, 0);
        self.parent.clear();
        self.parent.resize(n + 1, 0);
        let base = &mut self.base;
        let dq = &mut self.deque;
        dq.clear();
        let mut head = 0usize;
        // g(i, j) = F(i) + cost(i, j) - s2[j] (the part that differs between candidates).
        macro_rules! g {
            ($i:expr, $j:expr) => {{
                let (i, j) = ($i, $j);
                let d = s1[j] - s1[i];
                base[i] - W::quotient(d * d, recip, w[j], w[i])
            }};
        }
        // The same with a division: the binary search jumps far, where the reciprocal table
        // (as long as the tensor) would miss the cache.
        macro_rules! g_div {
            ($i:expr, $j:expr) => {{
                let (i, j) = ($i, $j);
                let d = s1[j] - s1[i];
                base[i] - W::quotient_div(d * d, w[j], w[i])
            }};
        }
        let mut f_last = 0.0;
        for j in 1..=n {
            // Candidate i = j - 1 becomes available.
            let i = j - 1;
            loop {
                if dq.len() == head {
                    dq.push((i as u32, j as u32));
                    break;
                }
                let (b, sb) = *dq.last().unwrap();
                let b = b as usize;
                let pos = (sb as usize).max(j);
                if g!(i, pos) < g!(b, pos) {
                    dq.pop();
                    continue;
                }
                // First row after pos where i beats b (if any).
                let (mut lo, mut hi) = (pos, n + 1);
                while hi - lo > 1 {
                    let mid = (lo + hi) / 2;
                    let better = g_div!(i, mid) < g_div!(b, mid);
                    hi = if better { mid } else { hi };
                    lo = if better { lo } else { mid };
                }
                if hi <= n {
                    dq.push((i as u32, hi as u32));
                }
                break;
            }
            while head + 1 < dq.len() && dq[head + 1].1 as usize <= j {
                head += 1;
            }
            let i = dq[head].0 as usize;
            let fj = g!(i, j) + s2[j] + lambda;
            base[j] = fj - s2[j];
            self.count[j] = self.count[i] + 1;
            self.parent[j] = i as u32;
            f_last = fj;
        }
        (self.count[n] as usize, f_last)
    }
}
