//! Core ML's MIL: lowering from the IR, a printer, and an evaluator over emitted programs.
//!
//! The printer and evaluator read only the protobuf (never the IR), so they check what a package
//! really contains, whoever wrote it.

pub mod emit;
pub mod eval;
pub mod lower;
pub mod op_eval;
pub mod ops;
pub mod print;
pub mod target;
pub mod values;

pub use lower::{lower, FeatureTypes, LowerError, Lowered, ModelInfo};
pub use target::Target;
