//! Multi-head attention, self or cross, with an optional additive mask, in either transformer
//! layout; and the VAE's single-head attention over the positions of a feature map.
//!
//! ```text
//! attention_layer(x, context) = out(attention(q(x), k(context), v(context)))   context = x: self
//! attention(q, k, v) = softmax(q·kᵀ / sqrt(D/H) + mask) · v                    per head
//! ```
//! Standard states `[B, S, D]`: the heads become attention's batch (`[B·H, S, D/H]`) and the
//! scores are one `attention` op, which `passes/lower_attention.rs` cuts into query chunks
//! within a byte budget when it lowers it. `ane` states `[B, D, 1, S]`: the heads are split
//! apart ([`super::ane::attention`]), and query chunks are cut here ([`ScoreBudget`]).

use super::ane::{self, ScoreBudget};
use super::linear::{linear, linear_as_conv, Linear};
use super::norm::{group_norm, GroupNorm};
use super::{binary, reshape_to, transpose, Scope};
use crate::ir::{Binary, Dim, Graph, Op, ValueId};
use crate::models::{ModelError, TransformerLayout};

/// The keys of an attention layer's four projections in its scope.
#[derive(Clone, Copy, Debug)]
pub struct Projections {
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub out: &'static str,
}

impl Projections {
    /// transformers' CLIP attention.
    pub const CLIP: Projections = Projections {
        q: "q_proj",
        k: "k_proj",
        v: "v_proj",
        out: "out_proj",
    };
    /// diffusers' `Attention`.
    pub const DIFFUSERS: Projections = Projections {
        q: "to_q",
        k: "to_k",
        v: "to_v",
        out: "to_out.0",
    };
}

/// An attention layer's sizes and form.
#[derive(Clone, Debug)]
pub struct AttentionSpec {
    pub heads: usize,
    /// Width of the states the queries come from, and of the output.
    pub query_width: usize,
    /// Width of the states keys and values come from: `query_width` for self-attention, the
    /// text encoder's for a UNet's cross-attention.
    pub context_width: usize,
    /// Width of the projected queries, keys and values (heads × head size).
    pub inner: usize,
    /// Whether the q, k and v projections have a bias (CLIP's do, diffusers' do not).
    pub qkv_bias: bool,
    pub names: Projections,
    pub layout: TransformerLayout,
    /// `ane` only: cut the queries so that no per-head score tensor exceeds this.
    pub budget: Option<ScoreBudget>,
    /// Compute the attention in fp32 even in an fp16 build (a precision region around it):
    /// SD 2.1's `upcast_attention`.
    pub upcast: bool,
}

impl AttentionSpec {
    /// Self-attention of `width`-wide states in `heads` heads, projections with biases.
    pub fn new(
        width: usize,
        heads: usize,
        names: Projections,
        layout: TransformerLayout,
    ) -> AttentionSpec {
        AttentionSpec {
            heads,
            query_width: width,
            context_width: width,
            inner: width,
            qkv_bias: true,
            names,
            layout,
            budget: None,
            upcast: false,
        }
    }

    /// Keys and values from `context_width`-wide states.
    pub fn cross(self, context_width: usize) -> AttentionSpec {
        AttentionSpec {
            context_width,
            ..self
        }
    }

    /// q, k and v projections without a bias.
    pub fn unbiased(self) -> AttentionSpec {
        AttentionSpec {
            qkv_bias: false,
            ..self
        }
    }

    /// `ane` scores cut within `budget`.
    pub fn chunked(self, budget: ScoreBudget) -> AttentionSpec {
        AttentionSpec {
            budget: Some(budget),
            ..self
        }
    }

    /// Attention in fp32 even in an fp16 build.
    pub fn upcast(self, upcast: bool) -> AttentionSpec {
        AttentionSpec { upcast, ..self }
    }

    /// Size of one head.
    pub fn head_size(&self) -> usize {
        self.inner / self.heads.max(1)
    }
}

/// The layer: projections of `x` (queries) and of `context` (keys and values; `x` itself when
/// None), attention, and the output projection, all in `spec.layout`'s states.
pub fn attention_layer(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    context: Option<ValueId>,
    mask: Option<ValueId>,
    spec: &AttentionSpec,
) -> Result<ValueId, ModelError> {
    let (n, layout) = (spec.names, spec.layout);
    let kv = context.unwrap_or(x);
    let project = |cin| Linear {
        cin,
        cout: spec.inner,
        bias: spec.qkv_bias,
    };
    let q = linear(g, &p.child(n.q), x, &project(spec.query_width), layout)?;
    let k = linear(g, &p.child(n.k), kv, &project(spec.context_width), layout)?;
    let v = linear(g, &p.child(n.v), kv, &project(spec.context_width), layout)?;
    let att = attention(g, p, [q, k, v], mask, spec)?;
    let out = Linear::new(spec.inner, spec.query_width);
    linear(g, &p.child(n.out), att, &out, layout)
}

/// Attention of projected `q`, `k`, `v` (`inner` wide), back in the states' layout. `mask` is
/// added to the scores, laid out as they are: `[L, S]` (queries, keys) standard, `[1, 1, S, L]`
/// (keys, queries) `ane`.
pub fn attention(
    g: &mut Graph,
    a: &Scope,
    qkv: [ValueId; 3],
    mask: Option<ValueId>,
    spec: &AttentionSpec,
) -> Result<ValueId, ModelError> {
    let fence =
        |g: &mut Graph, x, fp32, what: &str| g.add(Op::Precision { fp32 }, &[x], a.node(what));
    let qkv = match spec.upcast {
        false => qkv,
        true => [
            fence(g, qkv[0], true, "q_fp32")?,
            fence(g, qkv[1], true, "k_fp32")?,
            fence(g, qkv[2], true, "v_fp32")?,
        ],
    };
    let out = match spec.layout {
        TransformerLayout::Standard => standard(g, a, qkv, mask, spec)?,
        TransformerLayout::Ane => ane::attention(g, a, qkv, mask, spec)?,
    };
    match spec.upcast {
        false => Ok(out),
        true => Ok(fence(g, out, false, "upcast_end")?),
    }
}

/// `[B, S, D]` → `[B·H, S, D/H]`, one `attention` op, and back. A batch of one is dropped
/// rather than folded (`[S, H, D/H]` → `[H, S, D/H]`).
fn standard(
    g: &mut Graph,
    a: &Scope,
    [q, k, v]: [ValueId; 3],
    mask: Option<ValueId>,
    spec: &AttentionSpec,
) -> Result<ValueId, ModelError> {
    let (h, dh) = (spec.heads, spec.head_size());
    let (hd, dhd) = (Dim::Known(h), Dim::Known(dh));
    let batch = g.ty(q).shape[0].clone();
    let single = batch == Dim::Known(1);
    let mut heads = Vec::with_capacity(4);
    for (x, proj) in [(q, spec.names.q), (k, spec.names.k), (v, spec.names.v)] {
        let p = a.child(proj);
        let s = g.ty(x).shape[1].clone();
        if single {
            let y = reshape_to(g, x, vec![s, hd.clone(), dhd.clone()], p.node("heads"))?;
            heads.push(transpose(g, y, &[1, 0, 2], p.node("by_head"))?);
        } else {
            let shape = vec![batch.clone(), s.clone(), hd.clone(), dhd.clone()];
            let y = reshape_to(g, x, shape, p.node("heads"))?;
            let y = transpose(g, y, &[0, 2, 1, 3], p.node("by_head"))?;
            let shape = vec![batch.scaled(h), s, dhd.clone()];
            heads.push(reshape_to(g, y, shape, p.node("batched"))?);
        }
    }
    heads.extend(mask);
    let scale = 1.0 / (dh as f32).sqrt();
    let att = g.add(Op::Attention { scale }, &heads, a.node("attention"))?;
    let l = g.ty(q).shape[1].clone();
    let merged = vec![batch.clone(), l.clone(), Dim::Known(spec.inner)];
    if single {
        let att = transpose(g, att, &[1, 0, 2], a.node("by_position"))?;
        return reshape_to(g, att, merged, a.node("merged"));
    }
    let att = reshape_to(g, att, vec![batch, hd, l, dhd], a.node("unbatched"))?;
    let att = transpose(g, att, &[0, 2, 1, 3], a.node("by_position"))?;
    reshape_to(g, att, merged, a.node("merged"))
}

/// The VAE's attention block over a `[B, C, H, W]` map.
pub struct SpatialAttention {
    pub channels: usize,
    pub groups: usize,
    pub epsilon: f32,
}

/// `x + to_out(attention(to_q(n), to_k(n), to_v(n)))` with `n = group_norm(x)`: one head over
/// all `H·W` positions, the projections as 1x1 convs on the map (the channels-first form the
/// Neural Engine prefers), the positions flattened only around the attention itself.
pub fn spatial_attention(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    spec: &SpatialAttention,
) -> Result<ValueId, ModelError> {
    let ch = spec.channels;
    let norm = GroupNorm {
        channels: ch,
        groups: spec.groups,
        epsilon: spec.epsilon,
    };
    let h = group_norm(g, &p.child("group_norm"), x, &norm)?;
    let shape = g.ty(h).shape.clone();
    let positions = shape[2].times(&shape[3]);
    let proj = Linear::new(ch, ch);
    let seq = |g: &mut Graph, name: &str| -> Result<ValueId, ModelError> {
        let l = p.child(name);
        let y = linear_as_conv(g, &l, h, &proj, "conv")?;
        let flat = vec![shape[0].clone(), Dim::Known(ch), positions.clone()];
        let y = reshape_to(g, y, flat, l.node("flat"))?;
        transpose(g, y, &[0, 2, 1], l.node("seq"))
    };
    let q = seq(g, "to_q")?;
    let k = seq(g, "to_k")?;
    let v = seq(g, "to_v")?;
    let scale = 1.0 / (ch as f32).sqrt();
    let o = g.add(Op::Attention { scale }, &[q, k, v], p.node("attention"))?;
    let o = transpose(g, o, &[0, 2, 1], p.node("channels"))?;
    let o = g.add(Op::ReshapeLike, &[o, x], p.node("spatial"))?;
    let o = linear_as_conv(g, &p.child("to_out").child(0), o, &proj, "conv")?;
    binary(g, p, Binary::Add, x, o, "residual")
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        assert_close, from_layout, input, random_weights, run, states_shape, to_layout, Lcg,
    };
    use super::super::Params;
    use super::*;
    use crate::kernels::Array;
    use crate::weights::Weights;

    /// Queries 6 wide, keys and values from a 10-wide context, 2 heads of 4 (diffusers'
    /// unbiased q, k, v).
    const QW: usize = 6;
    const CW: usize = 10;
    const INNER: usize = 8;
    const HEADS: usize = 2;
    const L: usize = 5;
    const S: usize = 4;

    fn weights() -> Weights {
        random_weights(
            11,
            &[
                ("a.to_q.weight", &[INNER, QW]),
                ("a.to_k.weight", &[INNER, CW]),
                ("a.to_v.weight", &[INNER, CW]),
                ("a.to_out.0.weight", &[QW, INNER]),
                ("a.to_out.0.bias", &[QW]),
            ],
        )
    }

    /// `[L, S]`: a few keys hidden from a few queries, never all of a row.
    fn mask() -> Vec<f32> {
        (0..L * S)
            .map(|e| {
                if (e / S + 2 * (e % S)) % 5 == 0 {
                    -1e4
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// diffusers' `Attention` by hand, in f64: `[B, L, QW]` out of `x` [B, L, QW] and
    /// `context` [B, S, CW].
    fn reference(w: &Weights, x: &Array, context: &Array, mask: &[f32]) -> Vec<f32> {
        let t = |k: &str| w.tensors[&format!("a.{k}")].to_f32();
        let (wq, wk, wv, wo, bo) = (
            t("to_q.weight"),
            t("to_k.weight"),
            t("to_v.weight"),
            t("to_out.0.weight"),
            t("to_out.0.bias"),
        );
        let project = |rows: &[f32], cin: usize, w: &[f32], cout: usize| -> Vec<f64> {
            rows.chunks(cin)
                .flat_map(|r| {
                    (0..cout).map(move |o| (0..cin).map(|i| (r[i] * w[o * cin + i]) as f64).sum())
                })
                .collect()
        };
        let b = x.shape[0];
        let dh = INNER / HEADS;
        let mut out = Vec::new();
        for bi in 0..b {
            let xr = &x.data[bi * L * QW..(bi + 1) * L * QW];
            let cr = &context.data[bi * S * CW..(bi + 1) * S * CW];
            let (q, k, v) = (
                project(xr, QW, &wq, INNER),
                project(cr, CW, &wk, INNER),
                project(cr, CW, &wv, INNER),
            );
            let mut merged = vec![0.0; L * INNER];
            for h in 0..HEADS {
                for l in 0..L {
                    let scores: Vec<f64> = (0..S)
                        .map(|s| {
                            let dot: f64 = (0..dh)
                                .map(|d| q[l * INNER + h * dh + d] * k[s * INNER + h * dh + d])
                                .sum();
                            dot / (dh as f64).sqrt() + mask[l * S + s] as f64
                        })
                        .collect();
                    let top = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for d in 0..dh {
                        merged[l * INNER + h * dh + d] =
                            (0..S).map(|s| e[s] / sum * v[s * INNER + h * dh + d]).sum();
                    }
                }
            }
            for l in 0..L {
                for o in 0..QW {
                    let y: f64 = (0..INNER)
                        .map(|i| merged[l * INNER + i] * wo[o * INNER + i] as f64)
                        .sum();
                    out.push((y + bo[o] as f64) as f32);
                }
            }
        }
        out
    }

    /// The layer's graph on `[B, L, QW]` states and a `[B, S, CW]` context, with the mask as an
    /// input laid out like the layout's scores.
    fn layer_graph(w: &Weights, b: usize, spec: &AttentionSpec) -> Graph {
        let params = Params::new(w);
        let mut g = Graph::new("t");
        let layout = spec.layout;
        let x = input(&mut g, "x", &states_shape(layout, b, L, QW));
        let c = input(&mut g, "context", &states_shape(layout, b, S, CW));
        let mask_shape = match layout {
            TransformerLayout::Standard => vec![L, S],
            TransformerLayout::Ane => vec![1, 1, S, L],
        };
        let m = input(&mut g, "mask", &mask_shape);
        let y = attention_layer(&mut g, &params.scope("a"), x, Some(c), Some(m), spec).unwrap();
        g.set_output("y", y);
        params.finish().unwrap();
        g
    }

    fn run_layer(g: &Graph, layout: TransformerLayout, x: &Array, c: &Array) -> Array {
        let m = mask();
        let m = match layout {
            TransformerLayout::Standard => Array::new(vec![L, S], m),
            // Keys by queries: the transpose of [L, S].
            TransformerLayout::Ane => Array::new(
                vec![1, 1, S, L],
                (0..S * L).map(|e| m[(e % L) * S + e / L]).collect(),
            ),
        };
        let inputs = [
            ("x", to_layout(layout, x)),
            ("context", to_layout(layout, c)),
            ("mask", m),
        ];
        from_layout(layout, &run(g, &inputs)["y"])
    }

    fn spec(layout: TransformerLayout) -> AttentionSpec {
        AttentionSpec {
            inner: INNER,
            ..AttentionSpec::new(QW, HEADS, Projections::DIFFUSERS, layout)
                .cross(CW)
                .unbiased()
        }
    }

    #[test]
    fn masked_cross_attention_of_another_width_matches_the_reference() {
        let w = weights();
        for b in [1, 2] {
            let x = Array::new(vec![b, L, QW], Lcg(12).vec(b * L * QW));
            let c = Array::new(vec![b, S, CW], Lcg(13).vec(b * S * CW));
            let want = reference(&w, &x, &c, &mask());
            for layout in [TransformerLayout::Standard, TransformerLayout::Ane] {
                let g = layer_graph(&w, b, &spec(layout));
                let y = run_layer(&g, layout, &x, &c);
                assert_eq!(y.shape, vec![b, L, QW]);
                assert_close(&y.data, &want, 1e-5, &format!("batch {b}, {layout:?}"));
            }
        }
    }

    /// Query chunks cut the `ane` scores within the budget and change no number.
    #[test]
    fn chunked_ane_attention_equals_the_whole() {
        let w = weights();
        let b = 2;
        let x = Array::new(vec![b, L, QW], Lcg(14).vec(b * L * QW));
        let c = Array::new(vec![b, S, CW], Lcg(15).vec(b * S * CW));
        // A query's f32 scores are 2·4·4 = 32 bytes: 2 fit in 70, so 3 chunks (1, 2, 2 queries).
        let budget = ScoreBudget {
            max_bytes: 70,
            element_bytes: 4,
        };
        let known = |n| Dim::Known(n);
        assert_eq!(budget.chunks(&known(b), &known(S), &known(L)), 3);
        assert_eq!(budget.chunks(&known(b), &known(S), &Dim::sym("Q")), 1);
        let layout = TransformerLayout::Ane;
        let whole = layer_graph(&w, b, &spec(layout));
        let chunked = layer_graph(&w, b, &spec(layout).chunked(budget));
        let slices = |g: &Graph| {
            g.nodes()
                .filter(|(_, n)| matches!(n.op, Op::Slice { .. }))
                .count()
        };
        // Queries and mask, per chunk and head.
        assert_eq!((slices(&whole), slices(&chunked)), (0, 2 * 3 * HEADS));
        let big = chunked
            .nodes()
            .filter(|(_, n)| n.name.ends_with("_scores"))
            .map(|(id, _)| {
                chunked
                    .ty(id)
                    .known_shape()
                    .unwrap()
                    .iter()
                    .product::<usize>()
                    * 4
            })
            .max();
        assert_eq!(big, Some(2 * S * 2 * 4), "largest chunk's scores in bytes");
        let y0 = run_layer(&whole, layout, &x, &c);
        let y1 = run_layer(&chunked, layout, &x, &c);
        assert_close(&y1.data, &y0.data, 1e-6, "chunked");
        assert_close(&y1.data, &reference(&w, &x, &c, &mask()), 1e-5, "reference");
    }
}
