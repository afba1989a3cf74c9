//! The reference evaluator: runs a graph on the CPU in f32.
//!
//! Values stored as fp16 (constants after the fp16 pass) are widened exactly, and `cast` to fp16
//! rounds, so the evaluator sees precisely the numbers a package holds while computing in f32.
//! Intermediates are dropped after their last use: a decoder at 1024x1024 would otherwise hold
//! tens of gigabytes.

use super::{Dim, Graph, IrError, Op, ValueId};
use crate::kernels::{self, Array};
use crate::tensor::DType;
use half::f16;
use std::collections::BTreeMap;

/// Evaluates `g` on named inputs, returning its named outputs.
pub fn evaluate(
    g: &Graph,
    inputs: &BTreeMap<String, Array>,
) -> Result<BTreeMap<String, Array>, IrError> {
    evaluate_inner(g, inputs, None)
}

/// [`evaluate`] that shows `observe` every value the graph computes (inputs and ops, not
/// constants) as soon as it exists, before it is dropped: statistics over activations without
/// keeping them (calibration).
pub fn evaluate_observed(
    g: &Graph,
    inputs: &BTreeMap<String, Array>,
    observe: Observer,
) -> Result<BTreeMap<String, Array>, IrError> {
    evaluate_inner(g, inputs, Some(observe))
}

/// What [`evaluate_observed`] calls with each value it computes.
pub type Observer<'a> = &'a mut dyn FnMut(ValueId, &Array);

fn evaluate_inner(
    g: &Graph,
    inputs: &BTreeMap<String, Array>,
    mut observe: Option<Observer>,
) -> Result<BTreeMap<String, Array>, IrError> {
    let mut uses = g.use_counts();
    let mut values: Vec<Option<Array>> = vec![None; g.len()];
    let mut symbols: BTreeMap<String, usize> = BTreeMap::new();
    for (id, node) in g.nodes() {
        let err = |reason: String| IrError::Eval {
            node: node.name.clone(),
            reason,
        };
        let out = {
            let args: Vec<&Array> = node
                .inputs
                .iter()
                .map(|v| {
                    values[v.index()]
                        .as_ref()
                        .ok_or_else(|| err(format!("input {v} has no value")))
                })
                .collect::<Result<_, _>>()?;
            match &node.op {
                Op::Input { name } => {
                    let a = inputs
                        .get(name)
                        .ok_or_else(|| err(format!("no value given for input {name:?}")))?;
                    bind_shape(&node.ty.shape, &a.shape, &mut symbols).map_err(err)?;
                    let mut a = a.clone();
                    if node.ty.dtype == DType::F16 {
                        round_f16(&mut a);
                    }
                    a
                }
                op => eval_op_at(op, &args, &symbols).map_err(err)?,
            }
        };
        if let Some(f) = observe.as_mut() {
            if !matches!(node.op, Op::Const(_)) {
                f(id, &out);
            }
        }
        values[id.index()] = Some(out);
        for v in &node.inputs {
            release(&mut uses, &mut values, *v);
        }
    }
    g.outputs()
        .iter()
        .map(|(name, v)| {
            Ok((
                name.clone(),
                values[v.index()].clone().expect("outputs are kept alive"),
            ))
        })
        .collect()
}

fn release(uses: &mut [usize], values: &mut [Option<Array>], v: ValueId) {
    uses[v.index()] -= 1;
    if uses[v.index()] == 0 {
        values[v.index()] = None;
    }
}

/// Checks a given shape against a declared one, binding symbols on first sight (dimensions are
/// taken in order, so `H` binds before `H*W` needs it).
fn bind_shape(
    declared: &[Dim],
    given: &[usize],
    symbols: &mut BTreeMap<String, usize>,
) -> Result<(), String> {
    let bad = || {
        let declared: Vec<String> = declared.iter().map(|d| d.to_string()).collect();
        format!(
            "given shape {given:?} does not fit declared [{}]",
            declared.join(", ")
        )
    };
    if declared.len() != given.len() {
        return Err(bad());
    }
    for (d, &n) in declared.iter().zip(given) {
        if let Some((sym, v)) = d.solve(n, symbols) {
            symbols.insert(sym, v);
        }
        if d.resolve(&|s| symbols.get(s).copied()) != Some(n) {
            return Err(bad());
        }
    }
    Ok(())
}

fn round_f16(a: &mut Array) {
    for x in &mut a.data {
        *x = f16::from_f32(*x).to_f32();
    }
}

/// One op on f32 arrays: the semantics every lowering must preserve.
pub fn eval_op(op: &Op, args: &[&Array]) -> Result<Array, String> {
    eval_op_at(op, args, &BTreeMap::new())
}

/// [`eval_op`] with the model's sizes bound (symbolic reshape targets need them).
pub fn eval_op_at(
    op: &Op,
    args: &[&Array],
    sizes: &BTreeMap<String, usize>,
) -> Result<Array, String> {
    let binary = |f: fn(f32, f32) -> f32| {
        kernels::binary(args[0], args[1], f).ok_or_else(|| {
            format!(
                "shapes {:?} and {:?} do not broadcast",
                args[0].shape, args[1].shape
            )
        })
    };
    Ok(match op {
        Op::Input { .. } => unreachable!("inputs are bound by the caller"),
        Op::Const(c) => {
            let t = c.dense();
            Array::new(t.shape.clone(), t.to_f32())
        }
        Op::Conv2d(p) => {
            let bias = args.get(2).map(|b| b.data.as_slice());
            let k = kernels::Conv2d {
                strides: p.strides,
                pads: p.pads,
                dilations: p.dilations,
                groups: p.groups,
            };
            kernels::conv2d(args[0], args[1], bias, &k)
        }
        Op::Unary(u) => kernels::map(args[0], u.kernel()),
        Op::Binary(b) => binary(b.kernel())?,
        Op::Rsqrt { epsilon } => {
            let e = *epsilon;
            kernels::map(args[0], move |x| 1.0 / (x + e).sqrt())
        }
        Op::Clip { min, max } => kernels::clip(args[0], *min, *max),
        Op::FakeQuantize { scale, zero_point } => {
            kernels::fake_quantize_i8(args[0], *scale, *zero_point)
        }
        Op::Upsample { scale } => kernels::upsample_nearest(args[0], *scale, *scale),
        Op::GroupNorm { groups, epsilon } => {
            group_norm(args[0], &args[1].data, &args[2].data, *groups, *epsilon)?
        }
        Op::ReduceMean { axes, keep_dims } => kernels::reduce_mean(args[0], axes, *keep_dims),
        Op::Reshape { shape } => {
            let shape = reshape_target(shape, &args[0].shape, sizes)?;
            args[0].clone().reshape(shape)
        }
        Op::Tile { reps } => kernels::tile(args[0], reps),
        Op::Transpose { perm } => kernels::transpose(args[0], perm),
        Op::MatMul {
            transpose_x,
            transpose_y,
        } => kernels::matmul(args[0], args[1], *transpose_x, *transpose_y)
            .ok_or_else(|| format!("{:?} by {:?} do not multiply", args[0].shape, args[1].shape))?,
        Op::Softmax { axis } => kernels::softmax(args[0], *axis),
        Op::Attention { scale } => attention(args[0], args[1], args[2], args.get(3), *scale)?,
        Op::LayerNorm { axis, epsilon } => kernels::layer_norm(
            args[0],
            &[*axis],
            Some(&args[1].data),
            Some(&args[2].data),
            *epsilon,
        ),
        Op::Gather { axis } => kernels::gather(args[0], args[1], *axis)?,
        Op::ArgMax { axis } => kernels::argmax(args[0], *axis),
        Op::Slice { axis, begin, end } => {
            let x = args[0];
            let mut b = vec![0; x.shape.len()];
            let mut e = x.shape.clone();
            b[*axis] = *begin;
            e[*axis] = *end;
            kernels::slice(x, &b, &e, &vec![1; x.shape.len()])
        }
        Op::Split { axis, parts, index } => {
            let x = args[0];
            let part = match x.shape.get(*axis) {
                Some(&n) if *parts > 0 && n % parts == 0 && index < parts => n / parts,
                _ => {
                    return Err(format!(
                        "{:?} has no part {index} of {parts} along axis {axis}",
                        x.shape
                    ))
                }
            };
            let mut b = vec![0; x.shape.len()];
            let mut e = x.shape.clone();
            (b[*axis], e[*axis]) = (index * part, (index + 1) * part);
            kernels::slice(x, &b, &e, &vec![1; x.shape.len()])
        }
        Op::ReshapeLike => args[0].clone().reshape(args[1].shape.clone()),
        Op::Concat { axis } => kernels::concat(args, *axis)
            .ok_or_else(|| format!("inputs do not join along axis {axis}"))?,
        Op::PixelShuffle { factor } => kernels::pixel_shuffle(args[0], *factor)
            .ok_or_else(|| format!("{:?} does not shuffle by {factor}", args[0].shape))?,
        Op::Cast { dtype } => {
            let mut a = args[0].clone();
            match dtype {
                DType::F16 => round_f16(&mut a),
                DType::I32 => a.data.iter_mut().for_each(|x| *x = x.trunc()),
                DType::F32 | DType::Bool => {}
            }
            a
        }
    })
}

/// Group normalisation computed directly (two-pass, f64 sums), independent of the lowering that
/// replaces it, so the lowering is checked against a separate formulation.
fn group_norm(
    x: &Array,
    gamma: &[f32],
    beta: &[f32],
    groups: usize,
    eps: f32,
) -> Result<Array, String> {
    let [n, c, h, w] = x.shape[..] else {
        return Err(format!("group_norm needs rank 4, got {:?}", x.shape));
    };
    let (cg, hw) = (c / groups, h * w);
    let mut out = x.clone();
    for b in 0..n {
        for g in 0..groups {
            let start = (b * c + g * cg) * hw;
            let chunk = &x.data[start..start + cg * hw];
            let mean = chunk.iter().map(|&v| v as f64).sum::<f64>() / chunk.len() as f64;
            let var = chunk
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / chunk.len() as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for ch in 0..cg {
                let ci = g * cg + ch;
                let o = &mut out.data[start + ch * hw..start + (ch + 1) * hw];
                for v in o.iter_mut() {
                    *v = (((*v as f64 - mean) * inv) as f32) * gamma[ci] + beta[ci];
                }
            }
        }
    }
    Ok(out)
}

/// The concrete target of a reshape: symbolic dimensions resolve with the bound sizes, or, when
/// exactly one does not, from the input's element count (as a MIL reshape's `-1` would).
fn reshape_target(
    shape: &[Dim],
    input: &[usize],
    sizes: &BTreeMap<String, usize>,
) -> Result<Vec<usize>, String> {
    let n: usize = input.iter().product();
    let known: Vec<Option<usize>> = shape
        .iter()
        .map(|d| d.resolve(&|s| sizes.get(s).copied()))
        .collect();
    let unknown = known.iter().filter(|d| d.is_none()).count();
    let rest: usize = known.iter().flatten().product();
    let out: Vec<usize> = match unknown {
        0 => known.into_iter().flatten().collect(),
        1 if rest > 0 && n % rest == 0 => known.iter().map(|d| d.unwrap_or(n / rest)).collect(),
        _ => {
            return Err(format!(
                "reshape of {input:?} to {shape:?}: more than one dimension depends on the input"
            ))
        }
    };
    if out.iter().product::<usize>() != n {
        return Err(format!("cannot reshape {input:?} to {out:?}"));
    }
    Ok(out)
}

/// Attention computed directly, row by row with f64 sums (independent of the matmul/softmax
/// lowering that replaces it, so the lowering is checked against a separate formulation).
fn attention(
    q: &Array,
    k: &Array,
    v: &Array,
    mask: Option<&&Array>,
    scale: f32,
) -> Result<Array, String> {
    let (&[b, l, d], &[_, s, _], &[_, _, e]) = (&q.shape[..], &k.shape[..], &v.shape[..]) else {
        return Err("attention needs rank-3 q, k, v".into());
    };
    if mask.is_some_and(|m| m.shape != [l, s]) {
        return Err(format!("attention mask must be [{l}, {s}]"));
    }
    let mut out = vec![0f32; b * l * e];
    let mut scores = vec![0f64; s];
    for bi in 0..b {
        for i in 0..l {
            let qi = &q.data[(bi * l + i) * d..][..d];
            let mut max = f64::NEG_INFINITY;
            for (j, sc) in scores.iter_mut().enumerate() {
                let kj = &k.data[(bi * s + j) * d..][..d];
                let dot: f64 = qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum();
                *sc = dot * scale as f64 + mask.map_or(0.0, |m| m.data[i * s + j] as f64);
                max = max.max(*sc);
            }
            let mut total = 0.0;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                total += *sc;
            }
            let o = &mut out[(bi * l + i) * e..][..e];
            for (j, sc) in scores.iter().enumerate() {
                let w = sc / total;
                let vj = &v.data[(bi * s + j) * e..][..e];
                for (oc, vc) in o.iter_mut().zip(vj) {
                    *oc += (w * *vc as f64) as f32;
                }
            }
        }
    }
    Ok(Array::new(vec![b, l, e], out))
}
