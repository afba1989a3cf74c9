//! Weights as a generic tensor store: name → tensor in its stored dtype, read on demand.
//!
//! A model reads its tensors through a [`TensorSource`] ([`source`]), whatever holds them:
//! * [`WeightFile`] ([`file`]): one safetensors file or `torch.save` zip checkpoint (the format
//!   is taken from the content, not the extension), listing every tensor's name, stored dtype
//!   and shape without reading any data, and reading one tensor at a time when asked;
//! * [`Sharded`] ([`sharded`]): a `*.safetensors.index.json` and the shards it names, as one;
//! * [`Under`] ([`under`]): the part of a source under a key prefix, the prefix stripped (a
//!   model of a single-file checkpoint); [`KeyPlacement`] ([`prefix`]) finds which prefix;
//! * [`Patched`] ([`patch`]): a source with an [`Overlay`] that changes tensors as they are read.
//!
//! [`open`] turns a `--weights` path into a source. f32 stays f32 and f16 stays f16; bf16,
//! which the IR has no type for, is widened to f32 (exactly). Integer and bool tensors
//! (training counters such as `num_batches_tracked`) are listed but never read.
//!
//! Nothing here knows any model's key names: a model family maps its own layouts (TAESD's
//! upstream and diffusers indices, the VAEs' original and diffusers names) onto the names its
//! builder uses, and collects the tensors it needs into a [`Weights`].
//!
//! What is read when:
//! * safetensors: the header is read and checked at open (the same checks the `safetensors`
//!   crate makes on a whole-file buffer); each tensor's bytes are then read from the file when
//!   the tensor is, so tensors nobody asks for (the other half of an autoencoder) never are.
//! * `.pth`: the zip directory and the pickle are read at open; each tensor's storage entry is
//!   read (and CRC-checked) from the archive when the tensor is, then the tensor's view is
//!   gathered out of it.
//!
//! Files are untrusted input: every failure is a [`WeightError`] that names the file and, where
//! there is one, the tensor key and the shapes involved; nothing in here panics on bad bytes, and
//! the `.pth` pickle is interpreted by a small VM that only knows the handful of globals a
//! `state_dict` needs (it never executes anything). Everything a file makes the readers allocate
//! (the pickle and its objects, storages, decoded tensors) is charged to one [`Budget`](crate::limits::Budget) per file
//! (see [`crate::limits`]).

pub mod check;
mod decode;
pub mod deferred;
pub mod file;
pub mod patch;
pub mod prefix;
mod pth;
mod safetensors;
pub mod sharded;
pub mod source;
pub mod spill;
pub mod under;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::tensor::{Tensor, TensorData};

pub(crate) use decode::{alloc_error, Decoded, FloatKind};
pub(crate) use file::Bytes;
pub use file::WeightFile;
pub use patch::{Overlay, Patched};
pub use prefix::{KeyPlacement, PrefixError};
pub use sharded::Sharded;
pub use source::{open, stem, TensorSource};
pub use spill::{Spill, Spilled};
pub use under::Under;

/// Container format of a weight file, detected from its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Safetensors,
    /// A `torch.save` zip archive (PyTorch 1.6 and newer).
    Pth,
}

/// Element type of a tensor as the file stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    /// Read as f32 (exact): the IR has no bf16.
    BF16,
    /// Integers and bools, by the file's name for the type: listed, never read.
    Int(String),
    /// Anything else (f64, complex, fp8): listed; reading it is an error naming the key.
    Unsupported(String),
}

impl StoredDtype {
    /// Whether [`TensorSource::read`] can read it.
    pub fn is_float(&self) -> bool {
        matches!(
            self,
            StoredDtype::F32 | StoredDtype::F16 | StoredDtype::BF16
        )
    }
}

/// What the file says about one tensor, known without reading its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: StoredDtype,
    pub shape: Vec<usize>,
}

/// Tensors a model has read, under the model's own names, each in its stored dtype (f32 or
/// f16): what [`crate::models::Model::build`] declares the graph from. A large model's large
/// tensors are `spilled` instead ([`TensorSource::read_spilling`]): set aside in a temporary
/// file, each key in one of the two maps.
#[derive(Debug, Clone)]
pub struct Weights {
    pub path: PathBuf,
    pub format: WeightFormat,
    pub tensors: BTreeMap<String, Tensor>,
    pub spilled: BTreeMap<String, SpilledTensor>,
}

/// A tensor in a spill file, with what the build needs of its values computed as it was read
/// (its leaf of [`Weights::content_sha256`] and its [`check::Values`]), so they are not read back
/// for that; or a deferred handle ([`deferred`]), whose values are computed, and summarised,
/// when it is first read back.
#[derive(Debug, Clone)]
pub struct SpilledTensor {
    pub data: Spilled,
    /// None for a deferred handle: its own first read takes it.
    known: Option<deferred::Summary>,
}

impl SpilledTensor {
    /// What a spilled tensor keeps of `t`, read under the model's `key`: its hash leaf and
    /// value summary.
    pub fn summarize(key: &str, t: &Tensor) -> deferred::Summary {
        let values = check::Values::of(t);
        (leaf_sha256(key, t, values.has_nan()), values)
    }

    pub fn new(data: Spilled, leaf: [u8; 32], values: check::Values) -> SpilledTensor {
        SpilledTensor {
            data,
            known: Some((leaf, values)),
        }
    }

    /// A deferred handle, summarised when it is first read back.
    pub fn deferred(data: Spilled) -> SpilledTensor {
        SpilledTensor { data, known: None }
    }

    /// Its summary: as read, or taken by the first read back of a deferred handle; None when
    /// that has not happened yet.
    fn summary(&self) -> Option<deferred::Summary> {
        self.known.or_else(|| self.data.summary_taken())
    }
}

/// What the weights hash and the value check need of each tensor, kept when the tensors leave
/// for the graph: its hash leaf and value summary, or the deferred handle that will have them
/// once the package writer has read it. [`Digest::sha256`] reads those nobody has.
#[derive(Clone)]
pub struct Digest {
    path: PathBuf,
    /// In key order.
    parts: Vec<(String, Part)>,
}

#[derive(Clone)]
enum Part {
    Known(deferred::Summary),
    Deferred(Spilled),
}

impl Digest {
    /// Refuses weights a package cannot hold ([`check::check_weights`]) among the tensors
    /// whose values are known: all but deferred handles not read yet, which are checked when
    /// they are (by [`Digest::sha256`] at the latest).
    pub fn check(&self, fp16: bool) -> Result<(), check::WeightCheckError> {
        let path = self.path.display().to_string();
        for (key, part) in &self.parts {
            let values = match part {
                Part::Known((_, v)) => Some(*v),
                Part::Deferred(s) => s.summary_taken().map(|(_, v)| v),
            };
            if let Some(values) = values {
                values.check(&path, key, fp16)?;
            }
        }
        Ok(())
    }

    /// The weights' [`Weights::content_sha256`]. Deferred handles not read yet are read now
    /// (on all cores); [`Digest::check`] then checks every tensor.
    pub fn sha256(&self) -> Result<String, DigestError> {
        let pending: Vec<&Spilled> = self
            .parts
            .iter()
            .filter_map(|(_, p)| match p {
                Part::Deferred(s) if s.summary_taken().is_none() => Some(s),
                _ => None,
            })
            .collect();
        let read = crate::parallel::parallel_map(
            &pending,
            |s| s.len(),
            |s| s.summary().map(|r| r.map(|_| ())),
        );
        for r in read.into_iter().flatten() {
            r.map_err(|e| match deferred::is_change_failure(&e) {
                true => DigestError::Changed(e.to_string()),
                false => DigestError::Weights(WeightError::Spill {
                    path: self.path.clone(),
                    source: e,
                }),
            })?;
        }
        let mut root = Sha256::new();
        for (_, part) in &self.parts {
            let leaf = match part {
                Part::Known((leaf, _)) => *leaf,
                Part::Deferred(s) => {
                    s.summary_taken()
                        .expect("every deferred handle has been read")
                        .0
                }
            };
            root.update(leaf);
        }
        Ok(root.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Why [`Digest::sha256`] failed: a deferred tensor could not be read back, or its change
/// failed (a message naming the file and the key).
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("{0}")]
    Changed(String),
}

/// One of a [`Weights`]' tensors, wherever it is.
#[derive(Clone, Copy)]
pub enum Entry<'a> {
    Memory(&'a Tensor),
    Spilled(&'a SpilledTensor),
}

impl Entry<'_> {
    pub fn shape(&self) -> &[usize] {
        match self {
            Entry::Memory(t) => &t.shape,
            Entry::Spilled(s) => &s.data.shape,
        }
    }
}

/// Why a weight file could not be used. Every message is one line and starts with the file.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{}: cannot read weight file: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a tensor to, or reading it back from, the temporary file of [`spill`].
    #[error(
        "{}: cannot keep its tensors in a temporary file in {} (set TMPDIR to a folder with room): {source}",
        path.display(),
        std::env::temp_dir().display()
    )]
    Spill {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: weight file not found", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: corrupt or unsupported weight file: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{}: tensor \"{key}\" has unsupported dtype {dtype} (supported: F32, F16, BF16)",
        path.display()
    )]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{}: missing tensor \"{key}\"", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error(
        "{}: tensor \"{key}\" has shape {found:?}, expected {expected:?}",
        path.display()
    )]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{}: {reason}", path.display())]
    Shards { path: PathBuf, reason: String },
    #[error(
        "{overlay}: cannot patch tensor \"{key}\" of {}: {reason}",
        path.display()
    )]
    Patch {
        overlay: String,
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// Tensors the model never read; `keys` holds a few of them, not necessarily all.
    #[error(
        "{}: unused tensor keys ({}); the model reads no tensors of these names",
        path.display(),
        quoted(keys)
    )]
    UnexpectedKeys { path: PathBuf, keys: Vec<String> },
}

/// `"a", "b"`: keys as messages list them.
pub fn quoted(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> WeightError {
    if source.kind() == std::io::ErrorKind::NotFound {
        WeightError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        WeightError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Zip local-file-header or end-of-central-directory (empty archive) signature.
pub(crate) fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// Fills as much of `buf` as the source has.
pub(crate) fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

impl Weights {
    /// Every float tensor of a file under its name in the file (integer tensors left out), for
    /// models that use a file's names as they are, and for tests.
    pub fn load(path: &Path) -> Result<Weights, WeightError> {
        open(path)?.read_all()
    }

    /// [`Weights::load`] on bytes already in memory; `path` only names the file.
    #[cfg(test)]
    pub(crate) fn load_bytes(path: &Path, bytes: &[u8]) -> Result<Weights, WeightError> {
        let file = WeightFile::from_bytes(path, bytes.to_vec())?;
        (&file as &dyn TensorSource).read_all()
    }

    pub fn new(path: &Path, format: WeightFormat, tensors: BTreeMap<String, Tensor>) -> Weights {
        Weights {
            path: path.to_path_buf(),
            format,
            tensors,
            spilled: BTreeMap::new(),
        }
    }

    /// Tensors made in memory (synthetic weights in tests), kept in their dtype.
    pub fn from_tensors(path: PathBuf, tensors: BTreeMap<String, Tensor>) -> Weights {
        Weights {
            path,
            format: WeightFormat::Safetensors,
            tensors,
            spilled: BTreeMap::new(),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key) || self.spilled.contains_key(key)
    }

    /// Every tensor in key order, in memory or spilled.
    pub fn entries(&self) -> impl Iterator<Item = (&String, Entry<'_>)> {
        let mut all: Vec<(&String, Entry)> = self
            .tensors
            .iter()
            .map(|(k, t)| (k, Entry::Memory(t)))
            .chain(self.spilled.iter().map(|(k, s)| (k, Entry::Spilled(s))))
            .collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.into_iter()
    }

    /// These weights with every spilled tensor read back into memory (for tests, and for
    /// comparing what two loaders read).
    pub fn into_memory(mut self) -> Result<Weights, WeightError> {
        for (k, s) in std::mem::take(&mut self.spilled) {
            let t = s.data.read().map_err(|e| self.spill_error(e))?;
            self.tensors.insert(k, t);
        }
        Ok(self)
    }

    /// Every tensor's shape under its key.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.entries()
            .map(|(k, e)| (k.clone(), e.shape().to_vec()))
            .collect()
    }

    /// The tensor under `key` as an owned tensor, checked against the shape the model expects:
    /// a copy of one in memory, or a spilled one read back.
    pub fn read(&self, key: &str, expected_shape: &[usize]) -> Result<Tensor, WeightError> {
        match self.spilled.get(key) {
            None => self.get(key, expected_shape).cloned(),
            Some(s) => {
                self.check_shape(key, &s.data.shape, expected_shape)?;
                s.data.read().map_err(|e| self.spill_error(e))
            }
        }
    }

    /// A failure to read a spilled tensor back, as an error of the weights it came from.
    pub fn spill_error(&self, e: std::io::Error) -> WeightError {
        WeightError::Spill {
            path: self.path.clone(),
            source: e,
        }
    }

    fn check_shape(
        &self,
        key: &str,
        found: &[usize],
        expected: &[usize],
    ) -> Result<(), WeightError> {
        if found != expected {
            return Err(WeightError::ShapeMismatch {
                path: self.path.clone(),
                key: key.into(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            });
        }
        Ok(())
    }

    /// The tensor under `key`, checked against the shape the model expects.
    pub fn get(&self, key: &str, expected_shape: &[usize]) -> Result<&Tensor, WeightError> {
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| WeightError::MissingKey {
                path: self.path.clone(),
                key: key.into(),
            })?;
        self.check_shape(key, &t.shape, expected_shape)?;
        Ok(t)
    }

    /// sha256 (hex) of the tensors in canonical form, hashed as a tree so the tensors can be
    /// hashed on all cores: the SHA-256 of the leaf digests of the keys in sorted order, where a
    /// tensor's leaf is the SHA-256 of its key bytes, a 0 byte, rank as u64 LE, dims as u64 LE,
    /// then its values as f32 (f16 widened) written narrow when that loses nothing: a byte 16
    /// and the values as f16 LE when every value survives the round trip f32 → f16 → f32 bit
    /// for bit, else a byte 32 and the values as f32 LE. Same weights → same digest whatever the
    /// container, key layout or stored dtype; an fp16 checkpoint is hashed from its own bytes.
    pub fn content_sha256(&self) -> Result<String, DigestError> {
        self.digest().sha256()
    }

    /// The leaves of [`Weights::content_sha256`] and the value summaries, of the tensors in
    /// memory computed now (on all cores), of spilled ones as read.
    pub fn digest(&self) -> Digest {
        let entries: Vec<(&String, Entry)> = self.entries().collect();
        let size = |(_, e): &(&String, Entry)| match e {
            Entry::Memory(t) => t.len(),
            Entry::Spilled(_) => 1,
        };
        let part = |(key, e): &(&String, Entry)| match e {
            Entry::Memory(t) => Part::Known(SpilledTensor::summarize(key, t)),
            Entry::Spilled(s) => match s.summary() {
                Some(known) => Part::Known(known),
                None => Part::Deferred(s.data.clone()),
            },
        };
        let parts = crate::parallel::parallel_map(&entries, size, part);
        Digest {
            path: self.path.clone(),
            parts: entries
                .iter()
                .map(|(k, _)| (*k).clone())
                .zip(parts)
                .collect(),
        }
    }

    /// The file's name without its directory, for messages and metadata.
    pub fn file_name(&self) -> String {
        match self.path.file_name() {
            Some(n) => n.to_string_lossy().into_owned(),
            None => self.path.display().to_string(),
        }
    }
}

const HASH_BATCH: usize = 4096;

/// One tensor's leaf of [`Weights::content_sha256`].
/// `has_nan`: whether `t` holds a NaN, which the value summary taken beside it has counted.
fn leaf_sha256(key: &str, t: &Tensor, has_nan: bool) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0u8]);
    h.update((t.shape.len() as u64).to_le_bytes());
    for &d in &t.shape {
        h.update((d as u64).to_le_bytes());
    }
    let mut buf = [0u8; 4 * HASH_BATCH];
    match &t.data {
        // Every f16 but NaN (whose payload the round trip may change) widens and narrows back
        // to itself, so without NaN the stored bits are the canonical ones.
        TensorData::F16(v) if !has_nan => {
            h.update([16u8]);
            // `f16` is a transparent `u16`: on a little-endian machine its memory is its LE
            // bytes, hashed where they lie instead of copied first.
            #[cfg(target_endian = "little")]
            h.update(unsafe {
                std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(&v[..]))
            });
            #[cfg(not(target_endian = "little"))]
            for chunk in v.chunks(HASH_BATCH) {
                let bytes = &mut buf[..2 * chunk.len()];
                bytes
                    .chunks_exact_mut(2)
                    .zip(chunk)
                    .for_each(|(o, x)| o.copy_from_slice(&x.to_le_bytes()));
                h.update(bytes);
            }
        }
        _ => {
            let mut narrow = true;
            for_each_f32_batch(t, |values| {
                narrow &= values
                    .iter()
                    .all(|&x| half::f16::from_f32(x).to_f32().to_bits() == x.to_bits());
            });
            h.update([if narrow { 16u8 } else { 32 }]);
            for_each_f32_batch(t, |values| {
                let bytes = if narrow {
                    let bytes = &mut buf[..2 * values.len()];
                    bytes.chunks_exact_mut(2).zip(values).for_each(|(o, &x)| {
                        o.copy_from_slice(&half::f16::from_f32(x).to_le_bytes())
                    });
                    bytes
                } else {
                    let bytes = &mut buf[..4 * values.len()];
                    bytes
                        .chunks_exact_mut(4)
                        .zip(values)
                        .for_each(|(o, x)| o.copy_from_slice(&x.to_le_bytes()));
                    bytes
                };
                h.update(bytes);
            });
        }
    }
    h.finalize().into()
}

/// Whether no value is infinite or NaN, checked a batch at a time without branching per value
/// (the common case of a whole checkpoint, at memory speed).
pub fn f16_all_finite(v: &[half::f16]) -> bool {
    const EXPONENT: u16 = 0x7c00;
    v.chunks(HASH_BATCH).all(|chunk| {
        chunk
            .iter()
            .fold(true, |ok, x| ok & (x.to_bits() & EXPONENT != EXPONENT))
    })
}

/// Calls `f` on the values of a float tensor as f32, a batch at a time (f16 widened per batch,
/// never the whole tensor); integer and bool tensors give no batches.
pub fn for_each_f32_batch(t: &Tensor, mut f: impl FnMut(&[f32])) {
    match &t.data {
        TensorData::F32(v) => v.chunks(HASH_BATCH).for_each(f),
        TensorData::F16(v) => {
            let mut wide = Vec::with_capacity(HASH_BATCH);
            for chunk in v.chunks(HASH_BATCH) {
                wide.clear();
                wide.extend(chunk.iter().map(|x| x.to_f32()));
                f(&wide);
            }
        }
        TensorData::I32(_) | TensorData::Bool(_) => {}
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightFormat::Safetensors => "safetensors",
            WeightFormat::Pth => "pth",
        })
    }
}

pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> WeightError {
    // Reasons come partly from third-party error types; keep the message on one line.
    let reason: String = reason.into();
    WeightError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.replace(['\n', '\r'], " "),
    }
}

#[cfg(test)]
mod source_tests;
#[cfg(test)]
mod tests;
