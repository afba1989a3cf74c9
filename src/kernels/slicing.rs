//! Moving sub-blocks around: strided slices, concatenation, pixel shuffle, constant padding.
//!
//! Output rows along the last dim are the unit of work, split over the cores by `par_chunks`;
//! each row is one copy (or one strided gather) from the input.

use super::layout::transpose;
use super::{par_chunks, strides_of, Array};

/// Decomposes row number `row` of an output with outer dims `outer` into a multi-index.
fn unravel_into(mut row: usize, outer: &[usize], idx: &mut [usize]) {
    for d in (0..outer.len()).rev() {
        idx[d] = row % outer[d];
        row /= outer[d];
    }
}

/// Advances a row-major multi-index over `dims` by one.
fn step(idx: &mut [usize], dims: &[usize]) {
    for d in (0..dims.len()).rev() {
        idx[d] += 1;
        if idx[d] < dims[d] {
            return;
        }
        idx[d] = 0;
    }
}

/// `x[begin[0]:end[0]:stride[0], …]` with Python meaning for non-negative bounds: `end` is
/// clamped to the dim and `begin` to `end`, so out-of-range bounds give short or empty axes.
///
/// Panics if the three lists are not as long as the rank or a stride is 0.
pub fn slice(x: &Array, begin: &[usize], end: &[usize], stride: &[usize]) -> Array {
    let rank = x.shape.len();
    assert!(
        begin.len() == rank && end.len() == rank && stride.len() == rank,
        "slice: begin {begin:?} end {end:?} stride {stride:?} for rank {rank}"
    );
    assert!(
        stride.iter().all(|&s| s >= 1),
        "slice: zero stride in {stride:?}"
    );
    if rank == 0 {
        return x.clone();
    }
    let mut lo = vec![0; rank];
    let mut shape = vec![0; rank];
    for d in 0..rank {
        let e = end[d].min(x.shape[d]);
        lo[d] = begin[d].min(e);
        shape[d] = (e - lo[d]).div_ceil(stride[d]);
    }
    let n: usize = shape.iter().product();
    let mut out = vec![0.0f32; n];
    if n == 0 {
        return Array { shape, data: out };
    }
    let xs = strides_of(&x.shape);
    let w = shape[rank - 1];
    let (first, inner_stride) = (lo[rank - 1], stride[rank - 1]);
    let outer = &shape[..rank - 1];
    par_chunks(&mut out, w, |off, chunk| {
        let mut idx = vec![0; rank - 1];
        unravel_into(off / w, outer, &mut idx);
        for row in chunk.chunks_exact_mut(w) {
            let base: usize = (0..rank - 1)
                .map(|d| (lo[d] + idx[d] * stride[d]) * xs[d])
                .sum::<usize>()
                + first;
            if inner_stride == 1 {
                row.copy_from_slice(&x.data[base..base + w]);
            } else {
                for (j, o) in row.iter_mut().enumerate() {
                    *o = x.data[base + j * inner_stride];
                }
            }
            step(&mut idx, outer);
        }
    });
    Array { shape, data: out }
}

/// `xs` joined along `axis`. `None` if the list is empty, the ranks differ, `axis` is not below
/// the rank, or a dim other than `axis` differs.
pub fn concat(xs: &[&Array], axis: usize) -> Option<Array> {
    let first = xs.first()?;
    let rank = first.shape.len();
    if axis >= rank {
        return None;
    }
    for x in xs {
        let same =
            x.shape.len() == rank && (0..rank).all(|d| d == axis || x.shape[d] == first.shape[d]);
        if !same {
            return None;
        }
    }
    let mut shape = first.shape.clone();
    shape[axis] = xs.iter().map(|x| x.shape[axis]).sum();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    // Each input contributes one contiguous block of `shape[axis]·inner` per outer index.
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for x in xs {
            let block = x.shape[axis] * inner;
            data.extend_from_slice(&x.data[o * block..(o + 1) * block]);
        }
    }
    Some(Array { shape, data })
}

/// Depth-to-space as PyTorch `pixel_shuffle` and MIL `pixel_shuffle`: `[N, C·r², H, W]` to
/// `[N, C, H·r, W·r]`, input channel `c·r² + i·r + j` landing at output `(c, h·r + i, w·r + j)`.
/// `None` if the rank is not 4, `r` is 0, or the channels are not a multiple of `r²`.
pub fn pixel_shuffle(x: &Array, r: usize) -> Option<Array> {
    if x.shape.len() != 4 || r == 0 || x.shape[1] % (r * r) != 0 {
        return None;
    }
    let [n, crr, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let c = crr / (r * r);
    // As a 6-D view [N, C, r, r, H, W] the shuffle is a permutation; `transpose` coalesces and
    // parallelises it.
    let y = transpose(
        &Array {
            shape: vec![n, c, r, r, h, w],
            data: x.data.clone(),
        },
        &[0, 1, 4, 2, 5, 3],
    );
    Some(y.reshape(vec![n, c, h * r, w * r]))
}

/// `x` with `pads[d].0` elements of `value` before and `pads[d].1` after along each dim d.
///
/// Panics if `pads` is not as long as the rank.
pub fn pad_constant(x: &Array, pads: &[(usize, usize)], value: f32) -> Array {
    let rank = x.shape.len();
    assert_eq!(
        pads.len(),
        rank,
        "pad_constant: pads {pads:?} for rank {rank}"
    );
    if rank == 0 {
        return x.clone();
    }
    let shape: Vec<usize> = x
        .shape
        .iter()
        .zip(pads)
        .map(|(&d, &(a, b))| a + d + b)
        .collect();
    let n: usize = shape.iter().product();
    let mut out = vec![value; n];
    if x.data.is_empty() {
        return Array { shape, data: out };
    }
    let xs = strides_of(&x.shape);
    let ow = shape[rank - 1];
    let (left, w) = (pads[rank - 1].0, x.shape[rank - 1]);
    let outer = &shape[..rank - 1];
    par_chunks(&mut out, ow, |off, chunk| {
        let mut idx = vec![0; rank - 1];
        unravel_into(off / ow, outer, &mut idx);
        for row in chunk.chunks_exact_mut(ow) {
            // Rows inside the input on every outer dim get the input row; the rest stay `value`.
            let mut base = Some(0usize);
            for d in 0..rank - 1 {
                let i = idx[d].checked_sub(pads[d].0).filter(|&i| i < x.shape[d]);
                base = base.zip(i).map(|(b, i)| b + i * xs[d]);
            }
            if let Some(b) = base {
                row[left..left + w].copy_from_slice(&x.data[b..b + w]);
            }
            step(&mut idx, outer);
        }
    });
    Array { shape, data: out }
}

/// Slices of `x` along `axis` picked by `indices` (integer values; negative ones count from the
/// end, as MIL's `gather`): x's axes before `axis`, the indices' axes, x's axes after. Errs
/// naming the first index that is not a whole number in `-n..n`, or an axis out of range.
pub fn gather(x: &Array, indices: &Array, axis: usize) -> Result<Array, String> {
    let n = *x
        .shape
        .get(axis)
        .ok_or_else(|| format!("axis {axis} out of range for {:?}", x.shape))?;
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..].iter().product();
    let picks: Vec<usize> = indices
        .data
        .iter()
        .map(|&i| {
            if i.fract() != 0.0 || i < -(n as f32) || i >= n as f32 {
                return Err(format!(
                    "index {i} is not a whole number in -{n}..{n} (axis {axis} of {:?})",
                    x.shape
                ));
            }
            Ok(if i < 0.0 {
                (i + n as f32) as usize
            } else {
                i as usize
            })
        })
        .collect::<Result<_, _>>()?;
    let mut data = Vec::with_capacity(outer * picks.len() * inner);
    for o in 0..outer {
        for &p in &picks {
            data.extend_from_slice(&x.data[(o * n + p) * inner..][..inner]);
        }
    }
    let mut shape = x.shape[..axis].to_vec();
    shape.extend(&indices.shape);
    shape.extend(&x.shape[axis + 1..]);
    Ok(Array::new(shape, data))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{iota, Lcg};
    use super::*;

    #[test]
    fn gather_picks_rows_and_names_a_bad_index() {
        // [2, 3, 2] along axis 1 by [[2, 0]] (and -1 for the last row): [2, 1, 2, 2].
        let x = iota(&[2, 3, 2]);
        let i = Array::new(vec![1, 2], vec![2.0, -3.0]);
        let y = gather(&x, &i, 1).unwrap();
        assert_eq!(y.shape, [2, 1, 2, 2]);
        assert_eq!(y.data, [4.0, 5.0, 0.0, 1.0, 10.0, 11.0, 6.0, 7.0]);
        for bad in [3.0, -4.0, 0.5] {
            let e = gather(&x, &Array::new(vec![1], vec![bad]), 1).unwrap_err();
            assert!(e.contains(&format!("index {bad}")), "{e}");
        }
    }

    fn unravel(flat: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        unravel_into(flat, shape, &mut idx);
        idx
    }

    fn ravel(idx: &[usize], shape: &[usize]) -> usize {
        idx.iter().zip(shape).fold(0, |f, (&i, &s)| f * s + i)
    }

    fn random(rng: &mut Lcg, shape: &[usize]) -> Array {
        Array::new(shape.to_vec(), rng.vec(shape.iter().product()))
    }

    #[test]
    fn slice_matches_naive_indexing() {
        let mut rng = Lcg(21);
        for _ in 0..40 {
            let shape: Vec<usize> = (0..1 + rng.below(4)).map(|_| 1 + rng.below(6)).collect();
            let x = random(&mut rng, &shape);
            let rank = shape.len();
            let end: Vec<usize> = (0..rank).map(|d| rng.below(shape[d] + 3)).collect();
            let begin: Vec<usize> = (0..rank).map(|d| rng.below(end[d] + 2)).collect();
            let stride: Vec<usize> = (0..rank).map(|_| 1 + rng.below(3)).collect();
            let y = slice(&x, &begin, &end, &stride);
            // Reference: the kept indices of each axis, listed explicitly.
            let kept: Vec<Vec<usize>> = (0..rank)
                .map(|d| {
                    (begin[d]..end[d].min(shape[d]))
                        .step_by(stride[d])
                        .collect()
                })
                .collect();
            let want_shape: Vec<usize> = kept.iter().map(Vec::len).collect();
            assert_eq!(y.shape, want_shape);
            for (flat, &v) in y.data.iter().enumerate() {
                let oi = unravel(flat, &want_shape);
                let xi: Vec<usize> = oi.iter().enumerate().map(|(d, &i)| kept[d][i]).collect();
                assert_eq!(v, x.data[ravel(&xi, &shape)]);
            }
        }
    }

    #[test]
    fn concat_then_slice_round_trips() {
        let mut rng = Lcg(22);
        for _ in 0..30 {
            let rank = 1 + rng.below(4);
            let base: Vec<usize> = (0..rank).map(|_| 1 + rng.below(4)).collect();
            let axis = rng.below(rank);
            let parts: Vec<Array> = (0..1 + rng.below(3))
                .map(|_| {
                    let mut s = base.clone();
                    s[axis] = rng.below(4);
                    random(&mut rng, &s)
                })
                .collect();
            let refs: Vec<&Array> = parts.iter().collect();
            let joined = concat(&refs, axis).unwrap();
            let mut at = 0;
            for p in &parts {
                let mut begin = vec![0; rank];
                let mut end = joined.shape.clone();
                begin[axis] = at;
                end[axis] = at + p.shape[axis];
                at = end[axis];
                assert_eq!(&slice(&joined, &begin, &end, &vec![1; rank]), p);
            }
            assert_eq!(at, joined.shape[axis]);
        }
    }

    #[test]
    fn concat_rejects_bad_inputs() {
        let a = Array::zeros(vec![2, 3]);
        assert!(concat(&[], 0).is_none());
        assert!(concat(&[&a], 2).is_none());
        assert!(concat(&[&a, &Array::zeros(vec![3, 3])], 1).is_none());
        assert!(concat(&[&a, &Array::zeros(vec![2, 3, 1])], 0).is_none());
        assert_eq!(
            concat(&[&a, &Array::zeros(vec![3, 3])], 0).unwrap().shape,
            vec![5, 3]
        );
    }

    #[test]
    fn pixel_shuffle_matches_naive_reshape_permute() {
        let mut rng = Lcg(23);
        for &(n, c, r, h, w) in &[
            (1, 1, 2, 1, 1),
            (2, 3, 2, 4, 5),
            (1, 2, 3, 3, 2),
            (1, 4, 1, 2, 2),
        ] {
            let x = random(&mut rng, &[n, c * r * r, h, w]);
            let y = pixel_shuffle(&x, r).unwrap();
            assert_eq!(y.shape, vec![n, c, h * r, w * r]);
            // [N,C,r,r,H,W] permuted (0,1,4,2,5,3) is [N,C,H,r,W,r]; index it directly.
            let six = [n, c, r, r, h, w];
            for ni in 0..n {
                for ci in 0..c {
                    for hi in 0..h {
                        for i in 0..r {
                            for wi in 0..w {
                                for j in 0..r {
                                    let src = x.data[ravel(&[ni, ci, i, j, hi, wi], &six)];
                                    let dst = ravel(&[ni, ci, hi, i, wi, j], &[n, c, h, r, w, r]);
                                    assert_eq!(y.data[dst], src);
                                }
                            }
                        }
                    }
                }
            }
        }
        // The documented channel mapping, on an iota input.
        let x = iota(&[1, 8, 2, 3]);
        let y = pixel_shuffle(&x, 2).unwrap();
        let (c, i, j, h, w) = (1, 1, 0, 1, 2);
        let v = y.data[ravel(&[0, c, h * 2 + i, w * 2 + j], &[1, 2, 4, 6])];
        assert_eq!(
            v,
            x.data[ravel(&[0, c * 4 + i * 2 + j, h, w], &[1, 8, 2, 3])]
        );
        assert!(pixel_shuffle(&x, 3).is_none());
        assert!(pixel_shuffle(&x, 0).is_none());
        assert!(pixel_shuffle(&Array::zeros(vec![8, 2, 3]), 2).is_none());
    }

    #[test]
    fn pad_constant_matches_naive() {
        let mut rng = Lcg(24);
        for _ in 0..30 {
            let shape: Vec<usize> = (0..1 + rng.below(4)).map(|_| rng.below(4)).collect();
            let pads: Vec<(usize, usize)> =
                shape.iter().map(|_| (rng.below(3), rng.below(3))).collect();
            let x = random(&mut rng, &shape);
            let y = pad_constant(&x, &pads, -7.5);
            let want_shape: Vec<usize> = shape
                .iter()
                .zip(&pads)
                .map(|(&d, &(a, b))| a + d + b)
                .collect();
            assert_eq!(y.shape, want_shape);
            for (flat, &v) in y.data.iter().enumerate() {
                let oi = unravel(flat, &want_shape);
                let inside: Option<Vec<usize>> = oi
                    .iter()
                    .zip(&pads)
                    .zip(&shape)
                    .map(|((&i, &(a, _)), &d)| i.checked_sub(a).filter(|&i| i < d))
                    .collect();
                let want = inside.map_or(-7.5, |xi| x.data[ravel(&xi, &shape)]);
                assert_eq!(v, want);
            }
        }
    }

    #[test]
    fn large_slice_and_pad_use_threads_correctly() {
        let x = iota(&[3, 200, 300]);
        let y = slice(&x, &[1, 10, 5], &[3, 190, 300], &[1, 2, 3]);
        assert_eq!(y.shape, vec![2, 90, 99]);
        assert_eq!(y.data[0], x.data[ravel(&[1, 10, 5], &x.shape)]);
        let last = ravel(&[2, 188, 299], &x.shape);
        assert_eq!(*y.data.last().unwrap(), x.data[last]);
        let p = pad_constant(&x, &[(0, 0), (1, 1), (1, 1)], 0.0);
        assert_eq!(p.shape, vec![3, 202, 302]);
        assert_eq!(
            p.data[ravel(&[2, 200, 300], &p.shape)],
            *x.data.last().unwrap()
        );
        assert_eq!(p.data[ravel(&[2, 201, 300], &p.shape)], 0.0);
    }
}
