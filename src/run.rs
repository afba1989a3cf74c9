//! Running a package on the CPU: inputs from safetensors, outputs to PNG. Backs `mlc run` and the
//! numerical tests.

use crate::kernels::Array;
use crate::mil::eval::{evaluate, MilEvalError};
use crate::package::{read_package, Package, PackageError};
use crate::proto::specification as spec;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("{path}: {reason}")]
    Input { path: String, reason: String },
    #[error("{0}: not an ML Program model")]
    NotProgram(String),
    #[error(transparent)]
    Eval(#[from] MilEvalError),
    #[error("{path}: {reason}")]
    Output { path: String, reason: String },
}

/// Evaluates function `function` of a loaded package.
pub fn run(
    pkg: &Package,
    function: &str,
    inputs: &BTreeMap<String, Array>,
) -> Result<BTreeMap<String, Array>, RunError> {
    let Some(spec::model::Type::MlProgram(program)) = &pkg.model.r#type else {
        return Err(RunError::NotProgram(pkg.path.display().to_string()));
    };
    let blobs = pkg.blobs()?;
    Ok(evaluate(program, function, blobs.as_ref(), inputs)?)
}

/// Reads and evaluates the default function of the package at `path`.
pub fn run_path(
    path: &Path,
    inputs: &BTreeMap<String, Array>,
) -> Result<BTreeMap<String, Array>, RunError> {
    let pkg = read_package(path)?;
    run(&pkg, &default_function(&pkg), inputs)
}

/// The function a plain prediction runs: the declared default of a multifunction package, else
/// `main`.
pub fn default_function(pkg: &Package) -> String {
    match pkg
        .model
        .description
        .as_ref()
        .map(|d| d.default_function_name.as_str())
    {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => "main".to_string(),
    }
}

/// Input and output feature descriptions of `function`.
pub fn features<'a>(
    pkg: &'a Package,
    function: &str,
) -> (
    &'a [spec::FeatureDescription],
    &'a [spec::FeatureDescription],
) {
    let Some(d) = pkg.model.description.as_ref() else {
        return (&[], &[]);
    };
    match d.functions.iter().find(|f| f.name == function) {
        Some(f) => (&f.input, &f.output),
        None => (&d.input, &d.output),
    }
}

/// The names of a function's inputs, in order.
pub fn input_names(pkg: &Package, function: &str) -> Vec<String> {
    features(pkg, function)
        .0
        .iter()
        .map(|f| f.name.clone())
        .collect()
}

/// Whether output `name` of `function` is a Core ML image (values in [0, 255]).
pub fn is_image_output(pkg: &Package, function: &str, name: &str) -> bool {
    features(pkg, function).1.iter().any(|f| {
        f.name == name
            && matches!(
                f.r#type.as_ref().and_then(|t| t.r#type.as_ref()),
                Some(spec::feature_type::Type::ImageType(_))
            )
    })
}

/// Every f32/f16/bf16 tensor of a safetensors file, as f32 arrays.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Array>, RunError> {
    let err = |reason: String| RunError::Input {
        path: path.display().to_string(),
        reason,
    };
    let bytes = crate::limits::read_regular(path, u64::MAX).map_err(|e| err(e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(err(format!(
                    "tensor {name:?} has dtype {other:?}; expected F32, F16 or BF16"
                )))
            }
        };
        out.insert(name, Array::new(view.shape().to_vec(), data));
    }
    Ok(out)
}

/// Writes a `[1, 3, H, W]` (or channels-last `[1, H, W, 3]`) array as an 8-bit RGB PNG, values
/// divided by `peak` and clamped to [0, 1]. Atomic.
pub fn write_png(image: &Array, peak: f32, path: &Path) -> Result<(), RunError> {
    let nchw;
    let image = if image.shape.len() == 4 && image.shape[3] == 3 && image.shape[1] != 3 {
        nchw = crate::kernels::transpose(image, &[0, 3, 1, 2]);
        &nchw
    } else {
        image
    };
    let err = |reason: String| RunError::Output {
        path: path.display().to_string(),
        reason,
    };
    let [1, 3, h, w] = image.shape[..] else {
        return Err(err(format!(
            "expected an image of shape [1, 3, H, W], got {:?}",
            image.shape
        )));
    };
    let plane = h * w;
    let mut rgb = Vec::with_capacity(3 * plane);
    for i in 0..plane {
        for c in 0..3 {
            rgb.push(((image.data[c * plane + i] / peak).clamp(0.0, 1.0) * 255.0).round() as u8);
        }
    }
    let tmp = path.with_file_name(format!(
        ".{}.mlc-tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let result = (|| -> Result<(), String> {
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| e.to_string())?;
        wr.write_image_data(&rgb).map_err(|e| e.to_string())?;
        wr.finish().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Error measures between an output and a reference: max abs, mean abs, and PSNR (dB) with both
/// clamped to [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Compare {
    pub max_abs: f32,
    pub mean_abs: f32,
    pub psnr: f32,
}

pub fn compare(out: &Array, reference: &Array) -> Compare {
    assert_eq!(out.shape, reference.shape, "compare needs equal shapes");
    let n = out.len() as f64;
    let (mut max_abs, mut sum_abs, mut sq) = (0f32, 0f64, 0f64);
    for (&a, &b) in out.data.iter().zip(&reference.data) {
        let d = (a - b).abs();
        max_abs = max_abs.max(d);
        sum_abs += d as f64;
        let c = (a.clamp(0.0, 1.0) - b.clamp(0.0, 1.0)) as f64;
        sq += c * c;
    }
    let mse = sq / n;
    let psnr = if mse == 0.0 {
        f32::INFINITY
    } else {
        (10.0 * (1.0 / mse).log10()) as f32
    };
    Compare {
        max_abs,
        mean_abs: (sum_abs / n) as f32,
        psnr,
    }
}
