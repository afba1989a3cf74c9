//! Unary elementwise ops, one row each: variant, printed name, f32 kernel (the semantics every
//! lowering must keep), MIL op name, whether the Neural Engine is known to run it. The IR
//! evaluator, the MIL lowering, the MIL evaluator and the ANE report all read this table, so a
//! new unary op is one row here and a reference in the conformance tests.

use super::attr::Visit;
use super::{arity, float, Sizes};
use crate::ir::{TensorType, ValueId};
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, NOT_KNOWN, X};
use crate::mil::LowerError;

macro_rules! unary_ops {
    ($($variant:ident => $name:literal, $kernel:expr, $mil:literal, ane: $ane:literal;)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Unary { $($variant),* }

        impl Unary {
            pub const ALL: &'static [Unary] = &[$(Unary::$variant),*];
            pub fn name(self) -> &'static str { match self { $(Unary::$variant => $name),* } }
            pub fn kernel(self) -> fn(f32) -> f32 { match self { $(Unary::$variant => $kernel),* } }
            pub fn mil_name(self) -> &'static str { match self { $(Unary::$variant => $mil),* } }
            pub fn ane(self) -> bool { match self { $(Unary::$variant => $ane),* } }
        }

        pub const MIL: &[MilOp] = &[$(ane_row(MilOp::new($mil, X), $ane)),*];
    };
}

unary_ops! {
    Relu => "relu", |x: f32| x.max(0.0), "relu", ane: true;
    Tanh => "tanh", f32::tanh, "tanh", ane: true;
    Sigmoid => "sigmoid", crate::kernels::sigmoid, "sigmoid", ane: true;
    Silu => "silu", crate::kernels::silu, "silu", ane: true;
    Exp => "exp", f32::exp, "exp", ane: true;
    Sqrt => "sqrt", f32::sqrt, "sqrt", ane: true;
    // Exact (erf) GELU, MIL's default mode; transformers' "gelu".
    Gelu => "gelu", crate::kernels::gelu_erf, "gelu", ane: true;
    Sin => "sin", f32::sin, "sin", ane: true;
    Cos => "cos", f32::cos, "cos", ane: true;
}

/// A row off the Neural Engine unless the table says it runs there.
pub(super) const fn ane_row(row: MilOp, ane: bool) -> MilOp {
    if ane {
        row
    } else {
        row.off_ane(NOT_KNOWN)
    }
}

pub fn name(u: &Unary) -> &'static str {
    u.name()
}

pub fn from_name(name: &str) -> Option<Unary> {
    Unary::ALL.iter().copied().find(|u| u.name() == name)
}

pub fn infer(inputs: &[&TensorType], _u: &Unary) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    float(inputs[0])?;
    Ok(inputs[0].clone())
}

pub fn eval(args: &[&Array], _sizes: &Sizes, u: &Unary) -> Result<Array, String> {
    Ok(kernels::map(args[0], u.kernel()))
}

/// The row is the name; there are no attributes.
pub fn attrs(_v: &mut impl Visit, _u: &mut Unary) -> Result<(), String> {
    Ok(())
}

pub fn lower(e: &mut Emitter, id: ValueId, u: &Unary) -> Result<(), LowerError> {
    let x = e.input(id, 0);
    e.op(id, u.mil_name(), vec![("x", x)])
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    Unary::ALL
        .iter()
        .map(|u| {
            format!(
                "graph t {{\n  %x: fp32[2,H] = input(\"x\")\n  %y: fp32[2,H] = {}(%x)\n  return y=%y\n}}\n",
                u.name()
            )
        })
        .collect()
}
