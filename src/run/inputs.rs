//! What `mlc run` feeds a package and where its output goes: a safetensors file, a PNG or token
//! ids read into the function's inputs; the outputs written as a PNG (an image) or safetensors.

use super::{
    feature_shape, features, input_names, is_image_input, is_image_output, is_int_input, read_png,
    read_safetensors, write_png, write_safetensors, FeatureShape, RunError,
};
use crate::kernels::Array;
use crate::package::Package;
use std::collections::BTreeMap;
use std::path::Path;

/// Where a run's inputs come from.
#[derive(Clone, Copy, Debug)]
pub enum InputSource<'a> {
    /// A safetensors file of the inputs by name (or the only input as its only tensor), or a PNG
    /// for a model taking one RGB image.
    File(&'a Path),
    /// Token ids for a text encoder's one input, padded to its length with the last id.
    Tokens(&'a [i64]),
}

/// How a run's outputs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputForm {
    /// The first output as an 8-bit RGB PNG.
    Png,
    /// Every output as an f32 tensor under its name.
    Safetensors,
}

/// Whether `path` ends in `.ext` (any case).
pub fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case(ext))
}

/// How outputs go to `path`: by its extension (.png refused for an output that is no image),
/// else PNG for a model whose one output is an RGB image, safetensors otherwise. Decided before
/// the (slow) evaluation.
pub fn output_form(pkg: &Package, function: &str, path: &Path) -> Result<OutputForm, RunError> {
    let outputs = features(pkg, function).1;
    let bad = |reason: String| RunError::Output {
        path: path.display().to_string(),
        reason,
    };
    let first = outputs
        .first()
        .ok_or_else(|| bad("the model has no outputs".into()))?;
    let shape = feature_shape(pkg, function, &first.name);
    if has_extension(path, "png") {
        return match &shape {
            Some(s) if !s.is_rgb() => Err(bad(format!(
                "the model's output {:?} is {s}, not an image; write it to a .safetensors file",
                first.name
            ))),
            _ => Ok(OutputForm::Png),
        };
    }
    let image = shape.as_ref().is_some_and(FeatureShape::is_rgb) && outputs.len() == 1;
    Ok(match !has_extension(path, "safetensors") && image {
        true => OutputForm::Png,
        false => OutputForm::Safetensors,
    })
}

/// Reads `source` into the inputs of `function`, by input name.
pub fn read_inputs(
    pkg: &Package,
    function: &str,
    source: InputSource,
) -> Result<BTreeMap<String, Array>, RunError> {
    let names = input_names(pkg, function);
    match source {
        InputSource::Tokens(ids) => tokens(pkg, function, &names, ids),
        InputSource::File(path) if has_extension(path, "png") => png(pkg, function, &names, path),
        InputSource::File(path) => {
            let mut tensors = read_safetensors(path)?;
            let mut inputs = BTreeMap::new();
            for name in &names {
                let t = match tensors.remove(name) {
                    Some(t) => t,
                    None if tensors.len() == 1 && names.len() == 1 => {
                        tensors.pop_first().expect("one").1
                    }
                    None => {
                        return Err(RunError::Input {
                            path: path.display().to_string(),
                            reason: format!("no tensor named {name:?} (the model's input)"),
                        })
                    }
                };
                inputs.insert(name.clone(), t);
            }
            Ok(inputs)
        }
    }
}

/// Token ids as the one int32 `[1, N]` input, padded by repeating the last id.
fn tokens(
    pkg: &Package,
    function: &str,
    names: &[String],
    ids: &[i64],
) -> Result<BTreeMap<String, Array>, RunError> {
    let bad = |reason: String| Err(RunError::Tokens(reason));
    let [name] = names else {
        return bad(format!(
            "token ids give one input, but the model takes {}",
            names.join(", ")
        ));
    };
    let len = match feature_shape(pkg, function, name) {
        Some(FeatureShape::Array(s))
            if is_int_input(pkg, function, name) && s.len() == 2 && s[0] == 1 =>
        {
            s[1] as usize
        }
        shape => {
            return bad(format!(
                "the model's input {name:?} is {}, not int32 token ids [1, N]",
                shape.map_or("unknown".to_string(), |s| s.to_string())
            ))
        }
    };
    let Some(&last) = ids.last().filter(|_| ids.len() <= len) else {
        return bad(format!(
            "{} ids given; the model takes 1 to {len}",
            ids.len()
        ));
    };
    let data: Vec<f32> = ids
        .iter()
        .copied()
        .chain(std::iter::repeat(last))
        .take(len)
        .map(|v| v as f32)
        .collect();
    Ok(BTreeMap::from([(
        name.clone(),
        Array::new(vec![1, len], data),
    )]))
}

/// A PNG as the one RGB image input: [0, 1] values for an array (channels last where the input
/// is), 0..255 pixels for a Core ML image.
fn png(
    pkg: &Package,
    function: &str,
    names: &[String],
    path: &Path,
) -> Result<BTreeMap<String, Array>, RunError> {
    let bad = |reason: String| RunError::Input {
        path: path.display().to_string(),
        reason,
    };
    let [name] = names else {
        return Err(bad(format!(
            "a PNG gives one input, but the model takes {}",
            names.join(", ")
        )));
    };
    let mut image = read_png(path)?;
    match &feature_shape(pkg, function, name) {
        Some(s) if !s.is_rgb() => {
            return Err(bad(format!(
            "a PNG is an RGB image, but the model's input {name:?} is {s}; give it as safetensors"
        )))
        }
        Some(s) if s.is_nhwc_rgb() => {
            image = crate::kernels::transpose(&image, &[0, 2, 3, 1]);
        }
        _ => {}
    }
    if is_image_input(pkg, function, name) {
        // A Core ML image input takes the pixels themselves.
        image
            .data
            .iter_mut()
            .for_each(|v| *v = (*v * 255.0).round());
    }
    Ok(BTreeMap::from([(name.clone(), image)]))
}

/// Writes `outputs` to `path` in `form`; returns what was written, by output name (a PNG holds
/// the first output only).
pub fn write_outputs(
    pkg: &Package,
    function: &str,
    outputs: &BTreeMap<String, Array>,
    form: OutputForm,
    path: &Path,
) -> Result<Vec<(String, Vec<usize>)>, RunError> {
    match form {
        OutputForm::Png => {
            let (name, image) = outputs.iter().next().ok_or_else(|| RunError::Output {
                path: path.display().to_string(),
                reason: "the model has no outputs".into(),
            })?;
            let peak = match is_image_output(pkg, function, name) {
                true => 255.0,
                false => 1.0,
            };
            write_png(image, peak, path)?;
            Ok(vec![(name.clone(), image.shape.clone())])
        }
        OutputForm::Safetensors => {
            write_safetensors(outputs, path)?;
            Ok(outputs
                .iter()
                .map(|(n, t)| (n.clone(), t.shape.clone()))
                .collect())
        }
    }
}
