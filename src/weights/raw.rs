//! Tensors under the names the file gives them, for model families that own their key layouts
//! (the full VAEs): safetensors only, floating-point tensors widened to f32, integer tensors
//! (training counters such as `num_batches_tracked`) left out.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{corrupt, widen, FloatKind, WeightError};
use crate::tensor::Tensor;

/// The float tensors of a safetensors file, by their names in the file.
pub fn load_raw(path: &Path) -> Result<BTreeMap<String, Tensor>, WeightError> {
    // Regular files only, size-limited; f16/bf16 widen at most 2x what the crate validated.
    let bytes = super::read_file(path)?;
    if super::is_zip(&bytes) {
        return Err(corrupt(
            path,
            "a PyTorch checkpoint; this model reads safetensors files (convert it, or use the \
             diffusers or single-file .safetensors release)",
        ));
    }
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => FloatKind::F32,
            Dtype::F16 => FloatKind::F16,
            Dtype::BF16 => FloatKind::BF16,
            Dtype::I64 | Dtype::I32 | Dtype::I16 | Dtype::I8 | Dtype::U8 | Dtype::BOOL => continue,
            other => {
                return Err(WeightError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    key: name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        let data = widen(view.data(), kind);
        out.insert(name, Tensor::f32(view.shape().to_vec(), data));
    }
    Ok(out)
}
