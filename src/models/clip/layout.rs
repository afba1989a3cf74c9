//! Where CLIP's two layouts (`--layout`) differ in what is CLIP's own: how token ids become
//! states, the causal mask, and how the final states leave the graph (the sequence, the pooled
//! state, its projection). The encoder layer itself ([`super::transformer::layer`]) is written
//! once, for text and images, with the layer library's layout-aware pieces (`nn::linear`,
//! `nn::layer_norm`, `nn::attention_layer`).
//!
//! `standard` keeps the states as `[1, S, D]`, as traced PyTorch models do. `ane` keeps them as
//! `[1, D, 1, S]` (see [`crate::models::nn::ane`]); tables are rearranged when the graph is
//! built (the token table to `[1, D, V]`, so that one gather yields `[1, D, 1, S]`), so the
//! only layout changes left at run time are the ones the interface asks for at the outputs.

use super::transformer::Encoder;
use super::MASKED;
use crate::ir::{Binary, Conv2d, Graph, Op, ValueId};
use crate::models::nn::{self, ane::channels_first, reshape, LayerNorm, NormAxis, Scope};
use crate::models::{ModelError, TransformerLayout};
use crate::tensor::Tensor;

/// A CLIP transformer's token states: their layout and the encoder's sizes.
pub struct TokenStates<'e> {
    pub kind: TransformerLayout,
    pub enc: &'e Encoder,
}

impl TokenStates<'_> {
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
        let spec = LayerNorm {
            channels: self.enc.hidden,
            axis: NormAxis::of(self.kind),
            epsilon: self.enc.epsilon,
        };
        nn::layer_norm(g, p, x, &spec)
    }

    /// Token states as the interface gives them: `[1, S, D]`.
    pub fn sequence_output(
        &self,
        g: &mut Graph,
        x: ValueId,
        name: &str,
    ) -> Result<ValueId, ModelError> {
        if !self.ane() {
            return Ok(x);
        }
        nn::ane::to_sequence(g, x, name)
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

    /// One state (from [`TokenStates::state_at`]) in the form a pooled head computes on: `[1, D]`
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

    /// A pooled state (from [`TokenStates::pooled`]) through the projection `key` [P, D] (no bias),
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
