//! The references: the slowest obvious formulation of each op (direct loops, index
//! arithmetic), sharing nothing with the kernels under test.

use crate::prelude::*;

// ---------------------------------------------------------------------------------------------
// Index arithmetic for the references

pub(crate) fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d].max(1);
        i /= shape[d].max(1);
    }
    idx
}

pub(crate) fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (i, n)| acc * n + i)
}

/// The element of `a` that broadcasting maps output index `idx` to.
pub(crate) fn broadcast_at(a: &Array, idx: &[usize]) -> f64 {
    let off = idx.len() - a.shape.len();
    let i: Vec<usize> = a
        .shape
        .iter()
        .enumerate()
        .map(|(d, &n)| if n == 1 { 0 } else { idx[off + d] })
        .collect();
    a.data[ravel(&i, &a.shape)] as f64
}

pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let db = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            assert!(da == db || da == 1 || db == 1, "reference: no broadcast");
            da.max(db)
        })
        .collect()
}

pub(crate) fn elementwise(shape: Vec<usize>, f: impl Fn(&[usize]) -> f64) -> Ref {
    let n = shape.iter().product();
    let data = (0..n).map(|i| f(&unravel(i, &shape))).collect();
    Ref { shape, data }
}

// ---------------------------------------------------------------------------------------------
// References

/// Independent formula and input range of each unary row. No wildcard: a new row needs one.
pub(crate) fn unary_ref(u: Unary) -> (fn(f64) -> f64, (f64, f64)) {
    match u {
        Unary::Relu => (|x| x.max(0.0), (-3.0, 3.0)),
        Unary::Tanh => (f64::tanh, (-4.0, 4.0)),
        Unary::Sigmoid => (|x| 1.0 / (1.0 + (-x).exp()), (-12.0, 12.0)),
        Unary::Silu => (|x| x / (1.0 + (-x).exp()), (-12.0, 12.0)),
        Unary::Exp => (f64::exp, (-6.0, 6.0)),
        Unary::Sqrt => (f64::sqrt, (0.0, 9.0)),
        Unary::Gelu => (
            |x| 0.5 * x * (1.0 + erf_series(x / 2f64.sqrt())),
            (-5.0, 5.0),
        ),
        Unary::Sin => (f64::sin, (-7.0, 7.0)),
        Unary::Cos => (f64::cos, (-7.0, 7.0)),
    }
}

/// erf from its everywhere-positive series `2x/√π · e^{-x²} · Σ (2x²)^n / (1·3·…·(2n+1))`,
/// summed until the terms stop mattering: no shared code with libm's rational approximations.
pub(crate) fn erf_series(x: f64) -> f64 {
    let t = 2.0 * x * x;
    let (mut term, mut sum, mut n) = (1.0f64, 1.0f64, 0.0);
    while term > sum * 1e-18 {
        n += 1.0;
        term *= t / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 * x / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
}

pub(crate) type BinaryRef = (fn(f64, f64) -> f64, (f64, f64));

/// Independent formula and `y` range of each binary row. No wildcard: a new row needs one.
pub(crate) fn binary_ref(b: Binary) -> BinaryRef {
    match b {
        Binary::Add => (|a, b| a + b, (-2.0, 2.0)),
        Binary::Sub => (|a, b| a - b, (-2.0, 2.0)),
        Binary::Mul => (|a, b| a * b, (-2.0, 2.0)),
        // Divisors kept away from zero, where f32 and f64 quotients part ways.
        Binary::Div => (|a, b| a / b, (0.25, 3.0)),
        Binary::Maximum => (f64::max, (-2.0, 2.0)),
        Binary::Minimum => (f64::min, (-2.0, 2.0)),
    }
}

/// Direct convolution: the seven loops, zero padding by bounds checks.
pub(crate) fn conv_ref(x: &Array, w: &Array, bias: Option<&Array>, p: &Conv2d) -> Ref {
    let [n, _, h, wd] = x.shape[..] else { panic!() };
    let [co, cig, kh, kw] = w.shape[..] else {
        panic!()
    };
    let oh = (h + p.pads[0] + p.pads[1] - p.dilations[0] * (kh - 1) - 1) / p.strides[0] + 1;
    let ow = (wd + p.pads[2] + p.pads[3] - p.dilations[1] * (kw - 1) - 1) / p.strides[1] + 1;
    let per_group = co / p.groups;
    let mut out = vec![0f64; n * co * oh * ow];
    for b in 0..n {
        for o in 0..co {
            let g = o / per_group;
            for y in 0..oh {
                for xo in 0..ow {
                    let mut s = bias.map_or(0.0, |b| b.data[o] as f64);
                    for ci in 0..cig {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * p.strides[0] + ky * p.dilations[0]) as isize
                                    - p.pads[0] as isize;
                                let ix = (xo * p.strides[1] + kx * p.dilations[1]) as isize
                                    - p.pads[2] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi =
                                    ravel(&[b, g * cig + ci, iy as usize, ix as usize], &x.shape);
                                let wi = ravel(&[o, ci, ky, kx], &w.shape);
                                s += x.data[xi] as f64 * w.data[wi] as f64;
                            }
                        }
                    }
                    out[ravel(&[b, o, y, xo], &[n, co, oh, ow])] = s;
                }
            }
        }
    }
    Ref {
        shape: vec![n, co, oh, ow],
        data: out,
    }
}

pub(crate) fn group_norm_ref(
    x: &Array,
    gamma: &Array,
    beta: &Array,
    groups: usize,
    eps: f64,
) -> Ref {
    let [n, c, h, w] = x.shape[..] else { panic!() };
    let cg = c / groups;
    let mut out = vec![0f64; x.len()];
    for b in 0..n {
        for g in 0..groups {
            let members: Vec<usize> = (g * cg..(g + 1) * cg)
                .flat_map(|ch| (0..h * w).map(move |p| (b * c + ch) * h * w + p))
                .collect();
            let m = members.len() as f64;
            let mean = members.iter().map(|&i| x.data[i] as f64).sum::<f64>() / m;
            let var = members
                .iter()
                .map(|&i| (x.data[i] as f64 - mean).powi(2))
                .sum::<f64>()
                / m;
            for &i in &members {
                let ch = (i / (h * w)) % c;
                out[i] = (x.data[i] as f64 - mean) / (var + eps).sqrt() * gamma.data[ch] as f64
                    + beta.data[ch] as f64;
            }
        }
    }
    Ref {
        shape: x.shape.clone(),
        data: out,
    }
}

pub(crate) fn reduce_mean_ref(x: &Array, axes: &[usize], keep: bool) -> Ref {
    let kept: Vec<usize> = x
        .shape
        .iter()
        .enumerate()
        .map(|(d, &n)| if axes.contains(&d) { 1 } else { n })
        .collect();
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    let mut sums = vec![0f64; kept.iter().product()];
    for (i, &v) in x.data.iter().enumerate() {
        let mut idx = unravel(i, &x.shape);
        axes.iter().for_each(|&a| idx[a] = 0);
        sums[ravel(&idx, &kept)] += v as f64;
    }
    let shape = if keep {
        kept
    } else {
        (0..x.shape.len())
            .filter(|d| !axes.contains(d))
            .map(|d| x.shape[d])
            .collect()
    };
    Ref {
        shape,
        data: sums.iter().map(|s| s / count as f64).collect(),
    }
}

/// `x` [.., M, K] (or [.., K, M] transposed) times `y`, batch axes broadcast.
pub(crate) fn matmul_ref(x: &Array, y: &Array, tx: bool, ty: bool) -> Ref {
    let (rx, ry) = (x.shape.len(), y.shape.len());
    let (m, k) = if tx {
        (x.shape[rx - 1], x.shape[rx - 2])
    } else {
        (x.shape[rx - 2], x.shape[rx - 1])
    };
    let n = if ty { y.shape[ry - 2] } else { y.shape[ry - 1] };
    let batch = broadcast_shape(&x.shape[..rx - 2], &y.shape[..ry - 2]);
    let mut shape = batch.clone();
    shape.extend([m, n]);
    let at = |a: &Array, bidx: &[usize], r: usize, c: usize| -> f64 {
        let rank = a.shape.len();
        let off = bidx.len() - (rank - 2);
        let mut idx: Vec<usize> = (0..rank - 2)
            .map(|d| if a.shape[d] == 1 { 0 } else { bidx[off + d] })
            .collect();
        idx.extend([r, c]);
        a.data[ravel(&idx, &a.shape)] as f64
    };
    elementwise(shape, |idx| {
        let (b, i, j) = (
            &idx[..idx.len() - 2],
            idx[idx.len() - 2],
            idx[idx.len() - 1],
        );
        (0..k)
            .map(|l| {
                let a = if tx { at(x, b, l, i) } else { at(x, b, i, l) };
                let c = if ty { at(y, b, j, l) } else { at(y, b, l, j) };
                a * c
            })
            .sum()
    })
}

pub(crate) fn softmax_ref(x: &Array, axis: usize) -> Ref {
    let n = x.shape[axis];
    elementwise(x.shape.clone(), |idx| {
        let along = |j: usize| {
            let mut i = idx.to_vec();
            i[axis] = j;
            x.data[ravel(&i, &x.shape)] as f64
        };
        let max = (0..n).map(along).fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = (0..n).map(|j| (along(j) - max).exp()).sum();
        (along(idx[axis]) - max).exp() / total
    })
}

pub(crate) fn attention_ref(
    q: &Array,
    k: &Array,
    v: &Array,
    mask: Option<&Array>,
    scale: f64,
) -> Ref {
    let [b, l, d] = q.shape[..] else { panic!() };
    let s = k.shape[1];
    let e = v.shape[2];
    elementwise(vec![b, l, e], |idx| {
        let (bi, i, c) = (idx[0], idx[1], idx[2]);
        let score = |j: usize| {
            (0..d)
                .map(|t| {
                    q.data[ravel(&[bi, i, t], &q.shape)] as f64
                        * k.data[ravel(&[bi, j, t], &k.shape)] as f64
                })
                .sum::<f64>()
                * scale
                + mask.map_or(0.0, |m| m.data[ravel(&[i, j], &m.shape)] as f64)
        };
        let scores: Vec<f64> = (0..s).map(score).collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = scores.iter().map(|x| (x - max).exp()).sum();
        (0..s)
            .map(|j| (scores[j] - max).exp() / total * v.data[ravel(&[bi, j, c], &v.shape)] as f64)
            .sum()
    })
}
