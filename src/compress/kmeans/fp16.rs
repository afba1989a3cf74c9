//! Palettization of fp16 tensors with an fp16 table, through a histogram of their 65,536 bit
//! patterns: the count of each value is all the exact k-means needs (module doc), and the entry
//! of the rounded table nearest to a value depends on the value alone. After one counting pass
//! the work is the DP over the distinct values, one nearest-entry search per distinct value and
//! one table look-up per element: no sort, no f32 copy of the tensor, no per-element search.

use half::f16;

use super::dp::cluster_counts;
use super::kmeans_1d;
use super::palette::{nearest, Palette};
use super::unweighted::COUNTING_MIN;

thread_local! {
    /// Per-thread table over fp16 bit patterns: counts, then each pattern's LUT index; all zero
    /// between calls.
    static PATTERNS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `kmeans_1d(v, k).with_f16_lut(v)` for `v` the values of `values` widened to f32 (what
/// `mlc build --palettize` stores for an fp16 weight): the same LUT and the same indices, by
/// counting bit patterns instead of sorting. `sse` is the same error summed per distinct value
/// rather than per element, so its last bits can differ.
///
/// # Panics
/// If `k` is 0 or above 65536, or a value is infinite or NaN.
pub fn palettize_f16(values: &[f16], k: usize) -> Palette {
    try_palettize_f16(values, k).unwrap_or_else(|| panic!("k-means input must be finite"))
}

/// [`palettize_f16`], or `None` if a value is infinite or NaN (found by the counting pass
/// itself, so callers need no pass of their own).
///
/// # Panics
/// If `k` is 0 or above 65536.
pub fn try_palettize_f16(values: &[f16], k: usize) -> Option<Palette> {
    assert!(
        (1..=1 << 16).contains(&k),
        "k must be in 1..=65536, got {k}"
    );
    if values.len() < COUNTING_MIN {
        // Below it, scanning the pattern table costs more than sorting.
        if !values.iter().all(|x| x.is_finite()) {
            return None;
        }
        let v: Vec<f32> = values.iter().map(|x| x.to_f32()).collect();
        return Some(kmeans_1d(&v, k).with_f16_lut(&v));
    }
    PATTERNS.with(|t| {
        let mut table = t.borrow_mut();
        table.resize(1 << 16, 0);
        let p = counted(values, k, &mut table);
        table.fill(0);
        p
    })
}

/// Bit patterns of the finite fp16 values in ascending order of value, `-0.0` left out (it is
/// counted as `+0.0`, whose pattern is 0).
fn ascending_patterns() -> impl Iterator<Item = u16> {
    // Negative values from the largest magnitude (0xfbff, -65504) up to the smallest (0x8001),
    // then zero and the positive values up to 0x7bff (65504); 0x7c00.. and 0xfc00.. are the
    // infinities and NaNs.
    (0x8001..=0xfbffu16).rev().chain(0..=0x7bff)
}

/// [`palettize_f16`] with `table` (65,536 zeros) as scratch; `None` if a value is not finite.
fn counted(values: &[f16], k: usize, table: &mut [u32]) -> Option<Palette> {
    for &x in values {
        table[usize::from(x.to_bits())] += 1;
    }
    if table[0x7c00..0x8000]
        .iter()
        .chain(&table[0xfc00..])
        .any(|&c| c != 0)
    {
        return None;
    }
    table[0] += std::mem::take(&mut table[0x8000]);
    let mut patterns: Vec<u16> = Vec::new();
    let mut uniq: Vec<f32> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    for h in ascending_patterns() {
        let c = table[usize::from(h)];
        if c != 0 {
            patterns.push(h);
            uniq.push(f16::from_bits(h).to_f32());
            counts.push(c);
        }
    }
    let (lut, _, _) = cluster_counts(&uniq, &counts, k);
    // As `Palette::with_f16_lut`: the entries rounded to fp16 (monotone, so still sorted), each
    // value re-assigned to its nearest rounded entry.
    let lut: Vec<f32> = lut.iter().map(|&c| f16::from_f32(c).to_f32()).collect();
    let mut sse = 0.0f64;
    for ((&h, &x), &c) in patterns.iter().zip(&uniq).zip(&counts) {
        let i = nearest(&lut, x);
        let d = f64::from(x) - f64::from(lut[i]);
        sse += f64::from(c) * (d * d);
        table[usize::from(h)] = i as u32;
    }
    table[0x8000] = table[0];
    let indices = values
        .iter()
        .map(|x| table[usize::from(x.to_bits())] as u16)
        .collect();
    Some(Palette { lut, indices, sse })
}
