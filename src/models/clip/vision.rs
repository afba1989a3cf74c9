//! `clip-vision`: CLIP's image encoder as transformers' `CLIPVisionModelWithProjection` (image
//! prompts, IP-Adapter), in either layout (`--layout`, see [`super::layout`]).
//!
//! ```text
//! patches = conv(pixel_values, patch_embedding, stride = patch)   [1, D, S/p, S/p] → [1, N, D]
//! x = concat(class_embedding, patches) + position_embedding       [1, 1+N, D]
//! x = pre_layrnorm(x)                                             (sic: the transformers key)
//! per layer: the text model's pre-norm layer, without a mask
//! last_hidden_state = x                                           no final norm
//! image_embeds = post_layernorm(x[:, 0]) · visual_projectionᵀ      the class token
//! ```
//!
//! The input is the normalised `pixel_values`; with `--input-type image` an RGB image, CLIP's
//! per-channel mean and std folded in ([`NORMALIZATION`]).

use super::layout::TokenStates;
use super::transformer::{feature, layer, Encoder};
use super::vision_keys::{self as keys, Config, KeyLayout as Keys};
use crate::ir::{Binary, Conv2d, Dim, Graph, Op, TensorType};
use crate::models::nn::{self, ane::channels_first, reshape, transpose, ConvSpec, Params};
use crate::models::{
    Description, ImageSpec, Interface, Model, ModelError, ModelOption, ModelOptions, Normalization,
    OptionSet, Part, Role, TransformerLayout,
};
use crate::passes::specialize_shapes::Bindings;
use crate::tensor::DType;
use crate::weights::{TensorSource, Weights};
use std::collections::BTreeMap;
use std::path::Path;

/// The normalisation CLIP's image processor applies to [0, 1] pixels (OpenAI's statistics, which
/// OpenCLIP's ViT-H and bigG reuse).
pub const NORMALIZATION: Normalization = Normalization {
    mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
    std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
};

/// The interface's symbol for the image side; the weights fix its value.
const SIDE: &str = "S";

pub struct ClipVision;

pub static CLIP_VISION: ClipVision = ClipVision;

impl ClipVision {
    /// The file's image-encoder tensors' shapes under the builder's names, its layout, and the
    /// sizes they give (checked against a CLIP vision config.json beside the file).
    fn inspect(&self, source: &dyn TensorSource) -> Result<Keys, ModelError> {
        let path = source.path();
        let wrong = |reason: String| ModelError::WrongModel {
            file: path.display().to_string(),
            reason,
        };
        let layout =
            Keys::find(source.tensors().keys().map(String::as_str), &keys::IMAGE).map_err(wrong)?;
        let shapes = layout.shapes(&source.under(&layout.root));
        configure(path, &shapes)?;
        Ok(layout)
    }

    fn declare(
        &self,
        cfg: &Config,
        params: Params,
        kind: TransformerLayout,
    ) -> Result<Graph, ModelError> {
        let mut g = Graph::new(self.name());
        let (s, d, p, n) = (cfg.image, cfg.hidden, cfg.patch, cfg.grid());
        let tokens = cfg.tokens();
        let encoder = Encoder {
            tokens,
            hidden: d,
            intermediate: cfg.intermediate,
            heads: cfg.heads,
            epsilon: cfg.epsilon,
            activation: cfg.activation,
        };
        let states = TokenStates {
            kind,
            enc: &encoder,
        };
        let pixels = g.input("pixel_values", TensorType::known(DType::F32, &[1, 3, s, s]));
        let root = params.scope("");
        let emb = root.child("embeddings");
        let spec = ConvSpec {
            cin: 3,
            cout: d,
            kernel: p,
            bias: false,
            attrs: Conv2d {
                strides: [p, p],
                pads: [0; 4],
                dilations: [1, 1],
                groups: 1,
            },
        };
        let patches = nn::conv2d(&mut g, &emb.child("patch_embedding"), pixels, &spec)?;
        let pos = emb.child("position_embedding");
        // The class token goes in front of the patches, on the token axis of the layout.
        let (class, patches, pos) = if states.ane() {
            let patches = reshape(&mut g, patches, &[1, d, 1, n * n], "patches".into())?;
            let c = emb.tensor("class_embedding", &[d])?;
            let c = g.weight(emb.node("class_token"), c.into_reshaped(vec![1, d, 1, 1]));
            let t = channels_first(pos.tensor("weight", &[tokens, d])?, [1, d, 1, tokens]);
            (c, patches, g.weight(pos.node("weight"), t))
        } else {
            let patches = reshape(&mut g, patches, &[1, d, n * n], "patches_flat".into())?;
            let patches = transpose(&mut g, patches, &[0, 2, 1], "patches".into())?;
            let c = emb.constant(&mut g, "class_embedding", &[d])?;
            let c = reshape(&mut g, c, &[1, 1, d], emb.node("class_token"))?;
            (c, patches, pos.constant(&mut g, "weight", &[tokens, d])?)
        };
        let axis = states.token_axis();
        let x = g.add(Op::Concat { axis }, &[class, patches], "tokens")?;
        let x = g.add(Op::Binary(Binary::Add), &[x, pos], "embeddings")?;
        let mut x = states.layer_norm(&mut g, &root.child("pre_layrnorm"), x)?;
        for i in 0..cfg.layers {
            let p = root.child("encoder.layers").child(i);
            x = layer(&mut g, &states, &p, x, None)?;
        }
        let out = states.sequence_output(&mut g, x, "last_hidden_state")?;
        g.set_output("last_hidden_state", out);
        let class = g.add(
            Op::Slice {
                axis,
                begin: 0,
                end: 1,
            },
            &[x],
            "class_state",
        )?;
        let class = states.pooled(&mut g, class, "class_state_flat")?;
        let pooled = states.layer_norm(&mut g, &root.child("post_layernorm"), class)?;
        let embeds = states.project(
            &mut g,
            &root,
            keys::PROJECTION,
            pooled,
            cfg.projection,
            "visual_projection",
        )?;
        g.set_output("image_embeds", embeds);
        params.finish()?;
        Ok(g)
    }

    /// The config of loaded weights (their keys are the builder's), checked against an image
    /// size given on the command line.
    fn config_of(&self, weights: &Weights, fixed: &Bindings) -> Result<Config, ModelError> {
        let cfg = configure(&weights.path, &weights.shapes())?;
        if let Some(&side) = fixed.get(SIDE) {
            let why = if side % cfg.patch != 0 {
                format!("not a multiple of the patch size {}", cfg.patch)
            } else {
                format!(
                    "the position embeddings of {} fix the image size at {}x{}",
                    weights.path.display(),
                    cfg.image,
                    cfg.image
                )
            };
            if side != cfg.image {
                return Err(ModelError::Size {
                    reason: format!("image size {side}x{side}: {why}"),
                });
            }
        }
        Ok(cfg)
    }
}

/// The sizes `shapes` give, with config.json's beside `weights` applied and checked.
fn configure(weights: &Path, shapes: &BTreeMap<String, Vec<usize>>) -> Result<Config, ModelError> {
    let mut cfg = keys::detect(shapes).map_err(|reason| ModelError::WrongModel {
        file: weights.display().to_string(),
        reason,
    })?;
    // A `CLIPVisionConfig`, or a `CLIPConfig`'s `vision_config`.
    super::configure_tower(
        &mut cfg,
        weights,
        ("clip_vision_model", "vision_config"),
        keys::apply_config,
        keys::check_heads,
    )?;
    Ok(cfg)
}

impl Model for ClipVision {
    fn name(&self) -> &'static str {
        "clip-vision"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["clip-image"]
    }

    fn parts(&self) -> &'static [Part] {
        &[Part::ENCODER]
    }

    fn options(&self, _part: Part) -> OptionSet {
        use ModelOption::*;
        // One image size, the weights': it may be given (and is checked), not enumerated.
        OptionSet::of(&[ImageSize, InputLayout, InputImage, Layout])
    }

    fn interface(&self, _part: Part, _o: &ModelOptions) -> Interface {
        // The weights give the sizes (image side S, tokens T, hidden D, projection P); the
        // lowering declares the graph's own shapes.
        let one = Dim::Known(1);
        let side = Dim::sym(SIDE);
        let mut input = feature(
            "pixel_values",
            Role::Image,
            vec![one.clone(), Dim::Known(3), side.clone(), side],
            "RGB image, normalised with CLIP's per-channel mean and std".into(),
        );
        input.image = Some(ImageSpec {
            range: (0.0, 1.0),
            normalization: Some(NORMALIZATION),
        });
        Interface {
            inputs: vec![input],
            outputs: vec![
                feature(
                    "last_hidden_state",
                    Role::Embedding,
                    vec![one.clone(), Dim::sym("T"), Dim::sym("D")],
                    "Last layer's hidden states, class token first, [1, 1 + patches, hidden]"
                        .into(),
                ),
                feature(
                    "image_embeds",
                    Role::Embedding,
                    vec![one, Dim::sym("P")],
                    "Class token through post_layernorm and visual_projection".into(),
                ),
            ],
            default_size: Bindings::new(),
        }
    }

    fn load(
        &self,
        _part: Part,
        source: &dyn TensorSource,
        _o: &ModelOptions,
    ) -> Result<Weights, ModelError> {
        // Shapes first, from the index: a wrong file or config is refused before any tensor is
        // read, and a whole CLIPModel's text tower is never read at all.
        let layout = self.inspect(source)?;
        let under = source.under(&layout.root);
        let wanted = super::transformer::weight_names(&under, |k| layout.model_key(k));
        Ok((&under as &dyn TensorSource).read_as(wanted)?)
    }

    fn build(
        &self,
        _part: Part,
        weights: &Weights,
        fixed: &Bindings,
        o: &ModelOptions,
    ) -> Result<Graph, ModelError> {
        let cfg = self.config_of(weights, fixed)?;
        self.declare(&cfg, Params::new(weights), o.layout)
    }

    fn build_owned(
        &self,
        _part: Part,
        weights: Weights,
        fixed: &Bindings,
        o: &ModelOptions,
    ) -> Result<Graph, ModelError> {
        let cfg = self.config_of(&weights, fixed)?;
        self.declare(&cfg, Params::owned(weights), o.layout)
    }

    fn description(&self, _part: Part, _sizes: &str) -> Description {
        Description {
            short: "CLIP image encoder (CLIPVisionModelWithProjection): RGB image to hidden \
                    states and a projected image embedding"
                .into(),
            author: "mlc (weights: the model's publisher)".into(),
            license: "see the weights' license".into(),
        }
    }
}
