//! safetensors files: the header is read and checked at open, each tensor's bytes when the tensor
//! is read.
//!
//! The checks are the `safetensors` crate's (which it only makes on a whole-file buffer): valid
//! UTF-8 JSON, known dtypes, and data offsets that tile the data section exactly to the end of
//! the file. Messages add what the crate's do not say: a duplicate key, a cut-off copy, a legacy
//! `torch.save` file given where safetensors were expected.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use safetensors::tensor::Metadata;
use safetensors::Dtype;

use super::{
    alloc_error, corrupt, read_up_to, Bytes, Decoded, FloatKind, StoredDtype, TensorInfo,
    WeightError,
};
use crate::limits::Budget;
use crate::tensor::Tensor;

/// Bytes read at a time: a multiple of every element size, below glibc's mmap threshold.
const CHUNK_BYTES: usize = 64 << 10;

/// The safetensors crate's limit on the JSON header.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// `PROTO 2` then `LONG1` of PyTorch's legacy magic number: what a pre-1.6 `torch.save` starts
/// with. Only used to give a better message than "bad safetensors header".
const LEGACY_TORCH_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

/// An open safetensors file and where each tensor's data lies in it.
pub(crate) struct Index {
    src: Bytes,
    /// Absolute byte offset and length of each tensor's data.
    spans: BTreeMap<String, (u64, usize)>,
    /// The header's `__metadata__` (free-form strings: a LoRA's training settings).
    pub(crate) metadata: BTreeMap<String, String>,
}

impl Index {
    /// Reads and checks the header of a file of `len` bytes.
    pub(crate) fn open(
        path: &Path,
        mut src: Bytes,
        len: u64,
    ) -> Result<(BTreeMap<String, TensorInfo>, Index), WeightError> {
        let io = |source| super::io_error(path, source);
        let invalid = |why: String| corrupt(path, format!("not a valid safetensors file: {why}"));
        let mut prefix = [0u8; LEGACY_TORCH_MAGIC.len()];
        let got = read_up_to(&mut src, &mut prefix).map_err(io)?;
        if prefix[..got].starts_with(LEGACY_TORCH_MAGIC) {
            return Err(corrupt(
                path,
                "legacy (pre-1.6, non-zip) torch.save format is not supported",
            ));
        }
        let runs_past = || {
            invalid(format!(
                "header length runs past the end of the file ({len} bytes; truncated?)"
            ))
        };
        if got < 8 {
            return Err(runs_past());
        }
        let n = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes"));
        if n > MAX_HEADER_BYTES {
            return Err(invalid("header too large".into()));
        }
        if n > len - 8 {
            return Err(runs_past());
        }
        let mut header = vec![0u8; n as usize];
        src.seek(SeekFrom::Start(8)).map_err(io)?;
        src.read_exact(&mut header).map_err(io)?;
        if let Some(key) = duplicate_key(&header) {
            // Read into a map, the last duplicate would silently win; the offsets would then no
            // longer tile the data, and the error would blame an unrelated key.
            return Err(invalid(format!(
                "tensor key \"{key}\" appears twice in the header"
            )));
        }
        let text = std::str::from_utf8(&header)
            .map_err(|e| invalid(format!("invalid UTF-8 in header: {e}")))?;
        let metadata: Metadata = serde_json::from_str(text)
            .map_err(|e| invalid(format!("invalid JSON in header: {e}")))?;

        let mut infos: Vec<(String, &safetensors::tensor::TensorInfo)> =
            metadata.tensors().into_iter().collect();
        infos.sort_by_key(|(_, info)| info.data_offsets);
        let data_start = 8 + n;
        let mut end = 0usize;
        let mut tensors = BTreeMap::new();
        let mut spans = BTreeMap::new();
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
            let dtype = match info.dtype {
                Dtype::F32 => StoredDtype::F32,
                Dtype::F16 => StoredDtype::F16,
                Dtype::BF16 => StoredDtype::BF16,
                d @ (Dtype::BOOL
                | Dtype::U8
                | Dtype::I8
                | Dtype::I16
                | Dtype::U16
                | Dtype::I32
                | Dtype::U32
                | Dtype::I64
                | Dtype::U64) => StoredDtype::Int(format!("{d:?}")),
                d => StoredDtype::Unsupported(format!("{d:?}")),
            };
            spans.insert(name.clone(), (data_start + s as u64, e - s));
            tensors.insert(
                name,
                TensorInfo {
                    dtype,
                    shape: info.shape.clone(),
                },
            );
        }
        if data_start + end as u64 != len {
            return Err(invalid(format!(
                "tensor data in the header does not end at the end of the file ({len} bytes; \
                 truncated or trailing bytes?)"
            )));
        }
        let metadata = metadata
            .metadata()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok((
            tensors,
            Index {
                src,
                spans,
                metadata,
            },
        ))
    }

    /// Where the data of tensor `name` lies in the file: its absolute offset and length, and the
    /// file (`None` for bytes in memory).
    pub(crate) fn span(&self, name: &str) -> Option<(&std::fs::File, u64, usize)> {
        let &(start, len) = self.spans.get(name)?;
        match &self.src {
            Bytes::File(f) => Some((f, start, len)),
            Bytes::Memory(_) => None,
        }
    }

    /// The float tensor `name` (described by `info`), read from the file.
    pub(crate) fn read(
        &mut self,
        path: &Path,
        name: &str,
        info: &TensorInfo,
        budget: &mut Budget,
    ) -> Result<Tensor, WeightError> {
        let (Some(kind), Some(&(start, len))) = (FloatKind::of(&info.dtype), self.spans.get(name))
        else {
            return Err(WeightError::MissingKey {
                path: path.to_path_buf(),
                key: name.into(),
            });
        };
        let numel = len / kind.size();
        let decoded = (numel * kind.decoded_size()) as u64;
        budget
            .charge(&format!("tensor \"{name}\""), decoded)
            .map_err(|r| corrupt(path, r))?;
        let mut data =
            Decoded::with_capacity(kind, numel).ok_or_else(|| alloc_error(path, name, decoded))?;
        // Through a small buffer: no second whole-tensor allocation (whose release would also
        // make glibc keep later large blocks on its heap rather than returning them).
        let mut buf = vec![0u8; CHUNK_BYTES.min(len)];
        self.src
            .seek(SeekFrom::Start(start))
            .map_err(|e| super::io_error(path, e))?;
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK_BYTES);
            if let Err(source) = self.src.read_exact(&mut buf[..n]) {
                return Err(if source.kind() == std::io::ErrorKind::UnexpectedEof {
                    // The file shrank after its header was read.
                    corrupt(
                        path,
                        format!(
                            "tensor \"{name}\" ends past the end of the file (changed while read?)"
                        ),
                    )
                } else {
                    super::io_error(path, source)
                });
            }
            data.extend(&buf[..n]);
            left -= n;
        }
        Ok(data.into_tensor(info.shape.clone()))
    }
}

/// The first key that appears twice at the top level of a JSON header, if it parses that far.
fn duplicate_key(header: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    struct FirstDuplicate;
    impl<'de> Visitor<'de> for FirstDuplicate {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut first = None;
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if first.is_none() && !seen.insert(key.clone()) {
                    first = Some(key);
                }
            }
            Ok(first)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(header);
    de.deserialize_map(FirstDuplicate).ok().flatten()
}
