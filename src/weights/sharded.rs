//! [`Sharded`]: a model split into several safetensors files with an index, as diffusers and
//! transformers save large models, opened as one source.
//!
//! The index (`diffusion_pytorch_model.safetensors.index.json`) is
//! `{"metadata": {...}, "weight_map": {key: shard file name}}`. It is untrusted input like the
//! shards: it is size-capped, each shard must be a plain file name in the index's folder (no
//! path separators, `..` or absolute paths), and the index and the shards must agree exactly
//! (every listed key in the shard the index names, no key in two shards, no shard key the index
//! does not list). Each failure is one line naming the index or the shard and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::{io_error, TensorInfo, TensorSource, WeightError, WeightFile, WeightFormat};
use crate::tensor::Tensor;

/// An index lists each key once with a short name: a few hundred KB for the largest models.
const MAX_INDEX_BYTES: u64 = 16 << 20;

/// Each shard is an open file; published models have a few dozen.
const MAX_SHARDS: usize = 1024;

/// The shards of one model behind its index: every tensor listed under its key, read from the
/// shard that holds it.
pub struct Sharded {
    index: PathBuf,
    shards: Vec<WeightFile>,
    tensors: BTreeMap<String, TensorInfo>,
    /// Which shard holds each key.
    shard_of: BTreeMap<String, usize>,
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: WeightMap,
}

/// The `weight_map`, in file order, refusing a key listed twice (a JSON map would silently keep
/// the last).
struct WeightMap(Vec<(String, String)>);

impl<'de> Deserialize<'de> for WeightMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WeightMap, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WeightMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map from tensor keys to shard file names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<WeightMap, A::Error> {
                let mut seen = std::collections::BTreeSet::new();
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!(
                            "tensor \"{k}\" is listed twice"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(WeightMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Sharded {
    /// Reads the index at `path`, opens every shard it names (their headers only) and checks
    /// that they hold exactly the tensors the index says.
    pub fn open(path: &Path) -> Result<Sharded, WeightError> {
        let bad = |reason: String| WeightError::Shards {
            path: path.to_path_buf(),
            reason: reason.replace(['\n', '\r'], " "),
        };
        let bytes =
            crate::limits::read_regular(path, MAX_INDEX_BYTES).map_err(|e| io_error(path, e))?;
        let IndexFile { weight_map } = serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!(
                "not a shard index ({{\"weight_map\": {{key: file}}}}): {e}"
            ))
        })?;
        if weight_map.0.is_empty() {
            return Err(bad("the weight_map lists no tensors".into()));
        }
        let dir = path.parent().unwrap_or(Path::new(""));
        // Shards by name, in name order (the order they are opened and checked in).
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (key, name) in &weight_map.0 {
            if !is_plain_file_name(name) {
                return Err(bad(format!(
                    "tensor \"{key}\" is mapped to {name:?}, which is not a file name in the \
                     index's folder"
                )));
            }
            names.insert(name, 0);
        }
        if names.len() > MAX_SHARDS {
            return Err(bad(format!(
                "{} shards, more than the {MAX_SHARDS} allowed",
                names.len()
            )));
        }
        let mut shards = Vec::with_capacity(names.len());
        for (i, (name, slot)) in names.iter_mut().enumerate() {
            *slot = i;
            let shard = WeightFile::open(&dir.join(name)).map_err(|e| {
                let key = weight_map.0.iter().find(|(_, n)| n == name).map(|(k, _)| k);
                bad(format!(
                    "shard \"{name}\" (holding \"{}\") cannot be used: {e}",
                    key.map_or("", String::as_str)
                ))
            })?;
            shards.push(shard);
        }
        let shard_of: BTreeMap<String, usize> = weight_map
            .0
            .iter()
            .map(|(k, n)| (k.clone(), names[n.as_str()]))
            .collect();
        let shard_names: Vec<&str> = names.keys().copied().collect();
        // Every key of every shard where the index says it is, and nowhere else.
        let mut tensors = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for (key, info) in shard.tensors() {
                match shard_of.get(key) {
                    None => {
                        return Err(bad(format!(
                            "shard \"{}\" holds tensor \"{key}\", which the index does not list",
                            shard_names[i]
                        )))
                    }
                    Some(&j) if j != i => {
                        return Err(bad(format!(
                            "tensor \"{key}\" is in shard \"{}\" and in shard \"{}\" (the \
                             index puts it in the latter)",
                            shard_names[i], shard_names[j]
                        )))
                    }
                    Some(_) => {
                        tensors.insert(key.clone(), info.clone());
                    }
                }
            }
        }
        if let Some((key, &i)) = shard_of.iter().find(|(k, _)| !tensors.contains_key(*k)) {
            return Err(bad(format!(
                "the index puts tensor \"{key}\" in shard \"{}\", which has no such tensor",
                shard_names[i]
            )));
        }
        Ok(Sharded {
            index: path.to_path_buf(),
            shards,
            tensors,
            shard_of,
        })
    }
}

/// A name that stays in the folder it is joined to: one normal path component, no separator of
/// any platform.
fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(parts.next(), Some(Component::Normal(_)))
        && parts.next().is_none()
        && !name.contains(['/', '\\', '\0'])
        && name != ".."
        && name != "."
}

impl TensorSource for Sharded {
    fn path(&self) -> &Path {
        &self.index
    }

    /// The shards' format (the first's, should they differ).
    fn format(&self) -> WeightFormat {
        self.shards
            .first()
            .map_or(WeightFormat::Safetensors, |s| s.format())
    }

    fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// Errors name the shard the tensor is in.
    fn read(&self, key: &str) -> Result<Tensor, WeightError> {
        match self.shard_of.get(key) {
            Some(&i) => self.shards[i].read(key),
            None => Err(WeightError::MissingKey {
                path: self.index.clone(),
                key: key.to_string(),
            }),
        }
    }

    fn in_place(&self, key: &str) -> Option<super::Spilled> {
        self.shards[*self.shard_of.get(key)?].in_place(key)
    }
}
