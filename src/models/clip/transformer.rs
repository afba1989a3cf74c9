//! What CLIP's text and image encoders share: the pre-norm transformer encoder layer, written
//! once against the pieces of a [`Layout`] (`standard` or `ane`).

use super::keys::Activation;
use super::layout::Layout;
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

/// One pre-norm encoder layer; `mask` is added to the attention scores (the text model's causal
/// mask; the image model attends everywhere).
pub fn layer(
    g: &mut Graph,
    lay: &Layout,
    p: &Scope,
    x: ValueId,
    mask: Option<ValueId>,
) -> Result<ValueId, ModelError> {
    let e = lay.enc;
    let d = e.hidden;
    let a = p.child("self_attn");
    let x1 = lay.layer_norm(g, &p.child("layer_norm1"), x)?;
    let q = lay.linear(g, &a.child("q_proj"), x1, d, d)?;
    let k = lay.linear(g, &a.child("k_proj"), x1, d, d)?;
    let v = lay.linear(g, &a.child("v_proj"), x1, d, d)?;
    let att = lay.attention(g, &a, [q, k, v], mask)?;
    let att = lay.linear(g, &a.child("out_proj"), att, d, d)?;
    let x = g.add(Op::Binary(Binary::Add), &[x, att], p.node("attn_residual"))?;
    let x2 = lay.layer_norm(g, &p.child("layer_norm2"), x)?;
    let mlp = p.child("mlp");
    let y = lay.linear(g, &mlp.child("fc1"), x2, d, e.intermediate)?;
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
    let y = lay.linear(g, &mlp.child("fc2"), y, e.intermediate, d)?;
    Ok(g.add(Op::Binary(Binary::Add), &[x, y], p.node("mlp_residual"))?)
}

/// The float tensors of `store` that `model_key` names (the model's key for a source key, None
/// for another model's), read under the model's keys. Integer tensors (`position_ids` in older
/// saves) are buffers, not weights.
pub fn read_weights(
    store: &dyn crate::weights::TensorSource,
    model_key: impl Fn(&str) -> Option<String>,
) -> Result<crate::weights::Weights, ModelError> {
    let wanted: Vec<(String, String)> = store
        .tensors()
        .iter()
        .filter(|(_, i)| !matches!(i.dtype, crate::weights::StoredDtype::Int(_)))
        .filter_map(|(k, _)| Some((model_key(k)?, k.clone())))
        .collect();
    Ok(store.read_as(wanted)?)
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
