//! k-means where every value carries a real weight (data-aware palettization).

use super::dp::cluster_unique;
use super::keys::{key_to_f32, scatter_by_unique, sort_with_index};
use super::{kmeans_1d, nearest, Palette};

/// Unique values whose summed weight is below this fraction of the mean per unique value are
/// raised to it, for two reasons. A cluster whose elements all have weight 0 has no weighted
/// mean (0/0); with the floor its entry is the plain mean of its unique values, and since such
/// elements do not count in the error, where that entry goes hardly matters. And every step of
/// the f64 prefix sums of the weights must be positive for `w[j] - w[i]` to be a positive
/// divisor: the floor is `1e-6 · total / n`, above the rounding `total · 2^-53` of the sums for
/// every `n <= u32::MAX` unique values. The objective then differs from the true weighted error
/// by at most the floor times the squared errors of the raised values: a relative `1e-6` of the
/// mean weight, far below what fp16 storage of the LUT changes.
pub(super) const WEIGHT_FLOOR: f64 = 1e-6;

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
    let indices = scatter_by_unique(&sorted, &nearest_of_unique, values.len());
    Palette { lut, indices, sse }
}
