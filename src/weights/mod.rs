//! Decoder weights, loaded from safetensors or PyTorch `.pth` checkpoints.
//!
//! Whatever the container (safetensors, `torch.save` zip) or the naming convention (upstream
//! TAESD `nn.Sequential` indices, diffusers `decoder.layers.N`), a [`Weights`] holds the decoder
//! tensors as f32 under upstream keys (`1.weight`, `3.conv.0.weight`, `3.pool.1.bias`), so the
//! model builders only know one naming scheme. fp16 and bf16 inputs are widened exactly.
//!
//! Files are untrusted input: every failure is a [`WeightError`] that names the file and, where
//! there is one, the tensor key and the shapes involved; nothing in here panics on bad bytes, and
//! the `.pth` pickle is interpreted by a small VM that only knows the handful of globals a
//! `state_dict` needs (it never executes anything).

mod keys;
pub(crate) mod pth;
mod raw;
pub(crate) mod safetensors;

pub use raw::{load_raw, RawFile};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::tensor::{DType, Tensor};

/// Container format of a weight file, detected from its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Safetensors,
    /// A `torch.save` zip archive (PyTorch 1.6 and newer).
    Pth,
}

/// Naming convention the file used (the loaded tensors are always under upstream keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// `nn.Sequential` index + module path: `1.weight`, `3.conv.0.weight` (also `decoder.1.weight`).
    Upstream,
    /// `decoder.layers.{i-1}.…`, as diffusers' `AutoencoderTiny` names them.
    Diffusers,
}

/// Decoder tensors loaded from one file.
#[derive(Debug, Clone)]
pub struct Weights {
    pub path: PathBuf,
    pub format: WeightFormat,
    pub key_style: KeyStyle,
    /// Decoder tensors under upstream keys (`1.weight`, `3.conv.0.weight`, `3.pool.1.bias`), all as
    /// f32 (fp16/bf16 widened exactly).
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
    #[error(
        "{}: unrecognised tensor keys ({}); expected upstream keys like \"1.weight\" or \
         diffusers keys like \"decoder.layers.0.weight\"",
        path.display(),
        quoted(keys)
    )]
    /// `keys` holds a few of the offending keys, not necessarily all of them.
    UnexpectedKeys { path: PathBuf, keys: Vec<String> },
    #[error(
        "{}: tensor keys mix naming styles ({}); expected only upstream keys like \"1.weight\" \
         or only diffusers keys like \"decoder.layers.0.weight\"",
        path.display(),
        quoted(keys)
    )]
    MixedKeyStyles { path: PathBuf, keys: Vec<String> },
    #[error("{}: no decoder tensors in file", path.display())]
    NoDecoderTensors { path: PathBuf },
}

fn quoted(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The bytes of a weight file: regular files only, within the weight-file size limit.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, WeightError> {
    crate::limits::read_weight_file(path).map_err(|source| {
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
    })
}

/// Zip local-file-header or end-of-central-directory (empty archive) signature.
pub(crate) fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

impl Weights {
    /// Loads the decoder tensors of a safetensors or `.pth` file; the format is taken from the
    /// content (zip magic → `.pth`), so a misnamed file still loads.
    /// Only regular files are read (a FIFO or device is refused before it is opened), and the
    /// decoded tensors may take at most the memory budget of [`crate::limits`].
    pub fn load(path: &Path) -> Result<Weights, WeightError> {
        Self::load_bytes(path, &read_file(path)?)
    }

    /// [`Weights::load`] on bytes already in memory; `path` is only used to name the file.
    pub(crate) fn load_bytes(path: &Path, bytes: &[u8]) -> Result<Weights, WeightError> {
        if bytes.is_empty() {
            return Err(corrupt(path, "file is empty"));
        }
        let limit =
            crate::limits::weight_budget(bytes.len() as u64).map_err(|r| WeightError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, r),
            })?;
        let budget = &mut crate::limits::Budget::new(limit);
        let (format, (key_style, tensors)) = if is_zip(bytes) {
            (WeightFormat::Pth, pth::load(path, bytes, budget)?)
        } else {
            (
                WeightFormat::Safetensors,
                safetensors::load(path, bytes, budget)?,
            )
        };
        Ok(Weights {
            path: path.to_path_buf(),
            format,
            key_style,
            tensors,
        })
    }

    /// Wraps tensors that are already under upstream keys (synthetic weights in tests). f16
    /// tensors are widened so that consumers can rely on f32 as with loaded files.
    pub fn from_tensors(path: PathBuf, tensors: BTreeMap<String, Tensor>) -> Weights {
        let tensors = tensors
            .into_iter()
            .map(|(k, t)| {
                let t = if t.dtype() == DType::F16 {
                    t.cast(DType::F32)
                } else {
                    t
                };
                (k, t)
            })
            .collect();
        Weights {
            path,
            format: WeightFormat::Safetensors,
            key_style: KeyStyle::Upstream,
            tensors,
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The tensor under the upstream `key`, checked against the shape the model expects.
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

    /// sha256 (hex) of the tensors in canonical form: for each key in sorted order, key bytes, a
    /// 0 byte, rank as u64 LE, dims as u64 LE, f32 LE values. Same weights → same digest whatever
    /// the container or key style.
    pub fn content_sha256(&self) -> String {
        let mut h = Sha256::new();
        for (key, t) in &self.tensors {
            h.update(key.as_bytes());
            h.update([0u8]);
            h.update((t.shape.len() as u64).to_le_bytes());
            for &d in &t.shape {
                h.update((d as u64).to_le_bytes());
            }
            let values = t.to_f32();
            // Batched so the hasher sees large slices rather than 4-byte updates.
            let mut buf = Vec::with_capacity(4 * 4096);
            for chunk in values.chunks(4096) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                h.update(&buf);
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The file's name without its directory, for messages and metadata.
    pub fn file_name(&self) -> String {
        match self.path.file_name() {
            Some(n) => n.to_string_lossy().into_owned(),
            None => self.path.display().to_string(),
        }
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

impl fmt::Display for KeyStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyStyle::Upstream => "upstream",
            KeyStyle::Diffusers => "diffusers",
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

/// Little-endian element bytes of a supported float type, widened to f32 (exact for all three).
pub(crate) fn widen(bytes: &[u8], dtype: FloatKind) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / dtype.size());
    widen_into(bytes, dtype, &mut out);
    out
}

/// [`widen`], appending to `out`.
pub(crate) fn widen_into(bytes: &[u8], dtype: FloatKind, out: &mut Vec<f32>) {
    match dtype {
        FloatKind::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        FloatKind::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
        FloatKind::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
    }
}

/// Element types a weight file may store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatKind {
    F32,
    F16,
    BF16,
}

impl FloatKind {
    pub(crate) fn size(self) -> usize {
        match self {
            FloatKind::F32 => 4,
            FloatKind::F16 | FloatKind::BF16 => 2,
        }
    }
}

#[cfg(test)]
mod tests;
