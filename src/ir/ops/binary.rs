//! Binary elementwise ops with numpy broadcasting (inputs x, y), one row each like
//! [`super::Unary`]: a new binary op is one row here and a reference in the conformance tests.

use super::attr::Visit;
use super::unary::ane_row;
use super::{arity, float, Sizes};
use crate::ir::types::Dim;
use crate::ir::{TensorType, ValueId};
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, XY};
use crate::mil::LowerError;

macro_rules! binary_ops {
    ($($variant:ident => $name:literal, $kernel:expr, $mil:literal, ane: $ane:literal;)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Binary { $($variant),* }

        impl Binary {
            pub const ALL: &'static [Binary] = &[$(Binary::$variant),*];
            pub fn name(self) -> &'static str { match self { $(Binary::$variant => $name),* } }
            pub fn kernel(self) -> fn(f32, f32) -> f32 { match self { $(Binary::$variant => $kernel),* } }
            pub fn mil_name(self) -> &'static str { match self { $(Binary::$variant => $mil),* } }
            pub fn ane(self) -> bool { match self { $(Binary::$variant => $ane),* } }
        }

        pub const MIL: &[MilOp] = &[$(ane_row(MilOp::new($mil, XY), $ane)),*];
    };
}

binary_ops! {
    Add => "add", |a: f32, b: f32| a + b, "add", ane: true;
    Sub => "sub", |a: f32, b: f32| a - b, "sub", ane: true;
    Mul => "mul", |a: f32, b: f32| a * b, "mul", ane: true;
    Div => "div", |a: f32, b: f32| a / b, "real_div", ane: true;
    Maximum => "maximum", f32::max, "maximum", ane: true;
    Minimum => "minimum", f32::min, "minimum", ane: true;
}

pub fn name(b: &Binary) -> &'static str {
    b.name()
}

pub fn from_name(name: &str) -> Option<Binary> {
    Binary::ALL.iter().copied().find(|b| b.name() == name)
}

pub fn infer(inputs: &[&TensorType], _b: &Binary) -> Result<TensorType, String> {
    arity(inputs, 2..=2)?;
    let (a, b) = (inputs[0], inputs[1]);
    float(a)?;
    if a.dtype != b.dtype {
        return Err(format!("operands are {} and {}", a.dtype, b.dtype));
    }
    let shape =
        broadcast(&a.shape, &b.shape).ok_or_else(|| format!("{a} and {b} do not broadcast"))?;
    Ok(TensorType::new(a.dtype, shape))
}

pub fn eval(args: &[&Array], _sizes: &Sizes, b: &Binary) -> Result<Array, String> {
    kernels::binary(args[0], args[1], b.kernel()).ok_or_else(|| {
        format!(
            "shapes {:?} and {:?} do not broadcast",
            args[0].shape, args[1].shape
        )
    })
}

/// The row is the name; there are no attributes.
pub fn attrs(_v: &mut impl Visit, _b: &mut Binary) -> Result<(), String> {
    Ok(())
}

pub fn lower(e: &mut Emitter, id: ValueId, b: &Binary) -> Result<(), LowerError> {
    let (x, y) = (e.input(id, 0), e.input(id, 1));
    e.op(id, b.mil_name(), vec![("x", x), ("y", y)])
}

/// Numpy broadcasting over possibly symbolic dimensions: equal dims, or a known 1.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let rank = a.len().max(b.len());
    let one = Dim::Known(1);
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank {
                &a[i + a.len() - rank]
            } else {
                &one
            };
            let db = if i + b.len() >= rank {
                &b[i + b.len() - rank]
            } else {
                &one
            };
            if da == db || *db == one {
                Some(da.clone())
            } else if *da == one {
                Some(db.clone())
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    Binary::ALL
        .iter()
        .map(|b| {
            format!(
                "graph t {{\n  %x: fp32[2,H] = input(\"x\")\n  %c: fp32[1] = const([2.0])\n  %y: fp32[2,H] = {}(%x, %c)\n  return y=%y\n}}\n",
                b.name()
            )
        })
        .collect()
}
