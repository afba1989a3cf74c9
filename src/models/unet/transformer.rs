//! diffusers' `Transformer2DModel` over a `[B, C, H, W]` map, in either layout:
//!
//! ```text
//! h = group_norm(x)                                   32 groups, eps 1e-6
//! h = proj_in(h) as states                            1x1 conv before (SD 1.x) or linear after
//! per block: h += attn1(norm1(h))                     self-attention
//!            h += attn2(norm2(h), context)            cross-attention to the text
//!            h += ff(norm3(h))                        GEGLU, 4x inner
//! out = proj_out(h) as a map + x
//! ```
//! Standard states are `[B, H·W, C]` (a transpose in and out); `ane` states are `[B, C, 1, H·W]`,
//! a reshape of the map itself, so the block runs on 1x1 convolutions and per-head attention
//! with no transpose (Apple's ml-stable-diffusion layout).

use super::config::{LAYER_NORM_EPS, TRANSFORMER_NORM_EPS};
use crate::ir::{Binary, Dim, Graph, Op, ValueId};
use crate::models::nn::ane::ScoreBudget;
use crate::models::nn::{
    attention_layer, binary, conv2d, feed_forward, group_norm, layer_norm, linear, reshape_to,
    transpose, AttentionSpec, ConvSpec, FeedForward, GroupNorm, LayerNorm, Linear, NormAxis,
    Projections, Scope,
};
use crate::models::{ModelError, TransformerLayout};

/// One `Transformer2DModel`'s sizes.
pub struct Transformer {
    pub channels: usize,
    pub heads: usize,
    pub depth: usize,
    /// Width of the text conditioning.
    pub context: usize,
    /// `proj_in`/`proj_out` are linear layers (else 1x1 convolutions).
    pub linear_projection: bool,
    pub groups: usize,
    pub layout: TransformerLayout,
    /// `ane`: the largest score tensor one attention may build.
    pub budget: ScoreBudget,
}

/// The block over `x` `[B, C, H, W]`; `context` is `encoder_hidden_states` in the layout's
/// states (`[B, S, D]` or `[B, D, 1, S]`).
pub fn transformer(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    context: ValueId,
    t: &Transformer,
) -> Result<ValueId, ModelError> {
    let c = t.channels;
    let layout = t.layout;
    let norm = GroupNorm {
        channels: c,
        groups: t.groups,
        epsilon: TRANSFORMER_NORM_EPS,
    };
    let h = group_norm(g, &p.child("norm"), x, &norm)?;
    let map = g.ty(x).shape.clone();
    let conv =
        |g: &mut Graph, name: &str, h| conv2d(g, &p.child(name), h, &ConvSpec::same(c, c, 1, true));
    let h = if t.linear_projection {
        let s = to_states(g, p, h, layout)?;
        linear(g, &p.child("proj_in"), s, &Linear::new(c, c), layout)?
    } else {
        let h = conv(g, "proj_in", h)?;
        to_states(g, p, h, layout)?
    };
    let mut h = h;
    for k in 0..t.depth {
        h = block(g, &p.child("transformer_blocks").child(k), h, context, t)?;
    }
    let out = if t.linear_projection {
        let h = linear(g, &p.child("proj_out"), h, &Linear::new(c, c), layout)?;
        to_map(g, p, h, &map, x, layout)?
    } else {
        let h = to_map(g, p, h, &map, x, layout)?;
        conv(g, "proj_out", h)?
    };
    binary(g, p, Binary::Add, out, x, "residual")
}

/// diffusers' `BasicTransformerBlock` on states.
fn block(
    g: &mut Graph,
    p: &Scope,
    h: ValueId,
    context: ValueId,
    t: &Transformer,
) -> Result<ValueId, ModelError> {
    let c = t.channels;
    let ln = |g: &mut Graph, name: &str, x| {
        let spec = LayerNorm {
            channels: c,
            axis: NormAxis::of(t.layout),
            epsilon: LAYER_NORM_EPS,
        };
        layer_norm(g, &p.child(name), x, &spec)
    };
    let spec = AttentionSpec::new(c, t.heads, Projections::DIFFUSERS, t.layout)
        .unbiased()
        .chunked(t.budget);
    let x = ln(g, "norm1", h)?;
    let a = attention_layer(g, &p.child("attn1"), x, None, None, &spec)?;
    let h = binary(g, &p.child("attn1"), Binary::Add, h, a, "residual")?;
    let x = ln(g, "norm2", h)?;
    let cross = spec.cross(t.context);
    let a = attention_layer(g, &p.child("attn2"), x, Some(context), None, &cross)?;
    let h = binary(g, &p.child("attn2"), Binary::Add, h, a, "residual")?;
    let x = ln(g, "norm3", h)?;
    let ff = FeedForward {
        dim: c,
        inner: 4 * c,
        layout: t.layout,
    };
    let f = feed_forward(g, &p.child("ff"), x, &ff)?;
    binary(g, &p.child("ff"), Binary::Add, h, f, "residual")
}

/// `[B, C, H, W]` as the layout's states: `[B, H·W, C]` or `[B, C, 1, H·W]`.
fn to_states(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    layout: TransformerLayout,
) -> Result<ValueId, ModelError> {
    let s = g.ty(x).shape.clone();
    let positions = s[2].times(&s[3]);
    match layout {
        TransformerLayout::Ane => {
            let shape = vec![s[0].clone(), s[1].clone(), Dim::Known(1), positions];
            reshape_to(g, x, shape, p.node("states"))
        }
        TransformerLayout::Standard => {
            let shape = vec![s[0].clone(), s[1].clone(), positions];
            let flat = reshape_to(g, x, shape, p.node("flat"))?;
            transpose(g, flat, &[0, 2, 1], p.node("states"))
        }
    }
}

/// The layout's states back as the map of shape `map`.
fn to_map(
    g: &mut Graph,
    p: &Scope,
    h: ValueId,
    map: &[Dim],
    like: ValueId,
    layout: TransformerLayout,
) -> Result<ValueId, ModelError> {
    let h = match layout {
        TransformerLayout::Ane => h,
        TransformerLayout::Standard => transpose(g, h, &[0, 2, 1], p.node("by_channel"))?,
    };
    // A map whose height and width both vary (enumerated sizes) has no reshape target MIL can
    // write: take the shape of the map itself.
    if map.iter().filter(|d| d.known().is_none()).count() > 1 {
        return Ok(g.add(Op::ReshapeLike, &[h, like], p.node("map"))?);
    }
    reshape_to(g, h, map.to_vec(), p.node("map"))
}
