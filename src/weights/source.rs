//! [`TensorSource`]: what every provider of tensors offers a model (a file, a folder of shards,
//! a view under a prefix, an overlay), and [`open`], which turns a `--weights` path into one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Sharded, StoredDtype, TensorInfo, WeightError, WeightFile, WeightFormat, Weights};
use crate::tensor::Tensor;

/// Named tensors, listed up front and read one at a time in their stored dtype (f32 or f16;
/// bf16 widened to f32). A model reads its weights through this and nothing else, so whatever
/// holds them (one file, shards, a prefix of a whole checkpoint, an overlay that patches them)
/// is the same to it.
pub trait TensorSource {
    /// The file messages name and the folder a `config.json` is looked for in (for shards, the
    /// index; for a view, the file it views).
    fn path(&self) -> &Path;
    fn format(&self) -> WeightFormat;
    /// Every tensor, by the source's key, with its stored dtype and shape; nothing is read.
    fn tensors(&self) -> &BTreeMap<String, TensorInfo>;
    /// The tensor `key`, read now. Errors are one line naming the file the data is in and the
    /// key as that file spells it (a view's prefix included).
    fn read(&self, key: &str) -> Result<Tensor, WeightError>;
}

impl<'s> dyn TensorSource + 's {
    /// The tensors under `prefix`, with the prefix stripped (see [`super::Under`]).
    pub fn under<'a>(&'a self, prefix: &str) -> super::Under<'a> {
        super::Under::new(self, prefix)
    }

    /// Every float tensor under its key (integer tensors, training counters and buffers, are
    /// left out).
    pub fn read_all(&self) -> Result<Weights, WeightError> {
        let mut tensors = BTreeMap::new();
        for (k, info) in self.tensors() {
            if !matches!(info.dtype, StoredDtype::Int(_)) {
                tensors.insert(k.clone(), self.read(k)?);
            }
        }
        Ok(Weights::new(self.path(), self.format(), tensors))
    }

    /// The tensors `wanted` names, as `(model key, source key)` pairs, under the model's keys.
    pub fn read_as(
        &self,
        wanted: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Weights, WeightError> {
        let mut tensors = BTreeMap::new();
        for (model_key, key) in wanted {
            tensors.insert(model_key, self.read(&key)?);
        }
        Ok(Weights::new(self.path(), self.format(), tensors))
    }
}

/// What a sharded model's index is called: `<file>.index.json` beside its shards
/// (`diffusion_pytorch_model.safetensors.index.json`, `model.safetensors.index.json`).
pub const INDEX_SUFFIX: &str = ".index.json";

/// Opens the weights at `path`: a shard index (a name ending in `.index.json`) with its shards
/// as one source, else one safetensors or `.pth` file. A `path` that does not exist but has an
/// index beside it (`x.safetensors` and `x.safetensors.index.json`) opens the index, so a
/// family that looks for a file by name also finds the sharded form of it.
pub fn open(path: &Path) -> Result<Box<dyn TensorSource>, WeightError> {
    if is_index(path) {
        return Ok(Box::new(Sharded::open(path)?));
    }
    if !path.exists() {
        let index = index_beside(path);
        if index.is_file() {
            return Ok(Box::new(Sharded::open(&index)?));
        }
    }
    Ok(Box::new(WeightFile::open(path)?))
}

fn is_index(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(INDEX_SUFFIX))
}

fn index_beside(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(INDEX_SUFFIX);
    PathBuf::from(name)
}

/// The name of the weights without folder or extension, as package metadata records it: a
/// shard index's is the name of the file it stands for (`model.safetensors.index.json` →
/// `model`), so sharded and whole weights give the same package.
pub fn stem(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy();
    let name = name.strip_suffix(INDEX_SUFFIX).unwrap_or(&name);
    Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
}
