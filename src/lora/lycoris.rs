//! LyCORIS LoHa and LoKr: the weight delta ΔW of one module, rebuilt from its factors.
//!
//! The formulas are the ones ComfyUI applies (`comfy/weight_adapter/loha.py` and `lokr.py`,
//! `calculate_weight`), which agree with A1111's `extensions-builtin/Lora/network_hada.py`,
//! `network_lokr.py` and `lyco_helpers.py`:
//!
//! * LoHa: `ΔW = (w1_a · w1_b) ⊙ (w2_a · w2_b) · alpha / dim` with `dim = w1_b.shape[0]`. With
//!   the Tucker cores `t1`/`t2` (conv), each side is instead
//!   `einsum("i j k l, j r, i p -> p r k l", t, w_b, w_a)`, so there `w_a` is `[rank, out]`.
//! * LoKr: `ΔW = kron(w1, w2) · alpha / dim`, each side whole (`lokr_w1`, `lokr_w2`) or a
//!   low-rank pair (`w_a · w_b`; `w2` may also use the Tucker core `t2` as above). `dim` is
//!   `w2_b.shape[0]` when `w2` is a pair, else `w1_b.shape[0]` when `w1` is; with both sides
//!   whole the scale is 1 whatever alpha says. A 4-D `w2` (conv) makes `w1` `[a, b, 1, 1]`.
//!
//! Without an alpha both tools scale by 1.0 (not kohya's alpha = rank), and an alpha of 0 makes
//! the delta zero; so does this.
//! The product is then reshaped to the patched weight's shape, which only has to hold as many
//! elements: a factor written for a linear layer may patch a 1x1 conv, as in those tools.
//!
//! Everything here comes from a downloaded file: every rank, inner dim and element count is
//! checked, with checked arithmetic, before anything is allocated. Cases the tools resolve
//! silently by precedence (a whole `lokr_w1` beside `lokr_w1_a`, `hada_t2` without `hada_t1`)
//! are refused: LyCORIS never writes them, so such a file is damaged. Errors are one line naming
//! the tensor at fault; the caller adds the file and module.

use crate::kernels::{matmul, Array};
use crate::tensor::{DType, Tensor};

/// Largest weight patched, in elements: far above any diffusion weight, and it bounds every
/// allocation here (see `Weight`).
const MAX_ELEMS: usize = 1 << 31;

/// The LoHa factors of one module (LyCORIS `hada_*` tensors).
pub struct Loha {
    pub w1_a: Tensor,
    pub w1_b: Tensor,
    pub w2_a: Tensor,
    pub w2_b: Tensor,
    pub t1: Option<Tensor>,
    pub t2: Option<Tensor>,
}

/// The LoKr factors of one module (LyCORIS `lokr_*`): each side whole or as a low-rank pair.
pub struct Lokr {
    pub w1: Option<Tensor>,
    pub w1_a: Option<Tensor>,
    pub w1_b: Option<Tensor>,
    pub w2: Option<Tensor>,
    pub w2_a: Option<Tensor>,
    pub w2_b: Option<Tensor>,
    pub t2: Option<Tensor>,
}

impl Loha {
    /// ΔW in the `target` shape, scaled by `alpha / dim` (1.0 without alpha).
    pub fn delta(&self, alpha: Option<f32>, target: &[usize]) -> Result<Vec<f32>, String> {
        let w = Weight::new(target)?;
        let (m1, m2) = match (&self.t1, &self.t2) {
            (None, None) => (
                low_rank(("hada_w1_a", &self.w1_a), ("hada_w1_b", &self.w1_b), &w)?,
                low_rank(("hada_w2_a", &self.w2_a), ("hada_w2_b", &self.w2_b), &w)?,
            ),
            (Some(t1), Some(t2)) => (
                tucker(
                    ("hada_t1", t1),
                    ("hada_w1_a", &self.w1_a),
                    ("hada_w1_b", &self.w1_b),
                    &w,
                )?,
                tucker(
                    ("hada_t2", t2),
                    ("hada_w2_a", &self.w2_a),
                    ("hada_w2_b", &self.w2_b),
                    &w,
                )?,
            ),
            (Some(_), None) => return Err("hada_t1 without hada_t2".into()),
            (None, Some(_)) => return Err("hada_t2 without hada_t1".into()),
        };
        // Torch would broadcast mismatched sides; LyCORIS writes equal ones, so anything else
        // is a damaged file.
        if m1.shape != m2.shape {
            return Err(format!(
                "the hada_w1 product is {:?} but the hada_w2 product is {:?}",
                m1.shape, m2.shape
            ));
        }
        w.fits("LoHa delta", &m1.shape, m1.len())?;
        let scale = alpha.map_or(1.0, |a| a / self.w1_b.shape[0] as f32);
        let mut d = m1.data;
        for (x, y) in d.iter_mut().zip(&m2.data) {
            *x = *x * y * scale;
        }
        Ok(d)
    }
}

impl Lokr {
    /// ΔW in the `target` shape, scaled by `alpha / dim` when a side is a low-rank pair.
    pub fn delta(&self, alpha: Option<f32>, target: &[usize]) -> Result<Vec<f32>, String> {
        let w = Weight::new(target)?;
        let (w1, dim1) = match (&self.w1, &self.w1_a, &self.w1_b) {
            (Some(w1), None, None) => (factor("lokr_w1", w1, &[2])?, None),
            (None, Some(a), Some(b)) => {
                (low_rank(("lokr_w1_a", a), ("lokr_w1_b", b), &w)?, Some(b))
            }
            (Some(_), _, _) => return Err("both lokr_w1 and lokr_w1_a/lokr_w1_b".into()),
            (None, Some(_), None) => return Err("lokr_w1_a without lokr_w1_b".into()),
            (None, None, Some(_)) => return Err("lokr_w1_b without lokr_w1_a".into()),
            (None, None, None) => return Err("neither lokr_w1 nor lokr_w1_a/lokr_w1_b".into()),
        };
        let (w2, dim2) = match (&self.w2, &self.w2_a, &self.w2_b, &self.t2) {
            (Some(w2), None, None, None) => (factor("lokr_w2", w2, &[2, 4])?, None),
            (None, Some(a), Some(b), None) => {
                (low_rank(("lokr_w2_a", a), ("lokr_w2_b", b), &w)?, Some(b))
            }
            (None, Some(a), Some(b), Some(t)) => (
                tucker(("lokr_t2", t), ("lokr_w2_a", a), ("lokr_w2_b", b), &w)?,
                Some(b),
            ),
            (Some(_), None, None, Some(_)) => return Err("lokr_t2 beside a whole lokr_w2".into()),
            (Some(_), _, _, _) => return Err("both lokr_w2 and lokr_w2_a/lokr_w2_b".into()),
            (None, Some(_), None, _) => return Err("lokr_w2_a without lokr_w2_b".into()),
            (None, None, Some(_), _) => return Err("lokr_w2_b without lokr_w2_a".into()),
            (None, None, None, Some(_)) => return Err("lokr_t2 without lokr_w2_a/lokr_w2_b".into()),
            (None, None, None, None) => {
                return Err("neither lokr_w2 nor lokr_w2_a/lokr_w2_b".into())
            }
        };
        // The w2 pair's rank wins when both sides are pairs, as in ComfyUI.
        let scale = match (alpha, dim2.or(dim1)) {
            (Some(a), Some(b)) => a / b.shape[0] as f32,
            _ => 1.0,
        };
        kron(&w1, &w2, scale, &w)
    }
}

/// The weight being patched: every product is checked against it before it is allocated, so
/// no factor can make this allocate more than the delta itself (or than its own inputs).
struct Weight<'a> {
    shape: &'a [usize],
    len: usize,
}

impl<'a> Weight<'a> {
    /// Refuses a shape whose element count overflows or is over `MAX_ELEMS`.
    fn new(shape: &'a [usize]) -> Result<Weight<'a>, String> {
        let len = elems(shape).ok_or_else(|| format!("the weight shape {shape:?} overflows"))?;
        if len > MAX_ELEMS {
            return Err(format!(
                "the weight {shape:?} has {len} elements, over the 2^31 limit"
            ));
        }
        Ok(Weight { shape, len })
    }

    /// Refuses a product of `shape` with more elements than the weight holds.
    fn bound(&self, what: &str, shape: &[usize]) -> Result<usize, String> {
        match elems(shape) {
            Some(n) if n <= self.len => Ok(n),
            _ => Err(format!(
                "{what} would be {shape:?}, more than the {} elements of the weight {:?}",
                self.len, self.shape
            )),
        }
    }

    /// Refuses a delta of `len` elements that cannot be reshaped to the weight.
    fn fits(&self, what: &str, shape: &[usize], len: usize) -> Result<(), String> {
        if len != self.len {
            return Err(format!(
                "the {what} {shape:?} has {len} elements but the weight {:?} has {}",
                self.shape, self.len
            ));
        }
        Ok(())
    }
}

fn elems(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// `t` as f32 after checking it is a float tensor of one of `ranks`, with no empty dim and as
/// many values as its shape says.
fn factor(name: &str, t: &Tensor, ranks: &[usize]) -> Result<Array, String> {
    if !matches!(t.dtype(), DType::F32 | DType::F16) {
        return Err(format!("{name} is {}, not a float tensor", t.dtype()));
    }
    if !ranks.contains(&t.shape.len()) {
        let want: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
        return Err(format!(
            "{name} has shape {:?}: {} dims, expected {}",
            t.shape,
            t.shape.len(),
            want.join(" or ")
        ));
    }
    if t.shape.contains(&0) {
        return Err(format!("{name} has an empty dim in {:?}", t.shape));
    }
    if elems(&t.shape) != Some(t.len()) {
        return Err(format!(
            "{name} holds {} values for shape {:?}",
            t.len(),
            t.shape
        ));
    }
    Ok(Array {
        shape: t.shape.clone(),
        data: t.to_f32(),
    })
}

/// `a · b` for a `[out, rank]` `a` and a `[rank, in]` `b`.
fn low_rank(
    (a_name, a): (&str, &Tensor),
    (b_name, b): (&str, &Tensor),
    w: &Weight,
) -> Result<Array, String> {
    let a = factor(a_name, a, &[2])?;
    let b = factor(b_name, b, &[2])?;
    if a.shape[1] != b.shape[0] {
        return Err(format!(
            "{a_name} {:?} and {b_name} {:?} disagree on the rank ({} vs {})",
            a.shape, b.shape, a.shape[1], b.shape[0]
        ));
    }
    let what = format!("{a_name} · {b_name}");
    w.bound(&what, &[a.shape[0], b.shape[1]])?;
    matmul(&a, &b, false, false).ok_or_else(|| format!("{what} failed"))
}

/// `einsum("i j k l, j r, i p -> p r k l", t, w_b, w_a)`: the Tucker core `t` `[i, j, kh, kw]`
/// with `w_b` `[j, in]` and `w_a` `[i, out]`, giving `[out, in, kh, kw]`.
fn tucker(
    (t_name, t): (&str, &Tensor),
    (a_name, a): (&str, &Tensor),
    (b_name, b): (&str, &Tensor),
    w: &Weight,
) -> Result<Array, String> {
    let t = factor(t_name, t, &[4])?;
    let a = factor(a_name, a, &[2])?;
    let b = factor(b_name, b, &[2])?;
    let [ri, rj, kh, kw] = [t.shape[0], t.shape[1], t.shape[2], t.shape[3]];
    if a.shape[0] != ri {
        return Err(format!(
            "{t_name} {:?} and {a_name} {:?} disagree on the rank ({ri} vs {})",
            t.shape, a.shape, a.shape[0]
        ));
    }
    if b.shape[0] != rj {
        return Err(format!(
            "{t_name} {:?} and {b_name} {:?} disagree on the rank ({rj} vs {})",
            t.shape, b.shape, b.shape[0]
        ));
    }
    let (out, inp) = (a.shape[1], b.shape[1]);
    let what = format!("{t_name} with {a_name} and {b_name}");
    w.bound(&what, &[out, inp, kh, kw])?;
    let k = kh * kw; // t holds ri·rj·k values, so neither this nor the products below overflow
    let fail = || format!("{what} failed");
    // Contract first the rank the smaller intermediate keeps: [out, j, k] when j <= in (no
    // bigger than the result), else [i, in, k] (then smaller than t itself).
    let mut m = if rj <= inp {
        // w_aᵀ [out, i] · t [i, j·k], then per p: w_bᵀ [in, j] · mid_p [j, k].
        let t = Array::new(vec![ri, rj * k], t.data);
        let mid = matmul(&a, &t, true, false).ok_or_else(fail)?;
        let mid = Array::new(vec![out, rj, k], mid.data);
        matmul(&b, &mid, true, false).ok_or_else(fail)?
    } else {
        // Per i: w_bᵀ [in, j] · t_i [j, k], then w_aᵀ [out, i] · mid [i, in·k].
        let t = Array::new(vec![ri, rj, k], t.data);
        let mid = matmul(&b, &t, true, false).ok_or_else(fail)?;
        let mid = Array::new(vec![ri, inp * k], mid.data);
        matmul(&a, &mid, true, false).ok_or_else(fail)?
    };
    m.shape = vec![out, inp, kh, kw];
    Ok(m)
}

/// `kron(w1, w2) · scale` for a 2-D `w1` and a 2-D or 4-D `w2` (`w1` then counts as
/// `[a, b, 1, 1]`), checked against the weight before it is allocated.
fn kron(w1: &Array, w2: &Array, scale: f32, w: &Weight) -> Result<Vec<f32>, String> {
    let (a, b) = (w1.shape[0], w1.shape[1]);
    let (c, d) = (w2.shape[0], w2.shape[1]);
    // Saturating: an overflowed dim then fails the bound below.
    let mut shape = vec![a.saturating_mul(c), b.saturating_mul(d)];
    shape.extend_from_slice(&w2.shape[2..]);
    let len = w.bound("the LoKr kron(lokr_w1, lokr_w2)", &shape)?;
    w.fits("LoKr delta", &shape, len)?;
    // out[i1·c + i2, j1·d + j2, q] = w1[i1, j1] · w2[i2, j2, q]: each (i1, i2, j1) is one
    // contiguous run of d·kh·kw outputs, a scaled copy of row i2 of w2.
    let run = w2.len() / c;
    let mut out = Vec::with_capacity(len);
    for w1_row in w1.data.chunks_exact(b) {
        for w2_row in w2.data.chunks_exact(run) {
            for &f in w1_row {
                let f = f * scale;
                out.extend(w2_row.iter().map(|&v| f * v));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::Lcg;
    use half::f16;

    fn rand(rng: &mut Lcg, shape: &[usize]) -> Tensor {
        Tensor::f32(shape.to_vec(), rng.vec(shape.iter().product()))
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.to_f32()
    }

    /// Naive `a [n, r] · b [r, m]`.
    fn naive_mm(a: &Tensor, b: &Tensor) -> Vec<f32> {
        let (n, r, m) = (a.shape[0], a.shape[1], b.shape[1]);
        let (a, b) = (vals(a), vals(b));
        let mut out = vec![0.0; n * m];
        for i in 0..n {
            for j in 0..m {
                for k in 0..r {
                    out[i * m + j] += a[i * r + k] * b[k * m + j];
                }
            }
        }
        out
    }

    /// Naive `einsum("i j k l, j r, i p -> p r k l", t, wb, wa)`.
    fn naive_tucker(t: &Tensor, wb: &Tensor, wa: &Tensor) -> Vec<f32> {
        let [ni, nj, nk, nl] = [t.shape[0], t.shape[1], t.shape[2], t.shape[3]];
        let (nr, np) = (wb.shape[1], wa.shape[1]);
        let (tv, bv, av) = (vals(t), vals(wb), vals(wa));
        let mut out = vec![0.0; np * nr * nk * nl];
        for p in 0..np {
            for r in 0..nr {
                for k in 0..nk {
                    for l in 0..nl {
                        let mut s = 0.0;
                        for i in 0..ni {
                            for j in 0..nj {
                                s += tv[((i * nj + j) * nk + k) * nl + l]
                                    * bv[j * nr + r]
                                    * av[i * np + p];
                            }
                        }
                        out[((p * nr + r) * nk + k) * nl + l] = s;
                    }
                }
            }
        }
        out
    }

    /// Naive torch.kron of two 4-D tensors: out[i1·c+i2, …] = x[i1, …] · y[i2, …] on every axis.
    fn naive_kron4(x: &[f32], xs: [usize; 4], y: &[f32], ys: [usize; 4]) -> Vec<f32> {
        let os: Vec<usize> = (0..4).map(|d| xs[d] * ys[d]).collect();
        let mut out = vec![0.0; os.iter().product()];
        let idx = |s: &[usize], i: [usize; 4]| ((i[0] * s[1] + i[1]) * s[2] + i[2]) * s[3] + i[3];
        for a0 in 0..xs[0] {
            for a1 in 0..xs[1] {
                for a2 in 0..xs[2] {
                    for a3 in 0..xs[3] {
                        for b0 in 0..ys[0] {
                            for b1 in 0..ys[1] {
                                for b2 in 0..ys[2] {
                                    for b3 in 0..ys[3] {
                                        let o = [
                                            a0 * ys[0] + b0,
                                            a1 * ys[1] + b1,
                                            a2 * ys[2] + b2,
                                            a3 * ys[3] + b3,
                                        ];
                                        out[idx(&os, o)] = x[idx(&xs, [a0, a1, a2, a3])]
                                            * y[idx(&ys, [b0, b1, b2, b3])];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// A 2-D or 4-D shape as 4-D with trailing 1s (torch's unsqueeze(2).unsqueeze(2)).
    fn as4(s: &[usize]) -> [usize; 4] {
        [s[0], s[1], *s.get(2).unwrap_or(&1), *s.get(3).unwrap_or(&1)]
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        let big = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(big > 0.0, "reference is all zeros");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * big, "element {i}: {g} vs {w}");
        }
    }

    fn scaled(v: Vec<f32>, s: f32) -> Vec<f32> {
        v.into_iter().map(|x| x * s).collect()
    }

    fn loha(rng: &mut Lcg, w1: [&[usize]; 2], w2: [&[usize]; 2]) -> Loha {
        Loha {
            w1_a: rand(rng, w1[0]),
            w1_b: rand(rng, w1[1]),
            w2_a: rand(rng, w2[0]),
            w2_b: rand(rng, w2[1]),
            t1: None,
            t2: None,
        }
    }

    fn lokr_none() -> Lokr {
        Lokr {
            w1: None,
            w1_a: None,
            w1_b: None,
            w2: None,
            w2_a: None,
            w2_b: None,
            t2: None,
        }
    }

    fn err<T>(r: Result<T, String>) -> String {
        match r {
            Ok(_) => panic!("expected a refusal"),
            Err(e) => e,
        }
    }

    #[test]
    fn loha_plain_linear_and_conv() {
        let mut rng = Lcg(1);
        // Ranks differ between the sides: dim must come from hada_w1_b.
        let h = loha(&mut rng, [&[6, 2], &[2, 5]], [&[6, 3], &[3, 5]]);
        let m: Vec<f32> = naive_mm(&h.w1_a, &h.w1_b)
            .iter()
            .zip(naive_mm(&h.w2_a, &h.w2_b))
            .map(|(a, b)| a * b)
            .collect();
        assert_close(&h.delta(None, &[6, 5]).unwrap(), &m);
        assert_close(&h.delta(Some(5.0), &[6, 5]).unwrap(), &scaled(m, 2.5));

        // A conv: w_b is [rank, in·kh·kw], reshaped to [out, in, kh, kw].
        let h = loha(&mut rng, [&[4, 2], &[2, 27]], [&[4, 2], &[2, 27]]);
        let m: Vec<f32> = naive_mm(&h.w1_a, &h.w1_b)
            .iter()
            .zip(naive_mm(&h.w2_a, &h.w2_b))
            .map(|(a, b)| a * b)
            .collect();
        assert_close(&h.delta(Some(1.0), &[4, 3, 3, 3]).unwrap(), &scaled(m, 0.5));
    }

    #[test]
    fn loha_tucker_conv() {
        let mut rng = Lcg(2);
        // hada_w*_a is [rank, out] on this path. Side 1 has j <= in and side 2 j > in, so both
        // contraction orders run.
        let mut h = loha(&mut rng, [&[3, 5], &[2, 4]], [&[2, 5], &[6, 4]]);
        h.t1 = Some(rand(&mut rng, &[3, 2, 3, 3]));
        h.t2 = Some(rand(&mut rng, &[2, 6, 3, 3]));
        let m: Vec<f32> = naive_tucker(h.t1.as_ref().unwrap(), &h.w1_b, &h.w1_a)
            .iter()
            .zip(naive_tucker(h.t2.as_ref().unwrap(), &h.w2_b, &h.w2_a))
            .map(|(a, b)| a * b)
            .collect();
        assert_close(&h.delta(None, &[5, 4, 3, 3]).unwrap(), &m);
        assert_close(&h.delta(Some(3.0), &[5, 4, 3, 3]).unwrap(), &scaled(m, 1.5));
    }

    #[test]
    fn loha_f16_factors_are_widened() {
        let mut rng = Lcg(3);
        let h = loha(&mut rng, [&[3, 2], &[2, 4]], [&[3, 2], &[2, 4]]);
        let half = |t: &Tensor| {
            Tensor::f16(
                t.shape.clone(),
                vals(t).iter().map(|&v| f16::from_f32(v)).collect(),
            )
        };
        let h16 = Loha {
            w1_a: half(&h.w1_a),
            w1_b: half(&h.w1_b),
            w2_a: half(&h.w2_a),
            w2_b: half(&h.w2_b),
            t1: None,
            t2: None,
        };
        let m: Vec<f32> = naive_mm(&h16.w1_a, &h16.w1_b)
            .iter()
            .zip(naive_mm(&h16.w2_a, &h16.w2_b))
            .map(|(a, b)| a * b)
            .collect();
        assert_close(&h16.delta(None, &[3, 4]).unwrap(), &m);
    }

    #[test]
    fn kron_by_hand() {
        let k = Lokr {
            w1: Some(Tensor::f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])),
            w2: Some(Tensor::f32(vec![2, 2], vec![0.0, 5.0, 6.0, 7.0])),
            ..lokr_none()
        };
        #[rustfmt::skip]
        let want = vec![
            0.0, 5.0, 0.0, 10.0,
            6.0, 7.0, 12.0, 14.0,
            0.0, 15.0, 0.0, 20.0,
            18.0, 21.0, 24.0, 28.0,
        ];
        // Both sides whole: alpha does not scale.
        assert_eq!(k.delta(None, &[4, 4]).unwrap(), want);
        assert_eq!(k.delta(Some(7.0), &[4, 4]).unwrap(), want);
    }

    /// Checks `k` against the naive kron of the given naive sides, with and without alpha.
    fn check_lokr(
        k: &Lokr,
        w1: (Vec<f32>, &[usize]),
        w2: (Vec<f32>, &[usize]),
        dim: Option<f32>,
        target: &[usize],
    ) {
        let want = naive_kron4(&w1.0, as4(w1.1), &w2.0, as4(w2.1));
        assert_close(&k.delta(None, target).unwrap(), &want);
        let s = dim.map_or(1.0, |d| 4.0 / d);
        assert_close(&k.delta(Some(4.0), target).unwrap(), &scaled(want, s));
    }

    #[test]
    fn lokr_whole_sides() {
        let mut rng = Lcg(4);
        let k = Lokr {
            w1: Some(rand(&mut rng, &[2, 3])),
            w2: Some(rand(&mut rng, &[4, 5])),
            ..lokr_none()
        };
        let (w1, w2) = (vals(k.w1.as_ref().unwrap()), vals(k.w2.as_ref().unwrap()));
        check_lokr(
            &k,
            (w1.clone(), &[2, 3]),
            (w2.clone(), &[4, 5]),
            None,
            &[8, 15],
        );

        // A whole 4-D w2 on a conv: w1 becomes [a, b, 1, 1].
        let k = Lokr {
            w1: Some(rand(&mut rng, &[2, 2])),
            w2: Some(rand(&mut rng, &[3, 2, 3, 3])),
            ..lokr_none()
        };
        let (w1, w2) = (vals(k.w1.as_ref().unwrap()), vals(k.w2.as_ref().unwrap()));
        check_lokr(&k, (w1, &[2, 2]), (w2, &[3, 2, 3, 3]), None, &[6, 4, 3, 3]);
    }

    #[test]
    fn lokr_low_rank_sides() {
        let mut rng = Lcg(5);
        // w1 as a pair, w2 whole: dim is w1_b's rank.
        let k = Lokr {
            w1_a: Some(rand(&mut rng, &[2, 3])),
            w1_b: Some(rand(&mut rng, &[3, 4])),
            w2: Some(rand(&mut rng, &[5, 2])),
            ..lokr_none()
        };
        let w1 = naive_mm(k.w1_a.as_ref().unwrap(), k.w1_b.as_ref().unwrap());
        let w2 = vals(k.w2.as_ref().unwrap());
        check_lokr(&k, (w1, &[2, 4]), (w2, &[5, 2]), Some(3.0), &[10, 8]);

        // w1 whole, w2 as a pair: dim is w2_b's rank.
        let k = Lokr {
            w1: Some(rand(&mut rng, &[3, 2])),
            w2_a: Some(rand(&mut rng, &[4, 2])),
            w2_b: Some(rand(&mut rng, &[2, 5])),
            ..lokr_none()
        };
        let w1 = vals(k.w1.as_ref().unwrap());
        let w2 = naive_mm(k.w2_a.as_ref().unwrap(), k.w2_b.as_ref().unwrap());
        check_lokr(&k, (w1, &[3, 2]), (w2, &[4, 5]), Some(2.0), &[12, 10]);

        // Both pairs: w2_b's rank wins.
        let k = Lokr {
            w1_a: Some(rand(&mut rng, &[2, 3])),
            w1_b: Some(rand(&mut rng, &[3, 2])),
            w2_a: Some(rand(&mut rng, &[4, 5])),
            w2_b: Some(rand(&mut rng, &[5, 3])),
            ..lokr_none()
        };
        let w1 = naive_mm(k.w1_a.as_ref().unwrap(), k.w1_b.as_ref().unwrap());
        let w2 = naive_mm(k.w2_a.as_ref().unwrap(), k.w2_b.as_ref().unwrap());
        check_lokr(&k, (w1, &[2, 2]), (w2, &[4, 3]), Some(5.0), &[8, 6]);

        // A 2-D w2 pair on a conv: [rank, in·kh·kw] reshaped, as ComfyUI does.
        let k = Lokr {
            w1: Some(rand(&mut rng, &[2, 2])),
            w2_a: Some(rand(&mut rng, &[3, 2])),
            w2_b: Some(rand(&mut rng, &[2, 18])),
            ..lokr_none()
        };
        let w1 = vals(k.w1.as_ref().unwrap());
        let w2 = naive_mm(k.w2_a.as_ref().unwrap(), k.w2_b.as_ref().unwrap());
        // kron([2,2], [3,18]) = [6, 36], the same row-major values as [6, 4, 3, 3].
        check_lokr(&k, (w1, &[2, 2]), (w2, &[3, 18]), Some(2.0), &[6, 4, 3, 3]);
    }

    #[test]
    fn lokr_tucker_conv() {
        let mut rng = Lcg(6);
        let k = Lokr {
            w1: Some(rand(&mut rng, &[2, 3])),
            t2: Some(rand(&mut rng, &[3, 2, 3, 3])),
            w2_a: Some(rand(&mut rng, &[3, 4])),
            w2_b: Some(rand(&mut rng, &[2, 5])),
            ..lokr_none()
        };
        let w1 = vals(k.w1.as_ref().unwrap());
        let w2 = naive_tucker(
            k.t2.as_ref().unwrap(),
            k.w2_b.as_ref().unwrap(),
            k.w2_a.as_ref().unwrap(),
        );
        check_lokr(
            &k,
            (w1, &[2, 3]),
            (w2, &[4, 5, 3, 3]),
            Some(2.0),
            &[8, 15, 3, 3],
        );
    }

    #[test]
    fn refusals_name_the_fault() {
        let mut rng = Lcg(7);
        // Inner dims disagree.
        let h = loha(&mut rng, [&[4, 2], &[3, 5]], [&[4, 2], &[2, 5]]);
        let e = err(h.delta(None, &[4, 5]));
        assert!(
            e.contains("hada_w1_a") && e.contains("hada_w1_b") && e.contains("rank"),
            "{e}"
        );

        let mut h = loha(&mut rng, [&[2, 4], &[2, 3]], [&[2, 4], &[2, 3]]);
        h.t1 = Some(rand(&mut rng, &[2, 3, 3, 3]));
        h.t2 = Some(rand(&mut rng, &[2, 2, 3, 3]));
        let e = err(h.delta(None, &[4, 3, 3, 3]));
        assert!(e.contains("hada_t1") && e.contains("hada_w1_b"), "{e}");

        // Element count differs from the weight's.
        let h = loha(&mut rng, [&[4, 2], &[2, 5]], [&[4, 2], &[2, 5]]);
        let e = err(h.delta(None, &[4, 6]));
        assert!(e.contains("20 elements") && e.contains("[4, 6]"), "{e}");
        let k = Lokr {
            w1: Some(rand(&mut rng, &[2, 2])),
            w2: Some(rand(&mut rng, &[2, 2])),
            ..lokr_none()
        };
        let e = err(k.delta(None, &[4, 5]));
        assert!(e.contains("LoKr") && e.contains("16 elements"), "{e}");

        // The sides of a LoHa differ.
        let h = loha(&mut rng, [&[4, 2], &[2, 5]], [&[5, 2], &[2, 4]]);
        let e = err(h.delta(None, &[4, 5]));
        assert!(e.contains("hada_w2 product is [5, 4]"), "{e}");

        // Wrong rank.
        let mut h = loha(&mut rng, [&[2, 4], &[2, 3]], [&[2, 4], &[2, 3]]);
        h.t1 = Some(rand(&mut rng, &[2, 2, 9]));
        h.t2 = Some(rand(&mut rng, &[2, 2, 3, 3]));
        let e = err(h.delta(None, &[4, 3, 3, 3]));
        assert!(
            e.contains("hada_t1") && e.contains("3 dims, expected 4"),
            "{e}"
        );
        let k = Lokr {
            w1: Some(rand(&mut rng, &[2, 2, 1, 1])),
            w2: Some(rand(&mut rng, &[2, 2])),
            ..lokr_none()
        };
        let e = err(k.delta(None, &[4, 4]));
        assert!(e.contains("lokr_w1") && e.contains("expected 2"), "{e}");
        let k = Lokr {
            w1: Some(rand(&mut rng, &[2, 2])),
            w2: Some(rand(&mut rng, &[2, 2, 2])),
            ..lokr_none()
        };
        let e = err(k.delta(None, &[4, 4, 2]));
        assert!(
            e.contains("lokr_w2") && e.contains("expected 2 or 4"),
            "{e}"
        );

        // Missing or ambiguous parts.
        let mut h = loha(&mut rng, [&[2, 4], &[2, 3]], [&[2, 4], &[2, 3]]);
        h.t1 = Some(rand(&mut rng, &[2, 2, 3, 3]));
        assert_eq!(err(h.delta(None, &[4, 3, 3, 3])), "hada_t1 without hada_t2");
        let k = Lokr {
            w2: Some(rand(&mut rng, &[2, 2])),
            ..lokr_none()
        };
        assert!(err(k.delta(None, &[4, 4])).contains("neither lokr_w1"));
        let k = Lokr {
            w1: Some(rand(&mut rng, &[2, 2])),
            w1_a: Some(rand(&mut rng, &[2, 1])),
            w1_b: Some(rand(&mut rng, &[1, 2])),
            w2: Some(rand(&mut rng, &[2, 2])),
            ..lokr_none()
        };
        assert!(err(k.delta(None, &[4, 4])).contains("both lokr_w1"));
        let k = Lokr {
            w1: Some(rand(&mut rng, &[2, 2])),
            w2_a: Some(rand(&mut rng, &[2, 1])),
            ..lokr_none()
        };
        assert_eq!(err(k.delta(None, &[4, 4])), "lokr_w2_a without lokr_w2_b");

        // Not a float tensor; a shape that does not match the data; an empty dim.
        let mut h = loha(&mut rng, [&[2, 2], &[2, 2]], [&[2, 2], &[2, 2]]);
        h.w2_b = Tensor::i32(vec![2, 2], vec![1; 4]);
        assert!(err(h.delta(None, &[2, 2])).contains("hada_w2_b is int32"));
        let mut h = loha(&mut rng, [&[2, 2], &[2, 2]], [&[2, 2], &[2, 2]]);
        h.w1_a.shape = vec![2, 3];
        assert!(err(h.delta(None, &[2, 3])).contains("hada_w1_a holds 4 values"));
        let k = Lokr {
            w1: Some(Tensor::f32(vec![2, 0], vec![])),
            w2: Some(rand(&mut rng, &[2, 2])),
            ..lokr_none()
        };
        assert!(err(k.delta(None, &[4, 0])).contains("lokr_w1 has an empty dim"));
    }

    #[test]
    fn sizes_are_refused_before_allocation() {
        let mut rng = Lcg(8);
        // kron of [65536, 1] and [32769, 1]: just over 2^31 elements, from 98305 values.
        let k = Lokr {
            w1: Some(rand(&mut rng, &[65536, 1])),
            w2: Some(rand(&mut rng, &[32769, 1])),
            ..lokr_none()
        };
        let e = err(k.delta(None, &[65536 * 32769]));
        assert!(e.contains("2^31"), "{e}");
        let e = err(k.delta(None, &[4]));
        assert!(
            e.contains("kron") && e.contains("more than the 4 elements"),
            "{e}"
        );
        let e = err(k.delta(None, &[usize::MAX, 2]));
        assert!(e.contains("overflows"), "{e}");
        // A low-rank pair whose product alone is bigger than the weight.
        let h = loha(&mut rng, [&[65536, 1], &[1, 32769]], [&[1, 1], &[1, 1]]);
        let e = err(h.delta(None, &[4]));
        assert!(
            e.contains("hada_w1_a · hada_w1_b would be [65536, 32769]"),
            "{e}"
        );
    }
}
