//! [`TensorSource`]: what every provider of tensors offers a model (a file, a folder of shards,
//! a view under a prefix, an overlay), and [`open`], which turns a `--weights` path into one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    Sharded, Spill, SpilledTensor, StoredDtype, TensorInfo, WeightError, WeightFile, WeightFormat,
    Weights,
};
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
    /// Where the tensor `key`'s values lie in a file exactly as [`read`](Self::read) gives
    /// them (an f32 or f16 tensor of a safetensors file), or lie there as stored before a
    /// change that reading them back applies ([`super::deferred`]: a patched tensor), so that
    /// a large model can keep a handle instead of a copy
    /// ([`read_spilling`](Self::read_spilling)); `None` when they do not (`.pth` storages,
    /// bf16).
    fn in_place(&self, _key: &str) -> Option<super::Spilled> {
        None
    }
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

/// Tensors of at least this many bytes are spilled by [`TensorSource::read_spilling`] (unless
/// `MLC_SPILL_MIN_BYTES` says otherwise): the norms and biases stay in memory, every matrix and
/// kernel of a UNet goes to the spill.
pub const SPILL_MIN_BYTES: usize = 1 << 16;

impl<'s> dyn TensorSource + 's {
    /// [`read_as`](Self::read_as) for a large model: of each tensor of at least
    /// [`SPILL_MIN_BYTES`] only a handle is kept (with its hash leaf and value check, computed
    /// as it is read): to the file it was read from when it lies there as it is read
    /// ([`in_place`](TensorSource::in_place)), else to a temporary file it is written to. The
    /// model's weights are never all in memory at once. Reading goes on while two threads hash
    /// and spill what was read (a few tensors in flight at most). A deferred handle (a patched
    /// tensor of the file) is not read at all: its change is applied as it is read back.
    pub fn read_spilling(
        &self,
        wanted: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Weights, WeightError> {
        self.read_spilling_from(wanted, spill_min_bytes())
    }

    /// [`read_spilling`](Self::read_spilling) of the tensors of at least `min` bytes.
    pub fn read_spilling_from(
        &self,
        wanted: impl IntoIterator<Item = (String, String)>,
        min: usize,
    ) -> Result<Weights, WeightError> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{mpsc, Mutex};
        let io = |source| WeightError::Spill {
            path: self.path().to_path_buf(),
            source,
        };
        let spill = Mutex::new(None::<Spill>);
        let spilled = Mutex::new(BTreeMap::new());
        let failed = Mutex::new(None::<std::io::Error>);
        let stop = AtomicBool::new(false);
        let mut weights = Weights::new(self.path(), self.format(), BTreeMap::new());
        type Read = (String, crate::tensor::Tensor, Option<super::Spilled>);
        let (send, receive) = mpsc::sync_channel::<Read>(2);
        let receive = Mutex::new(receive);
        let read = std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| loop {
                    let next = receive.lock().map(|r| r.recv());
                    let Ok(Ok((key, t, in_place))) = next else {
                        break;
                    };
                    let put = |spill: &mut Option<Spill>| {
                        let spill = match spill {
                            Some(s) => s,
                            None => spill.insert(Spill::new()?),
                        };
                        spill.put(&t)
                    };
                    let (leaf, values) = SpilledTensor::summarize(&key, &t);
                    let data = match (in_place, spill.lock()) {
                        (Some(data), _) => Ok(data),
                        (None, Ok(mut s)) => put(&mut s),
                        (None, Err(_)) => break,
                    };
                    match data {
                        Ok(data) => {
                            let s = SpilledTensor::new(data, leaf, values);
                            spilled
                                .lock()
                                .expect("no thread panics holding it")
                                .insert(key, s);
                        }
                        // Recorded, and the channel still drained: the reader stops at its next
                        // tensor, never blocked on a full channel.
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            failed
                                .lock()
                                .expect("no thread panics holding it")
                                .get_or_insert(e);
                        }
                    }
                });
            }
            for (model_key, key) in wanted {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let in_place = self.in_place(&key);
                // A deferred handle is not read now: its change is applied, and its values
                // hashed and checked, when it is read back (see `super::deferred`).
                if let Some(h) = in_place.as_ref().filter(|h| h.is_deferred()) {
                    if h.len().saturating_mul(h.dtype().byte_size()) >= min {
                        let s = SpilledTensor::deferred(h.clone().keyed(&model_key));
                        spilled
                            .lock()
                            .expect("no thread panics holding it")
                            .insert(model_key, s);
                        continue;
                    }
                }
                let t = self.read(&key)?;
                let in_place = in_place.filter(|h| !h.is_deferred());
                if t.len().saturating_mul(t.dtype().byte_size()) < min {
                    weights.tensors.insert(model_key, t);
                } else if send.send((model_key, t, in_place)).is_err() {
                    break;
                }
            }
            drop(send);
            Ok(())
        });
        read?;
        if let Some(e) = failed.into_inner().expect("the threads have ended") {
            return Err(io(e));
        }
        weights.spilled = spilled.into_inner().expect("the threads have ended");
        Ok(weights)
    }
}

/// [`SPILL_MIN_BYTES`], or the bytes `MLC_SPILL_MIN_BYTES` gives (tests spill tiny models).
fn spill_min_bytes() -> usize {
    std::env::var("MLC_SPILL_MIN_BYTES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(SPILL_MIN_BYTES)
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
