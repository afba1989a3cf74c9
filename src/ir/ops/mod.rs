//! The closed set of IR operations, defined once: one file per op, one line per op in the
//! `ops!` list below.
//!
//! An op's file holds everything about it: its semantics (module doc), type inference, IR
//! evaluation (through its kernel in `src/kernels/`), its attributes as the text form prints and
//! parses them, its lowering to MIL, and the MIL ops it emits with their Neural Engine notes.
//! The list generates the [`Op`] enum, its dispatch to the files, the kind list the conformance
//! tests cover ([`OpKind::ALL`]) and the MIL op table rows for what mlc emits
//! ([`crate::mil::ops::emitted`]). A list line whose file lacks a piece does not compile.
//!
//! What an op file `m` provides, with its variant's fields passed by reference (`&T`; `&mut T`
//! for `attrs`) after the common arguments:
//!
//! - `NAME: &str`, the printed name (variants that wrap a type, such as `Unary(Unary)`, have
//!   `name(&T)` and `from_name(&str) -> Option<T>` instead, as they name several ops);
//! - `infer(inputs: &[&TensorType], ..)`: the output type, or why the inputs do not fit;
//! - `eval(args: &[&Array], sizes, ..)`: the f32 semantics every lowering must keep;
//! - `attrs(v: &mut impl Visit, ..)`: the attributes, visited in printed order: the printer and
//!   the parser both run this one declaration ([`attr`]), so they cannot drift;
//! - `lower(e: &mut Emitter, id: ValueId, ..)`: the MIL ops for node `id`;
//! - `MIL: &[MilOp]`: the MIL ops it emits that no other op file already declares, with their
//!   inputs, minimum target and Neural Engine notes;
//! - `examples()` (tests): graphs in the text form using the op, which the round-trip test reads.
//!
//! The op files are declared by the list itself, where `cargo fmt` does not reach them: format
//! them with `rustfmt --edition 2021 src/ir/ops/*.rs`.
//!
//! Inference runs when a node is added ([`super::Graph::add`]) and again in the verifier, so a
//! graph is never half-typed.

pub mod attr;

use super::types::{Dim, TensorType};
use crate::kernels::Array;
use crate::mil::emit::Emitter;
use crate::mil::ops::MilOp;
use crate::mil::LowerError;
use attr::{Attr, Visit};
use std::collections::BTreeMap;

/// A binding in a generated pattern or argument list: `$name`, for a variant that wraps a type.
macro_rules! bind {
    ($t:ty, $name:ident) => {
        $name
    };
}

/// The printed name of a variant: its file's `NAME`, or `name(&T)` for a wrapped type.
macro_rules! op_name {
    ($m:ident, $a:ident) => {
        $m::NAME
    };
    ($m:ident, $a:ident, $t:ty) => {
        $m::name($a)
    };
}

/// The variant `$v` with blank attributes if `$name` names it.
macro_rules! template {
    ($name:ident, $v:ident, $m:ident) => {
        ($name == $m::NAME).then_some(Op::$v)
    };
    ($name:ident, $v:ident, $m:ident, { $($f:ident),* }) => {
        ($name == $m::NAME).then(|| Op::$v { $($f: Attr::blank()),* })
    };
    ($name:ident, $v:ident, $m:ident, ($t:ty)) => {
        $m::from_name($name).map(Op::$v)
    };
}

/// Generates the op set from its list: `Variant { fields } => file`, `Variant(Type) => file` or
/// `Variant => file`, each line with the variant's doc. New ops go at the end: the conformance
/// cases seed their random inputs from an op's place in the list.
macro_rules! ops {
    ($(
        $(#[$doc:meta])*
        $v:ident $({ $($f:ident : $t:ty),* $(,)? })? $(($inner:ty))? => $m:ident,
    )*) => {
        $(pub mod $m;)*

        /// The closed set of IR ops; each variant's file is named after it in the list.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Op {
            $($(#[$doc])* $v $({ $($f: $t),* })? $(($inner))?,)*
        }

        /// Which op a value is, without its attributes: what coverage lists enumerate.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum OpKind { $($v),* }

        impl OpKind {
            /// Every op, in list order.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$v),*];

            /// The name of the op's file in `src/ir/ops/`.
            pub fn file(self) -> &'static str {
                match self { $(OpKind::$v => stringify!($m)),* }
            }
        }

        impl Op {
            pub fn kind(&self) -> OpKind {
                match self { $(Op::$v { .. } => OpKind::$v),* }
            }

            /// Short lowercase name, as printed.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Op::$v { $(0: bind!($inner, a),)? .. } => op_name!($m, a $(, $inner)?),)*
                }
            }

            /// The op named `name` with blank attributes, for the parser to fill.
            pub fn from_name(name: &str) -> Option<Op> {
                $(
                    if let Some(op) = template!(name, $v, $m $(, { $($f),* })? $(, ($inner))?) {
                        return Some(op);
                    }
                )*
                None
            }

            /// The output type for these input types, or why they do not fit.
            ///
            /// `Input` cannot infer its type (the graph declares it); it is checked by the
            /// verifier.
            pub fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, String> {
                match self {
                    $(Op::$v $({ $($f),* })? $((bind!($inner, a)))? =>
                        $m::infer(inputs, $($($f,)*)? $(bind!($inner, a))?),)*
                }
            }

            /// The op on f32 arrays, with the model's sizes bound (symbolic reshape targets
            /// need them).
            pub fn eval(
                &self,
                args: &[&Array],
                sizes: &BTreeMap<String, usize>,
            ) -> Result<Array, String> {
                match self {
                    $(Op::$v $({ $($f),* })? $((bind!($inner, a)))? =>
                        $m::eval(args, sizes, $($($f,)*)? $(bind!($inner, a))?),)*
                }
            }

            /// Visits the attributes in printed order (see [`attr`]).
            pub fn visit_attrs(&mut self, v: &mut impl Visit) -> Result<(), String> {
                match self {
                    $(Op::$v $({ $($f),* })? $((bind!($inner, a)))? =>
                        $m::attrs(v, $($($f,)*)? $(bind!($inner, a))?),)*
                }
            }

            /// Emits the MIL ops of node `id`, whose op this is.
            pub(crate) fn lower(
                &self,
                e: &mut Emitter,
                id: super::ValueId,
            ) -> Result<(), LowerError> {
                match self {
                    $(Op::$v $({ $($f),* })? $((bind!($inner, a)))? =>
                        $m::lower(e, id, $($($f,)*)? $(bind!($inner, a))?),)*
                }
            }
        }

        /// The MIL ops the lowering emits, one row each, in list order.
        pub fn mil_ops() -> impl Iterator<Item = &'static MilOp> {
            [$($m::MIL),*].into_iter().flatten()
        }

        /// Every op's example graphs, by kind.
        #[cfg(test)]
        pub(crate) fn examples(kind: OpKind) -> Vec<String> {
            match kind { $(OpKind::$v => $m::examples()),* }
        }
    };
}

ops! {
    /// A graph input, named as the model's feature.
    Input { name: String } => input,
    Const(ConstData) => constant,
    Unary(Unary) => unary,
    Binary(Binary) => binary,
    /// Inputs: x, weight, optional bias.
    Conv2d(Conv2d) => conv2d,
    /// `1 / sqrt(x + epsilon)`.
    Rsqrt { epsilon: f32 } => rsqrt,
    /// `min(max(x, min), max)`.
    Clip { min: f32, max: f32 } => clip,
    /// An int8 quantize–dequantize pair (see [`fake_quantize`]).
    FakeQuantize { scale: f32, zero_point: i8 } => fake_quantize,
    /// Nearest-neighbour upsampling of H and W by an integer factor.
    Upsample { scale: usize } => upsample,
    /// Inputs: x `[N, C, H, W]`, gamma `[C]`, beta `[C]`.
    GroupNorm { groups: usize, epsilon: f32 } => group_norm,
    ReduceMean { axes: Vec<usize>, keep_dims: bool } => reduce_mean,
    /// Target shape with the same element count; dimensions may be symbolic (`H*W`).
    Reshape { shape: Vec<Dim> } => reshape,
    Tile { reps: Vec<usize> } => tile,
    Transpose { perm: Vec<usize> } => transpose,
    Cast { dtype: crate::tensor::DType } => cast,
    /// Batched matrix product of x [.., M, K] and y [.., K, N] (each optionally transposed in
    /// its last two axes), batch axes broadcast.
    MatMul { transpose_x: bool, transpose_y: bool } => matmul,
    /// Softmax along `axis`.
    Softmax { axis: usize } => softmax,
    /// `softmax(q kᵀ · scale + mask) v` (see [`attention`]).
    Attention { scale: f32 } => attention,
    /// Elements `begin..end` of `axis` (static bounds).
    Slice { axis: usize, begin: usize, end: usize } => slice,
    /// Part `index` of `parts` equal parts of `axis` (see [`split`]).
    Split { axis: usize, parts: usize, index: usize } => split,
    /// x reshaped to the shape of a reference value (inputs x, reference; see [`reshape_like`]).
    ReshapeLike => reshape_like,
    /// Inputs joined along `axis`.
    Concat { axis: usize } => concat,
    /// [N, C·r², H, W] → [N, C, H·r, W·r] (see [`pixel_shuffle`]).
    PixelShuffle { factor: usize } => pixel_shuffle,
    /// Normalisation over one axis (inputs x, gamma, beta; see [`layer_norm`]).
    LayerNorm { axis: usize, epsilon: f32 } => layer_norm,
    /// Rows of x picked along `axis` by int32 indices (inputs x, indices; see [`gather`]).
    Gather { axis: usize } => gather,
    /// The int32 index of the first largest element along `axis`, which is removed.
    ArgMax { axis: usize } => argmax,
    /// A mixed-precision fence: `fp32=true` opens an fp32 region, `fp32=false` closes it (see
    /// [`precision`]); the value passes unchanged.
    Precision { fp32: bool } => precision,
}

pub use binary::{broadcast, Binary};
pub use constant::{ConstData, Palettized, Quantized};
pub use conv2d::Conv2d;
pub use unary::Unary;

impl Op {
    /// The attributes as printed after the parentheses (`axis=1 epsilon=1e-5`); empty for
    /// inputs and constants, whose text is inside the parentheses.
    pub fn attr_text(&self) -> String {
        if matches!(self, Op::Input { .. } | Op::Const(_)) {
            return String::new();
        }
        let mut shown = attr::Show::default();
        // Printing needs no mutation; the visitor takes `&mut` for the parser's sake, so it
        // visits a copy (attributes are small; constants never get here).
        let _ = self.clone().visit_attrs(&mut shown);
        shown.0.join(" ")
    }

    /// The op with the symbols of its size attributes bound (None if a quotient is not whole).
    pub fn bind_sizes(&self, b: &BTreeMap<String, usize>) -> Option<Op> {
        Some(match self {
            Op::Reshape { shape } => Op::Reshape {
                shape: reshape::bind(shape, b)?,
            },
            op => op.clone(),
        })
    }
}

/// The model's bound sizes, by symbol.
pub type Sizes = BTreeMap<String, usize>;

/// The arity check every op's inference starts with.
fn arity(inputs: &[&TensorType], n: std::ops::RangeInclusive<usize>) -> Result<(), String> {
    if n.contains(&inputs.len()) {
        Ok(())
    } else {
        Err(format!("takes {n:?} inputs, got {}", inputs.len()))
    }
}

/// Refuses a non-float input.
fn float(t: &TensorType) -> Result<(), String> {
    use crate::tensor::DType;
    match t.dtype {
        DType::F32 | DType::F16 => Ok(()),
        d => Err(format!("needs fp32 or fp16 input, got {d}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{parse::parse, print::print, verify::verify};

    /// Every op in the list round-trips through the printer and the parser: its examples parse,
    /// verify, contain the op, and print back as written.
    #[test]
    fn every_op_round_trips_through_print_and_parse() {
        for &kind in OpKind::ALL {
            let examples = examples(kind);
            let file = kind.file();
            assert!(!examples.is_empty(), "{kind:?} has no example in {file}.rs");
            for text in examples {
                let g = parse(&text).unwrap_or_else(|e| panic!("{file}.rs: {e}\n{text}"));
                verify(&g).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
                assert!(
                    g.nodes().any(|(_, n)| n.op.kind() == kind),
                    "{kind:?}'s example does not use it:\n{text}"
                );
                assert_eq!(print(&g), text, "{kind:?}");
            }
        }
    }

    #[test]
    fn names_are_unique_and_parse_back() {
        for &kind in OpKind::ALL {
            for text in examples(kind) {
                let g = parse(&text).unwrap();
                for (_, n) in g.nodes() {
                    let blank = Op::from_name(n.op.name()).map(|o| o.kind());
                    if !matches!(n.op, Op::Const(_)) {
                        assert_eq!(blank, Some(n.op.kind()), "{}", n.op.name());
                    }
                }
            }
        }
        assert!(Op::from_name("no_such_op").is_none());
    }
}
