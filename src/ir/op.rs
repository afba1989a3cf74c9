//! The closed set of IR operations and their type inference.
//!
//! Every op is one variant, so the evaluator, the printer and the MIL lowering are exhaustive
//! `match`es: an op added here without a lowering does not compile. Inference runs when a node is
//! added ([`super::Graph::add`]) and again in the verifier, so a graph is never half-typed.

use super::types::{Dim, TensorType};
use crate::tensor::{DType, Tensor};

/// Constant data. Weights change representation (dense, palettized, linearly quantized), never
/// identity: every form has the same type and stands for the same (approximate) values.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstData {
    Dense(Tensor),
    Palettized(Palettized),
    Quantized(Quantized),
}

/// `value[e] = lut[g][indices[e]]`, where `g` is the group of `e`'s output channel (axis 0):
/// `shape[0] / group_size` look-up tables of `2^bits` entries each.
#[derive(Clone, Debug, PartialEq)]
pub struct Palettized {
    pub shape: Vec<usize>,
    pub bits: u32,
    /// Output channels per table (`shape[0]` for one table per tensor).
    pub group_size: usize,
    /// `[groups, 2^bits]`, in the model's dtype; unused entries are zero.
    pub lut: Tensor,
    pub indices: Vec<u16>,
}

/// Linear quantization: `value = scale * (q - zero_point)` per block (see
/// [`crate::compress::quantize::Quantized`]), with scales in `dtype`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub q: crate::compress::quantize::Quantized,
    pub dtype: DType,
}

impl ConstData {
    pub fn ty(&self) -> TensorType {
        match self {
            ConstData::Dense(t) => TensorType::known(t.dtype(), &t.shape),
            ConstData::Palettized(p) => TensorType::known(p.lut.dtype(), &p.shape),
            ConstData::Quantized(q) => TensorType::known(q.dtype, &q.q.shape),
        }
    }

    /// The values as the model computes with them (decompressed for compressed forms).
    pub fn dense(&self) -> std::borrow::Cow<'_, Tensor> {
        use std::borrow::Cow;
        match self {
            ConstData::Dense(t) => Cow::Borrowed(t),
            ConstData::Palettized(p) => {
                let lut = p.lut.to_f32();
                let table = 1usize << p.bits;
                let per_group = p.group_size * p.shape[1..].iter().product::<usize>();
                let values = p
                    .indices
                    .iter()
                    .enumerate()
                    .map(|(e, &i)| lut[(e / per_group) * table + i as usize])
                    .collect();
                Cow::Owned(Tensor::f32(p.shape.clone(), values).cast(p.lut.dtype()))
            }
            ConstData::Quantized(q) => {
                Cow::Owned(Tensor::f32(q.q.shape.clone(), q.q.dequantize()).cast(q.dtype))
            }
        }
    }
}

/// 2-D convolution attributes (NCHW activations, OIHW weights).
#[derive(Clone, Debug, PartialEq, Eq)]
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

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A graph input, named as the model's feature.
    Input {
        name: String,
    },
    Const(ConstData),
    /// Inputs: x, weight, optional bias.
    Conv2d(Conv2d),
    Relu,
    Tanh,
    /// Binary elementwise ops with numpy broadcasting. Inputs: x, y.
    Add,
    Sub,
    Mul,
    Div,
    /// `1 / sqrt(x + epsilon)`.
    Rsqrt {
        epsilon: f32,
    },
    /// `min(max(x, min), max)`.
    Clip {
        min: f32,
        max: f32,
    },
    /// Nearest-neighbour upsampling of H and W by an integer factor.
    Upsample {
        scale: usize,
    },
    /// Inputs: x [N,C,H,W], gamma [C], beta [C].
    GroupNorm {
        groups: usize,
        epsilon: f32,
    },
    ReduceMean {
        axes: Vec<usize>,
        keep_dims: bool,
    },
    /// Static target shape with the same element count; the input shape must be fully known.
    Reshape {
        shape: Vec<usize>,
    },
    Tile {
        reps: Vec<usize>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    Cast {
        dtype: DType,
    },
}

impl Op {
    /// Short lowercase name, as printed.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Const(_) => "const",
            Op::Conv2d(_) => "conv2d",
            Op::Relu => "relu",
            Op::Tanh => "tanh",
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
            Op::Div => "div",
            Op::Rsqrt { .. } => "rsqrt",
            Op::Clip { .. } => "clip",
            Op::Upsample { .. } => "upsample",
            Op::GroupNorm { .. } => "group_norm",
            Op::ReduceMean { .. } => "reduce_mean",
            Op::Reshape { .. } => "reshape",
            Op::Tile { .. } => "tile",
            Op::Transpose { .. } => "transpose",
            Op::Cast { .. } => "cast",
        }
    }

    /// The output type for these input types, or why they do not fit.
    ///
    /// `Input` cannot infer its type (the graph declares it); it is checked by the verifier.
    pub fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, String> {
        let arity = |n: std::ops::RangeInclusive<usize>| {
            if n.contains(&inputs.len()) {
                Ok(())
            } else {
                Err(format!("takes {n:?} inputs, got {}", inputs.len()))
            }
        };
        let float = |t: &TensorType| match t.dtype {
            DType::F32 | DType::F16 => Ok(()),
            d => Err(format!("needs fp32 or fp16 input, got {d}")),
        };
        match self {
            Op::Input { .. } => Err("an input's type is declared, not inferred".into()),
            Op::Const(c) => {
                arity(0..=0)?;
                Ok(c.ty())
            }
            Op::Conv2d(p) => {
                arity(2..=3)?;
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
                        Dim::Known(n) if n + pad > span => {
                            Ok(Dim::Known((n + pad - span - 1) / s + 1))
                        }
                        Dim::Known(n) => Err(format!("input size {n} is smaller than the kernel")),
                        Dim::Sym { .. } if s == 1 && pad == span => Ok(d.clone()),
                        Dim::Sym { .. } => Err(format!("symbolic size {d} would change size")),
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
            Op::Relu | Op::Tanh | Op::Rsqrt { .. } | Op::Clip { .. } => {
                arity(1..=1)?;
                float(inputs[0])?;
                Ok(inputs[0].clone())
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div => {
                arity(2..=2)?;
                let (a, b) = (inputs[0], inputs[1]);
                float(a)?;
                if a.dtype != b.dtype {
                    return Err(format!("operands are {} and {}", a.dtype, b.dtype));
                }
                let shape = broadcast(&a.shape, &b.shape)
                    .ok_or_else(|| format!("{a} and {b} do not broadcast"))?;
                Ok(TensorType::new(a.dtype, shape))
            }
            Op::Upsample { scale } => {
                arity(1..=1)?;
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
            Op::GroupNorm { groups, .. } => {
                arity(3..=3)?;
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
            Op::ReduceMean { axes, keep_dims } => {
                arity(1..=1)?;
                let x = inputs[0];
                float(x)?;
                if axes.iter().any(|&a| a >= x.rank()) {
                    return Err(format!("axes {axes:?} out of range for {x}"));
                }
                let shape = (0..x.rank())
                    .filter_map(|i| match (axes.contains(&i), keep_dims) {
                        (false, _) => Some(x.shape[i].clone()),
                        (true, true) => Some(Dim::Known(1)),
                        (true, false) => None,
                    })
                    .collect();
                Ok(TensorType::new(x.dtype, shape))
            }
            Op::Reshape { shape } => {
                arity(1..=1)?;
                let x = inputs[0];
                let from = x
                    .known_shape()
                    .ok_or_else(|| format!("cannot reshape symbolic {x}"))?;
                if from.iter().product::<usize>() != shape.iter().product::<usize>() {
                    return Err(format!("cannot reshape {x} to {shape:?}"));
                }
                Ok(TensorType::known(x.dtype, shape))
            }
            Op::Tile { reps } => {
                arity(1..=1)?;
                let x = inputs[0];
                if reps.len() != x.rank() {
                    return Err(format!("reps {reps:?} do not match {x}"));
                }
                let shape = x
                    .shape
                    .iter()
                    .zip(reps)
                    .map(|(d, &r)| d.scaled(r))
                    .collect();
                Ok(TensorType::new(x.dtype, shape))
            }
            Op::Transpose { perm } => {
                arity(1..=1)?;
                let x = inputs[0];
                let mut seen = perm.clone();
                seen.sort_unstable();
                if seen != (0..x.rank()).collect::<Vec<_>>() {
                    return Err(format!("perm {perm:?} is not a permutation of {x}'s axes"));
                }
                Ok(TensorType::new(
                    x.dtype,
                    perm.iter().map(|&p| x.shape[p].clone()).collect(),
                ))
            }
            Op::Cast { dtype } => {
                arity(1..=1)?;
                Ok(inputs[0].with_dtype(*dtype))
            }
        }
    }
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
