//! `upsample(x) scale=k`: nearest-neighbour upsampling of H and W of an NCHW tensor by an
//! integer factor; MIL's `upsample_nearest_neighbor` with float scale factors.

use super::attr::Visit;
use super::{arity, float, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, X};
use crate::mil::values::floats_value;
use crate::mil::LowerError;

pub const NAME: &str = "upsample";

pub const MIL: &[MilOp] = &[MilOp::new("upsample_nearest_neighbor", X)];

pub fn infer(inputs: &[&TensorType], scale: &usize) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    let x = inputs[0];
    float(x)?;
    if x.rank() != 4 || *scale == 0 {
        return Err(format!(
            "needs a rank-4 input and a scale >= 1, got {x} x{scale}"
        ));
    }
    let mut shape = x.shape.clone();
    shape[2] = shape[2].scaled(*scale);
    shape[3] = shape[3].scaled(*scale);
    Ok(TensorType::new(x.dtype, shape))
}

pub fn eval(args: &[&Array], _sizes: &Sizes, scale: &usize) -> Result<Array, String> {
    Ok(kernels::upsample_nearest(args[0], *scale, *scale))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, scale: &mut usize) -> Result<(), String> {
    v.attr("scale", scale)
}

pub fn lower(e: &mut Emitter, id: ValueId, scale: &usize) -> Result<(), LowerError> {
    let out = e.name(id);
    let sh = e.konst(
        format!("{out}_scale_factor_height"),
        floats_value(&[], vec![*scale as f32]),
    );
    let sw = e.konst(
        format!("{out}_scale_factor_width"),
        floats_value(&[], vec![*scale as f32]),
    );
    let x = e.input(id, 0);
    e.op(
        id,
        "upsample_nearest_neighbor",
        vec![
            ("x", x),
            ("scale_factor_height", sh),
            ("scale_factor_width", sw),
        ],
    )
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[1,4,H,W] = input(\"x\")\n  %y: fp32[1,4,2*H,2*W] = upsample(%x) scale=2\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
