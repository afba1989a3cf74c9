//! CLIP encoders: the text encoders here, the image encoder (`clip-vision`) in [`vision`], the
//! transformer layer they share in [`transformer`].
//!
//! CLIP text encoders, as Stable Diffusion pipelines use them: `clip-l` (OpenAI CLIP ViT-L/14's
//! `CLIPTextModel`: SD 1.x, SDXL's first encoder), `clip-bigg` (OpenCLIP ViT-bigG/14, SDXL's
//! second) and `clip-h` (OpenCLIP ViT-H/14, SD 2.x), the last two as
//! `CLIPTextModelWithProjection`.
//!
//! The graph, in the standard layout ([1, S, D] activations, linear layers as matmuls):
//!
//! ```text
//! x = token_embedding[input_ids] + position_embedding           [1, S, D]
//! per layer: x += out_proj(attention(layer_norm1(x)), causal)   heads as the batch: [H, S, D/H]
//!            x += fc2(act(fc1(layer_norm2(x))))                 act: quick_gelu (L) or gelu
//! last_hidden_state = final_layer_norm(x)
//! pooled = last_hidden_state[argmax(input_ids)]                 the EOS id is the largest
//! text_embeds = pooled · text_projectionᵀ                       (bigG, H)
//! ```
//!
//! `--hidden-layer N` adds `hidden_state`, transformers' `hidden_states[-N]` (the input of the
//! last N-1 layers, without the final norm): SDXL and SD 2.x condition on N = 2.

pub mod keys;
mod layout;
mod openclip;
pub mod transformer;
pub mod vision;
pub mod vision_keys;

use super::nn::Params;
use super::{
    Description, Feature, FeatureDtype, Interface, Model, ModelError, ModelOption, ModelOptions,
    OptionSet, Part, Role,
};
use crate::ir::{Dim, Graph, Op, TensorType};
use crate::passes::specialize_shapes::Bindings;
use crate::tensor::DType;
use crate::weights::{TensorSource, Weights};
use keys::{Activation, Config, TextTower};
use layout::TokenStates;
use std::path::Path;
use transformer::{feature, layer, Encoder};

/// The sequence length every SD pipeline tokenizes to; the position table's length in the
/// weights decides the built one.
const SEQUENCE: usize = 77;

/// Added to the scores of future positions: far below any score, and finite in fp16 so that no
/// infinity reaches the Neural Engine.
const MASKED: f32 = -1e4;

pub struct Clip {
    name: &'static str,
    /// Which LoRA keys are this encoder's: kohya `lora_te_`/`lora_te1_` and diffusers
    /// `text_encoder.` name the first encoder of a pipeline, `lora_te2_`/`text_encoder_2.`
    /// SDXL's second (bigG).
    lora_scope: crate::lora::Scope,
    aliases: &'static [&'static str],
    /// CLIPTextModelWithProjection: `text_embeds` instead of `pooled`.
    projection: bool,
    /// Used when no config.json says otherwise.
    activation: Activation,
    pipeline: &'static str,
}

pub static CLIP_L: Clip = Clip {
    name: "clip-l",
    lora_scope: crate::lora::Scope::TextEncoder,
    aliases: &["clip-vit-l", "openai-clip-l"],
    projection: false,
    activation: Activation::QuickGelu,
    pipeline: "OpenAI CLIP ViT-L/14 (SD 1.x, SDXL text_encoder)",
};

pub static CLIP_BIGG: Clip = Clip {
    name: "clip-bigg",
    lora_scope: crate::lora::Scope::TextEncoder2,
    aliases: &["clip-g", "openclip-bigg"],
    projection: true,
    activation: Activation::Gelu,
    pipeline: "OpenCLIP ViT-bigG/14 (SDXL text_encoder_2)",
};

pub static CLIP_H: Clip = Clip {
    name: "clip-h",
    lora_scope: crate::lora::Scope::TextEncoder,
    aliases: &["openclip-h"],
    projection: true,
    activation: Activation::Gelu,
    pipeline: "OpenCLIP ViT-H/14 (SD 2.x)",
};

impl Clip {
    /// The file's text encoder, and the sizes its tensors' shapes give (checked against a CLIP
    /// text config.json beside the file).
    fn inspect<'s>(
        &self,
        source: &'s dyn TensorSource,
    ) -> Result<(TextTower<'s>, Config), ModelError> {
        let path = source.path();
        let file = path.display().to_string();
        let wrong = |reason: String| ModelError::WrongModel {
            file: file.clone(),
            reason,
        };
        let tower = TextTower::find(source, self.projection).map_err(wrong)?;
        let shapes = tower.shapes(source);
        let mut cfg = keys::detect(&shapes, self.activation).map_err(wrong)?;
        match (self.projection, cfg.projection.is_some()) {
            (true, false) => {
                return Err(wrong(format!(
                    "no \"{}\": these are CLIPTextModel weights (build clip-l), not {}'s",
                    tower.projection_key(),
                    self.name
                )))
            }
            (false, true) => {
                return Err(wrong(format!(
                    "\"{}\" is there: these are CLIPTextModelWithProjection weights (build \
                     clip-bigg or clip-h), not clip-l's",
                    tower.projection_key()
                )))
            }
            _ => {}
        }
        configure_tower(
            &mut cfg,
            path,
            TEXT_CONFIG,
            keys::apply_config,
            keys::check_heads,
        )?;
        Ok((tower, cfg))
    }

    /// The config of loaded weights (their keys are the builder's), with config.json's heads,
    /// epsilon and activation when a CLIP text config sits beside the file.
    fn config_of(&self, weights: &Weights) -> Result<Config, ModelError> {
        let shapes = weights.shapes();
        let mut cfg =
            keys::detect(&shapes, self.activation).map_err(|reason| ModelError::WrongModel {
                file: weights.path.display().to_string(),
                reason,
            })?;
        configure_tower(
            &mut cfg,
            &weights.path,
            TEXT_CONFIG,
            keys::apply_config,
            keys::check_heads,
        )?;
        Ok(cfg)
    }

    fn declare(&self, cfg: &Config, params: Params, o: &ModelOptions) -> Result<Graph, ModelError> {
        let mut g = Graph::new(self.name);
        let s = cfg.positions;
        if let Some(n) = o.hidden_layer {
            if n == 0 || n > cfg.layers {
                return Err(ModelError::Size {
                    reason: format!(
                        "--hidden-layer {n}: the model has {} layers (1 is the last layer's \
                         output, {} the first's)",
                        cfg.layers, cfg.layers
                    ),
                });
            }
        }
        let ids = g.input("input_ids", TensorType::known(DType::I32, &[1, s]));
        let encoder = Encoder {
            tokens: s,
            hidden: cfg.hidden,
            intermediate: cfg.intermediate,
            heads: cfg.heads,
            epsilon: cfg.epsilon,
            activation: cfg.activation,
        };
        let states = TokenStates {
            kind: o.layout,
            enc: &encoder,
        };
        let root = params.scope("");
        let mut x = states.embeddings(&mut g, &root.child("embeddings"), ids, cfg.vocab)?;
        let mask = states.causal_mask(&mut g);
        let mut hidden = None;
        for i in 0..cfg.layers {
            let p = root.child("encoder.layers").child(i);
            x = layer(&mut g, &states, &p, x, Some(mask))?;
            if o.hidden_layer == Some(cfg.layers - i) {
                hidden = Some(x);
            }
        }
        let last = states.layer_norm(&mut g, &root.child("final_layer_norm"), x)?;
        let out = states.sequence_output(&mut g, last, "last_hidden_state")?;
        g.set_output("last_hidden_state", out);
        let eos = g.add(Op::ArgMax { axis: 1 }, &[ids], "eos_position")?;
        let at = states.state_at(&mut g, last, eos)?;
        let pooled = states.pooled(&mut g, at, "eos_state_flat")?;
        match cfg.projection {
            Some(p) => {
                let e = states.project(
                    &mut g,
                    &root,
                    keys::PROJECTION,
                    pooled,
                    p,
                    "text_projection",
                )?;
                g.set_output("text_embeds", e);
                if o.pooled_output {
                    let pooled = states.pooled_output(&mut g, pooled, "eos_state_flat")?;
                    g.set_output("pooled", pooled);
                }
            }
            None => {
                let pooled = states.pooled_output(&mut g, pooled, "eos_state_flat")?;
                g.set_output("pooled", pooled);
            }
        }
        if let Some(h) = hidden {
            let h = states.sequence_output(&mut g, h, "hidden_state")?;
            g.set_output("hidden_state", h);
        }
        params.finish()?;
        Ok(g)
    }
}

/// The text model's config: a `CLIPTextConfig`, or a `CLIPConfig`'s `text_config`.
const TEXT_CONFIG: (&str, &str) = ("clip_text_model", "text_config");

/// Applies one tower's config (`model_type` and the key of it in a `CLIPConfig`) from the
/// `config.json` beside `weights` to `cfg` with `apply`, then checks the head count with `heads`:
/// what the text and image encoders both do after reading their sizes from the tensors. A
/// config.json that describes another model (as a pipeline folder's might) is passed over.
pub(crate) fn configure_tower<C>(
    cfg: &mut C,
    weights: &Path,
    (model_type, key): (&str, &str),
    apply: fn(&mut C, &serde_json::Value) -> Result<(), String>,
    heads: fn(&C) -> Result<(), String>,
) -> Result<(), ModelError> {
    let file = weights.display().to_string();
    if let Some((at, json)) = super::config_beside(weights)? {
        let tower = match json.get("model_type").and_then(|v| v.as_str()) {
            Some(t) if t == model_type => Some(json),
            Some("clip") => json.get(key).cloned(),
            _ => None,
        };
        if let Some(json) = tower {
            apply(cfg, &json).map_err(|r| ModelError::WrongModel {
                file: at,
                reason: format!("disagrees with {file}: {r}"),
            })?;
        }
    }
    heads(cfg).map_err(|reason| ModelError::WrongModel { file, reason })
}

impl Model for Clip {
    fn name(&self) -> &'static str {
        self.name
    }

    fn aliases(&self) -> &'static [&'static str] {
        self.aliases
    }

    fn parts(&self) -> &'static [Part] {
        &[Part::ENCODER]
    }

    fn interface(&self, _part: Part, o: &ModelOptions) -> Interface {
        // The hidden size D (and the projection's P) come from the weights when the model is
        // built; the lowering declares the graph's own shapes.
        let (d, p) = (Dim::sym("D"), Dim::sym("P"));
        let one = Dim::Known(1);
        let state = |name: &str, what: &str| {
            feature(
                name,
                Role::Embedding,
                vec![one.clone(), Dim::Known(SEQUENCE), d.clone()],
                format!("{what}, [1, tokens, hidden]"),
            )
        };
        let mut outputs = vec![state(
            "last_hidden_state",
            "Last layer's hidden states after the final layer norm",
        )];
        outputs.push(if self.projection {
            feature(
                "text_embeds",
                Role::Embedding,
                vec![one.clone(), p],
                "Pooled state (at the EOS token, the largest id) through text_projection".into(),
            )
        } else {
            feature(
                "pooled",
                Role::Embedding,
                vec![one.clone(), d.clone()],
                "Final-norm hidden state at the EOS token (the largest id)".into(),
            )
        });
        if self.projection && o.pooled_output {
            outputs.push(feature(
                "pooled",
                Role::Embedding,
                vec![one.clone(), d.clone()],
                "Final-norm hidden state at the EOS token (the largest id), not projected".into(),
            ));
        }
        if let Some(n) = o.hidden_layer {
            outputs.push(state(
                "hidden_state",
                &format!("hidden_states[-{n}], without the final layer norm"),
            ));
        }
        Interface {
            inputs: vec![Feature {
                dtype: FeatureDtype::Int32,
                ..feature(
                    "input_ids",
                    Role::Tokens,
                    vec![Dim::Known(1), Dim::Known(SEQUENCE)],
                    "Token ids (int32): BOS 49406, the prompt, EOS 49407, padding".into(),
                )
            }],
            outputs,
            default_size: Bindings::new(),
        }
    }

    fn options(&self, _part: Part) -> OptionSet {
        let projection = match self.projection {
            true => &[ModelOption::PooledOutput][..],
            false => &[],
        };
        OptionSet::of(&[
            ModelOption::HiddenLayer,
            ModelOption::Layout,
            ModelOption::Lora,
        ])
        .with(projection)
    }

    fn weight_names(
        &self,
        _part: Part,
        source: &dyn TensorSource,
        _o: &ModelOptions,
    ) -> Result<Vec<(String, String)>, ModelError> {
        let (tower, _) = self.inspect(source)?;
        tower.names(source)
    }

    /// OpenCLIP's layout through its view, whose q, k and v are tensors of their own.
    fn adapter_view<'s>(
        &self,
        _part: Part,
        source: &'s dyn TensorSource,
    ) -> Result<Option<Box<dyn TensorSource + 's>>, ModelError> {
        let (tower, _) = self.inspect(source)?;
        Ok(tower.into_view())
    }

    fn adapter_scope(&self, _part: Part) -> Option<crate::lora::Scope> {
        Some(self.lora_scope)
    }

    /// transformers' module paths (`text_model.encoder.layers.0.self_attn.q_proj`), which
    /// kohya and diffusers LoRAs name; the builder's keys drop `text_model.`.
    fn adapter_names(&self, _part: Part, model_keys: &[String]) -> Vec<(String, String)> {
        model_keys
            .iter()
            .filter_map(|k| {
                let module = k.strip_suffix(".weight")?;
                Some((format!("text_model.{module}"), k.clone()))
            })
            .collect()
    }

    fn load(
        &self,
        _part: Part,
        source: &dyn TensorSource,
        _o: &ModelOptions,
    ) -> Result<Weights, ModelError> {
        // Shapes first, from the index: a wrong file or config is refused before any tensor is
        // read, and a single-file checkpoint's other models are never read at all.
        let (tower, _) = self.inspect(source)?;
        tower.read(source)
    }

    fn build(
        &self,
        _part: Part,
        weights: &Weights,
        _fixed: &Bindings,
        o: &ModelOptions,
    ) -> Result<Graph, ModelError> {
        let cfg = self.config_of(weights)?;
        self.declare(&cfg, Params::new(weights), o)
    }

    fn build_owned(
        &self,
        _part: Part,
        weights: Weights,
        _fixed: &Bindings,
        o: &ModelOptions,
    ) -> Result<Graph, ModelError> {
        let cfg = self.config_of(&weights)?;
        self.declare(&cfg, Params::owned(weights), o)
    }

    fn description(&self, _part: Part, _sizes: &str) -> Description {
        Description {
            short: format!(
                "{} text encoder: int32 token ids [1, {SEQUENCE}] to hidden states",
                self.pipeline
            ),
            author: "mlc (weights: the model's publisher)".into(),
            license: "see the weights' license".into(),
        }
    }
}
