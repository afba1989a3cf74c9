//! Low-rank terms fused into an f16 weight in place, a block of rows at a time, on every core.
//!
//! Widening a whole f16 weight to f32, patching it and rounding it into a new f16 buffer costs
//! six bytes of fresh memory per value; over SDXL's 2.0 G adapted values the page faults and the
//! value-by-value conversions took longer than the products themselves (29 s of a 53 s build).
//! A block of rows widened into a small buffer, patched and rounded back into the weight stays in
//! cache; the values are the whole-weight path's, each rounded once.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::delta::Rows;

/// f32 values per block: 256 KiB, within a core's L2 (512 KiB here) with room for the product's
/// packed panels, so the widening, the products, the check and the rounding stay in cache.
const BLOCK: usize = 1 << 16;

/// Adds every term to `values`, an f16 weight of `rows` rows of `inner` values, rounding each
/// value once; fails on the first value (in order) that is not finite after fusion.
pub(super) fn fuse_f16(
    terms: &[Rows],
    rows: usize,
    inner: usize,
    values: &mut [f16],
) -> Result<(), String> {
    if inner == 0 || rows.checked_mul(inner) != Some(values.len()) {
        return Err(format!(
            "the weight has {} values, not {rows} rows of {inner}",
            values.len()
        ));
    }
    if let Some(t) = terms.iter().find(|t| t.inner() != inner) {
        return Err(format!(
            "the adapter's rows have {} values, the weight's {inner}",
            t.inner()
        ));
    }
    // Whole rows per thread: enough rows for a thread to be worth its spawn. Every block
    // starts on a multiple of the product kernel's rows, as in one product over the whole
    // weight, so each value is computed by the same kernel in the same order.
    let threads = crate::kernels::num_threads()
        .min(values.len() / crate::kernels::PAR_MIN_ELEMS)
        .clamp(1, rows);
    let block_rows = block_rows(inner);
    let per = rows.div_ceil(threads).div_ceil(block_rows) * block_rows;
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let workers: Vec<_> = values
            .chunks_mut(per * inner)
            .enumerate()
            .map(|(i, part)| s.spawn(move || fuse_part(terms, i * per, inner, block_rows, part)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    results.into_iter().collect()
}

/// Rows of the product's micro-kernel (matrixmultiply's f32 kernels use at most 8): blocks
/// of a multiple of it compute every value as one product over the whole weight does.
const KERNEL_ROWS: usize = 8;

/// Rows per block: about [`BLOCK`] values, a multiple of [`KERNEL_ROWS`].
fn block_rows(inner: usize) -> usize {
    (BLOCK / inner / KERNEL_ROWS).max(1) * KERNEL_ROWS
}

/// [`fuse_f16`] on rows `first..` (`part`), `block_rows` at a time.
fn fuse_part(
    terms: &[Rows],
    first: usize,
    inner: usize,
    block_rows: usize,
    part: &mut [f16],
) -> Result<(), String> {
    let mut buf = vec![0f32; block_rows.min(part.len() / inner) * inner];
    for (b, block) in part.chunks_mut(block_rows * inner).enumerate() {
        let row = first + b * block_rows;
        let buf = &mut buf[..block.len()];
        block.convert_to_f32_slice(buf);
        for t in terms {
            t.add(row, buf);
        }
        fits_f16(buf, row * inner)?;
        block.convert_from_f32_slice(buf);
    }
    Ok(())
}

/// Fails on the first of `values` (the fused weight's from value `offset` on) that rounding to
/// f16 would turn into an infinity (or that is not finite): the weights check would then blame
/// the file, when the LoRA made it.
pub(super) fn fits_f16(values: &[f32], offset: usize) -> Result<(), String> {
    let max = crate::weights::check::FP16_MAX;
    // A fold without early exit vectorises; the position is looked for only on failure.
    if values
        .iter()
        .fold(false, |bad, v| bad | v.is_nan() | (v.abs() > max))
    {
        let (i, x) = values
            .iter()
            .enumerate()
            .find(|(_, v)| v.is_nan() || v.abs() > max)
            .map_or((0, 0.0), |(i, v)| (i, *v));
        return Err(match x.is_finite() {
            true => format!(
                "the patched value {} is {x}, beyond the largest fp16 ({max}) of this f16 weight; build with fp32 precision",
                offset + i
            ),
            false => format!("the fused weight's value {} is not finite", offset + i),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::delta::Delta;
    use crate::tensor::Tensor;

    fn low_rank(out: usize, inner: usize, rank: usize, seed: u32) -> Delta {
        let v = |n: usize, k: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| ((i.wrapping_mul(2_654_435_761) ^ k) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        Delta::LowRank {
            down: Tensor::f32(vec![rank, inner], v(rank * inner, seed)),
            up: Tensor::f32(vec![out, rank], v(out * rank, seed + 1)),
            alpha: Some(3.0),
        }
    }

    /// Blocks, threads and in-place rounding give exactly the whole-weight path's values:
    /// widen everything, add each term over all rows, round once.
    #[test]
    fn blocks_give_the_whole_weight_values() {
        // 700 rows of 1000: several blocks (64 rows each) per thread, a short last block, and
        // a last micro-kernel tile of 4 rows.
        let (rows, inner) = (700, 1000);
        let deltas = [low_rank(rows, inner, 4, 1), low_rank(rows, inner, 2, 7)];
        let weights = [1.0, -0.6];
        let base: Vec<f16> = (0..rows * inner)
            .map(|i| f16::from_f32((i % 977) as f32 / 977.0 - 0.5))
            .collect();
        let mut whole: Vec<f32> = base.iter().map(|h| h.to_f32()).collect();
        for (d, w) in deltas.iter().zip(weights) {
            d.add_to(&[rows, inner], w, &mut whole).unwrap();
        }
        let want: Vec<f16> = whole.iter().map(|&v| f16::from_f32(v)).collect();
        let terms: Vec<Rows> = deltas
            .iter()
            .zip(weights)
            .map(|(d, w)| d.rows(&[rows, inner], w).unwrap().unwrap())
            .collect();
        let mut got = base.clone();
        fuse_f16(&terms, rows, inner, &mut got).unwrap();
        assert!(
            got == want,
            "blocked fusion differs from the whole-weight one"
        );
        assert!(got != base, "the terms changed nothing");
    }

    #[test]
    fn a_non_finite_value_is_named_by_its_index_and_misfits_are_refused() {
        let (rows, inner) = (600, 500);
        let terms = [low_rank(rows, inner, 2, 3)
            .rows(&[rows, inner], 1.0)
            .unwrap()
            .unwrap()];
        let mut w = vec![f16::from_f32(0.0); rows * inner];
        // One in each thread's rows (two cores or more): the first in order is named.
        w[250 * inner + 7] = f16::INFINITY;
        w[520 * inner] = f16::NAN;
        let e = fuse_f16(&terms, rows, inner, &mut w).unwrap_err();
        assert_eq!(
            e,
            format!("the fused weight's value {} is not finite", 250 * inner + 7)
        );
        let e = fuse_f16(&terms, rows, inner + 1, &mut w).unwrap_err();
        assert!(e.contains("not 600 rows of 501"), "{e}");
        let e = fuse_f16(&terms, rows / 2, inner * 2, &mut w).unwrap_err();
        assert!(e.contains("rows have 500 values"), "{e}");
    }
}
