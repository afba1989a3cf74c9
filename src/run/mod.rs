//! Running a package on the CPU: inputs from safetensors or PNG, outputs to PNG (images) or
//! safetensors (latents, any array). Backs `mlc run` and the numerical tests.

pub mod inputs;

use crate::kernels::Array;
use crate::mil::eval::{evaluate_with, ActivationStats, EvalOptions, MilEvalError};
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
    /// Token ids that do not fit the model's input.
    #[error("--tokens: {0}")]
    Tokens(String),
}

/// Evaluates function `function` of a loaded package.
pub fn run(
    pkg: &Package,
    function: &str,
    inputs: &BTreeMap<String, Array>,
) -> Result<BTreeMap<String, Array>, RunError> {
    run_with(pkg, function, inputs, EvalOptions::default()).map(|(o, _)| o)
}

/// [`run`] with evaluator options, also returning activation statistics.
pub fn run_with(
    pkg: &Package,
    function: &str,
    inputs: &BTreeMap<String, Array>,
    options: EvalOptions,
) -> Result<(BTreeMap<String, Array>, ActivationStats), RunError> {
    let Some(spec::model::Type::MlProgram(program)) = &pkg.model.r#type else {
        return Err(RunError::NotProgram(pkg.path.display().to_string()));
    };
    check_enumerated(pkg, function, inputs)?;
    check_integers(pkg, function, inputs)?;
    let blobs = pkg.blobs()?;
    Ok(evaluate_with(
        program,
        function,
        blobs.as_ref(),
        inputs,
        options,
    )?)
}

/// Refuses, as Core ML does, an input whose shape is not one of its feature's enumerated shapes
/// (image sizes, for an image input); naming the ones listed.
fn check_enumerated(
    pkg: &Package,
    function: &str,
    inputs: &BTreeMap<String, Array>,
) -> Result<(), MilEvalError> {
    use spec::array_feature_type::ShapeFlexibility;
    use spec::feature_type::Type;
    use spec::image_feature_type::SizeFlexibility;
    for f in features(pkg, function).0 {
        let Some(given) = inputs.get(&f.name) else {
            continue;
        };
        let (listed, shown, what): (Vec<Vec<u64>>, &[usize], &str) =
            match f.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
                Some(Type::MultiArrayType(a)) => match &a.shape_flexibility {
                    Some(ShapeFlexibility::EnumeratedShapes(e)) => (
                        e.shapes
                            .iter()
                            .map(|s| s.shape.iter().map(|&d| d as u64).collect())
                            .collect(),
                        &given.shape[..],
                        "shape",
                    ),
                    _ => continue,
                },
                Some(Type::ImageType(i)) => match &i.size_flexibility {
                    Some(SizeFlexibility::EnumeratedSizes(e)) => (
                        e.sizes.iter().map(|s| vec![s.height, s.width]).collect(),
                        &given.shape[given.shape.len().saturating_sub(2)..],
                        "size",
                    ),
                    _ => continue,
                },
                _ => continue,
            };
        let shown_u64: Vec<u64> = shown.iter().map(|&d| d as u64).collect();
        if !listed.is_empty() && !listed.contains(&shown_u64) {
            let names: Vec<String> = listed
                .iter()
                .map(|s| s.iter().map(u64::to_string).collect::<Vec<_>>().join("x"))
                .collect();
            return Err(MilEvalError::Input {
                name: f.name.clone(),
                reason: format!(
                    "{what} {} is not one of the enumerated {what}s: {}",
                    shown
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join("x"),
                    names.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Refuses, as Core ML would on conversion, values an int32 input cannot hold (token ids given
/// as fractions or beyond int32), naming the input and the first such value.
fn check_integers(
    pkg: &Package,
    function: &str,
    inputs: &BTreeMap<String, Array>,
) -> Result<(), MilEvalError> {
    use spec::array_feature_type::ArrayDataType;
    use spec::feature_type::Type;
    for f in features(pkg, function).0 {
        let int32 = matches!(
            f.r#type.as_ref().and_then(|t| t.r#type.as_ref()),
            Some(Type::MultiArrayType(a)) if a.data_type == ArrayDataType::Int32 as i32
        );
        let Some(given) = inputs.get(&f.name).filter(|_| int32) else {
            continue;
        };
        let bad = given
            .data
            .iter()
            .position(|v| v.fract() != 0.0 || v.abs() > i32::MAX as f32);
        if let Some(i) = bad {
            return Err(MilEvalError::Input {
                name: f.name.clone(),
                reason: format!(
                    "element {i} is {}, not an int32 value (the input is int32)",
                    given.data[i]
                ),
            });
        }
    }
    Ok(())
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

/// Whether input `name` of `function` is a Core ML image (it takes 0..255 pixel values).
pub fn is_image_input(pkg: &Package, function: &str, name: &str) -> bool {
    features(pkg, function).0.iter().any(|f| {
        f.name == name
            && matches!(
                f.r#type.as_ref().and_then(|t| t.r#type.as_ref()),
                Some(spec::feature_type::Type::ImageType(_))
            )
    })
}

/// Whether input `name` of `function` is an int32 array (token ids).
pub fn is_int_input(pkg: &Package, function: &str, name: &str) -> bool {
    use spec::array_feature_type::ArrayDataType;
    features(pkg, function).0.iter().any(|f| {
        f.name == name
            && matches!(
                f.r#type.as_ref().and_then(|t| t.r#type.as_ref()),
                Some(spec::feature_type::Type::MultiArrayType(a))
                    if a.data_type == ArrayDataType::Int32 as i32
            )
    })
}

/// The declared `[N, C, H, W]`-style shape of input or output `name` of `function` (the default
/// shape of a flexible one), or whether it is a Core ML image (`None` for neither).
pub fn feature_shape(pkg: &Package, function: &str, name: &str) -> Option<FeatureShape> {
    let (ins, outs) = features(pkg, function);
    let f = ins.iter().chain(outs).find(|f| f.name == name)?;
    match f.r#type.as_ref()?.r#type.as_ref()? {
        spec::feature_type::Type::ImageType(_) => Some(FeatureShape::Image),
        spec::feature_type::Type::MultiArrayType(a) => Some(FeatureShape::Array(a.shape.clone())),
        _ => None,
    }
}

/// How a feature is declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeatureShape {
    /// A Core ML image.
    Image,
    /// A multi-array of this (default) shape.
    Array(Vec<i64>),
}

impl FeatureShape {
    /// An RGB image, or an array `[1, 3, H, W]` / `[1, H, W, 3]`.
    pub fn is_rgb(&self) -> bool {
        match self {
            FeatureShape::Image => true,
            FeatureShape::Array(s) => matches!(s[..], [1, 3, _, _] | [1, _, _, 3]),
        }
    }

    /// An array `[1, H, W, 3]` (channels last).
    pub fn is_nhwc_rgb(&self) -> bool {
        matches!(self, FeatureShape::Array(s) if matches!(s[..], [1, c, _, 3] if c != 3))
    }
}

impl std::fmt::Display for FeatureShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeatureShape::Image => f.write_str("an image"),
            FeatureShape::Array(s) => write!(f, "{s:?}"),
        }
    }
}

/// Every f32/f16/bf16 (and int32/int64: token ids) tensor of a safetensors file, as f32 arrays.
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
            // Token ids; f32 holds every integer up to 2^24 exactly (CLIP's vocabulary is 49,408).
            Dtype::I32 | Dtype::I64 => {
                let ints: Vec<i64> = if view.dtype() == Dtype::I32 {
                    d.chunks_exact(4)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                        .collect()
                } else {
                    d.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect()
                };
                if let Some(v) = ints.iter().find(|v| v.unsigned_abs() > 1 << 24) {
                    return Err(err(format!(
                        "tensor {name:?} holds {v}, beyond the integers mlc evaluates exactly (2^24)"
                    )));
                }
                ints.into_iter().map(|v| v as f32).collect()
            }
            other => {
                return Err(err(format!(
                    "tensor {name:?} has dtype {other:?}; expected F32, F16, BF16, I32 or I64"
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
    let tmp = temp_path(path);
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

/// An 8-bit RGB PNG as a `[1, 3, H, W]` array with values in [0, 1] (`v / 255`).
pub fn read_png(path: &Path) -> Result<Array, RunError> {
    let err = |reason: String| RunError::Input {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| err(format!("not a readable PNG: {e}")))?;
    match reader.output_color_type() {
        (png::ColorType::Rgb, png::BitDepth::Eight) => {}
        (c, d) => {
            return Err(err(format!(
                "a {c:?} PNG of bit depth {}; expected 8-bit RGB",
                d as u8
            )))
        }
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| err("the PNG is too large".into()))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| err(format!("not a readable PNG: {e}")))?;
    let (h, w) = (info.height as usize, info.width as usize);
    let plane = h * w;
    let mut data = vec![0f32; 3 * plane];
    for y in 0..h {
        let row = &buf[y * info.line_size..][..3 * w];
        for x in 0..w {
            for c in 0..3 {
                data[c * plane + y * w + x] = f32::from(row[3 * x + c]) / 255.0;
            }
        }
    }
    Ok(Array::new(vec![1, 3, h, w], data))
}

/// Writes arrays as f32 tensors of a safetensors file, named by their keys. Atomic.
pub fn write_safetensors(tensors: &BTreeMap<String, Array>, path: &Path) -> Result<(), RunError> {
    let err = |reason: String| RunError::Output {
        path: path.display().to_string(),
        reason,
    };
    let bytes: Vec<(&String, Vec<u8>, &Array)> = tensors
        .iter()
        .map(|(k, a)| (k, a.data.iter().flat_map(|x| x.to_le_bytes()).collect(), a))
        .collect();
    let views = bytes
        .iter()
        .map(|(k, b, a)| {
            safetensors::tensor::TensorView::new(Dtype::F32, a.shape.clone(), b)
                .map(|v| (k.as_str(), v))
                .map_err(|e| err(format!("tensor {k:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let data = safetensors::serialize(views, None).map_err(|e| err(e.to_string()))?;
    write_atomic(path, &data).map_err(err)
}

/// Writes `data` to a temporary beside `path`, then renames it into place.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = temp_path(path);
    let result = std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| e.to_string());
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temp_path(path: &Path) -> std::path::PathBuf {
    path.with_file_name(format!(
        ".{}.mlc-tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("mlc-run-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    fn png(path: &Path, color: png::ColorType, w: u32, h: u32, data: &[u8]) {
        let file = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(data).unwrap();
        wr.finish().unwrap();
    }

    #[test]
    fn png_reads_as_planar_rgb_over_255_and_round_trips() {
        let p = tmp("rgb.png");
        // 2 wide, 1 high: (0, 128, 255), (10, 20, 30).
        png(&p, png::ColorType::Rgb, 2, 1, &[0, 128, 255, 10, 20, 30]);
        let a = read_png(&p).unwrap();
        assert_eq!(a.shape, [1, 3, 1, 2]);
        let want: Vec<f32> = [0u8, 10, 128, 20, 255, 30]
            .iter()
            .map(|&v| f32::from(v) / 255.0)
            .collect();
        assert_eq!(a.data, want);
        let q = tmp("again.png");
        write_png(&a, 1.0, &q).unwrap();
        assert_eq!(read_png(&q).unwrap().data, a.data);
    }

    #[test]
    fn png_other_than_8_bit_rgb_is_refused_naming_the_file() {
        let p = tmp("gray.png");
        png(&p, png::ColorType::Grayscale, 2, 1, &[0, 255]);
        let e = read_png(&p).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: a Grayscale PNG of bit depth 8; expected 8-bit RGB",
                p.display()
            )
        );
        let q = tmp("not.png");
        std::fs::write(&q, b"not a png").unwrap();
        let e = read_png(&q).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: not a readable PNG", q.display())),
            "{e}"
        );
    }

    #[test]
    fn safetensors_written_are_read_back_exactly_and_atomically() {
        let p = tmp("out.safetensors");
        let t = BTreeMap::from([
            (
                "latent".to_string(),
                Array::new(vec![1, 2, 1, 2], vec![1.5, -2.25, 3e-8, 4e4]),
            ),
            (
                "other".to_string(),
                Array::new(vec![3], vec![0.0, 1.0, 2.0]),
            ),
        ]);
        write_safetensors(&t, &p).unwrap();
        let back = read_safetensors(&p).unwrap();
        assert_eq!(back.len(), 2);
        for (k, a) in &t {
            assert_eq!(back[k].shape, a.shape);
            assert_eq!(back[k].data, a.data);
        }
        // Into a directory that does not exist: an error naming the path, no temporary left.
        let bad = tmp("missing-dir").join("x.safetensors");
        let e = write_safetensors(&t, &bad).unwrap_err().to_string();
        assert!(e.starts_with(&bad.display().to_string()), "{e}");
        assert!(!temp_path(&bad).exists());
    }
}
