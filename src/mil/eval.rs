//! A CPU evaluator for MIL programs as they are stored (the protobuf plus `weight.bin`).
//!
//! It is the check of what really ships: tests run emitted packages through it and compare with
//! PyTorch's outputs. It computes in f32; fp16 weights are widened exactly, and fp16 inputs,
//! `cast`s to fp16 and fp16 outputs round as Core ML's interface would, so the fp16 storage of
//! weights and I/O is represented while fp16 arithmetic error inside the model is not.

use super::op_eval::{round_f16, Args};
use crate::kernels::Array;
use crate::package::{BlobDType, BlobReader};
use crate::proto::mil_spec as pb;
use half::f16;
use std::collections::{BTreeMap, HashMap};

/// Errors name ops, types and inputs as the package spells them; control characters in those
/// names (or in a reason quoting one) are escaped, so that an error stays one line.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MilEvalError {
    #[error("function {0:?} not found in the program")]
    NoFunction(String),
    #[error("function {function:?} has no block for its opset {opset:?}")]
    NoBlock { function: String, opset: String },
    #[error("input {name:?}: {}", one_line(reason))]
    Input { name: String, reason: String },
    #[error("op {} ({}): {}", one_line(op), one_line(kind), one_line(reason))]
    Op {
        op: String,
        kind: String,
        reason: String,
    },
}

/// `s` with control characters escaped (`\n`, `\u{8}`), everything else as is.
fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// A value during evaluation: numbers or strings.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    Num(Array),
    Str(Vec<String>),
}

/// How closely to follow the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvalOptions {
    /// Round every fp16-typed intermediate to fp16, as a device computing in fp16 stores it
    /// (values beyond fp16's range become infinite), and record the largest magnitudes.
    pub fp16_activations: bool,
    /// Most elements of any one tensor evaluation may allocate (a const, an input copy or an
    /// op's result); `None` is [`crate::limits::MAX_EVAL_ELEMENTS`]. A smaller limit bounds
    /// the memory, and so the time, of evaluating an untrusted package.
    pub max_elements: Option<usize>,
    /// Record every op's value range ([`ActivationStats::ops`]): what `mlc inspect --ranges`
    /// prints.
    pub ranges: bool,
}

impl EvalOptions {
    fn max_elements(&self) -> usize {
        self.max_elements
            .unwrap_or(crate::limits::MAX_EVAL_ELEMENTS)
    }
}

/// Largest fp16-typed activation seen (with `fp16_activations`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActivationStats {
    /// The largest finite magnitude before rounding, and the op that produced it.
    pub largest: f32,
    pub largest_at: String,
    /// Ops whose fp16 output overflowed (|value| > 65504, or already infinite), in program
    /// order.
    pub overflowed: Vec<String>,
    /// With [`EvalOptions::ranges`]: every non-constant op with a floating-point output, in
    /// program order, and what its values were (before any fp16 rounding of that output).
    pub ops: Vec<OpRange>,
}

impl ActivationStats {
    /// Folds in the statistics of another evaluation of the same function (the next sample).
    pub fn merge(&mut self, other: ActivationStats) {
        if other.largest > self.largest || self.largest_at.is_empty() {
            self.largest = other.largest;
            self.largest_at = other.largest_at;
        }
        for o in other.overflowed {
            if !self.overflowed.contains(&o) {
                self.overflowed.push(o);
            }
        }
        if self.ops.is_empty() {
            self.ops = other.ops;
            return;
        }
        let mut at: HashMap<String, usize> = self
            .ops
            .iter()
            .enumerate()
            .map(|(i, r)| (r.op.clone(), i))
            .collect();
        for r in other.ops {
            match at.get(&r.op) {
                Some(&i) => self.ops[i].merge(&r),
                None => {
                    at.insert(r.op.clone(), self.ops.len());
                    self.ops.push(r);
                }
            }
        }
    }
}

/// Smallest positive normal fp16 value (2^-14): below it fp16 keeps fewer than 11 significant
/// bits.
pub const FP16_MIN_NORMAL: f32 = 6.103_515_6e-5;

/// The values one op produced, over every evaluation merged in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpRange {
    /// The op's output name.
    pub op: String,
    /// The op type (`conv`, `add`, ...).
    pub kind: String,
    /// Whether the output is declared fp16.
    pub fp16: bool,
    /// Largest finite magnitude.
    pub abs_max: f32,
    /// Finite values, and their sum of squares.
    pub count: u64,
    pub sum_sq: f64,
    /// Non-zero finite values, and how many of those lie in fp16's subnormal range.
    pub nonzero: u64,
    pub subnormal: u64,
    /// NaNs and infinities.
    pub nonfinite: u64,
}

impl OpRange {
    fn of(op: &str, kind: &str, fp16: bool, data: &[f32]) -> OpRange {
        let mut r = OpRange {
            op: op.to_string(),
            kind: kind.to_string(),
            fp16,
            ..OpRange::default()
        };
        for &x in data {
            if !x.is_finite() {
                r.nonfinite += 1;
                continue;
            }
            let a = x.abs();
            r.count += 1;
            r.sum_sq += (a as f64) * (a as f64);
            r.abs_max = r.abs_max.max(a);
            if a > 0.0 {
                r.nonzero += 1;
                if a < FP16_MIN_NORMAL {
                    r.subnormal += 1;
                }
            }
        }
        r
    }

    fn merge(&mut self, o: &OpRange) {
        self.abs_max = self.abs_max.max(o.abs_max);
        self.count += o.count;
        self.sum_sq += o.sum_sq;
        self.nonzero += o.nonzero;
        self.subnormal += o.subnormal;
        self.nonfinite += o.nonfinite;
    }

    /// Root mean square of the finite values: the op's typical magnitude.
    pub fn rms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.sum_sq / self.count as f64).sqrt()
        }
    }

    /// Whether fp16 cannot hold the values: some exceed 65,504 or are already infinite.
    pub fn overflows_fp16(&self) -> bool {
        self.abs_max > FP16_MAX || self.nonfinite > 0
    }

    /// Whether fp16 loses precision on this op's values, by either of two measures:
    /// - the largest magnitude is so far above the typical one (RMS) that half the fp16 spacing
    ///   there (the rounding error of a sum or value of that size) exceeds 10% of the RMS; an
    ///   fp16 accumulation at that magnitude then cannot resolve the op's ordinary values;
    /// - more than 1% of the non-zero values are fp16 subnormals (below 2^-14), which keep
    ///   fewer significant bits and flush to zero on hardware without subnormals.
    pub fn loses_fp16_precision(&self) -> bool {
        self.coarse_in_fp16() || self.subnormal_in_fp16()
    }

    /// The first measure of [`OpRange::loses_fp16_precision`]: half the fp16 spacing at the
    /// largest magnitude exceeds 10% of the RMS.
    pub fn coarse_in_fp16(&self) -> bool {
        let rms = self.rms();
        let half_spacing = fp16_spacing(self.abs_max) as f64 / 2.0;
        rms > 0.0 && half_spacing > 0.1 * rms
    }

    /// The second measure: more than 1% of the non-zero values are fp16 subnormals.
    pub fn subnormal_in_fp16(&self) -> bool {
        self.subnormal as f64 > 0.01 * self.nonzero as f64
    }
}

/// The distance between adjacent fp16 values around magnitude `v` (normal range: 2^(e - 10)
/// for `v` in [2^e, 2^(e+1)); subnormals: 2^-24).
pub fn fp16_spacing(v: f32) -> f32 {
    if v < FP16_MIN_NORMAL {
        return 2f32.powi(-24);
    }
    2f32.powi(v.log2().floor() as i32 - 10)
}

/// Largest finite fp16 value.
pub const FP16_MAX: f32 = 65504.0;

/// Runs `function` of `program` on `inputs` (by name) and returns its outputs (by name).
pub fn evaluate(
    program: &pb::Program,
    function: &str,
    blobs: Option<&BlobReader>,
    inputs: &BTreeMap<String, Array>,
) -> Result<BTreeMap<String, Array>, MilEvalError> {
    evaluate_with(program, function, blobs, inputs, EvalOptions::default()).map(|(o, _)| o)
}

/// [`evaluate`] with options, also returning activation statistics.
pub fn evaluate_with(
    program: &pb::Program,
    function: &str,
    blobs: Option<&BlobReader>,
    inputs: &BTreeMap<String, Array>,
    options: EvalOptions,
) -> Result<(BTreeMap<String, Array>, ActivationStats), MilEvalError> {
    let mut stats = ActivationStats::default();
    let f = program
        .functions
        .get(function)
        .ok_or_else(|| MilEvalError::NoFunction(function.to_string()))?;
    let block = f
        .block_specializations
        .get(&f.opset)
        .or_else(|| {
            if f.block_specializations.len() == 1 {
                f.block_specializations.values().next()
            } else {
                None
            }
        })
        .ok_or_else(|| MilEvalError::NoBlock {
            function: function.to_string(),
            opset: f.opset.clone(),
        })?;

    let mut env: HashMap<String, Val> = HashMap::new();
    for i in &f.inputs {
        let err = |reason: String| MilEvalError::Input {
            name: i.name.clone(),
            reason,
        };
        let a = inputs
            .get(&i.name)
            .ok_or_else(|| err("no value given".into()))?;
        let (dt, dims) =
            tensor_type(i.r#type.as_ref()).ok_or_else(|| err("not a tensor".into()))?;
        if !fits(&dims, &a.shape) {
            return Err(err(format!(
                "given shape {:?} does not fit declared {dims:?}",
                a.shape
            )));
        }
        crate::limits::eval_elements_within(&a.shape, options.max_elements()).map_err(err)?;
        let mut a = a.clone();
        if dt == pb::DataType::Float16 {
            round_f16(&mut a.data);
        }
        env.insert(i.name.clone(), Val::Num(a));
    }

    // Values are dropped after their last use; a decoder's activations are large.
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for op in &block.operations {
        for arg in op.inputs.values() {
            for b in &arg.arguments {
                if let Some(pb::argument::binding::Binding::Name(n)) = &b.binding {
                    *uses.entry(n.as_str()).or_default() += 1;
                }
            }
        }
    }
    for o in &block.outputs {
        *uses.entry(o.as_str()).or_default() += 1;
    }

    for (index, op) in block.operations.iter().enumerate() {
        let Some(name) = op.outputs.first().map(|o| o.name.clone()) else {
            return Err(MilEvalError::Op {
                op: format!("#{index}"),
                kind: op.r#type.clone(),
                reason: "has no outputs".into(),
            });
        };
        let err = |reason: String| MilEvalError::Op {
            op: name.clone(),
            kind: op.r#type.clone(),
            reason,
        };
        let vals = if op.r#type == "const" {
            let v = op
                .attributes
                .get("val")
                .ok_or_else(|| err("const without val".into()))?;
            vec![value(v, blobs, options.max_elements()).map_err(err)?]
        } else {
            run_op(op, &env, options.max_elements()).map_err(err)?
        };
        let mut done = Vec::with_capacity(vals.len());
        for (output, mut val) in op.outputs.iter().zip(vals) {
            let name = output.name.clone();
            let out_type = tensor_type(output.r#type.as_ref());
            if let (Val::Num(a), Some((dt, _))) = (&mut val, &out_type) {
                // fp16 outputs reach the caller as fp16; decompressed weights are stored as fp16.
                let stored = block.outputs.contains(&name) || op.r#type.starts_with("constexpr_");
                let activation = options.fp16_activations
                    && op.r#type != "const"
                    && !op.r#type.starts_with("constexpr_");
                let float = matches!(dt, pb::DataType::Float16 | pb::DataType::Float32);
                if options.ranges && float && !op.r#type.starts_with("const") {
                    stats.ops.push(OpRange::of(
                        &name,
                        &op.r#type,
                        *dt == pb::DataType::Float16,
                        &a.data,
                    ));
                }
                if *dt == pb::DataType::Float16 && activation {
                    let peak = a
                        .data
                        .iter()
                        .filter(|v| v.is_finite())
                        .fold(0f32, |m, v| m.max(v.abs()));
                    if peak > stats.largest {
                        stats.largest = peak;
                        stats.largest_at = name.clone();
                    }
                    if peak > FP16_MAX || a.data.iter().any(|v| !v.is_finite()) {
                        stats.overflowed.push(name.clone());
                    }
                }
                if *dt == pb::DataType::Float16 && (stored || activation) {
                    round_f16(&mut a.data);
                }
            }
            if let (Val::Num(a), Some((_, dims))) = (&val, &out_type) {
                if !fits(dims, &a.shape) {
                    return Err(MilEvalError::Op {
                        op: name,
                        kind: op.r#type.clone(),
                        reason: format!(
                            "computed shape {:?} differs from declared {dims:?}",
                            a.shape
                        ),
                    });
                }
            }
            done.push((name, val));
        }
        for arg in op.inputs.values() {
            for b in &arg.arguments {
                if let Some(pb::argument::binding::Binding::Name(n)) = &b.binding {
                    if let Some(u) = uses.get_mut(n.as_str()) {
                        *u -= 1;
                        if *u == 0 {
                            env.remove(n);
                        }
                    }
                }
            }
        }
        for (name, val) in done {
            // A split's unused parts are never read: keep no copy of them.
            if uses.contains_key(name.as_str()) {
                env.insert(name, val);
            }
        }
    }
    let outputs = block
        .outputs
        .iter()
        .map(|o| match env.get(o) {
            Some(Val::Num(a)) => Ok((o.clone(), a.clone())),
            _ => Err(MilEvalError::Op {
                op: o.clone(),
                kind: "output".into(),
                reason: "no numeric value".into(),
            }),
        })
        .collect::<Result<_, _>>()?;
    Ok((outputs, stats))
}

/// Whether a concrete shape matches declared dims (`None` matches any size).
fn fits(dims: &[Option<usize>], shape: &[usize]) -> bool {
    dims.len() == shape.len()
        && dims
            .iter()
            .zip(shape)
            .all(|(d, &n)| d.is_none_or(|d| d == n))
}

/// dtype and dims (None for unknown) of a tensor type.
fn tensor_type(t: Option<&pb::ValueType>) -> Option<(pb::DataType, Vec<Option<usize>>)> {
    let Some(pb::value_type::Type::TensorType(tt)) = t?.r#type.as_ref() else {
        return None;
    };
    let dims = tt
        .dimensions
        .iter()
        .map(|d| match &d.dimension {
            Some(pb::dimension::Dimension::Constant(c)) => Some(c.size as usize),
            _ => None,
        })
        .collect();
    Some((pb::DataType::try_from(tt.data_type).ok()?, dims))
}

/// Decodes a const value (immediate or blob).
fn value(v: &pb::Value, blobs: Option<&BlobReader>, max_elements: usize) -> Result<Val, String> {
    let (dt, dims) = tensor_type(v.r#type.as_ref()).ok_or("const value is not a tensor")?;
    let shape: Vec<usize> = dims
        .iter()
        .map(|d| d.ok_or("const with unknown dimension"))
        .collect::<Result<_, _>>()?;
    let n = crate::limits::eval_elements_within(&shape, max_elements)?;
    let data: Vec<f32> = match v.value.as_ref().ok_or("const without data")? {
        pb::value::Value::ImmediateValue(iv) => {
            use pb::tensor_value::Value as V;
            let Some(pb::value::immediate_value::Value::Tensor(t)) = &iv.value else {
                return Err("non-tensor immediate".into());
            };
            match t.value.as_ref().ok_or("empty immediate tensor")? {
                V::Floats(f) => f.values.clone(),
                V::Doubles(f) => f.values.iter().map(|&x| x as f32).collect(),
                V::Ints(i) => i.values.iter().map(|&x| x as f32).collect(),
                V::LongInts(i) => i.values.iter().map(|&x| x as f32).collect(),
                V::Bools(b) => b.values.iter().map(|&x| x as u8 as f32).collect(),
                V::Strings(s) => return Ok(Val::Str(s.values.clone())),
                V::Bytes(b) => decode(&b.values, dt, n)?,
            }
        }
        pb::value::Value::BlobFileValue(bv) => {
            let blobs = blobs.ok_or_else(|| {
                format!("refers to {} but the package has no weights", bv.file_name)
            })?;
            let (bdt, bytes) = blobs.get(bv.offset).map_err(|e| e.to_string())?;
            let expect = match dt {
                pb::DataType::Float16 => BlobDType::F16,
                pb::DataType::Float32 => BlobDType::F32,
                pb::DataType::Uint8 => BlobDType::U8,
                pb::DataType::Int8 => BlobDType::I8,
                pb::DataType::Uint1 => BlobDType::U1,
                pb::DataType::Uint2 => BlobDType::U2,
                pb::DataType::Uint3 => BlobDType::U3,
                pb::DataType::Uint4 => BlobDType::U4,
                pb::DataType::Uint6 => BlobDType::U6,
                other => return Err(format!("blob values of type {other:?} are not supported")),
            };
            if bdt != expect {
                return Err(format!(
                    "blob at offset {} holds {bdt:?}, the value is declared {dt:?}",
                    bv.offset
                ));
            }
            decode(bytes, dt, n)?
        }
    };
    if data.len() != n {
        return Err(format!(
            "holds {} values, its type {shape:?} needs {n}",
            data.len()
        ));
    }
    Ok(Val::Num(Array::new(shape, data)))
}

/// Values of `dt` from their stored bytes (`n` elements; sub-byte types are packed LSB-first).
fn decode(bytes: &[u8], dt: pb::DataType, n: usize) -> Result<Vec<f32>, String> {
    let sub_byte = |bits: u32| -> Result<Vec<f32>, String> {
        if bytes.len() < (n * bits as usize).div_ceil(8) {
            return Err(format!(
                "{} bytes cannot hold {n} {bits}-bit values",
                bytes.len()
            ));
        }
        Ok(crate::compress::pack::unpack_bits(bytes, bits, n)
            .into_iter()
            .map(f32::from)
            .collect())
    };
    Ok(match dt {
        pb::DataType::Uint1 => sub_byte(1)?,
        pb::DataType::Uint2 => sub_byte(2)?,
        pb::DataType::Uint3 => sub_byte(3)?,
        pb::DataType::Uint4 => sub_byte(4)?,
        pb::DataType::Uint6 => sub_byte(6)?,
        pb::DataType::Uint32 => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        pb::DataType::Float16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        pb::DataType::Float32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        pb::DataType::Uint8 => bytes.iter().map(|&b| b as f32).collect(),
        pb::DataType::Int8 => bytes.iter().map(|&b| b as i8 as f32).collect(),
        other => return Err(format!("byte values of type {other:?} are not supported")),
    })
}

/// One value per output of `op`.
fn run_op(
    op: &pb::Operation,
    env: &HashMap<String, Val>,
    max_elements: usize,
) -> Result<Vec<Val>, String> {
    let kind = &op.r#type;
    let eval = super::op_eval::evaluator(kind)
        .ok_or_else(|| format!("op type {kind:?} is not supported by the evaluator"))?;
    let vals = eval.run(&Args {
        op,
        env,
        max_elements,
    })?;
    if vals.len() != op.outputs.len() {
        return Err(format!(
            "computes {} values for {} outputs",
            vals.len(),
            op.outputs.len()
        ));
    }
    Ok(vals.into_iter().map(Val::Num).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp16_spacing_and_precision_flags() {
        assert_eq!(fp16_spacing(1.0), 2f32.powi(-10));
        assert_eq!(fp16_spacing(1.99), 2f32.powi(-10));
        assert_eq!(fp16_spacing(2048.0), 2.0);
        assert_eq!(fp16_spacing(65504.0), 32.0);
        assert_eq!(fp16_spacing(1e-6), 2f32.powi(-24));
        // A million values of 1: one of 100 is resolved (half spacing 2^-5, 3% of the RMS of
        // about 1), one of 4096 is not (half spacing 2, half the RMS of about 4.2).
        let mut data = vec![1.0f32; 1_000_000];
        data[0] = 100.0;
        let r = OpRange::of("a", "conv", true, &data);
        assert!(!r.coarse_in_fp16() && !r.overflows_fp16(), "{r:?}");
        data[0] = 4096.0;
        let r = OpRange::of("a", "conv", true, &data);
        assert!(r.coarse_in_fp16() && r.loses_fp16_precision(), "{r:?}");
        data[0] = 70000.0;
        assert!(OpRange::of("a", "conv", true, &data).overflows_fp16());
        // Subnormals: 2 of 100 non-zero values is over 1%.
        let mut small = vec![0.5f32; 100];
        small[..2].fill(1e-5);
        small.push(0.0);
        let r = OpRange::of("b", "mul", true, &small);
        assert_eq!((r.nonzero, r.subnormal), (100, 2));
        assert!(r.subnormal_in_fp16());
    }

    #[test]
    fn merging_samples_keeps_the_largest_and_adds_counts() {
        let one = |v: f32, at: &str| ActivationStats {
            largest: v,
            largest_at: at.into(),
            overflowed: vec![],
            ops: vec![OpRange::of("x", "relu", true, &[v, -1.0])],
        };
        let mut s = one(2.0, "x");
        s.merge(one(5.0, "x"));
        s.merge(one(3.0, "x"));
        assert_eq!(s.largest, 5.0);
        assert_eq!(s.ops.len(), 1);
        assert_eq!(s.ops[0].abs_max, 5.0);
        assert_eq!(s.ops[0].count, 6);
        assert_eq!(s.ops[0].sum_sq, 4.0 + 25.0 + 9.0 + 3.0);
    }

    /// Found by fuzzing: an op named with a newline made a two-line error.
    #[test]
    fn names_with_control_characters_stay_on_one_line() {
        let e = MilEvalError::Op {
            op: "a\nb".into(),
            kind: "k\u{8}".into(),
            reason: "input \"x\ty\" is missing".into(),
        };
        assert_eq!(
            e.to_string(),
            "op a\\nb (k\\u{8}): input \"x\\ty\" is missing"
        );
        let plain = MilEvalError::Op {
            op: "conv_1".into(),
            kind: "conv".into(),
            reason: "bad".into(),
        };
        assert_eq!(plain.to_string(), "op conv_1 (conv): bad");
    }
}
