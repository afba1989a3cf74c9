//! LoRA adapters fused into a model's weights as they are read.
//!
//! A [`LoraSpec`] (`--lora FILE[:WEIGHT]`) names a file in any of the forms people download
//! ([`formats`]: kohya-ss in diffusers or LDM/SGM module names, LoCon, LyCORIS LoHa and LoKr,
//! diffusers/PEFT and the older attention-processor form). [`Fusion::resolve`] maps every key
//! for the model being built onto the model's own weights, through the names its family gives
//! ([`crate::models::Model::weight_names`], [`crate::models::Model::adapter_names`]), and checks
//! every shape before any weight is read; keys for another model of the pipeline (a text
//! encoder's while building the UNet) are skipped and counted. The [`Fusion`] is then an
//! [`crate::weights::Overlay`]: each adapted weight gets `weight · scale · ΔW` added in f32 as it
//! is read, before fp16 rounding and compression ([`delta`]).

pub mod delta;
mod f16c;
pub mod formats;
mod fusion;
mod in_place;
pub mod lycoris;
mod spec;

pub use fusion::{scopes, Fusion, LoraError, LoraSummary};
pub use spec::{AdapterSpec, LoraSpec, BASE_FUNCTION};

/// Which model of a pipeline a LoRA key is for, by its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `lora_unet_`, `unet.`.
    Unet,
    /// The (first) text encoder: `lora_te_`, `lora_te1_`, `text_encoder.`.
    TextEncoder,
    /// SDXL's second text encoder (OpenCLIP bigG): `lora_te2_`, `text_encoder_2.`.
    TextEncoder2,
}

impl Scope {
    /// As reports and messages name it.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Unet => "unet",
            Scope::TextEncoder => "text_encoder",
            Scope::TextEncoder2 => "text_encoder_2",
        }
    }
}
