//! [`Under`]: the part of a source under a key prefix, as a source of its own. A single-file
//! Stable Diffusion checkpoint holds its UNet under `model.diffusion_model.`, its VAE under
//! `first_stage_model.` and its text encoder under `cond_stage_model.transformer.`; each model
//! reads its own part with the keys it would have in a file of its own.

use std::collections::BTreeMap;
use std::path::Path;

use super::{TensorInfo, TensorSource, WeightError, WeightFormat};
use crate::tensor::Tensor;

/// The tensors of `inner` whose keys start with the prefix, listed and read with the prefix
/// stripped. Errors come from `inner`, so they name the full key and the file.
pub struct Under<'a> {
    inner: &'a dyn TensorSource,
    prefix: String,
    tensors: BTreeMap<String, TensorInfo>,
}

impl<'a> Under<'a> {
    pub fn new(inner: &'a dyn TensorSource, prefix: &str) -> Under<'a> {
        let tensors = inner
            .tensors()
            .range(prefix.to_string()..)
            .map_while(|(k, i)| Some((k.strip_prefix(prefix)?.to_string(), i.clone())))
            .collect();
        Under {
            inner,
            prefix: prefix.to_string(),
            tensors,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl TensorSource for Under<'_> {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn format(&self) -> WeightFormat {
        self.inner.format()
    }

    fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    fn read(&self, key: &str) -> Result<Tensor, WeightError> {
        self.inner.read(&format!("{}{key}", self.prefix))
    }

    fn in_place(&self, key: &str) -> Option<super::Spilled> {
        self.inner.in_place(&format!("{}{key}", self.prefix))
    }
}
