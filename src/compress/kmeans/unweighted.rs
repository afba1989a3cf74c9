//! k-means where every value counts once: sorted unique values with their counts, or, for
//! large fp16-exact tensors, a count per fp16 bit pattern.

use super::dp::cluster_counts;
use super::keys::{f16_key_to_f32, f16_keys, key_to_f32, scatter_by_unique, sort_with_index};
use super::Palette;

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
    let (lut, cluster_of_unique, sse) = cluster_counts(&uniq, &counts, k);

    let indices = scatter_by_unique(&sorted, &cluster_of_unique, values.len());
    Palette { lut, indices, sse }
}

/// Tensors at least this large whose values are all fp16-exact are counted over the 65536 fp16
/// bit patterns instead of sorted (below it, scanning the table costs more than the sort).
pub(super) const COUNTING_MIN: usize = 4096;

thread_local! {
    /// Per-thread counting table over order-preserving fp16 keys; all zero between calls.
    static HISTOGRAM: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
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
    let (lut, cluster_of_unique, sse) = cluster_counts(&uniq, &counts, k);
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
