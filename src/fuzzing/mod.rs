//! Entry points for fuzzing the readers of untrusted input: one function per input format,
//! from bytes to accepted (`Ok`) or refused (a one-line error), never a panic.
//!
//! The `cargo fuzz` targets in `tests/fuzz/` and the replay test `tests/fuzz_replay.rs` (which
//! runs the committed regression inputs on stable Rust) both call [`InputFormat::run`], so what CI
//! replays is exactly what was fuzzed. The module lives in the library, not in the fuzz crate,
//! because the readers it drives (the `.pth` VM, the manifest parser) are crate-private; it
//! adds no dependency and only reads bytes in memory.
//!
//! Each target also checks the invariant every reader promises: errors are one line.

pub mod torch;

use std::collections::BTreeMap;
use std::path::Path;

use crate::kernels::Array;
use crate::package::{BlobReader, Package};
use crate::proto::mil_spec as pb;
use crate::proto::specification as spec;

/// Most elements of any tensor the [`InputFormat::Eval`] target lets the evaluator allocate
/// (256 KiB of f32): enough for the seed programs, small enough that a mutated shape costs
/// microseconds to refuse or milliseconds to compute, never gigabytes.
pub const EVAL_MAX_ELEMENTS: usize = 1 << 16;

/// An input format, with the library code that reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// A `.safetensors` weight file, read into decoder tensors.
    Safetensors,
    /// A `torch.save` zip checkpoint: the zip reader, the pickle VM and the storages.
    Pth,
    /// A package's `Manifest.json`, down to the root model's path.
    Manifest,
    /// A package's `weight.bin`: the header, then every record walked and read.
    Blob,
    /// A package's `model.mlmodel`: decoded, then everything `mlc inspect` prints about it.
    Mlmodel,
    /// A whole package evaluated on a small input (see [`eval_input`] for the framing), with at
    /// most [`EVAL_MAX_ELEMENTS`] elements per tensor.
    Eval,
}

impl InputFormat {
    pub const ALL: [InputFormat; 6] = [
        InputFormat::Safetensors,
        InputFormat::Pth,
        InputFormat::Manifest,
        InputFormat::Blob,
        InputFormat::Mlmodel,
        InputFormat::Eval,
    ];

    /// The name of the fuzz target and of its corpus directory.
    pub fn name(self) -> &'static str {
        match self {
            InputFormat::Safetensors => "safetensors",
            InputFormat::Pth => "pth",
            InputFormat::Manifest => "manifest",
            InputFormat::Blob => "blob",
            InputFormat::Mlmodel => "mlmodel",
            InputFormat::Eval => "eval",
        }
    }

    /// Reads `bytes` as this format: `Ok` if accepted, else the reader's error.
    ///
    /// # Panics
    /// If a reader's error spans several lines (a bug the fuzzer should report).
    pub fn run(self, bytes: &[u8]) -> Result<(), String> {
        let result = match self {
            InputFormat::Safetensors => safetensors(bytes),
            InputFormat::Pth => pth(bytes),
            InputFormat::Manifest => manifest(bytes),
            InputFormat::Blob => blob(bytes),
            InputFormat::Mlmodel => mlmodel(bytes),
            InputFormat::Eval => eval(bytes),
        };
        if let Err(e) = &result {
            assert!(!e.contains('\n'), "{} error spans lines: {e}", self.name());
        }
        result
    }
}

/// Opens `bytes` as a weight file and reads every float tensor, as a build reading all of a
/// model's tensors would. The budget is the one `mlc` gives a file of this size.
fn weights(name: &str, bytes: &[u8]) -> Result<(), String> {
    let path = Path::new(name);
    use crate::weights::TensorSource;
    let f =
        crate::weights::WeightFile::from_bytes(path, bytes.to_vec()).map_err(|e| e.to_string())?;
    let names: Vec<String> = f.tensors().keys().cloned().collect();
    for n in names {
        match f.read(&n) {
            // Integer tensors are listed and refused by name; a model never asks for them.
            Err(crate::weights::WeightError::UnsupportedDtype { .. }) => {}
            r => {
                r.map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

fn safetensors(bytes: &[u8]) -> Result<(), String> {
    weights("fuzz.safetensors", bytes)
}

fn pth(bytes: &[u8]) -> Result<(), String> {
    weights("fuzz.pth", bytes)
}

fn manifest(bytes: &[u8]) -> Result<(), String> {
    use crate::package::manifest::Manifest;
    let path = Path::new("fuzz.mlpackage/Manifest.json");
    let m = Manifest::parse(bytes, path).map_err(|e| e.to_string())?;
    m.root_model_path(path)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn blob(bytes: &[u8]) -> Result<(), String> {
    let r = BlobReader::new(bytes).map_err(|e| e.to_string())?;
    for offset in r.offsets().map_err(|e| e.to_string())? {
        let rec = r.record(offset).map_err(|e| e.to_string())?;
        let _ = rec.element_count();
    }
    Ok(())
}

fn mlmodel(bytes: &[u8]) -> Result<(), String> {
    let pkg =
        Package::from_bytes(Path::new("fuzz.mlpackage"), bytes, None).map_err(|e| e.to_string())?;
    crate::inspect::describe(&pkg).map_err(|e| e.to_string())?;
    crate::inspect::compression(&pkg).map_err(|e| e.to_string())?;
    let _ = crate::inspect::dot(&pkg.model);
    let _ = crate::mil::print::print_model(&pkg.model);
    let _ = crate::ane::report(&pkg.model);
    Ok(())
}

/// The input of the [`InputFormat::Eval`] target for a package: the length of `model.mlmodel` (u32,
/// little-endian), its bytes, then `weight.bin` (nothing for a package without weights).
pub fn eval_input(model: &[u8], weights: Option<&[u8]>) -> Vec<u8> {
    let mut out = (model.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(model);
    out.extend_from_slice(weights.unwrap_or_default());
    out
}

fn eval(bytes: &[u8]) -> Result<(), String> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or("shorter than the 4-byte model length")?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > rest.len() {
        return Err(format!("model length {len} runs past the end of the input"));
    }
    let (model, weights) = rest.split_at(len);
    let weights = (!weights.is_empty()).then(|| weights.to_vec());
    let pkg = Package::from_bytes(Path::new("fuzz.mlpackage"), model, weights)
        .map_err(|e| e.to_string())?;
    let function = crate::run::default_function(&pkg);
    let inputs = sample_inputs(&pkg, &function)?;
    let options = crate::mil::eval::EvalOptions {
        max_elements: Some(EVAL_MAX_ELEMENTS),
        ..Default::default()
    };
    crate::run::run_with(&pkg, &function, &inputs, options)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Deterministic values for every input of `function`, of the default shape the description
/// declares (an image's declared size), with any size the program leaves open taken as 4.
fn sample_inputs(pkg: &Package, function: &str) -> Result<BTreeMap<String, Array>, String> {
    let Some(spec::model::Type::MlProgram(program)) = &pkg.model.r#type else {
        return Err("not an ML Program model".into());
    };
    let f = program
        .functions
        .get(function)
        .ok_or_else(|| format!("function {function:?} not found in the program"))?;
    let mut inputs = BTreeMap::new();
    for i in &f.inputs {
        let Some(pb::value_type::Type::TensorType(t)) =
            i.r#type.as_ref().and_then(|t| t.r#type.as_ref())
        else {
            return Err(format!("input {:?} is not a tensor", i.name));
        };
        let declared = declared_shape(pkg, function, &i.name);
        let shape: Vec<usize> = t
            .dimensions
            .iter()
            .enumerate()
            .map(|(k, d)| match &d.dimension {
                Some(pb::dimension::Dimension::Constant(c)) => c.size as usize,
                _ => declared
                    .as_ref()
                    .filter(|s| s.len() == t.dimensions.len())
                    .map_or(4, |s| s[k]),
            })
            .collect();
        let n = crate::limits::eval_elements_within(&shape, EVAL_MAX_ELEMENTS)
            .map_err(|e| format!("input {:?}: {e}", i.name))?;
        let image = crate::run::is_image_input(pkg, function, &i.name);
        let data = (0..n)
            .map(|k| {
                let v = (k * 37 % 17) as f32 / 16.0;
                if image {
                    (v * 255.0).round()
                } else {
                    v * 2.0 - 1.0
                }
            })
            .collect();
        inputs.insert(i.name.clone(), Array::new(shape, data));
    }
    Ok(inputs)
}

/// The default shape of input `name` in the model's description: a multi-array's shape, or
/// `[1, 3, height, width]` for an image.
fn declared_shape(pkg: &Package, function: &str, name: &str) -> Option<Vec<usize>> {
    let (ins, _) = crate::run::features(pkg, function);
    let f = ins.iter().find(|f| f.name == name)?;
    match f.r#type.as_ref()?.r#type.as_ref()? {
        spec::feature_type::Type::MultiArrayType(a) => {
            a.shape.iter().map(|&d| usize::try_from(d).ok()).collect()
        }
        spec::feature_type::Type::ImageType(i) => Some(vec![
            1,
            3,
            usize::try_from(i.height).ok()?,
            usize::try_from(i.width).ok()?,
        ]),
        _ => None,
    }
}
