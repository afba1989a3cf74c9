//! `matmul(x, y) transpose_x=a transpose_y=b`: batched matrix product of x [.., M, K] and
//! y [.., K, N] (each optionally transposed in its last two axes), batch axes broadcast; MIL's
//! `matmul`. A matmul by a constant is a linear layer, which the Neural Engine runs better as a
//! 1x1 conv (the report hints at it).

use super::attr::Visit;
use super::broadcast;
use super::{arity, float, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::MilOp;
use crate::mil::LowerError;

pub const NAME: &str = "matmul";

pub const MIL: &[MilOp] = &[MilOp::new("matmul", &["x", "y"])];

pub fn infer(
    inputs: &[&TensorType],
    transpose_x: &bool,
    transpose_y: &bool,
) -> Result<TensorType, String> {
    arity(inputs, 2..=2)?;
    let (x, y) = (inputs[0], inputs[1]);
    float(x)?;
    if x.dtype != y.dtype || x.rank() < 2 || y.rank() < 2 {
        return Err(format!(
            "needs two float operands of rank >= 2, got {x} and {y}"
        ));
    }
    let last2 = |t: &TensorType, tr: bool| {
        let (a, b) = (t.shape[t.rank() - 2].clone(), t.shape[t.rank() - 1].clone());
        if tr {
            (b, a)
        } else {
            (a, b)
        }
    };
    let (m, k) = last2(x, *transpose_x);
    let (k2, n) = last2(y, *transpose_y);
    if k != k2 {
        return Err(format!("inner sizes {k} and {k2} differ ({x} by {y})"));
    }
    let mut shape = broadcast(&x.shape[..x.rank() - 2], &y.shape[..y.rank() - 2])
        .ok_or_else(|| format!("batch axes of {x} and {y} do not broadcast"))?;
    shape.extend([m, n]);
    Ok(TensorType::new(x.dtype, shape))
}

pub fn eval(
    args: &[&Array],
    _sizes: &Sizes,
    transpose_x: &bool,
    transpose_y: &bool,
) -> Result<Array, String> {
    kernels::matmul(args[0], args[1], *transpose_x, *transpose_y)
        .ok_or_else(|| format!("{:?} by {:?} do not multiply", args[0].shape, args[1].shape))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(
    v: &mut impl Visit,
    transpose_x: &mut bool,
    transpose_y: &mut bool,
) -> Result<(), String> {
    v.attr("transpose_x", transpose_x)?;
    v.attr("transpose_y", transpose_y)
}

pub fn lower(
    e: &mut Emitter,
    id: ValueId,
    transpose_x: &bool,
    transpose_y: &bool,
) -> Result<(), LowerError> {
    let out = e.name(id);
    let tx = e.flag(&out, "transpose_x", *transpose_x);
    let ty = e.flag(&out, "transpose_y", *transpose_y);
    let (x, y) = (e.input(id, 0), e.input(id, 1));
    e.op(
        id,
        "matmul",
        vec![("x", x), ("y", y), ("transpose_x", tx), ("transpose_y", ty)],
    )
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[2,H,3] = input(\"x\")\n  %w: fp32[2,3] = const([1.0, 0.0, -1.0, 0.5, 2.0, 0.25])\n  %y: fp32[2,H,2] = matmul(%x, %w) transpose_x=false transpose_y=true\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
