//! mlc: a pure-Rust model compiler for Apple Core ML.
//!
//! The pipeline (see README and DESIGN.md):
//! weights ([`weights`]) → model builder ([`models`]) → IR ([`ir`]) → passes ([`passes`]) →
//! MIL program ([`mil`]) → `.mlpackage` ([`package`]). Each stage knows only the one before it.

pub mod kernels;
pub mod proto;
pub mod tensor;
pub mod weights;
pub mod package;
