//! Tensors under the names the file gives them, for model families that own their key layouts
//! (the full VAEs): safetensors only, floating-point tensors widened to f32, integer tensors
//! (training counters such as `num_batches_tracked`) left out.
//!
//! A full VAE file holds encoder and decoder (≈335 MB in fp32) and a build needs one of them, so
//! [`RawFile`] reads the header alone and then each tensor asked for straight from the file into
//! its f32 copy: the file's bytes are never all in memory, and neither are tensors nobody reads.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use safetensors::tensor::Metadata;
use safetensors::Dtype;

use super::{corrupt, widen_into, FloatKind, WeightError};
use crate::tensor::Tensor;

/// Bytes read at a time: a multiple of every element size, below glibc's mmap threshold.
const CHUNK_BYTES: usize = 64 << 10;

/// The safetensors crate's limit on the JSON header.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Where one float tensor's data lies in the file.
#[derive(Clone, Debug)]
struct Entry {
    kind: FloatKind,
    shape: Vec<usize>,
    /// Absolute byte offset and length in the file.
    start: u64,
    len: usize,
}

/// An open safetensors file whose header has been read and checked; tensors are read on demand.
pub struct RawFile {
    path: PathBuf,
    file: File,
    /// The float tensors, by their names in the file.
    entries: BTreeMap<String, Entry>,
}

impl RawFile {
    /// Opens a regular file within the weight-file size limit and checks its header the way
    /// the safetensors crate does: valid JSON, known dtypes, and data offsets that tile the
    /// data section exactly to the end of the file.
    pub fn open(path: &Path) -> Result<RawFile, WeightError> {
        let io = |source: std::io::Error| {
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
        };
        let (mut file, len) = crate::limits::open_weight_file(path).map_err(io)?;
        let invalid = |why: String| corrupt(path, format!("not a valid safetensors file: {why}"));
        let mut prefix = [0u8; 8];
        let got = read_up_to(&mut file, &mut prefix).map_err(io)?;
        if super::is_zip(&prefix[..got]) {
            return Err(corrupt(
                path,
                "a PyTorch checkpoint; this model reads safetensors files (convert it, or use \
                 the diffusers or single-file .safetensors release)",
            ));
        }
        if got < 8 {
            return Err(invalid(format!(
                "header length runs past the end of the file ({len} bytes; truncated?)"
            )));
        }
        let n = u64::from_le_bytes(prefix);
        if n > MAX_HEADER_BYTES {
            return Err(invalid("header too large".into()));
        }
        if n > len.saturating_sub(8) {
            return Err(invalid(format!(
                "header length runs past the end of the file ({len} bytes; truncated?)"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(io)?;
        let text = std::str::from_utf8(&header)
            .map_err(|e| invalid(format!("invalid UTF-8 in header: {e}")))?;
        let metadata: Metadata = serde_json::from_str(text)
            .map_err(|e| invalid(format!("invalid JSON in header: {e}")))?;

        // The crate's own check, which it only runs on a whole-file buffer: tensors in offset
        // order, each starting where the previous one ended, sized numel × element size, and
        // the last ending at the end of the file.
        let mut infos: Vec<(String, &safetensors::tensor::TensorInfo)> =
            metadata.tensors().into_iter().collect();
        infos.sort_by_key(|(_, info)| info.data_offsets);
        let data_start = 8 + n;
        let mut end = 0usize;
        let mut entries = BTreeMap::new();
        for (name, info) in infos {
            let (s, e) = info.data_offsets;
            if s != end || e < s {
                return Err(invalid(format!("invalid offset for tensor {name}")));
            }
            let bytes = info
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .and_then(|numel| numel.checked_mul(info.dtype.bitsize()))
                .filter(|bits| bits % 8 == 0)
                .map(|bits| bits / 8);
            if bytes != Some(e - s) {
                return Err(invalid(format!(
                    "tensor {name}: data size does not match its dtype and shape"
                )));
            }
            end = e;
            let kind = match info.dtype {
                Dtype::F32 => FloatKind::F32,
                Dtype::F16 => FloatKind::F16,
                Dtype::BF16 => FloatKind::BF16,
                Dtype::I64 | Dtype::I32 | Dtype::I16 | Dtype::I8 | Dtype::U8 | Dtype::BOOL => {
                    continue
                }
                other => {
                    return Err(WeightError::UnsupportedDtype {
                        path: path.to_path_buf(),
                        key: name,
                        dtype: format!("{other:?}"),
                    })
                }
            };
            let entry = Entry {
                kind,
                shape: info.shape.clone(),
                start: data_start + s as u64,
                len: e - s,
            };
            entries.insert(name, entry);
        }
        if data_start + end as u64 != len {
            return Err(invalid(format!(
                "tensor data in the header does not end at the end of the file ({len} bytes; \
                 truncated or trailing bytes?)"
            )));
        }
        Ok(RawFile {
            path: path.to_path_buf(),
            file,
            entries,
        })
    }

    /// The float tensors' names and shapes, without reading their data.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.shape.clone()))
            .collect()
    }

    /// The float tensor `name`, read from the file and widened to f32.
    pub fn read(&mut self, name: &str) -> Result<Tensor, WeightError> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| WeightError::MissingKey {
                path: self.path.clone(),
                key: name.into(),
            })?;
        let numel = e.len / e.kind.size();
        let mut data = Vec::new();
        data.try_reserve_exact(numel).map_err(|_| WeightError::Io {
            path: self.path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("cannot allocate {} bytes for tensor \"{name}\"", 4 * numel),
            ),
        })?;
        // Through a small buffer: no second whole-tensor allocation (whose release would also
        // make glibc keep later large blocks on its heap rather than returning them).
        let mut buf = vec![0u8; CHUNK_BYTES];
        self.file
            .seek(SeekFrom::Start(e.start))
            .map_err(|source| WeightError::Io {
                path: self.path.clone(),
                source,
            })?;
        let mut left = e.len;
        while left > 0 {
            let n = left.min(CHUNK_BYTES);
            if let Err(source) = self.file.read_exact(&mut buf[..n]) {
                return Err(if source.kind() == std::io::ErrorKind::UnexpectedEof {
                    // The file shrank after its header was read.
                    corrupt(
                        &self.path,
                        format!(
                            "tensor \"{name}\" ends past the end of the file (changed while read?)"
                        ),
                    )
                } else {
                    WeightError::Io {
                        path: self.path.clone(),
                        source,
                    }
                });
            }
            widen_into(&buf[..n], e.kind, &mut data);
            left -= n;
        }
        Ok(Tensor::f32(e.shape.clone(), data))
    }
}

/// Fills as much of `buf` as the file has.
fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The float tensors of a safetensors file, by their names in the file.
pub fn load_raw(path: &Path) -> Result<BTreeMap<String, Tensor>, WeightError> {
    let mut file = RawFile::open(path)?;
    let names: Vec<String> = file.entries.keys().cloned().collect();
    names
        .into_iter()
        .map(|k| {
            let t = file.read(&k)?;
            Ok((k, t))
        })
        .collect()
}
