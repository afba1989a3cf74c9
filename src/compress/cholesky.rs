//! Dense symmetric positive-definite algebra in f64 for the calibration statistics: the
//! systems are small (a patch Gram matrix, at most a few thousand rows; a palette's normal
//! equations, at most 256), so a plain Cholesky factorisation is all they need and a linear
//! algebra crate would be a large dependency for three loops.

/// Lower-triangular `L` with `a = L Lᵀ` (row-major `n × n`, upper part zero), or `None` if `a`
/// is not (numerically) positive definite.
pub fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    debug_assert_eq!(a.len(), n * n);
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let (ri, rj) = (&l[i * n..i * n + j], &l[j * n..j * n + j]);
            let dot: f64 = ri.iter().zip(rj).map(|(x, y)| x * y).sum();
            let v = a[i * n + j] - dot;
            if i == j {
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i * n + i] = v.sqrt();
            } else {
                l[i * n + j] = v / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Solves `a x = b` for symmetric positive-definite `a` (`None` if it is not).
pub fn solve(a: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let l = cholesky(a, n)?;
    // L y = b, then Lᵀ x = y.
    let mut y = b.to_vec();
    for i in 0..n {
        let dot: f64 = (0..i).map(|k| l[i * n + k] * y[k]).sum();
        y[i] = (y[i] - dot) / l[i * n + i];
    }
    for i in (0..n).rev() {
        let dot: f64 = (i + 1..n).map(|k| l[k * n + i] * y[k]).sum();
        y[i] = (y[i] - dot) / l[i * n + i];
    }
    Some(y)
}

/// The upper-triangular `U` with `a⁻¹ = Uᵀ U` (row-major), the factor error feedback walks
/// (row `i` of `U`, scaled by `1 / U[i][i]`, is how an error in column `i` is best absorbed by
/// the columns after it). `None` if `a` is not positive definite.
///
/// Without forming `a⁻¹`: with `J` the order reversal, `J a J = L Lᵀ` gives `a = V Vᵀ` for the
/// upper-triangular `V = J L J`, so `a⁻¹ = V⁻ᵀ V⁻¹` and `U = V⁻¹ = J L⁻¹ J`: one Cholesky
/// factorisation and one triangular inverse.
pub fn inverse_upper_factor(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut rev = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            rev[i * n + j] = a[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    let l = cholesky(&rev, n)?;
    // X = L⁻¹ by forward substitution on the identity, a row at a time: row i is e_i minus
    // the earlier rows it combines, each a contiguous axpy over columns 0..=k.
    let mut x = vec![0f64; n * n];
    for i in 0..n {
        let (done, rest) = x.split_at_mut(i * n);
        let xi = &mut rest[..n];
        xi[i] = 1.0;
        for k in 0..i {
            let c = l[i * n + k];
            if c != 0.0 {
                for (t, &v) in xi[..=k].iter_mut().zip(&done[k * n..k * n + k + 1]) {
                    *t -= c * v;
                }
            }
        }
        let inv = 1.0 / l[i * n + i];
        xi[..=i].iter_mut().for_each(|t| *t *= inv);
    }
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = x[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    Some(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize) -> Vec<f64> {
        // B Bᵀ + I for a fixed pseudo-random B.
        let b: Vec<f64> = (0..n * n)
            .map(|i| ((i * 7919 + 13) % 101) as f64 / 50.0 - 1.0)
            .collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        a
    }

    #[test]
    fn factors_reconstruct_and_solve() {
        let n = 7;
        let a = spd(n);
        let l = cholesky(&a, n).unwrap();
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..n).map(|k| l[i * n + k] * l[j * n + k]).sum();
                assert!((v - a[i * n + j]).abs() < 1e-9);
            }
        }
        let x: Vec<f64> = (0..n).map(|i| i as f64 - 3.0).collect();
        let b: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|k| a[i * n + k] * x[k]).sum())
            .collect();
        for (got, want) in solve(&a, &b, n).unwrap().iter().zip(&x) {
            assert!((got - want).abs() < 1e-9);
        }
        // Uᵀ U a = I.
        let u = inverse_upper_factor(&a, n).unwrap();
        for i in 0..n {
            for j in 0..n {
                let inv_ij =
                    |i: usize, j: usize| (0..n).map(|k| u[k * n + i] * u[k * n + j]).sum::<f64>();
                let v: f64 = (0..n).map(|k| inv_ij(i, k) * a[k * n + j]).sum();
                assert!(
                    (v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9,
                    "{i},{j}: {v}"
                );
                if j < i {
                    assert_eq!(u[i * n + j], 0.0);
                }
            }
        }
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
    }
}
