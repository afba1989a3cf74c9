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
//! of everything)` and `(n, 0)`) and evaluates the penalty equal to the slope between them (a
//! Newton / Eisner–Severance step): either the answer has exactly `k` clusters (done), or it is a
//! new hull vertex strictly below the chord that replaces one bracket, or the chord is a hull edge
//! and `k` sits strictly inside it (a breakpoint where several cluster counts tie). The caller
//! falls back to the constrained DP in the last case and when the iteration cap is hit.

use super::Prefix;

/// Cap on penalised DP evaluations before giving up (the search normally needs far fewer).
const MAX_ITERATIONS: usize = 64;

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
    pub(super) fn solve(&mut self, p: &Prefix, n: usize, k: usize) -> Option<Vec<usize>> {
        debug_assert!(1 < k && k < n);
        let total = p.cost(0, n);
        // Bracketing hull points (clusters, error).
        let (mut lo_c, mut lo_e) = (1usize, total);
        let (mut hi_c, mut hi_e) = (n, 0.0f64);
        // Alternates between model steps (fast when the model fits) and chord steps (which
        // guarantee progress or detect a breakpoint).
        let mut model_step = true;
        let (mut last, mut before) = ((1usize, total), None);
        for _ in 0..MAX_ITERATIONS {
            let chord_slope = (lo_e - hi_e) / (hi_c - lo_c) as f64;
            let lambda = if model_step {
                model_lambda(last, before, k).unwrap_or(chord_slope)
            } else {
                chord_slope
            };
            let (c, f) = self.penalised(p, n, lambda);
            if c == k {
                return Some(self.starts(n, k));
            }
            let e = f - lambda * c as f64;
            if !e.is_finite() {
                return None;
            }
            if c != last.0 {
                (before, last) = (Some(last), (c, e));
            }
            let inside = lo_c < c && c < hi_c;
            if model_step {
                if inside {
                    if c < k {
                        (lo_c, lo_e) = (c, e);
                    } else {
                        (hi_c, hi_e) = (c, e);
                    }
                } else {
                    model_step = false;
                }
                continue;
            }
            // The chord through both brackets has value lo_e + λ·lo_c at this λ; a point on or
            // above it means the chord is a hull edge.
            let chord = lo_e + lambda * lo_c as f64;
            if !inside || f >= chord - 1e-13 * chord.abs() {
                return None;
            }
            if c < k {
                (lo_c, lo_e) = (c, e);
            } else {
                (hi_c, hi_e) = (c, e);
            }
            model_step = true;
        }
        None
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
    fn penalised(&mut self, p: &Prefix, n: usize, lambda: f64) -> (usize, f64) {
        let (w, s1, s2, recip) = (&p.w[..=n], &p.s1[..=n], &p.s2[..=n], &p.recip[..]);
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
                base[i] - d * d * recip[(w[j] - w[i]) as usize]
            }};
        }
        // The same with a division: the binary search jumps far, where the reciprocal table
        // (as long as the tensor) would miss the cache.
        macro_rules! g_div {
            ($i:expr, $j:expr) => {{
                let (i, j) = ($i, $j);
                let d = s1[j] - s1[i];
                base[i] - d * d / f64::from(w[j] - w[i])
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
