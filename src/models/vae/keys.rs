//! Tensor names and hyper-parameters of full VAEs (diffusers `AutoencoderKL` and
//! `AutoencoderKLFlux2`), read from key strings and shapes alone.
//!
//! Two naming schemes exist for the same tensors:
//!
//! * original single-file checkpoints (CompVis/LDM VAEs, Black Forest Labs' `ae.safetensors`,
//!   and full SD checkpoints under `first_stage_model.`): `encoder.down.0.block.1.conv1.weight`,
//!   `decoder.up.3.block.0.nin_shortcut.weight`, `decoder.mid.attn_1.q.weight` as a 1x1 conv;
//! * diffusers: `encoder.down_blocks.0.resnets.1.conv1.weight`,
//!   `decoder.up_blocks.0.resnets.0.conv_shortcut.weight`,
//!   `decoder.mid_block.attentions.0.to_q.weight` as a `[C, C]` linear weight.
//!
//! Model builders only know the diffusers names; [`original_to_diffusers`] translates. Nothing
//! here touches tensor data, so it works whatever container or dtype the weights come in.

use std::collections::{BTreeMap, BTreeSet};

use crate::weights::KeyPlacement;

/// Where a VAE sits in a file: bare, or under `first_stage_model.` in a full Stable Diffusion
/// checkpoint (beside the UNet and the text encoder), found by the input convolution of either
/// half (both layouts name it alike).
pub const PLACEMENT: KeyPlacement<'static> = KeyPlacement {
    anchors: &["decoder.conv_in.weight", "encoder.conv_in.weight"],
    prefixes: &["", FULL_CHECKPOINT_PREFIX],
};

/// Prefix of the VAE inside a full Stable Diffusion checkpoint; its VAE is in the original
/// layout.
pub const FULL_CHECKPOINT_PREFIX: &str = "first_stage_model.";

/// GroupNorm group count assumed by [`detect`]: the tensors do not record it, and every
/// published AutoencoderKL uses diffusers' default of 32.
pub const DEFAULT_NORM_GROUPS: usize = 32;

/// Top-level modules of a VAE, in both schemes.
const VAE_ROOTS: [&str; 5] = ["encoder", "decoder", "quant_conv", "post_quant_conv", "bn"];

/// Whether `key` (under the VAE's prefix) is the VAE's: not a training-only `loss.*` tensor or
/// anything else beside it.
pub fn is_vae_key(key: &str) -> bool {
    let root = key.split('.').next().unwrap_or("");
    VAE_ROOTS.contains(&root) && key.len() > root.len()
}

/// A diffusers key, and whether the tensor is an original 1x1-conv attention weight
/// `[C, C, 1, 1]` that diffusers stores as a linear weight `[C, C]` (drop the two trailing 1s;
/// a tensor already `[C, C]` needs nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub key: String,
    pub squeeze_1x1: bool,
}

/// A module index as PyTorch prints it: decimal without leading zeros, so that two different
/// keys never map to the same one.
fn index(s: &str) -> Option<usize> {
    let ok = !s.is_empty()
        && s.len() <= 6
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    ok.then(|| s.parse().ok()).flatten()
}

/// Number of decoder up blocks in an original-layout key set (highest `decoder.up.N` + 1, 0 if
/// none). The mapping needs it because original up blocks are numbered in reverse.
pub fn up_block_count<'a>(keys: impl Iterator<Item = &'a str>) -> usize {
    keys.filter(|k| is_vae_key(k))
        .filter_map(|k| index(k.strip_prefix("decoder.up.")?.split('.').next()?))
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

fn is_param(p: &str) -> bool {
    p == "weight" || p == "bias"
}

/// `block_{k}` / `attn_{k}` (numbered from 1) to a 0-based index.
fn one_based(s: &str, prefix: &str) -> Option<usize> {
    index(s.strip_prefix(prefix)?)?.checked_sub(1)
}

/// The tail of a resnet key (`norm1.weight`, `nin_shortcut.bias`) in diffusers naming.
fn resnet(sub: &[&str]) -> Option<String> {
    match sub {
        [layer @ ("norm1" | "norm2" | "conv1" | "conv2"), p] if is_param(p) => {
            Some(format!("{layer}.{p}"))
        }
        ["nin_shortcut", p] if is_param(p) => Some(format!("conv_shortcut.{p}")),
        _ => None,
    }
}

/// Maps one original-layout key (under the VAE's prefix) to its diffusers key. `up_blocks` is
/// [`up_block_count`] of the whole file. `None` for keys outside the VAE or not in the original
/// AutoencoderKL layout.
pub fn original_to_diffusers(k: &str, up_blocks: usize) -> Option<Mapped> {
    if !is_vae_key(k) {
        return None;
    }
    let parts: Vec<&str> = k.split('.').collect();
    let plain = |key: String| {
        Some(Mapped {
            key,
            squeeze_1x1: false,
        })
    };
    let (side, rest) = match parts.as_slice() {
        ["quant_conv" | "post_quant_conv", p] if is_param(p) => return plain(k.to_string()),
        // FLUX.2's latent BatchNorm keeps PyTorch's names in both layouts.
        ["bn", "running_mean" | "running_var" | "num_batches_tracked" | "weight" | "bias"] => {
            return plain(k.to_string())
        }
        [side @ ("encoder" | "decoder"), rest @ ..] => (*side, rest),
        _ => return None,
    };
    let tail = match (side, rest) {
        (_, [name @ ("conv_in" | "conv_out"), p]) if is_param(p) => format!("{name}.{p}"),
        (_, ["norm_out", p]) if is_param(p) => format!("conv_norm_out.{p}"),
        (_, ["mid", block, sub @ ..]) if block.starts_with("block_") => {
            let i = one_based(block, "block_")?;
            format!("mid_block.resnets.{i}.{}", resnet(sub)?)
        }
        (_, ["mid", attn, layer, p]) if is_param(p) => {
            let i = one_based(attn, "attn_")?;
            let (to, squeeze) = match *layer {
                "norm" => ("group_norm", false),
                "q" => ("to_q", true),
                "k" => ("to_k", true),
                "v" => ("to_v", true),
                "proj_out" => ("to_out.0", true),
                _ => return None,
            };
            return Some(Mapped {
                key: format!("{side}.mid_block.attentions.{i}.{to}.{p}"),
                squeeze_1x1: squeeze && *p == "weight",
            });
        }
        ("encoder", ["down", i, "block", j, sub @ ..]) => {
            let (i, j) = (index(i)?, index(j)?);
            format!("down_blocks.{i}.resnets.{j}.{}", resnet(sub)?)
        }
        ("encoder", ["down", i, "downsample", "conv", p]) if is_param(p) => {
            format!("down_blocks.{}.downsamplers.0.conv.{p}", index(i)?)
        }
        // Original up.{n-1-i} is the i-th up block to run, which diffusers calls up_blocks.{i}.
        ("decoder", ["up", i, "block", j, sub @ ..]) => {
            let i = up_blocks.checked_sub(index(i)? + 1)?;
            format!("up_blocks.{i}.resnets.{}.{}", index(j)?, resnet(sub)?)
        }
        ("decoder", ["up", i, "upsample", "conv", p]) if is_param(p) => {
            let i = up_blocks.checked_sub(index(i)? + 1)?;
            format!("up_blocks.{i}.upsamplers.0.conv.{p}")
        }
        _ => return None,
    };
    plain(format!("{side}.{tail}"))
}

/// Maps every VAE key of an original-layout file (keys under the VAE's `prefix`), skipping
/// keys outside the VAE (see [`is_vae_key`]). Returns `(original key, mapped)` pairs in input
/// order. Errors, one line each naming the file's key (prefix included), on a VAE key that does
/// not map and on two keys mapping to the same diffusers key.
pub fn map_original_keys<'a>(
    keys: &[&'a str],
    prefix: &str,
) -> Result<Vec<(&'a str, Mapped)>, String> {
    let up = up_block_count(keys.iter().copied());
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for &k in keys {
        if !is_vae_key(k) {
            continue;
        }
        let m = original_to_diffusers(k, up).ok_or_else(|| {
            format!("tensor \"{prefix}{k}\" is not part of the original VAE layout")
        })?;
        if let Some(prev) = seen.insert(m.key.clone(), k) {
            return Err(format!(
                "tensors \"{prefix}{prev}\" and \"{prefix}{k}\" both map to \"{}\"",
                m.key
            ));
        }
        out.push((k, m));
    }
    Ok(out)
}

/// Hyper-parameters of a full VAE as its tensors show them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaeConfig {
    pub latent_channels: usize,
    /// Widths of the encoder's down blocks in execution order; the decoder runs them reversed.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder down block (diffusers `layers_per_block`).
    pub encoder_layers_per_block: usize,
    /// Resnets per decoder up block (diffusers `layers_per_block + 1`).
    pub decoder_layers_per_block: usize,
    /// `quant_conv` (encoder side) and `post_quant_conv` (decoder side) are present.
    pub quant_conv: bool,
    /// Channels of FLUX.2's BatchNorm over 2x2-patchified latents (`4 · latent_channels`).
    pub batch_norm: Option<usize>,
    /// Not recorded in the tensors: [`DEFAULT_NORM_GROUPS`] unless the caller knows better (a
    /// config.json's `norm_num_groups`, checked by [`check_config`]).
    pub norm_groups: usize,
    pub has_encoder: bool,
    pub has_decoder: bool,
}

/// Shape lookups with one-line errors naming the key.
struct Shapes<'a>(&'a BTreeMap<String, Vec<usize>>);

impl Shapes<'_> {
    fn get(&self, key: &str, rank: usize) -> Result<&[usize], String> {
        let s = self
            .0
            .get(key)
            .ok_or_else(|| format!("missing tensor \"{key}\""))?;
        if s.len() != rank {
            return Err(format!(
                "tensor \"{key}\" has shape {s:?}, expected rank {rank}"
            ));
        }
        Ok(s)
    }

    fn expect(&self, key: &str, want: &[usize]) -> Result<(), String> {
        let s = self.get(key, want.len())?;
        if s != want {
            return Err(format!(
                "tensor \"{key}\" has shape {s:?}, expected {want:?}"
            ));
        }
        Ok(())
    }

    /// Resnet counts of `{prefix}.{i}.resnets.{j}`: one entry per block index i.
    fn resnet_counts(&self, prefix: &str) -> Result<Vec<usize>, String> {
        let mut found: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for key in self.0.keys() {
            let Some(rest) = key.strip_prefix(prefix) else {
                continue;
            };
            let mut it = rest.split('.');
            let parsed = (
                it.next().and_then(index),
                it.next(),
                it.next().and_then(index),
            );
            if let (Some(i), Some("resnets"), Some(j)) = parsed {
                found.entry(i).or_default().insert(j);
            }
        }
        let blocks = found.keys().next_back().map_or(0, |i| i + 1);
        (0..blocks)
            .map(|i| {
                let js = found.get(&i);
                let n = js.map_or(0, |js| js.len());
                // Resnet indices must be 0..n without gaps.
                if n == 0 || js.and_then(|js| js.last()) != Some(&(n - 1)) {
                    return Err(format!(
                        "resnets of \"{prefix}{i}\" are not numbered 0..n (found {:?})",
                        js.map(|js| js.iter().collect::<Vec<_>>())
                            .unwrap_or_default()
                    ));
                }
                Ok(n)
            })
            .collect()
    }

    /// Block widths of `{prefix}.{i}` and the resnet count shared by every block, checking
    /// every resnet's convs against the block width.
    fn blocks(&self, prefix: &str) -> Result<(Vec<usize>, usize), String> {
        let counts = self.resnet_counts(prefix)?;
        let Some(&layers) = counts.first() else {
            return Err(format!("no \"{prefix}N.resnets\" tensors"));
        };
        let mut widths = Vec::new();
        for (i, &n) in counts.iter().enumerate() {
            if n != layers {
                return Err(format!(
                    "\"{prefix}{i}\" has {n} resnets but \"{prefix}0\" has {layers}"
                ));
            }
            let width = self.get(&format!("{prefix}{i}.resnets.0.conv1.weight"), 4)?[0];
            for j in 0..n {
                for conv in ["conv1", "conv2"] {
                    let key = format!("{prefix}{i}.resnets.{j}.{conv}.weight");
                    let s = self.get(&key, 4)?;
                    if s[0] != width {
                        return Err(format!(
                            "tensor \"{key}\" has {} output channels but the block's width is \
                             {width}",
                            s[0]
                        ));
                    }
                }
            }
            widths.push(width);
        }
        Ok((widths, layers))
    }
}

/// Reads a [`VaeConfig`] off diffusers-named tensor shapes. Encoder-only and decoder-only key
/// sets are accepted. Errors are one line naming the key that is missing or disagrees.
pub fn detect(shapes: &BTreeMap<String, Vec<usize>>) -> Result<VaeConfig, String> {
    let s = Shapes(shapes);
    let has = |p: &str| shapes.keys().any(|k| k.starts_with(p));
    let (has_encoder, has_decoder) = (has("encoder."), has("decoder."));
    if !has_encoder && !has_decoder {
        return Err("no encoder.* or decoder.* tensors: not an AutoencoderKL".into());
    }
    let mut latent = None;
    let mut widths: Option<Vec<usize>> = None;
    let (mut enc_layers, mut dec_layers) = (0, 0);
    let mut quant = None;
    if has_encoder {
        let out = s.get("encoder.conv_out.weight", 4)?[0];
        if out % 2 != 0 {
            return Err(format!(
                "tensor \"encoder.conv_out.weight\" has {out} output channels, expected an even \
                 count (mean and log-variance)"
            ));
        }
        latent = Some(out / 2);
        let (w, n) = s.blocks("encoder.down_blocks.")?;
        for i in 0..w.len() - 1 {
            s.get(
                &format!("encoder.down_blocks.{i}.downsamplers.0.conv.weight"),
                4,
            )?;
        }
        widths = Some(w);
        enc_layers = n;
        quant = Some(shapes.contains_key("quant_conv.weight"));
    }
    if has_decoder {
        let key = "decoder.conv_in.weight";
        let c = s.get(key, 4)?[1];
        if let Some(l) = latent.filter(|&l| l != c) {
            return Err(format!(
                "tensor \"{key}\" has {c} input channels but encoder.conv_out implies {l} latent \
                 channels"
            ));
        }
        latent = Some(c);
        let (mut w, n) = s.blocks("decoder.up_blocks.")?;
        w.reverse();
        for i in 0..w.len() - 1 {
            s.get(
                &format!("decoder.up_blocks.{i}.upsamplers.0.conv.weight"),
                4,
            )?;
        }
        if let Some(enc) = &widths {
            if enc.len() != w.len() {
                return Err(format!(
                    "\"decoder.up_blocks\" has {} blocks but \"encoder.down_blocks\" has {}",
                    w.len(),
                    enc.len()
                ));
            }
            if let Some(i) = (0..w.len()).find(|&i| enc[i] != w[i]) {
                let ui = w.len() - 1 - i;
                return Err(format!(
                    "tensor \"decoder.up_blocks.{ui}.resnets.0.conv1.weight\" has {} output \
                     channels but encoder block {i} has {}",
                    w[i], enc[i]
                ));
            }
        }
        widths = Some(w);
        dec_layers = n;
        let post = shapes.contains_key("post_quant_conv.weight");
        if let Some(q) = quant.filter(|&q| q != post) {
            let missing = if q { "post_quant_conv" } else { "quant_conv" };
            return Err(format!(
                "missing tensor \"{missing}.weight\" (the other quant conv is present)"
            ));
        }
        quant = Some(post);
    }
    let latent = latent.unwrap_or(0);
    let quant_conv = quant.unwrap_or(false);
    if quant_conv {
        if has_encoder {
            s.expect("quant_conv.weight", &[2 * latent, 2 * latent, 1, 1])?;
        }
        if has_decoder {
            s.expect("post_quant_conv.weight", &[latent, latent, 1, 1])?;
        }
    }
    let batch_norm = match shapes.get("bn.running_mean") {
        None => None,
        Some(_) => {
            let c = s.get("bn.running_mean", 1)?[0];
            s.expect("bn.running_var", &[c])?;
            Some(c)
        }
    };
    Ok(VaeConfig {
        latent_channels: latent,
        block_out_channels: widths.unwrap_or_default(),
        encoder_layers_per_block: enc_layers,
        decoder_layers_per_block: dec_layers,
        quant_conv,
        batch_norm,
        norm_groups: DEFAULT_NORM_GROUPS,
        has_encoder,
        has_decoder,
    })
}

/// Field of a diffusers config.json, `default` (diffusers' own) when absent or null.
fn field<'a>(
    cfg: &'a serde_json::Value,
    name: &str,
    default: &'a serde_json::Value,
) -> &'a serde_json::Value {
    match cfg.get(name) {
        None | Some(serde_json::Value::Null) => default,
        Some(v) => v,
    }
}

fn as_usize(v: &serde_json::Value, name: &str) -> Result<usize, String> {
    v.as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| format!("config.json {name} is {v}, expected a non-negative integer"))
}

fn as_usizes(v: &serde_json::Value, name: &str) -> Result<Vec<usize>, String> {
    v.as_array()
        .and_then(|a| a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect())
        .ok_or_else(|| format!("config.json {name} is {v}, expected a list of integers"))
}

/// Checks a diffusers config.json against what the tensors show. Absent fields take diffusers'
/// defaults, as diffusers itself would. The error is one line naming the field, the config value
/// and the tensor value.
///
/// `norm_num_groups` cannot be read off the tensors; it is only checked to divide every block
/// width, and a caller holding a config should copy it into [`VaeConfig::norm_groups`].
pub fn check_config(cfg: &VaeConfig, config_json: &serde_json::Value) -> Result<(), String> {
    use serde_json::json;
    if !config_json.is_object() {
        return Err("config.json is not a JSON object".into());
    }
    let mismatch = |name: &str, config: &dyn std::fmt::Debug, tensors: &dyn std::fmt::Debug| {
        format!("config.json {name} is {config:?} but the tensors have {tensors:?}")
    };
    let latent = as_usize(
        field(config_json, "latent_channels", &json!(4)),
        "latent_channels",
    )?;
    if latent != cfg.latent_channels {
        return Err(mismatch("latent_channels", &latent, &cfg.latent_channels));
    }
    let blocks = as_usizes(
        field(config_json, "block_out_channels", &json!([64])),
        "block_out_channels",
    )?;
    if blocks != cfg.block_out_channels {
        return Err(mismatch(
            "block_out_channels",
            &blocks,
            &cfg.block_out_channels,
        ));
    }
    // AutoencoderKLFlux2 may give the decoder its own widths; this VaeConfig has one list.
    if let Some(v) = config_json
        .get("decoder_block_out_channels")
        .filter(|v| !v.is_null())
    {
        let dec = as_usizes(v, "decoder_block_out_channels")?;
        if dec != cfg.block_out_channels {
            return Err(mismatch(
                "decoder_block_out_channels",
                &dec,
                &cfg.block_out_channels,
            ));
        }
    }
    for name in ["down_block_types", "up_block_types"] {
        if let Some(types) = config_json.get(name).and_then(|v| v.as_array()) {
            if types.len() != cfg.block_out_channels.len() {
                return Err(format!(
                    "config.json {name} lists {} blocks but the tensors have {}",
                    types.len(),
                    cfg.block_out_channels.len()
                ));
            }
        }
    }
    let layers = as_usize(
        field(config_json, "layers_per_block", &json!(1)),
        "layers_per_block",
    )?;
    if cfg.has_encoder && layers != cfg.encoder_layers_per_block {
        return Err(format!(
            "config.json layers_per_block is {layers} but the tensors have {} resnets per \
             encoder block",
            cfg.encoder_layers_per_block
        ));
    }
    if cfg.has_decoder && layers + 1 != cfg.decoder_layers_per_block {
        return Err(format!(
            "config.json layers_per_block is {layers} but the tensors have {} resnets per \
             decoder block (layers_per_block + 1)",
            cfg.decoder_layers_per_block
        ));
    }
    let groups = as_usize(
        field(config_json, "norm_num_groups", &json!(DEFAULT_NORM_GROUPS)),
        "norm_num_groups",
    )?;
    if let Some(&w) = cfg
        .block_out_channels
        .iter()
        .find(|&&w| groups == 0 || w % groups != 0)
    {
        return Err(format!(
            "config.json norm_num_groups is {groups} but the tensors have a GroupNorm over {w} \
             channels, which that many groups cannot split"
        ));
    }
    for (name, side) in [
        ("use_quant_conv", cfg.has_encoder),
        ("use_post_quant_conv", cfg.has_decoder),
    ] {
        let v = field(config_json, name, &json!(true));
        let on = v
            .as_bool()
            .ok_or_else(|| format!("config.json {name} is {v}, expected true or false"))?;
        if side && on != cfg.quant_conv {
            return Err(mismatch(name, &on, &cfg.quant_conv));
        }
    }
    // FLUX.2 normalises latents patchified by `patch_size`, so its BatchNorm has
    // latent · ph · pw channels.
    let flux2 =
        config_json.get("_class_name").and_then(|v| v.as_str()) == Some("AutoencoderKLFlux2");
    let patch = match config_json.get("patch_size").filter(|v| !v.is_null()) {
        Some(v) => Some(as_usizes(v, "patch_size")?),
        None if flux2 => Some(vec![2, 2]),
        None => None,
    };
    let want_bn = patch.as_ref().map(|p| latent * p.iter().product::<usize>());
    if want_bn != cfg.batch_norm {
        return Err(format!(
            "config.json patch_size {patch:?} implies a batch norm over {want_bn:?} channels but \
             the tensors have {:?}",
            cfg.batch_norm
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::PrefixError;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/vae")
    }

    /// Key → shape from a safetensors header.
    fn shapes(path: &std::path::Path) -> BTreeMap<String, Vec<usize>> {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors()
            .into_iter()
            .map(|(k, v)| (k, v.shape().to_vec()))
            .collect()
    }

    fn config(model: &str) -> serde_json::Value {
        let p = fixtures().join(model).join("diffusers/config.json");
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    fn diffusers(model: &str) -> BTreeMap<String, Vec<usize>> {
        shapes(
            &fixtures()
                .join(model)
                .join("diffusers/diffusion_pytorch_model.safetensors"),
        )
    }

    /// The original file's tensors under their diffusers keys, squeezed where the mapping says.
    fn mapped_original(model: &str) -> BTreeMap<String, Vec<usize>> {
        let orig = shapes(&fixtures().join(model).join("original.safetensors"));
        let keys: Vec<&str> = orig.keys().map(String::as_str).collect();
        let mapped = map_original_keys(&keys, "").unwrap();
        assert_eq!(mapped.len(), orig.len(), "{model}: some keys were skipped");
        mapped
            .into_iter()
            .map(|(k, m)| {
                let mut s = orig[k].clone();
                if m.squeeze_1x1 {
                    assert_eq!(&s[2..], [1, 1], "{k}");
                    s.truncate(2);
                }
                (m.key, s)
            })
            .collect()
    }

    const MODELS: [&str; 3] = ["sd", "flux1", "flux2"];

    #[test]
    fn original_keys_map_onto_diffusers_keys_and_shapes() {
        for model in MODELS {
            let got = mapped_original(model);
            let mut want = diffusers(model);
            // PyTorch's BatchNorm step counter is training state; BFL's ae.safetensors omits it.
            if model == "flux2" {
                assert_eq!(want.remove("bn.num_batches_tracked"), Some(vec![]));
            }
            let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
            let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
            assert!(
                extra.is_empty() && missing.is_empty(),
                "{model}: mapped but not in diffusers {extra:?}; in diffusers but not mapped \
                 {missing:?}"
            );
            for (k, s) in &want {
                assert_eq!(&got[k], s, "{model}: shape of {k}");
            }
        }
    }

    #[test]
    fn detect_reads_the_fixture_configs() {
        for model in MODELS {
            let json = config(model);
            let cfg = detect(&diffusers(model)).unwrap();
            let n = |f: &str| json[f].as_u64().unwrap() as usize;
            assert_eq!(cfg.latent_channels, n("latent_channels"), "{model}");
            let blocks: Vec<usize> = json["block_out_channels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(cfg.block_out_channels, blocks, "{model}");
            assert_eq!(
                cfg.encoder_layers_per_block,
                n("layers_per_block"),
                "{model}"
            );
            assert_eq!(cfg.decoder_layers_per_block, n("layers_per_block") + 1);
            assert_eq!(cfg.quant_conv, json["use_quant_conv"].as_bool().unwrap());
            assert_eq!(cfg.norm_groups, n("norm_num_groups"));
            let bn = (model == "flux2").then(|| 4 * n("latent_channels"));
            assert_eq!(cfg.batch_norm, bn, "{model}");
            assert!(cfg.has_encoder && cfg.has_decoder);
            check_config(&cfg, &json).unwrap_or_else(|e| panic!("{model}: {e}"));
            // The original layout, once mapped, describes the same model.
            assert_eq!(detect(&mapped_original(model)).unwrap(), cfg, "{model}");
        }
    }

    #[test]
    fn check_config_names_the_disagreeing_field() {
        let cfg = detect(&diffusers("sd")).unwrap();
        let cases: [(&str, serde_json::Value); 6] = [
            ("block_out_channels", serde_json::json!([32, 64, 64, 128])),
            ("latent_channels", serde_json::json!(16)),
            ("layers_per_block", serde_json::json!(3)),
            ("use_quant_conv", serde_json::json!(false)),
            ("use_post_quant_conv", serde_json::json!(false)),
            ("norm_num_groups", serde_json::json!(24)),
        ];
        for (field, value) in cases {
            let mut json = config("sd");
            json[field] = value.clone();
            let err = check_config(&cfg, &json).unwrap_err();
            assert!(
                err.contains(field) && err.contains(&value.to_string().replace(',', ", ")),
                "{field}: {err}"
            );
            assert!(!err.contains('\n'));
        }
        let mut json = config("sd");
        json["layers_per_block"] = serde_json::json!("two");
        assert!(check_config(&cfg, &json)
            .unwrap_err()
            .contains("layers_per_block"));
        // FLUX.2's batch norm must match its patch size.
        let f2 = detect(&diffusers("flux2")).unwrap();
        let mut json = config("flux2");
        json["patch_size"] = serde_json::json!([1, 1]);
        assert!(check_config(&f2, &json).unwrap_err().contains("patch_size"));
        assert!(check_config(&f2, &config("flux1")).is_err());
    }

    #[test]
    fn detect_errors_name_the_key() {
        let base = diffusers("sd");
        let mut s = base.clone();
        s.insert("decoder.conv_in.weight".into(), vec![64, 5, 3, 3]);
        assert!(detect(&s).unwrap_err().contains("decoder.conv_in.weight"));
        let mut s = base.clone();
        s.remove("post_quant_conv.weight");
        assert!(detect(&s).unwrap_err().contains("post_quant_conv.weight"));
        let mut s = base.clone();
        s.insert(
            "decoder.up_blocks.1.resnets.2.conv2.weight".into(),
            vec![48, 64, 3, 3],
        );
        assert!(detect(&s)
            .unwrap_err()
            .contains("decoder.up_blocks.1.resnets.2.conv2.weight"));
        let mut s = base.clone();
        s.retain(|k, _| !k.starts_with("encoder.down_blocks.2.resnets.1."));
        assert!(detect(&s).unwrap_err().contains("encoder.down_blocks.2"));
        let mut s = base.clone();
        s.insert("encoder.conv_out.weight".into(), vec![7, 64, 3, 3]);
        assert!(detect(&s).unwrap_err().contains("encoder.conv_out.weight"));
        assert!(detect(&BTreeMap::new()).is_err());
    }

    #[test]
    fn detect_accepts_decoder_or_encoder_alone() {
        let base = diffusers("flux1");
        let full = detect(&base).unwrap();
        let dec: BTreeMap<_, _> = base
            .iter()
            .filter(|(k, _)| k.starts_with("decoder.") || k.starts_with("post_quant_conv."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let d = detect(&dec).unwrap();
        assert!(d.has_decoder && !d.has_encoder);
        assert_eq!(d.block_out_channels, full.block_out_channels);
        assert_eq!(d.latent_channels, 16);
        check_config(&d, &config("flux1")).unwrap();
        let enc: BTreeMap<_, _> = base
            .iter()
            .filter(|(k, _)| k.starts_with("encoder."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let e = detect(&enc).unwrap();
        assert!(e.has_encoder && !e.has_decoder);
        assert_eq!(e.encoder_layers_per_block, 2);
        check_config(&e, &config("flux1")).unwrap();
    }

    #[test]
    fn full_checkpoint_prefix_and_foreign_keys() {
        let p = |keys: &[&str]| PLACEMENT.find(keys.iter().copied());
        let sd = [
            "model.diffusion_model.input_blocks.0.0.weight",
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
            "first_stage_model.decoder.conv_in.weight",
        ];
        assert_eq!(p(&sd).as_deref(), Ok(FULL_CHECKPOINT_PREFIX));
        assert_eq!(p(&["encoder.conv_in.weight"]).as_deref(), Ok(""));
        // A VAE under a prefix it is not known under is not found; two are refused.
        assert_eq!(p(&["vae.decoder.conv_in.weight"]), Err(PrefixError::Absent));
        assert_eq!(
            p(&["decoder.conv_in.weight", sd[2]]),
            Err(PrefixError::Several(vec![
                String::new(),
                FULL_CHECKPOINT_PREFIX.into()
            ]))
        );
        assert!(is_vae_key("decoder.conv_in.weight"));
        assert!(!is_vae_key("loss.logvar"));
        assert!(!is_vae_key("decoder"));
        assert_eq!(original_to_diffusers("model.diffusion_model.x", 4), None);
        let keys = [
            "loss.logvar",
            "decoder.up.1.block.0.conv1.weight",
            "decoder.up.0.block.0.conv1.weight",
            "decoder.mid.attn_1.proj_out.weight",
        ];
        let m = map_original_keys(&keys, FULL_CHECKPOINT_PREFIX).unwrap();
        let got: Vec<(&str, &str, bool)> = m
            .iter()
            .map(|(k, m)| (*k, m.key.as_str(), m.squeeze_1x1))
            .collect();
        assert_eq!(
            got,
            [
                (keys[1], "decoder.up_blocks.0.resnets.0.conv1.weight", false),
                (keys[2], "decoder.up_blocks.1.resnets.0.conv1.weight", false),
                (
                    keys[3],
                    "decoder.mid_block.attentions.0.to_out.0.weight",
                    true
                ),
            ]
        );
        // Errors name the file's key, prefix and all.
        let e = map_original_keys(&["decoder.up.0.x.weight"], FULL_CHECKPOINT_PREFIX).unwrap_err();
        assert!(
            e.contains("\"first_stage_model.decoder.up.0.x.weight\""),
            "{e}"
        );
    }

    #[test]
    fn mapping_rules() {
        let m = |k: &str| original_to_diffusers(k, 4).map(|m| (m.key, m.squeeze_1x1));
        let s = |k: &str, q: bool| Some((k.to_string(), q));
        assert_eq!(
            m("encoder.down.0.block.1.conv1.weight"),
            s("encoder.down_blocks.0.resnets.1.conv1.weight", false)
        );
        assert_eq!(
            m("encoder.down.0.downsample.conv.weight"),
            s("encoder.down_blocks.0.downsamplers.0.conv.weight", false)
        );
        assert_eq!(
            m("decoder.up.3.block.0.nin_shortcut.weight"),
            s("decoder.up_blocks.0.resnets.0.conv_shortcut.weight", false)
        );
        assert_eq!(
            m("decoder.up.1.upsample.conv.bias"),
            s("decoder.up_blocks.2.upsamplers.0.conv.bias", false)
        );
        assert_eq!(
            m("decoder.mid.block_2.norm1.weight"),
            s("decoder.mid_block.resnets.1.norm1.weight", false)
        );
        assert_eq!(
            m("encoder.mid.attn_1.q.weight"),
            s("encoder.mid_block.attentions.0.to_q.weight", true)
        );
        assert_eq!(
            m("encoder.mid.attn_1.q.bias"),
            s("encoder.mid_block.attentions.0.to_q.bias", false)
        );
        assert_eq!(
            m("decoder.mid.attn_1.norm.weight"),
            s("decoder.mid_block.attentions.0.group_norm.weight", false)
        );
        assert_eq!(
            m("encoder.norm_out.bias"),
            s("encoder.conv_norm_out.bias", false)
        );
        assert_eq!(m("bn.running_var"), s("bn.running_var", false));
        for bad in [
            "decoder.up.4.block.0.conv1.weight",
            "decoder.up.01.block.0.conv1.weight",
            "decoder.mid.block_0.conv1.weight",
            "decoder.down.0.block.0.conv1.weight",
            "encoder.up.0.block.0.conv1.weight",
            "encoder.mid.attn_1.x.weight",
            "decoder.conv_in.scale",
            "decoder.up_blocks.0.resnets.0.conv1.weight",
            "quant_conv",
        ] {
            assert_eq!(m(bad), None, "{bad}");
        }
        assert_eq!(
            map_original_keys(
                &["decoder.conv_in.weight", "decoder.up_blocks.0.x.weight"],
                ""
            )
            .unwrap_err(),
            "tensor \"decoder.up_blocks.0.x.weight\" is not part of the original VAE layout"
        );
    }
}
