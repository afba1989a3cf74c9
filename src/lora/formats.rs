//! The key forms LoRA files are written in, read into one list of adapted modules: which model a
//! key belongs to (its prefix), which module it adapts (the rest, as written) and what it holds
//! (its suffix). Nothing here knows a model's module names; [`super::fusion`] matches them.

use std::collections::BTreeMap;

use super::Scope;

/// How a file spells module paths after the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    /// kohya-ss: dots turned into `_` (`down_blocks_0_attentions_0_..._to_q`), matched against
    /// the model's names with their dots turned the same way.
    Flat,
    /// diffusers / PEFT: the module path as is (`down_blocks.0.attentions.0....to_q`).
    Dotted,
}

/// Key prefixes and the model they are for. kohya's `lora_te_` is SD 1.x/2.x's one text
/// encoder, `lora_te1_`/`lora_te2_` SDXL's two.
const PREFIXES: &[(&str, Scope, Spelling)] = &[
    ("lora_unet_", Scope::Unet, Spelling::Flat),
    ("lora_te1_", Scope::TextEncoder, Spelling::Flat),
    ("lora_te2_", Scope::TextEncoder2, Spelling::Flat),
    ("lora_te_", Scope::TextEncoder, Spelling::Flat),
    ("unet.", Scope::Unet, Spelling::Dotted),
    ("text_encoder_2.", Scope::TextEncoder2, Spelling::Dotted),
    ("text_encoder.", Scope::TextEncoder, Spelling::Dotted),
];

/// What a tensor of a module holds, by the key's suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Down,
    Up,
    Mid,
    Alpha,
    DoraScale,
    HadaW1A,
    HadaW1B,
    HadaW2A,
    HadaW2B,
    HadaT1,
    HadaT2,
    LokrW1,
    LokrW1A,
    LokrW1B,
    LokrW2,
    LokrW2A,
    LokrW2B,
    LokrT2,
}

/// Suffixes after the module path. PEFT's `lora_A`/`lora_B` are kohya's down/up.
const SUFFIXES: &[(&str, Role)] = &[
    (".lora_down.weight", Role::Down),
    (".lora_up.weight", Role::Up),
    (".lora_mid.weight", Role::Mid),
    (".lora_A.weight", Role::Down),
    (".lora_B.weight", Role::Up),
    // diffusers 0.19–0.24's own saves (`to_q.lora.down.weight`, the text encoder's
    // `q_proj.lora_linear_layer.down.weight`).
    (".lora.down.weight", Role::Down),
    (".lora.up.weight", Role::Up),
    (".lora_linear_layer.down.weight", Role::Down),
    (".lora_linear_layer.up.weight", Role::Up),
    (".alpha", Role::Alpha),
    (".dora_scale", Role::DoraScale),
    (".lora_magnitude_vector", Role::DoraScale),
    (".hada_w1_a", Role::HadaW1A),
    (".hada_w1_b", Role::HadaW1B),
    (".hada_w2_a", Role::HadaW2A),
    (".hada_w2_b", Role::HadaW2B),
    (".hada_t1", Role::HadaT1),
    (".hada_t2", Role::HadaT2),
    (".lokr_w1", Role::LokrW1),
    (".lokr_w1_a", Role::LokrW1A),
    (".lokr_w1_b", Role::LokrW1B),
    (".lokr_w2", Role::LokrW2),
    (".lokr_w2_a", Role::LokrW2A),
    (".lokr_w2_b", Role::LokrW2B),
    (".lokr_t2", Role::LokrT2),
];

impl Role {
    /// How a file names it (the first suffix that maps to it), for messages.
    pub fn suffix(self) -> &'static str {
        SUFFIXES
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("", |(s, _)| s.trim_start_matches('.'))
    }
}

/// The attention processors' old diffusers form (`attn1.processor.to_q_lora.down.weight`):
/// the processor's projection and the module it adapts.
const PROCESSOR: &[(&str, &str)] = &[
    ("to_q_lora", "to_q"),
    ("to_k_lora", "to_k"),
    ("to_v_lora", "to_v"),
    ("to_out_lora", "to_out.0"),
];

/// One adapted module of a file: its tensors by role, each by its key in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub scope: Scope,
    /// The module path as the file writes it (no prefix, no suffix).
    pub path: String,
    pub spelling: Spelling,
    pub tensors: BTreeMap<Role, String>,
}

impl Module {
    /// The key messages name: the first of its tensors.
    pub fn key(&self) -> &str {
        self.tensors.values().next().map_or("", String::as_str)
    }
}

/// The modules of a file's `keys`, in key order. A key with no known prefix, a suffix nobody
/// writes, or a module whose tensors mix two forms is an error naming the key.
pub fn modules<'k>(keys: impl Iterator<Item = &'k str>) -> Result<Vec<Module>, String> {
    let mut by_path: BTreeMap<(Scope, String), Module> = BTreeMap::new();
    for key in keys {
        let (scope, rest, spelling) = split_prefix(key)?;
        let (path, role) = split_suffix(rest, spelling).ok_or_else(|| {
            format!("tensor \"{key}\": not a LoRA tensor mlc knows (no lora_down/lora_up, lora_A/lora_B, alpha, hada_*, lokr_* suffix)")
        })?;
        let m = by_path
            .entry((scope, path.clone()))
            .or_insert_with(|| Module {
                scope,
                path,
                spelling,
                tensors: BTreeMap::new(),
            });
        if m.spelling != spelling {
            return Err(format!(
                "tensor \"{key}\": the same module is also written in another key form"
            ));
        }
        if let Some(other) = m.tensors.insert(role, key.to_string()) {
            return Err(format!(
                "tensors \"{other}\" and \"{key}\" hold the same part of one module"
            ));
        }
    }
    Ok(by_path.into_values().collect())
}

fn split_prefix(key: &str) -> Result<(Scope, &str, Spelling), String> {
    for &(prefix, scope, spelling) in PREFIXES {
        if let Some(rest) = key.strip_prefix(prefix) {
            return Ok((scope, rest, spelling));
        }
    }
    // The oldest diffusers files wrote the UNet's attention processors without a prefix.
    if key.contains(".processor.") {
        return Ok((Scope::Unet, key, Spelling::Dotted));
    }
    Err(format!(
        "tensor \"{key}\": no LoRA prefix mlc knows (lora_unet_, lora_te_, lora_te1_, lora_te2_, unet., text_encoder., text_encoder_2.)"
    ))
}

/// The module path and the tensor's role; None for a suffix no format writes.
fn split_suffix(rest: &str, spelling: Spelling) -> Option<(String, Role)> {
    if spelling == Spelling::Dotted {
        if let Some((module, tail)) = rest.split_once(".processor.") {
            let (proj, part) = tail.split_once('.')?;
            let adapted = PROCESSOR.iter().find(|(p, _)| *p == proj)?.1;
            let role = match part {
                "down.weight" => Role::Down,
                "up.weight" => Role::Up,
                _ => return None,
            };
            return Some((format!("{module}.{adapted}"), role));
        }
    }
    // Longest suffix first: `.lokr_w1_a` before `.lokr_w1`.
    SUFFIXES
        .iter()
        .filter(|(s, _)| rest.ends_with(s))
        .max_by_key(|(s, _)| s.len())
        .and_then(|&(s, role)| {
            let path = &rest[..rest.len() - s.len()];
            (!path.is_empty()).then(|| (path.to_string(), role))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(key: &str) -> Module {
        let mut m = modules(std::iter::once(key)).unwrap();
        assert_eq!(m.len(), 1);
        m.remove(0)
    }

    #[test]
    fn every_form_names_its_model_module_and_role() {
        let m = one("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight");
        assert_eq!(
            (m.scope, m.path.as_str(), m.spelling),
            (
                Scope::Unet,
                "down_blocks_0_attentions_0_proj_in",
                Spelling::Flat
            )
        );
        assert!(m.tensors.contains_key(&Role::Down));
        let m = one("lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha");
        assert_eq!(m.scope, Scope::TextEncoder2);
        assert!(m.tensors.contains_key(&Role::Alpha));
        let m = one("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight");
        assert_eq!(m.scope, Scope::TextEncoder);
        let m = one("text_encoder_2.text_model.encoder.layers.1.self_attn.k_proj.lora_B.weight");
        assert_eq!(
            (m.scope, m.path.as_str(), m.spelling),
            (
                Scope::TextEncoder2,
                "text_model.encoder.layers.1.self_attn.k_proj",
                Spelling::Dotted
            )
        );
        assert!(m.tensors.contains_key(&Role::Up));
        let m = one("unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight");
        assert_eq!(
            m.path,
            "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0"
        );
        let m = one(
            "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight",
        );
        assert_eq!(
            (m.scope, m.path.as_str()),
            (
                Scope::Unet,
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
            )
        );
        let m =
            one("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight");
        assert_eq!(
            (m.path.as_str(), m.tensors.keys().next()),
            (
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                Some(&Role::Down)
            )
        );
        let m = one(
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight",
        );
        assert_eq!(m.path, "text_model.encoder.layers.0.self_attn.q_proj");
        assert_eq!(Role::HadaW2B.suffix(), "hada_w2_b");
        let m = one("lora_unet_input_blocks_1_0_in_layers_2.lokr_w1_a");
        assert!(m.tensors.contains_key(&Role::LokrW1A));
        let m = one("lora_unet_input_blocks_1_0_in_layers_2.hada_t2");
        assert!(m.tensors.contains_key(&Role::HadaT2));
    }

    #[test]
    fn a_module_gathers_its_tensors() {
        let keys = [
            "lora_unet_a_b.lora_down.weight",
            "lora_unet_a_b.lora_up.weight",
            "lora_unet_a_b.alpha",
            "lora_te_a_b.alpha",
        ];
        let m = modules(keys.into_iter()).unwrap();
        assert_eq!(m.len(), 2);
        let unet = m.iter().find(|m| m.scope == Scope::Unet).unwrap();
        assert_eq!(unet.tensors.len(), 3);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = modules(["model.diffusion_model.out.2.weight"].into_iter()).unwrap_err();
        assert!(
            e.contains("\"model.diffusion_model.out.2.weight\"") && e.contains("prefix"),
            "{e}"
        );
        let e = modules(["lora_unet_a.lora_sideways.weight"].into_iter()).unwrap_err();
        assert!(e.contains("\"lora_unet_a.lora_sideways.weight\""), "{e}");
        let e = modules(["unet.a.processor.to_z_lora.down.weight"].into_iter()).unwrap_err();
        assert!(e.contains("to_z_lora"), "{e}");
    }
}
