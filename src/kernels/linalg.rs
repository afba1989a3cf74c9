//! Batched matrix multiplication with MIL `matmul` semantics.
//!
//! Each batch is `matrixmultiply::sgemm` calls. Transposes and broadcast batch dims are
//! expressed as strides and offsets into the operands, so nothing is copied. `sgemm` is
//! single-threaded (see `conv`), so the stacked output rows of all batches are split over the
//! cores, each thread multiplying its rows of every batch it touches.

use super::elementwise::broadcast_shape;
use super::{par_chunks, strides_of, Array};

/// `a · b` over the last two dims, with numpy broadcasting of the leading (batch) dims.
///
/// `transpose_a` / `transpose_b` swap the last two dims of that operand before multiplying.
/// Rank-1 operands follow numpy: `a: [K]` is read as `[1, K]` and `b: [K]` as `[K, 1]`, and the
/// added dim is dropped from the result (their transpose flags are ignored). `None` if an operand
/// is rank 0, the inner dims differ, or the batch dims do not broadcast.
pub fn matmul(a: &Array, b: &Array, transpose_a: bool, transpose_b: bool) -> Option<Array> {
    if a.shape.is_empty() || b.shape.is_empty() {
        return None;
    }
    let (a_vec, b_vec) = (a.shape.len() == 1, b.shape.len() == 1);
    let a_shape = if a_vec {
        vec![1, a.shape[0]]
    } else {
        a.shape.clone()
    };
    let b_shape = if b_vec {
        vec![b.shape[0], 1]
    } else {
        b.shape.clone()
    };
    let (ar, br) = (a_shape.len(), b_shape.len());
    // Stored dims of the last two axes, then the logical (m, k) / (k, n) after transposition.
    let (a0, a1) = (a_shape[ar - 2], a_shape[ar - 1]);
    let (b0, b1) = (b_shape[br - 2], b_shape[br - 1]);
    let ta = transpose_a && !a_vec;
    let tb = transpose_b && !b_vec;
    let (m, k) = if ta { (a1, a0) } else { (a0, a1) };
    let (kb, n) = if tb { (b1, b0) } else { (b0, b1) };
    if k != kb {
        return None;
    }
    let batch = broadcast_shape(&a_shape[..ar - 2], &b_shape[..br - 2])?;
    let a_off = batch_offsets(&a_shape[..ar - 2], &batch, a0 * a1);
    let b_off = batch_offsets(&b_shape[..br - 2], &batch, b0 * b1);
    // Element (i, j) of the logical matrix sits at i·rs + j·cs of the stored one.
    let (rsa, csa) = if ta { (1, a1) } else { (a1, 1) };
    let (rsb, csb) = if tb { (1, b1) } else { (b1, 1) };

    let nbatch: usize = batch.iter().product();
    let mut out = vec![0.0f32; nbatch * m * n];
    // With k = 0 the product is all zeros, which `out` already is; skipping also keeps sgemm
    // away from empty operands.
    if m > 0 && n > 0 && k > 0 {
        par_chunks(&mut out, n, |off, chunk| {
            // The chunk is whole rows r0..r1 of the nbatch·m stacked output rows.
            let r0 = off / n;
            let r1 = r0 + chunk.len() / n;
            let mut r = r0;
            while r < r1 {
                let (bi, i0) = (r / m, r % m);
                let rows = (m - i0).min(r1 - r);
                let pa = &a.data[a_off[bi] + i0 * rsa..];
                let pb = &b.data[b_off[bi]..];
                let c = &mut chunk[(r - r0) * n..][..rows * n];
                debug_assert!((rows - 1) * rsa + (k - 1) * csa < pa.len());
                debug_assert!((k - 1) * rsb + (n - 1) * csb < pb.len());
                // SAFETY: rows i0..i0+rows of this batch's logical m×k A and its k×n B lie
                // inside `pa` and `pb` (checked above in debug builds); C is those rows of this
                // batch's m×n output, a slice of this thread's chunk, which aliases neither.
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        k,
                        n,
                        1.0,
                        pa.as_ptr(),
                        rsa as isize,
                        csa as isize,
                        pb.as_ptr(),
                        rsb as isize,
                        csb as isize,
                        0.0,
                        c.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                };
                r += rows;
            }
        });
    }
    let mut shape = batch;
    if !a_vec {
        shape.push(m);
    }
    if !b_vec {
        shape.push(n);
    }
    Some(Array { shape, data: out })
}

/// Flat offset of each batch's matrix in an operand whose batch dims `own` broadcast to `batch`
/// (`own` is right-aligned against `batch`, size-1 dims repeat).
fn batch_offsets(own: &[usize], batch: &[usize], matrix: usize) -> Vec<usize> {
    let lead = batch.len() - own.len();
    let own_strides = strides_of(own);
    let mut strides = vec![0usize; batch.len()];
    for (i, (&d, &s)) in own.iter().zip(&own_strides).enumerate() {
        if d != 1 {
            strides[lead + i] = s * matrix;
        }
    }
    let total: usize = batch.iter().product();
    let mut offsets = Vec::with_capacity(total);
    let mut idx = vec![0usize; batch.len()];
    for _ in 0..total {
        offsets.push(idx.iter().zip(&strides).map(|(i, s)| i * s).sum());
        for d in (0..batch.len()).rev() {
            idx[d] += 1;
            if idx[d] < batch[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Lcg;
    use super::*;

    /// Naive f64 reference: explicit transposes, explicit broadcast index arithmetic.
    fn naive(a: &Array, b: &Array, ta: bool, tb: bool) -> (Vec<usize>, Vec<f64>) {
        let ar = a.shape.len();
        let br = b.shape.len();
        let (m, k) = if ta {
            (a.shape[ar - 1], a.shape[ar - 2])
        } else {
            (a.shape[ar - 2], a.shape[ar - 1])
        };
        let n = if tb { b.shape[br - 2] } else { b.shape[br - 1] };
        let rank = ar.max(br) - 2;
        let dim = |s: &[usize], i: usize| {
            let own = s.len() - 2;
            if i + own < rank {
                1
            } else {
                s[i + own - rank]
            }
        };
        let batch: Vec<usize> = (0..rank)
            .map(|i| dim(&a.shape, i).max(dim(&b.shape, i)))
            .collect();
        let get = |x: &Array, bidx: &[usize], r: usize, c: usize| -> f64 {
            let xr = x.shape.len();
            let mut flat = 0;
            for i in 0..xr - 2 {
                let bi = bidx[rank - (xr - 2) + i];
                let idx = if x.shape[i] == 1 { 0 } else { bi };
                flat = flat * x.shape[i] + idx;
            }
            flat = (flat * x.shape[xr - 2] + r) * x.shape[xr - 1] + c;
            x.data[flat] as f64
        };
        let nb: usize = batch.iter().product();
        let mut out = Vec::new();
        for flat in 0..nb {
            let mut bidx = vec![0; rank];
            let mut rem = flat;
            for d in (0..rank).rev() {
                bidx[d] = rem % batch[d];
                rem /= batch[d];
            }
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0.0;
                    for p in 0..k {
                        let x = if ta {
                            get(a, &bidx, p, i)
                        } else {
                            get(a, &bidx, i, p)
                        };
                        let y = if tb {
                            get(b, &bidx, j, p)
                        } else {
                            get(b, &bidx, p, j)
                        };
                        s += x * y;
                    }
                    out.push(s);
                }
            }
        }
        let mut shape = batch;
        shape.extend([m, n]);
        (shape, out)
    }

    fn check(a: &Array, b: &Array, ta: bool, tb: bool) {
        let got = matmul(a, b, ta, tb).expect("shapes fit");
        let (shape, want) = naive(a, b, ta, tb);
        assert_eq!(
            got.shape, shape,
            "{:?} x {:?} ta={ta} tb={tb}",
            a.shape, b.shape
        );
        for (g, w) in got.data.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{:?} x {:?} ta={ta} tb={tb}: {g} vs {w}",
                a.shape,
                b.shape
            );
        }
    }

    #[test]
    fn matches_naive_with_broadcast_and_transposes() {
        let mut rng = Lcg(7);
        for _ in 0..80 {
            let (m, k, n) = (1 + rng.below(9), 1 + rng.below(9), 1 + rng.below(9));
            let (ta, tb) = (rng.below(2) == 1, rng.below(2) == 1);
            // Batch dims: a random shape, each operand keeps a suffix of it with some dims
            // set to 1, so both missing and size-1 dims get broadcast.
            let full: Vec<usize> = (0..rng.below(4)).map(|_| 1 + rng.below(3)).collect();
            let pick = |rng: &mut Lcg| -> Vec<usize> {
                let keep = rng.below(full.len() + 1);
                full[full.len() - keep..]
                    .iter()
                    .map(|&d| if rng.below(3) == 0 { 1 } else { d })
                    .collect()
            };
            let mut sa = pick(&mut rng);
            let mut sb = pick(&mut rng);
            sa.extend(if ta { [k, m] } else { [m, k] });
            sb.extend(if tb { [n, k] } else { [k, n] });
            let a = Array::new(sa.clone(), rng.vec(sa.iter().product()));
            let b = Array::new(sb.clone(), rng.vec(sb.iter().product()));
            check(&a, &b, ta, tb);
        }
    }

    #[test]
    fn large_attention_like_product() {
        // Big enough for sgemm's blocking and threading: [heads, tokens, d] · [heads, d, tokens].
        let mut rng = Lcg(3);
        let q = Array::new(vec![2, 70, 33], rng.vec(2 * 70 * 33));
        let k = Array::new(vec![2, 70, 33], rng.vec(2 * 70 * 33));
        check(&q, &k, false, true);
    }

    #[test]
    fn rows_split_across_threads_mid_batch() {
        // 3·150 stacked rows of 160 outputs: above PAR_MIN_ELEMS, so two threads split the rows
        // at 225, inside the second batch; A transposed and broadcast from one batch, so a
        // thread's first row is offset through the column stride of a shared matrix.
        let mut rng = Lcg(11);
        let a = Array::new(vec![1, 17, 150], rng.vec(17 * 150));
        let b = Array::new(vec![3, 17, 160], rng.vec(3 * 17 * 160));
        const { assert!(3 * 150 * 160 > super::super::PAR_MIN_ELEMS) };
        check(&a, &b, true, false);
        check(&b, &a, true, false);
    }

    #[test]
    fn rank_one_operands_follow_numpy() {
        let mut rng = Lcg(11);
        let a = Array::new(vec![2, 3, 4], rng.vec(24));
        let v = Array::new(vec![4], rng.vec(4));
        let got = matmul(&a, &v, false, false).unwrap();
        let (_, want) = naive(&a, &v.clone().reshape(vec![4, 1]), false, false);
        assert_eq!(got.shape, vec![2, 3]);
        for (g, w) in got.data.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5);
        }
        let u = Array::new(vec![3], rng.vec(3));
        let got = matmul(&u, &a, false, false).unwrap();
        let (_, want) = naive(&u.clone().reshape(vec![1, 3]), &a, false, false);
        assert_eq!(got.shape, vec![2, 4]);
        for (g, w) in got.data.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5);
        }
        let dot = matmul(&v, &v, false, false).unwrap();
        assert_eq!(dot.shape, Vec::<usize>::new());
        let want: f64 = v.data.iter().map(|&x| (x as f64) * (x as f64)).sum();
        assert!((dot.data[0] as f64 - want).abs() < 1e-5);
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let a = Array::zeros(vec![2, 3, 4]);
        assert!(matmul(&a, &Array::zeros(vec![5, 2]), false, false).is_none());
        assert!(matmul(&a, &Array::zeros(vec![3, 4, 2]), false, false).is_none());
        assert!(matmul(&a, &Array::zeros(vec![4, 2]), true, false).is_none());
        assert!(matmul(&a, &Array::scalar(1.0), false, false).is_none());
        assert!(matmul(&a, &Array::zeros(vec![2, 4]), false, true).is_some());
    }

    #[test]
    fn empty_inner_dim_gives_zeros() {
        let a = Array::zeros(vec![3, 0]);
        let b = Array::zeros(vec![0, 2]);
        let c = matmul(&a, &b, false, false).unwrap();
        assert_eq!(c.shape, vec![3, 2]);
        assert_eq!(c.data, vec![0.0; 6]);
        let c = matmul(
            &Array::zeros(vec![0, 3, 2]),
            &b.reshape(vec![2, 0]),
            false,
            false,
        );
        assert_eq!(c.unwrap().shape, vec![0, 3, 0]);
    }
}
