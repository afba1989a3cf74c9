//! Normalisations with an affine `weight`/`bias` of their scope: group norm over the channels of
//! a `[B, C, H, W]` map, and layer norm over one axis, the last (`[B, S, D]` states) or the
//! channels (the Neural Engine's `[B, D, 1, S]`).

use super::Scope;
use crate::ir::{Graph, Op, ValueId};
use crate::models::{ModelError, TransformerLayout};

/// Group normalisation over `channels` in `groups` groups.
pub struct GroupNorm {
    pub channels: usize,
    pub groups: usize,
    pub epsilon: f32,
}

/// Group normalisation; its node is `{scope}_gn`.
pub fn group_norm(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    spec: &GroupNorm,
) -> Result<ValueId, ModelError> {
    let gamma = p.constant(g, "weight", &[spec.channels])?;
    let beta = p.constant(g, "bias", &[spec.channels])?;
    let op = Op::GroupNorm {
        groups: spec.groups,
        epsilon: spec.epsilon,
    };
    Ok(g.add(op, &[x, gamma, beta], p.node("gn"))?)
}

/// The axis a layer norm normalises.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormAxis {
    /// The last axis, whatever the rank: `[B, S, D]` states, a pooled `[B, D]`.
    Last,
    /// Axis 1: `[B, D, 1, S]` states, a pooled `[B, D, 1, 1]`.
    Channels,
}

impl NormAxis {
    /// Where the hidden axis of `layout`'s states is.
    pub fn of(layout: TransformerLayout) -> NormAxis {
        match layout {
            TransformerLayout::Standard => NormAxis::Last,
            TransformerLayout::Ane => NormAxis::Channels,
        }
    }
}

/// Layer normalisation over `channels` on `axis`.
pub struct LayerNorm {
    pub channels: usize,
    pub axis: NormAxis,
    pub epsilon: f32,
}

/// Layer normalisation; its node is `{scope}_ln`.
pub fn layer_norm(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    spec: &LayerNorm,
) -> Result<ValueId, ModelError> {
    let gamma = p.constant(g, "weight", &[spec.channels])?;
    let beta = p.constant(g, "bias", &[spec.channels])?;
    let axis = match spec.axis {
        NormAxis::Channels => 1,
        NormAxis::Last => g.ty(x).rank().saturating_sub(1),
    };
    let op = Op::LayerNorm {
        axis,
        epsilon: spec.epsilon,
    };
    Ok(g.add(op, &[x, gamma, beta], p.node("ln"))?)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        assert_close, from_layout, input, random_weights, run, states_shape, to_layout, Lcg,
    };
    use super::super::Params;
    use super::*;
    use crate::kernels::Array;

    /// The norm over either axis is transformers' `LayerNorm` over the hidden size, and the
    /// Neural Engine's states give the same numbers rearranged.
    #[test]
    fn layer_norm_over_either_axis_matches_the_reference() {
        let (s, d, eps) = (5, 6, 1e-5);
        let w = random_weights(1, &[("ln.weight", &[d]), ("ln.bias", &[d])]);
        let params = Params::new(&w);
        let x = Array::new(vec![1, s, d], Lcg(7).vec(s * d));
        let (gamma, beta) = (
            w.tensors["ln.weight"].to_f32(),
            w.tensors["ln.bias"].to_f32(),
        );
        let mut want = Vec::new();
        for row in x.data.chunks(d) {
            let mean = row.iter().sum::<f32>() / d as f32;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / d as f32;
            let r = 1.0 / (var + eps).sqrt();
            want.extend(
                row.iter()
                    .enumerate()
                    .map(|(i, v)| (v - mean) * r * gamma[i] + beta[i]),
            );
        }
        for layout in [TransformerLayout::Standard, TransformerLayout::Ane] {
            let mut g = Graph::new("t");
            let shape = states_shape(layout, 1, s, d);
            let xi = input(&mut g, "x", &shape);
            let spec = LayerNorm {
                channels: d,
                axis: NormAxis::of(layout),
                epsilon: eps,
            };
            let y = layer_norm(&mut g, &params.scope("ln"), xi, &spec).unwrap();
            g.set_output("y", y);
            let x = to_layout(layout, &x);
            let y = from_layout(layout, &run(&g, &[("x", x)])["y"]);
            assert_close(&y.data, &want, 1e-5, &format!("{layout:?}"));
        }
    }
}
