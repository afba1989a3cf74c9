//! What CLIP's text and image encoders share: the pre-norm transformer encoder layer in the
//! standard layout ([1, T, D] activations, linear layers as matmuls, heads as attention's batch),
//! and the layer norm and linear layers around it.

use super::keys::Activation;
use crate::ir::{Binary, Dim, Graph, Op, Unary, ValueId};
use crate::models::nn::Scope;
use crate::models::{Feature, ModelError, Role};
use crate::tensor::Tensor;

/// The sizes one encoder layer is built at.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoder {
    /// Sequence length T (77 tokens; 1 + patches for images).
    pub tokens: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub epsilon: f32,
    pub activation: Activation,
}

pub fn feature(name: &str, role: Role, shape: Vec<Dim>, description: String) -> Feature {
    Feature {
        name: name.into(),
        role,
        shape,
        description,
        range: None,
        normalization: None,
    }
}

pub fn layer_norm(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    d: usize,
    epsilon: f32,
) -> Result<ValueId, ModelError> {
    let gamma = p.constant(g, "weight", &[d])?;
    let beta = p.constant(g, "bias", &[d])?;
    Ok(g.add(Op::LayerNorm { epsilon }, &[x, gamma, beta], p.node("ln"))?)
}

/// `x · weightᵀ + bias` over the last axis.
pub fn linear(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    cin: usize,
    cout: usize,
) -> Result<ValueId, ModelError> {
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

pub fn reshape(
    g: &mut Graph,
    x: ValueId,
    shape: &[usize],
    name: String,
) -> Result<ValueId, ModelError> {
    Ok(g.add(
        Op::Reshape {
            shape: shape.iter().map(|&n| Dim::Known(n)).collect(),
        },
        &[x],
        name,
    )?)
}

pub fn transpose(
    g: &mut Graph,
    x: ValueId,
    perm: &[usize],
    name: String,
) -> Result<ValueId, ModelError> {
    Ok(g.add(
        Op::Transpose {
            perm: perm.to_vec(),
        },
        &[x],
        name,
    )?)
}

/// One pre-norm encoder layer; `mask` is added to the attention scores (the text model's causal
/// mask; the image model attends everywhere).
pub fn layer(
    g: &mut Graph,
    p: &Scope,
    e: &Encoder,
    x: ValueId,
    mask: Option<ValueId>,
) -> Result<ValueId, ModelError> {
    let (s, d, h) = (e.tokens, e.hidden, e.heads);
    let dh = d / h;
    let n = |what: &str| p.node(what);
    let a = p.child("self_attn");
    let x1 = layer_norm(g, &p.child("layer_norm1"), x, d, e.epsilon)?;
    // [1, S, D] → [S, H, Dh] → [H, S, Dh]: the heads are attention's batch.
    let mut qkv = Vec::with_capacity(4);
    for proj in ["q_proj", "k_proj", "v_proj"] {
        let y = linear(g, &a.child(proj), x1, d, d)?;
        let y = reshape(g, y, &[s, h, dh], a.child(proj).node("heads"))?;
        qkv.push(transpose(g, y, &[1, 0, 2], a.child(proj).node("by_head"))?);
    }
    qkv.extend(mask);
    let att = g.add(
        Op::Attention {
            scale: 1.0 / (dh as f32).sqrt(),
        },
        &qkv,
        a.node("attention"),
    )?;
    let att = transpose(g, att, &[1, 0, 2], a.node("by_position"))?;
    let att = reshape(g, att, &[1, s, d], a.node("merged"))?;
    let att = linear(g, &a.child("out_proj"), att, d, d)?;
    let x = g.add(Op::Binary(Binary::Add), &[x, att], n("attn_residual"))?;
    let x2 = layer_norm(g, &p.child("layer_norm2"), x, d, e.epsilon)?;
    let mlp = p.child("mlp");
    let y = linear(g, &mlp.child("fc1"), x2, d, e.intermediate)?;
    let y = match e.activation {
        Activation::Gelu => g.add(Op::Unary(Unary::Gelu), &[y], mlp.node("gelu"))?,
        Activation::QuickGelu => {
            let k = g.constant(mlp.node("quick_gelu_k"), Tensor::scalar(1.702f32));
            let z = g.add(
                Op::Binary(Binary::Mul),
                &[y, k],
                mlp.node("quick_gelu_scaled"),
            )?;
            let z = g.add(Op::Unary(Unary::Sigmoid), &[z], mlp.node("quick_gelu_gate"))?;
            g.add(Op::Binary(Binary::Mul), &[y, z], mlp.node("quick_gelu"))?
        }
    };
    let y = linear(g, &mlp.child("fc2"), y, e.intermediate, d)?;
    Ok(g.add(Op::Binary(Binary::Add), &[x, y], n("mlp_residual"))?)
}
