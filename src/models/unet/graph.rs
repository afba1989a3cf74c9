//! The UNet's body: down levels that keep their outputs as skips, the mid block, up levels that
//! join each skip back on, in diffusers' `UNet2DConditionModel` names.
//!
//! ```text
//! x = conv_in(sample); skips = [x]
//! down level i: L × (resnet, transformer if the level has attention), each output a skip;
//!               a stride-2 conv (not on the last level), its output a skip
//! mid: resnet, transformer, resnet
//! up level u (from the bottom): L+1 × (x = [x, skips.pop()] on channels, resnet, transformer);
//!               nearest 2x to the next skip's size, a 3x3 conv (not on the last level)
//! noise_pred = conv_out(silu(conv_norm_out(x)))
//! ```
//! A latent whose sides are not multiples of 2^(levels-1) halves to odd sizes (stride-2 convs
//! round up); each upsampler then goes to the size of the skip it meets, which for a known size
//! is the 2x map cut to it (nearest: row `i` of the result is row `floor(i·in/out)`, the same
//! row as 2x's `floor(i/2)` when `out = 2·in - 1`).

use super::config::UnetConfig;
use super::embedding::{time_embedding, Inputs};
use super::transformer::{transformer, Transformer};
use crate::ir::{Graph, Op, ValueId};
use crate::models::nn::ane::ScoreBudget;
use crate::models::nn::{conv2d, norm_silu, resnet, ConvSpec, GroupNorm, Resnet, Scope};
use crate::models::{ModelError, TransformerLayout};

/// The graph's inputs, by role.
pub struct UnetInputs {
    pub sample: ValueId,
    pub context: ValueId,
    pub embedding: Inputs,
}

/// Declares the UNet over `root`'s keys (diffusers names), returning `noise_pred`.
pub fn unet(
    g: &mut Graph,
    root: &Scope,
    inputs: &UnetInputs,
    cfg: &UnetConfig,
    layout: TransformerLayout,
    budget: ScoreBudget,
) -> Result<ValueId, ModelError> {
    let temb = time_embedding(g, root, &inputs.embedding, cfg, layout)?;
    let body = Body {
        cfg,
        layout,
        budget,
        context: inputs.context,
    };
    let levels = cfg.levels();
    let c0 = cfg.block_out_channels[0];
    let mut x = conv2d(
        g,
        &root.child("conv_in"),
        inputs.sample,
        &ConvSpec::same(cfg.in_channels, c0, 3, true),
    )?;
    let mut skips = vec![x];
    let mut cin = c0;
    for level in 0..levels {
        let p = root.child("down_blocks").child(level);
        let cout = cfg.block_out_channels[level];
        for j in 0..cfg.layers_per_block {
            x = body.resnet(g, &p.child("resnets").child(j), x, cin, cout, temb)?;
            cin = cout;
            x = body.attention(g, &p.child("attentions").child(j), x, level, false)?;
            skips.push(x);
        }
        if level + 1 < levels {
            let spec = ConvSpec::same(cout, cout, 3, true).strided(2, [1, 1, 1, 1]);
            x = conv2d(g, &p.child("downsamplers.0.conv"), x, &spec)?;
            skips.push(x);
        }
    }
    let mid = root.child("mid_block");
    let c = cfg.block_out_channels[levels - 1];
    x = body.resnet(g, &mid.child("resnets.0"), x, c, c, temb)?;
    x = body.attention(g, &mid.child("attentions.0"), x, levels - 1, true)?;
    x = body.resnet(g, &mid.child("resnets.1"), x, c, c, temb)?;
    for u in 0..levels {
        let level = levels - 1 - u;
        let p = root.child("up_blocks").child(u);
        let cout = cfg.block_out_channels[level];
        for j in 0..=cfg.layers_per_block {
            let skip = skips
                .pop()
                .ok_or_else(|| bug("more up resnets than skips"))?;
            let rp = p.child("resnets").child(j);
            x = g.add(Op::Concat { axis: 1 }, &[x, skip], rp.node("skip"))?;
            let cin = g.ty(x).shape[1]
                .known()
                .ok_or_else(|| bug("symbolic channels"))?;
            x = body.resnet(g, &rp, x, cin, cout, temb)?;
            x = body.attention(g, &p.child("attentions").child(j), x, level, false)?;
        }
        if level > 0 {
            let next = skips
                .last()
                .ok_or_else(|| bug("no skip for an upsampler"))?;
            let up = p.child("upsamplers.0");
            x = upsample_to(g, &up, x, *next)?;
            x = conv2d(
                g,
                &up.child("conv"),
                x,
                &ConvSpec::same(cout, cout, 3, true),
            )?;
        }
    }
    if !skips.is_empty() {
        return Err(bug("skips left after the up levels"));
    }
    let norm = GroupNorm {
        channels: c0,
        groups: cfg.norm_groups,
        epsilon: cfg.norm_eps,
    };
    let x = norm_silu(g, &root.child("conv_norm_out"), x, &norm)?;
    conv2d(
        g,
        &root.child("conv_out"),
        x,
        &ConvSpec::same(c0, cfg.out_channels, 3, true),
    )
}

/// What every block of the body shares.
struct Body<'c> {
    cfg: &'c UnetConfig,
    layout: TransformerLayout,
    budget: ScoreBudget,
    context: ValueId,
}

impl Body<'_> {
    fn resnet(
        &self,
        g: &mut Graph,
        p: &Scope,
        x: ValueId,
        cin: usize,
        cout: usize,
        temb: crate::models::nn::TimeEmbedding,
    ) -> Result<ValueId, ModelError> {
        let spec = Resnet {
            cin,
            cout,
            groups: self.cfg.norm_groups,
            epsilon: self.cfg.norm_eps,
        };
        resnet(g, p, x, &spec, Some(temb))
    }

    /// The level's transformer after a resnet, or `x` itself on a level without attention.
    fn attention(
        &self,
        g: &mut Graph,
        p: &Scope,
        x: ValueId,
        level: usize,
        mid: bool,
    ) -> Result<ValueId, ModelError> {
        let cfg = self.cfg;
        let depth = match mid {
            true => cfg.mid_transformer_depth,
            false => cfg.transformer_depth[level],
        };
        if depth == 0 {
            return Ok(x);
        }
        let t = Transformer {
            channels: cfg.block_out_channels[level],
            heads: cfg.heads[level],
            depth,
            context: cfg.cross_attention_dim,
            linear_projection: cfg.linear_projection,
            groups: cfg.norm_groups,
            layout: self.layout,
            budget: self.budget,
        };
        transformer(g, p, x, self.context, &t)
    }
}

/// Nearest upsampling of `x` to the spatial size of `skip`: 2x, cut when the skip's side is odd.
fn upsample_to(g: &mut Graph, p: &Scope, x: ValueId, skip: ValueId) -> Result<ValueId, ModelError> {
    let mut y = g.add(Op::Upsample { scale: 2 }, &[x], p.node("upsample"))?;
    for axis in [2, 3] {
        let (have, want) = (g.ty(y).shape[axis].clone(), g.ty(skip).shape[axis].clone());
        if have == want {
            continue;
        }
        let (Some(have), Some(want)) = (have.known(), want.known()) else {
            return Err(ModelError::Size {
                reason: format!(
                    "{}: upsampled side {have} does not meet the skip's {want}; sizes that \
                     vary between enumerated shapes must be multiples of the UNet's total \
                     downsampling",
                    p.node("upsample")
                ),
            });
        };
        if want > have {
            return Err(bug("a skip larger than twice the map below it"));
        }
        let op = Op::Slice {
            axis,
            begin: 0,
            end: want,
        };
        let what = if axis == 2 { "rows" } else { "columns" };
        y = g.add(op, &[y], p.node(what))?;
    }
    Ok(y)
}

fn bug(what: &str) -> ModelError {
    ModelError::Interface {
        reason: format!("UNet structure: {what}"),
    }
}
