//! Reading a UNet: its layout found from the file's key index, its architecture read off the
//! shapes and checked against the `config.json` beside it, and only then its tensors read, under
//! diffusers' names.

use super::config::{self, UnetConfig};
use super::keys::Layout;
use super::tensors;
use crate::models::{config_beside, ModelError, ModelOptions};
use crate::weights::{TensorSource, Weights};
use std::collections::BTreeMap;
use std::path::Path;

/// The UNet's tensors of `source` under diffusers' names, and its architecture. Shapes first,
/// from the index: a wrong file, missing or extra tensors and a disagreeing config.json are
/// refused before any tensor is read, and a full checkpoint's other models never are. With
/// `o.ema`, the single-file checkpoint's EMA copy is read instead of the model's tensors.
pub fn load(
    source: &dyn TensorSource,
    o: &ModelOptions,
) -> Result<(Weights, UnetConfig), ModelError> {
    let (layout, sources, wanted) = locate(source, o)?;
    let index = source.tensors();
    let shapes: BTreeMap<String, Vec<usize>> = sources
        .iter()
        .map(|(d, f)| (d.clone(), index[f].shape.clone()))
        .collect();
    let cfg = configure(&shapes, source.path(), &|r| {
        in_file_names(r, &layout, &sources)
    })?;
    Ok((source.read_spilling(wanted)?, cfg))
}

/// The tensors [`load`] reads: diffusers name → file key (the EMA copy's with `o.ema`).
pub fn names(
    source: &dyn TensorSource,
    o: &ModelOptions,
) -> Result<Vec<(String, String)>, ModelError> {
    Ok(locate(source, o)?.2.into_iter().collect())
}

/// The layout, the model's tensors (diffusers name → file key) and the ones to read.
#[allow(clippy::type_complexity)]
fn locate(
    source: &dyn TensorSource,
    o: &ModelOptions,
) -> Result<(Layout, BTreeMap<String, String>, BTreeMap<String, String>), ModelError> {
    let wrong = |reason: String| ModelError::WrongModel {
        file: source.path().display().to_string(),
        reason,
    };
    let index = source.tensors();
    let layout = Layout::find(index).map_err(wrong)?;
    let sources = layout.sources(index).map_err(wrong)?;
    let wanted = match o.ema {
        true => layout.ema_sources(&sources, index).map_err(wrong)?,
        false => sources.clone(),
    };
    Ok((layout, sources, wanted))
}

/// The architecture of weights [`load`] read (diffusers names), with the config.json beside
/// their file: what the builder declares the graph from.
pub fn config_of(weights: &Weights) -> Result<UnetConfig, ModelError> {
    configure(&weights.shapes(), &weights.path, &|r| r)
}

/// Sizes from `shapes` (diffusers names; `rename` puts a message about them in the file's
/// names), the UNet config.json beside `path` applied (a
/// config.json of another model, a VAE's or a pipeline's, is passed over), heads by the
/// family's convention when no config gives them, and the tensors checked against the result.
fn configure(
    shapes: &BTreeMap<String, Vec<usize>>,
    path: &Path,
    rename: &dyn Fn(String) -> String,
) -> Result<UnetConfig, ModelError> {
    let file = path.display().to_string();
    let wrong = |reason: String| ModelError::WrongModel {
        file: file.clone(),
        reason: rename(reason),
    };
    let mut cfg = config::read_sizes(shapes).map_err(wrong)?;
    if let Some((at, json)) = config_beside(path)? {
        if is_unet_config(&json) {
            config::apply_config(&mut cfg, &json).map_err(|r| ModelError::WrongModel {
                file: at,
                reason: format!("disagrees with {file}: {r}"),
            })?;
        }
    }
    if cfg.heads.is_empty() {
        cfg.heads = config::conventional_heads(&cfg).map_err(wrong)?;
    }
    config::check_groups(&cfg).map_err(wrong)?;
    tensors::check(&cfg, shapes).map_err(|m| wrong(m.to_string()))?;
    Ok(cfg)
}

/// Whether a config.json describes a UNet: diffusers' class name, or (without one) a UNet's
/// fields.
fn is_unet_config(json: &serde_json::Value) -> bool {
    match json.get("_class_name").and_then(|v| v.as_str()) {
        Some(name) => name == "UNet2DConditionModel",
        None => json.get("down_block_types").is_some() && json.get("cross_attention_dim").is_some(),
    }
}

/// A message about the tensors with the file's own names where the file has them: an original
/// layout's tensors are read and checked under their diffusers names, which the message quotes.
/// A quoted name the file lacks (a missing tensor) stays diffusers' and the message says so.
fn in_file_names(reason: String, layout: &Layout, sources: &BTreeMap<String, String>) -> String {
    let Layout::Original { prefix } = layout else {
        return reason;
    };
    let mut untranslated = false;
    let renamed: Vec<String> = reason
        .split('"')
        .enumerate()
        .map(|(i, part)| match (i % 2, sources.get(part)) {
            (1, Some(file_key)) => file_key.clone(),
            (1, None) => {
                untranslated |= part.contains('.') && !part.starts_with(prefix.as_str());
                part.to_string()
            }
            _ => part.to_string(),
        })
        .collect();
    let mut out = renamed.join("\"");
    if untranslated {
        out.push_str(&format!(
            " (diffusers names; the UNet here is in the original single-file layout under \"{prefix}\")"
        ));
    }
    out
}
