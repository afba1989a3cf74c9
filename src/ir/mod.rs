//! The IR: a typed dataflow graph of high-level ops.
//!
//! - [`types`]: `TensorType` = dtype + shape of known or symbolic (`k*H`) dimensions.
//! - [`ops`]: the closed `Op` set, one file per op (inference, evaluation, text, lowering).
//! - [`graph`]: the arena of nodes in definition order; handles are `ValueId`s.
//! - [`verify`]: the invariants, all checked at once.
//! - [`eval`]: an f32 CPU evaluator, the ground truth every pass is tested against.
//! - [`print`]: the textual form tests read; [`parse`] reads it back.
//! - [`weighted_layer`]: the convs and matmuls that multiply their input by a constant weight.
//!
//! Invariants: definitions come before uses (arena order is topological), every handle is valid,
//! every stored type equals the type its op infers from its inputs, node names are unique.

pub mod dot;
pub mod eval;
pub mod graph;
pub mod ops;
pub mod parse;
pub mod print;
pub mod split;
pub mod types;
pub mod verify;
pub mod weighted_layer;

pub use graph::{Graph, Node, Rebuilder, ValueId};
pub use ops::{Binary, ConstData, Conv2d, Op, OpKind, Palettized, Quantized, Unary};
pub use types::{known_dims, Dim, SymDim, TensorType};

/// What can be wrong with a graph, naming the node at fault.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum IrError {
    #[error("node {node}: input {value} is not defined before it")]
    Dangling { node: String, value: ValueId },
    #[error("node {node} ({op}): {reason}")]
    Type {
        node: String,
        op: &'static str,
        reason: String,
    },
    #[error("node {node}: stored type {stored} differs from inferred type {inferred}")]
    StaleType {
        node: String,
        stored: TensorType,
        inferred: TensorType,
    },
    #[error("node name {0:?} is used more than once")]
    DuplicateName(String),
    #[error("graph output {name:?} refers to undefined value {value}")]
    BadOutput { name: String, value: ValueId },
    #[error("graph has no outputs")]
    NoOutputs,
    #[error("{count} problems: {first} (and more)")]
    Many { count: usize, first: Box<IrError> },
    #[error("evaluating node {node}: {reason}")]
    Eval { node: String, reason: String },
}
