//! [`Patched`]: a source whose tensors an [`Overlay`] changes as they are read (a LoRA adapter
//! merged into the weights it adapts), so a model reads patched weights the way it reads any.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{TensorInfo, TensorSource, WeightError, WeightFormat};
use crate::tensor::{DType, Tensor, TensorData};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// A change to some tensors of a source, applied as they are read (or, for a tensor a large
/// model keeps a handle of, as the handle is read back: [`super::deferred`]).
pub trait Overlay: Send + Sync {
    /// What messages call it (the adapter file).
    fn name(&self) -> String;
    /// Whether it changes the tensor `key` (the source's key). Tensors it does not change are
    /// passed through untouched: an f16 tensor keeps its bits.
    fn patches(&self, key: &str) -> bool;
    /// Changes `values`, the tensor `key` of shape `shape`, in place, in f32. The reason of an
    /// error is one line; the message adds the overlay, the file and the key.
    fn patch(&self, key: &str, shape: &[usize], values: &mut [f32]) -> Result<(), String>;
    /// [`Overlay::patch`] on an f16 tensor, each value rounded to f16 once. This widens the
    /// whole tensor; an overlay that can patch part of a tensor at a time does it in place.
    fn patch_f16(&self, key: &str, shape: &[usize], values: &mut [f16]) -> Result<(), String> {
        let mut v = vec![0f32; values.len()];
        values.convert_to_f32_slice(&mut v);
        self.patch(key, shape, &mut v)?;
        values.convert_from_f32_slice(&v);
        Ok(())
    }
}

/// `inner` with `overlay` applied. An f16 tensor that is patched is widened to f32 and patched;
/// it is then rounded to f16 once, so it loses no more than one rounding (patching in f16 would
/// round every step) and stays f16 as the file stored it, unless the source is
/// [`Patched::widened`] (an fp32 build, which must not round the fused weight at all). f32
/// stays f32. Keys and shapes are the inner source's.
pub struct Patched<'a> {
    inner: &'a dyn TensorSource,
    overlay: Arc<dyn Overlay>,
    /// Patched f16 tensors come out f32.
    widen: bool,
}

impl<'a> Patched<'a> {
    pub fn new(inner: &'a dyn TensorSource, overlay: Arc<dyn Overlay>) -> Patched<'a> {
        Patched {
            inner,
            overlay,
            widen: false,
        }
    }

    /// Patched f16 tensors are given as f32 (what an fp32 build computes with), not rounded.
    pub fn widened(self) -> Patched<'a> {
        Patched {
            widen: true,
            ..self
        }
    }
}

impl TensorSource for Patched<'_> {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn format(&self) -> WeightFormat {
        self.inner.format()
    }

    fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        self.inner.tensors()
    }

    /// Where the overlay leaves the tensor as it is, the inner source's handle; where it
    /// patches it, that handle (of a tensor stored as read) with the patch applied as it is
    /// read back.
    fn in_place(&self, key: &str) -> Option<super::Spilled> {
        let base = self.inner.in_place(key)?;
        if !self.overlay.patches(key) {
            return Some(base);
        }
        let dtype = match (base.dtype(), self.widen) {
            (DType::F16, true) => DType::F32,
            (dtype, _) => dtype,
        };
        let change = PatchOnRead {
            overlay: self.overlay.clone(),
            path: self.inner.path().to_path_buf(),
            key: key.to_string(),
            widen: self.widen,
        };
        base.deferred(Arc::new(change), dtype, key)
    }

    fn read(&self, key: &str) -> Result<Tensor, WeightError> {
        let t = self.inner.read(key)?;
        if !self.overlay.patches(key) {
            return Ok(t);
        }
        patch(&*self.overlay, self.inner.path(), key, self.widen, t)
    }
}

/// The patch of one tensor, applied when its handle is read back.
struct PatchOnRead {
    overlay: Arc<dyn Overlay>,
    /// The file the tensor is in, and its key there.
    path: PathBuf,
    key: String,
    widen: bool,
}

impl super::deferred::Change for PatchOnRead {
    fn apply(&self, stored: Tensor) -> Result<Tensor, String> {
        patch(&*self.overlay, &self.path, &self.key, self.widen, stored).map_err(|e| e.to_string())
    }
}

/// `t`, the tensor `key` of the file at `path`, patched by `overlay` (see [`Patched`]).
fn patch(
    overlay: &dyn Overlay,
    path: &Path,
    key: &str,
    widen: bool,
    t: Tensor,
) -> Result<Tensor, WeightError> {
    let failed = |reason: String| WeightError::Patch {
        overlay: overlay.name(),
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.replace(['\n', '\r'], " "),
    };
    let Tensor { shape, data } = t;
    match data {
        TensorData::F32(mut v) => {
            overlay.patch(key, &shape, &mut v).map_err(failed)?;
            Ok(Tensor::f32(shape, v))
        }
        TensorData::F16(mut h) if !widen => {
            overlay.patch_f16(key, &shape, &mut h).map_err(failed)?;
            Ok(Tensor::f16(shape, h))
        }
        TensorData::F16(h) => {
            let mut v: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
            drop(h);
            overlay.patch(key, &shape, &mut v).map_err(failed)?;
            Ok(Tensor::f32(shape, v))
        }
        TensorData::I32(_) | TensorData::Bool(_) => {
            Err(failed("only float tensors can be patched".to_string()))
        }
    }
}
