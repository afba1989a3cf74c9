//! `model.mil` in the dialect Apple's `coremlc` writes (not mlc's own printout in
//! [`crate::mil::print`], which follows coremltools and is meant for people and snapshots).
//!
//! ```text
//! program(1.3)
//! [buildInfo = dict<string, string>({{"coremlc-component-MIL", "3600.16.1"}, {"coremlc-version", "3600.25.1"}})]
//! {
//!     func main<ios17>(tensor<fp32, [4]> input) {
//!             tensor<fp32, [4]> output = add(x = input, y = constant);
//!         } -> (output);
//! }
//! ```
//!
//! The rules are those of `../shared/MLMODELC.md` §2, checked byte for byte against Apple's
//! outputs in `tests/data/mlmodelc/`: operations in proto order under their proto names,
//! function parameters sorted by name, operation inputs and attributes sorted by key, C99 hex
//! floats, blob references with the proto's offsets, and no final newline. The two dialects
//! differ only in how rank-0 types print (`tensor<int32, []>` in 1.0, `int32` in 1.3).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::proto::mil_spec as pb;
use crate::proto::specification as spec;

/// Which of coremlc's two MIL text dialects to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `program(1.0)`: what coremlc wrote for every spec ≤ 8 model seen so far.
    V1_0,
    /// `program(1.3)`: seen only for spec 9 models.
    V1_3,
}

impl Dialect {
    /// The dialect coremlc picks for a specification version (MLMODELC.md §2.2: consistent with
    /// every public sample, though not yet separated from the coremlc version).
    pub fn for_spec(spec_version: i32) -> Dialect {
        if spec_version >= 9 {
            Dialect::V1_3
        } else {
            Dialect::V1_0
        }
    }

    fn header(self) -> &'static str {
        match self {
            Dialect::V1_0 => "program(1.0)",
            Dialect::V1_3 => "program(1.3)",
        }
    }
}

/// The compiler's own `buildInfo` entries, merged with the program's. Apple writes
/// `coremlc-component-MIL` and `coremlc-version`; mlc names itself instead, so a bundle never
/// claims to come from a coremlc that did not compile it.
pub fn mlc_build_info() -> Vec<(String, String)> {
    vec![(
        "mlc-version".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    )]
}

/// Guards against hostile nesting (a tuple of tuples of …) blowing the stack.
const MAX_DEPTH: usize = 32;

/// The whole `model.mil` for `model`, whose program must be an ML Program. `compiler` are the
/// `buildInfo` entries naming the compiler (see [`mlc_build_info`]). Errors are one line.
pub fn write_model(model: &spec::Model, compiler: &[(String, String)]) -> Result<String, String> {
    let program = match &model.r#type {
        Some(spec::model::Type::MlProgram(p)) => p,
        _ => return Err("not an ML Program model (NeuralNetwork and other model kinds have no model.mil; only ML Programs can be compiled)".into()),
    };
    let dialect = Dialect::for_spec(model.specification_version);
    let w = Writer { dialect };
    let mut s = String::new();
    s.push_str(dialect.header());
    s.push('\n');
    s.push_str(&w.program_attributes(program, compiler)?);
    s.push_str("\n{\n");
    if program.functions.is_empty() {
        return Err("the program has no functions".into());
    }
    for (name, f) in &program.functions {
        let flex = flexible_shapes(model.description.as_ref(), name, program.functions.len())?;
        w.function(&mut s, name, f, flex.as_ref())
            .map_err(|e| format!("function {name:?}: {e}"))?;
    }
    s.push('}');
    Ok(s)
}

struct Writer {
    dialect: Dialect,
}

/// The inputs of one function that have a range of shapes: name → (default shape, ranges).
type RangeShapes = BTreeMap<String, (Vec<i64>, Vec<(u64, i64)>)>;

/// The function's `FlexibleShapeInformation`, which coremlc synthesizes from the model
/// description rather than reading from the program. Enumerated shapes are refused: their keys
/// are an 8-hex-digit hash nobody has identified (MLMODELC.md §2.3).
fn flexible_shapes(
    desc: Option<&spec::ModelDescription>,
    function: &str,
    function_count: usize,
) -> Result<Option<RangeShapes>, String> {
    let Some(desc) = desc else { return Ok(None) };
    let inputs = match desc.functions.iter().find(|f| f.name == function) {
        Some(f) => &f.input,
        None if function_count == 1 || desc.functions.is_empty() => &desc.input,
        None => return Ok(None),
    };
    let mut out = RangeShapes::new();
    for input in inputs {
        let a = match input.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
            Some(spec::feature_type::Type::MultiArrayType(a)) => a,
            Some(spec::feature_type::Type::ImageType(i)) => match i.size_flexibility {
                None => continue,
                Some(spec::image_feature_type::SizeFlexibility::EnumeratedSizes(_)) => {
                    return Err(format!(
                        "input {:?} has enumerated shapes (image sizes), {}",
                        input.name,
                        super::ENUMERATED_SHAPES
                    ))
                }
                // No public Apple output shows how coremlc turns an image's size range into
                // shapes; a guess the runtime would trust is worse than a refusal.
                Some(spec::image_feature_type::SizeFlexibility::ImageSizeRange(_)) => {
                    return Err(format!(
                        "input {:?} has a range of image sizes, which mlc cannot compile yet; build with fixed sizes or --multifunction, or compile with --compiler xcrun",
                        input.name
                    ))
                }
            },
            _ => continue,
        };
        match &a.shape_flexibility {
            None => {}
            Some(spec::array_feature_type::ShapeFlexibility::EnumeratedShapes(_)) => {
                return Err(format!(
                    "input {:?} has enumerated shapes, {}",
                    input.name,
                    super::ENUMERATED_SHAPES
                ))
            }
            Some(spec::array_feature_type::ShapeFlexibility::ShapeRange(r)) => {
                let ranges = r
                    .size_ranges
                    .iter()
                    .map(|r| (r.lower_bound, r.upper_bound))
                    .collect();
                out.insert(
                    input.name.clone(),
                    (super::schema::default_shape(a), ranges),
                );
            }
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

fn opset_tag(opset: &str) -> Result<&'static str, String> {
    Ok(match opset {
        "CoreML5" => "ios15",
        "CoreML6" => "ios16",
        "CoreML7" => "ios17",
        "CoreML8" => "ios18",
        other => return Err(format!("unknown opset {:?}", escape(other))),
    })
}

fn dtype_name(dt: i32) -> Result<&'static str, String> {
    use pb::DataType as D;
    Ok(match D::try_from(dt) {
        Ok(D::Bool) => "bool",
        Ok(D::String) => "string",
        Ok(D::Float16) => "fp16",
        Ok(D::Float32) => "fp32",
        Ok(D::Float64) => "fp64",
        Ok(D::Bfloat16) => "bf16",
        Ok(D::Int8) => "int8",
        Ok(D::Int16) => "int16",
        Ok(D::Int32) => "int32",
        Ok(D::Int64) => "int64",
        Ok(D::Int4) => "int4",
        Ok(D::Uint8) => "uint8",
        Ok(D::Uint16) => "uint16",
        Ok(D::Uint32) => "uint32",
        Ok(D::Uint64) => "uint64",
        Ok(D::Uint4) => "uint4",
        Ok(D::Uint2) => "uint2",
        Ok(D::Uint1) => "uint1",
        Ok(D::Uint6) => "uint6",
        Ok(D::Uint3) => "uint3",
        _ => return Err(format!("data type {dt} has no known MIL text name")),
    })
}

/// A name as it may appear in an error message: control characters escaped, so errors stay
/// one line.
fn escape(s: &str) -> String {
    s.escape_debug().to_string()
}

/// A double-quoted MIL string literal.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// C99 `%a` of a value, trailing zeros of the fraction dropped, subnormals normalized: what
/// coremlc prints for every float width (fp16 and fp32 widen to f64 exactly).
pub fn hex_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v < 0.0 { "-inf" } else { "inf" }.into();
    }
    let sign = if v.is_sign_negative() { "-" } else { "" };
    if v == 0.0 {
        return format!("{sign}0x0p+0");
    }
    let bits = v.abs().to_bits();
    let mut exp = ((bits >> 52) & 0x7ff) as i64;
    let mut frac = bits & ((1u64 << 52) - 1);
    if exp == 0 {
        // Subnormal: shift the leading one into the implicit position.
        let shift = frac.leading_zeros() as i64 - 11;
        frac = (frac << shift) & ((1u64 << 52) - 1);
        exp = 1 - shift;
    }
    let e = exp - 1023;
    let mut digits = format!("{frac:013x}");
    while digits.ends_with('0') {
        digits.pop();
    }
    let esign = if e < 0 { '-' } else { '+' };
    if digits.is_empty() {
        format!("{sign}0x1p{esign}{}", e.abs())
    } else {
        format!("{sign}0x1.{digits}p{esign}{}", e.abs())
    }
}

/// Flat elements of an immediate tensor, printed.
fn elements(dtype: i32, v: &pb::TensorValue, count: usize) -> Result<Vec<String>, String> {
    use pb::tensor_value::Value as V;
    use pb::DataType as D;
    let d = D::try_from(dtype).map_err(|_| format!("unknown data type {dtype}"))?;
    let out: Vec<String> = match (&v.value, d) {
        (Some(V::Floats(f)), _) => f.values.iter().map(|&x| hex_float(x.into())).collect(),
        (Some(V::Doubles(f)), _) => f.values.iter().map(|&x| hex_float(x)).collect(),
        (Some(V::Ints(i)), _) => i.values.iter().map(|x| x.to_string()).collect(),
        (Some(V::LongInts(i)), _) => i.values.iter().map(|x| x.to_string()).collect(),
        (Some(V::Bools(b)), _) => b.values.iter().map(|x| x.to_string()).collect(),
        (Some(V::Strings(s)), _) => s.values.iter().map(|x| quoted(x)).collect(),
        (Some(V::Bytes(b)), d) => bytes_elements(d, &b.values, count)?,
        (None, _) => return Err("a tensor value has no payload".into()),
    };
    if out.len() != count {
        return Err(format!(
            "a tensor value holds {} elements where its type has {count}",
            out.len()
        ));
    }
    Ok(out)
}

/// Elements of a tensor stored as raw little-endian bytes (fp16, int8, sub-byte types, …).
fn bytes_elements(d: pb::DataType, b: &[u8], count: usize) -> Result<Vec<String>, String> {
    use pb::DataType as D;
    let chunks = |n: usize| -> Result<std::slice::ChunksExact<'_, u8>, String> {
        if b.len() != count.checked_mul(n).ok_or("tensor too large")? {
            return Err(format!(
                "{} bytes of {d:?} data where the type has {count} elements",
                b.len()
            ));
        }
        Ok(b.chunks_exact(n))
    };
    Ok(match d {
        D::Float16 => chunks(2)?
            .map(|c| hex_float(half::f16::from_le_bytes([c[0], c[1]]).to_f64()))
            .collect(),
        D::Bfloat16 => chunks(2)?
            .map(|c| hex_float(half::bf16::from_le_bytes([c[0], c[1]]).to_f64()))
            .collect(),
        D::Int8 => chunks(1)?.map(|c| (c[0] as i8).to_string()).collect(),
        D::Uint8 => chunks(1)?.map(|c| c[0].to_string()).collect(),
        D::Int16 => chunks(2)?
            .map(|c| i16::from_le_bytes([c[0], c[1]]).to_string())
            .collect(),
        D::Uint16 => chunks(2)?
            .map(|c| u16::from_le_bytes([c[0], c[1]]).to_string())
            .collect(),
        // A palette's `shape` (iOS16/17 `constexpr_lut_to_dense`) is uint32 stored as bytes.
        D::Int32 => chunks(4)?
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]).to_string())
            .collect(),
        D::Uint32 => chunks(4)?
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]).to_string())
            .collect(),
        D::Int4 | D::Uint4 | D::Uint1 | D::Uint2 | D::Uint3 | D::Uint6 => {
            let bits = match d {
                D::Uint1 => 1,
                D::Uint2 => 2,
                D::Uint3 => 3,
                D::Uint6 => 6,
                _ => 4,
            };
            let needed = count
                .checked_mul(bits)
                .ok_or("tensor too large")?
                .div_ceil(8);
            if b.len() != needed {
                return Err(format!(
                    "{} bytes of {d:?} data where the type has {count} elements",
                    b.len()
                ));
            }
            // Packed LSB-first, as in blob storage.
            (0..count)
                .map(|i| {
                    let mut v = 0u32;
                    for k in 0..bits {
                        let bit = i * bits + k;
                        v |= u32::from((b[bit / 8] >> (bit % 8)) & 1) << k;
                    }
                    if d == D::Int4 && v >= 8 {
                        (v as i32 - 16).to_string()
                    } else {
                        v.to_string()
                    }
                })
                .collect()
        }
        other => return Err(format!("{other:?} values cannot be stored as bytes")),
    })
}

impl Writer {
    fn ty(&self, t: &pb::ValueType, depth: usize) -> Result<String, String> {
        if depth > MAX_DEPTH {
            return Err("types nested too deeply".into());
        }
        use pb::value_type::Type as T;
        match &t.r#type {
            Some(T::TensorType(t)) => self.tensor_ty(t),
            Some(T::ListType(l)) => {
                let inner = l.r#type.as_ref().ok_or("a list type has no element type")?;
                Ok(format!(
                    "list<{}, {}>",
                    self.ty(inner, depth + 1)?,
                    dim(l.length.as_ref())
                ))
            }
            Some(T::TupleType(t)) => {
                let parts: Result<Vec<_>, _> =
                    t.types.iter().map(|t| self.ty(t, depth + 1)).collect();
                Ok(format!("tuple<{}>", parts?.join(", ")))
            }
            Some(T::DictionaryType(d)) => {
                let k = d.key_type.as_ref().ok_or("a dict type has no key type")?;
                let v = d
                    .value_type
                    .as_ref()
                    .ok_or("a dict type has no value type")?;
                Ok(format!(
                    "dict<{}, {}>",
                    self.ty(k, depth + 1)?,
                    self.ty(v, depth + 1)?
                ))
            }
            Some(T::StateType(s)) => {
                let inner = s
                    .wrapped_type
                    .as_ref()
                    .ok_or("a state type wraps nothing")?;
                Ok(format!("state<{}>", self.ty(inner, depth + 1)?))
            }
            None => Err("a value has no type".into()),
        }
    }

    fn tensor_ty(&self, t: &pb::TensorType) -> Result<String, String> {
        let dt = dtype_name(t.data_type)?;
        if t.dimensions.is_empty() {
            return Ok(self.scalar_ty(dt));
        }
        let dims: Vec<String> = t.dimensions.iter().map(|d| dim(Some(d))).collect();
        Ok(format!("tensor<{dt}, [{}]>", dims.join(", ")))
    }

    fn scalar_ty(&self, dt: &str) -> String {
        match self.dialect {
            Dialect::V1_0 => format!("tensor<{dt}, []>"),
            Dialect::V1_3 => dt.to_owned(),
        }
    }

    /// A value with its type: `int32(3)`, `tensor<fp32, [2]>([0x1p+0, 0x1p+1])`, a BLOBFILE.
    fn value(&self, v: &pb::Value, depth: usize) -> Result<String, String> {
        let t = v.r#type.as_ref().ok_or("a value has no type")?;
        let ty = self.ty(t, depth)?;
        match &v.value {
            Some(pb::value::Value::BlobFileValue(b)) => Ok(format!(
                "{ty}(BLOBFILE(path = {}({}), offset = {}({})))",
                self.scalar_ty("string"),
                quoted(&b.file_name),
                self.scalar_ty("uint64"),
                b.offset
            )),
            Some(pb::value::Value::ImmediateValue(_)) => {
                Ok(format!("{ty}({})", self.literal(v, depth)?))
            }
            None => Err("a value has neither an immediate nor a blob payload".into()),
        }
    }

    /// A value without its type, as inside a dict, list or tuple literal.
    fn literal(&self, v: &pb::Value, depth: usize) -> Result<String, String> {
        if depth > MAX_DEPTH {
            return Err("values nested too deeply".into());
        }
        use pb::value::immediate_value::Value as I;
        use pb::value_type::Type as T;
        let imm = match &v.value {
            Some(pb::value::Value::ImmediateValue(i)) => i,
            Some(pb::value::Value::BlobFileValue(_)) => {
                return Err("a blob reference inside a dict, list or tuple".into())
            }
            None => return Err("a value has no payload".into()),
        };
        let join = |vals: &[pb::Value]| -> Result<String, String> {
            let parts: Result<Vec<_>, _> =
                vals.iter().map(|v| self.literal(v, depth + 1)).collect();
            Ok(parts?.join(", "))
        };
        match &imm.value {
            Some(I::Tensor(tv)) => {
                let Some(T::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.r#type.as_ref())
                else {
                    return Err("a tensor value whose type is not a tensor".into());
                };
                let mut dims = Vec::with_capacity(t.dimensions.len());
                for d in &t.dimensions {
                    match &d.dimension {
                        Some(pb::dimension::Dimension::Constant(c)) => {
                            dims.push(usize::try_from(c.size).map_err(|_| "dimension too large")?)
                        }
                        _ => return Err("a constant tensor with an unknown dimension".into()),
                    }
                }
                let count = dims
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .ok_or("tensor element count overflows")?;
                let elems = elements(t.data_type, tv, count)?;
                if dims.is_empty() {
                    return Ok(elems.into_iter().next().unwrap_or_default());
                }
                let mut s = String::new();
                nest(&mut s, &dims, &elems);
                Ok(s)
            }
            Some(I::Tuple(t)) => Ok(format!("({})", join(&t.values)?)),
            Some(I::List(l)) => Ok(format!("[{}]", join(&l.values)?)),
            Some(I::Dictionary(d)) => {
                let mut parts = Vec::with_capacity(d.values.len());
                for kv in &d.values {
                    let k = kv.key.as_ref().ok_or("a dict entry has no key")?;
                    let val = kv.value.as_ref().ok_or("a dict entry has no value")?;
                    parts.push(format!(
                        "{{{}, {}}}",
                        self.literal(k, depth + 1)?,
                        self.literal(val, depth + 1)?
                    ));
                }
                Ok(format!("{{{}}}", parts.join(", ")))
            }
            None => Err("an immediate value is empty".into()),
        }
    }

    /// `[buildInfo = dict<…>({…})]`: the program's attributes, its `buildInfo` extended by the
    /// compiler's entries, keys sorted.
    fn program_attributes(
        &self,
        p: &pb::Program,
        compiler: &[(String, String)],
    ) -> Result<String, String> {
        let mut info: BTreeMap<String, String> = BTreeMap::new();
        let mut others = Vec::new();
        for (k, v) in &p.attributes {
            if k == "buildInfo" {
                for (bk, bv) in string_dict(v).ok_or("buildInfo is not a dict of strings")? {
                    info.insert(bk, bv);
                }
            } else {
                others.push((k.clone(), self.value(v, 0)?));
            }
        }
        for (k, v) in compiler {
            info.insert(k.clone(), v.clone());
        }
        let s = self.scalar_ty("string");
        let entries: Vec<String> = info
            .iter()
            .map(|(k, v)| format!("{{{}, {}}}", quoted(k), quoted(v)))
            .collect();
        others.push((
            "buildInfo".to_owned(),
            format!("dict<{s}, {s}>({{{}}})", entries.join(", ")),
        ));
        others.sort();
        let attrs: Vec<String> = others.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        Ok(format!("[{}]", attrs.join(", ")))
    }

    fn function(
        &self,
        s: &mut String,
        name: &str,
        f: &pb::Function,
        flex: Option<&RangeShapes>,
    ) -> Result<(), String> {
        let tag = opset_tag(&f.opset)?;
        let block = f
            .block_specializations
            .get(&f.opset)
            .ok_or_else(|| format!("no block for its opset {:?}", escape(&f.opset)))?;
        let mut params = Vec::with_capacity(f.inputs.len());
        for i in &f.inputs {
            let t = i
                .r#type
                .as_ref()
                .ok_or_else(|| format!("input {:?} has no type", escape(&i.name)))?;
            params.push((i.name.as_str(), self.ty(t, 0)?));
        }
        params.sort();
        let params: Vec<String> = params.iter().map(|(n, t)| format!("{t} {n}")).collect();
        let mut attrs = Vec::new();
        for (k, v) in &f.attributes {
            attrs.push((k.clone(), self.value(v, 0)?));
        }
        if let Some(flex) = flex {
            attrs.push(("FlexibleShapeInformation".into(), self.flex_info(flex)));
        }
        attrs.sort();
        let _ = write!(s, "    func {name}<{tag}>({})", params.join(", "));
        if !attrs.is_empty() {
            let a: Vec<String> = attrs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            let _ = write!(s, " [{}]", a.join(", "));
        }
        s.push_str(" {\n");
        if !block.inputs.is_empty() {
            return Err("its block takes inputs, which only nested blocks should".into());
        }
        for op in &block.operations {
            // Inline constants expand as text (a 4-byte float prints in up to 15 bytes), so a
            // hostile model could ask for gigabytes; the reader refuses the same size.
            if s.len() > super::parse::MAX_MIL_BYTES {
                return Err(format!(
                    "model.mil would exceed {} bytes",
                    super::parse::MAX_MIL_BYTES
                ));
            }
            self.operation(s, op).map_err(|e| {
                format!(
                    "operation {:?} ({}): {e}",
                    escape(&op_name(op)),
                    escape(&op.r#type)
                )
            })?;
        }
        let _ = writeln!(s, "        }} -> ({});", block.outputs.join(", "));
        Ok(())
    }

    fn flex_info(&self, flex: &RangeShapes) -> String {
        let s = self.scalar_ty("string");
        let defaults: Vec<String> = flex
            .iter()
            .map(|(n, (shape, _))| format!("{{{}, [{}]}}", quoted(n), join_display(shape)))
            .collect();
        let ranges: Vec<String> = flex
            .iter()
            .map(|(n, (_, r))| {
                let r: Vec<String> = r.iter().map(|(lo, hi)| format!("[{lo}, {hi}]")).collect();
                format!("{{{}, [{}]}}", quoted(n), r.join(", "))
            })
            .collect();
        format!(
            "tuple<tuple<{s}, dict<{s}, tensor<int32, [?]>>>, tuple<{s}, dict<{s}, list<tensor<int32, [2]>, ?>>>>(((\"DefaultShapes\", {{{}}}), (\"RangeDims\", {{{}}})))",
            defaults.join(", "),
            ranges.join(", ")
        )
    }

    fn operation(&self, s: &mut String, op: &pb::Operation) -> Result<(), String> {
        if !op.blocks.is_empty() {
            return Err("control flow (nested blocks) is not supported yet".into());
        }
        let mut outs = Vec::with_capacity(op.outputs.len());
        for o in &op.outputs {
            let t = o
                .r#type
                .as_ref()
                .ok_or_else(|| format!("output {:?} has no type", escape(&o.name)))?;
            outs.push(format!("{} {}", self.ty(t, 0)?, o.name));
        }
        // Proto maps are BTreeMaps, so inputs and attributes come out sorted by key.
        let mut inputs = Vec::with_capacity(op.inputs.len());
        for (k, arg) in &op.inputs {
            let mut parts = Vec::with_capacity(arg.arguments.len());
            for b in &arg.arguments {
                parts.push(match &b.binding {
                    Some(pb::argument::binding::Binding::Name(n)) => n.clone(),
                    Some(pb::argument::binding::Binding::Value(v)) => self.value(v, 0)?,
                    None => return Err(format!("input {:?} has an empty binding", escape(k))),
                });
            }
            let bound = match parts.len() {
                0 => return Err(format!("input {:?} binds nothing", escape(k))),
                1 => parts.pop().unwrap_or_default(),
                _ => format!("({})", parts.join(", ")),
            };
            inputs.push(format!("{k} = {bound}"));
        }
        let _ = write!(
            s,
            "            {} = {}({})",
            outs.join(", "),
            op.r#type,
            inputs.join(", ")
        );
        if !op.attributes.is_empty() {
            let mut attrs = Vec::with_capacity(op.attributes.len());
            for (k, v) in &op.attributes {
                attrs.push(format!("{k} = {}", self.value(v, 0)?));
            }
            let _ = write!(s, "[{}]", attrs.join(", "));
        }
        s.push_str(";\n");
        Ok(())
    }
}

fn op_name(op: &pb::Operation) -> String {
    op.outputs
        .first()
        .map(|o| o.name.clone())
        .unwrap_or_default()
}

fn dim(d: Option<&pb::Dimension>) -> String {
    match d.and_then(|d| d.dimension.as_ref()) {
        Some(pb::dimension::Dimension::Constant(c)) => c.size.to_string(),
        _ => "?".into(),
    }
}

fn join_display<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Row-major elements as nested brackets, one level per dimension.
fn nest(s: &mut String, dims: &[usize], elems: &[String]) {
    s.push('[');
    if dims.len() == 1 {
        s.push_str(&elems.join(", "));
    } else {
        let inner: usize = dims[1..].iter().product();
        for (i, chunk) in elems.chunks(inner.max(1)).enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            nest(s, &dims[1..], chunk);
        }
    }
    s.push(']');
}

/// The entries of a dict of rank-0 strings (coremltools' `buildInfo`).
fn string_dict(v: &pb::Value) -> Option<Vec<(String, String)>> {
    use pb::value::immediate_value::Value as I;
    let Some(pb::value::Value::ImmediateValue(imm)) = &v.value else {
        return None;
    };
    let Some(I::Dictionary(d)) = &imm.value else {
        return None;
    };
    let one = |v: Option<&pb::Value>| -> Option<String> {
        let Some(pb::value::Value::ImmediateValue(i)) = &v?.value else {
            return None;
        };
        let Some(I::Tensor(t)) = &i.value else {
            return None;
        };
        match &t.value {
            Some(pb::tensor_value::Value::Strings(s)) if s.values.len() == 1 => {
                Some(s.values[0].clone())
            }
            _ => None,
        }
    };
    d.values
        .iter()
        .map(|kv| Some((one(kv.key.as_ref())?, one(kv.value.as_ref())?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_floats_match_c99_trimmed() {
        assert_eq!(hex_float(2.0), "0x1p+1");
        assert_eq!(hex_float(0.0), "0x0p+0");
        assert_eq!(hex_float(-1.0), "-0x1p+0");
        assert_eq!(hex_float(0.5), "0x1p-1");
        assert_eq!(hex_float(f64::INFINITY), "inf");
        assert_eq!(hex_float(f64::NEG_INFINITY), "-inf");
        // fp16 subnormals are normalized (MLMODELC.md §2.1).
        assert_eq!(hex_float(half::f16::from_bits(1).to_f64()), "0x1p-24");
        assert_eq!(
            hex_float(half::f16::from_bits(0x3ff).to_f64()),
            "0x1.ff8p-15"
        );
        // The smallest f64 subnormal, normalized too.
        assert_eq!(hex_float(f64::from_bits(1)), "0x1p-1074");
        assert_eq!(
            hex_float(f32::from_bits(0x3f80_0001).into()),
            "0x1.000002p+0"
        );
    }

    #[test]
    fn opsets_map_without_the_off_by_one() {
        assert_eq!(opset_tag("CoreML6").unwrap(), "ios16");
        assert_eq!(opset_tag("CoreML8").unwrap(), "ios18");
        assert!(opset_tag("CoreML9").is_err());
    }

    #[test]
    fn nesting_follows_the_shape() {
        let e: Vec<String> = (0..6).map(|i| i.to_string()).collect();
        let mut s = String::new();
        nest(&mut s, &[2, 3], &e);
        assert_eq!(s, "[[0, 1, 2], [3, 4, 5]]");
    }

    fn tensor(dt: pb::DataType, dims: &[u64]) -> pb::ValueType {
        pb::ValueType {
            r#type: Some(pb::value_type::Type::TensorType(pb::TensorType {
                data_type: dt as i32,
                rank: dims.len() as i64,
                dimensions: dims
                    .iter()
                    .map(|&size| pb::Dimension {
                        dimension: Some(pb::dimension::Dimension::Constant(
                            pb::dimension::ConstantDimension { size },
                        )),
                    })
                    .collect(),
                attributes: Default::default(),
            })),
        }
    }

    fn named(name: &str, t: pb::ValueType) -> pb::NamedValueType {
        pb::NamedValueType {
            name: name.into(),
            r#type: Some(t),
        }
    }

    fn bind(names: &[&str]) -> pb::Argument {
        pb::Argument {
            arguments: names
                .iter()
                .map(|n| pb::argument::Binding {
                    binding: Some(pb::argument::binding::Binding::Name((*n).into())),
                })
                .collect(),
        }
    }

    /// The spec-7 forms MLMODELC.md §2.1 quotes from Apple's VAE bundles: parameters sorted,
    /// multi-output without brackets, inline fp16 bytes as hex floats, no `[...]` without
    /// attributes; variadic inputs in parentheses.
    #[test]
    fn old_dialect_lines() {
        use pb::DataType as D;
        let f16 = |v: &[f32]| -> Vec<u8> {
            v.iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect()
        };
        let bias = pb::Value {
            doc_string: String::new(),
            r#type: Some(tensor(D::Float16, &[2])),
            value: Some(pb::value::Value::ImmediateValue(
                pb::value::ImmediateValue {
                    value: Some(pb::value::immediate_value::Value::Tensor(pb::TensorValue {
                        value: Some(pb::tensor_value::Value::Bytes(
                            pb::tensor_value::RepeatedBytes {
                                values: f16(&[0.032_073_975, -1.0]),
                            },
                        )),
                    })),
                },
            )),
        };
        let c = pb::Operation {
            r#type: "const".into(),
            outputs: vec![named("b", tensor(D::Float16, &[2]))],
            attributes: [("val".to_string(), bias)].into_iter().collect(),
            ..Default::default()
        };
        let split = pb::Operation {
            r#type: "split".into(),
            inputs: [
                ("x".to_string(), bind(&["z"])),
                ("num_splits".to_string(), bind(&["n"])),
            ]
            .into_iter()
            .collect(),
            outputs: vec![
                named("s_0", tensor(D::Float16, &[1, 2])),
                named("s_1", tensor(D::Float16, &[1, 2])),
            ],
            ..Default::default()
        };
        let concat = pb::Operation {
            r#type: "concat".into(),
            inputs: [("values".to_string(), bind(&["s_1", "s_0"]))]
                .into_iter()
                .collect(),
            outputs: vec![named("out", tensor(D::Float16, &[1, 4]))],
            ..Default::default()
        };
        let block = pb::Block {
            outputs: vec!["out".into()],
            operations: vec![c, split, concat],
            ..Default::default()
        };
        let func = pb::Function {
            inputs: vec![
                named("z", tensor(D::Float16, &[1, 4])),
                named("n", tensor(D::Int32, &[])),
            ],
            opset: "CoreML6".into(),
            block_specializations: [("CoreML6".to_string(), block)].into_iter().collect(),
            attributes: Default::default(),
        };
        let model = spec::Model {
            specification_version: 7,
            r#type: Some(spec::model::Type::MlProgram(pb::Program {
                version: 1,
                functions: [("main".to_string(), func)].into_iter().collect(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let info = [("coremlc-version".to_string(), "1429.0.0".to_string())];
        let text = write_model(&model, &info).unwrap();
        let want = [
            "program(1.0)",
            r#"[buildInfo = dict<tensor<string, []>, tensor<string, []>>({{"coremlc-version", "1429.0.0"}})]"#,
            "{",
            "    func main<ios16>(tensor<int32, []> n, tensor<fp16, [1, 4]> z) {",
            "            tensor<fp16, [2]> b = const()[val = tensor<fp16, [2]>([0x1.06cp-5, -0x1p+0])];",
            "            tensor<fp16, [1, 2]> s_0, tensor<fp16, [1, 2]> s_1 = split(num_splits = n, x = z);",
            "            tensor<fp16, [1, 4]> out = concat(values = (s_1, s_0));",
            "        } -> (out);",
            "}",
        ];
        assert_eq!(text, want.join("\n"));

        // Spec 9: the same program in the new dialect changes only the scalar types.
        let mut m9 = model.clone();
        m9.specification_version = 9;
        let t9 = write_model(&m9, &info).unwrap();
        assert!(t9.starts_with("program(1.3)\n[buildInfo = dict<string, string>("));
        assert!(t9.contains("func main<ios16>(int32 n, tensor<fp16, [1, 4]> z) {"));
    }

    #[test]
    fn hostile_programs_get_one_line_errors() {
        let model = spec::Model {
            specification_version: 7,
            r#type: Some(spec::model::Type::MlProgram(pb::Program {
                functions: [(
                    "main".to_string(),
                    pb::Function {
                        opset: "CoreML6\n".into(),
                        ..Default::default()
                    },
                )]
                .into_iter()
                .collect(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let e = write_model(&model, &[]).unwrap_err();
        assert!(e.contains("unknown opset") && !e.contains('\n'), "{e}");
        assert!(write_model(&spec::Model::default(), &[])
            .unwrap_err()
            .contains("not an ML Program"));
    }

    #[test]
    fn sub_byte_values_unpack_lsb_first() {
        let v = bytes_elements(pb::DataType::Int4, &[0x1f, 0x08], 3).unwrap();
        assert_eq!(v, ["-1", "1", "-8"]);
        assert!(bytes_elements(pb::DataType::Int4, &[0x1f], 3).is_err());
    }
}
