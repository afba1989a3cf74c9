//! f16 <-> f32 conversions of a fused tile's rows, with the x86 F16C instructions inlined.
//!
//! `half`'s slice conversions call one out-of-line function per 8 values and copy through
//! arrays: over SDXL's 2.2 G adapted values, widening and rounding cost as much as the rank-32
//! products. Here each row is one loop of `vcvtph2ps` / `vcvtps2ph` (round to nearest even, as
//! `half` rounds), and the check that every value fits f16 rides along with the rounding.
//! Without F16C, `half` converts; the values are the same either way.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// `src` widened into `dst` (of the same length).
pub(super) fn widen(src: &[f16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has AVX and F16C.
        unsafe { x86::widen(src, dst) };
        return;
    }
    src.convert_to_f32_slice(dst);
}

/// `src` rounded into `dst` (of the same length); false if a value is NaN or beyond the
/// largest f16 (`max`), which rounding would make an infinity.
pub(super) fn narrow_fits(src: &[f32], dst: &mut [f16], max: f32) -> bool {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has AVX and F16C.
        return unsafe { x86::narrow_fits(src, dst, max) };
    }
    dst.convert_from_f32_slice(src);
    // A fold without early exit vectorises.
    !src.iter()
        .fold(false, |bad, v| bad | v.is_nan() | (v.abs() > max))
}

#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn widen(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let whole = n / 8 * 8;
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i < whole {
            // SAFETY: i + 8 <= n, within both slices; unaligned loads and stores.
            let h = _mm_loadu_si128(s.add(i) as *const __m128i);
            _mm256_storeu_ps(d.add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        for j in whole..n {
            dst[j] = src[j].to_f32();
        }
    }

    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn narrow_fits(src: &[f32], dst: &mut [f16], max: f32) -> bool {
        let n = src.len().min(dst.len());
        let whole = n / 8 * 8;
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let limit = _mm256_set1_ps(max);
        let sign = _mm256_set1_ps(-0.0);
        let mut bad = _mm256_setzero_ps();
        let mut i = 0;
        while i < whole {
            // SAFETY: i + 8 <= n, within both slices; unaligned loads and stores.
            let v = _mm256_loadu_ps(s.add(i));
            // Not |v| <= max: beyond it, or NaN (unordered).
            let abs = _mm256_andnot_ps(sign, v);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLE_UQ>(abs, limit));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(d.add(i) as *mut __m128i, h);
            i += 8;
        }
        let mut fits = _mm256_movemask_ps(bad) == 0;
        for j in whole..n {
            let v = src[j];
            dst[j] = f16::from_f32(v);
            fits &= !v.is_nan() & (v.abs() <= max);
        }
        fits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every f16 bit pattern widens as `half` widens it; values around every f16 (halfway
    /// points, ties, subnormals, the largest, beyond it) round as `half` rounds them.
    #[test]
    fn conversions_are_halfs() {
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        // 13 values: not a multiple of 8, so the tail is converted too.
        for chunk in all.chunks(8 * 1024 + 13) {
            let mut got = vec![0f32; chunk.len()];
            widen(chunk, &mut got);
            let want: Vec<f32> = chunk.iter().map(|h| h.to_f32()).collect();
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "widening differs from half's");
        }
        let max = f16::MAX.to_f32();
        let finite: Vec<f32> = all
            .iter()
            .map(|h| h.to_f32())
            .filter(|v| v.abs() <= max)
            .collect();
        let mut src = Vec::new();
        for v in finite {
            // The value, just above it, halfway to the next f16 and just beyond that.
            let up = f32::from_bits(v.to_bits() + 1);
            let half_ulp = f32::from_bits(v.to_bits() + (1 << 12));
            let past = f32::from_bits(v.to_bits() + (1 << 12) + 1);
            src.extend(
                [v, up, half_ulp, past]
                    .into_iter()
                    .filter(|x| x.abs() <= max),
            );
        }
        let mut got = vec![f16::ZERO; src.len()];
        assert!(
            narrow_fits(&src, &mut got, max),
            "values within f16's range misfit"
        );
        let want: Vec<f16> = src.iter().map(|&v| f16::from_f32(v)).collect();
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "rounding differs from half's"
        );
    }

    #[test]
    fn misfits_are_found_in_the_vectors_and_the_tail() {
        let max = f16::MAX.to_f32();
        for bad in [f32::NAN, f32::INFINITY, -f32::INFINITY, 65_505.0, -70_000.0] {
            for at in [0, 7, 8, 20] {
                let mut src = vec![1.0f32; 21];
                src[at] = bad;
                let mut dst = vec![f16::ZERO; 21];
                assert!(!narrow_fits(&src, &mut dst, max), "{bad} at {at} fits");
            }
        }
        let mut src = vec![max; 21];
        src[3] = -max;
        let mut dst = vec![f16::ZERO; 21];
        assert!(narrow_fits(&src, &mut dst, max));
        assert!(dst.iter().all(|h| h.to_f32().abs() == max));
    }
}
