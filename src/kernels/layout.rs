//! Data movement: transpose, tile, nearest-neighbour upsampling.

use super::{coalesce, next_row, par_chunks, strides_of, Array};

/// Output dims `perm`-uted from the input: `out.shape[i] = x.shape[perm[i]]`.
///
/// Panics if `perm` is not a permutation of `0..rank`.
pub fn transpose(x: &Array, perm: &[usize]) -> Array {
    let rank = x.shape.len();
    assert_eq!(perm.len(), rank, "transpose: perm {perm:?} for rank {rank}");
    let mut seen = vec![false; rank];
    for &p in perm {
        assert!(
            p < rank && !seen[p],
            "transpose: {perm:?} is not a permutation"
        );
        seen[p] = true;
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let xs = strides_of(&x.shape);
    let in_strides: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
    let mut out = vec![0.0f32; x.data.len()];
    if out.is_empty() {
        return Array { shape, data: out };
    }
    let (dims, st) = coalesce(&shape, &[in_strides, strides_of(&shape)]);
    let st = &st[0];
    let r = dims.len();
    let (inner, inner_stride) = (dims[r - 1], st[r - 1]);
    par_chunks(&mut out, inner, |off, chunk| {
        let mut idx = vec![0usize; r];
        let mut rem = off / inner;
        for d in (0..r - 1).rev() {
            idx[d] = rem % dims[d];
            rem /= dims[d];
        }
        for row in chunk.chunks_exact_mut(inner) {
            let base: usize = idx.iter().zip(st).map(|(i, s)| i * s).sum();
            if inner_stride == 1 {
                row.copy_from_slice(&x.data[base..base + inner]);
            } else {
                for (j, o) in row.iter_mut().enumerate() {
                    *o = x.data[base + j * inner_stride];
                }
            }
            next_row(&mut idx, &dims);
        }
    });
    Array { shape, data: out }
}

/// Repeats `x` `reps[i]` times along each dim i.
///
/// Panics if `reps.len()` differs from the rank.
pub fn tile(x: &Array, reps: &[usize]) -> Array {
    let rank = x.shape.len();
    assert_eq!(reps.len(), rank, "tile: reps {reps:?} for rank {rank}");
    let shape: Vec<usize> = x.shape.iter().zip(reps).map(|(&s, &r)| s * r).collect();
    let n: usize = shape.iter().product();
    let mut out = vec![0.0f32; n];
    if n == 0 {
        return Array { shape, data: out };
    }
    if rank == 0 {
        return x.clone();
    }
    let w = x.shape[rank - 1];
    let ow = shape[rank - 1];
    let xs = strides_of(&x.shape);
    par_chunks(&mut out, ow, |off, chunk| {
        // Odometer over the output's outer dims; each output row is an input row repeated.
        let mut idx = vec![0usize; rank - 1];
        let mut rem = off / ow;
        for d in (0..rank - 1).rev() {
            idx[d] = rem % shape[d];
            rem /= shape[d];
        }
        for row in chunk.chunks_exact_mut(ow) {
            let base: usize = idx
                .iter()
                .enumerate()
                .map(|(d, &i)| (i % x.shape[d]) * xs[d])
                .sum();
            for piece in row.chunks_exact_mut(w) {
                piece.copy_from_slice(&x.data[base..base + w]);
            }
            for d in (0..rank - 1).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    });
    Array { shape, data: out }
}

/// Nearest-neighbour upsampling of the last two dims by integer factors:
/// `out[.., y, x] = x[.., y / scale_h, x / scale_w]`.
///
/// Panics if the rank is below 3.
pub fn upsample_nearest(x: &Array, scale_h: usize, scale_w: usize) -> Array {
    let rank = x.shape.len();
    assert!(rank >= 3, "upsample_nearest: rank {rank} < 3");
    let (h, w) = (x.shape[rank - 2], x.shape[rank - 1]);
    let (oh, ow) = (h * scale_h, w * scale_w);
    let mut shape = x.shape.clone();
    shape[rank - 2] = oh;
    shape[rank - 1] = ow;
    let n: usize = shape.iter().product();
    let mut out = vec![0.0f32; n];
    if n == 0 {
        return Array { shape, data: out };
    }
    par_chunks(&mut out, ow, |off, chunk| {
        for (i, row) in chunk.chunks_exact_mut(ow).enumerate() {
            let r = off / ow + i;
            let (plane, oy) = (r / oh, r % oh);
            let src = (plane * h + oy / scale_h) * w;
            let src = &x.data[src..src + w];
            if scale_w == 1 {
                row.copy_from_slice(src);
            } else {
                for (o, &v) in row.chunks_exact_mut(scale_w).zip(src) {
                    o.fill(v);
                }
            }
        }
    });
    Array { shape, data: out }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{iota, Lcg};
    use super::*;

    #[test]
    fn transpose_small_cases() {
        let x = iota(&[2, 3]);
        let t = transpose(&x, &[1, 0]);
        assert_eq!(t, Array::new(vec![3, 2], vec![0., 3., 1., 4., 2., 5.]));
        let x = iota(&[2, 2, 3]);
        let t = transpose(&x, &[1, 0, 2]);
        assert_eq!(t.shape, vec![2, 2, 3]);
        assert_eq!(
            t.data,
            vec![0., 1., 2., 6., 7., 8., 3., 4., 5., 9., 10., 11.]
        );
        let t = transpose(&x, &[2, 0, 1]);
        assert_eq!(t.shape, vec![3, 2, 2]);
        assert_eq!(
            t.data,
            vec![0., 3., 6., 9., 1., 4., 7., 10., 2., 5., 8., 11.]
        );
        assert_eq!(transpose(&x, &[0, 1, 2]), x);
        assert_eq!(transpose(&Array::scalar(1.0), &[]), Array::scalar(1.0));
    }

    #[test]
    fn transpose_large_roundtrip() {
        // Large enough to split across threads; inverse permutation must restore the input.
        let mut rng = Lcg(3);
        let x = Array::new(vec![3, 70, 5, 130], rng.vec(3 * 70 * 5 * 130));
        let t = transpose(&x, &[2, 0, 3, 1]);
        assert_eq!(t.shape, vec![5, 3, 130, 70]);
        assert_eq!(
            t.data[((4 * 3 + 2) * 130 + 129) * 70 + 69],
            x.data[((2 * 70 + 69) * 5 + 4) * 130 + 129]
        );
        assert_eq!(transpose(&t, &[1, 3, 0, 2]), x);
    }

    #[test]
    #[should_panic]
    fn transpose_rejects_non_permutation() {
        transpose(&iota(&[2, 3]), &[0, 0]);
    }

    #[test]
    fn tile_small_cases() {
        let x = iota(&[2, 2]);
        let t = tile(&x, &[2, 3]);
        assert_eq!(t.shape, vec![4, 6]);
        #[rustfmt::skip]
        let want = vec![
            0., 1., 0., 1., 0., 1.,
            2., 3., 2., 3., 2., 3.,
            0., 1., 0., 1., 0., 1.,
            2., 3., 2., 3., 2., 3.,
        ];
        assert_eq!(t.data, want);
        let t = tile(&iota(&[1, 3]), &[2, 1]);
        assert_eq!(t.data, vec![0., 1., 2., 0., 1., 2.]);
        assert_eq!(tile(&iota(&[3]), &[0]).shape, vec![0]);
        assert_eq!(tile(&Array::scalar(4.0), &[]), Array::scalar(4.0));
        let t = tile(&iota(&[2, 1, 2]), &[1, 2, 1]);
        assert_eq!(t.data, vec![0., 1., 0., 1., 2., 3., 2., 3.]);
    }

    #[test]
    fn upsample_small_cases() {
        let x = iota(&[1, 1, 2, 2]);
        let u = upsample_nearest(&x, 2, 2);
        assert_eq!(u.shape, vec![1, 1, 4, 4]);
        #[rustfmt::skip]
        let want = vec![
            0., 0., 1., 1.,
            0., 0., 1., 1.,
            2., 2., 3., 3.,
            2., 2., 3., 3.,
        ];
        assert_eq!(u.data, want);
        let u = upsample_nearest(&iota(&[2, 1, 3]), 1, 2);
        assert_eq!(u.data, vec![0., 0., 1., 1., 2., 2., 3., 3., 4., 4., 5., 5.]);
        let u = upsample_nearest(&iota(&[2, 2, 1]), 3, 1);
        assert_eq!(u.shape, vec![2, 6, 1]);
        assert_eq!(u.data, vec![0., 0., 0., 1., 1., 1., 2., 2., 2., 3., 3., 3.]);
    }

    #[test]
    fn upsample_large_matches_formula() {
        let x = iota(&[1, 3, 100, 150]);
        let u = upsample_nearest(&x, 2, 2);
        assert_eq!(u.shape, vec![1, 3, 200, 300]);
        for (i, &v) in u.data.iter().enumerate() {
            let (c, y, xx) = (i / 60000, i / 300 % 200, i % 300);
            assert_eq!(v, x.data[(c * 100 + y / 2) * 150 + xx / 2]);
        }
    }

    #[test]
    #[should_panic]
    fn upsample_rejects_rank_2() {
        upsample_nearest(&iota(&[2, 2]), 2, 2);
    }
}
