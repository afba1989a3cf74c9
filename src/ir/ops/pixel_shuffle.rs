//! `pixel_shuffle(x) factor=r`: [N, C·r², H, W] → [N, C, H·r, W·r] (channel c·r² + i·r + j goes
//! to row h·r + i, column w·r + j), as PyTorch's `pixel_shuffle` and MIL's. Not known to run on
//! the Neural Engine.

use super::attr::Visit;
use super::{arity, float, Sizes};
use crate::ir::types::{Dim, TensorType};
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, NOT_KNOWN, X};
use crate::mil::LowerError;

pub const NAME: &str = "pixel_shuffle";

pub const MIL: &[MilOp] = &[MilOp::new("pixel_shuffle", X).off_ane(NOT_KNOWN)];

pub fn infer(inputs: &[&TensorType], factor: &usize) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    let x = inputs[0];
    float(x)?;
    let r = *factor;
    let c = match x.shape.get(1).and_then(Dim::known) {
        Some(c) if x.rank() == 4 && r > 0 && c % (r * r) == 0 => c / (r * r),
        _ => return Err(format!("needs [N, C*{r}*{r}, H, W] with known C, got {x}")),
    };
    Ok(TensorType::new(
        x.dtype,
        vec![
            x.shape[0].clone(),
            Dim::Known(c),
            x.shape[2].scaled(r),
            x.shape[3].scaled(r),
        ],
    ))
}

pub fn eval(args: &[&Array], _sizes: &Sizes, factor: &usize) -> Result<Array, String> {
    kernels::pixel_shuffle(args[0], *factor)
        .ok_or_else(|| format!("{:?} does not shuffle by {factor}", args[0].shape))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, factor: &mut usize) -> Result<(), String> {
    v.attr("factor", factor)
}

pub fn lower(e: &mut Emitter, id: ValueId, factor: &usize) -> Result<(), LowerError> {
    let out = e.name(id);
    let f = e.int(&out, "upscale_factor", *factor);
    let x = e.input(id, 0);
    e.op(id, "pixel_shuffle", vec![("x", x), ("upscale_factor", f)])
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[1,8,H,W] = input(\"x\")\n  %y: fp32[1,2,2*H,2*W] = pixel_shuffle(%x) factor=2\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
