//! Where CLIP's two layouts (`--layout`) differ: how the token states are laid out and what that
//! makes of embeddings, norms, linear layers, attention and pooling. The encoder layer itself
//! ([`super::transformer::layer`]) is written once against these pieces, for text and images.
//!
//! `standard` keeps the states as `[1, S, D]`, as traced PyTorch models do: linear layers are
//! matmuls and attention runs on `[H, S, D/H]` after a reshape and a transpose.
//!
//! `ane` follows Apple's "Deploying Transformers on the Apple Neural Engine": the states are
//! `[1, D, 1, S]` (channels first, the sequence on the last axis, which the Neural Engine pads
//! to 64 bytes), linear layers are 1x1 convolutions, layer norm runs over axis 1, and
//! attention is split per head into small rank-4 matmuls (`[1, 1, S, S]` scores each) with no
//! transpose and no reshape that touches the last axis. Tables are rearranged when the graph is
//! built (the token table to `[1, D, V]`, so that one gather yields `[1, D, 1, S]`), so the
//! only layout changes left at run time are the ones the interface asks for at the outputs.

use super::transformer::{reshape, transpose, Encoder};
use super::MASKED;
use crate::ir::{Binary, Conv2d, Graph, Op, ValueId};
use crate::models::nn::Scope;
use crate::models::{ModelError, TransformerLayout};
use crate::tensor::Tensor;

/// The layout-specific pieces of a CLIP transformer with sizes `enc`.
pub struct Layout<'e> {
    pub kind: TransformerLayout,
    pub enc: &'e Encoder,
}

impl Layout<'_> {
    pub fn ane(&self) -> bool {
        self.kind == TransformerLayout::Ane
    }

    /// Token embeddings of `ids` [1, S] from a `vocab`-row table, plus position embeddings.
    pub fn embeddings(
        &self,
        g: &mut Graph,
        emb: &Scope,
        ids: ValueId,
        vocab: usize,
    ) -> Result<ValueId, ModelError> {
        let (v, s, d) = (vocab, self.enc.tokens, self.enc.hidden);
        let table = emb.child("token_embedding");
        let pos = emb.child("position_embedding");
        let (tokens, pos) = if self.ane() {
            // [V, D] → [1, D, V]: gathering axis 2 by [1, S] ids gives [1, D, 1, S] at once.
            let t = channels_first(table.tensor("weight", &[v, d])?, [1, d, v]);
            let t = g.weight(table.node("weight"), t);
            let tokens = g.add(Op::Gather { axis: 2 }, &[t, ids], "token_embedding")?;
            let p = channels_first(pos.tensor("weight", &[s, d])?, [1, d, 1, s]);
            (tokens, g.weight(pos.node("weight"), p))
        } else {
            let t = table.constant(g, "weight", &[v, d])?;
            let tokens = g.add(Op::Gather { axis: 0 }, &[t, ids], "token_embedding")?;
            (tokens, pos.constant(g, "weight", &[s, d])?)
        };
        Ok(g.add(Op::Binary(Binary::Add), &[tokens, pos], "embeddings")?)
    }

    /// The additive causal mask, laid out like the attention scores.
    pub fn causal_mask(&self, g: &mut Graph) -> ValueId {
        let s = self.enc.tokens;
        // Standard scores are [queries, keys]; the per-head ANE scores are [keys, queries].
        let (masked, shape): (fn(usize, usize) -> bool, Vec<usize>) = if self.ane() {
            (|row, col| row > col, vec![1, 1, s, s])
        } else {
            (|row, col| col > row, vec![s, s])
        };
        let mask = (0..s * s)
            .map(|e| if masked(e / s, e % s) { MASKED } else { 0.0 })
            .collect();
        g.constant("causal_mask", Tensor::f32(shape, mask))
    }

    /// Layer norm over the hidden axis (the last one of a standard state, also of a pooled
    /// `[1, D]`).
    pub fn layer_norm(&self, g: &mut Graph, p: &Scope, x: ValueId) -> Result<ValueId, ModelError> {
        let d = self.enc.hidden;
        let gamma = p.constant(g, "weight", &[d])?;
        let beta = p.constant(g, "bias", &[d])?;
        let axis = match self.ane() {
            true => 1,
            false => g.ty(x).rank().saturating_sub(1),
        };
        let op = Op::LayerNorm {
            axis,
            epsilon: self.enc.epsilon,
        };
        Ok(g.add(op, &[x, gamma, beta], p.node("ln"))?)
    }

    /// `x · weightᵀ + bias` on the hidden axis: a matmul, or a 1x1 convolution.
    pub fn linear(
        &self,
        g: &mut Graph,
        p: &Scope,
        x: ValueId,
        cin: usize,
        cout: usize,
    ) -> Result<ValueId, ModelError> {
        if self.ane() {
            let w = p
                .tensor("weight", &[cout, cin])?
                .into_reshaped(vec![cout, cin, 1, 1]);
            let w = g.weight(p.node("weight"), w);
            let b = p.constant(g, "bias", &[cout])?;
            return Ok(g.add(Op::Conv2d(Conv2d::same(1)), &[x, w, b], p.node("linear"))?);
        }
        let w = p.constant(g, "weight", &[cout, cin])?;
        let b = p.constant(g, "bias", &[cout])?;
        let y = g.add(
            Op::MatMul {
                transpose_x: false,
                transpose_y: true,
            },
            &[x, w],
            p.node("matmul"),
        )?;
        Ok(g.add(Op::Binary(Binary::Add), &[y, b], p.node("linear"))?)
    }

    /// Causal multi-head attention of projected `q`, `k`, `v`, back in the states' layout.
    pub fn attention(
        &self,
        g: &mut Graph,
        a: &Scope,
        [q, k, v]: [ValueId; 3],
        mask: Option<ValueId>,
    ) -> Result<ValueId, ModelError> {
        let (s, d, h) = (self.enc.tokens, self.enc.hidden, self.enc.heads);
        let dh = d / h;
        let scale = 1.0 / (dh as f32).sqrt();
        if !self.ane() {
            // [1, S, D] → [S, H, Dh] → [H, S, Dh]: the heads are attention's batch.
            let mut heads = Vec::with_capacity(3);
            for (x, proj) in [(q, "q_proj"), (k, "k_proj"), (v, "v_proj")] {
                let y = reshape(g, x, &[s, h, dh], a.child(proj).node("heads"))?;
                heads.push(transpose(g, y, &[1, 0, 2], a.child(proj).node("by_head"))?);
            }
            heads.extend(mask);
            let att = g.add(Op::Attention { scale }, &heads, a.node("attention"))?;
            let att = transpose(g, att, &[1, 0, 2], a.node("by_position"))?;
            return reshape(g, att, &[1, s, d], a.node("merged"));
        }
        // [1, D, 1, S] → [1, H, Dh, S] keeps the last axis, so it is free; each head is then a
        // [1, 1, Dh, S] slice whose scores kᵀq are [1, 1, S_keys, S_queries].
        let k_scale = g.constant(a.node("scale"), Tensor::scalar(scale));
        let q = g.add(Op::Binary(Binary::Mul), &[q, k_scale], a.node("q_scaled"))?;
        let mut split = Vec::with_capacity(3);
        for (x, proj) in [(q, "q_proj"), (k, "k_proj"), (v, "v_proj")] {
            let y = reshape(g, x, &[1, h, dh, s], a.child(proj).node("heads"))?;
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
                    g.add(op, &[y], a.child(proj).node(&format!("head{i}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            split.push(parts);
        }
        let [qs, ks, vs] = &split[..] else {
            unreachable!("three projections")
        };
        let mut outs = Vec::with_capacity(h);
        for (i, ((&q, &k), &v)) in qs.iter().zip(ks).zip(vs).enumerate() {
            let n = |what: &str| a.node(&format!("head{i}_{what}"));
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
            let o = g.add(
                Op::MatMul {
                    transpose_x: false,
                    transpose_y: false,
                },
                &[v, w],
                n("out"),
            )?;
            outs.push(o);
        }
        let att = match &outs[..] {
            [one] => *one,
            _ => g.add(Op::Concat { axis: 1 }, &outs, a.node("heads"))?,
        };
        reshape(g, att, &[1, d, 1, s], a.node("merged"))
    }

    /// Token states as the interface gives them: `[1, S, D]`.
    pub fn sequence_output(
        &self,
        g: &mut Graph,
        x: ValueId,
        name: &str,
    ) -> Result<ValueId, ModelError> {
        let (s, d) = (self.enc.tokens, self.enc.hidden);
        if !self.ane() {
            return Ok(x);
        }
        let flat = reshape(g, x, &[1, d, s], format!("{name}_channels"))?;
        transpose(g, flat, &[0, 2, 1], format!("{name}_by_token"))
    }

    /// The token axis of the states.
    pub fn token_axis(&self) -> usize {
        if self.ane() {
            3
        } else {
            1
        }
    }

    /// The state at position `at` ([1] int32) of the final states, still in the layout
    /// (`[1, 1, D]` or `[1, D, 1, 1]`).
    pub fn state_at(&self, g: &mut Graph, x: ValueId, at: ValueId) -> Result<ValueId, ModelError> {
        let axis = self.token_axis();
        Ok(g.add(Op::Gather { axis }, &[x, at], "eos_state")?)
    }

    /// One state (from [`Layout::state_at`]) in the form a pooled head computes on: `[1, D]`
    /// standard, `[1, D, 1, 1]` (unchanged) for the Neural Engine.
    pub fn pooled(&self, g: &mut Graph, x: ValueId, name: &str) -> Result<ValueId, ModelError> {
        match self.ane() {
            true => Ok(x),
            false => reshape(g, x, &[1, self.enc.hidden], name.into()),
        }
    }

    /// A pooled state as the interface gives it: `[1, D]`.
    pub fn pooled_output(
        &self,
        g: &mut Graph,
        x: ValueId,
        name: &str,
    ) -> Result<ValueId, ModelError> {
        match self.ane() {
            true => reshape(g, x, &[1, self.enc.hidden], name.into()),
            false => Ok(x),
        }
    }

    /// A pooled state (from [`Layout::pooled`]) through the projection `key` [P, D] (no bias),
    /// as `[1, P]`; nodes named `name`.
    pub fn project(
        &self,
        g: &mut Graph,
        root: &Scope,
        key: &str,
        x: ValueId,
        p: usize,
        name: &str,
    ) -> Result<ValueId, ModelError> {
        let d = self.enc.hidden;
        let weight = format!("{name}_weight");
        if self.ane() {
            let w = root.tensor(key, &[p, d])?.into_reshaped(vec![p, d, 1, 1]);
            let w = g.weight(weight, w);
            let e = g.add(Op::Conv2d(Conv2d::same(1)), &[x, w], name)?;
            return reshape(g, e, &[1, p], format!("{name}_flat"));
        }
        let w = root.constant_named(g, key, &[p, d], &weight)?;
        Ok(g.add(
            Op::MatMul {
                transpose_x: false,
                transpose_y: true,
            },
            &[x, w],
            name,
        )?)
    }
}

/// A `[N, D]` table as `shape` = `[.., D, .., N]`: its transpose, reshaped.
pub fn channels_first<const R: usize>(t: Tensor, shape: [usize; R]) -> Tensor {
    t.transposed()
        .expect("tables are matrices: their shape was checked on read")
        .into_reshaped(shape.to_vec())
}
