//! `--calibration PATH` into model inputs.
//!
//! PATH is a folder of photos (its `.png`, `.jpg` and `.jpeg` files, in sorted name order;
//! other files and hidden ones are skipped), a single photo, or a safetensors file holding each
//! model input under its name (or as its only tensor, for a one-input model), either with the
//! input's shape or as a batch `[N, ...]` of N samples. Photos become inputs as [`ImageFeed`]
//! says: directly (an encoder) or through the matching encoder (a decoder).

use super::image;
use super::{Calibration, CalibrationError, MAX_SAMPLES, MAX_SAMPLE_BYTES};
use crate::ir::Graph;
use crate::kernels::Array;
use crate::models::{EncoderWeights, Interface, Model, ModelOptions, Part, Role};
use crate::passes::specialize_shapes::Bindings;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a calibration set must provide.
#[derive(Clone, Debug)]
pub struct SampleSpec {
    /// Every input of the calibrated graph and the shape each sample has.
    pub inputs: Vec<(String, Vec<usize>)>,
    pub images: ImageFeed,
    /// Scale photos smaller than the model's size up instead of refusing them.
    pub upscale: bool,
}

/// How a photo becomes the model's input.
#[derive(Clone, Debug)]
pub enum ImageFeed {
    /// The model takes no photos (the reason says why); only a safetensors file calibrates it.
    Refused(String),
    /// The photo, `size` = `[height, width]`, is input `input` itself, with [0, 1] mapped to
    /// `range`.
    Direct {
        input: String,
        size: [usize; 2],
        range: (f32, f32),
    },
    /// The photo goes through `encoder` (an f32 IR graph at the fixed size, taking its one input
    /// in `range`), whose first output is input `input`.
    Encoded {
        input: String,
        size: [usize; 2],
        range: (f32, f32),
        encoder: Box<Graph>,
    },
}

impl SampleSpec {
    /// The spec for `part` of `model` built with the interface `iface` (the build plan's, under
    /// `options` and the feature edits: samples are keyed by the package's names) at the sizes
    /// `b`: its inputs, and how photos feed it. `weights` is the part's weights file (a full
    /// autoencoder's encoder is read from it); `encoder_weights` overrides where the encoder of
    /// a decoder comes from.
    pub fn for_model(
        model: &dyn Model,
        part: Part,
        iface: &Interface,
        options: &ModelOptions,
        b: &Bindings,
        weights: Option<&Path>,
        encoder_weights: Option<&Path>,
    ) -> Result<SampleSpec, CalibrationError> {
        let inputs = iface
            .inputs
            .iter()
            .map(|f| {
                let shape: Option<Vec<usize>> = f
                    .shape
                    .iter()
                    .map(|d| d.resolve(&|s| b.get(s).copied()))
                    .collect();
                shape.map(|s| (f.name.clone(), s)).ok_or_else(|| {
                    CalibrationError::Model(format!("input {} has no fixed size", f.name))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Only photos need the encoder: without it a safetensors file still calibrates.
        let images = image_feed(model, part, iface, options, b, weights, encoder_weights)
            .unwrap_or_else(|e| {
                ImageFeed::Refused(match e {
                    CalibrationError::Model(m) => m,
                    e => e.to_string(),
                })
            });
        Ok(SampleSpec {
            inputs,
            images,
            upscale: false,
        })
    }
}

fn image_feed(
    model: &dyn Model,
    part: Part,
    iface: &Interface,
    options: &ModelOptions,
    b: &Bindings,
    weights: Option<&Path>,
    encoder_weights: Option<&Path>,
) -> Result<ImageFeed, CalibrationError> {
    let bad = |r: String| CalibrationError::Model(r);
    let image = iface.inputs.iter().find(|f| f.role == Role::Image);
    if let (Some(f), [_]) = (image, &iface.inputs[..]) {
        let size = iface
            .size_of(Role::Image, b)
            .ok_or_else(|| bad(format!("{} has no image size", f.name)))?;
        return Ok(ImageFeed::Direct {
            input: f.name.clone(),
            size,
            range: f.image.map_or((0.0, 1.0), |i| i.range),
        });
    }
    let (Some(how), [latent]) = (model.calibration_encoder(part), &iface.inputs[..]) else {
        return Ok(ImageFeed::Refused(format!(
            "{} {part} takes no images; give its inputs as a safetensors file",
            model.name()
        )));
    };
    if latent.role != Role::Latent {
        return Ok(ImageFeed::Refused(format!(
            "{} {part} takes {}, not images",
            model.name(),
            latent.role.name()
        )));
    }
    if options.packed_input {
        return Ok(ImageFeed::Refused(format!(
            "{} {part} with packed input: photos give unpacked latents; give the packed latents \
             as a safetensors file",
            model.name()
        )));
    }
    let size = iface
        .size_of(Role::Image, b)
        .ok_or_else(|| bad(format!("{} {part} has no image size", model.name())))?;
    let path: PathBuf = match (encoder_weights, how) {
        (Some(p), _) => p.to_path_buf(),
        (None, EncoderWeights::SameFile) => weights
            .ok_or_else(|| {
                bad(format!(
                    "the {} encoder is read from the decoder's weights file; give it \
                     (--encoder-weights)",
                    model.name()
                ))
            })?
            .to_path_buf(),
        (None, EncoderWeights::Separate) => match model.published(Part::ENCODER) {
            Some(src) => {
                crate::hub::resolve(src, &crate::hub::HubConfig::from_env())
                    .map_err(|e| bad(format!("the published {} encoder: {e}", model.name())))?
                    .path
            }
            None => {
                return Err(bad(format!(
                    "photos for a {} {part} are encoded into latents by its encoder, and no \
                     published encoder weights are known: give them with --encoder-weights",
                    model.name()
                )))
            }
        },
    };
    let enc_options = ModelOptions {
        latent_scaling: options.latent_scaling,
        ..ModelOptions::default()
    };
    // The encoder is a graph of its own, not the package's: its own interface, no edits.
    let enc_iface = model.interface(Part::ENCODER, &enc_options);
    let enc_b = enc_iface
        .bindings(Role::Image, size)
        .map_err(|e| bad(format!("the {} encoder: {e}", model.name())))?;
    let w = crate::weights::open(&path)
        .map_err(crate::models::ModelError::from)
        .and_then(|source| model.load(Part::ENCODER, &*source, &enc_options))
        .map_err(|e| bad(format!("encoder weights: {e}")))?;
    let encoder = model
        .build_owned(Part::ENCODER, w, &enc_b, &enc_options)
        .map_err(|e| bad(format!("encoder: {e}")))?;
    let range = enc_iface
        .inputs
        .first()
        .and_then(|f| f.image)
        .map_or((0.0, 1.0), |i| i.range);
    Ok(ImageFeed::Encoded {
        input: latent.name.clone(),
        size,
        range,
        encoder: Box::new(encoder),
    })
}

/// See the module docs.
pub fn load(path: &Path, spec: &SampleSpec) -> Result<Calibration, CalibrationError> {
    let at = path.display().to_string();
    let bad = |reason: String| CalibrationError::Input {
        path: at.clone(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.is_dir() {
        let files = image_files(path).map_err(bad)?;
        if files.is_empty() {
            return Err(bad("the folder holds no .png, .jpg or .jpeg file".into()));
        }
        from_images(&files, spec)
    } else if has_extension(path, "safetensors") {
        from_safetensors(path, meta.len(), spec)
    } else {
        from_images(&[path.to_path_buf()], spec)
    }
}

fn has_extension(p: &Path, ext: &str) -> bool {
    p.extension()
        .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case(ext))
}

/// The folder's photos in sorted order, at most [`MAX_SAMPLES`].
fn image_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        let p = entry.path();
        let photo = ["png", "jpg", "jpeg"].iter().any(|e| has_extension(&p, e));
        if photo && !name.to_string_lossy().starts_with('.') {
            files.push(p);
            if files.len() > MAX_SAMPLES {
                return Err(format!(
                    "more than {MAX_SAMPLES} photos; calibrate on a smaller folder"
                ));
            }
        }
    }
    files.sort();
    Ok(files)
}

fn from_images(files: &[PathBuf], spec: &SampleSpec) -> Result<Calibration, CalibrationError> {
    let (input, size, range, encoder) = match &spec.images {
        ImageFeed::Refused(why) => {
            return Err(CalibrationError::Input {
                path: files[0].display().to_string(),
                reason: why.clone(),
            })
        }
        ImageFeed::Direct { input, size, range } => (input, *size, *range, None),
        ImageFeed::Encoded {
            input,
            size,
            range,
            encoder,
        } => (input, *size, *range, Some(encoder.as_ref())),
    };
    let expected = spec
        .inputs
        .iter()
        .find(|(n, _)| n == input)
        .map(|(_, s)| s.clone());
    let mut samples = Vec::with_capacity(files.len());
    let mut sources = Vec::with_capacity(files.len());
    let mut bytes = 0u64;
    for f in files {
        let at = f.display().to_string();
        let bad = |reason: String| CalibrationError::Input {
            path: at.clone(),
            reason,
        };
        let img = image::decode(f).map_err(bad)?;
        let mut x = image::fit(&img, size, spec.upscale).map_err(|e| {
            bad(if spec.upscale {
                e
            } else {
                format!("{e} (photos are scaled down, never up)")
            })
        })?;
        let (lo, hi) = range;
        if (lo, hi) != (0.0, 1.0) {
            x.data.iter_mut().for_each(|v| *v = lo + *v * (hi - lo));
        }
        if let Some(enc) = encoder {
            let name = match enc.inputs().first().map(|&v| &enc.node(v).op) {
                Some(crate::ir::Op::Input { name }) => name.clone(),
                _ => "image".to_string(),
            };
            let out =
                crate::ir::eval::evaluate(enc, &BTreeMap::from([(name, x)])).map_err(|e| {
                    CalibrationError::Eval {
                        sample: at.clone(),
                        reason: format!("encoding: {e}"),
                    }
                })?;
            x = out
                .into_values()
                .next()
                .ok_or_else(|| CalibrationError::Eval {
                    sample: at.clone(),
                    reason: "the encoder has no output".into(),
                })?;
        }
        if let Some(s) = &expected {
            if &x.shape != s {
                return Err(bad(format!(
                    "the photo gives input {input:?} of shape {:?}, the model takes {s:?}",
                    x.shape
                )));
            }
        }
        bytes = bytes.saturating_add(4 * x.data.len() as u64);
        if bytes > MAX_SAMPLE_BYTES {
            return Err(bad(format!(
                "the samples so far take more than {MAX_SAMPLE_BYTES} bytes; calibrate on fewer \
                 photos"
            )));
        }
        samples.push(x);
        sources.push(at);
    }
    Calibration::from_samples(BTreeMap::from([(input.clone(), samples)]), sources)
}

fn from_safetensors(
    path: &Path,
    len: u64,
    spec: &SampleSpec,
) -> Result<Calibration, CalibrationError> {
    let at = path.display().to_string();
    let bad = |reason: String| CalibrationError::Input {
        path: at.clone(),
        reason,
    };
    if len > MAX_SAMPLE_BYTES {
        return Err(bad(format!(
            "{len} bytes, more than the {MAX_SAMPLE_BYTES} a calibration set may take"
        )));
    }
    let mut tensors = crate::run::read_safetensors(path).map_err(|e| bad(e.to_string()))?;
    let single = tensors.len() == 1 && spec.inputs.len() == 1;
    let mut inputs = BTreeMap::new();
    let mut count: Option<usize> = None;
    for (name, shape) in &spec.inputs {
        let (found_as, t) = match tensors.remove_entry(name) {
            Some(t) => t,
            None if single => tensors.pop_first().expect("one tensor"),
            None => {
                return Err(bad(format!(
                    "no tensor {name:?} (the model's input of shape {shape:?})"
                )))
            }
        };
        // One sample of the input's shape, or a batch of them along a batch axis of size 1.
        let n = if &t.shape == shape {
            1
        } else if shape.first() == Some(&1)
            && t.shape.len() == shape.len()
            && t.shape[1..] == shape[1..]
            && t.shape[0] > 0
        {
            t.shape[0]
        } else {
            return Err(bad(format!(
                "tensor {found_as:?} has shape {:?}, expected {shape:?} (or a batch [N, ...] of \
                 it)",
                t.shape
            )));
        };
        if n > MAX_SAMPLES {
            return Err(bad(format!(
                "tensor {found_as:?} holds {n} samples, more than {MAX_SAMPLES}"
            )));
        }
        if count.is_some_and(|c| c != n) {
            return Err(bad(format!(
                "tensor {found_as:?} holds {n} samples, the other inputs {}",
                count.unwrap_or(0)
            )));
        }
        count = Some(n);
        let per: usize = shape.iter().product();
        let samples: Vec<Array> = t
            .data
            .chunks_exact(per.max(1))
            .take(n)
            .map(|c| Array::new(shape.clone(), c.to_vec()))
            .collect();
        inputs.insert(name.clone(), samples);
    }
    let n = count.ok_or_else(|| bad("the model has no inputs".into()))?;
    let sources = (0..n).map(|i| format!("{at}[{i}]")).collect();
    Calibration::from_samples(inputs, sources)
}
