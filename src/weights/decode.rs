//! Decoding a tensor's little-endian element bytes into its stored dtype (bf16 widened to f32),
//! shared by the safetensors and `.pth` readers.

use std::path::Path;

use super::{StoredDtype, WeightError};
use crate::tensor::Tensor;

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
