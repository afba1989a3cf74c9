//! The conditioning every resnet adds: the timestep's sinusoid through the time MLP, plus, for
//! SDXL, the added embedding of `text_embeds` and the time ids.
//!
//! ```text
//! sinusoid(t)[i] = cos(t·f_i) | sin(t·f_i),  f_i = exp(-ln(10000)·i / (half - freq_shift))
//! temb = linear_2(silu(linear_1(sinusoid(timestep))))                        time_embedding
//! SDXL: temb += linear_2(silu(linear_1([text_embeds, sinusoid256(time_ids)])))  add_embedding
//! ```
//! diffusers' `Timesteps` and `TimestepEmbedding`. The standard layout keeps the embedding as
//! `[B, C]`; `ane` as `[B, C, 1, 1]`, its linear layers 1x1 convolutions, as Apple's UNet does.

use super::config::UnetConfig;
use crate::ir::{Binary, Dim, Graph, Op, Unary, ValueId};
use crate::models::nn::{linear, reshape_to, Linear, Scope, TimeEmbedding};
use crate::models::{ModelError, TransformerLayout};
use crate::tensor::Tensor;

/// The sinusoid's period bound (diffusers' `max_period`).
const MAX_PERIOD: f64 = 10_000.0;

/// `[cos | sin]` (or `[sin | cos]`) of `t` times `channels / 2` frequencies: `t` is `[N]`, the
/// result `[N, channels]`. The frequencies are computed in f64 and stored as f32.
pub fn sinusoid(
    g: &mut Graph,
    t: ValueId,
    channels: usize,
    cfg: &UnetConfig,
    name: &str,
) -> Result<ValueId, ModelError> {
    let half = channels / 2;
    let n = g.ty(t).shape[0].clone();
    let denominator = half as f64 - cfg.freq_shift as f64;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(MAX_PERIOD.ln()) * i as f64 / denominator).exp() as f32)
        .collect();
    let column = reshape_to(g, t, vec![n, Dim::Known(1)], format!("{name}_column"))?;
    let freqs = g.constant(format!("{name}_freqs"), Tensor::f32(vec![1, half], freqs));
    let args = g.add(
        Op::Binary(Binary::Mul),
        &[column, freqs],
        format!("{name}_args"),
    )?;
    let sin = g.add(Op::Unary(Unary::Sin), &[args], format!("{name}_sin"))?;
    let cos = g.add(Op::Unary(Unary::Cos), &[args], format!("{name}_cos"))?;
    let parts = if cfg.flip_sin_to_cos {
        [cos, sin]
    } else {
        [sin, cos]
    };
    Ok(g.add(Op::Concat { axis: 1 }, &parts, name.to_string())?)
}

/// The embedding the resnets take: `[B, time_embed_dim]` (`[B, .., 1, 1]` in `ane`).
pub fn time_embedding(
    g: &mut Graph,
    root: &Scope,
    inputs: &Inputs,
    cfg: &UnetConfig,
    layout: TransformerLayout,
) -> Result<TimeEmbedding, ModelError> {
    let c0 = cfg.block_out_channels[0];
    let te = cfg.time_embed_dim;
    let t = sinusoid(g, inputs.timestep, c0, cfg, "time_proj")?;
    let mut emb = mlp(g, &root.child("time_embedding"), t, c0, te, layout)?;
    if let (Some(added), Some(text), Some(ids)) = (cfg.added, inputs.text_embeds, inputs.time_ids) {
        let b = g.ty(ids).shape[0].clone();
        let count = added.time_ids;
        let flat = reshape_to(g, ids, vec![b.scaled(count)], "time_ids_flat".into())?;
        let s = sinusoid(g, flat, added.time_id_channels, cfg, "add_time_proj")?;
        let width = count * added.time_id_channels;
        let s = reshape_to(g, s, vec![b, Dim::Known(width)], "time_ids_embeds".into())?;
        let both = g.add(Op::Concat { axis: 1 }, &[text, s], "add_embeds")?;
        let cin = added.text_embeds + width;
        let aug = mlp(g, &root.child("add_embedding"), both, cin, te, layout)?;
        emb = g.add(Op::Binary(Binary::Add), &[emb, aug], "time_emb_sum")?;
    }
    Ok(TimeEmbedding {
        value: emb,
        channels: te,
    })
}

/// The graph's inputs the embedding reads.
pub struct Inputs {
    pub timestep: ValueId,
    pub text_embeds: Option<ValueId>,
    pub time_ids: Option<ValueId>,
}

/// diffusers' `TimestepEmbedding`: `linear_2(silu(linear_1(x)))` over `[B, cin]`; in `ane` on
/// `[B, cin, 1, 1]`.
fn mlp(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    cin: usize,
    cout: usize,
    layout: TransformerLayout,
) -> Result<ValueId, ModelError> {
    let x = match layout {
        TransformerLayout::Standard => x,
        TransformerLayout::Ane => {
            let b = g.ty(x).shape[0].clone();
            let one = Dim::Known(1);
            let shape = vec![b, Dim::Known(cin), one.clone(), one];
            reshape_to(g, x, shape, p.node("map"))?
        }
    };
    let h = linear(g, &p.child("linear_1"), x, &Linear::new(cin, cout), layout)?;
    let h = g.add(Op::Unary(Unary::Silu), &[h], p.node("silu"))?;
    linear(g, &p.child("linear_2"), h, &Linear::new(cout, cout), layout)
}
