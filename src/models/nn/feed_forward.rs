//! Feed-forward pieces of transformer blocks: diffusers' GEGLU feed-forward (SD UNets) and the
//! quick GELU of OpenAI's CLIP.

use super::linear::{linear, Linear};
use super::norm::NormAxis;
use super::Scope;
use crate::ir::{Binary, Graph, Op, Unary, ValueId};
use crate::models::{ModelError, TransformerLayout};
use crate::tensor::Tensor;

/// diffusers' `FeedForward` with a GEGLU: `dim` → `inner` (gated) → `dim`.
pub struct FeedForward {
    pub dim: usize,
    pub inner: usize,
    pub layout: TransformerLayout,
}

/// `net.2(value · gelu(gate))` where `value | gate = net.0.proj(x)`, split in halves on the
/// hidden axis (value first, as diffusers' `chunk(2, dim=-1)`).
pub fn feed_forward(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    spec: &FeedForward,
) -> Result<ValueId, ModelError> {
    let proj = p.child("net.0").child("proj");
    let both = Linear::new(spec.dim, 2 * spec.inner);
    let y = linear(g, &proj, x, &both, spec.layout)?;
    let axis = match NormAxis::of(spec.layout) {
        NormAxis::Channels => 1,
        NormAxis::Last => g.ty(y).rank() - 1,
    };
    let half = |g: &mut Graph, index, what: &str| {
        let op = Op::Split {
            axis,
            parts: 2,
            index,
        };
        g.add(op, &[y], proj.node(what))
    };
    let value = half(g, 0, "value")?;
    let gate = half(g, 1, "gate")?;
    let gate = g.add(Op::Unary(Unary::Gelu), &[gate], proj.node("gelu"))?;
    let y = g.add(Op::Binary(Binary::Mul), &[value, gate], proj.node("geglu"))?;
    let down = Linear::new(spec.inner, spec.dim);
    linear(g, &p.child("net.2"), y, &down, spec.layout)
}

/// `x · sigmoid(1.702 x)`, nodes `{scope}_quick_gelu…`.
pub fn quick_gelu(g: &mut Graph, p: &Scope, x: ValueId) -> Result<ValueId, ModelError> {
    let k = g.constant(p.node("quick_gelu_k"), Tensor::scalar(1.702f32));
    let z = g.add(
        Op::Binary(Binary::Mul),
        &[x, k],
        p.node("quick_gelu_scaled"),
    )?;
    let z = g.add(Op::Unary(Unary::Sigmoid), &[z], p.node("quick_gelu_gate"))?;
    Ok(g.add(Op::Binary(Binary::Mul), &[x, z], p.node("quick_gelu"))?)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        assert_close, from_layout, input, random_weights, run, states_shape, to_layout, Lcg,
    };
    use super::super::Params;
    use super::*;
    use crate::kernels::Array;

    fn gelu(x: f64) -> f64 {
        // erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7), independent of the kernel's.
        let z = x / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.3275911 * z.abs());
        let poly = t
            * (0.254829592
                + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
        let erf = (1.0 - poly * (-z * z).exp()).copysign(z);
        0.5 * x * (1.0 + erf)
    }

    #[test]
    fn geglu_feed_forward_gates_the_first_half_by_the_second() {
        let (b, s, dim, inner) = (2, 3, 4, 6);
        let w = random_weights(
            4,
            &[
                ("ff.net.0.proj.weight", &[2 * inner, dim]),
                ("ff.net.0.proj.bias", &[2 * inner]),
                ("ff.net.2.weight", &[dim, inner]),
                ("ff.net.2.bias", &[dim]),
            ],
        );
        let t = |k: &str| w.tensors[k].to_f32();
        let (w1, b1) = (t("ff.net.0.proj.weight"), t("ff.net.0.proj.bias"));
        let (w2, b2) = (t("ff.net.2.weight"), t("ff.net.2.bias"));
        let x = Array::new(vec![b, s, dim], Lcg(5).vec(b * s * dim));
        let mut want = Vec::new();
        for row in x.data.chunks(dim) {
            let proj = |o: usize| {
                b1[o] as f64
                    + (0..dim)
                        .map(|i| (row[i] * w1[o * dim + i]) as f64)
                        .sum::<f64>()
            };
            let hidden: Vec<f64> = (0..inner)
                .map(|j| proj(j) * gelu(proj(inner + j)))
                .collect();
            for o in 0..dim {
                let y: f64 = (0..inner)
                    .map(|j| hidden[j] * w2[o * inner + j] as f64)
                    .sum();
                want.push((y + b2[o] as f64) as f32);
            }
        }
        for layout in [TransformerLayout::Standard, TransformerLayout::Ane] {
            let params = Params::new(&w);
            let mut g = Graph::new("t");
            let xi = input(&mut g, "x", &states_shape(layout, b, s, dim));
            let spec = FeedForward { dim, inner, layout };
            let y = feed_forward(&mut g, &params.scope("ff"), xi, &spec).unwrap();
            g.set_output("y", y);
            let y = from_layout(layout, &run(&g, &[("x", to_layout(layout, &x))])["y"]);
            assert_close(&y.data, &want, 1e-5, &format!("{layout:?}"));
            params.finish().unwrap();
        }
    }
}
