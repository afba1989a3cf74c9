//! Least-squares palette refit: once every weight's table entry is fixed, a layer's output is
//! linear in the table, so the table that minimises the output error on the calibration inputs
//! solves a `k × k` linear system.
//!
//! For rows `w_o` with assignment matrices `A_o` (`A_o[j][c] = 1` when column `j` uses entry
//! `c`) and patch Gram matrix `H`, the error `Σ_o (A_o l − w_o)ᵀ H (A_o l − w_o)` is minimal at
//! `(Σ_o A_oᵀ H A_o) l = Σ_o A_oᵀ H w_o`. With `H = I` this is each entry's cluster mean, the
//! k-means update; with real `H` the entries also account for how their errors combine.

use super::cholesky::solve;

/// Ridge towards the current table, relative to the system's mean diagonal: an entry no weight
/// uses (or that only dead inputs use) keeps its value instead of making the system singular.
const RIDGE: f64 = 1e-9;

/// The table minimising the output error of `rows × d` weights `w` whose entries are fixed by
/// `codes` (indices into `lut`), or `lut` unchanged if the system cannot be solved.
pub fn refit_lut(w: &[f32], codes: &[u16], d: usize, gram: &[f64], lut: &[f32]) -> Vec<f32> {
    let k = lut.len();
    assert_eq!(w.len(), codes.len(), "a code per weight");
    assert_eq!(gram.len(), d * d, "the Gram matrix is not d × d");
    let mut m = vec![0f64; k * k];
    let mut r = vec![0f64; k];
    // Per row: s[j][c] = Σ_{i : code i = c} H[j][i], then M[code j][c] += s[j][c].
    let mut s = vec![0f64; d * k];
    for (wr, cr) in w.chunks_exact(d).zip(codes.chunks_exact(d)) {
        s.fill(0.0);
        for j in 0..d {
            let hj = &gram[j * d..(j + 1) * d];
            let sj = &mut s[j * k..(j + 1) * k];
            let mut hw = 0.0;
            for i in 0..d {
                sj[usize::from(cr[i])] += hj[i];
                hw += hj[i] * f64::from(wr[i]);
            }
            let cj = usize::from(cr[j]);
            r[cj] += hw;
            for (mc, sc) in m[cj * k..(cj + 1) * k].iter_mut().zip(sj.iter()) {
                *mc += sc;
            }
        }
    }
    let mean_diag = (0..k).map(|c| m[c * k + c]).sum::<f64>() / k.max(1) as f64;
    if !(mean_diag.is_finite() && mean_diag > 0.0) {
        return lut.to_vec();
    }
    let ridge = RIDGE * mean_diag;
    for c in 0..k {
        m[c * k + c] += ridge;
        r[c] += ridge * f64::from(lut[c]);
    }
    match solve(&m, &r, k) {
        Some(l) if l.iter().all(|v| v.is_finite()) => l.iter().map(|&v| v as f32).collect(),
        _ => lut.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::feedback::output_error;

    #[test]
    fn identity_gram_gives_cluster_means() {
        let (d, lut) = (4, vec![0.0f32, 1.0]);
        let w = vec![0.1f32, 0.3, 0.8, 1.2, -0.1, 0.0, 0.9, 1.0];
        let codes: Vec<u16> = vec![0, 0, 1, 1, 0, 0, 1, 1];
        let mut h = vec![0f64; d * d];
        for i in 0..d {
            h[i * d + i] = 1.0;
        }
        let l = refit_lut(&w, &codes, d, &h, &lut);
        assert!(
            (l[0] - 0.075).abs() < 1e-6 && (l[1] - 0.975).abs() < 1e-6,
            "{l:?}"
        );
    }

    #[test]
    fn refit_never_raises_the_output_error() {
        let d = 6;
        let mut h = vec![0f64; d * d];
        for i in 0..d {
            for j in 0..d {
                h[i * d + j] = 0.8f64.powi((i as i32 - j as i32).abs()) * (1.0 + i as f64);
            }
        }
        // Symmetrise.
        for i in 0..d {
            for j in 0..i {
                let v = (h[i * d + j] + h[j * d + i]) / 2.0;
                h[i * d + j] = v;
                h[j * d + i] = v;
            }
        }
        let w: Vec<f32> = (0..18)
            .map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let lut = vec![-0.75f32, 0.0, 0.75];
        let codes: Vec<u16> = w
            .iter()
            .map(|&v| {
                (0..3)
                    .min_by(|&a, &b| (lut[a] - v).abs().total_cmp(&(lut[b] - v).abs()))
                    .unwrap() as u16
            })
            .collect();
        let apply = |l: &[f32]| codes.iter().map(|&c| l[usize::from(c)]).collect::<Vec<_>>();
        let l = refit_lut(&w, &codes, d, &h, &lut);
        let (before, after) = (
            output_error(&w, &apply(&lut), d, &h),
            output_error(&w, &apply(&l), d, &h),
        );
        assert!(after < before, "{after} vs {before}");
        // Optimal: nudging any entry raises the error.
        for c in 0..3 {
            for step in [-1e-3f32, 1e-3] {
                let mut n = l.clone();
                n[c] += step;
                assert!(output_error(&w, &apply(&n), d, &h) >= after);
            }
        }
    }
}
