//! The `.mlpackage` on disk: a directory Core ML loads an ML Program from.
//!
//! ```text
//! out.mlpackage/
//!   Manifest.json                             item entries; names the root model
//!   Data/com.apple.CoreML/model.mlmodel       the `Model` protobuf
//!   Data/com.apple.CoreML/weights/weight.bin  blob storage v2, referenced from MIL
//! ```
//!
//! - [`BlobWriter`], [`BlobReader`]: the `weight.bin` blob storage format.
//! - [`write_package`]: writes a package atomically and deterministically.
//! - [`read_package`]: reads a package back, including ones coremltools wrote.
//!
//! Every error names the file (and, for `weight.bin`, the offset) at fault, and no input, however
//! corrupt, makes the readers panic.

mod append;
mod blob;
pub(crate) mod manifest;
mod read;
mod write;

use std::path::PathBuf;

pub use blob::{BlobDType, BlobReader, BlobRecord, BlobWriter, WEIGHTS_FILE_REF};
pub use manifest::{MODEL_ITEM_ID, WEIGHTS_ITEM_ID};
pub use read::{read_package, read_package_model, Package};
pub use write::{write_package, PackageWriter};

/// Why reading or writing a package failed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// A file or directory could not be read, written, created, renamed or removed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `Manifest.json` is not valid JSON, lacks a required field, or points nowhere usable.
    #[error("{}: invalid manifest: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
    /// `model.mlmodel` is not a decodable Core ML `Model` protobuf.
    #[error("{}: cannot decode Core ML model: {source}", path.display())]
    Model {
        path: PathBuf,
        source: prost::DecodeError,
    },
    /// `weight.bin` is truncated or corrupt, or a blob reference points at no valid record.
    /// `path` is just `weight.bin` when the reader was given bytes rather than a package.
    #[error("{}: at offset {offset}: {reason}", path.display())]
    Blob {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The output path cannot hold a package (wrong extension, or something other than a
    /// package is in the way).
    #[error("{}: {reason}", path.display())]
    InvalidOutput { path: PathBuf, reason: String },
}

impl PackageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| PackageError::Io { path, source }
    }

    /// Blob errors from a bare [`BlobReader`] only know the file as `weight.bin`; a package that
    /// knows where its weights live puts the full path in.
    pub(crate) fn in_file(self, file: &std::path::Path) -> Self {
        match self {
            PackageError::Blob { offset, reason, .. } => PackageError::Blob {
                path: file.to_path_buf(),
                offset,
                reason,
            },
            other => other,
        }
    }
}
