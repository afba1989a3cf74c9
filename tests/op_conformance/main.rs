//! Op conformance: every IR op, on random inputs, against a naive f64 reference written here.
//!
//! For each case a one-op graph is built and three things are checked:
//! (a) `Op::infer` gives the shape (and dtype) of the reference's result, symbols bound;
//! (b) the IR evaluator matches the reference;
//! (c) the graph lowered to MIL (fp32, iOS16; iOS18 for the fused attention op) and run by the MIL
//!     evaluator matches the reference. Ops the MIL lowering refuses by design (group norm, and
//!     attention below iOS18 or with a scale other than 1/sqrt(D)) go through the pass that
//!     lowers them first, as the pipeline does.
//!
//! References are deliberately the slowest obvious formulation (direct loops, index arithmetic)
//! so they share nothing with the kernels under test. Tolerances are per case: `|got - want| <=
//! tol * (1 + |want|)`.
//!
//! Coverage comes from the op list (`mlc::ir::OpKind::ALL`, generated with `Op` itself): `cases`
//! matches every kind with no wildcard, so a new op does not compile here until it has cases.
//! New `Unary`/`Binary` rows are picked up from `Unary::ALL`/`Binary::ALL`, and their references
//! come from exhaustive matches too.
//!
//! Modules: `case` (what a case is, its operands), `reference` (the references), one module of
//! cases per op family (`elementwise`, `spatial`, `norm`, `attention`, `layout`), `coverage`
//! (which cases each op kind has), `check` (the three checks).

mod attention;
mod case;
mod check;
mod coverage;
mod elementwise;
mod layout;
mod norm;
mod reference;
mod spatial;

/// What every module of this test uses.
mod prelude {
    pub(crate) use crate::attention::*;
    pub(crate) use crate::case::*;
    pub(crate) use crate::elementwise::*;
    pub(crate) use crate::layout::*;
    pub(crate) use crate::norm::*;
    pub(crate) use crate::reference::*;
    pub(crate) use crate::spatial::*;
    pub(crate) use half::f16;
    pub(crate) use mlc::ir::eval::evaluate;
    pub(crate) use mlc::ir::{Binary, ConstData, Conv2d, Dim, Graph, Op, TensorType, Unary};
    pub(crate) use mlc::kernels::Array;
    pub(crate) use mlc::mil::lower::{lower, FeatureTypes, ModelInfo};
    pub(crate) use mlc::mil::Target;
    pub(crate) use mlc::package::BlobReader;
    pub(crate) use mlc::passes::lower_attention::LowerAttention;
    pub(crate) use mlc::passes::lower_group_norm::LowerGroupNorm;
    pub(crate) use mlc::passes::Pass;
    pub(crate) use mlc::proto::specification::model::Type as ModelType;
    pub(crate) use mlc::tensor::{DType, Tensor};
    pub(crate) use std::collections::BTreeMap;
}

use coverage::cases;
use mlc::ir::{Binary, Op, OpKind, Unary};

#[test]
fn every_op_matches_its_reference() {
    let mut failures = Vec::new();
    let mut count = 0;
    for &kind in OpKind::ALL {
        for c in cases(kind) {
            count += 1;
            failures.extend(check::run(&c));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_op_variant_and_table_row_has_cases() {
    for &kind in OpKind::ALL {
        let cs = cases(kind);
        assert!(!cs.is_empty(), "{kind:?} has no conformance case");
        for c in &cs {
            assert_eq!(c.op.kind(), kind, "case {} is filed under {kind:?}", c.name);
        }
    }
    let ops: Vec<Op> = [OpKind::Unary, OpKind::Binary]
        .into_iter()
        .flat_map(cases)
        .map(|c| c.op)
        .collect();
    for &u in Unary::ALL {
        assert!(ops.contains(&Op::Unary(u)), "{} has no case", u.name());
    }
    for &b in Binary::ALL {
        assert!(ops.contains(&Op::Binary(b)), "{} has no case", b.name());
    }
}

/// The harness must be able to fail: a wrong reference is caught by all three checks.
#[test]
fn a_wrong_reference_fails() {
    let mut c = cases(OpKind::Softmax).remove(0);
    c.want[3] += 1e-3;
    let errors = check::run(&c);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("IR eval") && errors[1].contains("MIL eval"),
        "{errors:?}"
    );
    let mut c = cases(OpKind::Conv2d).remove(0);
    c.want_shape[2] += 1;
    assert_eq!(
        check::run(&c).len(),
        3,
        "a wrong shape fails infer and both evaluators"
    );
}
