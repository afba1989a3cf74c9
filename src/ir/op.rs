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
    /// An fp32 constant whose values are all exactly fp16, stored as fp16: weights read from an
    /// fp16 file keep half the memory in the graph. An fp16 build keeps the bits as they are
    /// (`cast_fp16`); elsewhere the values are widened one constant at a time where they are
    /// needed (evaluation, folding, compression, lowering), never the whole model at once.
    Half(Tensor),
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
            ConstData::Half(t) => TensorType::known(DType::F32, &t.shape),
            ConstData::Palettized(p) => TensorType::known(p.lut.dtype(), &p.shape),
            ConstData::Quantized(q) => TensorType::known(q.dtype, &q.q.shape),
        }
    }

    /// The values as the model computes with them (decompressed for compressed forms).
    pub fn dense(&self) -> std::borrow::Cow<'_, Tensor> {
        use std::borrow::Cow;
        match self {
            ConstData::Dense(t) => Cow::Borrowed(t),
            ConstData::Half(t) => Cow::Owned(t.cast(DType::F32)),
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

/// Unary elementwise ops, one row each: variant, printed name, f32 kernel (the semantics every
/// lowering must keep), MIL op name, whether the Neural Engine is known to run it. The IR
/// evaluator, the MIL lowering, the MIL evaluator and the ANE report all read this table.
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
}

/// Binary elementwise ops with numpy broadcasting (inputs x, y), one row each like [`Unary`].
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

/// The closed set of IR ops, grouped by family: elementwise ops are table rows ([`Unary`],
/// [`Binary`]); the others carry their attributes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A graph input, named as the model's feature.
    Input {
        name: String,
    },
    Const(ConstData),
    Unary(Unary),
    Binary(Binary),
    /// Inputs: x, weight, optional bias.
    Conv2d(Conv2d),
    /// `1 / sqrt(x + epsilon)`.
    Rsqrt {
        epsilon: f32,
    },
    /// An int8 quantize–dequantize pair: `q = clamp(round_half_even(x / scale) + zero_point,
    /// -128, 127)`, then `(q - zero_point) * scale`, as MIL's iOS17 `quantize` and `dequantize`
    /// define them. The IR keeps the result in x's float type (the int8 values exist only
    /// between the two MIL ops); `scale` is positive, finite and exact in x's dtype, so the
    /// evaluator and the lowered package use the same number.
    FakeQuantize {
        scale: f32,
        zero_point: i8,
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
    /// Target shape with the same element count; dimensions may be symbolic (`H*W`).
    Reshape {
        shape: Vec<Dim>,
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
    /// Batched matrix product of x [.., M, K] and y [.., K, N] (each optionally transposed in its
    /// last two axes), batch axes broadcast.
    MatMul {
        transpose_x: bool,
        transpose_y: bool,
    },
    /// Softmax along `axis`.
    Softmax {
        axis: usize,
    },
    /// `softmax(q kᵀ · scale + mask) v` for q [B, L, D], k [B, S, D], v [B, S, E] → [B, L, E],
    /// with an optional fourth input `mask` [L, S] added to every batch's scores (a causal mask
    /// holds a large negative value above the diagonal). A pass lowers it for the target (one MIL
    /// op on iOS18, matmuls and a softmax before, split into query chunks when the score matrix
    /// would be large).
    Attention {
        scale: f32,
    },
    /// Elements `begin..end` of `axis` (static bounds).
    Slice {
        axis: usize,
        begin: usize,
        end: usize,
    },
    /// Part `index` of `parts` equal parts of `axis`. Unlike `Slice`, the size may be symbolic
    /// (`H*W` queries become `H*W/8` each) as long as `parts` divides it at every size, which
    /// is how attention over an enumerated size is chunked; the parts of one value lower to a
    /// single MIL `split`.
    Split {
        axis: usize,
        parts: usize,
        index: usize,
    },
    /// x reshaped to the shape of a reference value (inputs x, reference): how a size that only
    /// the running model knows (an enumerated `H` and `W`) is restored after a flattening.
    ReshapeLike,
    /// Inputs joined along `axis`.
    Concat {
        axis: usize,
    },
    /// Normalisation over one axis (inputs x, gamma, beta; gamma and beta as long as that
    /// axis): `(x - mean) / sqrt(var + epsilon) * gamma + beta`, as transformers' `LayerNorm`
    /// over the last axis, or over the channels (axis 1) of a `[1, D, 1, S]` layout.
    LayerNorm {
        axis: usize,
        epsilon: f32,
    },
    /// Rows of x picked along `axis` by int32 indices (inputs x, indices): the result has x's
    /// axes before `axis`, then the indices' axes, then x's axes after `axis`. An embedding
    /// lookup is a table [V, D] gathered along 0 by ids [1, S].
    Gather {
        axis: usize,
    },
    /// The int32 index of the first largest element along `axis`, which is removed.
    ArgMax {
        axis: usize,
    },
    /// [N, C·r², H, W] → [N, C, H·r, W·r] (channel c·r² + i·r + j goes to row h·r + i, column
    /// w·r + j), as PyTorch's `pixel_shuffle` and MIL's.
    PixelShuffle {
        factor: usize,
    },
}

impl Op {
    /// Short lowercase name, as printed.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Const(_) => "const",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Conv2d(_) => "conv2d",
            Op::Rsqrt { .. } => "rsqrt",
            Op::Clip { .. } => "clip",
            Op::FakeQuantize { .. } => "fake_quantize",
            Op::Upsample { .. } => "upsample",
            Op::GroupNorm { .. } => "group_norm",
            Op::ReduceMean { .. } => "reduce_mean",
            Op::Reshape { .. } => "reshape",
            Op::Tile { .. } => "tile",
            Op::Transpose { .. } => "transpose",
            Op::Cast { .. } => "cast",
            Op::MatMul { .. } => "matmul",
            Op::Softmax { .. } => "softmax",
            Op::Attention { .. } => "attention",
            Op::Slice { .. } => "slice",
            Op::Split { .. } => "split",
            Op::Concat { .. } => "concat",
            Op::ReshapeLike => "reshape_like",
            Op::PixelShuffle { .. } => "pixel_shuffle",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Gather { .. } => "gather",
            Op::ArgMax { .. } => "argmax",
        }
    }

    /// The op with the symbols of its size attributes bound (None if a quotient is not whole).
    pub fn bind_sizes(&self, b: &std::collections::BTreeMap<String, usize>) -> Option<Op> {
        Some(match self {
            Op::Reshape { shape } => Op::Reshape {
                shape: shape.iter().map(|d| d.bind(b)).collect::<Option<_>>()?,
            },
            op => op.clone(),
        })
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
            Op::Unary(_) | Op::Rsqrt { .. } | Op::Clip { .. } => {
                arity(1..=1)?;
                float(inputs[0])?;
                Ok(inputs[0].clone())
            }
            Op::FakeQuantize { scale, .. } => {
                arity(1..=1)?;
                let x = inputs[0];
                float(x)?;
                let exact = x.dtype != DType::F16 || half::f16::from_f32(*scale).to_f32() == *scale;
                if !(scale.is_finite() && *scale > 0.0 && exact) {
                    return Err(format!(
                        "scale {scale:?} must be positive, finite and exact in {}",
                        x.dtype
                    ));
                }
                Ok(x.clone())
            }
            Op::Binary(_) => {
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
                let to = TensorType::new(x.dtype, shape.clone());
                if x.elements() != to.elements() {
                    return Err(format!("cannot reshape {x} to {to}"));
                }
                Ok(to)
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
            Op::MatMul {
                transpose_x,
                transpose_y,
            } => {
                arity(2..=2)?;
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
            Op::Softmax { axis } => {
                arity(1..=1)?;
                float(inputs[0])?;
                if *axis >= inputs[0].rank() {
                    return Err(format!("axis {axis} out of range for {}", inputs[0]));
                }
                Ok(inputs[0].clone())
            }
            Op::Attention { .. } => {
                arity(3..=4)?;
                let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
                if let Some(m) = inputs.get(3) {
                    if m.shape != [q.shape[1].clone(), k.shape[1].clone()] || m.dtype != q.dtype {
                        return Err(format!(
                            "mask must be {}[{}, {}], got {m}",
                            q.dtype, q.shape[1], k.shape[1]
                        ));
                    }
                }
                float(q)?;
                let ok = [q, k, v]
                    .iter()
                    .all(|t| t.rank() == 3 && t.dtype == q.dtype)
                    && q.shape[0] == k.shape[0]
                    && k.shape[0] == v.shape[0]
                    && q.shape[2] == k.shape[2]
                    && k.shape[1] == v.shape[1];
                if !ok {
                    return Err(format!(
                        "needs q [B, L, D], k [B, S, D], v [B, S, E], got {q}, {k}, {v}"
                    ));
                }
                Ok(TensorType::new(
                    q.dtype,
                    vec![q.shape[0].clone(), q.shape[1].clone(), v.shape[2].clone()],
                ))
            }
            Op::Slice { axis, begin, end } => {
                arity(1..=1)?;
                let x = inputs[0];
                let n = x.shape.get(*axis).and_then(Dim::known).ok_or_else(|| {
                    format!("axis {axis} of {x} must exist and have a known size")
                })?;
                if begin >= end || *end > n {
                    return Err(format!("{begin}..{end} is not a slice of {n} elements"));
                }
                let mut shape = x.shape.clone();
                shape[*axis] = Dim::Known(end - begin);
                Ok(TensorType::new(x.dtype, shape))
            }
            Op::Split { axis, parts, index } => {
                arity(1..=1)?;
                let x = inputs[0];
                let d = x
                    .shape
                    .get(*axis)
                    .ok_or_else(|| format!("axis {axis} out of range for {x}"))?;
                if *index >= *parts {
                    return Err(format!("part {index} of {parts} does not exist"));
                }
                let part = d
                    .divided(*parts)
                    .filter(|p| d.known().is_none() || p.known().is_some())
                    .ok_or_else(|| format!("{parts} parts do not divide axis {axis} of {x}"))?;
                let mut shape = x.shape.clone();
                shape[*axis] = part;
                Ok(TensorType::new(x.dtype, shape))
            }
            Op::ReshapeLike => {
                arity(2..=2)?;
                let (x, r) = (inputs[0], inputs[1]);
                if x.elements() != r.elements() {
                    return Err(format!("cannot reshape {x} like {r}"));
                }
                Ok(r.with_dtype(x.dtype))
            }
            Op::Concat { axis } => {
                if inputs.is_empty() {
                    return Err("takes at least one input".into());
                }
                let x = inputs[0];
                if *axis >= x.rank() {
                    return Err(format!("axis {axis} out of range for {x}"));
                }
                for t in inputs {
                    let same = t.rank() == x.rank()
                        && t.dtype == x.dtype
                        && (0..x.rank()).all(|a| a == *axis || t.shape[a] == x.shape[a]);
                    if !same {
                        return Err(format!("{t} does not join {x} along axis {axis}"));
                    }
                }
                let sizes: Option<Vec<usize>> =
                    inputs.iter().map(|t| t.shape[*axis].known()).collect();
                let d = &x.shape[*axis];
                let total = match sizes {
                    Some(n) => Dim::Known(n.iter().sum()),
                    // Equal symbolic parts (attention chunks of an enumerated size) add up to
                    // their count times one of them; unequal ones have no monomial sum.
                    None if inputs.iter().all(|t| &t.shape[*axis] == d) => d.scaled(inputs.len()),
                    None => {
                        return Err(format!(
                            "axis {axis} sizes are not all known and not all equal: cannot add them"
                        ))
                    }
                };
                let mut shape = x.shape.clone();
                shape[*axis] = total;
                Ok(TensorType::new(x.dtype, shape))
            }
            Op::LayerNorm { axis, .. } => {
                arity(3..=3)?;
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
            Op::Gather { axis } => {
                arity(2..=2)?;
                let (x, i) = (inputs[0], inputs[1]);
                if *axis >= x.rank() || i.dtype != DType::I32 {
                    return Err(format!(
                        "needs int32 indices and an axis of x, got {x} by {i} along {axis}"
                    ));
                }
                let mut shape = x.shape[..*axis].to_vec();
                shape.extend(i.shape.iter().cloned());
                shape.extend(x.shape[axis + 1..].iter().cloned());
                Ok(TensorType::new(x.dtype, shape))
            }
            Op::ArgMax { axis } => {
                arity(1..=1)?;
                let x = inputs[0];
                if *axis >= x.rank() {
                    return Err(format!("axis {axis} out of range for {x}"));
                }
                let mut shape = x.shape.clone();
                shape.remove(*axis);
                Ok(TensorType::new(DType::I32, shape))
            }
            Op::PixelShuffle { factor } => {
                arity(1..=1)?;
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
