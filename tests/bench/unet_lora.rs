//! The benchmark's synthetic LoRAs (included by unet_bench.rs): kohya-ss files adapting what
//! kohya's sd-scripts trains by default in a UNet — in every transformer block attn1 and attn2's
//! to_q, to_k, to_v, to_out.0 and the feed-forward's ff.net.0.proj (GEGLU, 2 · 4C out) and
//! ff.net.2, and each transformer's proj_in and proj_out: 722 modules for SDXL, 192 for SD 1.5,
//! the counts sd-scripts prints. Each module has `.lora_down.weight` [r, in (, 1, 1)] (uniform in
//! ±1/√in), `.lora_up.weight` [out, r (, 1, 1)] (±0.02: trained up matrices are small) and
//! `.alpha` (16), all fp16 as LoRAs are shared. SDXL's are named the way SDXL LoRAs are written,
//! with SGM module paths (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`); SD 1.5's
//! with diffusers module paths (`lora_unet_down_blocks_0_attentions_0_proj_in`).

use std::collections::BTreeMap;

use super::{Arch, Fill, Spec};

/// The benchmark's rank.
pub const RANK: usize = 32;
/// The alpha written (scale alpha / rank = 0.5 at rank 32).
const ALPHA: f32 = 16.0;
/// The file's name in the model's folder (beside `unet/`).
pub const FILE: &str = "lora_r32.safetensors";

/// How the module paths of the LoRA's keys are spelled.
#[derive(Clone, Copy, Debug)]
pub enum Names {
    /// LDM/SGM (`input_blocks.4.1`, `middle_block.1`, `output_blocks.0.1`): SDXL LoRAs.
    Sgm,
    /// diffusers (`down_blocks.1.attentions.0`): SD 1.x LoRAs.
    Diffusers,
}

/// The modules of a transformer kohya adapts, as the end of their diffusers path.
const TARGETS: [&str; 12] = [
    ".attn1.to_q",
    ".attn1.to_k",
    ".attn1.to_v",
    ".attn1.to_out.0",
    ".attn2.to_q",
    ".attn2.to_k",
    ".attn2.to_v",
    ".attn2.to_out.0",
    ".ff.net.0.proj",
    ".ff.net.2",
    ".proj_in",
    ".proj_out",
];

/// The LoRA's tensors for the UNet `unet` (its diffusers tensors, as [`Arch::tensors`] gives
/// them) at rank `rank`: three per adapted module, with the weight's own shapes.
pub fn tensors(
    arch: &Arch,
    unet: &BTreeMap<String, Spec>,
    names: Names,
    rank: usize,
) -> BTreeMap<String, Spec> {
    let mut out = BTreeMap::new();
    for (key, spec) in unet {
        let Some(module) = key.strip_suffix(".weight") else {
            continue;
        };
        if !module.contains(".attentions.") || !TARGETS.iter().any(|t| module.ends_with(t)) {
            continue;
        }
        let path = match names {
            Names::Sgm => arch.ldm_name(module).expect("the UNet's own module"),
            Names::Diffusers => module.to_string(),
        };
        let name = format!("lora_unet_{}", path.replace('.', "_"));
        // [out, in] for a linear layer, [out, in, 1, 1] for SD 1.x's 1x1-conv projections.
        let (out_ch, rest) = spec
            .shape
            .split_first()
            .expect("a weight has an output axis");
        let mut down = vec![rank];
        down.extend_from_slice(rest);
        let mut up = vec![*out_ch, rank];
        up.extend(rest.iter().skip(1).map(|_| 1));
        let mut add = |suffix: &str, shape: Vec<usize>, fill: Fill| {
            out.insert(format!("{name}.{suffix}"), Spec { shape, fill });
        };
        add("lora_down.weight", down, Fill::Weight);
        add("lora_up.weight", up, Fill::Bias);
        add("alpha", Vec::new(), Fill::Const(ALPHA));
    }
    out
}
