//! Many tensors at once: lists of tensors and the groups of output channels of one tensor,
//! each palettized on its own, spread over the cores.

use super::{kmeans_1d, kmeans_1d_weighted, Palette};
use crate::parallel::parallel_map;

/// [`kmeans_1d`] of several tensors, run on all available cores (whole tensors per thread, so
/// the results are identical to the sequential ones).
pub fn kmeans_1d_batch(tensors: &[&[f32]], k: usize) -> Vec<Palette> {
    parallel_map(tensors, |t| t.len(), |t| kmeans_1d(t, k))
}

/// One palette per group of `group_size` consecutive output channels (axis 0) of a row-major
/// tensor of `shape`, as Core ML's per-grouped-channel palettization stores them: group `g`
/// covers rows `g·group_size .. (g+1)·group_size`, and its `indices` are in the order of those
/// rows' elements.
///
/// # Panics
/// If `shape` does not match `values`, is empty, or `group_size` does not divide `shape[0]`.
pub fn palettize_grouped(
    values: &[f32],
    shape: &[usize],
    group_size: usize,
    k: usize,
) -> Vec<Palette> {
    let group_len = group_len(values.len(), shape, group_size);
    if group_len == 0 {
        return vec![kmeans_1d(&[], k); shape[0] / group_size];
    }
    let groups: Vec<&[f32]> = values.chunks(group_len).collect();
    kmeans_1d_batch(&groups, k)
}

/// Elements per group of [`palettize_grouped`], after checking `shape` against `len` elements.
fn group_len(len: usize, shape: &[usize], group_size: usize) -> usize {
    assert!(
        !shape.is_empty(),
        "palettize_grouped needs a tensor of rank >= 1"
    );
    assert_eq!(
        shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)),
        Some(len),
        "shape does not match values"
    );
    assert!(
        group_size > 0 && shape[0] % group_size == 0,
        "group size {group_size} must divide the {} output channels",
        shape[0]
    );
    // Cannot overflow: it divides the checked product.
    group_size * shape[1..].iter().product::<usize>()
}

/// [`kmeans_1d_weighted`] of several `(values, weights)` tensors on all available cores (whole
/// tensors per thread, so the results are identical to the sequential ones).
pub fn kmeans_1d_weighted_batch(tensors: &[(&[f32], &[f32])], k: usize) -> Vec<Palette> {
    parallel_map(tensors, |t| t.0.len(), |t| kmeans_1d_weighted(t.0, t.1, k))
}

/// [`palettize_grouped`] with the weighted objective: `weights` has the shape of `values` and
/// is grouped the same way.
///
/// # Panics
/// As [`palettize_grouped`], and if `weights` is not as long as `values`.
pub fn palettize_grouped_weighted(
    values: &[f32],
    weights: &[f32],
    shape: &[usize],
    group_size: usize,
    k: usize,
) -> Vec<Palette> {
    assert_eq!(
        values.len(),
        weights.len(),
        "k-means needs one weight per value"
    );
    let group_len = group_len(values.len(), shape, group_size);
    if group_len == 0 {
        return vec![kmeans_1d(&[], k); shape[0] / group_size];
    }
    let groups: Vec<(&[f32], &[f32])> = values
        .chunks(group_len)
        .zip(weights.chunks(group_len))
        .collect();
    kmeans_1d_weighted_batch(&groups, k)
}
