//! Scalar special functions and activations, for use with `map`.
//!
//! `erf` comes from the `libm` crate (a port of musl's, within about 1 ulp) rather than a short
//! polynomial, so GELU matches PyTorch's to f32 rounding.

/// The error function.
pub fn erf(x: f32) -> f32 {
    libm::erff(x)
}

/// GELU with the exact Gaussian CDF, PyTorch's default: `x · Φ(x)`.
pub fn gelu_erf(x: f32) -> f32 {
    // Φ(x) = erfc(-x/√2)/2 rather than (1 + erf(x/√2))/2: for very negative x the latter is a
    // difference of two numbers near 1 and loses all its digits; erfc keeps the tail exact.
    0.5 * x * libm::erfcf(-x * std::f32::consts::FRAC_1_SQRT_2)
}

/// GELU with PyTorch's `approximate="tanh"` formula.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// `1 / (1 + e^-x)`, written so that `exp` only ever sees a non-positive argument: no overflow
/// (and no inf/inf NaN) for large |x|.
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// SiLU / swish: `x · sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf in f64 from the series `2x/√π · e^{-x²} · Σ (2x²)^n / (1·3·…·(2n+1))`. Every term is
    /// positive, so there is no cancellation at any x, and the sum is summed until terms stop
    /// mattering. Independent of libm's algorithm (rational approximations).
    fn erf_ref(x: f64) -> f64 {
        let t = 2.0 * x * x;
        let (mut term, mut sum) = (1.0f64, 1.0f64);
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= t / (2.0 * n + 1.0);
            sum += term;
            if term < sum * 1e-18 {
                break;
            }
        }
        2.0 * x / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
    }

    /// erfc in f64 for x > 0 from its continued fraction
    /// `e^{-x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …))))`, evaluated bottom-up.
    /// Converges fast for x ≳ 2, where `1 - erf_ref` would have cancelled.
    fn erfc_cf(x: f64) -> f64 {
        let mut f = x;
        for k in (1..400).rev() {
            f = x + (k as f64 / 2.0) / f;
        }
        (-x * x).exp() / std::f64::consts::PI.sqrt() / f
    }

    fn grid() -> impl Iterator<Item = f32> {
        (-6000..=6000).map(|i| i as f32 * 1e-3)
    }

    #[test]
    fn erf_matches_series_reference() {
        let mut max_err = 0.0f64;
        for x in grid() {
            let err = (erf(x) as f64 - erf_ref(x as f64)).abs();
            max_err = max_err.max(err);
        }
        println!("erf max abs error on [-6, 6]: {max_err:.3e}");
        // f32 rounding of values near 1 alone is 6e-8.
        assert!(max_err < 1.2e-7, "erf max abs error {max_err:e}");
        // The series and the continued fraction agree where both are accurate.
        for x in [2.0, 2.5, 3.0, 4.0] {
            assert!((1.0 - erf_ref(x) - erfc_cf(x)).abs() < 1e-14);
        }
    }

    #[test]
    fn gelu_erf_matches_reference_with_relative_accuracy() {
        let mut max_rel = 0.0f64;
        for x in (-1000..=1000).map(|i| i as f32 * 1e-2) {
            let xd = x as f64;
            let phi = if xd < -2.0 {
                erfc_cf(-xd / 2f64.sqrt()) / 2.0
            } else {
                (1.0 + erf_ref(xd / 2f64.sqrt())) / 2.0
            };
            let want = xd * phi;
            let got = gelu_erf(x) as f64;
            if want == 0.0 {
                assert_eq!(got, 0.0);
                continue;
            }
            // f32 denormals below ~1e-38 carry few digits; compare those absolutely.
            let rel = (got - want).abs() / want.abs().max(1e-37);
            max_rel = max_rel.max(rel);
        }
        println!("gelu_erf max rel error on [-10, 10]: {max_rel:.3e}");
        assert!(max_rel < 1e-5, "gelu_erf max rel error {max_rel:e}");
    }

    #[test]
    fn gelu_tanh_matches_formula_and_is_close_to_gelu() {
        for x in (-800..=800).map(|i| i as f32 * 1e-2) {
            let xd = x as f64;
            let want = 0.5
                * xd
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3))).tanh());
            assert!((gelu_tanh(x) as f64 - want).abs() < 1e-6 * (1.0 + want.abs()));
            // The approximation itself is within 1e-3 of exact GELU.
            assert!((gelu_tanh(x) - gelu_erf(x)).abs() < 1e-3);
        }
    }

    #[test]
    fn sigmoid_and_silu_are_stable_and_accurate() {
        for x in [
            -100.0f32,
            -88.8,
            -50.0,
            50.0,
            88.8,
            100.0,
            f32::MAX,
            f32::MIN,
        ] {
            for v in [sigmoid(x), silu(x)] {
                assert!(!v.is_nan(), "NaN at {x}");
            }
            assert!(sigmoid(x).is_finite());
        }
        assert_eq!(sigmoid(100.0), 1.0);
        assert!(sigmoid(-100.0) >= 0.0 && sigmoid(-100.0) < 1e-43);
        assert_eq!(silu(-100.0), -100.0 * sigmoid(-100.0));
        for x in (-2000..=2000).map(|i| i as f32 * 1e-2) {
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            let got = sigmoid(x) as f64;
            assert!(
                (got - want).abs() <= 2e-7 * want,
                "sigmoid({x}) {got} vs {want}"
            );
            let s = silu(x) as f64;
            assert!((s - x as f64 * want).abs() <= 3e-7 * (x as f64 * want).abs());
        }
    }
}
