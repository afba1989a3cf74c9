//! `reshape_like(x, reference)`: x reshaped to the shape of a reference value: how a size that
//! only the running model knows (an enumerated `H` and `W`) is restored after a flattening. A
//! static reference lowers to a MIL `reshape` to its shape; a symbolic one reads the shape at run
//! time with MIL's `shape` op (not known to run on the Neural Engine) first.

use super::attr::Visit;
use super::{arity, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::Array;
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, NOT_KNOWN, X};
use crate::mil::values::{ints_value, tensor_type};
use crate::mil::LowerError;
use crate::tensor::DType;

pub const NAME: &str = "reshape_like";

pub const MIL: &[MilOp] = &[MilOp::new("shape", X).off_ane(NOT_KNOWN)];

pub fn infer(inputs: &[&TensorType]) -> Result<TensorType, String> {
    arity(inputs, 2..=2)?;
    let (x, r) = (inputs[0], inputs[1]);
    if x.elements() != r.elements() {
        return Err(format!("cannot reshape {x} like {r}"));
    }
    Ok(r.with_dtype(x.dtype))
}

pub fn eval(args: &[&Array], _sizes: &Sizes) -> Result<Array, String> {
    Ok(args[0].clone().reshape(args[1].shape.clone()))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(_v: &mut impl Visit) -> Result<(), String> {
    Ok(())
}

pub fn lower(e: &mut Emitter, id: ValueId) -> Result<(), LowerError> {
    let out = e.name(id);
    let reference = e.input_type(id, 1);
    let target = match reference.known_shape() {
        Some(shape) => {
            let v = shape.iter().map(|&n| n as i32).collect();
            e.konst(format!("{out}_shape"), ints_value(&[shape.len()], v))
        }
        None => {
            // The reference's size is only known when the model runs.
            let name = format!("{out}_shape");
            let rank = reference.rank();
            e.check_target("shape", &e.g.node(id).name)?;
            let x1 = e.input(id, 1);
            e.push(
                "shape",
                vec![("x", x1)],
                &name,
                tensor_type(&TensorType::known(DType::I32, &[rank])),
            );
            name
        }
    };
    let x = e.input(id, 0);
    e.op(id, "reshape", vec![("x", x), ("shape", target)])
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[1,4,H*W] = input(\"x\")\n  %r: fp32[1,4,H,W] = input(\"r\")\n  %y: fp32[1,4,H,W] = reshape_like(%x, %r)\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
