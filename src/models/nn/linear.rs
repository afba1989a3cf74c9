//! Linear layers `x · weightᵀ + bias` over a `[cout, cin]` weight, in either transformer layout:
//! a matmul on the last axis of `[B, S, D]` states, or a 1x1 convolution on the channels of
//! `[B, D, 1, S]` states (or of any `[B, C, H, W]` map), which the Neural Engine prefers.

use super::Scope;
use crate::ir::{Binary, Conv2d, Graph, Op, ValueId};
use crate::models::{ModelError, TransformerLayout};

/// A linear layer from `cin` to `cout` features: `weight` [cout, cin] and, when `bias`, `bias`
/// [cout].
pub struct Linear {
    pub cin: usize,
    pub cout: usize,
    pub bias: bool,
}

impl Linear {
    /// With a bias.
    pub fn new(cin: usize, cout: usize) -> Linear {
        Linear {
            cin,
            cout,
            bias: true,
        }
    }

    /// Without a bias (diffusers' `to_q`, `to_k`, `to_v`).
    pub fn unbiased(cin: usize, cout: usize) -> Linear {
        Linear {
            bias: false,
            ..Linear::new(cin, cout)
        }
    }
}

/// The layer on the hidden axis of `layout`'s states. Standard: `{scope}_matmul` then the bias
/// added as `{scope}_linear` (the matmul is `{scope}_linear` when there is no bias); `ane`: the
/// convolution `{scope}_linear`.
pub fn linear(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    spec: &Linear,
    layout: TransformerLayout,
) -> Result<ValueId, ModelError> {
    if layout == TransformerLayout::Ane {
        return linear_as_conv(g, p, x, spec, "linear");
    }
    let w = p.constant(g, "weight", &[spec.cout, spec.cin])?;
    let b = match spec.bias {
        true => Some(p.constant(g, "bias", &[spec.cout])?),
        false => None,
    };
    let matmul = Op::MatMul {
        transpose_x: false,
        transpose_y: true,
    };
    let Some(b) = b else {
        return Ok(g.add(matmul, &[x, w], p.node("linear"))?);
    };
    let y = g.add(matmul, &[x, w], p.node("matmul"))?;
    Ok(g.add(Op::Binary(Binary::Add), &[y, b], p.node("linear"))?)
}

/// The layer applied on axis 1 of a rank-4 `x` as a 1x1 convolution named `{scope}_{what}`
/// (its `[cout, cin]` weight viewed as `[cout, cin, 1, 1]`).
pub fn linear_as_conv(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    spec: &Linear,
    what: &str,
) -> Result<ValueId, ModelError> {
    let (cout, cin) = (spec.cout, spec.cin);
    let w = p.constant_as(
        g,
        "weight",
        &[cout, cin],
        &[cout, cin, 1, 1],
        &p.node("weight"),
    )?;
    let mut args = vec![x, w];
    if spec.bias {
        args.push(p.constant(g, "bias", &[cout])?);
    }
    Ok(g.add(Op::Conv2d(Conv2d::same(1)), &args, p.node(what))?)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        assert_close, from_layout, input, random_weights, run, states_shape, to_layout, Lcg,
    };
    use super::super::Params;
    use super::*;
    use crate::kernels::Array;

    #[test]
    fn both_layouts_compute_x_times_weight_transposed_plus_bias() {
        let (b, s, cin, cout) = (2, 3, 4, 5);
        let w = random_weights(
            2,
            &[
                ("fc.weight", &[cout, cin]),
                ("fc.bias", &[cout]),
                ("nb.weight", &[cout, cin]),
            ],
        );
        let (wt, bias) = (
            w.tensors["fc.weight"].to_f32(),
            w.tensors["fc.bias"].to_f32(),
        );
        let x = Array::new(vec![b, s, cin], Lcg(3).vec(b * s * cin));
        let reference = |with_bias: bool| -> Vec<f32> {
            let wt = if with_bias {
                &wt
            } else {
                &w.tensors["nb.weight"].to_f32()
            };
            let mut y = Vec::new();
            for row in x.data.chunks(cin) {
                for o in 0..cout {
                    let dot: f32 = (0..cin).map(|i| row[i] * wt[o * cin + i]).sum();
                    y.push(dot + if with_bias { bias[o] } else { 0.0 });
                }
            }
            y
        };
        for layout in [TransformerLayout::Standard, TransformerLayout::Ane] {
            for (key, spec) in [
                ("fc", Linear::new(cin, cout)),
                ("nb", Linear::unbiased(cin, cout)),
            ] {
                let params = Params::new(&w);
                let mut g = Graph::new("t");
                let xi = input(&mut g, "x", &states_shape(layout, b, s, cin));
                let y = linear(&mut g, &params.scope(key), xi, &spec, layout).unwrap();
                g.set_output("y", y);
                let y = from_layout(layout, &run(&g, &[("x", to_layout(layout, &x))])["y"]);
                assert_eq!(y.shape, vec![b, s, cout]);
                assert_close(
                    &y.data,
                    &reference(spec.bias),
                    1e-5,
                    &format!("{layout:?} {key}"),
                );
            }
        }
    }
}
