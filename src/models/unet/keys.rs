//! TEMPORARY (lead's scaffolding until the weights branch lands): diffusers names only, the
//! architecture from config.json.

use super::config::{AddedEmbedding, Family, UnetConfig};
use crate::models::ModelError;
use crate::models::ModelOptions;
use crate::weights::{TensorSource, Weights};

pub fn load(
    source: &dyn TensorSource,
    _o: &ModelOptions,
) -> Result<(Weights, UnetConfig), ModelError> {
    let w = source.read_all()?;
    let c = config_of(&w)?;
    Ok((w, c))
}

pub fn config_of(w: &Weights) -> Result<UnetConfig, ModelError> {
    let (_, j) = crate::models::config_beside(&w.path)?.expect("scaffolding needs config.json");
    let v = |k: &str| j[k].clone();
    let list = |k: &str, n: usize| -> Vec<usize> {
        match v(k) {
            serde_json::Value::Array(a) => a.iter().map(|x| x.as_u64().unwrap() as usize).collect(),
            x => vec![x.as_u64().unwrap() as usize; n],
        }
    };
    let blocks = list("block_out_channels", 0);
    let n = blocks.len();
    let heads = list("attention_head_dim", n);
    let mut depth = list("transformer_layers_per_block", n);
    let types: Vec<String> = v("down_block_types")
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    for (i, t) in types.iter().enumerate() {
        if !t.contains("CrossAttn") {
            depth[i] = 0;
        }
    }
    let mid = *list("transformer_layers_per_block", n).last().unwrap();
    let linear = v("use_linear_projection").as_bool().unwrap();
    let added = v("projection_class_embeddings_input_dim")
        .as_u64()
        .map(|d| {
            let d = d as usize;
            let text = if d % 256 != 0 { d % 256 } else { 1280 };
            AddedEmbedding {
                text_embeds: text,
                time_ids: (d - text) / 256,
                time_id_channels: 256,
            }
        });
    Ok(UnetConfig {
        family: match (linear, added.is_some()) {
            (false, _) => Family::Sd1,
            (true, false) => Family::Sd2,
            (true, true) => Family::Sdxl,
        },
        in_channels: v("in_channels").as_u64().unwrap() as usize,
        out_channels: v("out_channels").as_u64().unwrap() as usize,
        layers_per_block: v("layers_per_block").as_u64().unwrap() as usize,
        transformer_depth: depth,
        mid_transformer_depth: mid,
        heads,
        cross_attention_dim: v("cross_attention_dim").as_u64().unwrap() as usize,
        linear_projection: linear,
        upcast_attention: v("upcast_attention").as_bool().unwrap_or(false),
        flip_sin_to_cos: true,
        freq_shift: 0.0,
        time_embed_dim: 4 * blocks[0],
        added,
        norm_groups: 32,
        norm_eps: 1e-5,
        block_out_channels: blocks,
    })
}
