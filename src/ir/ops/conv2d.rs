//! `conv2d(x, weight[, bias])`: 2-D convolution of NCHW activations by OIHW weights, with
//! strides, explicit padding, dilations and groups. A symbolic spatial size survives only where
//! the output is exactly that size over the stride (the "same" convolutions and stride-2
//! downsamplers models use). Lowered to MIL's `conv` with `pad_type="custom"`, which the Neural
//! Engine's convolution engine runs.

use super::attr::Visit;
use super::{arity, float, Sizes};
use crate::ir::types::{Dim, TensorType};
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::MilOp;
use crate::mil::values::{ints_value, string_value};
use crate::mil::LowerError;

/// 2-D convolution attributes (NCHW activations, OIHW weights).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conv2d {
    pub strides: [usize; 2],
    /// top, bottom, left, right
    pub pads: [usize; 4],
    pub dilations: [usize; 2],
    pub groups: usize,
}

impl Conv2d {
    /// Stride 1 with `k/2` zero padding: the "same" convolutions TAESD uses.
    pub fn same(kernel: usize) -> Conv2d {
        let p = kernel / 2;
        Conv2d {
            strides: [1, 1],
            pads: [p, p, p, p],
            dilations: [1, 1],
            groups: 1,
        }
    }
}

pub const MIL: &[MilOp] = &[MilOp::new("conv", &["x", "weight", "bias"])];

pub fn name(_p: &Conv2d) -> &'static str {
    "conv2d"
}

pub fn from_name(name: &str) -> Option<Conv2d> {
    (name == "conv2d").then(Conv2d::default)
}

pub fn infer(inputs: &[&TensorType], p: &Conv2d) -> Result<TensorType, String> {
    arity(inputs, 2..=3)?;
    let (x, w) = (inputs[0], inputs[1]);
    float(x)?;
    if x.rank() != 4 || w.rank() != 4 {
        return Err(format!("needs rank-4 x and weight, got {x} and {w}"));
    }
    if x.dtype != w.dtype {
        return Err(format!("x is {} but weight is {}", x.dtype, w.dtype));
    }
    let wk = w.known_shape().ok_or("weight shape must be known")?;
    let (cout, cin_g, kh, kw) = (wk[0], wk[1], wk[2], wk[3]);
    if p.groups == 0 || cout % p.groups != 0 {
        return Err(format!(
            "groups {} does not divide {cout} output channels",
            p.groups
        ));
    }
    if x.shape[1] != Dim::Known(cin_g * p.groups) {
        return Err(format!(
            "x has {} channels, weight {w} expects {}",
            x.shape[1],
            cin_g * p.groups
        ));
    }
    if let Some(b) = inputs.get(2) {
        if b.shape != [Dim::Known(cout)] || b.dtype != x.dtype {
            return Err(format!("bias {b} does not match {cout} output channels"));
        }
    }
    let spatial = |d: &Dim, k: usize, axis: usize| -> Result<Dim, String> {
        let (s, dil) = (p.strides[axis], p.dilations[axis]);
        let pad = p.pads[2 * axis] + p.pads[2 * axis + 1];
        let span = dil * (k - 1);
        match d {
            Dim::Known(n) if n + pad > span => Ok(Dim::Known((n + pad - span - 1) / s + 1)),
            Dim::Known(n) => Err(format!("input size {n} is smaller than the kernel")),
            // floor((n + pad - span - 1) / s) + 1 is exactly n / s for every n that
            // s divides when 0 <= pad - span - 1 + s < s; binding checks s | n.
            Dim::Sym(_) => {
                let c = pad as isize - span as isize - 1 + s as isize;
                if (0..s as isize).contains(&c) {
                    d.divided(s).ok_or_else(|| format!("stride {s} of {d}"))
                } else {
                    Err(format!(
                        "symbolic size {d} with padding {pad} and stride {s} is not {d}/{s}"
                    ))
                }
            }
        }
    };
    Ok(TensorType::new(
        x.dtype,
        vec![
            x.shape[0].clone(),
            Dim::Known(cout),
            spatial(&x.shape[2], kh, 0)?,
            spatial(&x.shape[3], kw, 1)?,
        ],
    ))
}

pub fn eval(args: &[&Array], _sizes: &Sizes, p: &Conv2d) -> Result<Array, String> {
    let bias = args.get(2).map(|b| b.data.as_slice());
    let k = kernels::Conv2d {
        strides: p.strides,
        pads: p.pads,
        dilations: p.dilations,
        groups: p.groups,
    };
    Ok(kernels::conv2d(args[0], args[1], bias, &k))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, p: &mut Conv2d) -> Result<(), String> {
    v.attr("strides", &mut p.strides)?;
    v.attr("pads", &mut p.pads)?;
    v.attr("dilations", &mut p.dilations)?;
    v.attr("groups", &mut p.groups)
}

pub fn lower(e: &mut Emitter, id: ValueId, p: &Conv2d) -> Result<(), LowerError> {
    let out = e.name(id);
    let mut inputs = vec![("x", e.input(id, 0)), ("weight", e.input(id, 1))];
    if e.g.node(id).inputs.len() > 2 {
        inputs.push(("bias", e.input(id, 2)));
    }
    inputs.push(("strides", e.ints(&out, "strides", &p.strides)));
    inputs.push((
        "pad_type",
        e.konst(format!("{out}_pad_type"), string_value("custom")),
    ));
    inputs.push(("pad", e.ints(&out, "pad", &p.pads)));
    inputs.push(("dilations", e.ints(&out, "dilations", &p.dilations)));
    let groups = e.konst(
        format!("{out}_groups"),
        ints_value(&[], vec![p.groups as i32]),
    );
    inputs.push(("groups", groups));
    e.op(id, "conv", inputs)
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    vec![
        "graph t {\n  %x: fp32[1,2,H,W] = input(\"x\")\n  %w: fp32[2,1,2,2] = const([1.0, -1.0, 0.5, 2.0, 0.25, 0.0, -3.0, 1.5])\n  %b: fp32[2] = const([0.5, -1.0])\n  %y: fp32[1,2,H/2,W/2] = conv2d(%x, %w, %b) strides=[2, 2] pads=[1, 0, 1, 0] dilations=[1, 1] groups=2\n  return y=%y\n}\n".into(),
    ]
}
