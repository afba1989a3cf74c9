//! Calibration: real inputs for a model, and the statistics of its activations on them, from
//! which data-aware compression chooses clipping ranges and weights layers' errors.
//!
//! - [`source`]: `--calibration PATH` (a folder of photos, or a safetensors file of model
//!   inputs) into the model's inputs ([`Calibration`]); for a decoder the photos go through the
//!   matching encoder, built and evaluated by mlc.
//! - [`image`]: decoding PNG/JPEG and fitting a photo to the model's size.
//! - [`layer_inputs`]: what each conv's or linear layer's weights multiply (moments, patch Gram
//!   matrices), for output-aware weight compression.
//! - [`stats`]: one evaluation per sample gathering per-value statistics ([`collect`]).
//! - [`histogram`]: the bounded |x| histogram and the clipping range minimising the error.
//! - [`ranges`]: an emitted package's per-op ranges on the samples (`mlc inspect --ranges`).
//! - [`search`]: which layers keep float activations for an output PSNR (`--activation-min-psnr`).

pub mod histogram;
pub mod image;
pub mod layer_inputs;
pub mod ranges;
pub mod search;
pub mod source;
pub mod stats;

pub use source::{ImageFeed, SampleSpec};
pub use stats::{collect, collect_values, Stats, ValueStats};

use crate::kernels::Array;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Most calibration samples (files in a folder, or rows of a safetensors batch).
pub const MAX_SAMPLES: usize = 1024;
/// Most bytes the samples may hold in memory (f32), whatever their count.
pub const MAX_SAMPLE_BYTES: u64 = 2 << 30;

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// A calibration file or folder that cannot be used, and why.
    #[error("calibration {path}: {reason}")]
    Input { path: String, reason: String },
    /// The model (or its encoder) could not be prepared for calibration.
    #[error("calibration: {0}")]
    Model(String),
    /// Evaluating a sample failed.
    #[error("calibration sample {sample}: {reason}")]
    Eval { sample: String, reason: String },
}

/// The model inputs to calibrate on: per input name, one array per sample, all samples in a
/// fixed order (sorted file names, or the file's batch order).
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    inputs: BTreeMap<String, Vec<Array>>,
    /// Where each sample came from (a file name, or `file[i]`), for messages.
    sources: Vec<String>,
    hash: String,
}

impl Calibration {
    /// Samples given directly: every input must have one array per source.
    pub fn from_samples(
        inputs: BTreeMap<String, Vec<Array>>,
        sources: Vec<String>,
    ) -> Result<Calibration, CalibrationError> {
        let model = |r: String| Err(CalibrationError::Model(r));
        if sources.is_empty() {
            return model("no samples".into());
        }
        if let Some((name, v)) = inputs.iter().find(|(_, v)| v.len() != sources.len()) {
            return model(format!(
                "input {name:?} has {} samples, not {}",
                v.len(),
                sources.len()
            ));
        }
        let hash = hash_inputs(&inputs);
        Ok(Calibration {
            inputs,
            sources,
            hash,
        })
    }

    /// Reads `path` (a folder of PNG/JPEG photos or a safetensors file of model inputs) into the
    /// inputs `spec` describes.
    pub fn load(
        path: &std::path::Path,
        spec: &SampleSpec,
    ) -> Result<Calibration, CalibrationError> {
        source::load(path, spec)
    }

    /// sha256 (hex) of the samples: every input's name, shape and f32 little-endian bytes, in
    /// order. The same files give the same hash; it is what package metadata records.
    pub fn hash(&self) -> String {
        self.hash.clone()
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Sample `i`'s inputs by name.
    pub fn sample(&self, i: usize) -> BTreeMap<String, Array> {
        self.inputs
            .iter()
            .map(|(k, v)| (k.clone(), v[i].clone()))
            .collect()
    }

    /// Where sample `i` came from.
    pub fn source(&self, i: usize) -> &str {
        &self.sources[i]
    }

    pub fn inputs(&self) -> &BTreeMap<String, Vec<Array>> {
        &self.inputs
    }
}

fn hash_inputs(inputs: &BTreeMap<String, Vec<Array>>) -> String {
    let mut h = Sha256::new();
    for (name, arrays) in inputs {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((arrays.len() as u64).to_le_bytes());
        for a in arrays {
            h.update((a.shape.len() as u64).to_le_bytes());
            for d in &a.shape {
                h.update((*d as u64).to_le_bytes());
            }
            let bytes: Vec<u8> = a.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            h.update(&bytes);
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
