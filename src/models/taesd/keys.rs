//! The TAESD family's key layouts, normalised to upstream keys.
//!
//! Upstream TAESD names decoder tensors by `nn.Sequential` index (`1.weight`,
//! `3.conv.0.weight`); diffusers' `AutoencoderTiny` drops the parameter-free Clamp at index 0,
//! so its `decoder.layers.N` is upstream index `N + 1`; its encoder keeps upstream's indices
//! (`encoder.layers.N` is `N`). Full-autoencoder files carry both halves: the half not being
//! built is dropped here. Nothing here touches tensor data, so it works whatever container or
//! dtype the weights come in.

use std::fmt;
use std::path::Path;

use crate::models::{ModelError, Part};
use crate::weights::quoted;

/// Naming convention a file uses (the model reads its tensors under upstream keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// `nn.Sequential` index + module path: `1.weight`, `3.conv.0.weight` (also `decoder.1.weight`).
    Upstream,
    /// `decoder.layers.{i-1}.…` / `encoder.layers.{i}.…`, as diffusers' `AutoencoderTiny`
    /// names them.
    Diffusers,
}

impl fmt::Display for KeyStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyStyle::Upstream => "upstream",
            KeyStyle::Diffusers => "diffusers",
        })
    }
}

/// How one key was read.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    /// A tensor of the part being built: its style and its upstream key.
    Kept(Style, String),
    /// A tensor of the autoencoder's other half.
    Other,
    Unknown,
}

/// Finer than [`KeyStyle`]: bare and `decoder.`-prefixed upstream keys are both upstream, but a
/// file mixing them is ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Style {
    Bare,
    Prefixed,
    Diffusers,
}

/// A module index as PyTorch prints it: decimal without leading zeros, so that two different
/// keys can never normalise to the same one.
fn parse_index(s: &str) -> Option<u64> {
    let ok = !s.is_empty()
        && s.len() <= 9
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if ok {
        s.parse().ok()
    } else {
        None
    }
}

/// `"<index>.<module path>"` → (index, module path); the path is dot-separated identifiers.
fn split_index(s: &str) -> Option<(u64, &str)> {
    let (idx, rest) = s.split_once('.')?;
    let idx = parse_index(idx)?;
    let path_ok = rest
        .split('.')
        .all(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    path_ok.then_some((idx, rest))
}

fn classify(key: &str, part: Part) -> Class {
    for (half, name) in [(Part::DECODER, "decoder"), (Part::ENCODER, "encoder")] {
        let Some(r) = key.strip_prefix(name).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let (style, r) = match r.strip_prefix("layers.") {
            Some(r) => (Style::Diffusers, r),
            None => (Style::Prefixed, r),
        };
        let Some((i, rest)) = split_index(r) else {
            return Class::Unknown;
        };
        if half != part {
            return Class::Other;
        }
        // diffusers' decoder drops upstream's parameter-free Clamp at index 0.
        let shift = u64::from(style == Style::Diffusers && part == Part::DECODER);
        return Class::Kept(style, format!("{}.{rest}", i + shift));
    }
    match split_index(key) {
        Some(_) => Class::Kept(Style::Bare, key.to_string()),
        None => Class::Unknown,
    }
}

/// How many offending keys an error lists.
const SHOWN: usize = 5;

/// The one-line error for a file whose keys are not a TAESD layout.
fn wrong(path: &Path, reason: String) -> ModelError {
    ModelError::WrongModel {
        file: path.display().to_string(),
        reason,
    }
}

/// Detects the key style of `keys` (all tensor names in the file) and returns, sorted by
/// upstream key, `(index into keys, upstream key)` for every tensor of `part`.
pub fn normalise(
    path: &Path,
    keys: &[String],
    part: Part,
) -> Result<(KeyStyle, Vec<(usize, String)>), ModelError> {
    let classes: Vec<Class> = keys.iter().map(|k| classify(k, part)).collect();
    let like = match part {
        Part::DECODER => "\"decoder.layers.0.weight\"",
        _ => "\"encoder.layers.0.weight\"",
    };

    let mut unknown: Vec<String> = keys
        .iter()
        .zip(&classes)
        .filter(|(_, c)| **c == Class::Unknown)
        .map(|(k, _)| k.clone())
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        unknown.truncate(SHOWN);
        return Err(wrong(
            path,
            format!(
                "unrecognised tensor keys ({}); expected upstream keys like \"1.weight\" or \
                 diffusers keys like {like}",
                quoted(&unknown)
            ),
        ));
    }

    // A couple of example keys per style seen, so a mixed-style error shows both sides.
    let mut examples: Vec<(Style, Vec<String>)> = Vec::new();
    let has_other = classes.contains(&Class::Other);
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    for key in sorted {
        if let Class::Kept(style, _) = classify(key, part) {
            match examples.iter_mut().find(|(s, _)| *s == style) {
                Some((_, v)) if v.len() < 2 => v.push(key.clone()),
                Some(_) => {}
                None => examples.push((style, vec![key.clone()])),
            }
        }
    }
    // Bare indices next to the other half's tensors could belong to either half.
    let bare_with_other = has_other && examples.iter().any(|(s, _)| *s == Style::Bare);
    if examples.len() > 1 || bare_with_other {
        let mut shown: Vec<String> = examples.into_iter().flat_map(|(_, v)| v).collect();
        if bare_with_other {
            let other = keys
                .iter()
                .zip(&classes)
                .filter(|(_, c)| **c == Class::Other);
            shown.extend(other.map(|(k, _)| k.clone()).min());
        }
        return Err(wrong(
            path,
            format!(
                "tensor keys mix naming styles ({}); expected only upstream keys like \
                 \"1.weight\" or only diffusers keys like {like}",
                quoted(&shown)
            ),
        ));
    }
    let style = match examples.first() {
        None => return Err(wrong(path, format!("no {part} tensors in file"))),
        Some((Style::Diffusers, _)) => KeyStyle::Diffusers,
        Some(_) => KeyStyle::Upstream,
    };

    let mut out: Vec<(usize, String)> = classes
        .into_iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            Class::Kept(_, up) => Some((i, up)),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    if let Some(w) = out.windows(2).find(|w| w[0].1 == w[1].1) {
        // Only reachable through duplicate names in the container itself.
        return Err(wrong(
            path,
            format!("tensor \"{}\" appears twice", keys[w[1].0]),
        ));
    }
    Ok((style, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(keys: &[&str]) -> Result<(KeyStyle, Vec<String>), ModelError> {
        let keys: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
        normalise_part(keys, Part::DECODER)
    }

    fn normalise_part(
        keys: Vec<String>,
        part: Part,
    ) -> Result<(KeyStyle, Vec<String>), ModelError> {
        normalise(Path::new("w.safetensors"), &keys, part)
            .map(|(s, v)| (s, v.into_iter().map(|(_, k)| k).collect()))
    }

    fn enc(keys: &[&str]) -> Result<(KeyStyle, Vec<String>), ModelError> {
        normalise_part(keys.iter().map(|s| s.to_string()).collect(), Part::ENCODER)
    }

    #[test]
    fn encoder_keys_keep_their_index_and_drop_the_decoder() {
        let (s, k) = enc(&[
            "encoder.layers.0.weight",
            "encoder.layers.14.bias",
            "decoder.layers.0.bias",
        ])
        .unwrap();
        assert_eq!(
            (s, k),
            (
                KeyStyle::Diffusers,
                vec!["0.weight".into(), "14.bias".into()]
            )
        );
        let (s, k) = enc(&["decoder.1.weight", "encoder.0.weight"]).unwrap();
        assert_eq!((s, k), (KeyStyle::Upstream, vec!["0.weight".into()]));
        // An upstream encoder file has bare indices.
        let (s, k) = enc(&["0.weight", "1.conv.0.weight"]).unwrap();
        assert_eq!(
            (s, k),
            (
                KeyStyle::Upstream,
                vec!["0.weight".into(), "1.conv.0.weight".into()]
            )
        );
        let e = enc(&["decoder.layers.0.weight"]).unwrap_err().to_string();
        assert_eq!(e, "w.safetensors: no encoder tensors in file");
        let e = enc(&["0.weight", "decoder.layers.0.weight"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mix naming styles") && e.contains("\"decoder.layers.0.weight\""),
            "{e}"
        );
    }

    #[test]
    fn diffusers_index_is_upstream_minus_one() {
        let (style, keys) =
            norm(&["decoder.layers.0.weight", "decoder.layers.2.pool.1.bias"]).unwrap();
        assert_eq!(style, KeyStyle::Diffusers);
        assert_eq!(keys, ["1.weight", "3.pool.1.bias"]);
    }

    #[test]
    fn upstream_bare_and_prefixed() {
        let (s, k) = norm(&["3.conv.0.weight", "1.weight"]).unwrap();
        assert_eq!(
            (s, k),
            (
                KeyStyle::Upstream,
                vec!["1.weight".into(), "3.conv.0.weight".into()]
            )
        );
        let (s, k) = norm(&["decoder.1.weight", "encoder.0.weight"]).unwrap();
        assert_eq!((s, k), (KeyStyle::Upstream, vec!["1.weight".into()]));
    }

    #[test]
    fn encoder_tensors_are_dropped() {
        let (s, k) = norm(&["encoder.layers.0.weight", "decoder.layers.0.bias"]).unwrap();
        assert_eq!((s, k), (KeyStyle::Diffusers, vec!["1.bias".into()]));
    }

    #[test]
    fn rejects_odd_keys() {
        for bad in [
            "weight",
            "01.weight",
            "1.",
            "1..weight",
            "decoder.layers.x.weight",
            "a.1.w",
        ] {
            let e = norm(&["1.weight", bad]).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "w.safetensors: unrecognised tensor keys (\"{bad}\"); expected upstream \
                     keys like \"1.weight\" or diffusers keys like \"decoder.layers.0.weight\""
                )
            );
        }
    }

    #[test]
    fn mixed_styles_name_both_sides() {
        let e = norm(&["1.weight", "decoder.layers.0.bias"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"1.weight\"") && e.contains("\"decoder.layers.0.bias\""),
            "{e}"
        );
        let e = norm(&["1.weight", "encoder.layers.0.weight"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"encoder.layers.0.weight\""), "{e}");
        assert!(norm(&["1.weight", "decoder.2.weight"]).is_err());
    }

    #[test]
    fn encoder_only_has_no_decoder() {
        let e = norm(&["encoder.layers.0.weight"]).unwrap_err().to_string();
        assert_eq!(e, "w.safetensors: no decoder tensors in file");
        let e = norm(&[]).unwrap_err().to_string();
        assert_eq!(e, "w.safetensors: no decoder tensors in file");
    }
}
