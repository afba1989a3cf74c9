//! Op conformance: every IR op, on random inputs, against a naive f64 reference written here.
//!
//! For each case a one-op graph is built and three things are checked:
//! (a) `Op::infer` gives the shape (and dtype) of the reference's result, symbols bound;
//! (b) the IR evaluator matches the reference;
//! (c) the graph lowered to MIL (fp32, iOS16; iOS18 for the fused attention op) and run by the MIL
//!     evaluator matches the reference. Ops the MIL lowering refuses by design (group norm, and
//!     attention below iOS18 or with a scale other than 1/sqrt(D)) go through the pass that
//!     lowers them first, as the pipeline does.
//!
//! References are deliberately the slowest obvious formulation (direct loops, index arithmetic)
//! so they share nothing with the kernels under test. Tolerances are per case: `|got - want| <=
//! tol * (1 + |want|)`.
//!
//! Coverage is enforced by the compiler: `family` matches `Op` with no wildcard and `cases`
//! matches every `Family`, so a new `Op` variant does not compile here until it has cases. New
//! `Unary`/`Binary` rows are picked up from `Unary::ALL`/`Binary::ALL`, and their references come
//! from exhaustive matches too.

use half::f16;
use mlc::ir::eval::evaluate;
use mlc::ir::{Binary, ConstData, Conv2d, Dim, Graph, Op, TensorType, Unary};
use mlc::kernels::Array;
use mlc::mil::lower::{lower, Interface, ModelInfo};
use mlc::mil::Target;
use mlc::package::BlobReader;
use mlc::passes::lower_attention::LowerAttention;
use mlc::passes::lower_group_norm::LowerGroupNorm;
use mlc::passes::Pass;
use mlc::proto::specification::model::Type as ModelType;
use mlc::tensor::{DType, Tensor};
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// Cases

type Spec = &'static [&'static str];
type Sizes = &'static [(&'static str, usize)];

/// One operand of the op under test.
struct Operand {
    /// As declared in the graph (may be symbolic).
    ty: TensorType,
    value: Array,
    /// A graph constant (weights, gamma/beta) rather than a model input.
    constant: bool,
}

/// How the one-op graph reaches MIL.
enum Lowering {
    Direct(Target),
    /// Lowered by a pass first, because the MIL lowering refuses the op by design.
    Pass(fn() -> Box<dyn Pass>, Target),
}

struct Case {
    name: String,
    op: Op,
    operands: Vec<Operand>,
    /// Values of the symbols in the declared shapes.
    sizes: BTreeMap<String, usize>,
    want_shape: Vec<usize>,
    want_dtype: DType,
    want: Vec<f64>,
    tol: f64,
    lowering: Lowering,
}

impl Case {
    fn new(name: impl Into<String>, op: Op, operands: Vec<Operand>, want: Ref, tol: f64) -> Case {
        let want_dtype = operands.first().map_or(DType::F32, |o| o.ty.dtype);
        Case {
            name: name.into(),
            op,
            operands,
            sizes: BTreeMap::new(),
            want_shape: want.shape,
            want_dtype,
            want: want.data,
            tol,
            lowering: Lowering::Direct(Target::Ios16),
        }
    }

    fn sizes(mut self, pairs: &[(&str, usize)]) -> Case {
        self.sizes = bound(pairs);
        self
    }

    fn lowering(mut self, l: Lowering) -> Case {
        self.lowering = l;
        self
    }

    fn dtype(mut self, d: DType) -> Case {
        self.want_dtype = d;
        self
    }
}

/// A reference result.
struct Ref {
    shape: Vec<usize>,
    data: Vec<f64>,
}

/// Deterministic uniform values, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn array(&mut self, shape: &[usize], lo: f64, hi: f64) -> Array {
        let n = shape.iter().product();
        Array::new(
            shape.to_vec(),
            (0..n)
                .map(|_| (lo + (hi - lo) * self.next()) as f32)
                .collect(),
        )
    }
}

/// The symbol values of a case, as the evaluators and `resolve` take them.
fn bound(sizes: &[(&str, usize)]) -> BTreeMap<String, usize> {
    sizes.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn dims(spec: &[&str]) -> Vec<Dim> {
    spec.iter()
        .map(|s| match s.parse() {
            Ok(n) => Dim::Known(n),
            Err(_) => mlc::ir::parse::parse_dim(s).unwrap(),
        })
        .collect()
}

fn resolve(ty: &[Dim], sizes: &BTreeMap<String, usize>) -> Vec<usize> {
    ty.iter()
        .map(|d| d.resolve(&|s| sizes.get(s).copied()).expect("bound"))
        .collect()
}

/// An operand of declared shape `spec` (`"H"`, `"2*W"` allowed), valued at `sizes`.
fn operand(
    rng: &mut Rng,
    spec: &[&str],
    sizes: &[(&str, usize)],
    range: (f64, f64),
    dtype: DType,
    constant: bool,
) -> Operand {
    let ty = TensorType::new(dtype, dims(spec));
    let mut value = rng.array(&resolve(&ty.shape, &bound(sizes)), range.0, range.1);
    if dtype == DType::F16 {
        // The evaluators round fp16 inputs; the reference must see the same numbers.
        value
            .data
            .iter_mut()
            .for_each(|v| *v = f16::from_f32(*v).to_f32());
    }
    Operand {
        ty,
        value,
        constant,
    }
}

fn x(rng: &mut Rng, spec: &[&str], sizes: &[(&str, usize)]) -> Operand {
    operand(rng, spec, sizes, (-2.0, 2.0), DType::F32, false)
}

fn w(rng: &mut Rng, spec: &[&str]) -> Operand {
    operand(rng, spec, &[], (-1.0, 1.0), DType::F32, true)
}

fn f64s(a: &Array) -> Vec<f64> {
    a.data.iter().map(|&v| v as f64).collect()
}

/// The reference of an op that maps each element of `a` on its own.
fn map_ref(a: &Array, f: impl Fn(f64) -> f64) -> Ref {
    Ref {
        shape: a.shape.clone(),
        data: a.data.iter().map(|&v| f(v as f64)).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Index arithmetic for the references

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d].max(1);
        i /= shape[d].max(1);
    }
    idx
}

fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (i, n)| acc * n + i)
}

/// The element of `a` that broadcasting maps output index `idx` to.
fn broadcast_at(a: &Array, idx: &[usize]) -> f64 {
    let off = idx.len() - a.shape.len();
    let i: Vec<usize> = a
        .shape
        .iter()
        .enumerate()
        .map(|(d, &n)| if n == 1 { 0 } else { idx[off + d] })
        .collect();
    a.data[ravel(&i, &a.shape)] as f64
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let db = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            assert!(da == db || da == 1 || db == 1, "reference: no broadcast");
            da.max(db)
        })
        .collect()
}

fn elementwise(shape: Vec<usize>, f: impl Fn(&[usize]) -> f64) -> Ref {
    let n = shape.iter().product();
    let data = (0..n).map(|i| f(&unravel(i, &shape))).collect();
    Ref { shape, data }
}

// ---------------------------------------------------------------------------------------------
// References

/// Independent formula and input range of each unary row. No wildcard: a new row needs one.
fn unary_ref(u: Unary) -> (fn(f64) -> f64, (f64, f64)) {
    match u {
        Unary::Relu => (|x| x.max(0.0), (-3.0, 3.0)),
        Unary::Tanh => (f64::tanh, (-4.0, 4.0)),
        Unary::Sigmoid => (|x| 1.0 / (1.0 + (-x).exp()), (-12.0, 12.0)),
        Unary::Silu => (|x| x / (1.0 + (-x).exp()), (-12.0, 12.0)),
        Unary::Exp => (f64::exp, (-6.0, 6.0)),
        Unary::Sqrt => (f64::sqrt, (0.0, 9.0)),
        Unary::Gelu => (
            |x| 0.5 * x * (1.0 + erf_series(x / 2f64.sqrt())),
            (-5.0, 5.0),
        ),
    }
}

/// erf from its everywhere-positive series `2x/√π · e^{-x²} · Σ (2x²)^n / (1·3·…·(2n+1))`,
/// summed until the terms stop mattering: no shared code with libm's rational approximations.
fn erf_series(x: f64) -> f64 {
    let t = 2.0 * x * x;
    let (mut term, mut sum, mut n) = (1.0f64, 1.0f64, 0.0);
    while term > sum * 1e-18 {
        n += 1.0;
        term *= t / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 * x / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
}

type BinaryRef = (fn(f64, f64) -> f64, (f64, f64));

/// Independent formula and `y` range of each binary row. No wildcard: a new row needs one.
fn binary_ref(b: Binary) -> BinaryRef {
    match b {
        Binary::Add => (|a, b| a + b, (-2.0, 2.0)),
        Binary::Sub => (|a, b| a - b, (-2.0, 2.0)),
        Binary::Mul => (|a, b| a * b, (-2.0, 2.0)),
        // Divisors kept away from zero, where f32 and f64 quotients part ways.
        Binary::Div => (|a, b| a / b, (0.25, 3.0)),
        Binary::Maximum => (f64::max, (-2.0, 2.0)),
        Binary::Minimum => (f64::min, (-2.0, 2.0)),
    }
}

/// Direct convolution: the seven loops, zero padding by bounds checks.
fn conv_ref(x: &Array, w: &Array, bias: Option<&Array>, p: &Conv2d) -> Ref {
    let [n, _, h, wd] = x.shape[..] else { panic!() };
    let [co, cig, kh, kw] = w.shape[..] else {
        panic!()
    };
    let oh = (h + p.pads[0] + p.pads[1] - p.dilations[0] * (kh - 1) - 1) / p.strides[0] + 1;
    let ow = (wd + p.pads[2] + p.pads[3] - p.dilations[1] * (kw - 1) - 1) / p.strides[1] + 1;
    let per_group = co / p.groups;
    let mut out = vec![0f64; n * co * oh * ow];
    for b in 0..n {
        for o in 0..co {
            let g = o / per_group;
            for y in 0..oh {
                for xo in 0..ow {
                    let mut s = bias.map_or(0.0, |b| b.data[o] as f64);
                    for ci in 0..cig {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * p.strides[0] + ky * p.dilations[0]) as isize
                                    - p.pads[0] as isize;
                                let ix = (xo * p.strides[1] + kx * p.dilations[1]) as isize
                                    - p.pads[2] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi =
                                    ravel(&[b, g * cig + ci, iy as usize, ix as usize], &x.shape);
                                let wi = ravel(&[o, ci, ky, kx], &w.shape);
                                s += x.data[xi] as f64 * w.data[wi] as f64;
                            }
                        }
                    }
                    out[ravel(&[b, o, y, xo], &[n, co, oh, ow])] = s;
                }
            }
        }
    }
    Ref {
        shape: vec![n, co, oh, ow],
        data: out,
    }
}

fn group_norm_ref(x: &Array, gamma: &Array, beta: &Array, groups: usize, eps: f64) -> Ref {
    let [n, c, h, w] = x.shape[..] else { panic!() };
    let cg = c / groups;
    let mut out = vec![0f64; x.len()];
    for b in 0..n {
        for g in 0..groups {
            let members: Vec<usize> = (g * cg..(g + 1) * cg)
                .flat_map(|ch| (0..h * w).map(move |p| (b * c + ch) * h * w + p))
                .collect();
            let m = members.len() as f64;
            let mean = members.iter().map(|&i| x.data[i] as f64).sum::<f64>() / m;
            let var = members
                .iter()
                .map(|&i| (x.data[i] as f64 - mean).powi(2))
                .sum::<f64>()
                / m;
            for &i in &members {
                let ch = (i / (h * w)) % c;
                out[i] = (x.data[i] as f64 - mean) / (var + eps).sqrt() * gamma.data[ch] as f64
                    + beta.data[ch] as f64;
            }
        }
    }
    Ref {
        shape: x.shape.clone(),
        data: out,
    }
}

fn reduce_mean_ref(x: &Array, axes: &[usize], keep: bool) -> Ref {
    let kept: Vec<usize> = x
        .shape
        .iter()
        .enumerate()
        .map(|(d, &n)| if axes.contains(&d) { 1 } else { n })
        .collect();
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    let mut sums = vec![0f64; kept.iter().product()];
    for (i, &v) in x.data.iter().enumerate() {
        let mut idx = unravel(i, &x.shape);
        axes.iter().for_each(|&a| idx[a] = 0);
        sums[ravel(&idx, &kept)] += v as f64;
    }
    let shape = if keep {
        kept
    } else {
        (0..x.shape.len())
            .filter(|d| !axes.contains(d))
            .map(|d| x.shape[d])
            .collect()
    };
    Ref {
        shape,
        data: sums.iter().map(|s| s / count as f64).collect(),
    }
}

/// `x` [.., M, K] (or [.., K, M] transposed) times `y`, batch axes broadcast.
fn matmul_ref(x: &Array, y: &Array, tx: bool, ty: bool) -> Ref {
    let (rx, ry) = (x.shape.len(), y.shape.len());
    let (m, k) = if tx {
        (x.shape[rx - 1], x.shape[rx - 2])
    } else {
        (x.shape[rx - 2], x.shape[rx - 1])
    };
    let n = if ty { y.shape[ry - 2] } else { y.shape[ry - 1] };
    let batch = broadcast_shape(&x.shape[..rx - 2], &y.shape[..ry - 2]);
    let mut shape = batch.clone();
    shape.extend([m, n]);
    let at = |a: &Array, bidx: &[usize], r: usize, c: usize| -> f64 {
        let rank = a.shape.len();
        let off = bidx.len() - (rank - 2);
        let mut idx: Vec<usize> = (0..rank - 2)
            .map(|d| if a.shape[d] == 1 { 0 } else { bidx[off + d] })
            .collect();
        idx.extend([r, c]);
        a.data[ravel(&idx, &a.shape)] as f64
    };
    elementwise(shape, |idx| {
        let (b, i, j) = (
            &idx[..idx.len() - 2],
            idx[idx.len() - 2],
            idx[idx.len() - 1],
        );
        (0..k)
            .map(|l| {
                let a = if tx { at(x, b, l, i) } else { at(x, b, i, l) };
                let c = if ty { at(y, b, j, l) } else { at(y, b, l, j) };
                a * c
            })
            .sum()
    })
}

fn softmax_ref(x: &Array, axis: usize) -> Ref {
    let n = x.shape[axis];
    elementwise(x.shape.clone(), |idx| {
        let along = |j: usize| {
            let mut i = idx.to_vec();
            i[axis] = j;
            x.data[ravel(&i, &x.shape)] as f64
        };
        let max = (0..n).map(along).fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = (0..n).map(|j| (along(j) - max).exp()).sum();
        (along(idx[axis]) - max).exp() / total
    })
}

fn attention_ref(q: &Array, k: &Array, v: &Array, mask: Option<&Array>, scale: f64) -> Ref {
    let [b, l, d] = q.shape[..] else { panic!() };
    let s = k.shape[1];
    let e = v.shape[2];
    elementwise(vec![b, l, e], |idx| {
        let (bi, i, c) = (idx[0], idx[1], idx[2]);
        let score = |j: usize| {
            (0..d)
                .map(|t| {
                    q.data[ravel(&[bi, i, t], &q.shape)] as f64
                        * k.data[ravel(&[bi, j, t], &k.shape)] as f64
                })
                .sum::<f64>()
                * scale
                + mask.map_or(0.0, |m| m.data[ravel(&[i, j], &m.shape)] as f64)
        };
        let scores: Vec<f64> = (0..s).map(score).collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = scores.iter().map(|x| (x - max).exp()).sum();
        (0..s)
            .map(|j| (scores[j] - max).exp() / total * v.data[ravel(&[bi, j, c], &v.shape)] as f64)
            .sum()
    })
}

// ---------------------------------------------------------------------------------------------
// Coverage

macro_rules! families {
    ($($f:ident),* $(,)?) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum Family { $($f),* }
        const FAMILIES: &[Family] = &[$(Family::$f),*];
    };
}

families!(
    Input,
    Const,
    Unary,
    Binary,
    Conv2d,
    Rsqrt,
    Clip,
    FakeQuantize,
    Upsample,
    GroupNorm,
    ReduceMean,
    Reshape,
    Tile,
    Transpose,
    Cast,
    MatMul,
    Softmax,
    Attention,
    Slice,
    Split,
    ReshapeLike,
    Concat,
    PixelShuffle,
    LayerNorm,
    Gather,
    ArgMax,
);

/// No wildcard: a new `Op` variant stops this file compiling until it has a family and cases.
fn family(op: &Op) -> Family {
    match op {
        Op::Input { .. } => Family::Input,
        Op::Const(_) => Family::Const,
        Op::Unary(_) => Family::Unary,
        Op::Binary(_) => Family::Binary,
        Op::Conv2d(_) => Family::Conv2d,
        Op::Rsqrt { .. } => Family::Rsqrt,
        Op::Clip { .. } => Family::Clip,
        Op::FakeQuantize { .. } => Family::FakeQuantize,
        Op::Upsample { .. } => Family::Upsample,
        Op::GroupNorm { .. } => Family::GroupNorm,
        Op::ReduceMean { .. } => Family::ReduceMean,
        Op::Reshape { .. } => Family::Reshape,
        Op::Tile { .. } => Family::Tile,
        Op::Transpose { .. } => Family::Transpose,
        Op::Cast { .. } => Family::Cast,
        Op::MatMul { .. } => Family::MatMul,
        Op::Softmax { .. } => Family::Softmax,
        Op::Attention { .. } => Family::Attention,
        Op::Slice { .. } => Family::Slice,
        Op::Split { .. } => Family::Split,
        Op::ReshapeLike => Family::ReshapeLike,
        Op::Concat { .. } => Family::Concat,
        Op::PixelShuffle { .. } => Family::PixelShuffle,
        Op::LayerNorm { .. } => Family::LayerNorm,
        Op::Gather { .. } => Family::Gather,
        Op::ArgMax { .. } => Family::ArgMax,
    }
}

fn cases(f: Family) -> Vec<Case> {
    let mut rng = Rng(f as u64 + 1);
    let r = &mut rng;
    match f {
        Family::Input => input_cases(r),
        Family::Const => const_cases(r),
        Family::Unary => unary_cases(r),
        Family::Binary => binary_cases(r),
        Family::Conv2d => conv_cases(r),
        Family::Rsqrt => rsqrt_cases(r),
        Family::Clip => clip_cases(r),
        Family::FakeQuantize => fake_quantize_cases(r),
        Family::Upsample => upsample_cases(r),
        Family::GroupNorm => group_norm_cases(r),
        Family::ReduceMean => reduce_mean_cases(r),
        Family::Reshape => reshape_cases(r),
        Family::Tile => tile_cases(r),
        Family::Transpose => transpose_cases(r),
        Family::Cast => cast_cases(r),
        Family::MatMul => matmul_cases(r),
        Family::Softmax => softmax_cases(r),
        Family::Attention => {
            let mut c = attention_cases(r);
            c.extend(masked_attention_cases(r));
            c
        }
        Family::Slice => slice_cases(r),
        Family::Split => split_cases(r),
        Family::ReshapeLike => reshape_like_cases(r),
        Family::Concat => concat_cases(r),
        Family::PixelShuffle => pixel_shuffle_cases(r),
        Family::LayerNorm => layer_norm_cases(r),
        Family::Gather => gather_cases(r),
        Family::ArgMax => argmax_cases(r),
    }
}

// ---------------------------------------------------------------------------------------------
// Cases per op

fn input_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    let configs: [(&str, Spec, Sizes, DType); 3] = [
        ("static", &["2", "3"], &[], DType::F32),
        (
            "symbolic",
            &["1", "2", "H", "W"],
            &[("H", 3), ("W", 5)],
            DType::F32,
        ),
        // fp16 inputs are rounded on the way in: `operand` pre-rounds, so exact equality holds.
        ("fp16", &["4", "5"], &[], DType::F16),
    ];
    for (name, spec, sizes, dtype) in configs {
        let o = operand(r, spec, sizes, (-3.0, 3.0), dtype, false);
        let want = map_ref(&o.value, |v| v);
        out.push(
            Case::new(
                format!("input {name}"),
                Op::Input { name: "x".into() },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes),
        );
    }
    out
}

fn const_cases(r: &mut Rng) -> Vec<Case> {
    // Below and above the 10-element threshold: immediate values and weight.bin blobs.
    [
        (vec![], DType::F32),
        (vec![3], DType::F32),
        (vec![2, 3, 4], DType::F32),
        (vec![12], DType::F16),
    ]
    .into_iter()
    .map(|(shape, dtype)| {
        let a = r.array(&shape, -5.0, 5.0);
        let t = Tensor::f32(a.shape.clone(), a.data).cast(dtype);
        let want = Ref {
            shape: shape.clone(),
            data: t.to_f32().iter().map(|&v| v as f64).collect(),
        };
        Case::new(
            format!("const {dtype}{shape:?}"),
            Op::Const(ConstData::Dense(t)),
            vec![],
            want,
            0.0,
        )
        .dtype(dtype)
    })
    .collect()
}

fn unary_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    for &u in Unary::ALL {
        let (f, (lo, hi)) = unary_ref(u);
        let configs: [(Spec, Sizes); 2] = [
            (&["2", "3", "4"], &[]),
            (&["1", "3", "H", "W"], &[("H", 4), ("W", 3)]),
        ];
        for (spec, sizes) in configs {
            let o = operand(r, spec, sizes, (lo, hi), DType::F32, false);
            let want = map_ref(&o.value, f);
            out.push(
                Case::new(
                    format!("{} {spec:?}", u.name()),
                    Op::Unary(u),
                    vec![o],
                    want,
                    1e-6,
                )
                .sizes(sizes),
            );
        }
    }
    out
}

fn binary_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    let shapes: [(Spec, Spec, Sizes); 5] = [
        (&["2", "3", "4"], &["2", "3", "4"], &[]),
        (&["2", "1", "4"], &["3", "1"], &[]),
        (&[], &["2", "3"], &[]),
        (
            &["1", "3", "H", "W"],
            &["1", "3", "1", "1"],
            &[("H", 2), ("W", 5)],
        ),
        (
            &["1", "1", "H", "1"],
            &["2", "1", "W"],
            &[("H", 3), ("W", 4)],
        ),
    ];
    for &b in Binary::ALL {
        let (f, yr) = binary_ref(b);
        for (sx, sy, sizes) in shapes {
            let xo = operand(r, sx, sizes, (-2.0, 2.0), DType::F32, false);
            let yo = operand(r, sy, sizes, yr, DType::F32, false);
            let shape = broadcast_shape(&xo.value.shape, &yo.value.shape);
            let want = elementwise(shape, |i| {
                f(broadcast_at(&xo.value, i), broadcast_at(&yo.value, i))
            });
            out.push(
                Case::new(
                    format!("{} {sx:?} by {sy:?}", b.name()),
                    Op::Binary(b),
                    vec![xo, yo],
                    want,
                    1e-6,
                )
                .sizes(sizes),
            );
        }
        // fp16 operands: the MIL evaluator rounds fp16 outputs, the IR evaluator does not.
        let xo = operand(r, &["3", "4"], &[], (-2.0, 2.0), DType::F16, false);
        let yo = operand(r, &["4"], &[], yr, DType::F16, false);
        let want = elementwise(vec![3, 4], |i| {
            f(broadcast_at(&xo.value, i), broadcast_at(&yo.value, i))
        });
        out.push(Case::new(
            format!("{} fp16", b.name()),
            Op::Binary(b),
            vec![xo, yo],
            want,
            1e-3,
        ));
    }
    out
}

fn conv_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    let p = |s: usize, pads: [usize; 4], d: usize, g: usize| Conv2d {
        strides: [s, s],
        pads,
        dilations: [d, d],
        groups: g,
    };
    // (name, x, weight shape, attributes, with bias, sizes)
    type Config = (&'static str, Spec, [usize; 4], Conv2d, bool, Sizes);
    let configs: [Config; 6] = [
        (
            "same 3x3 bias",
            &["1", "3", "5", "6"],
            [4, 3, 3, 3],
            Conv2d::same(3),
            true,
            &[],
        ),
        (
            "1x1 batch 2",
            &["2", "4", "3", "3"],
            [5, 4, 1, 1],
            Conv2d::same(1),
            true,
            &[],
        ),
        (
            "stride 2 asymmetric pads",
            &["1", "2", "7", "6"],
            [3, 2, 3, 3],
            p(2, [0, 1, 1, 0], 1, 1),
            false,
            &[],
        ),
        (
            "dilation 2",
            &["1", "2", "7", "7"],
            [2, 2, 3, 3],
            p(1, [2, 2, 2, 2], 2, 1),
            true,
            &[],
        ),
        (
            "groups 2",
            &["1", "4", "5", "5"],
            [6, 2, 3, 3],
            p(1, [1, 1, 1, 1], 1, 2),
            true,
            &[],
        ),
        (
            "symbolic stride 2",
            &["1", "2", "H", "W"],
            [3, 2, 3, 3],
            p(2, [1, 1, 1, 1], 1, 1),
            true,
            &[("H", 6), ("W", 8)],
        ),
    ];
    for (name, xs, ws, params, bias, sizes) in configs {
        let xo = x(r, xs, sizes);
        let ws: Vec<String> = ws.iter().map(|n| n.to_string()).collect();
        let ws: Vec<&str> = ws.iter().map(String::as_str).collect();
        let wo = w(r, &ws);
        let cout = wo.value.shape[0].to_string();
        let bo = bias.then(|| w(r, &[&cout]));
        let want = conv_ref(&xo.value, &wo.value, bo.as_ref().map(|b| &b.value), &params);
        let mut operands = vec![xo, wo];
        operands.extend(bo);
        out.push(
            Case::new(
                format!("conv2d {name}"),
                Op::Conv2d(params),
                operands,
                want,
                1e-5,
            )
            .sizes(sizes),
        );
    }
    out
}

fn rsqrt_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(f32, Spec, Sizes); 2] = [
        (1e-5, &["2", "3"], &[]),
        (0.5, &["1", "2", "H"], &[("H", 3)]),
    ];
    configs
        .into_iter()
        .map(|(eps, spec, sizes)| {
            let o = operand(r, spec, sizes, (0.0, 4.0), DType::F32, false);
            let want = map_ref(&o.value, |v| 1.0 / (v + eps as f64).sqrt());
            Case::new(
                format!("rsqrt eps={eps}"),
                Op::Rsqrt { epsilon: eps },
                vec![o],
                want,
                1e-6,
            )
            .sizes(sizes)
        })
        .collect()
}

fn clip_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(f32, f32, Spec, Sizes); 3] = [
        (-1.0, 0.5, &["3", "4"], &[]),
        (0.0, 6.0, &["1", "H", "2"], &[("H", 5)]),
        // min > max is defined by the formula (and by MIL's clip): everything becomes max.
        (1.0, -1.0, &["2", "3"], &[]),
    ];
    configs
        .into_iter()
        .map(|(lo, hi, spec, sizes)| {
            let o = operand(r, spec, sizes, (-8.0, 8.0), DType::F32, false);
            let want = map_ref(&o.value, |v| v.max(lo as f64).min(hi as f64));
            Case::new(
                format!("clip {lo}..{hi}"),
                Op::Clip { min: lo, max: hi },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

/// Lowered to iOS17's `quantize` and `dequantize`. Inputs reach past the int8 range on both
/// sides (clipped to -128 and 127), and exact halves check rounding to even.
fn fake_quantize_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(f32, i8, Spec, Sizes); 3] = [
        (0.0625, 0, &["2", "3", "4"], &[]),
        (0.25, -3, &["1", "2", "H", "W"], &[("H", 3), ("W", 2)]),
        (1.0, 5, &["8"], &[]),
    ];
    configs
        .into_iter()
        .map(|(scale, zp, spec, sizes)| {
            let mut o = operand(r, spec, sizes, (-200.0, 200.0), DType::F32, false);
            // A halfway value (2.5 steps) must round to 2, one at -3.5 to -4.
            o.value.data[0] = 2.5 * scale;
            o.value.data[1] = -3.5 * scale;
            let (s, z) = (scale as f64, zp as f64);
            let reference = |v: f64| {
                let t = v / s;
                // Round half to even, written out.
                let f = t.floor();
                let r = if t - f == 0.5 {
                    if f % 2.0 == 0.0 {
                        f
                    } else {
                        f + 1.0
                    }
                } else {
                    t.round()
                };
                ((r + z).clamp(-128.0, 127.0) - z) * s
            };
            let want = map_ref(&o.value, reference);
            Case::new(
                format!("fake_quantize scale {scale} zero point {zp}"),
                Op::FakeQuantize {
                    scale,
                    zero_point: zp,
                },
                vec![o],
                want,
                1e-6,
            )
            .sizes(sizes)
            .lowering(Lowering::Direct(Target::Ios17))
        })
        .collect()
}

fn upsample_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(usize, Spec, Sizes); 2] = [
        (2, &["1", "2", "3", "4"], &[]),
        (3, &["2", "1", "H", "W"], &[("H", 2), ("W", 3)]),
    ];
    configs
        .into_iter()
        .map(|(s, spec, sizes)| {
            let o = x(r, spec, sizes);
            let a = &o.value;
            let shape = vec![a.shape[0], a.shape[1], a.shape[2] * s, a.shape[3] * s];
            let want = elementwise(shape, |i| {
                a.data[ravel(&[i[0], i[1], i[2] / s, i[3] / s], &a.shape)] as f64
            });
            Case::new(
                format!("upsample x{s}"),
                Op::Upsample { scale: s },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

fn gn_pass() -> Box<dyn Pass> {
    Box::new(LowerGroupNorm)
}

/// A normalization's input around `offset` and its constant gamma and beta along `axis`. An
/// offset mean: a one-pass variance would lose the digits these cases check.
fn norm_operands(
    r: &mut Rng,
    spec: &[&str],
    sizes: &[(&str, usize)],
    offset: f64,
    axis: usize,
) -> [Operand; 3] {
    let range = (offset - 3.0, offset + 3.0);
    let o = operand(r, spec, sizes, range, DType::F32, false);
    let c = o.value.shape[axis].to_string();
    let gamma = operand(r, &[&c], &[], (-2.0, 2.0), DType::F32, true);
    let beta = operand(r, &[&c], &[], (-1.0, 1.0), DType::F32, true);
    [o, gamma, beta]
}

fn group_norm_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(usize, f32, Spec, Sizes, f64); 3] = [
        (4, 1e-5, &["1", "8", "5", "7"], &[], 20.0),
        (2, 1e-3, &["2", "6", "3", "4"], &[], 0.0),
        (3, 1e-5, &["1", "6", "H", "W"], &[("H", 4), ("W", 6)], 0.0),
    ];
    configs
        .into_iter()
        .map(|(groups, eps, spec, sizes, offset)| {
            let [o, gamma, beta] = norm_operands(r, spec, sizes, offset, 1);
            let want = group_norm_ref(&o.value, &gamma.value, &beta.value, groups, eps as f64);
            Case::new(
                format!("group_norm {groups} groups {spec:?}"),
                Op::GroupNorm {
                    groups,
                    epsilon: eps,
                },
                vec![o, gamma, beta],
                want,
                2e-5,
            )
            .sizes(sizes)
            // MIL has no group norm: the pipeline lowers it to primitives first.
            .lowering(Lowering::Pass(gn_pass, Target::Ios16))
        })
        .collect()
}

fn reduce_mean_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, Vec<usize>, bool, Sizes); 5] = [
        (&["1", "3", "4", "5"], vec![2, 3], true, &[]),
        (&["2", "3", "4"], vec![1], false, &[]),
        (&["2", "3", "4"], vec![0, 2], false, &[]),
        // Every axis, not kept: a rank-0 result.
        (&["3", "2"], vec![0, 1], false, &[]),
        (
            &["1", "2", "H", "W"],
            vec![2, 3],
            true,
            &[("H", 3), ("W", 4)],
        ),
    ];
    configs
        .into_iter()
        .map(|(spec, axes, keep, sizes)| {
            let o = x(r, spec, sizes);
            let want = reduce_mean_ref(&o.value, &axes, keep);
            Case::new(
                format!("reduce_mean {spec:?} axes {axes:?} keep {keep}"),
                Op::ReduceMean {
                    axes,
                    keep_dims: keep,
                },
                vec![o],
                want,
                1e-6,
            )
            .sizes(sizes)
        })
        .collect()
}

fn reshape_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, Spec, Sizes); 3] = [
        (&["2", "3", "4"], &["6", "4"], &[]),
        (&["2", "3", "4"], &["4", "1", "6"], &[]),
        (
            &["1", "2", "H", "W"],
            &["1", "2", "H*W"],
            &[("H", 3), ("W", 5)],
        ),
    ];
    configs
        .into_iter()
        .map(|(from, to, sizes)| {
            let o = x(r, from, sizes);
            let want = Ref {
                shape: resolve(&dims(to), &bound(sizes)),
                data: f64s(&o.value),
            };
            Case::new(
                format!("reshape {from:?} to {to:?}"),
                Op::Reshape { shape: dims(to) },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

fn tile_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, Vec<usize>, Sizes); 3] = [
        (&["2", "3"], vec![2, 3], &[]),
        (&["1", "2", "1", "1"], vec![1, 1, 3, 1], &[]),
        (&["1", "H", "2"], vec![2, 1, 2], &[("H", 3)]),
    ];
    configs
        .into_iter()
        .map(|(spec, reps, sizes)| {
            let o = x(r, spec, sizes);
            let a = &o.value;
            let shape: Vec<usize> = a.shape.iter().zip(&reps).map(|(n, k)| n * k).collect();
            let want = elementwise(shape, |i| {
                let src: Vec<usize> = i.iter().zip(&a.shape).map(|(i, n)| i % n).collect();
                a.data[ravel(&src, &a.shape)] as f64
            });
            Case::new(
                format!("tile {spec:?} by {reps:?}"),
                Op::Tile { reps },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

fn transpose_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, Vec<usize>, Sizes); 3] = [
        (&["2", "3"], vec![1, 0], &[]),
        (&["2", "3", "4", "5"], vec![0, 2, 3, 1], &[]),
        (
            &["1", "3", "H", "W"],
            vec![3, 1, 0, 2],
            &[("H", 2), ("W", 4)],
        ),
    ];
    configs
        .into_iter()
        .map(|(spec, perm, sizes)| {
            let o = x(r, spec, sizes);
            let a = &o.value;
            let shape: Vec<usize> = perm.iter().map(|&p| a.shape[p]).collect();
            let want = elementwise(shape, |i| {
                let mut src = vec![0; i.len()];
                for (k, &p) in perm.iter().enumerate() {
                    src[p] = i[k];
                }
                a.data[ravel(&src, &a.shape)] as f64
            });
            Case::new(
                format!("transpose {spec:?} perm {perm:?}"),
                Op::Transpose { perm },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

fn cast_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    let to_f16 = |v: f64| f16::from_f64(v).to_f64();
    let configs: [(DType, DType, Spec, Sizes); 3] = [
        (DType::F32, DType::F16, &["3", "4"], &[]),
        (DType::F16, DType::F32, &["1", "H"], &[("H", 6)]),
        (DType::F32, DType::I32, &["2", "5"], &[]),
    ];
    for (from, to, spec, sizes) in configs {
        let o = operand(r, spec, sizes, (-300.0, 300.0), from, false);
        let want = map_ref(&o.value, |v| match to {
            DType::F16 => to_f16(v),
            DType::I32 => v.trunc(),
            _ => v,
        });
        out.push(
            Case::new(
                format!("cast {from} to {to}"),
                Op::Cast { dtype: to },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
            .dtype(to),
        );
    }
    out
}

fn matmul_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    for (tx, ty) in [(false, false), (false, true), (true, false), (true, true)] {
        let xs: &[&str] = if tx { &["4", "3"] } else { &["3", "4"] };
        let ys: &[&str] = if ty { &["5", "4"] } else { &["4", "5"] };
        let (xo, yo) = (x(r, xs, &[]), x(r, ys, &[]));
        let want = matmul_ref(&xo.value, &yo.value, tx, ty);
        out.push(Case::new(
            format!("matmul tx={tx} ty={ty}"),
            Op::MatMul {
                transpose_x: tx,
                transpose_y: ty,
            },
            vec![xo, yo],
            want,
            1e-5,
        ));
    }
    let batched: [(Spec, Spec, bool, Sizes); 4] = [
        (&["2", "1", "3", "4"], &["3", "4", "5"], false, &[]),
        (&["2", "3", "4"], &["4", "2"], false, &[]),
        (&["3", "4"], &["2", "1", "4", "5"], false, &[]),
        (&["1", "L", "4"], &["1", "6", "4"], true, &[("L", 7)]),
    ];
    for (xs, ys, ty, sizes) in batched {
        let (xo, yo) = (x(r, xs, sizes), x(r, ys, sizes));
        let want = matmul_ref(&xo.value, &yo.value, false, ty);
        out.push(
            Case::new(
                format!("matmul {xs:?} by {ys:?}"),
                Op::MatMul {
                    transpose_x: false,
                    transpose_y: ty,
                },
                vec![xo, yo],
                want,
                1e-5,
            )
            .sizes(sizes),
        );
    }
    out
}

fn softmax_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, usize, Sizes); 4] = [
        (&["2", "3", "5"], 2, &[]),
        (&["2", "3", "5"], 1, &[]),
        (&["4", "3"], 0, &[]),
        (&["1", "H", "6"], 2, &[("H", 3)]),
    ];
    configs
        .into_iter()
        .map(|(spec, axis, sizes)| {
            // Large logits: a softmax without the max subtraction overflows here.
            let o = operand(r, spec, sizes, (-60.0, 90.0), DType::F32, false);
            let want = softmax_ref(&o.value, axis);
            Case::new(
                format!("softmax {spec:?} axis {axis}"),
                Op::Softmax { axis },
                vec![o],
                want,
                1e-5,
            )
            .sizes(sizes)
        })
        .collect()
}

/// The attention pass with a small budget, so the cases also run the chunked form (slice +
/// concat).
fn attention_pass(fused: bool, sizes: Vec<BTreeMap<String, usize>>) -> Box<dyn Pass> {
    Box::new(LowerAttention {
        fused,
        max_bytes: 64,
        element_bytes: 4,
        sizes,
    })
}

fn attention_decomposed() -> Box<dyn Pass> {
    attention_pass(false, vec![])
}

fn attention_fused() -> Box<dyn Pass> {
    attention_pass(true, vec![])
}

fn attention_enumerated() -> Box<dyn Pass> {
    // Two enumerated query counts, 6 and 12: within 64 bytes the larger needs 4 parts, and 6 is
    // the smallest count from 4 up that divides both.
    attention_pass(false, [6, 12].map(|l| bound(&[("L", l)])).to_vec())
}

fn attention_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    // (name, [q, k, v] shapes, scale (None: 1/sqrt(D)), sizes, lowering)
    type L = fn() -> Box<dyn Pass>;
    type Config = (&'static str, [Spec; 3], Option<f32>, Sizes, Lowering);
    let configs: [Config; 6] = [
        (
            "1/sqrt(D) fused (iOS18's op, lowered directly)",
            [&["1", "6", "8"], &["1", "5", "8"], &["1", "5", "3"]],
            None,
            &[],
            Lowering::Direct(Target::Ios18),
        ),
        (
            "1/sqrt(D) through the fused pass",
            [&["2", "4", "4"], &["2", "6", "4"], &["2", "6", "4"]],
            None,
            &[],
            Lowering::Pass(attention_fused as L, Target::Ios18),
        ),
        (
            "other scale, chunked matmul + softmax (iOS16)",
            [&["1", "9", "4"], &["1", "5", "4"], &["1", "5", "2"]],
            Some(0.7),
            &[],
            Lowering::Pass(attention_decomposed as L, Target::Ios16),
        ),
        (
            "1/sqrt(D) decomposed for iOS16",
            [&["2", "3", "16"], &["2", "3", "16"], &["2", "3", "16"]],
            None,
            &[],
            Lowering::Pass(attention_decomposed as L, Target::Ios16),
        ),
        (
            "symbolic query count",
            [&["1", "L", "4"], &["1", "5", "4"], &["1", "5", "3"]],
            Some(0.3),
            &[("L", 6)],
            Lowering::Pass(attention_decomposed as L, Target::Ios16),
        ),
        (
            "enumerated query count in equal parts (one MIL split)",
            [&["1", "L", "4"], &["1", "5", "4"], &["1", "5", "3"]],
            Some(0.3),
            &[("L", 6)],
            Lowering::Pass(attention_enumerated as L, Target::Ios16),
        ),
    ];
    for (name, [qs, ks, vs], scale, sizes, lowering) in configs {
        let (q, k, v) = (x(r, qs, sizes), x(r, ks, sizes), x(r, vs, sizes));
        let d = q.value.shape[2] as f32;
        let scale = scale.unwrap_or(1.0 / d.sqrt());
        let want = attention_ref(&q.value, &k.value, &v.value, None, scale as f64);
        out.push(
            Case::new(
                format!("attention {name}"),
                Op::Attention { scale },
                vec![q, k, v],
                want,
                1e-5,
            )
            .sizes(sizes)
            .lowering(lowering),
        );
    }
    out
}

/// A causal mask [L, S]: 0 where query i may see key j (j <= i + S - L), -1e4 elsewhere.
fn causal_mask(l: usize, s: usize) -> Array {
    let data = (0..l * s)
        .map(|e| if e % s <= e / s + s - l { 0.0 } else { -1e4 })
        .collect();
    Array::new(vec![l, s], data)
}

fn masked_attention_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    type L = fn() -> Box<dyn Pass>;
    // (name, [q, k, v] shapes, causal (else a random additive mask), sizes, lowering)
    type Config = (&'static str, [Spec; 3], bool, Sizes, Lowering);
    let configs: [Config; 5] = [
        (
            "causal, iOS18's op with attn_mask",
            [&["3", "5", "4"], &["3", "5", "4"], &["3", "5", "2"]],
            true,
            &[],
            Lowering::Direct(Target::Ios18),
        ),
        (
            "causal, fused and chunked (the mask cut by rows)",
            [&["2", "6", "4"], &["2", "6", "4"], &["2", "6", "4"]],
            true,
            &[],
            Lowering::Pass(attention_fused as L, Target::Ios18),
        ),
        (
            "causal, decomposed and chunked for iOS16",
            [&["2", "7", "4"], &["2", "7", "4"], &["2", "7", "3"]],
            true,
            &[],
            Lowering::Pass(attention_decomposed as L, Target::Ios16),
        ),
        (
            "random additive mask, fewer queries than keys",
            [&["1", "3", "4"], &["1", "5", "4"], &["1", "5", "3"]],
            false,
            &[],
            Lowering::Pass(attention_decomposed as L, Target::Ios16),
        ),
        (
            "enumerated query count, mask split with the queries",
            [&["1", "L", "4"], &["1", "5", "4"], &["1", "5", "3"]],
            false,
            &[("L", 6)],
            Lowering::Pass(attention_enumerated as L, Target::Ios16),
        ),
    ];
    for (name, [qs, ks, vs], causal, sizes, lowering) in configs {
        let (q, k, v) = (x(r, qs, sizes), x(r, ks, sizes), x(r, vs, sizes));
        let (l, s) = (q.value.shape[1], k.value.shape[1]);
        let mask = if causal {
            Operand {
                ty: TensorType::known(DType::F32, &[l, s]),
                value: causal_mask(l, s),
                constant: true,
            }
        } else {
            // A symbolic query count needs the mask as a model input of shape [L, S].
            let symbolic = qs[1].parse::<usize>().is_err();
            let rows = qs[1];
            let cols = s.to_string();
            operand(r, &[rows, &cols], sizes, (-3.0, 0.0), DType::F32, !symbolic)
        };
        let scale = 1.0 / (q.value.shape[2] as f32).sqrt();
        let want = attention_ref(
            &q.value,
            &k.value,
            &v.value,
            Some(&mask.value),
            scale as f64,
        );
        out.push(
            Case::new(
                format!("attention masked {name}"),
                Op::Attention { scale },
                vec![q, k, v, mask],
                want,
                1e-5,
            )
            .sizes(sizes)
            .lowering(lowering),
        );
    }
    out
}

fn layer_norm_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, usize, f32, Sizes, f64); 5] = [
        (&["1", "5", "16"], 2, 1e-5, &[], 0.0),
        // An offset mean: a one-pass variance would lose the digits this case checks.
        (&["2", "3", "8"], 2, 1e-3, &[], 30.0),
        (&["1", "H", "6"], 2, 1e-5, &[("H", 4)], 0.0),
        // The channels of the Neural Engine's [1, D, 1, S] transformer layout.
        (&["1", "6", "1", "5"], 1, 1e-5, &[], 0.0),
        (&["1", "4", "1", "S"], 1, 1e-5, &[("S", 3)], 10.0),
    ];
    configs
        .into_iter()
        .map(|(spec, axis, eps, sizes, offset)| {
            let [o, gamma, beta] = norm_operands(r, spec, sizes, offset, axis);
            let d = o.value.shape[axis];
            let (xv, g, b) = (&o.value, &gamma.value, &beta.value);
            let stride: usize = xv.shape[axis + 1..].iter().product();
            let want = elementwise(xv.shape.clone(), |idx| {
                let j = idx[axis];
                let first = ravel(idx, &xv.shape) - j * stride;
                let vals: Vec<f64> = (0..d).map(|k| xv.data[first + k * stride] as f64).collect();
                let mean = vals.iter().sum::<f64>() / d as f64;
                let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
                (vals[j] - mean) / (var + eps as f64).sqrt() * g.data[j] as f64 + b.data[j] as f64
            });
            Case::new(
                format!("layer_norm {spec:?} axis {axis} epsilon {eps}"),
                Op::LayerNorm { axis, epsilon: eps },
                vec![o, gamma, beta],
                want,
                2e-5,
            )
            .sizes(sizes)
        })
        .collect()
}

/// Int32 operand of `shape` with whole values in `lo..hi` (as the evaluators carry them: f32).
fn int_operand(r: &mut Rng, shape: &[usize], lo: i32, hi: i32, constant: bool) -> Operand {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| (lo as f64 + (hi - lo) as f64 * r.next()).floor() as f32)
        .collect();
    Operand {
        ty: TensorType::known(DType::I32, shape),
        value: Array::new(shape.to_vec(), data),
        constant,
    }
}

fn gather_cases(r: &mut Rng) -> Vec<Case> {
    // (x shape, indices shape, axis, indices a constant)
    type Config = (Spec, &'static [usize], usize, bool);
    let configs: [Config; 4] = [
        // An embedding lookup: table [V, D] by ids [1, S].
        (&["11", "4"], &[1, 6], 0, false),
        // CLIP's pooling: one position of [1, S, D].
        (&["1", "7", "3"], &[1], 1, false),
        (&["2", "5", "3"], &[2, 2], 2, true),
        (&["6", "2"], &[], 0, true),
    ];
    configs
        .into_iter()
        .map(|(spec, ishape, axis, constant)| {
            let o = operand(r, spec, &[], (-2.0, 2.0), DType::F32, true);
            let n = o.value.shape[axis] as i32;
            let i = int_operand(r, ishape, 0, n, constant);
            let (xv, iv) = (&o.value, &i.value);
            let mut shape = xv.shape[..axis].to_vec();
            shape.extend(ishape);
            shape.extend(&xv.shape[axis + 1..]);
            let want = elementwise(shape, |idx| {
                let k = ishape.len();
                let pick = iv.data[ravel(&idx[axis..axis + k], ishape)] as usize;
                let mut src = idx[..axis].to_vec();
                src.push(pick);
                src.extend(&idx[axis + k..]);
                xv.data[ravel(&src, &xv.shape)] as f64
            });
            Case::new(
                format!("gather {spec:?} by {ishape:?} along {axis}"),
                Op::Gather { axis },
                vec![o, i],
                want,
                0.0,
            )
        })
        .collect()
}

fn argmax_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    let float: [(Spec, usize); 2] = [(&["2", "7"], 1), (&["3", "4", "5"], 0)];
    for (spec, axis) in float {
        let o = x(r, spec, &[]);
        out.push((format!("argmax {spec:?} axis {axis}"), o, axis));
    }
    // Token ids with the largest one repeated (padding with EOS): the first one counts.
    let mut ids = int_operand(r, &[1, 9], 0, 50, false);
    for j in [4, 6, 7, 8] {
        ids.value.data[j] = 60.0;
    }
    out.push(("argmax int32 ids, ties take the first".into(), ids, 1));
    out.into_iter()
        .map(|(name, o, axis)| {
            let xv = &o.value;
            let mut shape = xv.shape.clone();
            shape.remove(axis);
            let want = elementwise(shape, |idx| {
                let at = |j: usize| {
                    let mut i = idx.to_vec();
                    i.insert(axis, j);
                    xv.data[ravel(&i, &xv.shape)]
                };
                let mut best = 0;
                for j in 0..xv.shape[axis] {
                    if at(j) > at(best) {
                        best = j;
                    }
                }
                best as f64
            });
            Case::new(name, Op::ArgMax { axis }, vec![o], want, 0.0).dtype(DType::I32)
        })
        .collect()
}

fn slice_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, usize, usize, usize, Sizes); 4] = [
        (&["5", "3"], 0, 1, 4, &[]),
        (&["2", "6", "3"], 1, 0, 2, &[]),
        (&["2", "3", "7"], 2, 6, 7, &[]),
        (&["1", "H", "8"], 2, 3, 8, &[("H", 4)]),
    ];
    configs
        .into_iter()
        .map(|(spec, axis, begin, end, sizes)| {
            let o = x(r, spec, sizes);
            let a = &o.value;
            let mut shape = a.shape.clone();
            shape[axis] = end - begin;
            let want = elementwise(shape, |i| {
                let mut src = i.to_vec();
                src[axis] += begin;
                a.data[ravel(&src, &a.shape)] as f64
            });
            Case::new(
                format!("slice {spec:?} axis {axis} {begin}..{end}"),
                Op::Slice { axis, begin, end },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

fn split_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, usize, usize, usize, Sizes); 4] = [
        (&["6", "3"], 0, 3, 1, &[]),
        (&["2", "4", "3"], 1, 1, 0, &[]),
        (&["1", "4*H", "2"], 1, 4, 3, &[("H", 3)]),
        (&["1", "2", "8*H"], 2, 8, 5, &[("H", 3)]),
    ];
    configs
        .into_iter()
        .map(|(spec, axis, parts, index, sizes)| {
            let o = x(r, spec, sizes);
            let a = &o.value;
            let part = a.shape[axis] / parts;
            let mut shape = a.shape.clone();
            shape[axis] = part;
            let want = elementwise(shape, |i| {
                let mut src = i.to_vec();
                src[axis] += index * part;
                a.data[ravel(&src, &a.shape)] as f64
            });
            Case::new(
                format!("split {spec:?} axis {axis} part {index} of {parts}"),
                Op::Split { axis, parts, index },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

fn reshape_like_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, Spec, Sizes); 2] = [
        (&["2", "3", "4"], &["6", "4"], &[]),
        // The reference's size is only known at run time: lowered through MIL's `shape` op.
        (
            &["1", "2", "H*W"],
            &["1", "2", "H", "W"],
            &[("H", 3), ("W", 4)],
        ),
    ];
    configs
        .into_iter()
        .map(|(from, like, sizes)| {
            let o = x(r, from, sizes);
            let reference = x(r, like, sizes);
            let want = Ref {
                shape: reference.value.shape.clone(),
                data: f64s(&o.value),
            };
            Case::new(
                format!("reshape_like {from:?} like {like:?}"),
                Op::ReshapeLike,
                vec![o, reference],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

fn concat_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Vec<Spec>, usize, Sizes); 4] = [
        (vec![&["2", "3"]], 0, &[]),
        (vec![&["2", "3"], &["2", "1"]], 1, &[]),
        (
            vec![&["1", "2", "4"], &["1", "3", "4"], &["1", "1", "4"]],
            1,
            &[],
        ),
        (vec![&["1", "H", "2"], &["1", "H", "3"]], 2, &[("H", 3)]),
    ];
    configs
        .into_iter()
        .map(|(specs, axis, sizes)| {
            let ops: Vec<Operand> = specs.iter().map(|s| x(r, s, sizes)).collect();
            let mut shape = ops[0].value.shape.clone();
            shape[axis] = ops.iter().map(|o| o.value.shape[axis]).sum();
            let want = elementwise(shape, |i| {
                let mut at = i[axis];
                for o in &ops {
                    let n = o.value.shape[axis];
                    if at < n {
                        let mut src = i.to_vec();
                        src[axis] = at;
                        return o.value.data[ravel(&src, &o.value.shape)] as f64;
                    }
                    at -= n;
                }
                unreachable!()
            });
            Case::new(
                format!("concat {specs:?} axis {axis}"),
                Op::Concat { axis },
                ops,
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

fn pixel_shuffle_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(usize, Spec, Sizes); 3] = [
        (2, &["1", "8", "2", "3"], &[]),
        (3, &["2", "9", "2", "2"], &[]),
        (2, &["1", "4", "H", "W"], &[("H", 3), ("W", 2)]),
    ];
    configs
        .into_iter()
        .map(|(f, spec, sizes)| {
            let o = x(r, spec, sizes);
            let a = &o.value;
            let shape = vec![
                a.shape[0],
                a.shape[1] / (f * f),
                a.shape[2] * f,
                a.shape[3] * f,
            ];
            // out[n, c, h*r + i, w*r + j] = in[n, c*r*r + i*r + j, h, w]
            let want = elementwise(shape, |o| {
                let (h, i, w, j) = (o[2] / f, o[2] % f, o[3] / f, o[3] % f);
                a.data[ravel(&[o[0], o[1] * f * f + i * f + j, h, w], &a.shape)] as f64
            });
            Case::new(
                format!("pixel_shuffle x{f} {spec:?}"),
                Op::PixelShuffle { factor: f },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The checks

/// The one-op graph and its inputs; the op's result is output `y` (an input case returns `x`).
fn build(c: &Case) -> (Graph, BTreeMap<String, Array>) {
    let mut g = Graph::new("conformance");
    let mut inputs = BTreeMap::new();
    match &c.op {
        Op::Input { name } => {
            let v = g.input(name, c.operands[0].ty.clone());
            g.set_output(name, v);
            inputs.insert(name.clone(), c.operands[0].value.clone());
        }
        Op::Const(ConstData::Dense(t)) => {
            let v = g.constant("y", t.clone());
            g.set_output("y", v);
        }
        op => {
            // The evaluator binds symbols in input order, so an input shaped `H*W` must come
            // after the one that binds H and W (reshape_like's reference is its second operand).
            let compound = |o: &Operand| {
                o.ty.shape
                    .iter()
                    .any(|d| matches!(d, Dim::Sym(s) if s.symbols().count() > 1))
            };
            let mut order: Vec<usize> = (0..c.operands.len()).collect();
            order.sort_by_key(|&i| compound(&c.operands[i]));
            let mut ids = vec![None; c.operands.len()];
            for i in order {
                let o = &c.operands[i];
                ids[i] = Some(if o.constant {
                    let t = Tensor::f32(o.value.shape.clone(), o.value.data.clone());
                    g.constant(format!("c{i}"), t.cast(o.ty.dtype))
                } else {
                    let name = format!("x{i}");
                    inputs.insert(name.clone(), o.value.clone());
                    g.input(&name, o.ty.clone())
                });
            }
            let ids: Vec<_> = ids.into_iter().map(|v| v.expect("every operand")).collect();
            let y = g.add(op.clone(), &ids, "op").expect("the case's op infers");
            g.set_output("y", y);
        }
    }
    (g, inputs)
}

fn compare(what: &str, c: &Case, got: &Array) -> Result<(), String> {
    if got.shape != c.want_shape {
        return Err(format!(
            "{what}: shape {:?}, reference {:?}",
            got.shape, c.want_shape
        ));
    }
    let error = |g: f32, w: f64| {
        let e = (g as f64 - w).abs() / (1.0 + w.abs());
        // Equal infinities compare equal; any NaN is the worst error there is.
        if g as f64 == w {
            0.0
        } else if e.is_nan() {
            f64::INFINITY
        } else {
            e
        }
    };
    let worst = got
        .data
        .iter()
        .zip(&c.want)
        .enumerate()
        .map(|(i, (&g, &w))| (i, error(g, w), g, w))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    match worst {
        Some((i, err, g, w)) if err > c.tol => Err(format!(
            "{what}: element {i} (index {:?}) is {g}, reference {w} (error {err:.3e} > tol {:.0e})",
            unravel(i, &c.want_shape),
            c.tol
        )),
        _ => Ok(()),
    }
}

fn check_infer(c: &Case) -> Result<(), String> {
    let types: Vec<&TensorType> = c.operands.iter().map(|o| &o.ty).collect();
    let inferred = match &c.op {
        // An input's type is declared, never inferred: infer must refuse.
        Op::Input { .. } => {
            return match c.op.infer(&types) {
                Err(_) => Ok(()),
                Ok(t) => Err(format!("infer: an input inferred {t}")),
            }
        }
        op => op.infer(&types).map_err(|e| format!("infer: {e}"))?,
    };
    let shape: Option<Vec<usize>> = inferred
        .shape
        .iter()
        .map(|d| d.resolve(&|s| c.sizes.get(s).copied()))
        .collect();
    if shape.as_deref() != Some(&c.want_shape[..]) || inferred.dtype != c.want_dtype {
        return Err(format!(
            "infer: {inferred} (at {:?}), reference {}{:?}",
            c.sizes, c.want_dtype, c.want_shape
        ));
    }
    Ok(())
}

fn check_ir(c: &Case, g: &Graph, inputs: &BTreeMap<String, Array>) -> Result<(), String> {
    mlc::ir::verify::verify(g).map_err(|e| format!("verify: {e}"))?;
    let out = evaluate(g, inputs).map_err(|e| format!("IR eval: {e}"))?;
    let (_, y) = out.iter().next().expect("one output");
    compare("IR eval", c, y)
}

fn check_mil(c: &Case, g: &Graph, inputs: &BTreeMap<String, Array>) -> Result<(), String> {
    let (g, target) = match &c.lowering {
        Lowering::Direct(t) => (g.clone(), *t),
        Lowering::Pass(p, t) => {
            let lowered = p().run(g.clone()).map_err(|e| format!("pass: {e}"))?;
            mlc::ir::verify::verify(&lowered).map_err(|e| format!("pass output: {e}"))?;
            (lowered, *t)
        }
    };
    let iface = Interface {
        sizes: if c.sizes.is_empty() {
            vec![]
        } else {
            vec![c.sizes.clone()]
        },
        image_outputs: false,
        image_inputs: false,
    };
    let lowered =
        lower(&g, target, &ModelInfo::default(), &iface).map_err(|e| format!("lower: {e}"))?;
    let Some(ModelType::MlProgram(program)) = &lowered.model.r#type else {
        return Err("lower: not an ML program".into());
    };
    let blobs = lowered
        .weight_bin
        .as_deref()
        .map(BlobReader::new)
        .transpose()
        .map_err(|e| format!("weight.bin: {e}"))?;
    let out = mlc::mil::eval::evaluate(program, "main", blobs.as_ref(), inputs)
        .map_err(|e| format!("MIL eval ({target}): {e}"))?;
    let (_, y) = out.iter().next().expect("one output");
    compare(&format!("MIL eval ({target})"), c, y)
}

fn run(c: &Case) -> Vec<String> {
    let (g, inputs) = build(c);
    [
        check_infer(c),
        check_ir(c, &g, &inputs),
        check_mil(c, &g, &inputs),
    ]
    .into_iter()
    .filter_map(Result::err)
    .map(|e| format!("{}: {e}", c.name))
    .collect()
}

#[test]
fn every_op_matches_its_reference() {
    let mut failures = Vec::new();
    let mut count = 0;
    for &f in FAMILIES {
        for c in cases(f) {
            count += 1;
            failures.extend(run(&c));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_op_variant_and_table_row_has_cases() {
    for &f in FAMILIES {
        let cs = cases(f);
        assert!(!cs.is_empty(), "{f:?} has no conformance case");
        for c in &cs {
            assert_eq!(family(&c.op), f, "case {} is filed under {f:?}", c.name);
        }
    }
    let ops: Vec<Op> = [Family::Unary, Family::Binary]
        .into_iter()
        .flat_map(cases)
        .map(|c| c.op)
        .collect();
    for &u in Unary::ALL {
        assert!(ops.contains(&Op::Unary(u)), "{} has no case", u.name());
    }
    for &b in Binary::ALL {
        assert!(ops.contains(&Op::Binary(b)), "{} has no case", b.name());
    }
}

/// The harness must be able to fail: a wrong reference is caught by all three checks.
#[test]
fn a_wrong_reference_fails() {
    let mut c = cases(Family::Softmax).remove(0);
    c.want[3] += 1e-3;
    let errors = run(&c);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("IR eval") && errors[1].contains("MIL eval"),
        "{errors:?}"
    );
    let mut c = cases(Family::Conv2d).remove(0);
    c.want_shape[2] += 1;
    assert_eq!(
        run(&c).len(),
        3,
        "a wrong shape fails infer and both evaluators"
    );
}
