//! The Neural Engine's transformer layout, after Apple's "Deploying Transformers on the Apple
//! Neural Engine" and ml-stable-diffusion: states are `[B, D, 1, S]` (channels first, the
//! sequence on the last axis, which the Neural Engine pads to 64 bytes), linear layers are 1x1
//! convolutions ([`super::linear`]), layer norm runs over axis 1 ([`super::norm`]), and
//! attention is split per head into small rank-4 matmuls with no transpose and no reshape that
//! touches the last axis:
//!
//! ```text
//! q, k, v [B, D, 1, S] → [B, H, D/H, S] → H slices [B, 1, D/H, S]     the last axis kept
//! scores = kᵀ·q [B, 1, S_keys, S_queries]; softmax over the keys (axis 2); out = v·scores
//! heads concatenated on axis 1 → [B, D, 1, S]
//! ```
//! With a [`ScoreBudget`], each head's queries are cut into slices of the last axis so that no
//! score tensor exceeds it (a UNet attends over `h·w` positions).

use super::attention::AttentionSpec;
use super::{reshape_to, transpose, Scope};
use crate::ir::{Binary, Dim, Graph, Op, ValueId};
use crate::models::ModelError;
use crate::tensor::Tensor;

/// The largest score tensor an attention may build.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreBudget {
    pub max_bytes: usize,
    /// Bytes per score (2 where the model computes in fp16).
    pub element_bytes: usize,
}

impl ScoreBudget {
    /// Query slices needed for `b` × `keys` × `queries` scores, each within the budget (or of
    /// one query where a single one exceeds it): 1 when they fit, or when a size is symbolic
    /// (a known slice cannot cut it).
    pub fn chunks(&self, b: &Dim, keys: &Dim, queries: &Dim) -> usize {
        let (Some(b), Some(s), Some(l)) = (b.known(), keys.known(), queries.known()) else {
            return 1;
        };
        let row = b.saturating_mul(s).saturating_mul(self.element_bytes);
        let rows = (self.max_bytes / row.max(1)).max(1);
        l.div_ceil(rows).max(1)
    }
}

/// Per-head attention of projected `q`, `k`, `v` (`[B, inner, 1, S]`), back as `[B, inner, 1,
/// L]`; `mask` is `[1, 1, S, L]` (keys, queries), the per-head scores' layout.
pub fn attention(
    g: &mut Graph,
    a: &Scope,
    [q, k, v]: [ValueId; 3],
    mask: Option<ValueId>,
    spec: &AttentionSpec,
) -> Result<ValueId, ModelError> {
    let (h, dh) = (spec.heads, spec.head_size());
    let scale = g.constant(a.node("scale"), Tensor::scalar(1.0 / (dh as f32).sqrt()));
    let q = g.add(Op::Binary(Binary::Mul), &[q, scale], a.node("q_scaled"))?;
    let names = spec.names;
    let mut split = Vec::with_capacity(3);
    for (x, proj) in [(q, names.q), (k, names.k), (v, names.v)] {
        let p = a.child(proj);
        let shape = g.ty(x).shape.clone();
        let by_head = vec![
            shape[0].clone(),
            Dim::Known(h),
            Dim::Known(dh),
            shape[3].clone(),
        ];
        let y = reshape_to(g, x, by_head, p.node("heads"))?;
        let parts = (0..h)
            .map(|i| {
                if h == 1 {
                    return Ok(y);
                }
                let op = Op::Split {
                    axis: 1,
                    parts: h,
                    index: i,
                };
                g.add(op, &[y], p.node(&format!("head{i}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        split.push(parts);
    }
    let [qs, ks, vs] = &split[..] else {
        unreachable!("three projections")
    };
    let (qt, kt) = (g.ty(q).shape.clone(), g.ty(k).shape.clone());
    let chunks = spec.budget.map_or(1, |b| b.chunks(&qt[0], &kt[3], &qt[3]));
    let queries = qt[3].known().unwrap_or(0);
    let mut outs = Vec::with_capacity(h);
    for (i, ((&q, &k), &v)) in qs.iter().zip(ks).zip(vs).enumerate() {
        let head = |g: &mut Graph, q, mask, tag: &str| {
            let n = |what: &str| a.node(&format!("head{i}{tag}_{what}"));
            head_attention(g, [q, k, v], mask, n)
        };
        if chunks == 1 {
            outs.push(head(g, q, mask, "")?);
            continue;
        }
        let mut parts = Vec::with_capacity(chunks);
        for c in 0..chunks {
            let tag = format!("_chunk{c}");
            let rows = Op::Slice {
                axis: 3,
                begin: c * queries / chunks,
                end: (c + 1) * queries / chunks,
            };
            let n = |what: &str| a.node(&format!("head{i}{tag}_{what}"));
            let qc = g.add(rows.clone(), &[q], n("queries"))?;
            let mc = match mask {
                Some(m) => Some(g.add(rows, &[m], n("mask"))?),
                None => None,
            };
            parts.push(head(g, qc, mc, &tag)?);
        }
        let out = a.node(&format!("head{i}_out"));
        outs.push(g.add(Op::Concat { axis: 3 }, &parts, out)?);
    }
    let att = match &outs[..] {
        [one] => *one,
        _ => g.add(Op::Concat { axis: 1 }, &outs, a.node("heads"))?,
    };
    let merged = vec![
        qt[0].clone(),
        Dim::Known(spec.inner),
        Dim::Known(1),
        qt[3].clone(),
    ];
    reshape_to(g, att, merged, a.node("merged"))
}

/// One head: scores `kᵀ·q` (q already scaled), the mask added, softmax over the keys, `v·w`.
fn head_attention(
    g: &mut Graph,
    [q, k, v]: [ValueId; 3],
    mask: Option<ValueId>,
    n: impl Fn(&str) -> String,
) -> Result<ValueId, ModelError> {
    let scores = g.add(
        Op::MatMul {
            transpose_x: true,
            transpose_y: false,
        },
        &[k, q],
        n("scores"),
    )?;
    let scores = match mask {
        Some(m) => g.add(Op::Binary(Binary::Add), &[scores, m], n("masked"))?,
        None => scores,
    };
    let w = g.add(Op::Softmax { axis: 2 }, &[scores], n("weights"))?;
    let matmul = Op::MatMul {
        transpose_x: false,
        transpose_y: false,
    };
    Ok(g.add(matmul, &[v, w], n("out"))?)
}

/// `[B, D, 1, S]` states as `[B, S, D]` (nodes `{name}_channels`, `{name}_by_token`).
pub fn to_sequence(g: &mut Graph, x: ValueId, name: &str) -> Result<ValueId, ModelError> {
    let s = g.ty(x).shape.clone();
    let flat = vec![s[0].clone(), s[1].clone(), s[3].clone()];
    let flat = reshape_to(g, x, flat, format!("{name}_channels"))?;
    transpose(g, flat, &[0, 2, 1], format!("{name}_by_token"))
}

/// A `[N, D]` table as `shape` = `[.., D, .., N]`: its transpose, reshaped (a token or position
/// table laid out so that a gather or an add yields `[1, D, 1, S]` directly).
pub fn channels_first<const R: usize>(t: Tensor, shape: [usize; R]) -> Tensor {
    t.transposed()
        .expect("tables are matrices: their shape was checked on read")
        .into_reshaped(shape.to_vec())
}
