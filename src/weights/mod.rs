//! Weight files as a generic tensor store: name → tensor in its stored dtype, read on demand.
//!
//! [`WeightFile`] opens a safetensors file or a `torch.save` zip checkpoint (the format is taken
//! from the content, not the extension), lists every tensor's name, stored dtype and shape
//! without reading any data, and reads one tensor at a time when asked. f32 stays f32 and f16
//! stays f16; bf16, which the IR has no type for, is widened to f32 (exactly). Integer and bool
//! tensors (training counters such as `num_batches_tracked`) are listed but never read.
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
//! (the pickle and its objects, storages, decoded tensors) is charged to one [`Budget`] per file
//! (see [`crate::limits`]).

pub mod check;
mod pth;
mod safetensors;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::limits::Budget;
use crate::tensor::{Tensor, TensorData};

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
    /// Whether [`WeightFile::read`] can read it.
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

/// An open weight file: the tensor list is known, the tensors are read on demand.
pub struct WeightFile {
    path: PathBuf,
    tensors: BTreeMap<String, TensorInfo>,
    container: Container,
    /// Everything reading this file allocates is charged here.
    budget: Budget,
}

enum Container {
    Safetensors(safetensors::Index),
    Pth(pth::Archive),
}

/// Where a file's bytes come from: the file, or a copy in memory (for tests that damage files
/// by the thousand).
pub(crate) enum Source {
    File(File),
    Memory(Cursor<Vec<u8>>),
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::File(f) => f.read(buf),
            Source::Memory(c) => c.read(buf),
        }
    }
}

impl Seek for Source {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match self {
            Source::File(f) => f.seek(pos),
            Source::Memory(c) => c.seek(pos),
        }
    }
}

impl WeightFile {
    /// Opens a regular file within the weight-file size limit and reads its index (safetensors
    /// header, or zip directory and pickle), checking it; no tensor data is read.
    pub fn open(path: &Path) -> Result<WeightFile, WeightError> {
        let (file, len) = crate::limits::open_weight_file(path).map_err(|e| io_error(path, e))?;
        Self::from_source(path, Source::File(file), len)
    }

    /// [`WeightFile::open`] on bytes already in memory; `path` only names the file.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<WeightFile, WeightError> {
        let len = bytes.len() as u64;
        Self::from_source(path, Source::Memory(Cursor::new(bytes)), len)
    }

    fn from_source(path: &Path, mut src: Source, len: u64) -> Result<WeightFile, WeightError> {
        if len == 0 {
            return Err(corrupt(path, "file is empty"));
        }
        let limit = crate::limits::weight_budget(len).map_err(|r| WeightError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, r),
        })?;
        let mut budget = Budget::new(limit);
        let mut magic = [0u8; 4];
        let got = read_up_to(&mut src, &mut magic).map_err(|e| io_error(path, e))?;
        src.seek(SeekFrom::Start(0))
            .map_err(|e| io_error(path, e))?;
        let (tensors, container) = if is_zip(&magic[..got]) {
            let (t, a) = pth::Archive::open(path, src, len, &mut budget)?;
            (t, Container::Pth(a))
        } else {
            let (t, i) = safetensors::Index::open(path, src, len)?;
            (t, Container::Safetensors(i))
        };
        Ok(WeightFile {
            path: path.to_path_buf(),
            tensors,
            container,
            budget,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> WeightFormat {
        match self.container {
            Container::Safetensors(_) => WeightFormat::Safetensors,
            Container::Pth(_) => WeightFormat::Pth,
        }
    }

    /// Every tensor in the file, by its name in the file.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The tensor `name`, read now, in its stored dtype (bf16 as f32). Reading a tensor twice
    /// reads the file twice.
    pub fn read(&mut self, name: &str) -> Result<Tensor, WeightError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| WeightError::MissingKey {
                path: self.path.clone(),
                key: name.into(),
            })?;
        match &info.dtype {
            StoredDtype::Int(d) | StoredDtype::Unsupported(d) => {
                return Err(WeightError::UnsupportedDtype {
                    path: self.path.clone(),
                    key: name.into(),
                    dtype: d.clone(),
                })
            }
            StoredDtype::F32 | StoredDtype::F16 | StoredDtype::BF16 => {}
        }
        match &mut self.container {
            Container::Safetensors(i) => i.read(&self.path, name, info, &mut self.budget),
            Container::Pth(a) => a.read(&self.path, name, info, &mut self.budget),
        }
    }
}

/// Tensors a model has read, under the model's own names, each in its stored dtype (f32 or
/// f16): what [`crate::models::Model::build`] declares the graph from.
#[derive(Debug, Clone)]
pub struct Weights {
    pub path: PathBuf,
    pub format: WeightFormat,
    pub tensors: BTreeMap<String, Tensor>,
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

fn io_error(path: &Path, source: std::io::Error) -> WeightError {
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
        Self::read_all(WeightFile::open(path)?)
    }

    /// [`Weights::load`] on bytes already in memory; `path` only names the file.
    #[cfg(test)]
    pub(crate) fn load_bytes(path: &Path, bytes: &[u8]) -> Result<Weights, WeightError> {
        Self::read_all(WeightFile::from_bytes(path, bytes.to_vec())?)
    }

    fn read_all(mut file: WeightFile) -> Result<Weights, WeightError> {
        let names: Vec<String> = file
            .tensors()
            .iter()
            .filter(|(_, i)| !matches!(i.dtype, StoredDtype::Int(_)))
            .map(|(k, _)| k.clone())
            .collect();
        let mut tensors = BTreeMap::new();
        for k in names {
            let t = file.read(&k)?;
            tensors.insert(k, t);
        }
        Ok(Weights::new(file.path(), file.format(), tensors))
    }

    pub fn new(path: &Path, format: WeightFormat, tensors: BTreeMap<String, Tensor>) -> Weights {
        Weights {
            path: path.to_path_buf(),
            format,
            tensors,
        }
    }

    /// Tensors made in memory (synthetic weights in tests), kept in their dtype.
    pub fn from_tensors(path: PathBuf, tensors: BTreeMap<String, Tensor>) -> Weights {
        Weights {
            path,
            format: WeightFormat::Safetensors,
            tensors,
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
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
        if t.shape != expected_shape {
            return Err(WeightError::ShapeMismatch {
                path: self.path.clone(),
                key: key.into(),
                expected: expected_shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        Ok(t)
    }

    /// sha256 (hex) of the tensors in canonical form, hashed as a tree so the tensors can be
    /// hashed on all cores: the SHA-256 of the leaf digests of the keys in sorted order, where a
    /// tensor's leaf is the SHA-256 of its key bytes, a 0 byte, rank as u64 LE, dims as u64 LE,
    /// then its values as f32 (f16 widened) written narrow when that loses nothing: a byte 16
    /// and the values as f16 LE when every value survives the round trip f32 → f16 → f32 bit
    /// for bit, else a byte 32 and the values as f32 LE. Same weights → same digest whatever the
    /// container, key layout or stored dtype; an fp16 checkpoint is hashed from its own bytes.
    pub fn content_sha256(&self) -> String {
        let tensors: Vec<(&String, &Tensor)> = self.tensors.iter().collect();
        let mut root = Sha256::new();
        for leaf in on_all_cores(&tensors, |(key, t)| leaf_sha256(key, t)) {
            root.update(leaf);
        }
        root.finalize().iter().map(|b| format!("{b:02x}")).collect()
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

/// `f` of every item, in order, computed on as many threads as the machine has cores (items
/// taken one at a time, so one large item does not hold up the rest).
fn on_all_cores<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return out;
                        };
                        out.push((i, f(item)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    done.sort_unstable_by_key(|&(i, _)| i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// One tensor's leaf of [`Weights::content_sha256`].
fn leaf_sha256(key: &str, t: &Tensor) -> [u8; 32] {
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
        TensorData::F16(v) if f16_all_finite(v) || !v.iter().any(|x| x.is_nan()) => {
            h.update([16u8]);
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

/// Float element types a file may store, as the readers decode them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatKind {
    F32,
    F16,
    BF16,
}

impl FloatKind {
    pub(crate) fn of(dtype: &StoredDtype) -> Option<FloatKind> {
        match dtype {
            StoredDtype::F32 => Some(FloatKind::F32),
            StoredDtype::F16 => Some(FloatKind::F16),
            StoredDtype::BF16 => Some(FloatKind::BF16),
            StoredDtype::Int(_) | StoredDtype::Unsupported(_) => None,
        }
    }

    /// Bytes per element in the file.
    pub(crate) fn size(self) -> usize {
        match self {
            FloatKind::F32 => 4,
            FloatKind::F16 | FloatKind::BF16 => 2,
        }
    }

    /// Bytes per element once read (bf16 becomes f32).
    pub(crate) fn decoded_size(self) -> usize {
        match self {
            FloatKind::F32 | FloatKind::BF16 => 4,
            FloatKind::F16 => 2,
        }
    }
}

/// A tensor being decoded from little-endian element bytes, in its stored dtype (bf16 as f32).
pub(crate) enum Decoded {
    F32(Vec<f32>),
    /// Widened to f32 as it is read.
    BF16(Vec<f32>),
    F16(Vec<half::f16>),
}

impl Decoded {
    /// Room for `numel` elements of `kind`, or `None` when the allocation fails.
    pub(crate) fn with_capacity(kind: FloatKind, numel: usize) -> Option<Decoded> {
        fn reserve<T>(numel: usize) -> Option<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(numel).ok()?;
            Some(v)
        }
        Some(match kind {
            FloatKind::F32 => Decoded::F32(reserve(numel)?),
            FloatKind::BF16 => Decoded::BF16(reserve(numel)?),
            FloatKind::F16 => Decoded::F16(reserve(numel)?),
        })
    }

    /// Appends the elements in `bytes` (whole elements of the kind it was made for).
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        match self {
            Decoded::F32(out) => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            Decoded::BF16(out) => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
            ),
            Decoded::F16(out) => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]]))),
            ),
        }
    }

    pub(crate) fn into_tensor(self, shape: Vec<usize>) -> Tensor {
        match self {
            Decoded::F32(v) | Decoded::BF16(v) => Tensor::f32(shape, v),
            Decoded::F16(v) => Tensor::f16(shape, v),
        }
    }
}

/// The allocation error for a tensor whose decoded data cannot be allocated.
pub(crate) fn alloc_error(path: &Path, key: &str, bytes: u64) -> WeightError {
    WeightError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            format!("cannot allocate {bytes} bytes for tensor \"{key}\""),
        ),
    }
}

#[cfg(test)]
mod tests;
