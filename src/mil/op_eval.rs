//! What each MIL op computes, for the evaluator: one function per op type over its named
//! arguments, found by MIL name ([`evaluator`]), since the evaluator runs other tools' packages
//! too. Parameters come from the package and are checked before use.

use super::eval::Val;
use crate::kernels::{self, Array};
use crate::limits::eval_elements_within;
use crate::proto::mil_spec as pb;
use half::f16;
use std::collections::HashMap;

/// An op's named arguments, as bound in the program.
pub struct Args<'a> {
    pub(crate) op: &'a pb::Operation,
    pub(crate) env: &'a HashMap<String, Val>,
    /// Most elements of any tensor the op may allocate.
    pub(crate) max_elements: usize,
}

impl<'a> Args<'a> {
    /// The element count of a result of `shape`, or an error past the evaluator's limit.
    fn elements(&self, shape: &[usize]) -> Result<usize, String> {
        eval_elements_within(shape, self.max_elements)
    }

    /// Every value bound to argument `k` (a tuple argument such as concat's `values` has several).
    fn all(&self, k: &str) -> Vec<Option<&'a Val>> {
        let Some(a) = self.op.inputs.get(k) else {
            return vec![];
        };
        a.arguments
            .iter()
            .map(|b| match &b.binding {
                Some(pb::argument::binding::Binding::Name(n)) => self.env.get(n),
                _ => None,
            })
            .collect()
    }

    fn get(&self, k: &str) -> Option<&'a Val> {
        self.all(k).into_iter().next().flatten()
    }

    pub fn has(&self, k: &str) -> bool {
        self.get(k).is_some()
    }

    /// The numeric values of a tuple argument.
    pub fn list(&self, k: &str) -> Result<Vec<&'a Array>, String> {
        let all = self.all(k);
        if all.is_empty() {
            return Err(format!("missing input {k}"));
        }
        all.into_iter()
            .map(|v| match v {
                Some(Val::Num(a)) => Ok(a),
                _ => Err(format!("an element of {k} is not a defined tensor")),
            })
            .collect()
    }

    /// A boolean parameter, `default` when absent.
    pub fn flag(&self, k: &str, default: bool) -> Result<bool, String> {
        match self.opt(k)? {
            Some(_) => Ok(self.scalar(k)? != 0.0),
            None => Ok(default),
        }
    }

    pub fn num(&self, k: &str) -> Result<&'a Array, String> {
        match self.get(k) {
            Some(Val::Num(a)) => Ok(a),
            Some(Val::Str(_)) => Err(format!("input {k} is a string")),
            None => Err(format!("missing input {k}")),
        }
    }

    pub fn opt(&self, k: &str) -> Result<Option<&'a Array>, String> {
        if self.has(k) {
            self.num(k).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The one value of a scalar (or one-element) argument.
    pub fn scalar(&self, k: &str) -> Result<f32, String> {
        match &self.num(k)?.data[..] {
            [v] => Ok(*v),
            d => Err(format!("{k} must hold one value, got {}", d.len())),
        }
    }

    pub fn ints(&self, k: &str) -> Result<Vec<usize>, String> {
        self.num(k)?
            .data
            .iter()
            .map(|&x| {
                if x >= 0.0 && x.fract() == 0.0 && x < 1e15 {
                    Ok(x as usize)
                } else {
                    Err(format!("{k} has value {x}, not a size"))
                }
            })
            .collect()
    }

    pub fn string(&self, k: &str) -> Result<String, String> {
        match self.get(k) {
            Some(Val::Str(s)) if s.len() == 1 => Ok(s[0].clone()),
            _ => Err(format!("input {k} must be a string")),
        }
    }
}

/// What the evaluator computes for an op.
#[derive(Clone, Copy)]
pub enum Eval {
    Unary(fn(f32) -> f32),
    Binary(fn(f32, f32) -> f32),
    Op(fn(&Args) -> Result<Array, String>),
    /// An op with several outputs (`split`), in output order.
    Multi(fn(&Args) -> Result<Vec<Array>, String>),
}

impl Eval {
    /// Runs the op: one value per output.
    pub fn run(self, args: &Args) -> Result<Vec<Array>, String> {
        match self {
            Eval::Unary(f) => unary(args, f).map(|a| vec![a]),
            Eval::Binary(f) => binary(args, f).map(|a| vec![a]),
            Eval::Op(f) => f(args).map(|a| vec![a]),
            Eval::Multi(f) => f(args),
        }
    }
}

/// Ops other than the elementwise tables, by MIL name.
const OPS: &[(&str, Eval)] = &[
    ("identity", Eval::Op(identity)),
    ("rsqrt", Eval::Op(rsqrt)),
    ("clip", Eval::Op(clip)),
    ("conv", Eval::Op(conv)),
    (
        "upsample_nearest_neighbor",
        Eval::Op(upsample_nearest_neighbor),
    ),
    ("reduce_mean", Eval::Op(reduce_mean)),
    ("reshape", Eval::Op(reshape)),
    ("split", Eval::Multi(split)),
    ("tile", Eval::Op(tile)),
    ("transpose", Eval::Op(transpose)),
    ("cast", Eval::Op(cast)),
    ("constexpr_lut_to_dense", Eval::Op(constexpr_lut_to_dense)),
    (
        "constexpr_affine_dequantize",
        Eval::Op(constexpr_affine_dequantize),
    ),
    (
        "constexpr_blockwise_shift_scale",
        Eval::Op(constexpr_blockwise_shift_scale),
    ),
    ("quantize", Eval::Op(quantize)),
    ("dequantize", Eval::Op(dequantize)),
    ("matmul", Eval::Op(matmul)),
    ("softmax", Eval::Op(softmax)),
    ("layer_norm", Eval::Op(layer_norm)),
    ("gather", Eval::Op(gather)),
    ("reduce_argmax", Eval::Op(reduce_argmax)),
    (
        "scaled_dot_product_attention",
        Eval::Op(scaled_dot_product_attention),
    ),
    ("slice_by_index", Eval::Op(slice_by_index)),
    ("concat", Eval::Op(concat)),
    ("shape", Eval::Op(shape)),
    ("pixel_shuffle", Eval::Op(pixel_shuffle)),
];

/// What MIL op type `name` computes, if the evaluator knows it. Elementwise ops share the IR's
/// kernels ([`crate::ir::Unary`], [`crate::ir::Binary`]), so both evaluators agree on them.
pub fn evaluator(name: &str) -> Option<Eval> {
    use crate::ir::{Binary, Unary};
    if let Some((_, e)) = OPS.iter().find(|(n, _)| *n == name) {
        return Some(*e);
    }
    if let Some(u) = Unary::ALL.iter().find(|u| u.mil_name() == name) {
        return Some(Eval::Unary(u.kernel()));
    }
    Binary::ALL
        .iter()
        .find(|b| b.mil_name() == name)
        .map(|b| Eval::Binary(b.kernel()))
}

pub fn unary(a: &Args, f: fn(f32) -> f32) -> Result<Array, String> {
    Ok(kernels::map(a.num("x")?, f))
}

pub fn binary(a: &Args, f: fn(f32, f32) -> f32) -> Result<Array, String> {
    let (x, y) = (a.num("x")?, a.num("y")?);
    let out = kernels::broadcast_shape(&x.shape, &y.shape)
        .ok_or_else(|| format!("shapes {:?} and {:?} do not broadcast", x.shape, y.shape))?;
    a.elements(&out)?;
    kernels::binary(x, y, f)
        .ok_or_else(|| format!("shapes {:?} and {:?} do not broadcast", x.shape, y.shape))
}

pub fn identity(a: &Args) -> Result<Array, String> {
    Ok(a.num("x")?.clone())
}

pub fn rsqrt(a: &Args) -> Result<Array, String> {
    let eps = match a.opt("epsilon")? {
        Some(_) => a.scalar("epsilon")?,
        None => 1e-12,
    };
    Ok(kernels::map(a.num("x")?, move |x| 1.0 / (x + eps).sqrt()))
}

pub fn clip(a: &Args) -> Result<Array, String> {
    let (lo, hi) = (a.scalar("alpha")?, a.scalar("beta")?);
    Ok(kernels::clip(a.num("x")?, lo, hi))
}

pub fn conv(a: &Args) -> Result<Array, String> {
    let x = a.num("x")?;
    let w = a.num("weight")?;
    if w.shape.len() != 4 || w.shape.contains(&0) {
        return Err(format!(
            "weight {:?} is not a non-empty [O, I, kh, kw] tensor",
            w.shape
        ));
    }
    let bias = a.opt("bias")?;
    let pair = |k: &str| -> Result<[usize; 2], String> {
        match a.opt(k)? {
            None => Ok([1, 1]),
            Some(_) => a
                .ints(k)?
                .try_into()
                .map_err(|_| format!("{k} must have 2 values")),
        }
    };
    let (strides, dilations) = (pair("strides")?, pair("dilations")?);
    let groups = match a.opt("groups")? {
        Some(_) => a.scalar("groups")? as usize,
        None => 1,
    };
    let pad_type = if a.has("pad_type") {
        a.string("pad_type")?
    } else {
        "valid".into()
    };
    let pads: [usize; 4] = match pad_type.as_str() {
        "custom" => a
            .ints("pad")?
            .try_into()
            .map_err(|_| "pad must have 4 values".to_string())?,
        "valid" => [0; 4],
        "same" if strides == [1, 1] => {
            let (kh, kw) = (
                dilations[0].saturating_mul(w.shape[2] - 1),
                dilations[1].saturating_mul(w.shape[3] - 1),
            );
            [kh / 2, kh - kh / 2, kw / 2, kw - kw / 2]
        }
        other => return Err(format!("pad_type {other:?} is not supported")),
    };
    let fits = x.shape.len() == 4
        && groups > 0
        && w.shape[1].checked_mul(groups) == Some(x.shape[1])
        && w.shape[0] % groups == 0
        && bias.is_none_or(|b| b.len() == w.shape[0])
        && !strides.contains(&0)
        && !dilations.contains(&0)
        && (0..2).all(|i| {
            padded(x.shape[2 + i], pads[2 * i], pads[2 * i + 1])
                > dilations[i].saturating_mul(w.shape[2 + i].max(1) - 1)
        });
    if !fits {
        return Err(format!("x {:?}, weight {:?}, bias, strides {strides:?}, dilations {dilations:?}, pads {pads:?} and groups {groups} do not fit", x.shape, w.shape));
    }
    // The padded input and the output are what the kernel allocates.
    let (ph, pw) = (
        padded(x.shape[2], pads[0], pads[1]),
        padded(x.shape[3], pads[2], pads[3]),
    );
    a.elements(&[x.shape[0], x.shape[1], ph, pw])?;
    let out = |i: usize, p: usize| (p - dilations[i] * (w.shape[2 + i] - 1) - 1) / strides[i] + 1;
    a.elements(&[x.shape[0], w.shape[0], out(0, ph), out(1, pw)])?;
    let p = kernels::Conv2d {
        strides,
        pads,
        dilations,
        groups,
    };
    Ok(kernels::conv2d(x, w, bias.map(|b| b.data.as_slice()), &p))
}

/// A dim with padding on both sides (saturating: an absurd size is refused later).
fn padded(n: usize, before: usize, after: usize) -> usize {
    n.saturating_add(before).saturating_add(after)
}

pub fn upsample_nearest_neighbor(a: &Args) -> Result<Array, String> {
    let s = |k: &str| -> Result<usize, String> {
        match a.opt(k)? {
            None => Ok(1),
            Some(_) => {
                let v = a.scalar(k)?;
                if v >= 1.0 && v.fract() == 0.0 && v < 1e15 {
                    Ok(v as usize)
                } else {
                    Err(format!("{k} = {v} is not a whole number"))
                }
            }
        }
    };
    let x = a.num("x")?;
    if x.shape.len() < 3 {
        return Err(format!("upsample needs rank >= 3, got {:?}", x.shape));
    }
    let (sh, sw) = (s("scale_factor_height")?, s("scale_factor_width")?);
    let mut out = x.shape.clone();
    let r = out.len();
    out[r - 2] = out[r - 2].saturating_mul(sh);
    out[r - 1] = out[r - 1].saturating_mul(sw);
    a.elements(&out)?;
    Ok(kernels::upsample_nearest(x, sh, sw))
}

pub fn reduce_mean(a: &Args) -> Result<Array, String> {
    let x = a.num("x")?;
    if x.shape.is_empty() {
        return Err("reduce_mean of a scalar".into());
    }
    let rank = x.shape.len() as i64;
    let axes: Vec<usize> = match a.opt("axes")? {
        None => (0..x.shape.len()).collect(),
        Some(axes) => axes
            .data
            .iter()
            .map(|&v| (v as i64).rem_euclid(rank) as usize)
            .collect(),
    };
    let keep = match a.opt("keep_dims")? {
        Some(_) => a.scalar("keep_dims")? != 0.0,
        None => false,
    };
    Ok(kernels::reduce_mean(x, &axes, keep))
}

pub fn reshape(a: &Args) -> Result<Array, String> {
    let x = a.num("x")?;
    let spec: Vec<i64> = a.num("shape")?.data.iter().map(|&v| v as i64).collect();
    let known: usize = spec
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if d == 0 {
                x.shape.get(i).copied().unwrap_or(1)
            } else if d < 0 {
                1
            } else {
                d as usize
            }
        })
        .try_fold(1usize, |n, d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {spec:?} overflows"))?;
    let shape: Vec<usize> = spec
        .iter()
        .enumerate()
        .map(|(i, &d)| match d {
            -1 if known > 0 => x.len() / known,
            0 => x.shape.get(i).copied().unwrap_or(0),
            d => d as usize,
        })
        .collect();
    if shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) != Some(x.len()) {
        return Err(format!("cannot reshape {:?} to {spec:?}", x.shape));
    }
    Ok(x.clone().reshape(shape))
}

pub fn tile(a: &Args) -> Result<Array, String> {
    let x = a.num("x")?;
    let reps = a.ints("reps")?;
    if reps.len() != x.shape.len() {
        return Err(format!("reps {reps:?} do not match rank {}", x.shape.len()));
    }
    let out: Vec<usize> = x
        .shape
        .iter()
        .zip(&reps)
        .map(|(&s, &r)| s.saturating_mul(r))
        .collect();
    a.elements(&out)?;
    Ok(kernels::tile(x, &reps))
}

pub fn transpose(a: &Args) -> Result<Array, String> {
    let x = a.num("x")?;
    let perm = a.ints("perm")?;
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..x.shape.len()).collect::<Vec<_>>() {
        return Err(format!("perm {perm:?} is not a permutation"));
    }
    Ok(kernels::transpose(x, &perm))
}

pub fn cast(a: &Args) -> Result<Array, String> {
    let mut x = a.num("x")?.clone();
    match a.string("dtype")?.as_str() {
        "fp16" => round_f16(&mut x.data),
        "fp32" => {}
        "int32" => x.data.iter_mut().for_each(|v| *v = v.trunc()),
        other => return Err(format!("cast to {other:?} is not supported")),
    }
    Ok(x)
}

/// An axis argument, negative values counting from the end.
fn axis(a: &Args, k: &str, rank: usize) -> Result<usize, String> {
    let v = a.scalar(k)?;
    let r = rank as f32;
    if v.fract() != 0.0 || v < -r || v >= r {
        return Err(format!("{k} = {v} is not an axis of a rank-{rank} tensor"));
    }
    Ok(if v < 0.0 {
        (v + r) as usize
    } else {
        v as usize
    })
}

pub fn matmul(a: &Args) -> Result<Array, String> {
    let (x, y) = (a.num("x")?, a.num("y")?);
    let (tx, ty) = (a.flag("transpose_x", false)?, a.flag("transpose_y", false)?);
    if x.shape.len() < 2 || y.shape.len() < 2 {
        return Err(format!(
            "matmul of {:?} and {:?}: rank 2 or more",
            x.shape, y.shape
        ));
    }
    matmul_fits(a, x, y, tx, ty)?;
    kernels::matmul(x, y, tx, ty)
        .ok_or_else(|| format!("{:?} by {:?} do not multiply", x.shape, y.shape))
}

/// Refuses a product of rank-2-or-more operands whose result would exceed the evaluator's limit.
fn matmul_fits(a: &Args, x: &Array, y: &Array, tx: bool, ty: bool) -> Result<(), String> {
    let (rx, ry) = (x.shape.len(), y.shape.len());
    let m = x.shape[if tx { rx - 1 } else { rx - 2 }];
    let n = y.shape[if ty { ry - 2 } else { ry - 1 }];
    let mut out = kernels::broadcast_shape(&x.shape[..rx - 2], &y.shape[..ry - 2])
        .ok_or_else(|| format!("{:?} by {:?} do not multiply", x.shape, y.shape))?;
    out.extend([m, n]);
    a.elements(&out).map(|_| ())
}

pub fn softmax(a: &Args) -> Result<Array, String> {
    let x = a.num("x")?;
    let ax = axis(a, "axis", x.shape.len())?;
    Ok(kernels::softmax(x, ax))
}

pub fn layer_norm(a: &Args) -> Result<Array, String> {
    let x = a.num("x")?;
    let rank = x.shape.len();
    let mut axes = match a.opt("axes")? {
        Some(v) => v
            .data
            .iter()
            .map(|&v| {
                let r = rank as f32;
                if v.fract() != 0.0 || v < -r || v >= r {
                    Err(format!(
                        "axes value {v} is not an axis of a rank-{rank} tensor"
                    ))
                } else {
                    Ok(if v < 0.0 {
                        (v + r) as usize
                    } else {
                        v as usize
                    })
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => (0..rank).collect(),
    };
    axes.sort_unstable();
    if axes.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("axes {axes:?} repeat an axis"));
    }
    let group: usize = axes.iter().map(|&i| x.shape[i]).product();
    let gamma = a.opt("gamma")?;
    let beta = a.opt("beta")?;
    for (k, p) in [("gamma", gamma), ("beta", beta)] {
        if let Some(p) = p {
            let want: Vec<usize> = axes.iter().map(|&i| x.shape[i]).collect();
            if p.shape != want {
                return Err(format!(
                    "{k} {:?} is not the normalised shape {want:?} ({group} elements)",
                    p.shape
                ));
            }
        }
    }
    let eps = match a.opt("epsilon")? {
        Some(_) => a.scalar("epsilon")?,
        None => 1e-5,
    };
    Ok(kernels::layer_norm(
        x,
        &axes,
        gamma.map(|g| g.data.as_slice()),
        beta.map(|b| b.data.as_slice()),
        eps,
    ))
}

pub fn gather(a: &Args) -> Result<Array, String> {
    let (x, i) = (a.num("x")?, a.num("indices")?);
    let ax = match a.opt("axis")? {
        Some(_) => axis(a, "axis", x.shape.len())?,
        None => 0,
    };
    if a.opt("batch_dims")?.is_some() && a.scalar("batch_dims")? != 0.0 {
        return Err("batch_dims other than 0 is not supported by the evaluator".into());
    }
    let mut shape = x.shape[..ax].to_vec();
    shape.extend(&i.shape);
    shape.extend(&x.shape[ax + 1..]);
    a.elements(&shape)?;
    kernels::gather(x, i, ax)
}

pub fn reduce_argmax(a: &Args) -> Result<Array, String> {
    let x = a.num("x")?;
    if x.shape.is_empty() {
        return Err("reduce_argmax of a scalar".into());
    }
    let ax = match a.opt("axis")? {
        Some(_) => axis(a, "axis", x.shape.len())?,
        None => x.shape.len() - 1,
    };
    if x.shape[ax] == 0 {
        return Err(format!("reduce_argmax over an empty axis {ax}"));
    }
    let out = kernels::argmax(x, ax);
    Ok(if a.flag("keep_dims", false)? {
        let mut shape = x.shape.clone();
        shape[ax] = 1;
        out.reshape(shape)
    } else {
        out
    })
}

pub fn scaled_dot_product_attention(a: &Args) -> Result<Array, String> {
    let (q, k, v) = (a.num("query")?, a.num("key")?, a.num("value")?);
    // Read as the additive float mask mlc emits; the evaluator does not see dtypes, so a boolean
    // mask from another tool would be misread (its `true` means "attend").
    let mask = a.opt("attn_mask")?;
    let r = q.shape.len();
    let fits = r >= 3
        && k.shape.len() == r
        && v.shape.len() == r
        && q.shape[r - 1] == k.shape[r - 1]
        && k.shape[r - 2] == v.shape[r - 2]
        && q.shape[r - 1] > 0;
    if !fits {
        return Err(format!(
            "query {:?}, key {:?}, value {:?} do not fit",
            q.shape, k.shape, v.shape
        ));
    }
    matmul_fits(a, q, k, false, true)?;
    let scores = kernels::matmul(q, k, false, true).ok_or("query and key do not multiply")?;
    let scale = 1.0 / (q.shape[r - 1] as f32).sqrt();
    let mut scores = kernels::map(&scores, move |s| s * scale);
    if let Some(m) = mask {
        let fits = kernels::broadcast_shape(&scores.shape, &m.shape)
            .is_some_and(|shape| shape == scores.shape);
        if !fits {
            return Err(format!(
                "attn_mask {:?} does not broadcast to the scores {:?}",
                m.shape, scores.shape
            ));
        }
        scores = kernels::binary(&scores, m, |s, m| s + m).ok_or("attn_mask does not broadcast")?;
    }
    let weights = kernels::softmax(&scores, r - 1);
    kernels::matmul(&weights, v, false, false)
        .ok_or_else(|| "weights and value do not multiply".into())
}

pub fn slice_by_index(a: &Args) -> Result<Array, String> {
    let x = a.num("x")?;
    let r = x.shape.len();
    let begin = a.ints("begin")?;
    let end = a.ints("end")?;
    let stride = match a.opt("stride")? {
        Some(_) => a.ints("stride")?,
        None => vec![1; r],
    };
    let mask = |k: &str| -> Result<Vec<bool>, String> {
        match a.opt(k)? {
            Some(m) => Ok(m.data.iter().map(|&v| v != 0.0).collect()),
            None => Ok(vec![false; r]),
        }
    };
    let (bm, em) = (mask("begin_mask")?, mask("end_mask")?);
    if a.has("squeeze_mask") && mask("squeeze_mask")?.iter().any(|&m| m) {
        return Err("squeeze_mask is not supported by the evaluator".into());
    }
    if [begin.len(), end.len(), stride.len(), bm.len(), em.len()]
        .iter()
        .any(|&n| n != r)
        || stride.contains(&0)
    {
        return Err(format!("begin/end/stride/masks do not fit rank {r}"));
    }
    let b: Vec<usize> = (0..r)
        .map(|i| if bm[i] { 0 } else { begin[i].min(x.shape[i]) })
        .collect();
    let e: Vec<usize> = (0..r)
        .map(|i| {
            if em[i] {
                x.shape[i]
            } else {
                end[i].min(x.shape[i])
            }
        })
        .collect();
    Ok(kernels::slice(x, &b, &e, &stride))
}

pub fn concat(a: &Args) -> Result<Array, String> {
    let xs = a.list("values")?;
    let rank = xs.first().map_or(0, |x| x.shape.len());
    let ax = axis(a, "axis", rank)?;
    if a.flag("interleave", false)? {
        return Err("interleaved concat is not supported by the evaluator".into());
    }
    let total = xs.iter().try_fold(0usize, |n, x| n.checked_add(x.len()));
    a.elements(&[total.unwrap_or(usize::MAX)])?;
    kernels::concat(&xs, ax).ok_or_else(|| format!("values do not join along axis {ax}"))
}

/// Equal parts (`num_splits`) or given sizes (`split_sizes`) along `axis`.
pub fn split(a: &Args) -> Result<Vec<Array>, String> {
    let x = a.num("x")?;
    let ax = axis(a, "axis", x.shape.len())?;
    let n = x.shape[ax];
    let sizes = if a.has("split_sizes") {
        let s = a.ints("split_sizes")?;
        if s.iter().try_fold(0usize, |t, &k| t.checked_add(k)) != Some(n) {
            return Err(format!("split_sizes {s:?} do not add up to {n}"));
        }
        s
    } else {
        let k = a.scalar("num_splits")?;
        if !(1.0..=n as f32).contains(&k) || k.fract() != 0.0 || n % k as usize != 0 {
            return Err(format!(
                "num_splits {k} does not divide {n} into equal parts"
            ));
        }
        vec![n / k as usize; k as usize]
    };
    let rank = x.shape.len();
    let mut begin = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for s in sizes {
        let mut b = vec![0; rank];
        let mut e = x.shape.clone();
        (b[ax], e[ax]) = (begin, begin + s);
        out.push(kernels::slice(x, &b, &e, &vec![1; rank]));
        begin += s;
    }
    Ok(out)
}

pub fn shape(a: &Args) -> Result<Array, String> {
    let x = a.num("x")?;
    Ok(Array::new(
        vec![x.shape.len()],
        x.shape.iter().map(|&n| n as f32).collect(),
    ))
}

pub fn pixel_shuffle(a: &Args) -> Result<Array, String> {
    let x = a.num("x")?;
    let r = a.scalar("upscale_factor")?;
    if !(1.0..=64.0).contains(&r) || r.fract() != 0.0 {
        return Err(format!(
            "upscale_factor {r} is not a whole number in 1..=64"
        ));
    }
    kernels::pixel_shuffle(x, r as usize)
        .ok_or_else(|| format!("{:?} does not shuffle by {r}", x.shape))
}

pub(crate) fn round_f16(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32());
}

pub fn constexpr_lut_to_dense(a: &Args) -> Result<Array, String> {
    lut_to_dense(a, a.num("indices")?, a.num("lut")?, a.opt("shape")?)
}

pub fn constexpr_affine_dequantize(a: &Args) -> Result<Array, String> {
    let (q, zp, scale) = (
        a.num("quantized_data")?,
        a.num("zero_point")?,
        a.num("scale")?,
    );
    let axis = a.scalar("axis")? as usize;
    if axis >= q.shape.len() {
        return Err(format!("axis {axis} out of range for {:?}", q.shape));
    }
    let inner: usize = q.shape[axis + 1..].iter().product();
    let c = q.shape[axis];
    if (scale.len() != 1 && scale.len() != c) || (zp.len() != 1 && zp.len() != c) {
        return Err(format!(
            "scale {:?} / zero_point {:?} do not fit axis {axis} of {:?}",
            scale.shape, zp.shape, q.shape
        ));
    }
    let pick = |v: &Array, ch: usize| if v.len() == 1 { v.data[0] } else { v.data[ch] };
    let data = q.data.iter().enumerate().map(|(e, &v)| {
        let ch = (e / inner) % c;
        pick(scale, ch) * (v - pick(zp, ch))
    });
    Ok(Array::new(q.shape.clone(), data.collect()))
}

/// The scale and zero point of iOS17 `quantize`/`dequantize` for each element of `x`: scalars,
/// or vectors along `axis` (the zero point defaults to 0).
fn quant_params<'v>(a: &Args<'v>, x: &Array) -> Result<impl Fn(usize) -> (f32, f32) + 'v, String> {
    let (scale, zp) = (a.num("scale")?, a.opt("zero_point")?);
    let (inner, c) = match a.opt("axis")? {
        None => {
            if scale.len() != 1 || zp.is_some_and(|z| z.len() != 1) {
                return Err("scale and zero_point must be scalars without an axis".into());
            }
            (1, 1)
        }
        Some(_) => {
            let r = x.shape.len() as f32;
            let axis = a.scalar("axis")?;
            if axis.fract() != 0.0 || axis < -r || axis >= r {
                return Err(format!("axis {axis} out of range for {:?}", x.shape));
            }
            let axis = if axis < 0.0 { axis + r } else { axis } as usize;
            let c = x.shape[axis];
            if scale.len() != c || zp.is_some_and(|z| z.len() != c) {
                return Err(format!(
                    "scale {:?} and zero_point must have {c} values along axis {axis} of {:?}",
                    scale.shape, x.shape
                ));
            }
            (x.shape[axis + 1..].iter().product::<usize>().max(1), c)
        }
    };
    Ok(move |e: usize| {
        let ch = (e / inner) % c;
        (scale.data[ch], zp.map_or(0.0, |z| z.data[ch]))
    })
}

/// iOS17 `quantize`: `clamp(round_half_even(input / scale) + zero_point)` to the range of
/// `output_dtype` (int8 or uint8), values held in f32.
pub fn quantize(a: &Args) -> Result<Array, String> {
    let x = a.num("input")?;
    let (lo, hi) = match a.string("output_dtype")?.as_str() {
        "int8" => (-128.0, 127.0),
        "uint8" => (0.0, 255.0),
        other => return Err(format!("output_dtype {other:?} is not int8 or uint8")),
    };
    let p = quant_params(a, x)?;
    let data = x.data.iter().enumerate().map(|(e, &v)| {
        let (s, z) = p(e);
        ((v / s).round_ties_even() + z).clamp(lo, hi)
    });
    Ok(Array::new(x.shape.clone(), data.collect()))
}

/// iOS17 `dequantize`: `scale * (input - zero_point)`.
pub fn dequantize(a: &Args) -> Result<Array, String> {
    let q = a.num("input")?;
    let p = quant_params(a, q)?;
    let data = q.data.iter().enumerate().map(|(e, &v)| {
        let (s, z) = p(e);
        kernels::dequantize(v, s, z)
    });
    Ok(Array::new(q.shape.clone(), data.collect()))
}

pub fn constexpr_blockwise_shift_scale(a: &Args) -> Result<Array, String> {
    let (d, scale) = (a.num("data")?, a.num("scale")?);
    let offset = a.opt("offset")?;
    if scale.shape.len() != d.shape.len()
        || d.shape
            .iter()
            .zip(&scale.shape)
            .any(|(a, b)| *b == 0 || a % b != 0)
        || offset.is_some_and(|o| o.shape != scale.shape)
    {
        return Err(format!(
            "scale {:?} does not tile data {:?}",
            scale.shape, d.shape
        ));
    }
    let data = d.data.iter().enumerate().map(|(e, &v)| {
        let b = block_index(e, &d.shape, &scale.shape);
        scale.data[b] * (v - offset.map_or(0.0, |o| o.data[b]))
    });
    Ok(Array::new(d.shape.clone(), data.collect()))
}

/// The flat index, in a tensor of `coarse` shape, of the block that element `e` of a tensor of
/// `fine` shape falls in (each dimension of `fine` a multiple of `coarse`'s).
fn block_index(e: usize, fine: &[usize], coarse: &[usize]) -> usize {
    let mut rest = e;
    let mut idx = 0;
    let mut stride = 1;
    for d in (0..fine.len()).rev() {
        let i = rest % fine[d];
        rest /= fine[d];
        idx += (i / (fine[d] / coarse[d])) * stride;
        stride *= coarse[d];
    }
    idx
}

/// `constexpr_lut_to_dense`: the iOS16 form (packed uint8 `indices`, a 1-D `lut`, `shape`) or
/// the iOS18 form (`indices` of the output's shape, `lut` of rank + 2 with one table per block).
fn lut_to_dense(
    a: &Args,
    indices: &Array,
    lut: &Array,
    shape: Option<&Array>,
) -> Result<Array, String> {
    match shape {
        Some(shape) => {
            let shape: Vec<usize> = shape
                .data
                .iter()
                .map(|&d| {
                    if d >= 0.0 && d.fract() == 0.0 && d < 1e15 {
                        Ok(d as usize)
                    } else {
                        Err(format!("shape holds {d}, not a size"))
                    }
                })
                .collect::<Result<_, _>>()?;
            let n = a.elements(&shape)?;
            let table = lut.len();
            if !table.is_power_of_two() || !(2..=256).contains(&table) {
                return Err(format!("lut of {table} entries is not 2^bits"));
            }
            let bits = table.trailing_zeros();
            let bytes: Vec<u8> = indices.data.iter().map(|&b| b as u8).collect();
            if bytes.len() < (n * bits as usize).div_ceil(8) {
                return Err(format!(
                    "{} index bytes cannot hold {n} {bits}-bit indices",
                    bytes.len()
                ));
            }
            let idx = crate::compress::pack::unpack_bits(&bytes, bits, n);
            Ok(Array::new(
                shape,
                idx.iter().map(|&i| lut.data[i as usize]).collect(),
            ))
        }
        None => {
            let rank = indices.shape.len();
            if lut.shape.len() != rank + 2 || lut.shape[rank + 1] != 1 {
                return Err(format!(
                    "lut {:?} must have rank {} and vector size 1",
                    lut.shape,
                    rank + 2
                ));
            }
            let coarse = &lut.shape[..rank];
            if indices
                .shape
                .iter()
                .zip(coarse)
                .any(|(a, b)| *b == 0 || a % b != 0)
            {
                return Err(format!(
                    "lut {:?} does not tile indices {:?}",
                    lut.shape, indices.shape
                ));
            }
            let table = lut.shape[rank];
            if let Some(i) = indices
                .data
                .iter()
                .find(|&&i| !(i >= 0.0 && i.fract() == 0.0 && i < table as f32))
            {
                return Err(format!("index {i} is past the end of a {table}-entry lut"));
            }
            let data = indices.data.iter().enumerate().map(|(e, &i)| {
                let b = block_index(e, &indices.shape, coarse);
                lut.data[b * table + i as usize]
            });
            Ok(Array::new(indices.shape.clone(), data.collect()))
        }
    }
}
