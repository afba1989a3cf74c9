//! Static tensor types: an element type and a shape whose dimensions are either known or a small
//! symbolic expression over the sizes a model is built for (`H`, `8*H`, `H/2`, `H*W`).

use crate::tensor::DType;
use std::collections::BTreeMap;
use std::fmt;

/// A monomial over named sizes: `num * Π symbol^power / den`, kept normalised (`gcd(num, den) =
/// 1`, symbols sorted, no zero powers), so equal sizes compare equal.
///
/// Products and exact quotients are all the algebra the models need: nearest upsampling scales a
/// size (`8*H`), a stride-2 conv halves it (`H/2`, valid only where `H` is even, which binding
/// checks), attention flattens two of them (`H*W`). Sums never appear, so nothing ever has to
/// bake a concrete spatial size.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SymDim {
    num: usize,
    den: usize,
    symbols: Vec<(String, u32)>,
}

impl SymDim {
    fn normalised(num: usize, den: usize, mut symbols: Vec<(String, u32)>) -> SymDim {
        let g = gcd(num, den).max(1);
        symbols.sort();
        let mut merged: Vec<(String, u32)> = Vec::with_capacity(symbols.len());
        for (s, p) in symbols {
            match merged.last_mut() {
                Some((t, q)) if *t == s => *q += p,
                _ => merged.push((s, p)),
            }
        }
        merged.retain(|(_, p)| *p > 0);
        SymDim {
            num: num / g,
            den: den / g,
            symbols: merged,
        }
    }

    /// `(num, den)` of `num * symbols / den`.
    pub fn coefficient(&self) -> (usize, usize) {
        (self.num, self.den)
    }

    /// The symbols it depends on.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.symbols.iter().map(|(s, _)| s.as_str())
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One dimension of a shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Known(usize),
    Sym(SymDim),
}

impl Dim {
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    /// The size named `symbol`.
    pub fn sym(symbol: &str) -> Dim {
        Dim::Sym(SymDim::normalised(1, 1, vec![(symbol.to_string(), 1)]))
    }

    fn from_parts(num: usize, den: usize, symbols: Vec<(String, u32)>) -> Option<Dim> {
        if den == 0 {
            return None;
        }
        let s = SymDim::normalised(num, den, symbols);
        Some(match (s.symbols.is_empty(), s.den) {
            (true, 1) => Dim::Known(s.num),
            (true, _) => return None,
            (false, _) if s.num == 0 => Dim::Known(0),
            (false, _) => Dim::Sym(s),
        })
    }

    fn parts(&self) -> (usize, usize, Vec<(String, u32)>) {
        match self {
            Dim::Known(n) => (*n, 1, vec![]),
            Dim::Sym(s) => (s.num, s.den, s.symbols.clone()),
        }
    }

    /// This dimension times `k`.
    pub fn scaled(&self, k: usize) -> Dim {
        self.times(&Dim::Known(k))
    }

    /// The product of two dimensions (`H*W`).
    pub fn times(&self, other: &Dim) -> Dim {
        let (a, b, mut s) = self.parts();
        let (c, d, t) = other.parts();
        s.extend(t);
        Dim::from_parts(a.saturating_mul(c), b.saturating_mul(d), s).expect("denominators > 0")
    }

    /// This dimension divided by `k`: exact for known sizes (None when `k` does not divide it);
    /// a symbolic quotient (`H/2`) is checked when its symbols are bound.
    pub fn divided(&self, k: usize) -> Option<Dim> {
        let (a, b, s) = self.parts();
        Dim::from_parts(a, b.checked_mul(k)?, s)
    }

    /// The size of this dimension once every symbol is bound; None if a symbol is unbound, the
    /// quotient is not a whole number, or it overflows.
    pub fn resolve(&self, bind: &dyn Fn(&str) -> Option<usize>) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            Dim::Sym(s) => {
                let mut v = s.num;
                for (sym, p) in &s.symbols {
                    v = v.checked_mul(bind(sym)?.checked_pow(*p)?)?;
                }
                (v % s.den == 0).then_some(v / s.den)
            }
        }
    }

    /// Binds the symbols in `b`, leaving the others symbolic; None when a bound quotient is not
    /// a whole number.
    pub fn bind(&self, b: &BTreeMap<String, usize>) -> Option<Dim> {
        let Dim::Sym(s) = self else {
            return Some(self.clone());
        };
        let mut num = s.num;
        let mut rest = Vec::new();
        for (sym, p) in &s.symbols {
            match b.get(sym) {
                Some(v) => num = num.checked_mul(v.checked_pow(*p)?)?,
                None => rest.push((sym.clone(), *p)),
            }
        }
        if rest.is_empty() && num % s.den != 0 {
            return None;
        }
        Dim::from_parts(num, s.den, rest)
    }

    /// Solves `self == n` for its one unbound symbol, if it has exactly one with power 1 and the
    /// others are bound in `b`: how an input's given shape binds the sizes.
    pub fn solve(&self, n: usize, b: &BTreeMap<String, usize>) -> Option<(String, usize)> {
        let Dim::Sym(bound) = self.bind(b)? else {
            return None;
        };
        match &bound.symbols[..] {
            [(sym, 1)] => {
                let scaled = n.checked_mul(bound.den)?;
                (bound.num > 0 && scaled % bound.num == 0)
                    .then(|| (sym.clone(), scaled / bound.num))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => {
                if s.num != 1 {
                    write!(f, "{}*", s.num)?;
                }
                for (i, (sym, p)) in s.symbols.iter().enumerate() {
                    if i > 0 {
                        f.write_str("*")?;
                    }
                    f.write_str(sym)?;
                    if *p > 1 {
                        write!(f, "^{p}")?;
                    }
                }
                if s.den != 1 {
                    write!(f, "/{}", s.den)?;
                }
                Ok(())
            }
        }
    }
}

/// Known dimensions from sizes.
pub fn known_dims(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&n| Dim::Known(n)).collect()
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

    /// The number of elements, as a dimension expression.
    pub fn elements(&self) -> Dim {
        self.shape.iter().fold(Dim::Known(1), |acc, d| acc.times(d))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn b(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn algebra_normalises_and_prints() {
        let h = Dim::sym("H");
        let w = Dim::sym("W");
        assert_eq!(h.scaled(8).to_string(), "8*H");
        assert_eq!(h.divided(2).unwrap().to_string(), "H/2");
        assert_eq!(h.scaled(4).divided(2).unwrap(), h.scaled(2));
        assert_eq!(h.divided(2).unwrap().scaled(2), h);
        assert_eq!(w.times(&h).to_string(), "H*W");
        assert_eq!(h.times(&w), w.times(&h));
        assert_eq!(h.times(&h).to_string(), "H^2");
        assert_eq!(Dim::Known(6).divided(4), None);
        assert_eq!(Dim::Known(8).divided(4), Some(Dim::Known(2)));
        assert_eq!(h.scaled(0), Dim::Known(0));
    }

    #[test]
    fn binding_checks_whole_quotients() {
        let half = Dim::sym("H").divided(2).unwrap();
        assert_eq!(half.resolve(&|_| Some(10)), Some(5));
        assert_eq!(half.resolve(&|_| Some(7)), None);
        assert_eq!(half.bind(&b(&[("H", 7)])), None);
        assert_eq!(half.bind(&b(&[("H", 8)])), Some(Dim::Known(4)));
        let hw = Dim::sym("H").times(&Dim::sym("W"));
        assert_eq!(hw.bind(&b(&[("H", 3)])), Some(Dim::sym("W").scaled(3)));
        assert_eq!(
            hw.resolve(&|s| Some(if s == "H" { usize::MAX } else { 2 })),
            None
        );
    }

    #[test]
    fn solving_binds_one_linear_symbol() {
        let d = Dim::sym("H").scaled(8);
        assert_eq!(d.solve(64, &b(&[])), Some(("H".into(), 8)));
        assert_eq!(d.solve(60, &b(&[])), None);
        let hw = Dim::sym("H").times(&Dim::sym("W"));
        assert_eq!(hw.solve(12, &b(&[])), None);
        assert_eq!(hw.solve(12, &b(&[("W", 4)])), Some(("H".into(), 3)));
        assert_eq!(
            Dim::sym("H").divided(2).unwrap().solve(5, &b(&[])),
            Some(("H".into(), 10))
        );
    }
}
