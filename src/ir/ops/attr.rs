//! Op attributes in the text form: `key=value` pairs after an op's parentheses.
//!
//! Each op file declares its attributes once, as a function that visits them in printed order
//! (`v.attr("axis", axis)`). The printer runs it with [`Show`], the parser with its reader, so the
//! two cannot disagree on a name, an order or a format.

use crate::ir::parse::{parse_dim, parse_dtype};
use crate::ir::types::Dim;
use crate::tensor::DType;

/// A value that can be an attribute.
pub trait Attr: Sized {
    /// As printed after `key=`.
    fn show(&self) -> String;
    /// Reads what [`Attr::show`] writes; the error names `key`.
    fn read(key: &str, s: &str) -> Result<Self, String>;
    /// A placeholder the parser overwrites.
    fn blank() -> Self;
}

/// What runs an op's attribute declaration.
pub trait Visit {
    fn attr<T: Attr>(&mut self, key: &'static str, value: &mut T) -> Result<(), String>;
}

/// The printer's visitor: collects `key=value` in order.
#[derive(Default)]
pub struct Show(pub Vec<String>);

impl Visit for Show {
    fn attr<T: Attr>(&mut self, key: &'static str, value: &mut T) -> Result<(), String> {
        self.0.push(format!("{key}={}", value.show()));
        Ok(())
    }
}

fn scalar<T: std::str::FromStr>(key: &str, s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("{key}={s} is not valid"))
}

fn list<T>(key: &str, s: &str, item: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| format!("{key} must be a [list], got {s}"))?;
    if inner.trim().is_empty() {
        return Ok(vec![]);
    }
    inner.split(',').map(|x| item(x.trim())).collect()
}

macro_rules! plain {
    ($($t:ty: $fmt:literal),*) => {$(
        impl Attr for $t {
            fn show(&self) -> String {
                format!($fmt, self)
            }
            fn read(key: &str, s: &str) -> Result<Self, String> {
                scalar(key, s)
            }
            fn blank() -> Self {
                Default::default()
            }
        }
    )*};
}

// Floats print with `{:?}` so that they read back exactly (`1.0`, `1e-5`).
plain!(usize: "{}", i8: "{}", bool: "{}", f32: "{:?}");

impl Attr for Vec<usize> {
    fn show(&self) -> String {
        format!("{self:?}")
    }
    fn read(key: &str, s: &str) -> Result<Self, String> {
        list(key, s, |x| {
            x.parse().map_err(|_| format!("{key}: {x:?} is not valid"))
        })
    }
    fn blank() -> Self {
        vec![]
    }
}

impl<const N: usize> Attr for [usize; N] {
    fn show(&self) -> String {
        format!("{self:?}")
    }
    fn read(key: &str, s: &str) -> Result<Self, String> {
        Vec::<usize>::read(key, s)?
            .try_into()
            .map_err(|_| format!("{key} must have {N} values"))
    }
    fn blank() -> Self {
        [0; N]
    }
}

/// Shapes print their dimensions as [`Dim`] displays them: `[1, 2, H*W]`.
impl Attr for Vec<Dim> {
    fn show(&self) -> String {
        let dims: Vec<String> = self.iter().map(|d| d.to_string()).collect();
        format!("[{}]", dims.join(", "))
    }
    fn read(key: &str, s: &str) -> Result<Self, String> {
        list(key, s, parse_dim)
    }
    fn blank() -> Self {
        vec![]
    }
}

impl Attr for DType {
    fn show(&self) -> String {
        self.to_string()
    }
    fn read(_key: &str, s: &str) -> Result<Self, String> {
        parse_dtype(s)
    }
    fn blank() -> Self {
        DType::F32
    }
}

/// `begin..end`.
impl Attr for std::ops::Range<usize> {
    fn show(&self) -> String {
        format!("{}..{}", self.start, self.end)
    }
    fn read(key: &str, s: &str) -> Result<Self, String> {
        s.split_once("..")
            .and_then(|(b, e)| Some(b.parse().ok()?..e.parse().ok()?))
            .ok_or_else(|| format!("{key}={s} is not BEGIN..END"))
    }
    fn blank() -> Self {
        0..0
    }
}

/// A feature name, quoted as `{:?}` writes it (only `input` has one, inside its parentheses).
impl Attr for String {
    fn show(&self) -> String {
        format!("{self:?}")
    }
    fn read(_key: &str, s: &str) -> Result<Self, String> {
        crate::ir::parse::parse_string(s)
    }
    fn blank() -> Self {
        String::new()
    }
}
