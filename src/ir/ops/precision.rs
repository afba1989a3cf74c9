//! `precision(x) fp32=b`: a fence around a mixed-precision region; the value passes unchanged.
//!
//! `fp32=true` opens a region: from here the model computes in fp32 even in an fp16 build.
//! `fp32=false` closes it: back to the build's precision. The graph is built in fp32, so a
//! fence means nothing until `cast_fp16` turns the build fp16: it then makes each fence a cast
//! where the precision changes (or nothing) and keeps the ops fed by fp32 values in fp32 (see
//! `passes/cast_fp16.rs`). What reaches the lowering is an fp32 build's fence, which emits no
//! MIL op at all: its users read its input's value, so fences leave fp32 packages unchanged.
//! Numerically fragile parts (the timestep embedding's `sin(t · freq)` at t = 999, SD 2.1's
//! upcast attention scores and softmax) are what regions are for.

use super::attr::Visit;
use super::{arity, float, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::Array;
use crate::mil::emit::Emitter;
use crate::mil::ops::MilOp;
use crate::mil::LowerError;

pub const NAME: &str = "precision";

/// Nothing of its own: an output fence emits `identity`, which `split` declares.
pub const MIL: &[MilOp] = &[];

pub fn infer(inputs: &[&TensorType], _fp32: &bool) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    float(inputs[0])?;
    Ok(inputs[0].clone())
}

pub fn eval(args: &[&Array], _sizes: &Sizes, _fp32: &bool) -> Result<Array, String> {
    Ok(args[0].clone())
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, fp32: &mut bool) -> Result<(), String> {
    v.attr("fp32", fp32)
}

/// No op: users read the input's value. An output needs a value of its own, named after the
/// feature, so a fence that is an output becomes an `identity`.
pub fn lower(e: &mut Emitter, id: ValueId, _fp32: &bool) -> Result<(), LowerError> {
    let x = e.g.node(id).inputs[0];
    if e.g.outputs().iter().any(|&(_, v)| v == id) {
        let x = e.name(x);
        return e.op(id, "identity", vec![("x", x)]);
    }
    e.alias(id, x);
    Ok(())
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[2,H] = input(\"x\")\n  %a: fp32[2,H] = precision(%x) fp32=true\n  %b: fp32[2,H] = sin(%a)\n  %y: fp32[2,H] = precision(%b) fp32=false\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
