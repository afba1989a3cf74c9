//! Rounding with error feedback (GPTQ: Frantar et al., "Optimal Brain Compression" and
//! "GPTQ", 2022): the weights of a row are rounded one column at a time, and each rounding
//! error is absorbed by the columns not yet rounded so that the row's *output* on the
//! calibration inputs moves as little as possible.
//!
//! For a row `w` and patch Gram matrix `H = E[p pᵀ]` the output error is `ΔWᵀ H ΔW`. After
//! rounding column `i`, the least-squares update of the remaining columns is
//! `w[i+1..] -= (w[i] - q[i]) / U[i][i] · U[i][i+1..]`, with `U` the upper Cholesky factor of
//! `H⁻¹`. Columns go in order of decreasing `H[i][i]` (the inputs with the most energy first,
//! while the most columns remain to absorb their error: "act order"). A diagonal `H` has no
//! correlations to exploit and gives plain nearest rounding.
//!
//! Any grid works (a palette, an int8 scale per row or per block): the caller's `round` maps a
//! value at `(row, column)` to a code and the value the code stands for.

use super::cholesky::inverse_upper_factor;

/// Added to the Gram diagonal, relative to its mean: keeps `H` invertible when the samples do
/// not span every direction (fewer positions than columns, or dead inputs), as GPTQ does.
pub const DAMPING: f64 = 0.01;

/// The factorisation of one layer's damped Gram matrix, column order included: computed once,
/// used for every rounding of the layer's weights (each palette refit rounds again).
pub struct Feedback {
    d: usize,
    /// Columns in the order they are rounded.
    order: Vec<usize>,
    /// Upper Cholesky factor of the permuted, damped `H⁻¹`.
    u: Vec<f64>,
}

impl Feedback {
    /// `None` if the damped `d × d` Gram matrix cannot be factored (non-finite input).
    pub fn new(gram: &[f64], d: usize) -> Option<Feedback> {
        assert_eq!(gram.len(), d * d, "the Gram matrix is not d × d");
        let diag: Vec<f64> = (0..d).map(|i| gram[i * d + i]).collect();
        let mean = diag.iter().sum::<f64>() / d.max(1) as f64;
        if !mean.is_finite() {
            return None;
        }
        // Inputs that are always zero: their weights are free; rounding them plainly is as good
        // as anything, and a unit diagonal keeps them out of the others' way.
        let damp = if mean > 0.0 { DAMPING * mean } else { 1.0 };
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]).then(a.cmp(&b)));
        let mut h = vec![0f64; d * d];
        for (pi, &i) in order.iter().enumerate() {
            for (pj, &j) in order.iter().enumerate() {
                h[pi * d + pj] = gram[i * d + j];
            }
            if diag[i] <= 0.0 {
                h[pi * d + pi] = 1.0;
            }
            h[pi * d + pi] += damp;
        }
        let u = inverse_upper_factor(&h, d)?;
        Some(Feedback { d, order, u })
    }

    /// Codes of the `rows × d` row-major weights `w` rounded with error feedback;
    /// `round(row, column, value)` gives a value's code and its reconstruction.
    pub fn round(&self, w: &[f32], round: impl Fn(usize, usize, f64) -> (u32, f64)) -> Vec<u32> {
        let d = self.d;
        assert_eq!(w.len() % d.max(1), 0, "weights are not rows × d");
        let rows = w.len() / d.max(1);
        let (order, u) = (&self.order, &self.u);
        let mut codes = vec![0u32; rows * d];
        let mut row = vec![0f64; d];
        for r in 0..rows {
            for (p, &i) in order.iter().enumerate() {
                row[p] = f64::from(w[r * d + i]);
            }
            for p in 0..d {
                let (code, q) = round(r, order[p], row[p]);
                codes[r * d + order[p]] = code;
                let err = (row[p] - q) / u[p * d + p];
                let up = &u[p * d + p + 1..(p + 1) * d];
                for (x, &c) in row[p + 1..].iter_mut().zip(up) {
                    *x -= err * c;
                }
            }
        }
        codes
    }
}

/// [`Feedback::round`] of the `rows × d` weights `w` through `gram`, factored for this call.
pub fn round_with_feedback(
    w: &[f32],
    rows: usize,
    d: usize,
    gram: &[f64],
    round: impl Fn(usize, usize, f64) -> (u32, f64),
) -> Option<Vec<u32>> {
    assert_eq!(w.len(), rows * d, "weights are not rows × d");
    Some(Feedback::new(gram, d)?.round(w, round))
}

/// `Σ_rows ΔWᵀ H ΔW`: the mean squared output error of replacing `w` by `q`.
pub fn output_error(w: &[f32], q: &[f32], d: usize, gram: &[f64]) -> f64 {
    let rows = w.len() / d.max(1);
    let delta: Vec<f64> = w
        .iter()
        .zip(q)
        .map(|(&a, &b)| f64::from(b) - f64::from(a))
        .collect();
    // ΔH for all rows in one product, then the row-wise dot with Δ.
    let mut dh = vec![0f64; rows * d];
    // SAFETY: the pointers cover rows × d, d × d and rows × d row-major matrices, as the
    // dimensions and strides say.
    unsafe {
        matrixmultiply::dgemm(
            rows,
            d,
            d,
            1.0,
            delta.as_ptr(),
            d as isize,
            1,
            gram.as_ptr(),
            d as isize,
            1,
            0.0,
            dh.as_mut_ptr(),
            d as isize,
            1,
        );
    }
    delta.iter().zip(&dh).map(|(a, b)| a * b).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Patches with strongly correlated neighbours (a smooth signal), as images give.
    fn correlated_gram(d: usize) -> Vec<f64> {
        // Correlation 0.9^|i-j| scaled by sqrt(s_i s_j), so it stays symmetric.
        let mut g = vec![0f64; d * d];
        let s: Vec<f64> = (0..d).map(|i| 1.0 + (i % 3) as f64).collect();
        for i in 0..d {
            for j in 0..d {
                g[i * d + j] = 0.9f64.powi((i as i32 - j as i32).abs()) * (s[i] * s[j]).sqrt();
            }
        }
        g
    }

    fn weights(rows: usize, d: usize) -> Vec<f32> {
        (0..rows * d)
            .map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    }

    fn grid(step: f64) -> impl Fn(usize, usize, f64) -> (u32, f64) {
        move |_, _, v| {
            let c = (v / step).round().clamp(-8.0, 7.0);
            ((c + 8.0) as u32, c * step)
        }
    }

    fn values(codes: &[u32], step: f64) -> Vec<f32> {
        codes
            .iter()
            .map(|&c| ((c as f64 - 8.0) * step) as f32)
            .collect()
    }

    #[test]
    fn feedback_beats_nearest_rounding_on_correlated_inputs() {
        let (rows, d, step) = (16, 24, 0.1);
        let (w, h) = (weights(rows, d), correlated_gram(d));
        let g = grid(step);
        let nearest: Vec<u32> = w.iter().map(|&v| g(0, 0, f64::from(v)).0).collect();
        let fed = round_with_feedback(&w, rows, d, &h, grid(step)).unwrap();
        let (e_near, e_fed) = (
            output_error(&w, &values(&nearest, step), d, &h),
            output_error(&w, &values(&fed, step), d, &h),
        );
        assert!(e_fed < 0.8 * e_near, "feedback {e_fed} vs nearest {e_near}");
        // Deterministic.
        assert_eq!(
            fed,
            round_with_feedback(&w, rows, d, &h, grid(step)).unwrap()
        );
    }

    #[test]
    fn a_diagonal_gram_gives_nearest_rounding() {
        let (rows, d, step) = (4, 10, 0.1);
        let w = weights(rows, d);
        let mut h = vec![0f64; d * d];
        for i in 0..d {
            h[i * d + i] = 1.0 + i as f64;
        }
        // A dead input (diagonal 0) is rounded plainly too.
        h[3 * d + 3] = 0.0;
        let g = grid(step);
        let nearest: Vec<u32> = w.iter().map(|&v| g(0, 0, f64::from(v)).0).collect();
        assert_eq!(
            round_with_feedback(&w, rows, d, &h, grid(step)).unwrap(),
            nearest
        );
    }
}
