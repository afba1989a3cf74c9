//! Reductions.

use super::{coalesce, next_row, strides_of, Array};

/// Mean over `axes` (each `< rank`; duplicates count once). `keep_dims` keeps reduced axes as
/// size 1. Empty `axes` returns the input unchanged; reducing an empty axis gives NaN, as numpy.
///
/// Sums accumulate in f64 so that means over millions of elements stay accurate to f32.
///
/// Panics if an axis is out of range.
pub fn reduce_mean(x: &Array, axes: &[usize], keep_dims: bool) -> Array {
    let rank = x.shape.len();
    let mut reduced = vec![false; rank];
    for &a in axes {
        assert!(
            a < rank,
            "reduce_mean: axis {a} out of range for rank {rank}"
        );
        reduced[a] = true;
    }
    let kept_shape: Vec<usize> = x
        .shape
        .iter()
        .zip(&reduced)
        .map(|(&s, &r)| if r { 1 } else { s })
        .collect();
    let out_len: usize = kept_shape.iter().product();
    let count: usize = x
        .shape
        .iter()
        .zip(&reduced)
        .filter(|(_, &r)| r)
        .map(|(&s, _)| s)
        .product();

    let mut acc = vec![0.0f64; out_len];
    if !x.data.is_empty() {
        let out_strides: Vec<usize> = strides_of(&kept_shape)
            .iter()
            .zip(&reduced)
            .map(|(&s, &r)| if r { 0 } else { s })
            .collect();
        let (dims, st) = coalesce(&x.shape, &[strides_of(&x.shape), out_strides]);
        let (r, inner) = (dims.len(), dims[dims.len() - 1]);
        let inner_reduced = st[1][r - 1] == 0;
        let mut idx = vec![0usize; r];
        for row in x.data.chunks_exact(inner) {
            let o: usize = idx.iter().zip(&st[1]).map(|(i, s)| i * s).sum();
            if inner_reduced {
                acc[o] += row.iter().map(|&v| v as f64).sum::<f64>();
            } else {
                for (a, &v) in acc[o..o + inner].iter_mut().zip(row) {
                    *a += v as f64;
                }
            }
            next_row(&mut idx, &dims);
        }
    }
    let data = acc.iter().map(|&s| (s / count as f64) as f32).collect();
    let shape = if keep_dims {
        kept_shape
    } else {
        x.shape
            .iter()
            .zip(&reduced)
            .filter(|(_, &r)| !r)
            .map(|(&s, _)| s)
            .collect()
    };
    Array { shape, data }
}

/// The index of the first largest element along `axis` (removed from the shape), as f32 values;
/// NaN counts as larger than every number, as numpy's argmax. Panics if the axis is out of range.
pub fn argmax(x: &Array, axis: usize) -> Array {
    let n = x.shape[axis];
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| x.data[(o * n + k) * inner + i];
            let mut best = 0;
            for k in 1..n {
                let (v, b) = (at(k), at(best));
                if v > b || (v.is_nan() && !b.is_nan()) {
                    best = k;
                }
            }
            out.push(best as f32);
        }
    }
    let mut shape = x.shape.clone();
    shape.remove(axis);
    Array::new(shape, out)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::iota;
    use super::*;

    #[test]
    fn argmax_takes_the_first_largest() {
        let x = Array::new(
            vec![2, 4],
            vec![1.0, 7.0, 7.0, 2.0, f32::NAN, 3.0, 9.0, 9.0],
        );
        assert_eq!(argmax(&x, 1).data, [1.0, 0.0]);
        let y = argmax(&x, 0);
        assert_eq!(
            (y.shape.clone(), y.data),
            (vec![4], vec![1.0, 0.0, 1.0, 1.0])
        );
    }

    #[test]
    fn mean_over_various_axes() {
        let x = iota(&[2, 3, 4]);
        // Hand-computed: element (i,j,k) = 12i + 4j + k.
        let m = reduce_mean(&x, &[2], false);
        assert_eq!(m.shape, vec![2, 3]);
        assert_eq!(m.data, vec![1.5, 5.5, 9.5, 13.5, 17.5, 21.5]);
        let m = reduce_mean(&x, &[1], true);
        assert_eq!(m.shape, vec![2, 1, 4]);
        assert_eq!(m.data, vec![4.0, 5.0, 6.0, 7.0, 16.0, 17.0, 18.0, 19.0]);
        let m = reduce_mean(&x, &[0], false);
        assert_eq!(m.shape, vec![3, 4]);
        assert_eq!(m.data, (0..12).map(|v| v as f32 + 6.0).collect::<Vec<_>>());
        let m = reduce_mean(&x, &[0, 2], true);
        assert_eq!(m.shape, vec![1, 3, 1]);
        assert_eq!(m.data, vec![7.5, 11.5, 15.5]);
        let m = reduce_mean(&x, &[2, 0, 1], false);
        assert_eq!(m.shape, Vec::<usize>::new());
        assert_eq!(m.data, vec![11.5]);
        let m = reduce_mean(&x, &[1, 2], true);
        assert_eq!(m.shape, vec![2, 1, 1]);
        assert_eq!(m.data, vec![5.5, 17.5]);
    }

    #[test]
    fn mean_edge_cases() {
        let x = iota(&[2, 3]);
        assert_eq!(reduce_mean(&x, &[], false), x);
        assert_eq!(reduce_mean(&x, &[1, 1], false).data, vec![1.0, 4.0]);
        // Size-1 axes: reducing or keeping them must not disturb the others.
        let y = iota(&[1, 3, 1, 2]);
        let m = reduce_mean(&y, &[3], false);
        assert_eq!(m.shape, vec![1, 3, 1]);
        assert_eq!(m.data, vec![0.5, 2.5, 4.5]);
        let m = reduce_mean(&y, &[0, 2], false);
        assert_eq!(m, iota(&[3, 2]));
        let e = reduce_mean(&Array::zeros(vec![2, 0]), &[1], false);
        assert_eq!(e.shape, vec![2]);
        assert!(e.data.iter().all(|v| v.is_nan()));
        assert_eq!(
            reduce_mean(&Array::scalar(3.0), &[], true),
            Array::scalar(3.0)
        );
    }

    #[test]
    fn mean_is_accurate_on_large_inputs() {
        // An f32 running sum drifts badly at 2^24+ elements; the f64 accumulator must not.
        let x = Array::new(vec![1 << 22], vec![0.1; 1 << 22]);
        let m = reduce_mean(&x, &[0], false);
        assert!((m.data[0] - 0.1).abs() < 1e-7, "{}", m.data[0]);
    }

    #[test]
    #[should_panic]
    fn axis_out_of_range_panics() {
        reduce_mean(&iota(&[2, 3]), &[2], false);
    }
}
