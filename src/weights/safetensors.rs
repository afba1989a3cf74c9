//! safetensors files, parsed by the `safetensors` crate (which validates the header, offsets and
//! total length before we touch any tensor data).

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::{corrupt, keys, widen, FloatKind, KeyStyle, WeightError};
use crate::limits::Budget;
use crate::tensor::Tensor;

/// `PROTO 2` then `LONG1` of PyTorch's legacy magic number: what a pre-1.6 `torch.save` starts
/// with. Only used to give a better message than "bad safetensors header".
const LEGACY_TORCH_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

pub(crate) fn load(
    path: &Path,
    bytes: &[u8],
    budget: &mut Budget,
) -> Result<(KeyStyle, BTreeMap<String, Tensor>), WeightError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        if let Some(key) = duplicate_key(bytes) {
            // The crate reads the header into a map, where the last duplicate silently wins;
            // the offsets then no longer tile the data, and it blames whichever tensor comes
            // first after the gap, an unrelated key.
            corrupt(
                path,
                format!("not a valid safetensors file: tensor key \"{key}\" appears twice in the header"),
            )
        } else if bytes.starts_with(LEGACY_TORCH_MAGIC) {
            corrupt(
                path,
                "legacy (pre-1.6, non-zip) torch.save format is not supported",
            )
        } else {
            let why = match e {
                // The crate's wording for these does not say the likely cause: a cut-off copy.
                SafeTensorError::InvalidHeaderLength | SafeTensorError::HeaderTooSmall => {
                    format!(
                        "header length runs past the end of the file ({} bytes; truncated?)",
                        bytes.len()
                    )
                }
                SafeTensorError::MetadataIncompleteBuffer => format!(
                    "tensor data in the header does not end at the end of the file ({} bytes; \
                     truncated or trailing bytes?)",
                    bytes.len()
                ),
                e => e.to_string(),
            };
            corrupt(path, format!("not a valid safetensors file: {why}"))
        }
    })?;
    let mut views = st.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<String> = views.iter().map(|(n, _)| n.clone()).collect();
    let (style, kept) = keys::normalise(path, &names)?;

    let mut tensors = BTreeMap::new();
    for (i, upstream) in kept {
        let (name, view) = &views[i];
        let kind = match view.dtype() {
            Dtype::F32 => FloatKind::F32,
            Dtype::F16 => FloatKind::F16,
            Dtype::BF16 => FloatKind::BF16,
            other => {
                return Err(WeightError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    key: name.clone(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        // The crate has checked data length == numel * element size for every tensor, so the
        // f32 copy is at most twice the data; still charged, as the budget may be set lower.
        let decoded = (view.data().len() / kind.size()) as u64 * 4;
        budget
            .charge(&format!("tensor \"{name}\""), decoded)
            .map_err(|r| corrupt(path, r))?;
        let data = widen(view.data(), kind);
        tensors.insert(upstream, Tensor::f32(view.shape().to_vec(), data));
    }
    Ok((style, tensors))
}

/// The first key that appears twice at the top level of the file's JSON header, if the header
/// can be read that far.
fn duplicate_key(bytes: &[u8]) -> Option<String> {
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

    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = usize::try_from(n).ok()?.checked_add(8)?;
    let header = bytes.get(8..end)?;
    let mut de = serde_json::Deserializer::from_slice(header);
    de.deserialize_map(FirstDuplicate).ok().flatten()
}
