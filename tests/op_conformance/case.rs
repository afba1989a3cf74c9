//! A conformance case: the op, its operands, the reference result and how it reaches MIL; and
//! the deterministic operands cases are made of.

use crate::prelude::*;

pub(crate) type Spec = &'static [&'static str];
pub(crate) type Sizes = &'static [(&'static str, usize)];

/// One operand of the op under test.
pub(crate) struct Operand {
    /// As declared in the graph (may be symbolic).
    pub(crate) ty: TensorType,
    pub(crate) value: Array,
    /// A graph constant (weights, gamma/beta) rather than a model input.
    pub(crate) constant: bool,
}

/// How the one-op graph reaches MIL.
pub(crate) enum Lowering {
    Direct(Target),
    /// Lowered by a pass first, because the MIL lowering refuses the op by design.
    Pass(fn() -> Box<dyn Pass>, Target),
}

pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) op: Op,
    pub(crate) operands: Vec<Operand>,
    /// Values of the symbols in the declared shapes.
    pub(crate) sizes: BTreeMap<String, usize>,
    pub(crate) want_shape: Vec<usize>,
    pub(crate) want_dtype: DType,
    pub(crate) want: Vec<f64>,
    pub(crate) tol: f64,
    pub(crate) lowering: Lowering,
}

impl Case {
    pub(crate) fn new(
        name: impl Into<String>,
        op: Op,
        operands: Vec<Operand>,
        want: Ref,
        tol: f64,
    ) -> Case {
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

    pub(crate) fn sizes(mut self, pairs: &[(&str, usize)]) -> Case {
        self.sizes = bound(pairs);
        self
    }

    pub(crate) fn lowering(mut self, l: Lowering) -> Case {
        self.lowering = l;
        self
    }

    pub(crate) fn dtype(mut self, d: DType) -> Case {
        self.want_dtype = d;
        self
    }
}

/// A reference result.
pub(crate) struct Ref {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<f64>,
}

/// Deterministic uniform values, so a failure reproduces.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn array(&mut self, shape: &[usize], lo: f64, hi: f64) -> Array {
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
pub(crate) fn bound(sizes: &[(&str, usize)]) -> BTreeMap<String, usize> {
    sizes.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

pub(crate) fn dims(spec: &[&str]) -> Vec<Dim> {
    spec.iter()
        .map(|s| match s.parse() {
            Ok(n) => Dim::Known(n),
            Err(_) => mlc::ir::parse::parse_dim(s).unwrap(),
        })
        .collect()
}

pub(crate) fn resolve(ty: &[Dim], sizes: &BTreeMap<String, usize>) -> Vec<usize> {
    ty.iter()
        .map(|d| d.resolve(&|s| sizes.get(s).copied()).expect("bound"))
        .collect()
}

/// An operand of declared shape `spec` (`"H"`, `"2*W"` allowed), valued at `sizes`.
pub(crate) fn operand(
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

pub(crate) fn x(rng: &mut Rng, spec: &[&str], sizes: &[(&str, usize)]) -> Operand {
    operand(rng, spec, sizes, (-2.0, 2.0), DType::F32, false)
}

pub(crate) fn w(rng: &mut Rng, spec: &[&str]) -> Operand {
    operand(rng, spec, &[], (-1.0, 1.0), DType::F32, true)
}

pub(crate) fn f64s(a: &Array) -> Vec<f64> {
    a.data.iter().map(|&v| v as f64).collect()
}

/// The reference of an op that maps each element of `a` on its own.
pub(crate) fn map_ref(a: &Array, f: impl Fn(f64) -> f64) -> Ref {
    Ref {
        shape: a.shape.clone(),
        data: a.data.iter().map(|&v| f(v as f64)).collect(),
    }
}
