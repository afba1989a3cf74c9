//! What CLIP's text and image encoders share: the pre-norm transformer encoder layer, written
//! once with the layer library for either layout of [`TokenStates`] (`standard` or `ane`).

use super::keys::Activation;
use super::layout::TokenStates;
use crate::ir::{Binary, Dim, Graph, Op, Unary, ValueId};
use crate::models::nn::{self, AttentionSpec, Linear, Projections, Scope};
use crate::models::{Feature, FeatureDtype, ModelError, Role};

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

/// A float feature that is not an image.
pub fn feature(name: &str, role: Role, shape: Vec<Dim>, description: String) -> Feature {
    Feature {
        name: name.into(),
        role,
        dtype: FeatureDtype::Float,
        shape,
        description,
        image: None,
    }
}

/// One pre-norm encoder layer; `mask` is added to the attention scores (the text model's causal
/// mask; the image model attends everywhere).
pub fn layer(
    g: &mut Graph,
    states: &TokenStates,
    p: &Scope,
    x: ValueId,
    mask: Option<ValueId>,
) -> Result<ValueId, ModelError> {
    let (e, layout) = (states.enc, states.kind);
    let d = e.hidden;
    let x1 = states.layer_norm(g, &p.child("layer_norm1"), x)?;
    let spec = AttentionSpec::new(d, e.heads, Projections::CLIP, layout);
    let att = nn::attention_layer(g, &p.child("self_attn"), x1, None, mask, &spec)?;
    let x = g.add(Op::Binary(Binary::Add), &[x, att], p.node("attn_residual"))?;
    let x2 = states.layer_norm(g, &p.child("layer_norm2"), x)?;
    let mlp = p.child("mlp");
    let fc1 = Linear::new(d, e.intermediate);
    let y = nn::linear(g, &mlp.child("fc1"), x2, &fc1, layout)?;
    let y = match e.activation {
        Activation::Gelu => nn::unary(g, &mlp, Unary::Gelu, y, "gelu")?,
        Activation::QuickGelu => nn::quick_gelu(g, &mlp, y)?,
    };
    let fc2 = Linear::new(e.intermediate, d);
    let y = nn::linear(g, &mlp.child("fc2"), y, &fc2, layout)?;
    Ok(g.add(Op::Binary(Binary::Add), &[x, y], p.node("mlp_residual"))?)
}

/// The float tensors of `store` that `model_key` names (the model's key for a source key, None
/// for another model's), as (model key, source key) pairs to read. Integer tensors
/// (`position_ids` in older saves) are buffers, not weights.
pub fn weight_names(
    store: &dyn crate::weights::TensorSource,
    model_key: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    store
        .tensors()
        .iter()
        .filter(|(_, i)| !matches!(i.dtype, crate::weights::StoredDtype::Int(_)))
        .filter_map(|(k, _)| Some((model_key(k)?, k.clone())))
        .collect()
}
