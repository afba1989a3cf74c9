//! Stable Diffusion UNets (diffusers' `UNet2DConditionModel`): `sd-unet` (SD 1.x, SD 2.x,
//! inpainting) and `sdxl-unet` (SDXL base and refiner), in the interface Apple's
//! ml-stable-diffusion Swift pipeline reads:
//!
//! ```text
//! sample [B, C, h, w], timestep [B], encoder_hidden_states [B, S, D] | [B, D, 1, S] (ane)
//! SDXL also: text_embeds [B, T], time_ids [B, N]
//! → noise_pred [B, 4, h, w]
//! ```
//! The architecture comes from the tensors ([`config`]), the graph from [`graph`] (the body),
//! [`embedding`] (timestep and added conditioning) and [`transformer`].

pub mod config;
pub mod embedding;
pub mod graph;
pub mod keys;
pub mod read;
pub mod tensors;
pub mod transformer;

use super::nn::ane::ScoreBudget;
use super::nn::Params;
use super::{
    Description, Feature, FeatureDtype, Interface, Model, ModelError, ModelOption, ModelOptions,
    OptionSet, Part, Role, TransformerLayout,
};
use crate::ir::{Dim, Graph, TensorType};
use crate::passes::specialize_shapes::Bindings;
use crate::tensor::DType;
use crate::weights::Weights;
use config::UnetConfig;
use embedding::Inputs;
use graph::UnetInputs;

/// The UNet's one part.
pub const UNET: Part = Part::new("unet");

/// Classifier-free guidance runs the negative and the positive prompt as one batch of two, as
/// Apple's Swift pipeline does.
pub const DEFAULT_BATCH: usize = 2;
/// The sequence length SD pipelines tokenize to.
pub const DEFAULT_TOKENS: usize = 77;
/// The largest attention score tensor the `ane` layout builds: 64 MiB of fp32 scores (the
/// model does not know the build's precision, so an fp16 build's are at most half of it).
const SCORE_BUDGET: ScoreBudget = ScoreBudget {
    max_bytes: 64 << 20,
    element_bytes: 4,
};

pub struct Unet {
    name: &'static str,
    aliases: &'static [&'static str],
    /// SDXL's `text_embeds` and `time_ids` inputs.
    xl: bool,
    /// Latent side a build without sizes uses.
    default_latent: usize,
    /// 2^(levels - 1) of the family: what sides of several sizes must be multiples of.
    levels_ceiling: usize,
    pipeline: &'static str,
}

pub static SD_UNET: Unet = Unet {
    name: "sd-unet",
    aliases: &["sd15-unet", "sd21-unet", "sd1-unet", "sd2-unet"],
    xl: false,
    default_latent: 64,
    levels_ceiling: 8,
    pipeline: "Stable Diffusion 1.x/2.x",
};

pub static SDXL_UNET: Unet = Unet {
    name: "sdxl-unet",
    aliases: &["sdxl-base-unet", "sdxl-refiner-unet"],
    xl: true,
    default_latent: 128,
    levels_ceiling: 4,
    pipeline: "Stable Diffusion XL",
};

fn feature(name: &str, role: Role, shape: Vec<Dim>, description: &str) -> Feature {
    Feature {
        name: name.into(),
        role,
        dtype: FeatureDtype::Float,
        shape,
        description: description.into(),
        image: None,
    }
}

impl Unet {
    /// The graph over `weights` (diffusers names) of architecture `cfg`.
    fn declare(
        &self,
        cfg: &UnetConfig,
        params: Params,
        fixed: &Bindings,
        o: &ModelOptions,
    ) -> Result<Graph, ModelError> {
        let iface = self.interface(UNET, o);
        let mut g = Graph::new(self.name);
        let sizes = |name: &str| -> Result<Vec<Dim>, ModelError> {
            let f = iface.by_name(name).ok_or_else(|| ModelError::Interface {
                reason: format!("no feature {name}"),
            })?;
            super::bind_shape(&f.shape, fixed)
        };
        let known = |d: &mut Vec<Dim>, symbol: &str, n: usize| {
            for x in d.iter_mut() {
                if *x == Dim::sym(symbol) {
                    *x = Dim::Known(n);
                }
            }
        };
        let mut sample = sizes("sample")?;
        known(&mut sample, "C", cfg.in_channels);
        let mut context = sizes("encoder_hidden_states")?;
        known(&mut context, "D", cfg.cross_attention_dim);
        let f32 = |shape: Vec<Dim>| TensorType::new(DType::F32, shape);
        let sample = g.input("sample", f32(sample));
        let timestep = g.input("timestep", f32(sizes("timestep")?));
        let context = g.input("encoder_hidden_states", f32(context));
        let (text_embeds, time_ids) = match (self.xl, cfg.added) {
            (true, Some(a)) => {
                let mut t = sizes("text_embeds")?;
                known(&mut t, "T", a.text_embeds);
                let mut n = sizes("time_ids")?;
                known(&mut n, "N", a.time_ids);
                (
                    Some(g.input("text_embeds", f32(t))),
                    Some(g.input("time_ids", f32(n))),
                )
            }
            (false, None) => (None, None),
            (true, None) => return Err(wrong_family(&params, "an SD 1.x/2.x", "sd-unet")),
            (false, Some(_)) => return Err(wrong_family(&params, "an SDXL", "sdxl-unet")),
        };
        let inputs = UnetInputs {
            sample,
            context,
            embedding: Inputs {
                timestep,
                text_embeds,
                time_ids,
            },
        };
        let root = params.scope("");
        let out = graph::unet(&mut g, &root, &inputs, cfg, o.layout, SCORE_BUDGET)?;
        g.set_output("noise_pred", out);
        params.finish()?;
        Ok(g)
    }
}

fn wrong_family(params: &Params, what: &str, build: &str) -> ModelError {
    ModelError::WrongModel {
        file: params.path().display().to_string(),
        reason: format!("this is {what} UNet: build {build}"),
    }
}

impl Model for Unet {
    fn name(&self) -> &'static str {
        self.name
    }

    fn aliases(&self) -> &'static [&'static str] {
        self.aliases
    }

    fn parts(&self) -> &'static [Part] {
        &[UNET]
    }

    fn interface(&self, _part: Part, o: &ModelOptions) -> Interface {
        // The build binds the batch (`--batch`, else the default below) like H and W.
        let b = Dim::sym(super::BATCH);
        let s = Dim::Known(o.tokens.unwrap_or(DEFAULT_TOKENS));
        let (h, w) = (Dim::sym("H"), Dim::sym("W"));
        // Channels, text width and time-id count come from the weights when the model is
        // built; the lowering declares the graph's own shapes.
        let (c, d) = (Dim::sym("C"), Dim::sym("D"));
        let context = match o.layout {
            TransformerLayout::Standard => vec![b.clone(), s, d],
            TransformerLayout::Ane => vec![b.clone(), d, Dim::Known(1), s],
        };
        let mut inputs = vec![
            feature(
                "sample",
                Role::Latent,
                vec![b.clone(), c, h.clone(), w.clone()],
                "Noisy latent (inpainting: latent, mask, masked-image latent on channels)",
            ),
            feature(
                "timestep",
                Role::Timestep,
                vec![b.clone()],
                "Diffusion timestep per batch item",
            ),
            feature(
                "encoder_hidden_states",
                Role::Conditioning,
                context,
                "Text encoder hidden states",
            ),
        ];
        if self.xl {
            inputs.push(feature(
                "text_embeds",
                Role::Conditioning,
                vec![b.clone(), Dim::sym("T")],
                "Pooled, projected text embedding of the second text encoder",
            ));
            inputs.push(feature(
                "time_ids",
                Role::TimeIds,
                vec![b.clone(), Dim::sym("N")],
                "Original size, crop top-left, target size (base) or aesthetic score (refiner)",
            ));
        }
        let mut size = Bindings::new();
        size.insert(super::BATCH.into(), DEFAULT_BATCH);
        size.insert("H".into(), self.default_latent);
        size.insert("W".into(), self.default_latent);
        Interface {
            inputs,
            outputs: vec![feature(
                "noise_pred",
                Role::NoisePrediction,
                vec![b, Dim::Known(4), h, w],
                "Predicted noise (or velocity, for v-prediction models)",
            )],
            default_size: size,
        }
    }

    fn options(&self, _part: Part) -> OptionSet {
        OptionSet::of(&[
            ModelOption::Multifunction,
            ModelOption::LatentSize,
            ModelOption::Layout,
            ModelOption::Batch,
            ModelOption::Tokens,
            ModelOption::Ema,
            ModelOption::Lora,
        ])
    }

    fn weight_names(
        &self,
        _part: Part,
        source: &dyn crate::weights::TensorSource,
        o: &ModelOptions,
    ) -> Result<Vec<(String, String)>, ModelError> {
        read::names(source, o)
    }

    fn adapter_scope(&self, _part: Part) -> Option<crate::lora::Scope> {
        Some(crate::lora::Scope::Unet)
    }

    /// The original single-file names beside diffusers': SDXL LoRAs are written in them.
    fn adapter_names(&self, _part: Part, model_keys: &[String]) -> Vec<(String, String)> {
        let shape = keys::OriginalShape::of_diffusers(model_keys.iter().map(String::as_str));
        model_keys
            .iter()
            .filter_map(|k| {
                let module = shape.to_original(k)?.strip_suffix(".weight")?.to_string();
                Some((module, k.clone()))
            })
            .collect()
    }

    fn load(
        &self,
        _part: Part,
        source: &dyn crate::weights::TensorSource,
        o: &ModelOptions,
    ) -> Result<Weights, ModelError> {
        Ok(keys::load(source, o)?.0)
    }

    fn build(
        &self,
        _part: Part,
        weights: &Weights,
        fixed: &Bindings,
        o: &ModelOptions,
    ) -> Result<Graph, ModelError> {
        let cfg = keys::config_of(weights)?;
        self.declare(&cfg, Params::new(weights), fixed, o)
    }

    fn build_owned(
        &self,
        _part: Part,
        weights: Weights,
        fixed: &Bindings,
        o: &ModelOptions,
    ) -> Result<Graph, ModelError> {
        let cfg = keys::config_of(&weights)?;
        self.declare(&cfg, Params::owned(weights), fixed, o)
    }

    fn size_multiple(&self, _part: Part) -> usize {
        // Each level but the last halves the latent: SD's 4 levels 3 times, SDXL's 3 twice.
        self.levels_ceiling
    }

    fn calibration_encoder(&self, _part: Part) -> Option<super::EncoderWeights> {
        None
    }

    fn description(&self, _part: Part, sizes: &str) -> Description {
        Description {
            short: format!(
                "{} UNet: noisy latent, timestep and text conditioning to predicted noise ({sizes})",
                self.pipeline
            ),
            author: "mlc (weights: the model's publisher)".into(),
            license: "see the weights' license".into(),
        }
    }
}
