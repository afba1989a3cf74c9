//! Normalisations along axes: softmax and layer norm.
//!
//! Both view the input as `[outer, axis, inner]` blocks so that they walk memory in order
//! whatever the axis, and split the outer blocks over the cores.

use super::layout::transpose;
use super::{par_chunks, Array};

/// `exp(x - max) / sum(exp(x - max))` along `axis`. Subtracting the max keeps `exp` from
/// overflowing, so large logits give exact 0/1 weights instead of NaN.
///
/// Panics if `axis` is not below the rank.
pub fn softmax(x: &Array, axis: usize) -> Array {
    let rank = x.shape.len();
    assert!(axis < rank, "softmax: axis {axis} for rank {rank}");
    let len = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let block = len * inner;
    let mut out = vec![0.0f32; x.data.len()];
    if out.is_empty() {
        return Array::new(x.shape.clone(), out);
    }
    par_chunks(&mut out, block, |off, chunk| {
        let mut acc = vec![0.0f32; inner];
        for (bi, ob) in chunk.chunks_exact_mut(block).enumerate() {
            let xb = &x.data[off + bi * block..][..block];
            // Rows of `inner` elements, one per step along the axis: max, then exp and sum, then
            // scale, each pass running down contiguous rows.
            acc.copy_from_slice(&xb[..inner]);
            for row in xb.chunks_exact(inner).skip(1) {
                for (m, &v) in acc.iter_mut().zip(row) {
                    *m = m.max(v);
                }
            }
            for (orow, row) in ob.chunks_exact_mut(inner).zip(xb.chunks_exact(inner)) {
                for ((o, &v), &m) in orow.iter_mut().zip(row).zip(&acc) {
                    *o = (v - m).exp();
                }
            }
            acc.fill(0.0);
            for orow in ob.chunks_exact(inner) {
                for (s, &e) in acc.iter_mut().zip(orow) {
                    *s += e;
                }
            }
            for orow in ob.chunks_exact_mut(inner) {
                for (o, &s) in orow.iter_mut().zip(&acc) {
                    *o /= s;
                }
            }
        }
    });
    Array::new(x.shape.clone(), out)
}

/// `(x - mean) / sqrt(var + eps) * gamma + beta` with mean and (biased) variance taken over
/// `axes` jointly, as MIL `layer_norm` does. `gamma` and `beta` are laid out like
/// `x.shape[axes]` in the order `axes` lists them.
///
/// Trailing axes in order (the usual case) are normalised in place; other axis sets go through
/// a transpose to the end and back.
///
/// Panics if an axis is out of range or repeated, or if `gamma` / `beta` do not have the
/// product of the normalised dims as length.
pub fn layer_norm(
    x: &Array,
    axes: &[usize],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
) -> Array {
    let rank = x.shape.len();
    let mut seen = vec![false; rank];
    for &a in axes {
        assert!(
            a < rank && !seen[a],
            "layer_norm: axes {axes:?} for rank {rank}"
        );
        seen[a] = true;
    }
    let group: usize = axes.iter().map(|&a| x.shape[a]).product();
    for p in [gamma, beta].into_iter().flatten() {
        assert_eq!(
            p.len(),
            group,
            "layer_norm: gamma/beta length {} for normalised dims of {group} elements",
            p.len()
        );
    }
    let trailing = axes
        .iter()
        .enumerate()
        .all(|(i, &a)| a == rank - axes.len() + i);
    if trailing {
        return layer_norm_trailing(x, group, gamma, beta, eps);
    }
    let mut perm: Vec<usize> = (0..rank).filter(|d| !seen[*d]).collect();
    perm.extend_from_slice(axes);
    let y = layer_norm_trailing(&transpose(x, &perm), group, gamma, beta, eps);
    let mut inverse = vec![0; rank];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    transpose(&y, &inverse)
}

/// Layer norm over consecutive groups of `group` elements.
fn layer_norm_trailing(
    x: &Array,
    group: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
) -> Array {
    let mut out = vec![0.0f32; x.data.len()];
    if out.is_empty() {
        return Array::new(x.shape.clone(), out);
    }
    par_chunks(&mut out, group, |off, chunk| {
        for (gi, og) in chunk.chunks_exact_mut(group).enumerate() {
            let xg = &x.data[off + gi * group..][..group];
            // f64 sums: groups can be a whole feature map (millions of elements), where f32
            // accumulation would drift. Two passes avoid the E[x²] - E[x]² cancellation.
            let mean = xg.iter().map(|&v| v as f64).sum::<f64>() / group as f64;
            let var = xg
                .iter()
                .map(|&v| (v as f64 - mean) * (v as f64 - mean))
                .sum::<f64>()
                / group as f64;
            let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
            let mean = mean as f32;
            for (i, (o, &v)) in og.iter_mut().zip(xg).enumerate() {
                let g = gamma.map_or(1.0, |g| g[i]);
                let b = beta.map_or(0.0, |b| b[i]);
                *o = (v - mean) * inv * g + b;
            }
        }
    });
    Array::new(x.shape.clone(), out)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Lcg;
    use super::*;

    /// Multi-index of flat position `flat` in `shape`.
    fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            idx[d] = flat % shape[d];
            flat /= shape[d];
        }
        idx
    }

    fn ravel(idx: &[usize], shape: &[usize]) -> usize {
        idx.iter().zip(shape).fold(0, |f, (&i, &s)| f * s + i)
    }

    /// Every flat position that shares `flat`'s coordinates outside `axes`, in the order of a
    /// row-major walk over `axes` as listed.
    fn group_of(flat: usize, shape: &[usize], axes: &[usize]) -> Vec<usize> {
        let base = unravel(flat, shape);
        let dims: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
        let n: usize = dims.iter().product();
        (0..n)
            .map(|g| {
                let sub = unravel(g, &dims);
                let mut idx = base.clone();
                for (&a, &s) in axes.iter().zip(&sub) {
                    idx[a] = s;
                }
                ravel(&idx, shape)
            })
            .collect()
    }

    #[test]
    fn softmax_matches_f64_reference() {
        let mut rng = Lcg(5);
        for _ in 0..30 {
            let shape: Vec<usize> = (0..1 + rng.below(4)).map(|_| 1 + rng.below(5)).collect();
            let axis = rng.below(shape.len());
            let n: usize = shape.iter().product();
            // Scaled up so that a missing max subtraction would overflow exp.
            let data: Vec<f32> = rng.vec(n).iter().map(|v| v * 200.0).collect();
            let x = Array::new(shape.clone(), data);
            let y = softmax(&x, axis);
            assert_eq!(y.shape, shape);
            for flat in 0..n {
                let grp = group_of(flat, &shape, &[axis]);
                let m = grp
                    .iter()
                    .map(|&i| x.data[i] as f64)
                    .fold(f64::MIN, f64::max);
                let s: f64 = grp.iter().map(|&i| (x.data[i] as f64 - m).exp()).sum();
                let want = (x.data[flat] as f64 - m).exp() / s;
                assert!(
                    (y.data[flat] as f64 - want).abs() < 1e-6,
                    "{shape:?} axis {axis}: {} vs {want}",
                    y.data[flat]
                );
            }
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_in_parallel_path() {
        let mut rng = Lcg(6);
        let x = Array::new(vec![300, 257], rng.vec(300 * 257));
        let y = softmax(&x, 1);
        for row in y.data.chunks_exact(257) {
            let s: f64 = row.iter().map(|&v| v as f64).sum();
            assert!((s - 1.0).abs() < 1e-5, "{s}");
        }
    }

    fn check_layer_norm(shape: &[usize], axes: &[usize], affine: bool, seed: u64) {
        let mut rng = Lcg(seed);
        let n: usize = shape.iter().product();
        let x = Array::new(
            shape.to_vec(),
            rng.vec(n).iter().map(|v| v * 3.0 + 1.5).collect(),
        );
        let group: usize = axes.iter().map(|&a| shape[a]).product();
        let gamma = rng.vec(group);
        let beta = rng.vec(group);
        let (g, b) = if affine {
            (Some(&gamma[..]), Some(&beta[..]))
        } else {
            (None, None)
        };
        let eps = 1e-5;
        let y = layer_norm(&x, axes, g, b, eps);
        assert_eq!(y.shape, shape);
        for flat in 0..n {
            let grp = group_of(flat, shape, axes);
            let pos = grp.iter().position(|&i| i == flat).unwrap();
            let mean = grp.iter().map(|&i| x.data[i] as f64).sum::<f64>() / group as f64;
            let var = grp
                .iter()
                .map(|&i| (x.data[i] as f64 - mean).powi(2))
                .sum::<f64>()
                / group as f64;
            let mut want = (x.data[flat] as f64 - mean) / (var + eps as f64).sqrt();
            if affine {
                want = want * gamma[pos] as f64 + beta[pos] as f64;
            }
            assert!(
                (y.data[flat] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                "{shape:?} axes {axes:?}: {} vs {want}",
                y.data[flat]
            );
        }
    }

    #[test]
    fn layer_norm_matches_f64_reference() {
        check_layer_norm(&[2, 5, 7], &[2], true, 1);
        check_layer_norm(&[2, 5, 7], &[1, 2], true, 2);
        check_layer_norm(&[2, 5, 7], &[1, 2], false, 3);
        check_layer_norm(&[3, 4], &[0, 1], true, 4);
        // Non-trailing and out-of-order axes: gamma follows the order given.
        check_layer_norm(&[2, 3, 4, 5], &[1], true, 5);
        check_layer_norm(&[2, 3, 4, 5], &[3, 1], true, 6);
        check_layer_norm(&[400, 300], &[1], true, 7);
    }

    #[test]
    #[should_panic]
    fn layer_norm_checks_gamma_length() {
        layer_norm(&Array::zeros(vec![2, 3]), &[1], Some(&[1.0; 2]), None, 1e-5);
    }
}
