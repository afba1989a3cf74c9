//! The MIL op table: every MIL op mlc emits or reports on, one row each, read by the lowering
//! (minimum target), the printer (input order) and the Neural Engine report (whether it runs
//! there, whether it only moves data).
//!
//! Rows for the ops mlc emits are declared by the IR op files that emit them (`MIL` in each file
//! of `src/ir/ops/`), gathered from the op list ([`crate::ir::ops::mil_ops`]). The rows here are
//! ops that packages written by other tools contain: `inspect` and `--ane` know them. What the
//! evaluator computes is keyed by MIL name in [`super::op_eval`], as it runs other tools'
//! packages too.

use super::target::Target;
use std::sync::OnceLock;

/// How an op fits the Neural Engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ane {
    Yes,
    /// Runs elsewhere, for this reason.
    No(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MilOp {
    pub name: &'static str,
    /// Tensor inputs in the order the op's definition lists them; parameters follow, by name.
    pub inputs: &'static [&'static str],
    /// The oldest deployment target whose opset has the op (in the form mlc emits).
    pub since: Target,
    pub ane: Ane,
    /// Only moves data (reshape, transpose, slices, …): its rank is its inputs' business, so the
    /// Neural Engine report gives it no rank hint.
    pub moves_data: bool,
}

impl MilOp {
    /// An iOS16 op that runs on the Neural Engine; the methods below say otherwise.
    pub const fn new(name: &'static str, inputs: &'static [&'static str]) -> MilOp {
        MilOp {
            name,
            inputs,
            since: Target::Ios16,
            ane: Ane::Yes,
            moves_data: false,
        }
    }

    pub const fn since(self, since: Target) -> MilOp {
        MilOp { since, ..self }
    }

    /// Does not run on the Neural Engine, for this reason.
    pub const fn off_ane(self, why: &'static str) -> MilOp {
        MilOp {
            ane: Ane::No(why),
            ..self
        }
    }

    pub const fn moves_data(self) -> MilOp {
        MilOp {
            moves_data: true,
            ..self
        }
    }
}

/// The tensor input of most ops.
pub const X: &[&str] = &["x"];
/// The tensor inputs of binary ops.
pub const XY: &[&str] = &["x", "y"];
/// The reason for an op no report has seen on the Neural Engine.
pub const NOT_KNOWN: &str = "this op is not known to run on the ANE";

/// Ops that other tools' packages contain and mlc does not emit.
const FOREIGN: &[MilOp] = &[
    MilOp::new("avg_pool", X),
    MilOp::new("batch_norm", X),
    MilOp::new("conv_transpose", &["x", "weight", "bias"]),
    MilOp::new("instance_norm", X),
    MilOp::new("leaky_relu", X),
    MilOp::new("linear", &["x", "weight", "bias"]),
    MilOp::new("max_pool", X),
    MilOp::new("pad", X),
    MilOp::new("reduce_sum", X),
    MilOp::new("squeeze", X).moves_data(),
    MilOp::new("expand_dims", X).moves_data(),
];

/// The ops mlc emits, gathered from the IR op list.
pub fn emitted() -> &'static [MilOp] {
    static TABLE: OnceLock<Vec<MilOp>> = OnceLock::new();
    TABLE.get_or_init(|| crate::ir::ops::mil_ops().copied().collect())
}

/// The row for MIL op type `name`, if mlc knows it.
pub fn lookup(name: &str) -> Option<MilOp> {
    emitted()
        .iter()
        .chain(FOREIGN)
        .find(|o| o.name == name)
        .copied()
}

/// Every known op type, for listings and tests.
pub fn all() -> Vec<MilOp> {
    emitted().iter().chain(FOREIGN).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Binary, Unary};

    #[test]
    fn names_are_unique_and_found() {
        let all = all();
        for (i, op) in all.iter().enumerate() {
            assert!(
                all[..i].iter().all(|o| o.name != op.name),
                "{} is listed twice",
                op.name
            );
            assert_eq!(lookup(op.name).map(|o| o.name), Some(op.name));
        }
        assert!(lookup("no_such_op").is_none());
    }

    #[test]
    fn every_ir_elementwise_op_has_a_mil_row() {
        let names: Vec<&str> = Unary::ALL
            .iter()
            .map(|u| u.mil_name())
            .chain(Binary::ALL.iter().map(|b| b.mil_name()))
            .collect();
        for n in names {
            assert!(emitted().iter().any(|o| o.name == n), "{n} has no row");
        }
    }

    /// The evaluator is keyed by name; every op mlc emits must have one, or `run` and the tests
    /// could not check what mlc writes.
    #[test]
    fn every_emitted_op_has_an_evaluator() {
        for op in emitted() {
            assert!(
                super::super::op_eval::evaluator(op.name).is_some(),
                "{} has no evaluator",
                op.name
            );
        }
        for op in FOREIGN {
            assert!(super::super::op_eval::evaluator(op.name).is_none());
        }
    }
}
