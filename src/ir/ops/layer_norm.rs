//! `layer_norm(x, gamma, beta) axis=a epsilon=e`: normalisation over one axis, gamma and beta
//! as long as that axis: `(x - mean) / sqrt(var + epsilon) * gamma + beta`, as transformers'
//! `LayerNorm` over the last axis, or over the channels (axis 1) of the Neural Engine's
//! `[1, D, 1, S]` layout; MIL's `layer_norm` with one axis.

use super::attr::Visit;
use super::{arity, float, Sizes};
use crate::ir::types::{Dim, TensorType};
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::MilOp;
use crate::mil::LowerError;

pub const NAME: &str = "layer_norm";

pub const MIL: &[MilOp] = &[MilOp::new("layer_norm", &["x", "gamma", "beta"])];

pub fn infer(inputs: &[&TensorType], axis: &usize, _epsilon: &f32) -> Result<TensorType, String> {
    arity(inputs, 3..=3)?;
    let x = inputs[0];
    float(x)?;
    let d = x
        .shape
        .get(*axis)
        .and_then(Dim::known)
        .ok_or_else(|| format!("needs an axis {axis} of known size, got {x}"))?;
    for t in &inputs[1..] {
        if t.shape != [Dim::Known(d)] || t.dtype != x.dtype {
            return Err(format!("gamma/beta must be {}[{d}], got {t}", x.dtype));
        }
    }
    Ok(x.clone())
}

pub fn eval(args: &[&Array], _sizes: &Sizes, axis: &usize, epsilon: &f32) -> Result<Array, String> {
    Ok(kernels::layer_norm(
        args[0],
        &[*axis],
        Some(&args[1].data),
        Some(&args[2].data),
        *epsilon,
    ))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, axis: &mut usize, epsilon: &mut f32) -> Result<(), String> {
    v.attr("axis", axis)?;
    v.attr("epsilon", epsilon)
}

pub fn lower(e: &mut Emitter, id: ValueId, axis: &usize, epsilon: &f32) -> Result<(), LowerError> {
    let out = e.name(id);
    let dtype = e.g.node(id).ty.dtype;
    let axes = e.ints(&out, "axes", &[*axis]);
    let eps = e.scalar(&out, "epsilon", *epsilon, dtype);
    let (x, gamma, beta) = (e.input(id, 0), e.input(id, 1), e.input(id, 2));
    e.op(
        id,
        "layer_norm",
        vec![
            ("x", x),
            ("axes", axes),
            ("gamma", gamma),
            ("beta", beta),
            ("epsilon", eps),
        ],
    )
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[1,S,3] = input(\"x\")\n  %g: fp32[3] = const([1.0, 2.0, 0.5])\n  %b: fp32[3] = const([0.0, 0.1, -0.1])\n  %y: fp32[1,S,3] = layer_norm(%x, %g, %b) axis=2 epsilon=1e-5\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
