//! Where a UNet's tensors sit in a file, and the one mapping from the original single-file
//! names to diffusers' (the names the config is read under and the builder uses).
//!
//! * diffusers (`unet/diffusion_pytorch_model[.fp16].safetensors`, or its shards): the names at
//!   the root, `down_blocks.0.resnets.0.conv1.weight`;
//! * original single files (CompVis LDM for SD 1.x/2.x, Stability SGM for SDXL), under
//!   `model.diffusion_model.` in a full checkpoint (beside `first_stage_model.`,
//!   `cond_stage_model.`, `conditioner.`, which the UNet ignores) or bare:
//!   `input_blocks.1.0.in_layers.2.weight`. Their numbering depends on the resnets per level and
//!   on which levels have attention, both read off the keys ([`OriginalShape`]);
//! * an LDM checkpoint's EMA copy: `model_ema.` + the `model.` key with its dots removed after
//!   `model_ema.` (diffusers' `convert_ldm_unet_checkpoint`), read only with `--ema`.

/// The Model impl's entry points (reading a UNet, and the config of what was read).
pub use super::read::{config_of, load};

use crate::weights::{KeyPlacement, PrefixError, StoredDtype, TensorInfo};
use std::collections::{BTreeMap, BTreeSet};

/// The UNet's prefix in a full single-file checkpoint.
pub const ORIGINAL_PREFIX: &str = "model.diffusion_model.";
/// The EMA copy's prefix in an LDM checkpoint.
pub const EMA_PREFIX: &str = "model_ema.";

/// The diffusers layout: keys only a UNet has, at the file's root.
const DIFFUSERS: KeyPlacement<'static> = KeyPlacement {
    anchors: &["conv_in.weight", "time_embedding.linear_1.weight"],
    prefixes: &[""],
};

/// The original layout, in a full checkpoint or bare.
const ORIGINAL: KeyPlacement<'static> = KeyPlacement {
    anchors: &["input_blocks.0.0.weight", "time_embed.0.weight"],
    prefixes: &[ORIGINAL_PREFIX, ""],
};

/// How a file names the UNet's tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    Diffusers,
    /// Original single-file names under `prefix` (`model.diffusion_model.` or none).
    Original {
        prefix: String,
    },
}

impl Layout {
    /// Finds the one UNet among a file's keys; the error says what the file looks like when
    /// there is none.
    pub fn find(tensors: &BTreeMap<String, TensorInfo>) -> Result<Layout, String> {
        let keys = || tensors.keys().map(String::as_str);
        let diffusers = DIFFUSERS.find(keys());
        let original = ORIGINAL.find(keys());
        match (diffusers, original) {
            (Ok(_), Ok(prefix)) => Err(format!(
                "a UNet in both the diffusers layout (\"conv_in.weight\") and the original one \
                 (\"{prefix}input_blocks.0.0.weight\"); give a file with one"
            )),
            (Ok(_), Err(_)) => Ok(Layout::Diffusers),
            (Err(_), Ok(prefix)) => Ok(Layout::Original { prefix }),
            (_, Err(PrefixError::Several(ps))) => Err(format!(
                "a UNet under each of {}; give a file with one",
                crate::weights::quoted(&ps)
            )),
            (Err(_), Err(PrefixError::Absent)) => Err(foreign(tensors)),
        }
    }

    /// The prefix of the UNet's keys in the file.
    pub fn prefix(&self) -> &str {
        match self {
            Layout::Diffusers => "",
            Layout::Original { prefix } => prefix,
        }
    }

    /// The UNet's float tensors as diffusers key → file key (prefix included). Keys under the
    /// prefix that are no part of the original layout are refused, named; so are two keys
    /// that would map to one.
    pub fn sources(
        &self,
        tensors: &BTreeMap<String, TensorInfo>,
    ) -> Result<BTreeMap<String, String>, String> {
        let prefix = self.prefix();
        let under: Vec<(&str, &String)> = tensors
            .range(prefix.to_string()..)
            .map_while(|(k, i)| Some((k.strip_prefix(prefix)?, k, i)))
            .filter(|(_, _, i)| !matches!(i.dtype, StoredDtype::Int(_)))
            .map(|(short, k, _)| (short, k))
            .collect();
        if *self == Layout::Diffusers {
            return Ok(under
                .iter()
                .map(|(k, f)| (k.to_string(), f.to_string()))
                .collect());
        }
        let shape = OriginalShape::read(under.iter().map(|(k, _)| *k))?;
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        let mut unknown = Vec::new();
        for (k, file_key) in under {
            match shape.to_diffusers(k) {
                Some(d) => {
                    if let Some(prev) = out.insert(d.clone(), file_key.clone()) {
                        return Err(format!(
                            "tensors \"{prev}\" and \"{file_key}\" both map to \"{d}\""
                        ));
                    }
                }
                None => unknown.push(file_key.clone()),
            }
        }
        if !unknown.is_empty() {
            let listed: Vec<String> = unknown.iter().take(5).cloned().collect();
            return Err(format!(
                "{} tensor(s) under \"{prefix}\" are no part of the original UNet layout: {}{}",
                unknown.len(),
                crate::weights::quoted(&listed),
                match unknown.len() - listed.len() {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                }
            ));
        }
        Ok(out)
    }

    /// For `--ema`: each file key of [`Layout::sources`] replaced by its EMA copy's, checked to
    /// be there with the same shape. The error is one line naming what is missing.
    pub fn ema_sources(
        &self,
        sources: &BTreeMap<String, String>,
        tensors: &BTreeMap<String, TensorInfo>,
    ) -> Result<BTreeMap<String, String>, String> {
        let has_ema = tensors
            .range(EMA_PREFIX.to_string()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(EMA_PREFIX));
        if !has_ema || self.prefix() != ORIGINAL_PREFIX {
            return Err(format!(
                "--ema: no EMA copy here (no \"{EMA_PREFIX}*\" tensors beside \
                 \"{ORIGINAL_PREFIX}*\"); build without --ema"
            ));
        }
        let mut seen = BTreeSet::new();
        sources
            .iter()
            .map(|(d, f)| {
                let e = ema_key(f).ok_or_else(|| format!("--ema: no EMA name for \"{f}\""))?;
                if !seen.insert(e.clone()) {
                    return Err(format!("--ema: two tensors have the EMA name \"{e}\""));
                }
                match (tensors.get(&e), tensors.get(f)) {
                    (Some(a), Some(b)) if a.shape == b.shape => Ok((d.clone(), e)),
                    (Some(a), _) => Err(format!(
                        "--ema: \"{e}\" has shape {:?} but \"{f}\" has {:?}",
                        a.shape,
                        tensors.get(f).map(|b| b.shape.clone()).unwrap_or_default()
                    )),
                    (None, _) => Err(format!(
                        "--ema: missing tensor \"{e}\" (the EMA copy of \"{f}\")"
                    )),
                }
            })
            .collect()
    }
}

/// The EMA copy's key of an original `model.` key: `model_ema.` + the rest without its dots.
pub fn ema_key(model_key: &str) -> Option<String> {
    let rest = model_key.strip_prefix("model.")?;
    Some(format!("{EMA_PREFIX}{}", rest.replace('.', "")))
}

/// What a file without a UNet holds, as far as its keys tell.
fn foreign(tensors: &BTreeMap<String, TensorInfo>) -> String {
    let find = |f: &dyn Fn(&str) -> bool| tensors.keys().find(|k| f(k));
    let give = "give the UNet's weights (diffusers unet/diffusion_pytorch_model.safetensors, or \
                a single-file checkpoint with model.diffusion_model.*)";
    if let Some(k) = find(&|k| k.ends_with("embeddings.token_embedding.weight")) {
        return format!("no UNet here: these are CLIP text encoder weights (\"{k}\"); {give}");
    }
    let vae = |k: &str| {
        k.starts_with("first_stage_model.")
            || k.starts_with("encoder.")
            || k.starts_with("decoder.")
    };
    if let Some(k) = find(&vae) {
        return format!(
            "no UNet here: these are VAE weights (first_stage_model.* / encoder.* / \
             decoder.*: \"{k}\"); {give}"
        );
    }
    format!(
        "no UNet here: no \"conv_in.weight\" (diffusers layout) or \
         \"{ORIGINAL_PREFIX}input_blocks.0.0.weight\" (single file); {give}"
    )
}

/// A module index as PyTorch prints it (no leading zeros), so two keys never map to one.
fn index(s: &str) -> Option<usize> {
    let ok = !s.is_empty()
        && s.len() <= 6
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    ok.then(|| s.parse().ok()).flatten()
}

fn is_param(p: &str) -> bool {
    p == "weight" || p == "bias"
}

/// What the original numbering depends on, read off the original keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginalShape {
    /// Resnets per down level (L): `input_blocks` come in groups of L + 1 (the resnets, then the
    /// downsampler), `output_blocks` in groups of L + 1 resnets.
    pub resnets: usize,
    /// Up levels (counted from the bottom, as diffusers' `up_blocks`) with attention.
    pub up_attention: BTreeSet<usize>,
}

impl OriginalShape {
    /// L from the first downsampler (`input_blocks.(L+1).0.op`; without one, a single level of
    /// `input_blocks.1..=L`), attention from `output_blocks.N.1.*` other than an upsampler.
    pub fn read<'k>(keys: impl Iterator<Item = &'k str> + Clone) -> Result<OriginalShape, String> {
        let parts = |k: &'k str| k.split('.').collect::<Vec<_>>();
        let mut first_op = None;
        let mut last_input = 0;
        for k in keys.clone() {
            if let ["input_blocks", n, ref rest @ ..] = parts(k)[..] {
                let Some(n) = index(n) else { continue };
                last_input = last_input.max(n);
                if rest.first() == Some(&"0") && rest.get(1) == Some(&"op") {
                    first_op = Some(first_op.map_or(n, |f: usize| f.min(n)));
                }
            }
        }
        let resnets = match first_op {
            Some(n) => n.checked_sub(1).filter(|&l| l > 0).ok_or_else(|| {
                format!("tensor \"input_blocks.{n}.0.op.weight\": a downsampler before any resnet")
            })?,
            None => last_input,
        };
        let group = resnets + 1;
        let mut up_attention = BTreeSet::new();
        for k in keys {
            if let ["output_blocks", n, "1", sub, ..] = parts(k)[..] {
                if let Some(n) = index(n) {
                    if sub != "conv" {
                        up_attention.insert(n / group);
                    }
                }
            }
        }
        Ok(OriginalShape {
            resnets,
            up_attention,
        })
    }

    /// The diffusers key of original key `k` (under the UNet's prefix); None for a key that is
    /// no part of the layout. The one place the original names are translated.
    pub fn to_diffusers(&self, k: &str) -> Option<String> {
        let parts: Vec<&str> = k.split('.').collect();
        let (l, group) = (self.resnets, self.resnets + 1);
        let tail = |rest: &[&str]| (!rest.is_empty()).then(|| rest.join("."));
        Some(match parts[..] {
            ["time_embed", i @ ("0" | "2"), p] if is_param(p) => {
                format!("time_embedding.linear_{}.{p}", if i == "0" { 1 } else { 2 })
            }
            ["label_emb", "0", i @ ("0" | "2"), p] if is_param(p) => {
                format!("add_embedding.linear_{}.{p}", if i == "0" { 1 } else { 2 })
            }
            ["input_blocks", "0", "0", p] if is_param(p) => format!("conv_in.{p}"),
            ["out", "0", p] if is_param(p) => format!("conv_norm_out.{p}"),
            ["out", "2", p] if is_param(p) => format!("conv_out.{p}"),
            ["input_blocks", n, m, ref rest @ ..] => {
                let n = index(n).filter(|&n| n > 0)?;
                let (level, j) = (n / group, n % group);
                match (j, m, rest) {
                    (0, "0", ["op", p]) if is_param(p) => {
                        format!("down_blocks.{}.downsamplers.0.conv.{p}", level - 1)
                    }
                    (0, ..) => return None,
                    (j, "0", rest) => {
                        format!("down_blocks.{level}.resnets.{}.{}", j - 1, resnet(rest)?)
                    }
                    (j, "1", rest) => {
                        format!("down_blocks.{level}.attentions.{}.{}", j - 1, tail(rest)?)
                    }
                    _ => return None,
                }
            }
            ["middle_block", m, ref rest @ ..] => match m {
                "0" => format!("mid_block.resnets.0.{}", resnet(rest)?),
                "1" => format!("mid_block.attentions.0.{}", tail(rest)?),
                "2" => format!("mid_block.resnets.1.{}", resnet(rest)?),
                _ => return None,
            },
            ["output_blocks", n, m, ref rest @ ..] => {
                let n = index(n)?;
                let (level, j) = (n / group, n % group);
                let attention = self.up_attention.contains(&level);
                let upsampler = |at: &str| match rest {
                    ["conv", p] if is_param(p) && j == l && m == at => {
                        Some(format!("up_blocks.{level}.upsamplers.0.conv.{p}"))
                    }
                    _ => None,
                };
                match (m, attention) {
                    ("0", _) => format!("up_blocks.{level}.resnets.{j}.{}", resnet(rest)?),
                    ("1", false) => upsampler("1")?,
                    ("2", true) => upsampler("2")?,
                    // A transformer has no `conv`: that is an upsampler in the wrong slot.
                    ("1", true) if rest.first() != Some(&"conv") => {
                        format!("up_blocks.{level}.attentions.{j}.{}", tail(rest)?)
                    }
                    _ => return None,
                }
            }
            _ => return None,
        })
    }
}

impl OriginalShape {
    /// The same from diffusers names: resnets per down level, up levels with attention.
    pub fn of_diffusers<'k>(keys: impl Iterator<Item = &'k str>) -> OriginalShape {
        let mut resnets = BTreeSet::new();
        let mut up_attention = BTreeSet::new();
        for k in keys {
            match k.split('.').collect::<Vec<_>>()[..] {
                ["down_blocks", "0", "resnets", j, ..] => {
                    resnets.extend(index(j));
                }
                ["up_blocks", l, "attentions", ..] => {
                    up_attention.extend(index(l));
                }
                _ => {}
            }
        }
        OriginalShape {
            resnets: resnets.len(),
            up_attention,
        }
    }

    /// The original key of diffusers key `k`: the inverse of [`OriginalShape::to_diffusers`]
    /// (how SDXL LoRAs name the modules they adapt). None for a key the layout has no name for.
    pub fn to_original(&self, k: &str) -> Option<String> {
        let parts: Vec<&str> = k.split('.').collect();
        let group = self.resnets + 1;
        let at = |n: usize, m: &str, rest: &[&str]| format!("{n}.{m}.{}", rest.join("."));
        let tail = |rest: &[&str]| (!rest.is_empty()).then(|| rest.join("."));
        Some(match parts[..] {
            ["time_embedding", lin, p] if is_param(p) => {
                format!("time_embed.{}.{p}", linear_index(lin)?)
            }
            ["add_embedding", lin, p] if is_param(p) => {
                format!("label_emb.0.{}.{p}", linear_index(lin)?)
            }
            ["conv_in", p] if is_param(p) => format!("input_blocks.0.0.{p}"),
            ["conv_norm_out", p] if is_param(p) => format!("out.0.{p}"),
            ["conv_out", p] if is_param(p) => format!("out.2.{p}"),
            ["down_blocks", l, kind, j, ref rest @ ..] => {
                let (l, j) = (index(l)?, index(j)?);
                let n = l.checked_mul(group)?.checked_add(j + 1)?;
                match (kind, rest) {
                    ("resnets", rest) => format!("input_blocks.{n}.0.{}", original_resnet(rest)?),
                    ("attentions", rest) => format!("input_blocks.{}", at(n, "1", rest)),
                    ("downsamplers", ["conv", p]) if j == 0 && is_param(p) => {
                        format!("input_blocks.{}.0.op.{p}", (l + 1).checked_mul(group)?)
                    }
                    _ => return None,
                }
            }
            ["mid_block", kind, j, ref rest @ ..] => match (kind, j) {
                ("resnets", "0") => format!("middle_block.0.{}", original_resnet(rest)?),
                ("attentions", "0") => format!("middle_block.1.{}", tail(rest)?),
                ("resnets", "1") => format!("middle_block.2.{}", original_resnet(rest)?),
                _ => return None,
            },
            ["up_blocks", l, kind, j, ref rest @ ..] => {
                let (l, j) = (index(l)?, index(j)?);
                let base = l.checked_mul(group)?;
                match (kind, rest) {
                    ("resnets", rest) => {
                        format!("output_blocks.{}.0.{}", base + j, original_resnet(rest)?)
                    }
                    ("attentions", rest) => format!("output_blocks.{}", at(base + j, "1", rest)),
                    ("upsamplers", ["conv", p]) if j == 0 && is_param(p) => {
                        let slot = if self.up_attention.contains(&l) { 2 } else { 1 };
                        format!("output_blocks.{}.{slot}.conv.{p}", base + self.resnets)
                    }
                    _ => return None,
                }
            }
            _ => return None,
        })
    }
}

fn linear_index(lin: &str) -> Option<&'static str> {
    match lin {
        "linear_1" => Some("0"),
        "linear_2" => Some("2"),
        _ => None,
    }
}

/// A resnet's parameter in the original's sequential indices, from diffusers naming.
fn original_resnet(sub: &[&str]) -> Option<String> {
    let [name, p] = sub else { return None };
    let at = match *name {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    };
    is_param(p).then(|| format!("{at}.{p}"))
}

/// A resnet's parameter in diffusers naming, from the original's sequential indices.
fn resnet(sub: &[&str]) -> Option<String> {
    let name = match sub {
        ["in_layers", "0", _] => "norm1",
        ["in_layers", "2", _] => "conv1",
        ["emb_layers", "1", _] => "time_emb_proj",
        ["out_layers", "0", _] => "norm2",
        ["out_layers", "3", _] => "conv2",
        ["skip_connection", _] => "conv_shortcut",
        _ => return None,
    };
    let p = sub.last()?;
    is_param(p).then(|| format!("{name}.{p}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(keys: &[&str]) -> OriginalShape {
        OriginalShape::read(keys.iter().copied()).unwrap()
    }

    /// Every tensor of the original fixtures maps to diffusers and back to itself, and the
    /// numbering read off the diffusers names is the one read off the original's.
    #[test]
    fn original_names_round_trip_through_diffusers() {
        let dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/unet");
        for model in ["sd15", "sdxl"] {
            let file =
                crate::weights::WeightFile::open(&dir.join(model).join("original.safetensors"))
                    .unwrap();
            let keys: Vec<&str> = crate::weights::TensorSource::tensors(&file)
                .keys()
                .filter_map(|k| k.strip_prefix(ORIGINAL_PREFIX))
                .collect();
            assert!(keys.len() > 100, "{model}: {} keys", keys.len());
            let shape = OriginalShape::read(keys.iter().copied()).unwrap();
            let diffusers: Vec<String> = keys
                .iter()
                .map(|k| shape.to_diffusers(k).unwrap())
                .collect();
            let back = OriginalShape::of_diffusers(diffusers.iter().map(String::as_str));
            assert_eq!(back, shape, "{model}");
            for (k, d) in keys.iter().zip(&diffusers) {
                assert_eq!(back.to_original(d).as_deref(), Some(*k), "{model}: {d}");
            }
        }
        // The diffusers-only fixtures: diffusers → original → diffusers.
        for model in ["sd21", "sd15_inpaint"] {
            let path = dir
                .join(model)
                .join("diffusers/diffusion_pytorch_model.safetensors");
            let file = crate::weights::WeightFile::open(&path).unwrap();
            let keys: Vec<&String> = crate::weights::TensorSource::tensors(&file)
                .keys()
                .collect();
            let shape = OriginalShape::of_diffusers(keys.iter().map(|k| k.as_str()));
            let original: Vec<String> =
                keys.iter().map(|k| shape.to_original(k).unwrap()).collect();
            assert_eq!(
                OriginalShape::read(original.iter().map(String::as_str)).unwrap(),
                shape
            );
            for (k, o) in keys.iter().zip(&original) {
                assert_eq!(shape.to_diffusers(o).as_ref(), Some(*k), "{model}: {o}");
            }
        }
        let shape = OriginalShape {
            resnets: 2,
            up_attention: BTreeSet::from([1]),
        };
        assert_eq!(
            shape.to_original("down_blocks.0.resnets.0.conv9.weight"),
            None
        );
        assert_eq!(
            shape.to_original("up_blocks.0.upsamplers.1.conv.weight"),
            None
        );
    }

    #[test]
    fn the_readme_examples_map() {
        // sd15: L = 2, attention on up levels 1..3 (not the bottom one).
        let sd15 = shape(&[
            "input_blocks.3.0.op.weight",
            "output_blocks.2.1.conv.weight",
            "output_blocks.3.1.norm.weight",
            "output_blocks.8.1.norm.weight",
        ]);
        assert_eq!(sd15.resnets, 2);
        assert_eq!(sd15.up_attention, BTreeSet::from([1, 2]));
        for (original, diffusers) in [
            (
                "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            ("input_blocks.0.0.bias", "conv_in.bias"),
            (
                "input_blocks.3.0.op.bias",
                "down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "input_blocks.5.0.in_layers.2.weight",
                "down_blocks.1.resnets.1.conv1.weight",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "middle_block.2.emb_layers.1.bias",
                "mid_block.resnets.1.time_emb_proj.bias",
            ),
            (
                "middle_block.1.proj_out.weight",
                "mid_block.attentions.0.proj_out.weight",
            ),
            (
                "output_blocks.5.0.out_layers.3.weight",
                "up_blocks.1.resnets.2.conv2.weight",
            ),
            (
                "output_blocks.5.2.conv.weight",
                "up_blocks.1.upsamplers.0.conv.weight",
            ),
            ("time_embed.2.weight", "time_embedding.linear_2.weight"),
            ("label_emb.0.0.weight", "add_embedding.linear_1.weight"),
            ("out.0.weight", "conv_norm_out.weight"),
            ("out.2.bias", "conv_out.bias"),
        ] {
            assert_eq!(
                sd15.to_diffusers(original).as_deref(),
                Some(diffusers),
                "{original}"
            );
        }
        // sdxl: the upsampler of a level with attention is the third module.
        let sdxl = shape(&[
            "input_blocks.3.0.op.weight",
            "output_blocks.0.1.norm.weight",
        ]);
        assert_eq!(
            sdxl.to_diffusers("output_blocks.2.2.conv.weight")
                .as_deref(),
            Some("up_blocks.0.upsamplers.0.conv.weight")
        );
        assert_eq!(
            sdxl.to_diffusers("input_blocks.4.1.proj_in.weight")
                .as_deref(),
            Some("down_blocks.1.attentions.0.proj_in.weight")
        );
        // Not the layout: the upsampler in the wrong slot, leading zeros, strays.
        for k in [
            "output_blocks.2.1.conv.weight",
            "output_blocks.1.2.conv.weight",
            "input_blocks.01.0.in_layers.0.weight",
            "input_blocks.3.0.in_layers.0.weight",
            "input_blocks.1.0.in_layers.1.weight",
            "middle_block.3.norm.weight",
            "label_emb.0.1.weight",
            "betas",
        ] {
            assert_eq!(sdxl.to_diffusers(k), None, "{k}");
        }
        assert!(OriginalShape::read(["input_blocks.1.0.op.weight"].into_iter()).is_err());
    }

    #[test]
    fn ema_keys_drop_the_dots_after_model_ema() {
        assert_eq!(
            ema_key("model.diffusion_model.input_blocks.1.1.proj_in.weight").as_deref(),
            Some("model_ema.diffusion_modelinput_blocks11proj_inweight")
        );
        assert_eq!(ema_key("first_stage_model.x"), None);
    }
}
