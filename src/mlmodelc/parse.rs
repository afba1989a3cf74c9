//! Reading coremlc's MIL text (`model.mil`, both dialects) back into a `Program`, so compiled
//! bundles can be inspected and compiled output checked against its source.
//!
//! What the text does not carry is filled in canonically: one block per function under its
//! opset, element storage chosen by data type (fp32 as floats, fp16/int8/uint32/… as bytes, int32
//! as ints), no doc strings. `FlexibleShapeInformation` is dropped: coremlc derives it from the
//! model description, which `coremldata.bin` holds. Input is untrusted: sizes, nesting and
//! element counts are bounded, and every error is one line with its line number.

use std::collections::BTreeMap;

use crate::proto::mil_spec as pb;

/// Larger texts are refused (the full SD VAE decoder's is 177 KB).
pub const MAX_MIL_BYTES: usize = 64 << 20;
const MAX_DEPTH: usize = 32;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Punct(char),
    Arrow,
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    at: usize,
}

/// Parses a whole `model.mil`.
pub fn parse_program(text: &str) -> Result<pb::Program, String> {
    if text.len() > MAX_MIL_BYTES {
        return Err(format!(
            "model.mil is {} bytes, more than the {MAX_MIL_BYTES} allowed",
            text.len()
        ));
    }
    let mut p = Parser {
        toks: lex(text)?,
        at: 0,
    };
    p.program()
}

fn lex(text: &str) -> Result<Vec<(Tok, usize)>, String> {
    let word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-' | '@');
    let mut out = Vec::new();
    let mut line = 1;
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '-' if text[i + 1..].starts_with('>') => {
                it.next();
                out.push((Tok::Arrow, line));
            }
            '"' => {
                let mut s = String::new();
                loop {
                    match it.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match it.next() {
                            Some((_, 'n')) => s.push('\n'),
                            Some((_, c)) => s.push(c),
                            None => return Err(format!("line {line}: unterminated string")),
                        },
                        Some((_, '\n')) | None => {
                            return Err(format!("line {line}: unterminated string"))
                        }
                        Some((_, c)) => s.push(c),
                    }
                }
                out.push((Tok::Str(s), line));
            }
            '(' | ')' | '[' | ']' | '{' | '}' | '<' | '>' | ',' | '=' | ';' | '?' => {
                out.push((Tok::Punct(c), line))
            }
            c if word(c) => {
                let mut s = String::from(c);
                while let Some(&(_, d)) = it.peek() {
                    if !word(d) || (d == '-' && text[i + s.len() + 1..].starts_with('>')) {
                        break;
                    }
                    s.push(d);
                    it.next();
                }
                out.push((Tok::Word(s), line));
            }
            c => return Err(format!("line {line}: unexpected character {:?}", c)),
        }
    }
    Ok(out)
}

fn dtype(name: &str) -> Option<pb::DataType> {
    use pb::DataType as D;
    Some(match name {
        "bool" => D::Bool,
        "string" => D::String,
        "fp16" => D::Float16,
        "fp32" => D::Float32,
        "fp64" => D::Float64,
        "bf16" => D::Bfloat16,
        "int8" => D::Int8,
        "int16" => D::Int16,
        "int32" => D::Int32,
        "int64" => D::Int64,
        "int4" => D::Int4,
        "uint8" => D::Uint8,
        "uint16" => D::Uint16,
        "uint32" => D::Uint32,
        "uint64" => D::Uint64,
        "uint4" => D::Uint4,
        "uint2" => D::Uint2,
        "uint1" => D::Uint1,
        "uint6" => D::Uint6,
        "uint3" => D::Uint3,
        _ => return None,
    })
}

fn opset(tag: &str) -> Option<&'static str> {
    Some(match tag {
        "ios15" => "CoreML5",
        "ios16" => "CoreML6",
        "ios17" => "CoreML7",
        "ios18" => "CoreML8",
        _ => return None,
    })
}

/// The value of a C99 hex float (`0x1.8p+1`), `inf`, `nan` or a decimal number.
fn parse_float(s: &str) -> Option<f64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let v = if let Some(hex) = body.strip_prefix("0x") {
        let (mant, exp) = hex.split_once('p')?;
        let exp: i32 = exp.parse().ok()?;
        let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
        if frac.len() > 13 || int.len() != 1 {
            return None;
        }
        let digits = u64::from_str_radix(&format!("{int}{frac}"), 16).ok()?;
        digits as f64 * 2f64.powi(exp.checked_sub(4 * frac.len() as i32)?)
    } else if body == "inf" {
        f64::INFINITY
    } else if body == "nan" {
        f64::NAN
    } else {
        body.parse().ok()?
    };
    Some(if neg { -v } else { v })
}

fn tensor_type(dt: pb::DataType, dims: Vec<pb::Dimension>) -> pb::ValueType {
    pb::ValueType {
        r#type: Some(pb::value_type::Type::TensorType(pb::TensorType {
            data_type: dt as i32,
            rank: dims.len() as i64,
            dimensions: dims,
            attributes: Default::default(),
        })),
    }
}

fn immediate(t: pb::ValueType, v: pb::value::immediate_value::Value) -> pb::Value {
    pb::Value {
        doc_string: String::new(),
        r#type: Some(t),
        value: Some(pb::value::Value::ImmediateValue(
            pb::value::ImmediateValue { value: Some(v) },
        )),
    }
}

impl Parser {
    fn line(&self) -> usize {
        self.toks
            .get(self.at)
            .or(self.toks.last())
            .map_or(0, |t| t.1)
    }

    fn err<T>(&self, what: impl std::fmt::Display) -> Result<T, String> {
        Err(format!("line {}: {what}", self.line()))
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|t| &t.0)
    }

    fn next(&mut self) -> Result<Tok, String> {
        match self.toks.get(self.at) {
            Some((t, _)) => {
                self.at += 1;
                Ok(t.clone())
            }
            None => self.err("unexpected end of text"),
        }
    }

    fn is(&self, c: char) -> bool {
        self.peek() == Some(&Tok::Punct(c))
    }

    fn eat(&mut self, c: char) -> bool {
        let yes = self.is(c);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            self.err(format!("expected {c:?}, found {:?}", self.peek()))
        }
    }

    fn word(&mut self) -> Result<String, String> {
        match self.next()? {
            Tok::Word(w) => Ok(w),
            t => {
                self.at -= 1;
                self.err(format!("expected a name, found {t:?}"))
            }
        }
    }

    fn keyword(&mut self, k: &str) -> Result<(), String> {
        let w = self.word()?;
        if w == k {
            Ok(())
        } else {
            self.err(format!("expected {k:?}, found {w:?}"))
        }
    }

    /// `a, b, c` up to `close`, each parsed by `item`.
    fn list<T>(
        &mut self,
        close: char,
        mut item: impl FnMut(&mut Self) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let mut out = Vec::new();
        if self.eat(close) {
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            if self.eat(close) {
                return Ok(out);
            }
            self.expect(',')?;
        }
    }

    fn program(&mut self) -> Result<pb::Program, String> {
        self.keyword("program")?;
        self.expect('(')?;
        let version = self.word()?;
        if version != "1.0" && version != "1.3" {
            return self.err(format!("unknown program version {version:?}"));
        }
        self.expect(')')?;
        let attributes = self.attributes()?;
        self.expect('{')?;
        let mut functions = BTreeMap::new();
        while !self.eat('}') {
            let (name, f) = self.function()?;
            if functions.insert(name.clone(), f).is_some() {
                return self.err(format!("function {name:?} defined twice"));
            }
        }
        if self.at != self.toks.len() {
            return self.err("text after the program");
        }
        Ok(pb::Program {
            version: 1,
            functions,
            doc_string: String::new(),
            attributes,
        })
    }

    fn attributes(&mut self) -> Result<BTreeMap<String, pb::Value>, String> {
        let mut out = BTreeMap::new();
        if !self.eat('[') {
            return Ok(out);
        }
        for (k, v) in self.list(']', |p| {
            let k = p.word()?;
            p.expect('=')?;
            Ok((k, p.value(0)?))
        })? {
            if out.insert(k.clone(), v).is_some() {
                return self.err(format!("attribute {k:?} given twice"));
            }
        }
        Ok(out)
    }

    fn function(&mut self) -> Result<(String, pb::Function), String> {
        self.keyword("func")?;
        let name = self.word()?;
        self.expect('<')?;
        let tag = self.word()?;
        let opset = match opset(&tag) {
            Some(o) => o.to_owned(),
            None => return self.err(format!("unknown opset {tag:?}")),
        };
        self.expect('>')?;
        self.expect('(')?;
        let inputs = self.list(')', |p| {
            let t = p.ty(0)?;
            Ok(pb::NamedValueType {
                name: p.word()?,
                r#type: Some(t),
            })
        })?;
        let mut attributes = self.attributes()?;
        attributes.remove("FlexibleShapeInformation");
        self.expect('{')?;
        let mut operations = Vec::new();
        while !self.eat('}') {
            operations.push(self.operation()?);
        }
        match self.next()? {
            Tok::Arrow => {}
            t => return self.err(format!("expected \"->\", found {t:?}")),
        }
        self.expect('(')?;
        let outputs = self.list(')', |p| p.word())?;
        self.expect(';')?;
        let block = pb::Block {
            inputs: vec![],
            outputs,
            operations,
            attributes: Default::default(),
        };
        Ok((
            name,
            pb::Function {
                inputs,
                opset: opset.clone(),
                block_specializations: [(opset, block)].into_iter().collect(),
                attributes,
            },
        ))
    }

    fn operation(&mut self) -> Result<pb::Operation, String> {
        let mut outputs = Vec::new();
        loop {
            let t = self.ty(0)?;
            outputs.push(pb::NamedValueType {
                name: self.word()?,
                r#type: Some(t),
            });
            if self.eat('=') {
                break;
            }
            self.expect(',')?;
        }
        let r#type = self.word()?;
        self.expect('(')?;
        let mut inputs = BTreeMap::new();
        for (k, arg) in self.list(')', |p| {
            let k = p.word()?;
            p.expect('=')?;
            Ok((k, p.binding()?))
        })? {
            if inputs.insert(k.clone(), arg).is_some() {
                return self.err(format!("input {k:?} given twice"));
            }
        }
        let attributes = self.attributes()?;
        self.expect(';')?;
        Ok(pb::Operation {
            r#type,
            inputs,
            outputs,
            blocks: vec![],
            attributes,
        })
    }

    fn binding(&mut self) -> Result<pb::Argument, String> {
        use pb::argument::{binding::Binding as B, Binding};
        let name = |n: String| Binding {
            binding: Some(B::Name(n)),
        };
        if self.eat('(') {
            let names = self.list(')', |p| p.word())?;
            return Ok(pb::Argument {
                arguments: names.into_iter().map(name).collect(),
            });
        }
        // A value starts with its type, which a `(` or `<` follows; a name does not.
        let is_value = matches!(self.toks.get(self.at + 1), Some((Tok::Punct('(' | '<'), _)));
        let b = if is_value {
            Binding {
                binding: Some(B::Value(self.value(0)?)),
            }
        } else {
            name(self.word()?)
        };
        Ok(pb::Argument { arguments: vec![b] })
    }

    fn ty(&mut self, depth: usize) -> Result<pb::ValueType, String> {
        use pb::value_type::Type as T;
        if depth > MAX_DEPTH {
            return self.err("types nested too deeply");
        }
        let w = self.word()?;
        if let Some(dt) = dtype(&w) {
            return Ok(tensor_type(dt, vec![]));
        }
        self.expect('<')?;
        let t = match w.as_str() {
            "tensor" => {
                let d = self.word()?;
                let dt = match dtype(&d) {
                    Some(dt) => dt,
                    None => return self.err(format!("unknown data type {d:?}")),
                };
                self.expect(',')?;
                self.expect('[')?;
                let dims = self.list(']', |p| p.dim())?;
                tensor_type(dt, dims)
            }
            "list" => {
                let inner = self.ty(depth + 1)?;
                self.expect(',')?;
                let length = self.dim()?;
                pb::ValueType {
                    r#type: Some(T::ListType(Box::new(pb::ListType {
                        r#type: Some(Box::new(inner)),
                        length: Some(length),
                    }))),
                }
            }
            "tuple" => {
                let mut types = vec![self.ty(depth + 1)?];
                while self.eat(',') {
                    types.push(self.ty(depth + 1)?);
                }
                pb::ValueType {
                    r#type: Some(T::TupleType(pb::TupleType { types })),
                }
            }
            "dict" => {
                let k = self.ty(depth + 1)?;
                self.expect(',')?;
                let v = self.ty(depth + 1)?;
                pb::ValueType {
                    r#type: Some(T::DictionaryType(Box::new(pb::DictionaryType {
                        key_type: Some(Box::new(k)),
                        value_type: Some(Box::new(v)),
                    }))),
                }
            }
            "state" => {
                let inner = self.ty(depth + 1)?;
                pb::ValueType {
                    r#type: Some(T::StateType(Box::new(pb::StateType {
                        wrapped_type: Some(Box::new(inner)),
                    }))),
                }
            }
            other => return self.err(format!("unknown type {other:?}")),
        };
        self.expect('>')?;
        Ok(t)
    }

    fn dim(&mut self) -> Result<pb::Dimension, String> {
        use pb::dimension::{ConstantDimension, Dimension as D, UnknownDimension};
        if self.eat('?') {
            return Ok(pb::Dimension {
                dimension: Some(D::Unknown(UnknownDimension { variadic: false })),
            });
        }
        let w = self.word()?;
        match w.parse() {
            Ok(size) => Ok(pb::Dimension {
                dimension: Some(D::Constant(ConstantDimension { size })),
            }),
            Err(_) => self.err(format!("bad dimension {w:?}")),
        }
    }

    fn value(&mut self, depth: usize) -> Result<pb::Value, String> {
        let t = self.ty(depth)?;
        self.expect('(')?;
        let v = if self.peek() == Some(&Tok::Word("BLOBFILE".into())) {
            self.at += 1;
            self.expect('(')?;
            self.keyword("path")?;
            self.expect('=')?;
            let path = self.value(depth + 1)?;
            self.expect(',')?;
            self.keyword("offset")?;
            self.expect('=')?;
            let offset = self.value(depth + 1)?;
            self.expect(')')?;
            let file_name = match scalar_of(&path) {
                Some(pb::tensor_value::Value::Strings(s)) if s.values.len() == 1 => {
                    s.values[0].clone()
                }
                _ => return self.err("BLOBFILE path is not a string"),
            };
            let offset = match scalar_of(&offset) {
                Some(pb::tensor_value::Value::LongInts(i)) if i.values.len() == 1 => {
                    u64::try_from(i.values[0]).or_else(|_| self.err("negative offset"))?
                }
                _ => return self.err("BLOBFILE offset is not an integer"),
            };
            pb::Value {
                doc_string: String::new(),
                r#type: Some(t),
                value: Some(pb::value::Value::BlobFileValue(pb::value::BlobFileValue {
                    file_name,
                    offset,
                })),
            }
        } else {
            self.literal(t, depth)?
        };
        self.expect(')')?;
        Ok(v)
    }

    fn literal(&mut self, t: pb::ValueType, depth: usize) -> Result<pb::Value, String> {
        use pb::value::immediate_value::Value as I;
        use pb::value_type::Type as T;
        if depth > MAX_DEPTH {
            return self.err("values nested too deeply");
        }
        match t.r#type.clone() {
            Some(T::TensorType(tt)) => {
                let dt = pb::DataType::try_from(tt.data_type).unwrap_or(pb::DataType::UnusedType);
                let mut elems = Vec::new();
                if tt.dimensions.is_empty() {
                    elems.push(self.scalar_token()?);
                } else {
                    self.nested(tt.dimensions.len(), &mut elems)?;
                }
                // `?` dimensions occur in FlexibleShapeInformation's shape lists; their
                // length is whatever the brackets hold.
                let mut count = Some(1usize);
                for d in &tt.dimensions {
                    count = match (&d.dimension, count) {
                        (Some(pb::dimension::Dimension::Constant(c)), Some(n)) => Some(
                            usize::try_from(c.size)
                                .ok()
                                .and_then(|s| n.checked_mul(s))
                                .ok_or_else(|| format!("line {}: tensor too large", self.line()))?,
                        ),
                        _ => None,
                    };
                }
                if let Some(count) = count.filter(|&c| c != elems.len()) {
                    return self.err(format!(
                        "{} elements where the type has {count}",
                        elems.len()
                    ));
                }
                let tv = self.tensor_value(dt, &elems)?;
                Ok(immediate(t, I::Tensor(tv)))
            }
            Some(T::TupleType(tu)) => {
                self.expect('(')?;
                let mut values = Vec::new();
                for (i, et) in tu.types.iter().enumerate() {
                    if i > 0 {
                        self.expect(',')?;
                    }
                    values.push(self.literal(et.clone(), depth + 1)?);
                }
                self.expect(')')?;
                Ok(immediate(t, I::Tuple(pb::TupleValue { values })))
            }
            Some(T::ListType(l)) => {
                let et = l.r#type.map(|b| *b).unwrap_or_default();
                self.expect('[')?;
                let values = self.list(']', |p| p.literal(et.clone(), depth + 1))?;
                Ok(immediate(t, I::List(pb::ListValue { values })))
            }
            Some(T::DictionaryType(d)) => {
                let kt = d.key_type.map(|b| *b).unwrap_or_default();
                let vt = d.value_type.map(|b| *b).unwrap_or_default();
                self.expect('{')?;
                let values = self.list('}', |p| {
                    p.expect('{')?;
                    let key = p.literal(kt.clone(), depth + 1)?;
                    p.expect(',')?;
                    let value = p.literal(vt.clone(), depth + 1)?;
                    p.expect('}')?;
                    Ok(pb::dictionary_value::KeyValuePair {
                        key: Some(key),
                        value: Some(value),
                    })
                })?;
                Ok(immediate(t, I::Dictionary(pb::DictionaryValue { values })))
            }
            _ => self.err("a value of this type cannot be written inline"),
        }
    }

    /// Elements of `rank` nested brackets, flattened.
    fn nested(&mut self, rank: usize, out: &mut Vec<Tok>) -> Result<(), String> {
        self.expect('[')?;
        if self.eat(']') {
            return Ok(());
        }
        loop {
            if rank > 1 {
                self.nested(rank - 1, out)?;
            } else {
                out.push(self.scalar_token()?);
            }
            if self.eat(']') {
                return Ok(());
            }
            self.expect(',')?;
        }
    }

    fn scalar_token(&mut self) -> Result<Tok, String> {
        match self.next()? {
            t @ (Tok::Word(_) | Tok::Str(_)) => Ok(t),
            t => self.err(format!("expected a literal, found {t:?}")),
        }
    }

    fn tensor_value(&self, dt: pb::DataType, elems: &[Tok]) -> Result<pb::TensorValue, String> {
        use pb::tensor_value::{self as tv, Value as V};
        use pb::DataType as D;
        let word = |t: &Tok| match t {
            Tok::Word(w) => Ok(w.clone()),
            t => self.err(format!("expected a number, found {t:?}")),
        };
        let float = |t: &Tok| {
            let w = word(t)?;
            parse_float(&w).map_or_else(|| self.err(format!("bad float {w:?}")), Ok)
        };
        let int = |t: &Tok| -> Result<i64, String> {
            let w = word(t)?;
            w.parse()
                .map_or_else(|_| self.err(format!("bad integer {w:?}")), Ok)
        };
        let ints_in = |lo: i64, hi: i64| -> Result<Vec<i64>, String> {
            elems
                .iter()
                .map(|e| {
                    let v = int(e)?;
                    if v < lo || v > hi {
                        return self.err(format!("{v} out of range for {dt:?}"));
                    }
                    Ok(v)
                })
                .collect()
        };
        let bytes = |b: Vec<u8>| V::Bytes(tv::RepeatedBytes { values: b });
        let v = match dt {
            D::Float32 => V::Floats(tv::RepeatedFloats {
                values: elems
                    .iter()
                    .map(|e| float(e).map(|f| f as f32))
                    .collect::<Result<_, _>>()?,
            }),
            D::Float64 => V::Doubles(tv::RepeatedDoubles {
                values: elems.iter().map(float).collect::<Result<_, _>>()?,
            }),
            D::Float16 | D::Bfloat16 => {
                let mut b = Vec::with_capacity(elems.len() * 2);
                for e in elems {
                    let f = float(e)?;
                    b.extend(if dt == D::Float16 {
                        half::f16::from_f64(f).to_le_bytes()
                    } else {
                        half::bf16::from_f64(f).to_le_bytes()
                    });
                }
                bytes(b)
            }
            D::Int32 => V::Ints(tv::RepeatedInts {
                values: ints_in(i32::MIN.into(), i32::MAX.into())?
                    .into_iter()
                    .map(|v| v as i32)
                    .collect(),
            }),
            D::Int64 | D::Uint64 => V::LongInts(tv::RepeatedLongInts {
                values: elems.iter().map(int).collect::<Result<_, _>>()?,
            }),
            // As mlc and coremltools store them (a palette's shape), so a package's program
            // reads back equal.
            D::Uint32 => bytes(
                ints_in(0, u32::MAX.into())?
                    .into_iter()
                    .flat_map(|v| (v as u32).to_le_bytes())
                    .collect(),
            ),
            D::Int8 => bytes(ints_in(-128, 127)?.into_iter().map(|v| v as u8).collect()),
            D::Uint8 => bytes(ints_in(0, 255)?.into_iter().map(|v| v as u8).collect()),
            D::Int16 | D::Uint16 => {
                let (lo, hi) = if dt == D::Int16 {
                    (i16::MIN.into(), i16::MAX.into())
                } else {
                    (0, u16::MAX.into())
                };
                bytes(
                    ints_in(lo, hi)?
                        .into_iter()
                        .flat_map(|v| (v as u16).to_le_bytes())
                        .collect(),
                )
            }
            D::Int4 | D::Uint4 | D::Uint1 | D::Uint2 | D::Uint3 | D::Uint6 => {
                let bits = match dt {
                    D::Uint1 => 1,
                    D::Uint2 => 2,
                    D::Uint3 => 3,
                    D::Uint6 => 6,
                    _ => 4,
                };
                let (lo, hi) = if dt == D::Int4 {
                    (-8, 7)
                } else {
                    (0, (1 << bits) - 1)
                };
                let vals = ints_in(lo, hi)?;
                let mut b = vec![0u8; (vals.len() * bits).div_ceil(8)];
                for (i, v) in vals.iter().enumerate() {
                    let v = (*v as u32) & ((1 << bits) - 1);
                    for k in 0..bits {
                        let bit = i * bits + k;
                        b[bit / 8] |= (((v >> k) & 1) as u8) << (bit % 8);
                    }
                }
                bytes(b)
            }
            D::Bool => V::Bools(tv::RepeatedBools {
                values: elems
                    .iter()
                    .map(|e| match word(e)?.as_str() {
                        "true" => Ok(true),
                        "false" => Ok(false),
                        w => self.err(format!("bad bool {w:?}")),
                    })
                    .collect::<Result<_, _>>()?,
            }),
            D::String => V::Strings(tv::RepeatedStrings {
                values: elems
                    .iter()
                    .map(|e| match e {
                        Tok::Str(s) => Ok(s.clone()),
                        t => self.err(format!("expected a string, found {t:?}")),
                    })
                    .collect::<Result<_, _>>()?,
            }),
            other => return self.err(format!("{other:?} literals are not supported")),
        };
        Ok(pb::TensorValue { value: Some(v) })
    }
}

fn scalar_of(v: &pb::Value) -> Option<&pb::tensor_value::Value> {
    match &v.value {
        Some(pb::value::Value::ImmediateValue(i)) => match &i.value {
            Some(pb::value::immediate_value::Value::Tensor(t)) => t.value.as_ref(),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_floats_parse_back() {
        for v in [2.0, 0.0, -1.0, 0.032_073_974_609_375, 1e-30, f64::INFINITY] {
            let s = super::super::mil_text::hex_float(v);
            assert_eq!(parse_float(&s), Some(v), "{s}");
        }
        assert_eq!(
            parse_float("0x1.ff8p-15"),
            Some(half::f16::from_bits(0x3ff).to_f64())
        );
        assert!(parse_float("0x1.zp+1").is_none());
    }

    /// Every prefix and every single-byte corruption of a real file is an error or a program,
    /// never a panic.
    #[test]
    fn damaged_text_never_panics() {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/mlmodelc/flexible-weighted-legacy/expected-macos.mlmodelc/model.mil"
        ));
        assert!(parse_program(text).is_ok());
        for n in 0..text.len() {
            if text.is_char_boundary(n) {
                let _ = parse_program(&text[..n]);
            }
        }
        for n in 0..text.len() {
            for c in ["-", "?", "(", "\"", "0x1.8p-2147483648", "[", "<"] {
                let mut t = text.to_owned();
                if t.is_char_boundary(n) && t.is_char_boundary(n + 1) {
                    t.replace_range(n..n + 1, c);
                    let _ = parse_program(&t);
                }
            }
        }
        assert_eq!(parse_float("0x1.8p-2147483648"), None);
    }

    #[test]
    fn hostile_text_gives_line_numbered_errors() {
        let e = parse_program("program(1.3)\n{\n    func main<ios99>() {\n").unwrap_err();
        assert_eq!(e, "line 3: unknown opset \"ios99\"");
        let deep = format!(
            "program(1.3)\n[a = {}int32{}(1)]",
            "list<".repeat(100),
            ", 1>".repeat(100)
        );
        assert!(parse_program(&deep).unwrap_err().contains("too deeply"));
        let e = parse_program("program(1.3)\n{\n    func main<ios17>(int32 x) {\n            tensor<int32, [3]> y = const()[val = tensor<int32, [3]>([1, 2])];\n").unwrap_err();
        assert!(
            e.starts_with("line 4: 2 elements where the type has 3"),
            "{e}"
        );
        assert!(parse_program("program(1.3) {")
            .unwrap_err()
            .contains("end of text"));
    }
}
