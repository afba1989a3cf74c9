//! A CPU evaluator for MIL programs as they are stored (the protobuf plus `weight.bin`).
//!
//! It is the check of what really ships: tests run emitted packages through it and compare with
//! PyTorch's outputs. It computes in f32; fp16 weights are widened exactly, and fp16 inputs,
//! `cast`s to fp16 and fp16 outputs round as Core ML's interface would, so the fp16 storage of
//! weights and I/O is represented while fp16 arithmetic error inside the model is not.

use crate::kernels::{self, Array};
use crate::package::{BlobDType, BlobReader};
use crate::proto::mil_spec as pb;
use half::f16;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MilEvalError {
    #[error("function {0:?} not found in the program")]
    NoFunction(String),
    #[error("function {function:?} has no block for its opset {opset:?}")]
    NoBlock { function: String, opset: String },
    #[error("input {name:?}: {reason}")]
    Input { name: String, reason: String },
    #[error("op {op} ({kind}): {reason}")]
    Op {
        op: String,
        kind: String,
        reason: String,
    },
}

/// A value during evaluation: numbers or strings.
#[derive(Clone, Debug)]
enum Val {
    Num(Array),
    Str(Vec<String>),
}

/// Runs `function` of `program` on `inputs` (by name) and returns its outputs (by name).
pub fn evaluate(
    program: &pb::Program,
    function: &str,
    blobs: Option<&BlobReader>,
    inputs: &BTreeMap<String, Array>,
) -> Result<BTreeMap<String, Array>, MilEvalError> {
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

    for op in &block.operations {
        let name = op
            .outputs
            .first()
            .map(|o| o.name.clone())
            .unwrap_or_default();
        let err = |reason: String| MilEvalError::Op {
            op: name.clone(),
            kind: op.r#type.clone(),
            reason,
        };
        let out_type = op
            .outputs
            .first()
            .and_then(|o| tensor_type(o.r#type.as_ref()));
        let val = if op.r#type == "const" {
            let v = op
                .attributes
                .get("val")
                .ok_or_else(|| err("const without val".into()))?;
            value(v, blobs).map_err(err)?
        } else {
            let args = |k: &str| -> Option<&Val> {
                let b = op.inputs.get(k)?.arguments.first()?;
                match &b.binding {
                    Some(pb::argument::binding::Binding::Name(n)) => env.get(n),
                    _ => None,
                }
            };
            run_op(&op.r#type, &args).map_err(err)?
        };
        let mut val = val;
        if let (Val::Num(a), Some((dt, _))) = (&mut val, &out_type) {
            // fp16 outputs reach the caller as fp16; decompressed weights are stored as fp16.
            if *dt == pb::DataType::Float16
                && (block.outputs.contains(&name) || op.r#type.starts_with("constexpr_"))
            {
                round_f16(&mut a.data);
            }
        }
        if let (Val::Num(a), Some((_, dims))) = (&val, &out_type) {
            if !fits(dims, &a.shape) {
                return Err(err(format!(
                    "computed shape {:?} differs from declared {dims:?}",
                    a.shape
                )));
            }
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
        env.insert(name, val);
    }
    block
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
        .collect()
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

fn round_f16(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32());
}

/// Decodes a const value (immediate or blob).
fn value(v: &pb::Value, blobs: Option<&BlobReader>) -> Result<Val, String> {
    let (dt, dims) = tensor_type(v.r#type.as_ref()).ok_or("const value is not a tensor")?;
    let shape: Vec<usize> = dims
        .iter()
        .map(|d| d.ok_or("const with unknown dimension"))
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
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

fn run_op<'a>(kind: &str, arg: &dyn Fn(&str) -> Option<&'a Val>) -> Result<Val, String> {
    let num = |k: &str| -> Result<&Array, String> {
        match arg(k) {
            Some(Val::Num(a)) => Ok(a),
            Some(Val::Str(_)) => Err(format!("input {k} is a string")),
            None => Err(format!("missing input {k}")),
        }
    };
    let ints = |k: &str| -> Result<Vec<usize>, String> {
        num(k)?
            .data
            .iter()
            .map(|&x| {
                if x >= 0.0 {
                    Ok(x as usize)
                } else {
                    Err(format!("{k} has negative value {x}"))
                }
            })
            .collect()
    };
    let string = |k: &str| -> Result<String, String> {
        match arg(k) {
            Some(Val::Str(s)) if s.len() == 1 => Ok(s[0].clone()),
            _ => Err(format!("input {k} must be a string")),
        }
    };
    let binary = |f: fn(f32, f32) -> f32| -> Result<Array, String> {
        let (x, y) = (num("x")?, num("y")?);
        kernels::binary(x, y, f)
            .ok_or_else(|| format!("shapes {:?} and {:?} do not broadcast", x.shape, y.shape))
    };
    let out = match kind {
        "relu" => kernels::map(num("x")?, |x| x.max(0.0)),
        "tanh" => kernels::map(num("x")?, f32::tanh),
        "sigmoid" => kernels::map(num("x")?, |x| 1.0 / (1.0 + (-x).exp())),
        "identity" => num("x")?.clone(),
        "add" => binary(|a, b| a + b)?,
        "sub" => binary(|a, b| a - b)?,
        "mul" => binary(|a, b| a * b)?,
        "real_div" => binary(|a, b| a / b)?,
        "maximum" => binary(f32::max)?,
        "minimum" => binary(f32::min)?,
        "rsqrt" => {
            let eps = arg("epsilon")
                .map(|_| num("epsilon").map(|e| e.data[0]))
                .transpose()?
                .unwrap_or(1e-12);
            kernels::map(num("x")?, move |x| 1.0 / (x + eps).sqrt())
        }
        "clip" => {
            let (lo, hi) = (num("alpha")?.data[0], num("beta")?.data[0]);
            kernels::map(num("x")?, move |x| x.clamp(lo, hi))
        }
        "conv" => {
            let x = num("x")?;
            let w = num("weight")?;
            if w.shape.len() != 4 || w.shape.contains(&0) {
                return Err(format!(
                    "weight {:?} is not a non-empty [O, I, kh, kw] tensor",
                    w.shape
                ));
            }
            let bias = arg("bias").map(|_| num("bias")).transpose()?;
            let pair = |k: &str| -> Result<[usize; 2], String> {
                match arg(k) {
                    None => Ok([1, 1]),
                    Some(_) => ints(k)?
                        .try_into()
                        .map_err(|_| format!("{k} must have 2 values")),
                }
            };
            let (strides, dilations) = (pair("strides")?, pair("dilations")?);
            let groups = if arg("groups").is_some() {
                ints("groups")?[0]
            } else {
                1
            };
            let pad_type = if arg("pad_type").is_some() {
                string("pad_type")?
            } else {
                "valid".into()
            };
            let pads: [usize; 4] = match pad_type.as_str() {
                "custom" => ints("pad")?
                    .try_into()
                    .map_err(|_| "pad must have 4 values".to_string())?,
                "valid" => [0; 4],
                "same" if strides == [1, 1] => {
                    let (kh, kw) = (
                        dilations[0] * (w.shape[2] - 1),
                        dilations[1] * (w.shape[3] - 1),
                    );
                    [kh / 2, kh - kh / 2, kw / 2, kw - kw / 2]
                }
                other => return Err(format!("pad_type {other:?} is not supported")),
            };
            let fits = x.shape.len() == 4
                && groups > 0
                && x.shape[1] == w.shape[1] * groups
                && w.shape[0] % groups == 0
                && bias.is_none_or(|b| b.len() == w.shape[0])
                && !strides.contains(&0)
                && !dilations.contains(&0)
                && (0..2).all(|a| {
                    x.shape[2 + a] + pads[2 * a] + pads[2 * a + 1]
                        > dilations[a] * (w.shape[2 + a].max(1) - 1)
                });
            if !fits {
                return Err(format!("x {:?}, weight {:?}, bias, strides {strides:?}, dilations {dilations:?}, pads {pads:?} and groups {groups} do not fit", x.shape, w.shape));
            }
            let p = kernels::Conv2d {
                strides,
                pads,
                dilations,
                groups,
            };
            kernels::conv2d(x, w, bias.map(|b| b.data.as_slice()), &p)
        }
        "upsample_nearest_neighbor" => {
            let s = |k: &str| -> Result<usize, String> {
                match arg(k) {
                    None => Ok(1),
                    Some(_) => {
                        let v = num(k)?.data[0];
                        if v >= 1.0 && v.fract() == 0.0 {
                            Ok(v as usize)
                        } else {
                            Err(format!("{k} = {v} is not a whole number"))
                        }
                    }
                }
            };
            let x = num("x")?;
            if x.shape.len() < 3 {
                return Err(format!("upsample needs rank >= 3, got {:?}", x.shape));
            }
            kernels::upsample_nearest(x, s("scale_factor_height")?, s("scale_factor_width")?)
        }
        "reduce_mean" => {
            let x = num("x")?;
            if x.shape.is_empty() {
                return Err("reduce_mean of a scalar".into());
            }
            let rank = x.shape.len() as i64;
            let axes: Vec<usize> = match arg("axes") {
                None => (0..x.shape.len()).collect(),
                Some(_) => num("axes")?
                    .data
                    .iter()
                    .map(|&a| (a as i64).rem_euclid(rank) as usize)
                    .collect(),
            };
            let keep = arg("keep_dims")
                .map(|_| num("keep_dims").map(|k| k.data[0] != 0.0))
                .transpose()?
                .unwrap_or(false);
            kernels::reduce_mean(x, &axes, keep)
        }
        "reshape" => {
            let x = num("x")?;
            let spec: Vec<i64> = num("shape")?.data.iter().map(|&v| v as i64).collect();
            let known: usize = spec
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d == 0 {
                        x.shape.get(i).copied().unwrap_or(1)
                    } else if d < 0 {
                        1
                    } else {
                        d as usize
                    }
                })
                .product();
            let shape: Vec<usize> = spec
                .iter()
                .enumerate()
                .map(|(i, &d)| match d {
                    -1 if known > 0 => x.len() / known,
                    0 => x.shape.get(i).copied().unwrap_or(0),
                    d => d as usize,
                })
                .collect();
            if shape.iter().product::<usize>() != x.len() {
                return Err(format!("cannot reshape {:?} to {spec:?}", x.shape));
            }
            x.clone().reshape(shape)
        }
        "tile" => {
            let x = num("x")?;
            let reps = ints("reps")?;
            if reps.len() != x.shape.len() {
                return Err(format!("reps {reps:?} do not match rank {}", x.shape.len()));
            }
            kernels::tile(x, &reps)
        }
        "transpose" => {
            let x = num("x")?;
            let perm = ints("perm")?;
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..x.shape.len()).collect::<Vec<_>>() {
                return Err(format!("perm {perm:?} is not a permutation"));
            }
            kernels::transpose(x, &perm)
        }
        "cast" => {
            let mut a = num("x")?.clone();
            match string("dtype")?.as_str() {
                "fp16" => round_f16(&mut a.data),
                "fp32" => {}
                "int32" => a.data.iter_mut().for_each(|x| *x = x.trunc()),
                other => return Err(format!("cast to {other:?} is not supported")),
            }
            a
        }
        "constexpr_lut_to_dense" => lut_to_dense(
            num("indices")?,
            num("lut")?,
            arg("shape").map(|_| num("shape")).transpose()?,
        )?,
        "constexpr_affine_dequantize" => {
            let (q, zp, scale) = (num("quantized_data")?, num("zero_point")?, num("scale")?);
            let axis = num("axis")?.data[0] as usize;
            if axis >= q.shape.len() {
                return Err(format!("axis {axis} out of range for {:?}", q.shape));
            }
            let inner: usize = q.shape[axis + 1..].iter().product();
            let c = q.shape[axis];
            if (scale.len() != 1 && scale.len() != c) || (zp.len() != 1 && zp.len() != c) {
                return Err(format!(
                    "scale {:?} / zero_point {:?} do not fit axis {axis} of {:?}",
                    scale.shape, zp.shape, q.shape
                ));
            }
            let pick = |v: &Array, ch: usize| if v.len() == 1 { v.data[0] } else { v.data[ch] };
            let data = q.data.iter().enumerate().map(|(e, &v)| {
                let ch = (e / inner) % c;
                pick(scale, ch) * (v - pick(zp, ch))
            });
            Array::new(q.shape.clone(), data.collect())
        }
        "constexpr_blockwise_shift_scale" => {
            let (d, scale) = (num("data")?, num("scale")?);
            let offset = arg("offset").map(|_| num("offset")).transpose()?;
            if scale.shape.len() != d.shape.len()
                || d.shape
                    .iter()
                    .zip(&scale.shape)
                    .any(|(a, b)| *b == 0 || a % b != 0)
            {
                return Err(format!(
                    "scale {:?} does not tile data {:?}",
                    scale.shape, d.shape
                ));
            }
            let data = d.data.iter().enumerate().map(|(e, &v)| {
                let b = block_index(e, &d.shape, &scale.shape);
                scale.data[b] * (v - offset.map_or(0.0, |o| o.data[b]))
            });
            Array::new(d.shape.clone(), data.collect())
        }
        other => {
            return Err(format!(
                "op type {other:?} is not supported by the evaluator"
            ))
        }
    };
    Ok(Val::Num(out))
}

/// The flat index, in a tensor of `coarse` shape, of the block that element `e` of a tensor of
/// `fine` shape falls in (each dimension of `fine` a multiple of `coarse`'s).
fn block_index(e: usize, fine: &[usize], coarse: &[usize]) -> usize {
    let mut rest = e;
    let mut idx = 0;
    let mut stride = 1;
    for d in (0..fine.len()).rev() {
        let i = rest % fine[d];
        rest /= fine[d];
        idx += (i / (fine[d] / coarse[d])) * stride;
        stride *= coarse[d];
    }
    idx
}

/// `constexpr_lut_to_dense`: the iOS16 form (packed uint8 `indices`, a 1-D `lut`, `shape`) or
/// the iOS18 form (`indices` of the output's shape, `lut` of rank + 2 with one table per block).
fn lut_to_dense(indices: &Array, lut: &Array, shape: Option<&Array>) -> Result<Array, String> {
    match shape {
        Some(shape) => {
            let shape: Vec<usize> = shape.data.iter().map(|&d| d as usize).collect();
            let n: usize = shape.iter().product();
            let table = lut.len();
            if !table.is_power_of_two() || !(2..=256).contains(&table) {
                return Err(format!("lut of {table} entries is not 2^bits"));
            }
            let bits = table.trailing_zeros();
            let bytes: Vec<u8> = indices.data.iter().map(|&b| b as u8).collect();
            if bytes.len() < (n * bits as usize).div_ceil(8) {
                return Err(format!(
                    "{} index bytes cannot hold {n} {bits}-bit indices",
                    bytes.len()
                ));
            }
            let idx = crate::compress::pack::unpack_bits(&bytes, bits, n);
            Ok(Array::new(
                shape,
                idx.iter().map(|&i| lut.data[i as usize]).collect(),
            ))
        }
        None => {
            let rank = indices.shape.len();
            if lut.shape.len() != rank + 2 || lut.shape[rank + 1] != 1 {
                return Err(format!(
                    "lut {:?} must have rank {} and vector size 1",
                    lut.shape,
                    rank + 2
                ));
            }
            let coarse = &lut.shape[..rank];
            if indices
                .shape
                .iter()
                .zip(coarse)
                .any(|(a, b)| *b == 0 || a % b != 0)
            {
                return Err(format!(
                    "lut {:?} does not tile indices {:?}",
                    lut.shape, indices.shape
                ));
            }
            let table = lut.shape[rank];
            let data = indices.data.iter().enumerate().map(|(e, &i)| {
                let b = block_index(e, &indices.shape, coarse);
                lut.data[b * table + i as usize]
            });
            Ok(Array::new(indices.shape.clone(), data.collect()))
        }
    }
}
