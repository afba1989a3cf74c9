//! Elementwise kernels: numpy-broadcasting binary ops and unary maps.
//!
//! Operands are walked in coalesced runs (see `super::coalesce`), so the common decoder cases
//! — same shape, per-channel `[1,C,1,1]` against `[1,C,H,W]`, scalars — reduce to one tight inner
//! loop per run instead of per-element index arithmetic.

use super::{coalesce, par_chunks, strides_of, Array};

/// Numpy broadcasting of two shapes; `None` if they do not broadcast.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        let lead = rank - s.len();
        if i < lead {
            1
        } else {
            s[i - lead]
        }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Strides that read an operand of `shape` as if it had the broadcast shape `out`
/// (0 along broadcast dims).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let own = strides_of(shape);
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < lead || (shape[i - lead] == 1 && out[i] != 1) {
                0
            } else {
                own[i - lead]
            }
        })
        .collect()
}

/// `f` applied elementwise with numpy broadcasting; `None` if the shapes do not broadcast.
pub fn binary(a: &Array, b: &Array, f: impl Fn(f32, f32) -> f32 + Sync) -> Option<Array> {
    let shape = broadcast_shape(&a.shape, &b.shape)?;
    let n: usize = shape.iter().product();
    let mut out = vec![0.0f32; n];
    if a.shape == b.shape {
        par_chunks(&mut out, 1, |off, chunk| {
            let (xa, xb) = (
                &a.data[off..off + chunk.len()],
                &b.data[off..off + chunk.len()],
            );
            for ((o, &x), &y) in chunk.iter_mut().zip(xa).zip(xb) {
                *o = f(x, y);
            }
        });
        return Some(Array { shape, data: out });
    }
    if n == 0 {
        return Some(Array { shape, data: out });
    }
    let (dims, st) = coalesce(
        &shape,
        &[
            broadcast_strides(&a.shape, &shape),
            broadcast_strides(&b.shape, &shape),
        ],
    );
    par_chunks(&mut out, 1, |off, chunk| {
        fill_broadcast(chunk, off, &dims, &st[0], &st[1], &a.data, &b.data, &f)
    });
    Some(Array { shape, data: out })
}

/// Fills `out`, the flat output range starting at `start`, run by run along the innermost dim.
/// After coalescing, the innermost stride of each operand is 1 (walked) or 0 (broadcast).
#[allow(clippy::too_many_arguments)]
fn fill_broadcast(
    out: &mut [f32],
    start: usize,
    dims: &[usize],
    sa: &[usize],
    sb: &[usize],
    a: &[f32],
    b: &[f32],
    f: &impl Fn(f32, f32) -> f32,
) {
    let rank = dims.len();
    let inner = dims[rank - 1];
    let mut idx = vec![0usize; rank];
    let mut rem = start;
    for d in (0..rank).rev() {
        idx[d] = rem % dims[d];
        rem /= dims[d];
    }
    let mut pos = 0;
    while pos < out.len() {
        let oa: usize = idx.iter().zip(sa).map(|(i, s)| i * s).sum();
        let ob: usize = idx.iter().zip(sb).map(|(i, s)| i * s).sum();
        let run = (inner - idx[rank - 1]).min(out.len() - pos);
        let o = &mut out[pos..pos + run];
        match (sa[rank - 1], sb[rank - 1]) {
            (0, 0) => o.fill(f(a[oa], b[ob])),
            (_, 0) => {
                let y = b[ob];
                for (o, &x) in o.iter_mut().zip(&a[oa..oa + run]) {
                    *o = f(x, y);
                }
            }
            (0, _) => {
                let x = a[oa];
                for (o, &y) in o.iter_mut().zip(&b[ob..ob + run]) {
                    *o = f(x, y);
                }
            }
            _ => {
                for ((o, &x), &y) in o.iter_mut().zip(&a[oa..oa + run]).zip(&b[ob..ob + run]) {
                    *o = f(x, y);
                }
            }
        }
        pos += run;
        idx[rank - 1] += run;
        let mut d = rank - 1;
        while d > 0 && idx[d] == dims[d] {
            idx[d] = 0;
            idx[d - 1] += 1;
            d -= 1;
        }
    }
}

/// `min(max(x, lo), hi)` per element, as IR and MIL define clip: for `lo > hi` every element
/// becomes `hi`, where `f32::clamp` would panic (MIL packages come from anywhere). NaN stays NaN.
pub fn clip(x: &Array, lo: f32, hi: f32) -> Array {
    map(x, move |v| if v.is_nan() { v } else { v.max(lo).min(hi) })
}

/// MIL's iOS17 `quantize` to int8 for one value: `clamp(round_half_even(x / scale) +
/// zero_point, -128, 127)` (division, not a reciprocal product, as the op's definition reads),
/// held in an f32. NaN stays NaN.
pub fn quantize_i8(x: f32, scale: f32, zero_point: f32) -> f32 {
    ((x / scale).round_ties_even() + zero_point).clamp(-128.0, 127.0)
}

/// MIL's `dequantize` for one value: `scale * (q - zero_point)`.
pub fn dequantize(q: f32, scale: f32, zero_point: f32) -> f32 {
    scale * (q - zero_point)
}

/// An int8 quantize–dequantize pair on every element (the IR's `fake_quantize`).
pub fn fake_quantize_i8(x: &Array, scale: f32, zero_point: i8) -> Array {
    let zp = f32::from(zero_point);
    map(x, move |v| dequantize(quantize_i8(v, scale, zp), scale, zp))
}

/// `f` applied to every element.
pub fn map(x: &Array, f: impl Fn(f32) -> f32 + Sync) -> Array {
    let mut out = vec![0.0f32; x.data.len()];
    par_chunks(&mut out, 1, |off, chunk| {
        let src = &x.data[off..off + chunk.len()];
        for (o, &v) in chunk.iter_mut().zip(src) {
            *o = f(v);
        }
    });
    Array {
        shape: x.shape.clone(),
        data: out,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Lcg;
    use super::super::PAR_MIN_ELEMS;
    use super::*;

    #[test]
    fn clip_takes_any_bounds_and_keeps_nan() {
        let x = Array::new(vec![4], vec![-3.0, 0.25, 3.0, f32::NAN]);
        let y = clip(&x, -1.0, 1.0);
        assert_eq!(&y.data[..3], &[-1.0, 0.25, 1.0]);
        assert!(y.data[3].is_nan());
        // Reversed bounds: min(max(x, 1), -1) is -1 for every number.
        assert_eq!(&clip(&x, 1.0, -1.0).data[..3], &[-1.0, -1.0, -1.0]);
    }

    /// Per-element reference: unravel the output index and read each operand through it.
    fn naive_binary(a: &Array, b: &Array, f: impl Fn(f32, f32) -> f32) -> Array {
        let shape = broadcast_shape(&a.shape, &b.shape).unwrap();
        let n: usize = shape.iter().product();
        let read = |x: &Array, idx: &[usize]| {
            let lead = shape.len() - x.shape.len();
            let mut off = 0;
            for (d, &s) in x.shape.iter().enumerate() {
                off = off * s + if s == 1 { 0 } else { idx[lead + d] };
            }
            x.data[off]
        };
        let data = (0..n)
            .map(|mut flat| {
                let mut idx = vec![0; shape.len()];
                for d in (0..shape.len()).rev() {
                    idx[d] = flat % shape[d];
                    flat /= shape[d];
                }
                f(read(a, &idx), read(b, &idx))
            })
            .collect();
        Array::new(shape.clone(), data)
    }

    #[test]
    fn broadcast_rules() {
        assert_eq!(broadcast_shape(&[2, 3], &[2, 3]), Some(vec![2, 3]));
        assert_eq!(
            broadcast_shape(&[1, 64, 8, 8], &[1, 64, 1, 1]),
            Some(vec![1, 64, 8, 8])
        );
        assert_eq!(
            broadcast_shape(&[64, 1, 1], &[2, 64, 5, 7]),
            Some(vec![2, 64, 5, 7])
        );
        assert_eq!(broadcast_shape(&[], &[3, 4]), Some(vec![3, 4]));
        assert_eq!(broadcast_shape(&[4, 1], &[1, 5]), Some(vec![4, 5]));
        assert_eq!(broadcast_shape(&[0], &[1]), Some(vec![0]));
        assert_eq!(broadcast_shape(&[2, 0], &[2, 1]), Some(vec![2, 0]));
        assert_eq!(broadcast_shape(&[2, 3], &[3, 2]), None);
        assert_eq!(broadcast_shape(&[3], &[4]), None);
        assert_eq!(broadcast_shape(&[1, 64, 8, 8], &[1, 32, 1, 1]), None);
        assert_eq!(broadcast_shape(&[0], &[2]), None);
    }

    #[test]
    fn binary_incompatible_is_none() {
        let a = Array::zeros(vec![2, 3]);
        let b = Array::zeros(vec![2]);
        assert!(binary(&a, &b, |x, y| x + y).is_none());
    }

    #[test]
    fn binary_matches_naive_broadcasting() {
        let mut rng = Lcg(7);
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3], &[2, 3]),
            (&[1, 4, 3, 5], &[1, 4, 1, 1]),
            (&[1, 4, 1, 1], &[2, 4, 3, 5]),
            (&[2, 3, 4], &[]),
            (&[], &[2, 3, 4]),
            (&[], &[]),
            (&[4, 1], &[1, 5]),
            (&[3, 1, 5], &[4, 1]),
            (&[2, 1, 3, 1], &[1, 4, 1, 5]),
            (&[5], &[3, 1, 5]),
            (&[2, 0, 3], &[1, 1, 3]),
        ];
        for &(sa, sb) in cases {
            let a = Array::new(sa.to_vec(), rng.vec(sa.iter().product()));
            let b = Array::new(sb.to_vec(), rng.vec(sb.iter().product()));
            let f = |x: f32, y: f32| x * 3.0 - y;
            let got = binary(&a, &b, f).unwrap();
            assert_eq!(got, naive_binary(&a, &b, f), "{sa:?} op {sb:?}");
        }
    }

    #[test]
    fn binary_large_splits_across_threads_correctly() {
        // Big enough for par_chunks to split, with chunk edges falling mid-run.
        let mut rng = Lcg(11);
        let (c, hw) = (7, PAR_MIN_ELEMS / 3 + 5);
        let a = Array::new(vec![1, c, hw, 1], rng.vec(c * hw));
        let b = Array::new(vec![1, c, 1, 1], rng.vec(c));
        let got = binary(&b, &a, |x, y| x - y).unwrap();
        assert_eq!(got, naive_binary(&b, &a, |x, y| x - y));
        let same = binary(&a, &a, |x, y| x * y).unwrap();
        assert!(same.data.iter().zip(&a.data).all(|(&o, &x)| o == x * x));
    }

    #[test]
    fn map_applies_everywhere() {
        let x = Array::new(vec![2, 2], vec![1.0, -2.0, 3.0, -4.0]);
        assert_eq!(
            map(&x, f32::abs),
            Array::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])
        );
        let big = Array::new(
            vec![3 * PAR_MIN_ELEMS],
            (0..3 * PAR_MIN_ELEMS).map(|i| i as f32).collect(),
        );
        let m = map(&big, |v| v + 1.0);
        assert!(m.data.iter().enumerate().all(|(i, &v)| v == i as f32 + 1.0));
    }

    /// `cargo test --release --lib kernels::elementwise::tests::bench -- --ignored --nocapture`
    #[test]
    fn int8_quantization_rounds_half_to_even_and_clips() {
        let q = |x: f32, zp: f32| quantize_i8(x, 0.5, zp);
        assert_eq!(
            [q(1.25, 0.0), q(1.75, 0.0), q(-1.25, 0.0)],
            [2.0, 4.0, -2.0]
        );
        assert_eq!(
            [q(100.0, 0.0), q(-100.0, 0.0), q(-63.0, -3.0)],
            [127.0, -128.0, -128.0]
        );
        assert!(q(f32::NAN, 0.0).is_nan());
        let y = fake_quantize_i8(&Array::new(vec![3], vec![0.3, -70.0, 1.25]), 0.5, 1);
        assert_eq!(y.data, [0.5, -64.5, 1.0]);
    }

    #[test]
    #[ignore]
    fn bench() {
        let mut rng = Lcg(1);
        let n = 64 * 768 * 768;
        let x = Array::new(vec![1, 64, 768, 768], rng.vec(n));
        let y = Array::new(vec![1, 64, 768, 768], rng.vec(n));
        let c = Array::new(vec![1, 64, 1, 1], rng.vec(64));
        let time = |name: &str, f: &dyn Fn() -> Array| {
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                std::hint::black_box(f());
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{name} on {n} elements: {:.1} ms ({:.2} ns/elem)",
                best * 1e3,
                best * 1e9 / n as f64
            );
        };
        time("same-shape add", &|| binary(&x, &y, |a, b| a + b).unwrap());
        time("per-channel mul", &|| binary(&x, &c, |a, b| a * b).unwrap());
        time("scalar add", &|| {
            binary(&x, &Array::scalar(1.0), |a, b| a + b).unwrap()
        });
        time("map relu", &|| map(&x, |v| v.max(0.0)));
        time("map tanh(v/3)*3", &|| map(&x, |v| (v / 3.0).tanh() * 3.0));
    }
}
