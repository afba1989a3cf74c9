//! `group_norm(x, gamma, beta) groups=g epsilon=e`: x `[N, C, H, W]` normalised over each group
//! of C/g channels and all of H and W, then scaled by gamma `[C]` and shifted by beta `[C]`.
//! MIL has no group norm: the `lower_group_norm` pass rewrites it into primitives valid for every
//! enumerated size before lowering, so it emits no MIL op itself. The evaluator computes it
//! directly (two-pass, f64 sums), independent of that rewrite, so the rewrite is checked against
//! a separate formulation.

use super::attr::Visit;
use super::{arity, float, Sizes};
use crate::ir::types::{Dim, TensorType};
use crate::ir::ValueId;
use crate::kernels::Array;
use crate::mil::emit::Emitter;
use crate::mil::ops::MilOp;
use crate::mil::LowerError;

pub const NAME: &str = "group_norm";

pub const MIL: &[MilOp] = &[];

pub fn infer(inputs: &[&TensorType], groups: &usize, _epsilon: &f32) -> Result<TensorType, String> {
    arity(inputs, 3..=3)?;
    let x = inputs[0];
    float(x)?;
    let c = match x.shape.get(1) {
        Some(Dim::Known(c)) if x.rank() == 4 => *c,
        _ => return Err(format!("needs [N,C,H,W] with known C, got {x}")),
    };
    if *groups == 0 || c % groups != 0 {
        return Err(format!("{groups} groups do not divide {c} channels"));
    }
    for t in &inputs[1..] {
        if t.shape != [Dim::Known(c)] || t.dtype != x.dtype {
            return Err(format!("gamma/beta must be {}[{c}], got {t}", x.dtype));
        }
    }
    Ok(x.clone())
}

pub fn eval(
    args: &[&Array],
    _sizes: &Sizes,
    groups: &usize,
    epsilon: &f32,
) -> Result<Array, String> {
    group_norm(args[0], &args[1].data, &args[2].data, *groups, *epsilon)
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, groups: &mut usize, epsilon: &mut f32) -> Result<(), String> {
    v.attr("groups", groups)?;
    v.attr("epsilon", epsilon)
}

pub fn lower(
    e: &mut Emitter,
    id: ValueId,
    _groups: &usize,
    _epsilon: &f32,
) -> Result<(), LowerError> {
    Err(LowerError::Unlowered {
        node: e.g.node(id).name.clone(),
        op: NAME,
    })
}

fn group_norm(
    x: &Array,
    gamma: &[f32],
    beta: &[f32],
    groups: usize,
    eps: f32,
) -> Result<Array, String> {
    let [n, c, h, w] = x.shape[..] else {
        return Err(format!("group_norm needs rank 4, got {:?}", x.shape));
    };
    let (cg, hw) = (c / groups, h * w);
    let mut out = x.clone();
    for b in 0..n {
        for g in 0..groups {
            let start = (b * c + g * cg) * hw;
            let chunk = &x.data[start..start + cg * hw];
            let mean = chunk.iter().map(|&v| v as f64).sum::<f64>() / chunk.len() as f64;
            let var = chunk
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / chunk.len() as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for ch in 0..cg {
                let ci = g * cg + ch;
                let o = &mut out.data[start + ch * hw..start + (ch + 1) * hw];
                for v in o.iter_mut() {
                    *v = (((*v as f64 - mean) * inv) as f32) * gamma[ci] + beta[ci];
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[1,4,H,W] = input(\"x\")\n  %g: fp32[4] = const([1.0, 2.0, 0.5, 1.0])\n  %b: fp32[4] = const([0.0, 0.1, -0.1, 0.0])\n  %y: fp32[1,4,H,W] = group_norm(%x, %g, %b) groups=2 epsilon=1e-5\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
