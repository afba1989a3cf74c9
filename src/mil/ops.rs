//! The MIL op table: every MIL op mlc emits, evaluates or reports on, one row each, read by the
//! lowering (minimum target), the printer (input order), the evaluator (what it computes) and the
//! Neural Engine report (whether it runs there). Elementwise ops come from the IR's own tables
//! ([`Unary`], [`Binary`]), so adding one of those is a single row there.
//!
//! Rows without an evaluator are ops that packages written by other tools contain: `inspect` and
//! `--ane` know them, `run` refuses them by name.

use super::op_eval::{self as e, Args};
use super::target::Target;
use crate::ir::{Binary, Unary};
use crate::kernels::Array;

/// How an op fits the Neural Engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ane {
    Yes,
    /// Runs elsewhere, for this reason.
    No(&'static str),
}

/// What the evaluator computes for an op.
#[derive(Clone, Copy)]
pub enum Eval {
    Unary(fn(f32) -> f32),
    Binary(fn(f32, f32) -> f32),
    Op(fn(&Args) -> Result<Array, String>),
    /// An op with several outputs (`split`), in output order.
    Multi(fn(&Args) -> Result<Vec<Array>, String>),
    /// Known, not evaluated.
    None,
}

#[derive(Clone, Copy)]
pub struct MilOp {
    pub name: &'static str,
    /// Tensor inputs in the order the op's definition lists them; parameters follow, by name.
    pub inputs: &'static [&'static str],
    /// The oldest deployment target whose opset has the op (in the form mlc emits).
    pub since: Target,
    pub ane: Ane,
    pub eval: Eval,
}

impl MilOp {
    /// Runs the op, or says why it cannot: one value per output.
    pub fn evaluate(&self, args: &Args) -> Result<Vec<Array>, String> {
        match self.eval {
            Eval::Unary(f) => e::unary(args, f).map(|a| vec![a]),
            Eval::Binary(f) => e::binary(args, f).map(|a| vec![a]),
            Eval::Op(f) => f(args).map(|a| vec![a]),
            Eval::Multi(f) => f(args),
            Eval::None => Err(format!(
                "op type {:?} is not supported by the evaluator",
                self.name
            )),
        }
    }
}

const fn row(
    name: &'static str,
    inputs: &'static [&'static str],
    since: Target,
    ane: Ane,
    eval: Eval,
) -> MilOp {
    MilOp {
        name,
        inputs,
        since,
        ane,
        eval,
    }
}

use Ane::{No, Yes};
use Target::{Ios16, Ios17, Ios18};

const CAST_OFF_ANE: &str =
    "cast between fp32 and fp16 runs outside the ANE (fp32 model I/O; build with fp16 I/O to avoid it)";
const X: &[&str] = &["x"];
const NOT_KNOWN: &str = "this op is not known to run on the ANE";

/// Ops other than the elementwise tables.
const OPS: &[MilOp] = &[
    row(
        "identity",
        X,
        Ios16,
        No("identity is not known to run on the ANE"),
        Eval::Op(e::identity),
    ),
    row("rsqrt", X, Ios16, Yes, Eval::Op(e::rsqrt)),
    row("clip", X, Ios16, Yes, Eval::Op(e::clip)),
    row(
        "conv",
        &["x", "weight", "bias"],
        Ios16,
        Yes,
        Eval::Op(e::conv),
    ),
    row(
        "upsample_nearest_neighbor",
        X,
        Ios16,
        Yes,
        Eval::Op(e::upsample_nearest_neighbor),
    ),
    row("reduce_mean", X, Ios16, Yes, Eval::Op(e::reduce_mean)),
    row("reshape", X, Ios16, Yes, Eval::Op(e::reshape)),
    row("split", X, Ios16, Yes, Eval::Multi(e::split)),
    row("tile", X, Ios16, Yes, Eval::Op(e::tile)),
    row("transpose", X, Ios16, Yes, Eval::Op(e::transpose)),
    row("cast", X, Ios16, No(CAST_OFF_ANE), Eval::Op(e::cast)),
    row(
        "constexpr_lut_to_dense",
        &["indices", "lut"],
        Ios16,
        Yes,
        Eval::Op(e::constexpr_lut_to_dense),
    ),
    row(
        "constexpr_affine_dequantize",
        &["quantized_data"],
        Ios16,
        Yes,
        Eval::Op(e::constexpr_affine_dequantize),
    ),
    row(
        "constexpr_blockwise_shift_scale",
        &["data"],
        Ios18,
        Yes,
        Eval::Op(e::constexpr_blockwise_shift_scale),
    ),
    // Activation quantization: Core ML fuses a dequantize into the conv or add that reads it.
    row("quantize", &["input"], Ios17, Yes, Eval::Op(e::quantize)),
    row(
        "dequantize",
        &["input"],
        Ios17,
        Yes,
        Eval::Op(e::dequantize),
    ),
    row("matmul", &["x", "y"], Ios16, Yes, Eval::Op(e::matmul)),
    row("softmax", X, Ios16, Yes, Eval::Op(e::softmax)),
    row(
        "layer_norm",
        &["x", "gamma", "beta"],
        Ios16,
        Yes,
        Eval::Op(e::layer_norm),
    ),
    row("gather", &["x", "indices"], Ios16, Yes, Eval::Op(e::gather)),
    row(
        "reduce_argmax",
        X,
        Ios16,
        No(NOT_KNOWN),
        Eval::Op(e::reduce_argmax),
    ),
    row(
        "scaled_dot_product_attention",
        &["query", "key", "value", "attn_mask"],
        Ios18,
        No(NOT_KNOWN),
        Eval::Op(e::scaled_dot_product_attention),
    ),
    row("slice_by_index", X, Ios16, Yes, Eval::Op(e::slice_by_index)),
    row("concat", &["values"], Ios16, Yes, Eval::Op(e::concat)),
    row("shape", X, Ios16, No(NOT_KNOWN), Eval::Op(e::shape)),
    row(
        "pixel_shuffle",
        X,
        Ios16,
        No(NOT_KNOWN),
        Eval::Op(e::pixel_shuffle),
    ),
    // Written by other tools; known to the report and the printer, not evaluated.
    row("avg_pool", X, Ios16, Yes, Eval::None),
    row("batch_norm", X, Ios16, Yes, Eval::None),
    row(
        "conv_transpose",
        &["x", "weight", "bias"],
        Ios16,
        Yes,
        Eval::None,
    ),
    row("instance_norm", X, Ios16, Yes, Eval::None),
    row("leaky_relu", X, Ios16, Yes, Eval::None),
    row("linear", &["x", "weight", "bias"], Ios16, Yes, Eval::None),
    row("max_pool", X, Ios16, Yes, Eval::None),
    row("pad", X, Ios16, Yes, Eval::None),
    row("reduce_sum", X, Ios16, Yes, Eval::None),
    row("squeeze", X, Ios16, Yes, Eval::None),
    row("expand_dims", X, Ios16, Yes, Eval::None),
];

const XY: &[&str] = &["x", "y"];

/// The row for MIL op type `name`, if mlc knows it.
pub fn lookup(name: &str) -> Option<MilOp> {
    if let Some(op) = OPS.iter().find(|o| o.name == name) {
        return Some(*op);
    }
    if let Some(u) = Unary::ALL.iter().find(|u| u.mil_name() == name) {
        let ane = if u.ane() { Yes } else { No(NOT_KNOWN) };
        return Some(row(u.mil_name(), X, Ios16, ane, Eval::Unary(u.kernel())));
    }
    Binary::ALL.iter().find(|b| b.mil_name() == name).map(|b| {
        let ane = if b.ane() { Yes } else { No(NOT_KNOWN) };
        row(b.mil_name(), XY, Ios16, ane, Eval::Binary(b.kernel()))
    })
}

/// Every known op type, for listings and tests.
pub fn all() -> Vec<MilOp> {
    let mut v: Vec<MilOp> = OPS.to_vec();
    v.extend(Unary::ALL.iter().filter_map(|u| lookup(u.mil_name())));
    v.extend(Binary::ALL.iter().filter_map(|b| lookup(b.mil_name())));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for u in Unary::ALL {
            assert!(matches!(
                lookup(u.mil_name()).map(|o| o.eval),
                Some(Eval::Unary(_))
            ));
        }
        for b in Binary::ALL {
            assert!(matches!(
                lookup(b.mil_name()).map(|o| o.eval),
                Some(Eval::Binary(_))
            ));
        }
    }
}
