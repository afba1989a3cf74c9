//! Static tensor types: an element type and a shape whose dimensions are either known or a
//! multiple of a named symbol (the spatial sizes of a model built for several input sizes).

use crate::tensor::DType;
use std::fmt;

/// One dimension of a shape.
///
/// TAESD-style decoders only ever scale spatial sizes by integers (nearest upsampling, same-size
/// convolutions), so `factor * symbol` is all the symbolic algebra the IR needs: a symbolic size
/// stays exact through every op and nothing ever has to bake a concrete spatial size.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(usize),
    /// `factor * symbol`, e.g. `8*H`.
    Sym {
        symbol: String,
        factor: usize,
    },
}

impl Dim {
    pub fn known(self: &Dim) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            Dim::Sym { .. } => None,
        }
    }

    pub fn sym(symbol: &str) -> Dim {
        Dim::Sym {
            symbol: symbol.to_string(),
            factor: 1,
        }
    }

    /// This dimension times `k`.
    pub fn scaled(&self, k: usize) -> Dim {
        match self {
            Dim::Known(n) => Dim::Known(n * k),
            Dim::Sym { symbol, factor } => Dim::Sym {
                symbol: symbol.clone(),
                factor: factor * k,
            },
        }
    }

    /// The size of this dimension once every symbol is bound.
    pub fn resolve(&self, bind: &dyn Fn(&str) -> Option<usize>) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            Dim::Sym { symbol, factor } => bind(symbol).map(|v| v * factor),
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym { symbol, factor: 1 } => write!(f, "{symbol}"),
            Dim::Sym { symbol, factor } => write!(f, "{factor}*{symbol}"),
        }
    }
}

/// The type of every value in the graph.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Vec<Dim>) -> TensorType {
        TensorType { dtype, shape }
    }

    pub fn known(dtype: DType, shape: &[usize]) -> TensorType {
        TensorType {
            dtype,
            shape: shape.iter().map(|&n| Dim::Known(n)).collect(),
        }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The concrete shape, if no dimension is symbolic.
    pub fn known_shape(&self) -> Option<Vec<usize>> {
        self.shape.iter().map(Dim::known).collect()
    }

    pub fn with_dtype(&self, dtype: DType) -> TensorType {
        TensorType {
            dtype,
            shape: self.shape.clone(),
        }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}
