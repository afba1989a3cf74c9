//! Low-rank terms fused into an f16 weight in place, a block of rows at a time, on every core.
//!
//! Widening a whole f16 weight to f32, patching it and rounding it into a new f16 buffer costs
//! six bytes of fresh memory per value; over SDXL's 2.0 G adapted values the page faults and the
//! value-by-value conversions took longer than the products themselves (29 s of a 53 s build).
//! A block of rows widened into a small buffer, patched and rounded back into the weight stays in
//! cache; the values are the whole-weight path's, each rounded once.

use half::f16;

use super::delta::Rows;
use super::f16c::{narrow_fits, widen};

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
    // Whole rows per thread: enough rows for a thread to be worth its spawn. Every tile
    // starts on a multiple of the product kernel's rows and columns, as in one product over
    // the whole weight, so each value is computed by the same kernel in the same order.
    let threads = crate::kernels::num_threads()
        .min(values.len() / crate::kernels::PAR_MIN_ELEMS)
        .clamp(1, rows);
    let tiles = Tiles::new(inner);
    let per = rows.div_ceil(threads).div_ceil(tiles.rows) * tiles.rows;
    let results: Vec<Result<(), Misfit>> = std::thread::scope(|s| {
        let workers: Vec<_> = values
            .chunks_mut(per * inner)
            .enumerate()
            .map(|(i, part)| {
                let tiles = &tiles;
                s.spawn(move || fuse_part(terms, i * per, inner, tiles, part))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    // Parts are in row order, so the first failing part holds the first misfit.
    match results.into_iter().find_map(Result::err) {
        Some(m) => Err(m.message()),
        None => Ok(()),
    }
}

/// Rows and columns of the product's micro-kernel (matrixmultiply's f32 kernels use at most
/// 8 x 8; an edge tile narrower than that rounds twice): tiles starting on multiples of it
/// compute every value as one product over the whole weight does.
const KERNEL_ROWS: usize = 8;
const KERNEL_COLS: usize = 8;

/// Columns per tile at most. A tile of whole rows of SDXL's widest weights (5,120 values)
/// would hold 8 rows, and each product packs its whole `[rank, width]` slice of `down` for
/// them: packing then cost 60% as much as the products. 1,024 columns let a tile hold 64 rows.
const MAX_COLS: usize = 1024;

/// How a weight's rows are cut into tiles of about [`BLOCK`] values: column strips (one, of
/// whole rows, unless the rows are wider than [`MAX_COLS`]) and rows per tile.
struct Tiles {
    /// Each strip's first column and width; all but the last width a multiple of
    /// [`KERNEL_COLS`].
    strips: Vec<(usize, usize)>,
    /// Rows per tile, a multiple of [`KERNEL_ROWS`].
    rows: usize,
}

impl Tiles {
    fn new(inner: usize) -> Tiles {
        let n = inner.div_ceil(MAX_COLS).max(1);
        let width = inner
            .div_ceil(n)
            .next_multiple_of(KERNEL_COLS)
            .min(inner)
            .max(1);
        let strips = (0..inner)
            .step_by(width)
            .map(|c| (c, width.min(inner - c)))
            .collect();
        Tiles {
            strips,
            rows: (BLOCK / width / KERNEL_ROWS).max(1) * KERNEL_ROWS,
        }
    }
}

/// [`fuse_f16`] on rows `first..` (`part`), a tile at a time.
fn fuse_part(
    terms: &[Rows],
    first: usize,
    inner: usize,
    tiles: &Tiles,
    part: &mut [f16],
) -> Result<(), Misfit> {
    let max = crate::weights::check::FP16_MAX;
    let width = tiles.strips.iter().map(|s| s.1).max().unwrap_or(0);
    let mut buf = vec![0f32; tiles.rows.min(part.len() / inner) * width];
    for (b, block) in part.chunks_mut(tiles.rows * inner).enumerate() {
        let row = first + b * tiles.rows;
        let n = block.len() / inner;
        // The first misfit of these rows may be in any strip: the least index is kept.
        let mut misfit: Option<Misfit> = None;
        for &(col, width) in &tiles.strips {
            let tile = &mut buf[..n * width];
            let segments = || (0..n).map(|r| r * inner + col..r * inner + col + width);
            for (r, seg) in segments().enumerate() {
                widen(&block[seg], &mut tile[r * width..(r + 1) * width]);
            }
            for t in terms {
                t.add_tile(row, col, width, tile);
            }
            for (r, seg) in segments().enumerate() {
                let values = &tile[r * width..(r + 1) * width];
                if narrow_fits(values, &mut block[seg], max) {
                    continue;
                }
                // The first misfit of the strip: later rows of it come after this one.
                if let Some((i, x)) = first_misfit(values) {
                    let m = Misfit((row + r) * inner + col + i, x);
                    misfit = Some(misfit.map_or(m, |old| if old.0 <= m.0 { old } else { m }));
                }
                break;
            }
        }
        if let Some(m) = misfit {
            return Err(m);
        }
    }
    Ok(())
}

/// A fused value f16 cannot hold: its index in the weight and the value.
#[derive(Clone, Copy)]
struct Misfit(usize, f32);

impl Misfit {
    fn message(&self) -> String {
        let (i, x) = (self.0, self.1);
        match x.is_finite() {
            true => format!(
                "the patched value {i} is {x}, beyond the largest fp16 ({}) of this f16 weight; build with fp32 precision",
                crate::weights::check::FP16_MAX
            ),
            false => format!("the fused weight's value {i} is not finite"),
        }
    }
}

/// The first of `values` that rounding to f16 would turn into an infinity (or that is not
/// finite), with its index.
fn first_misfit(values: &[f32]) -> Option<(usize, f32)> {
    let max = crate::weights::check::FP16_MAX;
    // A fold without early exit vectorises; the position is looked for only on failure.
    if !values
        .iter()
        .fold(false, |bad, v| bad | v.is_nan() | (v.abs() > max))
    {
        return None;
    }
    values
        .iter()
        .enumerate()
        .find(|(_, v)| v.is_nan() || v.abs() > max)
        .map(|(i, v)| (i, *v))
}

/// Fails on the first of `values` (the fused weight's from value `offset` on) that rounding to
/// f16 would turn into an infinity (or that is not finite): the weights check would then blame
/// the file, when the LoRA made it.
pub(super) fn fits_f16(values: &[f32], offset: usize) -> Result<(), String> {
    match first_misfit(values) {
        Some((i, x)) => Err(Misfit(offset + i, x).message()),
        None => Ok(()),
    }
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

    /// Tiles, threads and in-place rounding give exactly the whole-weight path's values:
    /// widen everything, add each term over all rows, round once.
    #[test]
    fn tiles_give_the_whole_weight_values() {
        // 700 rows of 1000: several tiles (64 rows each) per thread, a short last tile, and a
        // last micro-kernel tile of 4 rows. 90 rows of 2,603: three column strips, the last
        // ending in a micro-kernel tile 3 columns wide, a thread's part of 72 rows and one of 18.
        for (rows, inner) in [(700, 1000), (90, 2603)] {
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
                "tiled fusion differs from the whole-weight one ({rows}x{inner})"
            );
            assert!(got != base, "the terms changed nothing");
        }
        let strips = Tiles::new(2603).strips;
        assert_eq!(strips, [(0, 872), (872, 872), (1744, 859)]);
    }

    /// Rows wider than a tile: the first misfit in the weight's order is named, not the first
    /// strip's, and a value just past f16's largest is refused as such.
    #[test]
    fn the_first_misfit_of_a_wide_weight_is_named() {
        let (rows, inner) = (100, 2603);
        let terms = [low_rank(rows, inner, 2, 3)
            .rows(&[rows, inner], 1e-3)
            .unwrap()
            .unwrap()];
        let mut w = vec![f16::from_f32(0.0); rows * inner];
        w[9 * inner + 10] = f16::INFINITY;
        w[5 * inner + 2000] = f16::NAN;
        let e = fuse_f16(&terms, rows, inner, &mut w).unwrap_err();
        assert_eq!(
            e,
            format!(
                "the fused weight's value {} is not finite",
                5 * inner + 2000
            )
        );
        let mut w = vec![f16::from_f32(0.0); rows * inner];
        w[7 * inner + 1500] = f16::MAX;
        let up = Delta::LowRank {
            down: Tensor::f32(vec![1, inner], vec![1.0; inner]),
            up: Tensor::f32(vec![rows, 1], vec![1.0; rows]),
            alpha: None,
        };
        let terms = [up.rows(&[rows, inner], 16.0).unwrap().unwrap()];
        let e = fuse_f16(&terms, rows, inner, &mut w).unwrap_err();
        assert!(
            e.starts_with(&format!("the patched value {} is 65520", 7 * inner + 1500)),
            "{e}"
        );
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

    /// The process's CPU seconds (user + system), all threads.
    fn cpu_seconds() -> f64 {
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        s(u.ru_utime) + s(u.ru_stime)
    }

    /// What fusing a rank-32 LoRA into SDXL's 722 adapted weights costs, a tenth of each shape
    /// (`cargo test --release --lib sdxl_rank32_timing -- --ignored --nocapture`; times ten
    /// for the whole UNet).
    #[test]
    #[ignore]
    fn sdxl_rank32_timing() {
        // (rows, inner, modules) of the rank-32 bench LoRA (tests/bench/lora_bench.sh).
        let shapes = [
            (640, 640, 70),
            (640, 2048, 20),
            (640, 2560, 10),
            (1280, 1280, 372),
            (1280, 2048, 120),
            (1280, 5120, 60),
            (5120, 640, 10),
            (10240, 1280, 60),
        ];
        let (mut wall, mut cpu) = (0.0, 0.0);
        for (rows, inner, modules) in shapes {
            let count = (modules as usize).div_ceil(10);
            let term = low_rank(rows, inner, 32, 5)
                .rows(&[rows, inner], 0.01)
                .unwrap()
                .unwrap();
            let mut w: Vec<f16> = (0..rows * inner)
                .map(|i| f16::from_f32((i % 977) as f32 / 977.0 - 0.5))
                .collect();
            let (t, c) = (std::time::Instant::now(), cpu_seconds());
            for _ in 0..count {
                fuse_f16(std::slice::from_ref(&term), rows, inner, &mut w).unwrap();
            }
            let (dt, dc) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
            println!("{rows}x{inner} x{count}: {dt:.3} s wall, {dc:.3} s CPU");
            wall += dt;
            cpu += dc;
        }
        println!("a tenth of SDXL: {wall:.3} s wall, {cpu:.3} s CPU");
    }
}
