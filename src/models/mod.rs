//! Model builders: each declares an architecture family as an IR graph from loaded weights.

pub mod taesd;

pub use taesd::{build_decoder, detect, DecoderConfig, ModelKind};

use crate::ir::IrError;
use crate::weights::WeightError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model {name:?}; known models: {known}")]
    UnknownModel { name: String, known: String },
    #[error("{file}: these weights are a {found} decoder ({channels} latent channels{pool}), not {model} ({expected} latent channels{expected_pool})")]
    WrongVariant {
        file: String,
        model: &'static str,
        found: &'static str,
        channels: usize,
        pool: &'static str,
        expected: usize,
        expected_pool: &'static str,
    },
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("building the graph: {0}")]
    Ir(#[from] IrError),
}
