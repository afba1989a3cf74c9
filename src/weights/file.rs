//! One weight file, safetensors or `torch.save` zip (told apart by content, not extension), as a
//! [`TensorSource`]: its index is read and checked at open, each tensor's bytes when it is read.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{
    corrupt, io_error, is_zip, pth, read_up_to, safetensors, StoredDtype, TensorInfo, TensorSource,
    WeightError, WeightFormat,
};
use crate::limits::Budget;
use crate::tensor::Tensor;

/// An open weight file: the tensor list is known, the tensors are read on demand.
pub struct WeightFile {
    path: PathBuf,
    tensors: BTreeMap<String, TensorInfo>,
    format: WeightFormat,
    /// Reading moves the file position and charges the budget; a source reads through `&self`.
    reader: RefCell<Reader>,
    /// A second handle on the file for [`TensorSource::in_place`] handles, which read at an
    /// offset and never move the position `reader` reads from.
    shared: std::cell::OnceCell<Option<std::sync::Arc<File>>>,
}

struct Reader {
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
pub(crate) enum Bytes {
    File(File),
    Memory(Cursor<Vec<u8>>),
}

impl Read for Bytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Bytes::File(f) => f.read(buf),
            Bytes::Memory(c) => c.read(buf),
        }
    }
}

impl Seek for Bytes {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match self {
            Bytes::File(f) => f.seek(pos),
            Bytes::Memory(c) => c.seek(pos),
        }
    }
}

impl WeightFile {
    /// Opens a regular file within the weight-file size limit and reads its index (safetensors
    /// header, or zip directory and pickle), checking it; no tensor data is read.
    pub fn open(path: &Path) -> Result<WeightFile, WeightError> {
        let (file, len) = crate::limits::open_weight_file(path).map_err(|e| io_error(path, e))?;
        Self::from_bytes_of(path, Bytes::File(file), len)
    }

    /// [`WeightFile::open`] on bytes already in memory; `path` only names the file.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<WeightFile, WeightError> {
        let len = bytes.len() as u64;
        Self::from_bytes_of(path, Bytes::Memory(Cursor::new(bytes)), len)
    }

    fn from_bytes_of(path: &Path, mut src: Bytes, len: u64) -> Result<WeightFile, WeightError> {
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
        let (tensors, container, format) = if is_zip(&magic[..got]) {
            let (t, a) = pth::Archive::open(path, src, len, &mut budget)?;
            (t, Container::Pth(a), WeightFormat::Pth)
        } else {
            let (t, i) = safetensors::Index::open(path, src, len)?;
            (t, Container::Safetensors(i), WeightFormat::Safetensors)
        };
        Ok(WeightFile {
            path: path.to_path_buf(),
            tensors,
            format,
            reader: RefCell::new(Reader { container, budget }),
            shared: std::cell::OnceCell::new(),
        })
    }
}

impl WeightFile {
    /// A safetensors file's `__metadata__` strings (empty for `.pth` and for files without
    /// any): what a LoRA's trainer recorded, such as PEFT's `lora_adapter_metadata`.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        match &self.reader.borrow().container {
            Container::Safetensors(i) => i.metadata.clone(),
            Container::Pth(_) => BTreeMap::new(),
        }
    }
}

impl TensorSource for WeightFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn format(&self) -> WeightFormat {
        self.format
    }

    fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// A safetensors file's f32 and f16 tensors are read as they lie (bf16 is widened).
    fn in_place(&self, name: &str) -> Option<super::Spilled> {
        let info = self.tensors.get(name)?;
        let dtype = match info.dtype {
            StoredDtype::F32 => crate::tensor::DType::F32,
            StoredDtype::F16 => crate::tensor::DType::F16,
            _ => return None,
        };
        let reader = self.reader.borrow();
        let Container::Safetensors(index) = &reader.container else {
            return None;
        };
        let (file, offset, len) = index.span(name)?;
        let numel: usize = info.shape.iter().product();
        (numel.checked_mul(dtype.byte_size()) == Some(len)).then_some(())?;
        let file = self
            .shared
            .get_or_init(|| file.try_clone().ok().map(std::sync::Arc::new))
            .clone()?;
        Some(super::Spilled::in_file(
            file,
            offset,
            dtype,
            info.shape.clone(),
        ))
    }

    /// Reading a tensor twice reads the file twice.
    fn read(&self, name: &str) -> Result<Tensor, WeightError> {
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
        let mut reader = self.reader.borrow_mut();
        let Reader { container, budget } = &mut *reader;
        match container {
            Container::Safetensors(i) => i.read(&self.path, name, info, budget),
            Container::Pth(a) => a.read(&self.path, name, info, budget),
        }
    }
}
