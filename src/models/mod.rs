//! Model families as plug-ins: each family file declares its models ([`Model`]), and
//! [`registry`] lists them. Nothing outside a family's file knows its keys, sizes or names.
//!
//! Adding a model: implement [`Model`] in one file (its interface, how it recognises its weights,
//! how it builds the graph with the layer library in [`nn`]) and add it to [`REGISTRY`].

pub mod clip;
pub mod nn;
mod options;
pub mod taesd;
pub mod unet;
pub mod vae;

use crate::hub::Source;
use crate::ir::{Dim, Graph, IrError};
use crate::passes::specialize_shapes::Bindings;
use crate::tensor::DType;
use crate::weights::{TensorSource, WeightError, Weights};
pub use options::{ModelOption, OptionSet};
use std::fmt;

/// One separately built piece of a model, from the model's own list ([`Model::parts`]): an
/// autoencoder has a decoder and an encoder, a text encoder one part, a UNet its own. A family
/// declares new parts in its own folder (`Part::new("unet")`); nothing shared lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Part {
    name: &'static str,
    verb: &'static str,
}

impl Part {
    /// Latent → image.
    pub const DECODER: Part = Part::with_verb("decoder", "decode");
    /// Image → latent; token ids → hidden states.
    pub const ENCODER: Part = Part::with_verb("encoder", "encode");

    /// A part whose multifunction packages name their functions after the part itself
    /// (`unet_64x64`).
    pub const fn new(name: &'static str) -> Part {
        Part::with_verb(name, name)
    }

    /// A part whose functions are named by `verb` (`decode_768x1024`).
    pub const fn with_verb(name: &'static str, verb: &'static str) -> Part {
        Part { name, verb }
    }

    /// The name `--part` takes and metadata (`mlc.part`) records.
    pub fn name(self) -> &'static str {
        self.name
    }

    /// What a multifunction package's functions are named by: `{verb}_{h}x{w}`.
    pub fn function_verb(self) -> &'static str {
        self.verb
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Part> for String {
    fn from(p: Part) -> String {
        p.name.to_string()
    }
}

/// The symbol a model's batch axis is written in (`[B, 4, H, W]`): the build binds it at every
/// size, to `--batch` or the interface's default ([`Interface::default_size`]). A model without
/// a batch axis (its leading 1 fixed by the layout) does not use it.
pub const BATCH: &str = "B";

/// What a feature is to the application; sizes given on the command line name a role
/// (`--latent-size`, `--image-size`). A model may have several features of one role (a UNet's
/// conditioning), told apart by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Latent,
    Image,
    /// Token ids.
    Tokens,
    /// Hidden states or pooled embeddings of a text encoder.
    Embedding,
    /// A denoiser's diffusion timestep (one value per batch item).
    Timestep,
    /// What a denoiser is conditioned on: a text encoder's hidden states or pooled embedding.
    Conditioning,
    /// SDXL's micro-conditioning: original size, crop and target size.
    TimeIds,
    /// A denoiser's output: the predicted noise (or velocity) for its latent input.
    NoisePrediction,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Latent => "latent",
            Role::Image => "image",
            Role::Tokens => "tokens",
            Role::Embedding => "embedding",
            Role::Timestep => "timestep",
            Role::Conditioning => "conditioning",
            Role::TimeIds => "time ids",
            Role::NoisePrediction => "noise prediction",
        }
    }
}

/// The element type of a feature's array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureDtype {
    /// Floating point, in the build's I/O precision (fp32, or fp16 with `--io-precision fp16`).
    Float,
    /// 32-bit integers (token ids).
    Int32,
}

/// How a feature may be presented as a Core ML RGB image (`--input-type image`,
/// `--output-type image`): what its 0..255 pixels are to the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageSpec {
    /// The value range the model computes in (`(0, 1)` for TAESD, `(-1, 1)` for the full
    /// VAEs): what pixels 0..255 map to.
    pub range: (f32, f32),
    /// For an input, the per-channel normalisation the model expects after `range` (CLIP's
    /// `(x - mean) / std`).
    pub normalization: Option<Normalization>,
}

impl ImageSpec {
    /// Pixels 0..255 are `[low, high]`, with no normalisation.
    pub const fn range(low: f32, high: f32) -> ImageSpec {
        ImageSpec {
            range: (low, high),
            normalization: None,
        }
    }
}

/// One input or output of a model, its shape over the interface's symbols: the batch
/// ([`BATCH`]), spatial sizes (`H`, `W`) and sizes the weights give (`C`, `D`), or known sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct Feature {
    pub name: String,
    pub role: Role,
    pub dtype: FeatureDtype,
    pub shape: Vec<Dim>,
    pub description: String,
    /// Set for an RGB image that may be passed as a Core ML image; only such features are ever
    /// converted to one.
    pub image: Option<ImageSpec>,
}

/// Per-channel `(x - mean) / std` over an RGB image's channels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// A model's inputs and outputs, the symbols their sizes are written in, and the default size.
#[derive(Clone, Debug, PartialEq)]
pub struct Interface {
    pub inputs: Vec<Feature>,
    pub outputs: Vec<Feature>,
    /// The sizes a build without sizes uses, and the batch ([`BATCH`]) a build without
    /// `--batch` uses where the features have one.
    pub default_size: Bindings,
}

impl Interface {
    /// Every feature playing `role`, inputs first.
    pub fn all_of(&self, role: Role) -> impl Iterator<Item = &Feature> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .filter(move |f| f.role == role)
    }

    /// The feature called `name`, input or output.
    pub fn by_name(&self, name: &str) -> Option<&Feature> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .find(|f| f.name == name)
    }

    /// The one feature playing `role`, for what needs one (a size given as an image size):
    /// None when the model has none; an error when it has several, naming them.
    pub fn sole(&self, role: Role) -> Result<Option<&Feature>, ModelError> {
        let all: Vec<&Feature> = self.all_of(role).collect();
        match &all[..] {
            [] => Ok(None),
            [f] => Ok(Some(f)),
            _ => Err(ModelError::Size {
                reason: format!(
                    "the model has several {} features ({}): say which",
                    role.name(),
                    all.iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// Checks that `g`'s inputs are the interface's, by name, with the declared dtypes: what
    /// the rest of the build relies on (image conversion, fp16 I/O, `mlc run`'s inputs).
    pub fn check_graph(&self, g: &Graph) -> Result<(), ModelError> {
        let bad = |reason: String| Err(ModelError::Interface { reason });
        for f in &self.inputs {
            let Some(&v) = g.inputs().iter().find(|&&v| g.node(v).name == f.name) else {
                return bad(format!("no graph input {}", f.name));
            };
            let dtype = g.ty(v).dtype;
            let fits = match f.dtype {
                FeatureDtype::Float => matches!(dtype, DType::F32 | DType::F16),
                FeatureDtype::Int32 => dtype == DType::I32,
            };
            if !fits {
                return bad(format!(
                    "input {} is declared {:?} but the graph's is {dtype:?}",
                    f.name, f.dtype
                ));
            }
        }
        Ok(())
    }

    /// The features among `features` declared as images ([`Feature::image`]).
    pub fn images(features: &[Feature]) -> impl Iterator<Item = (&Feature, ImageSpec)> {
        features.iter().filter_map(|f| Some((f, f.image?)))
    }

    /// The symbol values that give the feature of `role` the spatial size `[h, w]`, checked to
    /// give every feature whole sizes.
    pub fn bindings(&self, role: Role, [h, w]: [usize; 2]) -> Result<Bindings, ModelError> {
        let f = self.sole(role)?.ok_or_else(|| ModelError::Size {
            reason: format!("the model has no {} to size", role.name()),
        })?;
        let mut b = Bindings::new();
        let [.., dh, dw] = &f.shape[..] else {
            return Err(ModelError::Size {
                reason: format!("{} has no spatial size", f.name),
            });
        };
        for (d, n) in [(dh, h), (dw, w)] {
            if let Some((sym, v)) = d.solve(n, &b) {
                b.insert(sym, v);
            }
            if d.resolve(&|s| b.get(s).copied()) != Some(n) {
                let multiple = match d {
                    Dim::Sym(s) if s.coefficient().0 > 1 => {
                        format!(": {n} is not a multiple of {}", s.coefficient().0)
                    }
                    _ => String::new(),
                };
                return Err(ModelError::Size {
                    reason: format!(
                        "{} size {h}x{w} does not fit {} [{}]{multiple}",
                        role.name(),
                        f.name,
                        shape_text(&f.shape)
                    ),
                });
            }
        }
        for g in self.inputs.iter().chain(&self.outputs) {
            for d in &g.shape {
                // A symbol the size does not bind (a hidden size the weights give) is not a
                // fraction.
                let bound = match d {
                    Dim::Sym(s) => s.symbols().all(|n| b.contains_key(n)),
                    Dim::Known(_) => true,
                };
                if bound && d.resolve(&|s| b.get(s).copied()).is_none() {
                    let den = match d {
                        Dim::Sym(s) => s.coefficient().1,
                        Dim::Known(_) => 1,
                    };
                    let at: Vec<String> = b.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    return Err(ModelError::Size {
                        reason: format!(
                            "{} size {h}x{w} gives {} a fractional size ({d} at {}): sizes must be multiples of {den}",
                            role.name(),
                            g.name,
                            at.join(", ")
                        ),
                    });
                }
            }
        }
        Ok(b)
    }

    /// The spatial size `[h, w]` the feature of `role` has under `b`.
    pub fn size_of(&self, role: Role, b: &Bindings) -> Option<[usize; 2]> {
        let f = self.sole(role).ok()??;
        let [.., dh, dw] = &f.shape[..] else {
            return None;
        };
        let r = |d: &Dim| d.resolve(&|s| b.get(s).copied());
        Some([r(dh)?, r(dw)?])
    }
}

/// A `config.json` is a few KB; anything near this is not one.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The `config.json` beside a weight file, parsed, and its path for messages; None when there is
/// none. Read like any input: a regular file, size-capped, one-line errors.
pub fn config_beside(
    weights: &std::path::Path,
) -> Result<Option<(String, serde_json::Value)>, ModelError> {
    let path = weights.with_file_name("config.json");
    if !path.exists() {
        return Ok(None);
    }
    let at = path.display().to_string();
    let bad = |reason: String| ModelError::WrongModel {
        file: at.clone(),
        reason,
    };
    let bytes =
        crate::limits::read_regular(&path, MAX_CONFIG_BYTES).map_err(|e| bad(e.to_string()))?;
    let json = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    Ok(Some((at, json)))
}

/// A feature's shape with the symbols in `fixed` bound.
pub fn bind_shape(shape: &[Dim], fixed: &Bindings) -> Result<Vec<Dim>, ModelError> {
    shape
        .iter()
        .map(|d| {
            d.bind(fixed).ok_or_else(|| ModelError::Size {
                reason: format!("{d} is not a whole size"),
            })
        })
        .collect()
}

fn shape_text(shape: &[Dim]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Options that change a model's interface (folded pre/post-processing). A model declares the
/// ones it takes ([`Model::options`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelOptions {
    /// Take (decoder) or give (encoder) the diffusion model's scaled latents: the VAE's scaling
    /// factor and shift are folded in.
    pub latent_scaling: bool,
    /// FLUX.2 decoder: take the transformer's packed `[1, 4C, h/2, w/2]` latents (batch-norm
    /// un-normalisation and 2x2 unpatchify folded in).
    pub packed_input: bool,
    /// Encoder: also output the posterior's `logvar`.
    pub logvar_output: bool,
    /// Encoder: output the posterior's moments as one `latent`, mean and log-variance
    /// concatenated on channels (`quant_conv`'s output, unclamped), as Apple's Swift pipeline
    /// reads a VAE encoder.
    pub moments_output: bool,
    /// Text encoders: also output `hidden_states[-N]` (N = 2: the penultimate layer's output,
    /// what SDXL and SD 2.x condition on), without the final layer norm.
    pub hidden_layer: Option<usize>,
    /// Text encoders with a projection (`text_embeds`): also output `pooled`, the final-norm
    /// state at the EOS token before the projection (what a CLIPTextModel's `pooler_output`
    /// is; Apple's SD 2.x text encoder returns it).
    pub pooled_output: bool,
    /// Transformers: how activations are laid out (see [`TransformerLayout`]).
    pub layout: TransformerLayout,
    /// Denoisers: the batch size, what the build binds the batch symbol [`BATCH`] to (None:
    /// the interface's default, 2 for a UNet: classifier-free guidance runs the negative and
    /// the positive prompt together).
    pub batch: Option<usize>,
    /// Denoisers: the conditioning's sequence length (None: 77, what SD pipelines tokenize to).
    pub tokens: Option<usize>,
    /// Single-file checkpoints: read the EMA copy of the weights (`model_ema.`).
    pub ema: bool,
}

/// How a transformer's activations are laid out in the built graph; both compute the same
/// numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransformerLayout {
    /// `[1, S, D]` with linear layers as matmuls, as traced PyTorch models look.
    #[default]
    Standard,
    /// `[1, D, 1, S]` (channels first, the sequence on the last axis), linear layers as 1x1
    /// convolutions and attention split per head: the Neural Engine's layout in Apple's
    /// "Deploying Transformers on the Apple Neural Engine".
    Ane,
}

/// Where the encoder that turns calibration photos into a decoder's latents reads its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderWeights {
    /// The decoder's own weights file (a full autoencoder checkpoint holds both halves).
    SameFile,
    /// A file of its own: the one given (`--encoder-weights`), else the published encoder.
    Separate,
}

/// Package metadata a model contributes.
#[derive(Clone, Debug, PartialEq)]
pub struct Description {
    pub short: String,
    pub author: String,
    pub license: String,
}

/// An architecture mlc can build.
pub trait Model: Sync {
    /// The canonical name (metadata, default output names).
    fn name(&self) -> &'static str;
    /// Other names users type for it.
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }
    /// The parts it has; the first is built when none is asked for.
    fn parts(&self) -> &'static [Part];
    fn interface(&self, part: Part, options: &ModelOptions) -> Interface;
    /// The build options the part takes beyond those every model takes; the build refuses the
    /// others, naming the flag.
    fn options(&self, part: Part) -> OptionSet;
    /// Reads the tensors the part needs from `source` (a file, shards, a view of a larger
    /// checkpoint, patched or not), under the names the builder uses. The default reads every
    /// float tensor under its source key; families with their own key layouts override it.
    fn load(
        &self,
        _part: Part,
        source: &dyn TensorSource,
        _options: &ModelOptions,
    ) -> Result<Weights, ModelError> {
        Ok(source.read_all()?)
    }
    /// Checks that `weights` are this model's (a one-line error naming the key that disagrees)
    /// and declares the graph, with the interface's symbols in `fixed` bound (the others, whose
    /// size varies between enumerated sizes, stay symbolic).
    fn build(
        &self,
        part: Part,
        weights: &Weights,
        fixed: &Bindings,
        options: &ModelOptions,
    ) -> Result<Graph, ModelError>;
    /// The tensors [`Model::load`] reads, as (model key, source key) pairs, known before any
    /// is read: what a LoRA, which names the model's own modules, is resolved against. The
    /// default, as the default `load`: every float tensor under its source key.
    fn weight_names(
        &self,
        _part: Part,
        source: &dyn TensorSource,
        _options: &ModelOptions,
    ) -> Result<Vec<(String, String)>, ModelError> {
        Ok(source
            .tensors()
            .iter()
            .filter(|(_, i)| !matches!(i.dtype, crate::weights::StoredDtype::Int(_)))
            .map(|(k, _)| (k.clone(), k.clone()))
            .collect())
    }
    /// For a part whose file layout is no key-for-key map of its weights (OpenCLIP's q, k and
    /// v stacked in one tensor): a view of `source` under the names [`Model::load`] reads, for
    /// a LoRA's overlay to go on (it patches what the model reads, one weight at a time).
    /// None: the overlay goes on the source itself.
    fn adapter_view<'s>(
        &self,
        _part: Part,
        _source: &'s dyn TensorSource,
    ) -> Result<Option<Box<dyn TensorSource + 's>>, ModelError> {
        Ok(None)
    }
    /// Which LoRA keys are the part's (`lora_unet_`/`unet.` for a UNet); None when the part
    /// takes no LoRA. A part that has one declares [`ModelOption::Lora`].
    fn adapter_scope(&self, _part: Part) -> Option<crate::lora::Scope> {
        None
    }
    /// Module names LoRAs use for the part's weights beyond the model keys themselves (a
    /// UNet's original single-file names, a text encoder's `text_model.` paths), as (module
    /// path, model key of its weight) pairs; `model_keys` are [`Model::weight_names`]' keys.
    fn adapter_names(&self, _part: Part, _model_keys: &[String]) -> Vec<(String, String)> {
        Vec::new()
    }
    /// [`Model::build`] on weights the graph may take over: families with large weights move
    /// each tensor into the graph instead of copying it (the default copies).
    fn build_owned(
        &self,
        part: Part,
        weights: Weights,
        fixed: &Bindings,
        options: &ModelOptions,
    ) -> Result<Graph, ModelError> {
        self.build(part, &weights, fixed, options)
    }
    /// What every side of the latent must be a multiple of when a package takes several sizes
    /// (enumerated or one function per size): a graph built for symbolic sizes cannot round
    /// odd sides the way one built for a known size does. 1: any size.
    fn size_multiple(&self, _part: Part) -> usize {
        1
    }
    /// For a part taking latents: where the encoder that turns calibration photos into them
    /// finds its weights (this model's [`Part::ENCODER`], built at the matching size). None
    /// when photos cannot feed the part. The default: a decoder of a model with an encoder
    /// uses a separate encoder file.
    fn calibration_encoder(&self, part: Part) -> Option<EncoderWeights> {
        (part == Part::DECODER && self.parts().contains(&Part::ENCODER))
            .then_some(EncoderWeights::Separate)
    }
    /// The published weights file for a part, when there is one to download.
    fn published(&self, _part: Part) -> Option<&'static Source> {
        None
    }
    fn description(&self, part: Part, sizes: &str) -> Description;
    /// The weights' source as package metadata records it: by default the file stem, so that
    /// the same weights in another container (`taef2_decoder.pth`, `.safetensors`, shards
    /// behind `taef2_decoder.safetensors.index.json`) give the same package. None leaves it
    /// out (the content hash is always recorded).
    fn weights_source(&self, path: &std::path::Path) -> Option<String> {
        crate::weights::stem(path)
    }
}

/// Every model mlc knows, in the order `--help` lists them.
pub static REGISTRY: &[&dyn Model] = &[
    &taesd::TAESD,
    &taesd::TAESDXL,
    &taesd::TAESD3,
    &taesd::TAEF1,
    &taesd::TAEF2,
    &vae::SD_VAE,
    &vae::SDXL_VAE,
    &vae::SD3_VAE,
    &vae::FLUX1_VAE,
    &vae::FLUX2_VAE,
    &clip::CLIP_L,
    &clip::CLIP_BIGG,
    &clip::CLIP_H,
    &clip::vision::CLIP_VISION,
    &unet::SD_UNET,
    &unet::SDXL_UNET,
];

pub fn registry() -> &'static [&'static dyn Model] {
    REGISTRY
}

/// The model called `name` or one of its aliases (case-insensitive).
pub fn lookup(name: &str) -> Result<&'static dyn Model, ModelError> {
    let lower = name.to_ascii_lowercase();
    REGISTRY
        .iter()
        .copied()
        .find(|m| m.name() == lower || m.aliases().contains(&lower.as_str()))
        .ok_or_else(|| ModelError::UnknownModel {
            name: name.to_string(),
            known: known_names(),
        })
}

/// Every accepted name, comma-separated.
pub fn known_names() -> String {
    REGISTRY
        .iter()
        .flat_map(|m| std::iter::once(m.name()).chain(m.aliases().iter().copied()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model {name:?}; known models: {known}")]
    UnknownModel { name: String, known: String },
    #[error("{model} has no part {part:?} (its parts: {has})")]
    NoPart {
        model: &'static str,
        part: String,
        has: String,
    },
    #[error("{file}: {reason}")]
    WrongModel { file: String, reason: String },
    /// A family's graph disagrees with its declared interface (a bug in the family).
    #[error("the built graph does not match the model's interface: {reason}")]
    Interface { reason: String },
    /// Weights of the model's other part than the one asked for.
    #[error(
        "{file}: these are {family} {other} weights (they have \"{other_key}\", not the {part}'s \
         \"{key}\"); give {part} weights, or build the {other} part"
    )]
    OtherPart {
        file: String,
        family: &'static str,
        /// Part names ([`Part::name`]), what `--part` takes.
        part: &'static str,
        other: &'static str,
        key: &'static str,
        other_key: &'static str,
    },
    /// A build option the part does not declare.
    #[error("{model} {part} does not take {option} (it takes: {takes})")]
    Option {
        model: &'static str,
        part: Part,
        option: &'static str,
        takes: String,
    },
    #[error("{reason}")]
    Size { reason: String },
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("building the graph: {0}")]
    Ir(#[from] IrError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--lora` is refused centrally for a part that does not declare it, and resolved through
    /// the part's adapter scope when it does: the two must agree.
    #[test]
    fn a_part_takes_loras_exactly_when_it_names_their_scope() {
        for m in registry() {
            for &part in m.parts() {
                assert_eq!(
                    m.options(part).contains(ModelOption::Lora),
                    m.adapter_scope(part).is_some(),
                    "{} {part}",
                    m.name()
                );
            }
        }
        assert!(lookup("sd-unet")
            .unwrap()
            .adapter_scope(Part::new("unet"))
            .is_some());
    }

    #[test]
    fn names_and_aliases_are_unique_and_found() {
        let mut seen = std::collections::BTreeSet::new();
        for m in REGISTRY {
            for n in std::iter::once(m.name()).chain(m.aliases().iter().copied()) {
                assert!(seen.insert(n), "{n} names two models");
                assert_eq!(lookup(&n.to_uppercase()).unwrap().name(), m.name());
            }
        }
        let e = lookup("nope").err().unwrap().to_string();
        assert!(e.contains("flux2") && e.contains("taesdxl"), "{e}");
    }

    #[test]
    fn parts_name_themselves_and_their_functions() {
        assert_eq!(Part::DECODER.name(), "decoder");
        assert_eq!(Part::ENCODER.to_string(), "encoder");
        assert_eq!(Part::DECODER.function_verb(), "decode");
        assert_eq!(Part::ENCODER.function_verb(), "encode");
        // A family's own part, declared where the family lives.
        let unet = Part::new("unet");
        assert_eq!((unet.name(), unet.function_verb()), ("unet", "unet"));
        assert_ne!(unet, Part::DECODER);
        assert_eq!(String::from(unet), "unet");
    }

    fn float(name: &str, role: Role) -> Feature {
        Feature {
            name: name.into(),
            role,
            dtype: FeatureDtype::Float,
            shape: vec![Dim::Known(1), Dim::Known(3)],
            description: String::new(),
            image: None,
        }
    }

    #[test]
    fn a_graph_is_checked_against_the_dtype_the_feature_declares() {
        let mut g = Graph::new("t");
        let ty = |d| crate::ir::TensorType::known(d, &[1, 3]);
        let ids = g.input("ids", ty(DType::I32));
        let x = g.input("x", ty(DType::F32));
        g.set_output("ids", ids);
        g.set_output("x", x);
        let iface = |ids_dtype| Interface {
            inputs: vec![
                Feature {
                    dtype: ids_dtype,
                    ..float("ids", Role::Tokens)
                },
                float("x", Role::Latent),
            ],
            outputs: vec![],
            default_size: Bindings::new(),
        };
        iface(FeatureDtype::Int32).check_graph(&g).unwrap();
        // The role says tokens; the declared dtype, not the role, is what the graph must have.
        let e = iface(FeatureDtype::Float).check_graph(&g).unwrap_err();
        assert!(e.to_string().contains("input ids is declared Float"), "{e}");
        let missing = Interface {
            inputs: vec![float("y", Role::Latent)],
            ..iface(FeatureDtype::Int32)
        };
        assert!(missing.check_graph(&g).is_err());
        let clip = lookup("clip-l").unwrap();
        let i = clip.interface(Part::ENCODER, &ModelOptions::default());
        assert_eq!(i.by_name("input_ids").unwrap().dtype, FeatureDtype::Int32);
        assert!(i.outputs.iter().all(|f| f.dtype == FeatureDtype::Float));
    }

    #[test]
    fn several_features_of_one_role_are_named_not_guessed() {
        let iface = Interface {
            inputs: vec![
                float("a", Role::Conditioning),
                float("b", Role::Conditioning),
            ],
            outputs: vec![float("eps", Role::NoisePrediction)],
            default_size: Bindings::new(),
        };
        let names: Vec<_> = iface.all_of(Role::Conditioning).map(|f| &f.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(iface.by_name("eps").unwrap().role, Role::NoisePrediction);
        let e = iface.sole(Role::Conditioning).unwrap_err().to_string();
        assert!(e.contains("several conditioning features (a, b)"), "{e}");
        assert!(iface.sole(Role::Timestep).unwrap().is_none());
        assert_eq!(
            iface.sole(Role::NoisePrediction).unwrap().unwrap().name,
            "eps"
        );
    }

    #[test]
    fn sizes_resolve_through_either_role() {
        let none = ModelOptions::default();
        let i = lookup("flux2").unwrap().interface(Part::DECODER, &none);
        let b = i.bindings(Role::Image, [768, 1024]).unwrap();
        assert_eq!(i.size_of(Role::Latent, &b), Some([96, 128]));
        let e = i.bindings(Role::Image, [100, 96]).unwrap_err().to_string();
        assert!(e.contains("100x96"), "{e}");
        let enc = lookup("flux2").unwrap().interface(Part::ENCODER, &none);
        let b = enc.bindings(Role::Latent, [8, 6]).unwrap();
        assert_eq!(enc.size_of(Role::Image, &b), Some([64, 48]));
        let e = enc.bindings(Role::Image, [60, 64]).unwrap_err().to_string();
        assert!(e.contains("fractional"), "{e}");
    }
}
