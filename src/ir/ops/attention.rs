//! `attention(q, k, v[, mask]) scale=s`: `softmax(q kᵀ · scale + mask) v` for q [B, L, D],
//! k [B, S, D], v [B, S, E] → [B, L, E], with an optional fourth input `mask` [L, S] added to every
//! batch's scores (a causal mask holds a large negative value above the diagonal).
//!
//! The `lower_attention` pass lowers it for the target: one MIL `scaled_dot_product_attention` on
//! iOS18 (which scales by 1/sqrt(D), so another scale needs the decomposed form), matmuls and a
//! softmax before, split into query chunks when the score matrix would be large. The fused op is
//! not known to run on the Neural Engine. The evaluator computes it directly, row by row with f64
//! sums, independent of that lowering, so the lowering is checked against a separate formulation.

use super::attr::Visit;
use super::{arity, float, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::Array;
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, NOT_KNOWN};
use crate::mil::target::Target;
use crate::mil::LowerError;

pub const NAME: &str = "attention";

pub const MIL: &[MilOp] = &[MilOp::new(
    "scaled_dot_product_attention",
    &["query", "key", "value", "attn_mask"],
)
.since(Target::Ios18)
.off_ane(NOT_KNOWN)];

pub fn infer(inputs: &[&TensorType], _scale: &f32) -> Result<TensorType, String> {
    arity(inputs, 3..=4)?;
    let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
    if let Some(m) = inputs.get(3) {
        if m.shape != [q.shape[1].clone(), k.shape[1].clone()] || m.dtype != q.dtype {
            return Err(format!(
                "mask must be {}[{}, {}], got {m}",
                q.dtype, q.shape[1], k.shape[1]
            ));
        }
    }
    float(q)?;
    let ok = [q, k, v]
        .iter()
        .all(|t| t.rank() == 3 && t.dtype == q.dtype)
        && q.shape[0] == k.shape[0]
        && k.shape[0] == v.shape[0]
        && q.shape[2] == k.shape[2]
        && k.shape[1] == v.shape[1];
    if !ok {
        return Err(format!(
            "needs q [B, L, D], k [B, S, D], v [B, S, E], got {q}, {k}, {v}"
        ));
    }
    Ok(TensorType::new(
        q.dtype,
        vec![q.shape[0].clone(), q.shape[1].clone(), v.shape[2].clone()],
    ))
}

pub fn eval(args: &[&Array], _sizes: &Sizes, scale: &f32) -> Result<Array, String> {
    attention(args[0], args[1], args[2], args.get(3), *scale)
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, scale: &mut f32) -> Result<(), String> {
    v.attr("scale", scale)
}

pub fn lower(e: &mut Emitter, id: ValueId, scale: &f32) -> Result<(), LowerError> {
    // MIL's op scales by 1/sqrt(D); another scale needs the decomposed form.
    let d = e.input_type(id, 0).shape[2].known();
    let default = d.map(|d| (1.0 / (d as f32).sqrt() - scale).abs() <= 1e-6 * scale);
    if default != Some(true) {
        return Err(LowerError::Unlowered {
            node: e.g.node(id).name.clone(),
            op: "attention with a scale other than 1/sqrt(D); run lower_attention",
        });
    }
    let mut inputs = vec![
        ("query", e.input(id, 0)),
        ("key", e.input(id, 1)),
        ("value", e.input(id, 2)),
    ];
    if e.g.node(id).inputs.len() > 3 {
        inputs.push(("attn_mask", e.input(id, 3)));
    }
    e.op(id, "scaled_dot_product_attention", inputs)
}

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

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %q: fp32[1,L,4] = input(\"q\")\n  %k: fp32[1,3,4] = input(\"k\")\n  %v: fp32[1,3,2] = input(\"v\")\n  %y: fp32[1,L,2] = attention(%q, %k, %v) scale=0.5\n  return y=%y\n}\n",
        "graph t {\n  %q: fp32[1,2,4] = input(\"q\")\n  %k: fp32[1,2,4] = input(\"k\")\n  %v: fp32[1,2,2] = input(\"v\")\n  %m: fp32[2,2] = const([0.0, -10000.0, 0.0, 0.0])\n  %y: fp32[1,2,2] = attention(%q, %k, %v, %m) scale=0.5\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
