//! The reader of [`super::print`]'s format, so that pass tests can be written as text and
//! `print(parse(t)) == t` for every graph whose constants print in full.
//!
//! A constant the printer summarises (`const(dense, 108 elements)`) has lost its data and is
//! refused; input text fills large constants deterministically instead, taking the shape and
//! dtype from the declared type:
//!
//! ```text
//!   %w: fp32[4,3,3,3] = const(random seed=7 scale=0.5)   uniform in [-0.5, 0.5), seeded
//!   %i: fp32[2,6] = const(iota)                          0, 1, 2, ... in row-major order
//! ```
//!
//! Every op line's declared type is checked against the type its op infers, so a hand-written
//! graph cannot disagree with the IR's own typing.

use super::ops::attr::{Attr, Visit};
use super::ops::{ConstData, Op};
use super::types::{Dim, TensorType};
use super::{Graph, Node, ValueId};
use crate::tensor::{DType, Tensor};
use half::f16;
use std::collections::HashMap;

/// What is wrong with the text, and on which line (1-based).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Reads a graph in the printer's format.
pub fn parse(text: &str) -> Result<Graph, ParseError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    let (first, header) = lines.next().ok_or(ParseError {
        line: 1,
        message: "empty text; expected `graph NAME {`".into(),
    })?;
    let name = header
        .strip_prefix("graph ")
        .and_then(|r| r.strip_suffix('{'))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err(first, format!("expected `graph NAME {{`, got {header:?}")))?;
    let mut p = Parser {
        g: Graph::new(name),
        ids: HashMap::new(),
    };
    let mut returned = false;
    let mut closed = false;
    for (line, l) in lines {
        let at = |message: String| err(line, message);
        if closed {
            return Err(at(format!("text after the closing brace: {l:?}")));
        }
        if l == "}" {
            if !returned {
                return Err(at("the graph has no `return` line".into()));
            }
            closed = true;
        } else if returned {
            return Err(at(format!("expected `}}` after `return`, got {l:?}")));
        } else if let Some(outs) = l.strip_prefix("return") {
            p.outputs(outs.trim()).map_err(at)?;
            returned = true;
        } else {
            p.node(l).map_err(at)?;
        }
    }
    if !closed {
        return Err(err(
            text.lines().count().max(1),
            "missing the closing `}`".into(),
        ));
    }
    Ok(p.g)
}

fn err(line: usize, message: String) -> ParseError {
    ParseError { line, message }
}

struct Parser {
    g: Graph,
    ids: HashMap<String, ValueId>,
}

impl Parser {
    fn value(&self, name: &str) -> Result<ValueId, String> {
        let bare = name
            .strip_prefix('%')
            .ok_or_else(|| format!("expected a %value, got {name:?}"))?;
        self.ids
            .get(bare)
            .copied()
            .ok_or_else(|| format!("%{bare} is not defined before this line"))
    }

    fn outputs(&mut self, text: &str) -> Result<(), String> {
        if text.is_empty() {
            return Ok(());
        }
        for item in text.split(", ") {
            let (name, v) = item
                .split_once('=')
                .ok_or_else(|| format!("expected NAME=%value in return, got {item:?}"))?;
            let v = self.value(v.trim())?;
            self.g.set_output(name.trim(), v);
        }
        Ok(())
    }

    /// `%name: type = body`
    fn node(&mut self, l: &str) -> Result<(), String> {
        let rest = l
            .strip_prefix('%')
            .ok_or_else(|| format!("expected `%name: type = op(...)`, got {l:?}"))?;
        let (name, rest) = rest
            .split_once(": ")
            .ok_or_else(|| format!("expected `: type` after the name in {l:?}"))?;
        let (ty, body) = rest
            .split_once(" = ")
            .ok_or_else(|| format!("expected ` = ` after the type in {l:?}"))?;
        if self.ids.contains_key(name) {
            return Err(format!("%{name} is defined twice"));
        }
        let ty = parse_type(ty)?;
        let open = body
            .find('(')
            .ok_or_else(|| format!("expected op(...) in {body:?}"))?;
        let close = matching_paren(body, open)?;
        let (op_name, inner, attrs) = (&body[..open], &body[open + 1..close], &body[close + 1..]);
        let id = match op_name {
            "input" => {
                no_attrs(attrs)?;
                let feature = parse_string(inner)?;
                self.g.push(Node {
                    op: Op::Input { name: feature },
                    inputs: vec![],
                    ty,
                    name: name.to_string(),
                })
            }
            "const" => {
                no_attrs(attrs)?;
                let data = parse_const(inner, &ty)?;
                self.g.push(Node {
                    op: Op::Const(ConstData::Dense(data)),
                    inputs: vec![],
                    ty,
                    name: name.to_string(),
                })
            }
            _ => {
                let args: Vec<ValueId> = if inner.trim().is_empty() {
                    vec![]
                } else {
                    inner
                        .split(',')
                        .map(|a| self.value(a.trim()))
                        .collect::<Result<_, _>>()?
                };
                let op = parse_op(op_name, &Attrs::parse(attrs)?)?;
                let id = self.g.add(op, &args, name).map_err(|e| e.to_string())?;
                let inferred = self.g.ty(id);
                if *inferred != ty {
                    return Err(format!(
                        "%{name} is declared {ty} but {op_name} infers {inferred}"
                    ));
                }
                id
            }
        };
        self.ids.insert(name.to_string(), id);
        Ok(())
    }
}

fn matching_paren(s: &str, open: usize) -> Result<usize, String> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip_while(|(i, _)| *i < open) {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_str => escaped = true,
            '"' => in_str = !in_str,
            '(' if !in_str => depth += 1,
            ')' if !in_str => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => {}
        }
    }
    Err(format!("unbalanced parentheses in {s:?}"))
}

fn no_attrs(attrs: &str) -> Result<(), String> {
    if attrs.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("unexpected text after the parentheses: {attrs:?}"))
    }
}

/// `fp32[1,4,H,W]`
pub fn parse_type(s: &str) -> Result<TensorType, String> {
    let open = s
        .find('[')
        .filter(|_| s.ends_with(']'))
        .ok_or_else(|| format!("expected a type like fp32[1,4,H,W], got {s:?}"))?;
    let dtype = parse_dtype(&s[..open])?;
    let inner = &s[open + 1..s.len() - 1];
    let shape = if inner.is_empty() {
        vec![]
    } else {
        inner.split(',').map(parse_dim).collect::<Result<_, _>>()?
    };
    Ok(TensorType::new(dtype, shape))
}

pub(crate) fn parse_dtype(s: &str) -> Result<DType, String> {
    [DType::F32, DType::F16, DType::I32, DType::Bool]
        .into_iter()
        .find(|d| d.mil_name() == s)
        .ok_or_else(|| format!("unknown dtype {s:?} (fp32, fp16, int32, bool)"))
}

/// A dimension as [`Dim`]'s `Display` writes it: `7`, `H`, `8*H`, `H/2`, `3*H*W^2/4`.
pub fn parse_dim(s: &str) -> Result<Dim, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a dimension (like 8, H, 8*H, H/2 or H*W)");
    let (num, den) = match s.split_once('/') {
        Some((n, d)) => (n, d.parse::<usize>().map_err(|_| bad())?),
        None => (s, 1),
    };
    let mut dim = Dim::Known(1);
    for factor in num.split('*') {
        let (base, power) = match factor.split_once('^') {
            Some((b, p)) => (b, p.parse::<u32>().map_err(|_| bad())?),
            None => (factor, 1),
        };
        let d = if let Ok(n) = base.parse::<usize>() {
            Dim::Known(n)
        } else if !base.is_empty()
            && base.chars().all(|c| c.is_alphanumeric() || c == '_')
            && !base.starts_with(|c: char| c.is_ascii_digit())
        {
            Dim::sym(base)
        } else {
            return Err(bad());
        };
        for _ in 0..power {
            dim = dim.times(&d);
        }
    }
    if den == 0 {
        return Err(bad());
    }
    dim.divided(den)
        .ok_or_else(|| format!("{s:?}: {den} does not divide the size"))
}

/// A Rust-style string literal, as `{:?}` writes it.
pub(crate) fn parse_string(s: &str) -> Result<String, String> {
    let inner = s
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .ok_or_else(|| format!("expected a quoted name, got {s:?}"))?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some(c @ ('\\' | '"' | '\'')) => out.push(c),
            Some('u') => {
                let rest: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let code = rest
                    .strip_prefix('{')
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad \\u escape in {s:?}"))?;
                out.push(code);
            }
            _ => return Err(format!("bad escape in {s:?}")),
        }
    }
    Ok(out)
}

/// The generator of `const(random seed=S)`: a 64-bit LCG, uniform in [-scale, scale).
pub fn random_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn parse_const(inner: &str, ty: &TensorType) -> Result<Tensor, String> {
    let shape = ty
        .known_shape()
        .ok_or_else(|| format!("a constant's type must be static, got {ty}"))?;
    let n: usize = shape.iter().product();
    let inner = inner.trim();
    let floats = |v: Vec<f32>| -> Result<Tensor, String> {
        match ty.dtype {
            DType::F32 | DType::F16 => Ok(Tensor::f32(shape.clone(), v).cast(ty.dtype)),
            d => Err(format!("{d} constants must list their values")),
        }
    };
    if inner == "iota" {
        return match ty.dtype {
            DType::I32 => Ok(Tensor::i32(shape.clone(), (0..n as i32).collect())),
            _ => floats((0..n).map(|i| i as f32).collect()),
        };
    }
    if let Some(opts) = inner.strip_prefix("random") {
        let attrs = Attrs::parse(opts)?;
        let seed = attrs.get("seed")?;
        let scale = attrs.opt("scale")?.unwrap_or(1.0);
        attrs.done("random constant")?;
        return floats(random_values(n, seed, scale));
    }
    if inner.starts_with("dense,") {
        return Err(format!(
            "`const({inner})` has no values; write const(random seed=S) or const(iota)"
        ));
    }
    let items: Vec<&str> = match inner.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(list) if list.trim().is_empty() => vec![],
        Some(list) => list.split(',').map(str::trim).collect(),
        None if shape.is_empty() => vec![inner],
        None => return Err(format!("expected [values] for {ty}, got {inner:?}")),
    };
    if items.len() != n {
        return Err(format!("{ty} needs {n} values, got {}", items.len()));
    }
    let bad = |s: &str| format!("{s:?} is not a {} value", ty.dtype);
    match ty.dtype {
        DType::F32 | DType::F16 => {
            let v = items
                .iter()
                .map(|s| s.parse::<f32>().map_err(|_| bad(s)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(match ty.dtype {
                DType::F16 => Tensor::f16(shape, v.into_iter().map(f16::from_f32).collect()),
                _ => Tensor::f32(shape, v),
            })
        }
        DType::I32 => Ok(Tensor::i32(
            shape,
            items
                .iter()
                .map(|s| s.parse::<i32>().map_err(|_| bad(s)))
                .collect::<Result<_, _>>()?,
        )),
        DType::Bool => {
            let v = items
                .iter()
                .map(|s| s.parse::<bool>().map_err(|_| bad(s)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Tensor::f32(shape, v.iter().map(|&b| b as u8 as f32).collect()).cast(DType::Bool))
        }
    }
}

/// `key=value` pairs after an op's parentheses; a value may be a bracketed list with spaces.
struct Attrs {
    pairs: Vec<(String, String)>,
    used: std::cell::RefCell<Vec<String>>,
}

impl Attrs {
    fn parse(s: &str) -> Result<Attrs, String> {
        let mut pairs = Vec::new();
        let mut rest = s.trim_start();
        while !rest.is_empty() {
            let (key, after) = rest
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {rest:?}"))?;
            let end = if after.starts_with('[') {
                after
                    .find(']')
                    .map(|i| i + 1)
                    .ok_or_else(|| format!("unclosed [ in {after:?}"))?
            } else {
                after.find(' ').unwrap_or(after.len())
            };
            let key = key.trim();
            if pairs.iter().any(|(k, _)| k == key) {
                return Err(format!("attribute {key} is given twice"));
            }
            pairs.push((key.to_string(), after[..end].to_string()));
            rest = after[end..].trim_start();
        }
        Ok(Attrs {
            pairs,
            used: Default::default(),
        })
    }

    fn raw(&self, key: &str) -> Option<&str> {
        let v = self.pairs.iter().find(|(k, _)| k == key)?;
        self.used.borrow_mut().push(key.to_string());
        Some(&v.1)
    }

    fn opt<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, String> {
        self.raw(key)
            .map(|v| v.parse().map_err(|_| format!("{key}={v} is not valid")))
            .transpose()
    }

    fn get<T: std::str::FromStr>(&self, key: &str) -> Result<T, String> {
        self.opt(key)?
            .ok_or_else(|| format!("missing attribute {key}"))
    }

    /// Fails on attributes nothing asked for, so a misspelt one is not silently dropped.
    fn done(&self, what: &str) -> Result<(), String> {
        let used = self.used.borrow();
        match self.pairs.iter().find(|(k, _)| !used.contains(k)) {
            Some((k, _)) => Err(format!("{what} has no attribute {k}")),
            None => Ok(()),
        }
    }
}

/// The op `name` with the attributes its file declares, read from `a`.
fn parse_op(name: &str, a: &Attrs) -> Result<Op, String> {
    let mut op = Op::from_name(name).ok_or_else(|| format!("unknown op {name:?}"))?;
    op.visit_attrs(&mut Reader(a))?;
    a.done(name)?;
    Ok(op)
}

/// The parser's visitor: reads each declared attribute from the text.
struct Reader<'a>(&'a Attrs);

impl Visit for Reader<'_> {
    fn attr<T: Attr>(&mut self, key: &'static str, value: &mut T) -> Result<(), String> {
        let text = self
            .0
            .raw(key)
            .ok_or_else(|| format!("missing attribute {key}"))?;
        *value = T::read(key, text)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::print::print;

    const TEXT: &str = "graph t {
  %x: fp32[1,8,H,W] = input(\"x\")
  %k: fp16[2] = const([0.33325195, -2.0])
  %n: int32[3] = const([1, -2, 3])
  %s: fp32[] = const(3.0)
  %d: fp32[1,8,H,W] = div(%x, %s)
  %r: fp32[1,2,4,H*W] = reshape(%d) shape=[1, 2, 4, H*W]
  %h: fp32[1,8,H/2,W/2] = conv2d(%x, %w) strides=[2, 2] pads=[1, 1, 1, 1] dilations=[1, 1] groups=8
  return y=%r
}
";

    #[test]
    fn round_trips_and_names_the_bad_line() {
        // %w is used before it is defined: the error names line 8.
        let e = parse(TEXT).unwrap_err();
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("%w"), "{e}");
        let good = TEXT.replace(
            "  %h: fp32[1,8,H/2,W/2] = conv2d(%x, %w) strides=[2, 2] pads=[1, 1, 1, 1] dilations=[1, 1] groups=8\n",
            "  %w: fp32[8,1,3,3] = const(random seed=3)\n  %h: fp32[1,8,H/2,W/2] = conv2d(%x, %w) strides=[2, 2] pads=[1, 1, 1, 1] dilations=[1, 1] groups=8\n",
        );
        let g = parse(&good).unwrap();
        crate::ir::verify::verify(&g).unwrap();
        // The random constant prints as a summary; everything else as written.
        let printed = print(&g);
        assert_eq!(
            printed,
            good.replace("const(random seed=3)", "const(dense, 72 elements)")
        );
        let without_w = TEXT.replace("%h: fp32[1,8,H/2,W/2] = conv2d(%x, %w) strides=[2, 2] pads=[1, 1, 1, 1] dilations=[1, 1] groups=8\n  ", "");
        assert_eq!(print(&parse(&without_w).unwrap()), without_w);
    }

    #[test]
    fn dims_read_what_display_writes() {
        let h = Dim::sym("H");
        let w = Dim::sym("W");
        for d in [
            Dim::Known(7),
            h.clone(),
            h.scaled(8),
            h.divided(2).unwrap(),
            h.times(&w),
            h.times(&h).times(&w).scaled(3).divided(4).unwrap(),
        ] {
            assert_eq!(parse_dim(&d.to_string()).unwrap(), d, "{d}");
        }
        assert!(parse_dim("2H").is_err());
        assert!(parse_dim("7/2").is_err());
    }

    #[test]
    fn refuses_wrong_types_and_summaries() {
        let bad_type =
            "graph t {\n  %x: fp32[2] = input(\"x\")\n  %y: fp32[3] = relu(%x)\n  return y=%y\n}\n";
        let e = parse(bad_type).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("infers fp32[2]"), "{e}");
        let summary = "graph t {\n  %c: fp32[9] = const(dense, 9 elements)\n  return y=%c\n}\n";
        assert_eq!(parse(summary).unwrap_err().line, 2);
        let typo = "graph t {\n  %x: fp32[2] = input(\"x\")\n  %y: fp32[2] = softmax(%x) axis=0 axes=1\n  return y=%y\n}\n";
        let e = parse(typo).unwrap_err();
        assert!(e.message.contains("axes"), "{e}");
        let unclosed = "graph t {\n  %x: fp32[2] = input(\"x\")\n  return y=%x\n";
        assert!(parse(unclosed).is_err());
    }
}
