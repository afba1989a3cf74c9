//! What Apple's Swift package `StableDiffusion` (apple/ml-stable-diffusion at e12202c,
//! `swift/StableDiffusion/pipeline/`) reads from a Resources folder: the files per pipeline
//! (`StableDiffusionPipeline+Resources.swift`, `StableDiffusionXL+Resources.swift`) and, per
//! model, the features it feeds and reads (`TextEncoder.swift`, `TextEncoderXL.swift`,
//! `Unet.swift`, `Decoder.swift`, `Encoder.swift`, the pipelines), with the names, shapes and
//! types Apple's converter (`torch2coreml.py`) declares. The tables are data; [`check_model`],
//! [`check_chunks`] and [`check_folder`] hold a model description or a folder against them.
//!
//! How the Swift code reads a model decides what the table demands:
//! - by name: `input_ids` is fed to the text encoder's only input (so exactly one input);
//!   `last_hidden_state`, `hidden_embeds` and `pooled_outputs` are read by name; the UNet's
//!   inputs are fed by name and its latent shape read from `sample`, SDXL's `time_ids` too;
//! - "the first" of a dictionary or set, which is arbitrary unless there is exactly one: the
//!   decoder's and encoder's input, and the output of the UNet, decoder and encoder;
//! - Float32 arrays throughout, converted by Core ML to a declared Float16, except the token
//!   ids, which must be Float32 (49407 has no exact fp16 value); outputs are converted back from
//!   Float16 or Float32, but Apple declares `noise_pred` Float32 and so does this table.
//!
//! Shapes are the arrays' default shapes (what `multiArrayConstraint.shape` gives the Swift
//! code). Sizes the Swift code does not fix ([`Size`]) are bound by the first feature that has
//! them and must agree wherever else they appear; [`check_folder`] also checks them across
//! models (text width, pooled width, latent size).

use crate::proto::specification as spec;
use spec::array_feature_type::ArrayDataType;
use std::collections::BTreeMap;
use std::path::Path;

/// Which Swift pipeline reads the folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipeline {
    /// `StableDiffusionPipeline`: SD 1.x and 2.x.
    Sd,
    /// `StableDiffusionXLPipeline`: SDXL base and refiner.
    Sdxl,
}

/// A compiled model the Swift package may load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    TextEncoder,
    TextEncoder2,
    Unet,
    UnetChunk1,
    UnetChunk2,
    UnetRefiner,
    UnetRefinerChunk1,
    UnetRefinerChunk2,
    VaeDecoder,
    VaeEncoder,
}

impl Part {
    /// The model's name, the bundle's without `.mlmodelc` (`Unet`).
    pub fn name(self) -> &'static str {
        self.file_name().trim_end_matches(".mlmodelc")
    }

    /// The bundle's name in the Resources folder.
    pub const fn file_name(self) -> &'static str {
        match self {
            Part::TextEncoder => "TextEncoder.mlmodelc",
            Part::TextEncoder2 => "TextEncoder2.mlmodelc",
            Part::Unet => "Unet.mlmodelc",
            Part::UnetChunk1 => "UnetChunk1.mlmodelc",
            Part::UnetChunk2 => "UnetChunk2.mlmodelc",
            Part::UnetRefiner => "UnetRefiner.mlmodelc",
            Part::UnetRefinerChunk1 => "UnetRefinerChunk1.mlmodelc",
            Part::UnetRefinerChunk2 => "UnetRefinerChunk2.mlmodelc",
            Part::VaeDecoder => "VAEDecoder.mlmodelc",
            Part::VaeEncoder => "VAEEncoder.mlmodelc",
        }
    }
}

/// Whether the Swift package needs a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Required,
    /// Loaded when present (image-to-image, the refiner, SDXL's first text encoder).
    Optional,
    /// Required unless both chunks of the same model are present, which take precedence.
    UnlessChunked,
    /// One of two chunks: used only when both are present.
    Chunk,
}

/// A file of the Resources folder: a compiled model or a tokenizer file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceFile {
    pub name: &'static str,
    pub part: Option<Part>,
    pub need: Need,
}

const fn model(part: Part, need: Need) -> ResourceFile {
    ResourceFile {
        name: part.file_name(),
        part: Some(part),
        need,
    }
}

const TOKENIZER_FILES: [ResourceFile; 2] = [
    ResourceFile {
        name: super::tokenizer::VOCAB_FILE,
        part: None,
        need: Need::Required,
    },
    ResourceFile {
        name: super::tokenizer::MERGES_FILE,
        part: None,
        need: Need::Required,
    },
];

/// Files of an SD 1.x / 2.x folder. Not made by mlc and not listed: `SafetyChecker.mlmodelc`,
/// `controlnet/`, `ControlledUnet*.mlmodelc`, `MultilingualTextEncoderProjection.mlmodelc`.
pub const SD_FILES: [ResourceFile; 8] = [
    model(Part::TextEncoder, Need::Required),
    model(Part::Unet, Need::UnlessChunked),
    model(Part::UnetChunk1, Need::Chunk),
    model(Part::UnetChunk2, Need::Chunk),
    model(Part::VaeDecoder, Need::Required),
    model(Part::VaeEncoder, Need::Optional),
    TOKENIZER_FILES[0],
    TOKENIZER_FILES[1],
];

/// Files of an SDXL folder. `TextEncoder.mlmodelc` is optional because a refiner-only
/// pipeline runs without it; text to image needs it.
pub const SDXL_FILES: [ResourceFile; 12] = [
    model(Part::TextEncoder, Need::Optional),
    model(Part::TextEncoder2, Need::Required),
    model(Part::Unet, Need::UnlessChunked),
    model(Part::UnetChunk1, Need::Chunk),
    model(Part::UnetChunk2, Need::Chunk),
    model(Part::UnetRefiner, Need::Optional),
    model(Part::UnetRefinerChunk1, Need::Chunk),
    model(Part::UnetRefinerChunk2, Need::Chunk),
    model(Part::VaeDecoder, Need::Required),
    model(Part::VaeEncoder, Need::Optional),
    TOKENIZER_FILES[0],
    TOKENIZER_FILES[1],
];

pub fn files(pipeline: Pipeline) -> &'static [ResourceFile] {
    match pipeline {
        Pipeline::Sd => &SD_FILES,
        Pipeline::Sdxl => &SDXL_FILES,
    }
}

/// A size the Swift code takes from the models rather than fixing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Size {
    /// Width of the text states: the encoder's hidden size; for the SDXL base UNet the sum of
    /// both encoders' widths.
    Text,
    /// Width of SDXL's pooled text embedding (the second encoder's projection).
    Pooled,
    /// Latent height and width (the image's over 8).
    LatentH,
    LatentW,
}

/// One dimension of a feature's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Of(Size),
    /// Eight times a latent size: the image side.
    Image(Size),
}

/// The array types the Swift code works with for a feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Types {
    Float32,
    Float16OrFloat32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub shape: &'static [Dim],
    pub types: Types,
}

/// A model's interface: every input and output, no others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interface {
    pub inputs: &'static [Feature],
    pub outputs: &'static [Feature],
}

use Dim::{Fixed, Image, Of};
use Size::{LatentH, LatentW, Pooled, Text};

const fn f(name: &'static str, shape: &'static [Dim], types: Types) -> Feature {
    Feature { name, shape, types }
}

const IDS: Feature = f("input_ids", &[Fixed(1), Fixed(77)], Types::Float32);
const ANY: Types = Types::Float16OrFloat32;
const SAMPLE: Feature = f(
    "sample",
    &[Fixed(2), Fixed(4), Of(LatentH), Of(LatentW)],
    ANY,
);
const TIMESTEP: Feature = f("timestep", &[Fixed(2)], ANY);
const STATES: Feature = f(
    "encoder_hidden_states",
    &[Fixed(2), Of(Text), Fixed(1), Fixed(77)],
    ANY,
);
const TEXT_EMBEDS: Feature = f("text_embeds", &[Fixed(2), Of(Pooled)], ANY);
const NOISE: Feature = f(
    "noise_pred",
    &[Fixed(2), Fixed(4), Of(LatentH), Of(LatentW)],
    Types::Float32,
);
const POOLED_TEXT: Feature = f("pooled_outputs", &[Fixed(1), Of(Text)], ANY);

pub const SD_TEXT_ENCODER: Interface = Interface {
    inputs: &[IDS],
    outputs: &[
        f("last_hidden_state", &[Fixed(1), Fixed(77), Of(Text)], ANY),
        POOLED_TEXT,
    ],
};

const HIDDEN: Feature = f("hidden_embeds", &[Fixed(1), Fixed(77), Of(Text)], ANY);

/// SDXL's CLIP-L: the penultimate layer's states, no final layer norm.
pub const SDXL_TEXT_ENCODER: Interface = Interface {
    inputs: &[IDS],
    outputs: &[HIDDEN, POOLED_TEXT],
};

/// SDXL's OpenCLIP bigG: the penultimate states and the projected `text_embeds`.
pub const SDXL_TEXT_ENCODER_2: Interface = Interface {
    inputs: &[IDS],
    outputs: &[HIDDEN, f("pooled_outputs", &[Fixed(1), Of(Pooled)], ANY)],
};

/// Batch 2: [negative, prompt], the same timestep twice, states as [2, D, 1, 77].
pub const SD_UNET: Interface = Interface {
    inputs: &[SAMPLE, TIMESTEP, STATES],
    outputs: &[NOISE],
};

/// `time_ids`: original size, crop corner, target size, for both halves of the batch.
pub const SDXL_UNET: Interface = Interface {
    inputs: &[
        SAMPLE,
        TIMESTEP,
        STATES,
        TEXT_EMBEDS,
        f("time_ids", &[Fixed(2), Fixed(6)], ANY),
    ],
    outputs: &[NOISE],
};

/// The refiner: states of the second encoder only, `time_ids` with an aesthetic score in place
/// of the target size (the Swift code tells it from the base by `time_ids`' last dim, 5).
pub const SDXL_REFINER: Interface = Interface {
    inputs: &[
        SAMPLE,
        TIMESTEP,
        STATES,
        TEXT_EMBEDS,
        f("time_ids", &[Fixed(2), Fixed(5)], ANY),
    ],
    outputs: &[NOISE],
};

/// Latents divided by the scale factor (by the Swift code) to an image in [-1, 1].
pub const VAE_DECODER: Interface = Interface {
    inputs: &[f("z", &[Fixed(1), Fixed(4), Of(LatentH), Of(LatentW)], ANY)],
    outputs: &[f(
        "image",
        &[Fixed(1), Fixed(3), Image(LatentH), Image(LatentW)],
        ANY,
    )],
};

/// An image in [-1, 1] to mean (channels 0-3) and log-variance (4-7).
pub const VAE_ENCODER: Interface = Interface {
    inputs: &[f(
        "x",
        &[Fixed(1), Fixed(3), Image(LatentH), Image(LatentW)],
        ANY,
    )],
    outputs: &[f(
        "latent",
        &[Fixed(1), Fixed(8), Of(LatentH), Of(LatentW)],
        ANY,
    )],
};

/// The interface of an unchunked part, or of the model a chunk is half of.
pub fn interface(pipeline: Pipeline, part: Part) -> Interface {
    match (pipeline, part) {
        (Pipeline::Sd, Part::TextEncoder) => SD_TEXT_ENCODER,
        (Pipeline::Sdxl, Part::TextEncoder) => SDXL_TEXT_ENCODER,
        (_, Part::TextEncoder2) => SDXL_TEXT_ENCODER_2,
        (Pipeline::Sd, Part::Unet | Part::UnetChunk1 | Part::UnetChunk2) => SD_UNET,
        (Pipeline::Sdxl, Part::Unet | Part::UnetChunk1 | Part::UnetChunk2) => SDXL_UNET,
        (_, Part::UnetRefiner | Part::UnetRefinerChunk1 | Part::UnetRefinerChunk2) => SDXL_REFINER,
        (_, Part::VaeDecoder) => VAE_DECODER,
        (_, Part::VaeEncoder) => VAE_ENCODER,
    }
}

/// The sizes a model binds.
pub type Sizes = BTreeMap<Size, i64>;

/// A model or folder the Swift package would not read as the table says.
#[derive(Debug, thiserror::Error)]
pub enum SwiftError {
    /// `what` names the file (or the model, for a description held in memory).
    #[error("{what}: {reason}")]
    Model { what: String, reason: String },
    #[error(transparent)]
    Tokenizer(#[from] super::tokenizer::TokenizerError),
    #[error(transparent)]
    Bundle(#[from] crate::mlmodelc::CompileError),
}

fn refuse<T>(what: &str, reason: impl Into<String>) -> Result<T, SwiftError> {
    Err(SwiftError::Model {
        what: what.to_string(),
        reason: reason.into(),
    })
}

/// A feature as the description declares it: name, default shape, array type.
struct Declared<'a> {
    name: &'a str,
    shape: &'a [i64],
    dtype: i32,
}

fn declared<'a>(
    what: &str,
    list: &'a [spec::FeatureDescription],
    kind: &str,
) -> Result<Vec<Declared<'a>>, SwiftError> {
    list.iter()
        .map(
            |d| match d.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
                Some(spec::feature_type::Type::MultiArrayType(a)) => Ok(Declared {
                    name: &d.name,
                    shape: &a.shape,
                    dtype: a.data_type,
                }),
                _ => refuse(
                    what,
                    format!(
                        "{kind} {} is not a multi-array; the Swift pipeline passes multi-arrays",
                        d.name
                    ),
                ),
            },
        )
        .collect()
}

fn description<'a>(
    what: &str,
    model: &'a spec::Model,
) -> Result<&'a spec::ModelDescription, SwiftError> {
    let Some(d) = &model.description else {
        return refuse(what, "has no model description");
    };
    if d.input.is_empty() && !d.functions.is_empty() {
        return refuse(
            what,
            "is a multifunction model; the Swift pipeline loads single-function models",
        );
    }
    Ok(d)
}

/// Checks one declared feature against its table entry, binding sizes in `sizes`.
fn check_feature(
    what: &str,
    kind: &str,
    d: &Declared,
    want: &Feature,
    sizes: &mut Sizes,
) -> Result<(), SwiftError> {
    let ok_type = d.dtype == ArrayDataType::Float32 as i32
        || (want.types == Types::Float16OrFloat32 && d.dtype == ArrayDataType::Float16 as i32);
    if !ok_type {
        let wanted = match want.types {
            Types::Float32 => "Float32",
            Types::Float16OrFloat32 => "Float16 or Float32",
        };
        return refuse(
            what,
            format!(
                "{kind} {} is {}, the Swift pipeline needs {wanted}",
                d.name,
                type_name(d.dtype)
            ),
        );
    }
    let mismatch = || {
        refuse(
            what,
            format!(
                "{kind} {} has shape {:?}, the Swift pipeline uses {}",
                d.name,
                d.shape,
                shape_text(want.shape, sizes)
            ),
        )
    };
    if d.shape.len() != want.shape.len() {
        return mismatch();
    }
    // Bind on a copy: a mismatch reports the shape with the sizes known before this feature.
    let mut bound = sizes.clone();
    for (&got, dim) in d.shape.iter().zip(want.shape) {
        let fits = match *dim {
            Fixed(n) => got == n,
            Of(s) => got > 0 && *bound.entry(s).or_insert(got) == got,
            Image(s) => got > 0 && got % 8 == 0 && *bound.entry(s).or_insert(got / 8) == got / 8,
        };
        if !fits {
            return mismatch();
        }
    }
    *sizes = bound;
    Ok(())
}

fn type_name(dtype: i32) -> String {
    match ArrayDataType::try_from(dtype) {
        Ok(t) => format!("{t:?}"),
        Err(_) => format!("array type {dtype}"),
    }
}

/// `[2, Text, 1, 77]` with the sizes bound so far filled in.
fn shape_text(shape: &[Dim], sizes: &Sizes) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| match *d {
            Fixed(n) => n.to_string(),
            Of(s) => sizes.get(&s).map_or(format!("{s:?}"), |n| n.to_string()),
            Image(s) => sizes
                .get(&s)
                .and_then(|n| n.checked_mul(8))
                .map_or(format!("8*{s:?}"), |n| n.to_string()),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

/// Checks that `declared` holds exactly the features of `want`, in any order.
fn check_exact(
    what: &str,
    kind: &str,
    declared: &[Declared],
    want: &[Feature],
    sizes: &mut Sizes,
) -> Result<(), SwiftError> {
    for w in want {
        let Some(d) = declared.iter().find(|d| d.name == w.name) else {
            let names: Vec<&str> = declared.iter().map(|d| d.name).collect();
            return refuse(
                what,
                format!("no {kind} {} (it has {})", w.name, names.join(", ")),
            );
        };
        check_feature(what, kind, d, w, sizes)?;
    }
    if let Some(extra) = declared
        .iter()
        .find(|d| !want.iter().any(|w| w.name == d.name))
    {
        return refuse(
            what,
            format!(
                "unexpected {kind} {}; the Swift pipeline's model has only {}",
                extra.name,
                want.iter().map(|w| w.name).collect::<Vec<_>>().join(", ")
            ),
        );
    }
    Ok(())
}

/// Checks a model's description against `want`; returns the sizes it binds. `what` names the
/// model in errors.
pub fn check_model(what: &str, model: &spec::Model, want: &Interface) -> Result<Sizes, SwiftError> {
    let d = description(what, model)?;
    let inputs = declared(what, &d.input, "input")?;
    let outputs = declared(what, &d.output, "output")?;
    let mut sizes = Sizes::new();
    check_exact(what, "input", &inputs, want.inputs, &mut sizes)?;
    check_exact(what, "output", &outputs, want.outputs, &mut sizes)?;
    Ok(sizes)
}

/// Checks a chunked model: the Swift code feeds the first chunk the model's inputs and reads
/// the latent shape (and SDXL's `time_ids`) from its description, then feeds the second the
/// first's outputs merged with the model's inputs and reads its only output. So the first
/// chunk's inputs are model inputs including `sample` (and `time_ids`), the second's are
/// model inputs or outputs of the first (same shape and type), together they take every model
/// input, and the second has exactly the model's outputs.
pub fn check_chunks(
    names: [&str; 2],
    chunks: [&spec::Model; 2],
    want: &Interface,
) -> Result<Sizes, SwiftError> {
    let [n1, n2] = names;
    let d1 = description(n1, chunks[0])?;
    let d2 = description(n2, chunks[1])?;
    let in1 = declared(n1, &d1.input, "input")?;
    let out1 = declared(n1, &d1.output, "output")?;
    let in2 = declared(n2, &d2.input, "input")?;
    let out2 = declared(n2, &d2.output, "output")?;
    let mut sizes = Sizes::new();
    for d in &in1 {
        let Some(w) = want.inputs.iter().find(|w| w.name == d.name) else {
            return refuse(
                n1,
                format!("input {} is not an input of the whole model", d.name),
            );
        };
        check_feature(n1, "input", d, w, &mut sizes)?;
    }
    for read in ["sample", "time_ids"] {
        let wanted = want.inputs.iter().any(|w| w.name == read);
        if wanted && !in1.iter().any(|d| d.name == read) {
            return refuse(
                n1,
                format!("no input {read}; the Swift pipeline reads its shape from the first chunk"),
            );
        }
    }
    if out1.is_empty() {
        return refuse(n1, "has no outputs");
    }
    for d in &in2 {
        if let Some(o) = out1.iter().find(|o| o.name == d.name) {
            if o.shape != d.shape || o.dtype != d.dtype {
                return refuse(
                    n2,
                    format!(
                        "input {} is {} {:?}, but {n1} outputs it as {} {:?}",
                        d.name,
                        type_name(d.dtype),
                        d.shape,
                        type_name(o.dtype),
                        o.shape
                    ),
                );
            }
        } else if let Some(w) = want.inputs.iter().find(|w| w.name == d.name) {
            check_feature(n2, "input", d, w, &mut sizes)?;
        } else {
            return refuse(
                n2,
                format!(
                    "input {} is neither an output of {n1} nor an input of the whole model",
                    d.name
                ),
            );
        }
    }
    if let Some(w) = want
        .inputs
        .iter()
        .find(|w| !in1.iter().chain(&in2).any(|d| d.name == w.name))
    {
        return refuse(n1, format!("neither chunk takes input {}", w.name));
    }
    check_exact(n2, "output", &out2, want.outputs, &mut sizes)?;
    Ok(sizes)
}

/// Checks a Resources folder: the files `pipeline` needs, the tokenizer files, each compiled
/// model's interface, and the sizes across models (text widths between the encoders and the
/// UNets, the latent size between the UNets and the VAE). Returns the sizes per part read.
pub fn check_folder(dir: &Path, pipeline: Pipeline) -> Result<BTreeMap<Part, Sizes>, SwiftError> {
    let here = |name: &str| dir.join(name).exists();
    let table = files(pipeline);
    for file in table {
        let chunked = || {
            let pair = file.part.and_then(chunks_of);
            pair.is_some_and(|[a, b]| here(a.file_name()) && here(b.file_name()))
        };
        let missing = !here(file.name);
        let bad = match file.need {
            Need::Required => missing,
            Need::UnlessChunked => missing && !chunked(),
            Need::Optional | Need::Chunk => false,
        };
        if bad {
            return refuse(
                &dir.join(file.name).display().to_string(),
                "missing; the Swift pipeline loads it",
            );
        }
    }
    super::tokenizer::check_files(dir)?;

    let read = |part: Part| crate::mlmodelc::read_bundle(&dir.join(part.file_name()));
    let mut found = BTreeMap::new();
    for file in table {
        let Some(part) = file.part else { continue };
        if file.need == Need::Chunk {
            continue;
        }
        let want = interface(pipeline, part);
        // Chunks take precedence over the whole model, as in the Swift code.
        let pair = chunks_of(part).filter(|[a, b]| here(a.file_name()) && here(b.file_name()));
        let sizes = match pair {
            Some([a, b]) => {
                let names = [a, b].map(|p| dir.join(p.file_name()).display().to_string());
                check_chunks([&names[0], &names[1]], [&read(a)?, &read(b)?], &want)?
            }
            None if here(file.name) => {
                let what = dir.join(file.name).display().to_string();
                check_model(&what, &read(part)?, &want)?
            }
            None => continue,
        };
        found.insert(part, sizes);
    }
    check_across(dir, pipeline, &found)?;
    Ok(found)
}

/// The two chunk files that replace `part`.
fn chunks_of(part: Part) -> Option<[Part; 2]> {
    match part {
        Part::Unet => Some([Part::UnetChunk1, Part::UnetChunk2]),
        Part::UnetRefiner => Some([Part::UnetRefinerChunk1, Part::UnetRefinerChunk2]),
        _ => None,
    }
}

/// Sizes that one model produces and another consumes must agree.
fn check_across(
    dir: &Path,
    pipeline: Pipeline,
    found: &BTreeMap<Part, Sizes>,
) -> Result<(), SwiftError> {
    let size = |part: Part, s: Size| found.get(&part).and_then(|m| m.get(&s)).copied();
    let text = size(Part::TextEncoder, Text);
    let text2 = size(Part::TextEncoder2, Text);
    let pooled2 = size(Part::TextEncoder2, Pooled);
    let base_text = match pipeline {
        Pipeline::Sd => text,
        Pipeline::Sdxl => text.zip(text2).and_then(|(a, b)| a.checked_add(b)),
    };
    let mut pairs = vec![(
        "Unet's text width".to_string(),
        size(Part::Unet, Text),
        "the text encoders' width".to_string(),
        base_text,
    )];
    if pipeline == Pipeline::Sdxl {
        let pooled = "TextEncoder2's pooled width".to_string();
        pairs.push((
            "Unet's text_embeds width".into(),
            size(Part::Unet, Pooled),
            pooled.clone(),
            pooled2,
        ));
        pairs.push((
            "UnetRefiner's text width".into(),
            size(Part::UnetRefiner, Text),
            "TextEncoder2's width".into(),
            text2,
        ));
        pairs.push((
            "UnetRefiner's text_embeds width".into(),
            size(Part::UnetRefiner, Pooled),
            pooled,
            pooled2,
        ));
    }
    for part in [Part::VaeDecoder, Part::VaeEncoder, Part::UnetRefiner] {
        for (s, side) in [(LatentH, "height"), (LatentW, "width")] {
            pairs.push((
                format!("Unet's latent {side}"),
                size(Part::Unet, s),
                format!("{}'s latent {side}", part.file_name()),
                size(part, s),
            ));
        }
    }
    for (a, x, b, y) in pairs {
        if let (Some(x), Some(y)) = (x, y) {
            if x != y {
                return refuse(
                    &dir.display().to_string(),
                    format!("{a} is {x} but {b} is {y}"),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::lower::{lower, FeatureTypes, ModelInfo};
    use crate::mil::Target;
    use std::path::PathBuf;

    /// Writes the graph `ir` as `<name>.mlpackage` in `dir`, compiles it to `<name>.mlmodelc`
    /// beside it, and returns both read back.
    fn build(dir: &Path, name: &str, ir: &str) -> [spec::Model; 2] {
        let g = crate::ir::parse::parse(ir).unwrap_or_else(|e| panic!("{name}: {e}\n{ir}"));
        let l = lower(
            &g,
            Target::Ios16,
            &ModelInfo::default(),
            &FeatureTypes::default(),
        )
        .unwrap();
        let pkg = dir.join(format!("{name}.mlpackage"));
        crate::package::write_package(&pkg, &l.model, l.weight_bin.as_deref()).unwrap();
        let bundle = dir.join(format!("{name}.mlmodelc"));
        crate::mlmodelc::compile(&pkg, &bundle, &Default::default()).unwrap();
        [
            crate::package::read_package(&pkg).unwrap().model,
            crate::mlmodelc::read_bundle(&bundle).unwrap(),
        ]
    }

    /// A text encoder of width `d` with the given output names; `ids` is the input's type.
    fn text_encoder(d: usize, ids: &str, hidden: &str, pooled_width: usize) -> String {
        format!(
            "graph te {{
  %input_ids: {ids}[1,77] = input(\"input_ids\")
  %i: fp32[1,77] = cast(%input_ids) dtype=fp32
  %r: fp32[1,77,1] = reshape(%i) shape=[1, 77, 1]
  %{hidden}: fp32[1,77,{d}] = tile(%r) reps=[1, 1, {d}]
  %m: fp32[1,1] = reduce_mean(%r) axes=[1] keep_dims=false
  %pooled_outputs: fp32[1,{pooled_width}] = tile(%m) reps=[1, {pooled_width}]
  return {hidden}=%{hidden}, pooled_outputs=%pooled_outputs
}}
"
        )
    }

    /// A UNet stand-in: fp16 inputs (`states` the shape of the text states), `noise_pred` of
    /// type `out` from all of them.
    fn unet(h: usize, w: usize, states: &str, out: &str) -> String {
        let rank = states.split(',').count();
        let axes = (1..rank)
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "graph unet {{
  %sample: fp16[2,4,{h},{w}] = input(\"sample\")
  %timestep: fp16[2] = input(\"timestep\")
  %encoder_hidden_states: fp16[{states}] = input(\"encoder_hidden_states\")
  %t: fp16[2,1,1,1] = reshape(%timestep) shape=[2, 1, 1, 1]
  %m: fp16[2,4,{h},{w}] = mul(%sample, %t)
  %e0: fp16[2] = reduce_mean(%encoder_hidden_states) axes=[{axes}] keep_dims=false
  %e: fp16[2,1,1,1] = reshape(%e0) shape=[2, 1, 1, 1]
  %a: fp16[2,4,{h},{w}] = add(%m, %e)
  %noise_pred: {out}[2,4,{h},{w}] = cast(%a) dtype={out}
  return noise_pred=%noise_pred
}}
"
        )
    }

    fn sd_unet(d: usize, h: usize, w: usize) -> String {
        unet(h, w, &format!("2,{d},1,77"), "fp32")
    }

    fn decoder(h: usize, w: usize) -> String {
        let (ih, iw) = (8 * h, 8 * w);
        format!(
            "graph dec {{
  %z: fp16[1,4,{h},{w}] = input(\"z\")
  %m: fp16[1,1,{h},{w}] = reduce_mean(%z) axes=[1] keep_dims=true
  %image: fp16[1,3,{ih},{iw}] = tile(%m) reps=[1, 3, 8, 8]
  return image=%image
}}
"
        )
    }

    fn encoder(h: usize, w: usize) -> String {
        let (ih, iw) = (8 * h, 8 * w);
        let n = 3 * ih * iw / 8;
        format!(
            "graph enc {{
  %x: fp16[1,3,{ih},{iw}] = input(\"x\")
  %r: fp16[1,8,{n}] = reshape(%x) shape=[1, 8, {n}]
  %m: fp16[1,8,1] = reduce_mean(%r) axes=[2] keep_dims=true
  %s: fp16[1,8,1,1] = reshape(%m) shape=[1, 8, 1, 1]
  %latent: fp16[1,8,{h},{w}] = tile(%s) reps=[1, 1, {h}, {w}]
  return latent=%latent
}}
"
        )
    }

    fn sizes(pairs: &[(Size, i64)]) -> Sizes {
        pairs.iter().copied().collect()
    }

    /// The error of checking `ir` against `want`, the same from the package and the bundle.
    fn refusal(ir: &str, want: &Interface) -> String {
        let dir = tempfile::tempdir().unwrap();
        let [pkg, bundle] = build(dir.path(), "m", ir);
        let e = check_model("M", &pkg, want).unwrap_err().to_string();
        assert_eq!(check_model("M", &bundle, want).unwrap_err().to_string(), e);
        assert!(e.starts_with("M: ") && !e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn models_built_with_the_swift_interface_pass() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                text_encoder(64, "fp32", "last_hidden_state", 64),
                SD_TEXT_ENCODER,
                sizes(&[(Text, 64)]),
            ),
            (
                text_encoder(48, "fp32", "hidden_embeds", 48),
                SDXL_TEXT_ENCODER,
                sizes(&[(Text, 48)]),
            ),
            (
                text_encoder(80, "fp32", "hidden_embeds", 96),
                SDXL_TEXT_ENCODER_2,
                sizes(&[(Text, 80), (Pooled, 96)]),
            ),
            (
                sd_unet(64, 8, 6),
                SD_UNET,
                sizes(&[(Text, 64), (LatentH, 8), (LatentW, 6)]),
            ),
            (
                decoder(8, 6),
                VAE_DECODER,
                sizes(&[(LatentH, 8), (LatentW, 6)]),
            ),
            (
                encoder(8, 6),
                VAE_ENCODER,
                sizes(&[(LatentH, 8), (LatentW, 6)]),
            ),
        ];
        for (i, (ir, want, bound)) in cases.iter().enumerate() {
            for model in build(dir.path(), &format!("m{i}"), ir) {
                assert_eq!(check_model("m", &model, want).unwrap(), *bound, "case {i}");
            }
        }
    }

    #[test]
    fn models_off_the_table_are_refused_naming_the_feature() {
        let e = refusal(
            &text_encoder(64, "fp16", "last_hidden_state", 64),
            &SD_TEXT_ENCODER,
        );
        assert!(
            e.ends_with("input input_ids is Float16, the Swift pipeline needs Float32"),
            "{e}"
        );
        let e = refusal(
            &text_encoder(64, "fp32", "hidden_embeds", 64),
            &SD_TEXT_ENCODER,
        );
        assert!(
            e.ends_with("no output last_hidden_state (it has hidden_embeds, pooled_outputs)"),
            "{e}"
        );
        let e = refusal(
            &text_encoder(64, "fp32", "last_hidden_state", 32),
            &SD_TEXT_ENCODER,
        );
        assert!(
            e.ends_with("output pooled_outputs has shape [1, 32], the Swift pipeline uses [1, 64]"),
            "{e}"
        );
        // The transformers layout [2, 77, D] instead of the Swift pipeline's [2, D, 1, 77].
        let e = refusal(&unet(8, 8, "2,77,64", "fp32"), &SD_UNET);
        assert!(
            e.ends_with("input encoder_hidden_states has shape [2, 77, 64], the Swift pipeline uses [2, Text, 1, 77]"),
            "{e}"
        );
        let e = refusal(&unet(8, 8, "2,64,1,77", "fp16"), &SD_UNET);
        assert!(
            e.ends_with("output noise_pred is Float16, the Swift pipeline needs Float32"),
            "{e}"
        );
        let e = refusal(&sd_unet(64, 8, 8), &SDXL_UNET);
        assert!(
            e.ends_with("no input text_embeds (it has sample, timestep, encoder_hidden_states)"),
            "{e}"
        );
        let e = refusal(
            &decoder(8, 8)
                .replace("\"z\"", "\"latent\"")
                .replace("%z", "%latent"),
            &VAE_DECODER,
        );
        assert!(e.ends_with("no input z (it has latent)"), "{e}");
        // A second output makes "the first output" the Swift code reads arbitrary.
        let two = decoder(8, 8).replace("return image=%image", "return image=%image, m=%m");
        let e = refusal(&two, &VAE_DECODER);
        assert!(
            e.ends_with("unexpected output m; the Swift pipeline's model has only image"),
            "{e}"
        );
        // The image must be 8 times the latent.
        let e = refusal(
            &decoder(8, 8)
                .replace("reps=[1, 3, 8, 8]", "reps=[1, 3, 4, 4]")
                .replace("[1,3,64,64]", "[1,3,32,32]"),
            &VAE_DECODER,
        );
        assert!(
            e.ends_with(
                "output image has shape [1, 3, 32, 32], the Swift pipeline uses [1, 3, 64, 64]"
            ),
            "{e}"
        );
    }

    /// A chunk pair: the first takes `first_inputs` (of sample, timestep, states) and outputs
    /// `h`; the second takes `h` and the rest.
    fn chunks(d: usize, second_takes_timestep: bool) -> [String; 2] {
        let first = format!(
            "graph c1 {{
  %sample: fp16[2,4,8,8] = input(\"sample\")
  %encoder_hidden_states: fp16[2,{d},1,77] = input(\"encoder_hidden_states\")
  %e: fp16[2,1,1,1] = reduce_mean(%encoder_hidden_states) axes=[1, 2, 3] keep_dims=true
  %h: fp16[2,4,8,8] = add(%sample, %e)
  return h=%h
}}
"
        );
        let t = if second_takes_timestep {
            "timestep"
        } else {
            "tstep"
        };
        let second = format!(
            "graph c2 {{
  %h: fp16[2,4,8,8] = input(\"h\")
  %{t}: fp16[2] = input(\"{t}\")
  %t: fp16[2,1,1,1] = reshape(%{t}) shape=[2, 1, 1, 1]
  %m: fp16[2,4,8,8] = mul(%h, %t)
  %noise_pred: fp32[2,4,8,8] = cast(%m) dtype=fp32
  return noise_pred=%noise_pred
}}
"
        );
        [first, second]
    }

    #[test]
    fn chunk_pairs_are_checked_as_the_swift_code_chains_them() {
        let dir = tempfile::tempdir().unwrap();
        let [c1, c2] = chunks(64, true);
        let [p1, b1] = build(dir.path(), "c1", &c1);
        let [p2, b2] = build(dir.path(), "c2", &c2);
        let got = check_chunks(["C1", "C2"], [&p1, &p2], &SD_UNET).unwrap();
        assert_eq!(got, sizes(&[(Text, 64), (LatentH, 8), (LatentW, 8)]));
        assert_eq!(
            check_chunks(["C1", "C2"], [&b1, &b2], &SD_UNET).unwrap(),
            got
        );

        let e = check_chunks(["C1", "C2"], [&p2, &p1], &SD_UNET)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "C1: input h is not an input of the whole model");
        let [_, c2] = chunks(64, false);
        let [p2, _] = build(dir.path(), "c2b", &c2);
        let e = check_chunks(["C1", "C2"], [&p1, &p2], &SD_UNET)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "C2: input tstep is neither an output of C1 nor an input of the whole model"
        );
        let e = check_chunks(["C1", "C2"], [&p1, &p1], &SD_UNET)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "C1: neither chunk takes input timestep");
        let e = check_chunks(["C1", "C2"], [&p1, &p2], &SDXL_UNET)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "C1: no input time_ids; the Swift pipeline reads its shape from the first chunk"
        );
    }

    /// An SD Resources folder in `dir`, with a UNet of text width `unet_d`.
    fn sd_folder(dir: &Path, unet_d: usize) -> PathBuf {
        let res = dir.join("Resources");
        std::fs::create_dir(&res).unwrap();
        for (name, ir) in [
            (
                "TextEncoder",
                text_encoder(64, "fp32", "last_hidden_state", 64),
            ),
            ("Unet", sd_unet(unet_d, 8, 8)),
            ("VAEDecoder", decoder(8, 8)),
            ("VAEEncoder", encoder(8, 8)),
        ] {
            build(&res, name, &ir);
        }
        super::super::tokenizer::write_files(&res).unwrap();
        res
    }

    #[test]
    fn folders_are_checked_file_by_file_and_across_models() {
        let dir = tempfile::tempdir().unwrap();
        let res = sd_folder(dir.path(), 64);
        let found = check_folder(&res, Pipeline::Sd).unwrap();
        assert_eq!(
            found.keys().copied().collect::<Vec<_>>(),
            [
                Part::TextEncoder,
                Part::Unet,
                Part::VaeDecoder,
                Part::VaeEncoder
            ]
        );
        assert_eq!(
            found[&Part::Unet],
            sizes(&[(Text, 64), (LatentH, 8), (LatentW, 8)])
        );
        // SDXL wants TextEncoder2.mlmodelc.
        let e = check_folder(&res, Pipeline::Sdxl).unwrap_err().to_string();
        assert!(
            e.ends_with("TextEncoder2.mlmodelc: missing; the Swift pipeline loads it"),
            "{e}"
        );

        // Chunks replace the UNet, and take precedence over it when both are there.
        let [c1, c2] = chunks(64, true);
        build(&res, "UnetChunk1", &c1);
        build(&res, "UnetChunk2", &c2);
        std::fs::remove_dir_all(res.join("Unet.mlmodelc")).unwrap();
        let found = check_folder(&res, Pipeline::Sd).unwrap();
        assert_eq!(found[&Part::Unet][&Text], 64);
        std::fs::remove_dir_all(res.join("UnetChunk2.mlmodelc")).unwrap();
        let e = check_folder(&res, Pipeline::Sd).unwrap_err().to_string();
        assert!(
            e.ends_with("Unet.mlmodelc: missing; the Swift pipeline loads it"),
            "{e}"
        );

        std::fs::remove_file(res.join("merges.txt")).unwrap();
        build(&res, "Unet", &sd_unet(64, 8, 8));
        let e = check_folder(&res, Pipeline::Sd).unwrap_err().to_string();
        assert!(
            e.ends_with("merges.txt: missing; the Swift pipeline loads it"),
            "{e}"
        );
        std::fs::write(res.join("merges.txt"), "#version: 0.2\na\n").unwrap();
        let e = check_folder(&res, Pipeline::Sd).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "merges.txt: line 2: expected two symbols separated by one space, found \"a\""
            ),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let res = sd_folder(dir.path(), 32);
        let e = check_folder(&res, Pipeline::Sd).unwrap_err().to_string();
        assert!(
            e.ends_with("Resources: Unet's text width is 32 but the text encoders' width is 64"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let res = sd_folder(dir.path(), 64);
        build(&res, "VAEDecoder", &decoder(4, 8));
        let e = check_folder(&res, Pipeline::Sd).unwrap_err().to_string();
        assert!(
            e.ends_with("Unet's latent height is 8 but VAEDecoder.mlmodelc's latent height is 4"),
            "{e}"
        );
    }

    #[test]
    fn sdxl_folders_check_both_encoders_against_the_unets() {
        let dir = tempfile::tempdir().unwrap();
        let res = dir.path();
        build(
            res,
            "TextEncoder",
            &text_encoder(48, "fp32", "hidden_embeds", 48),
        );
        build(
            res,
            "TextEncoder2",
            &text_encoder(80, "fp32", "hidden_embeds", 96),
        );
        let xl = |d: usize, pooled: usize, ids: usize| {
            unet(8, 8, &format!("2,{d},1,77"), "fp32")
                .replace(
                    "  %t: fp16",
                    &format!("  %text_embeds: fp16[2,{pooled}] = input(\"text_embeds\")\n  %time_ids: fp16[2,{ids}] = input(\"time_ids\")\n  %t: fp16"),
                )
        };
        build(res, "Unet", &xl(128, 96, 6));
        build(res, "UnetRefiner", &xl(80, 96, 5));
        build(res, "VAEDecoder", &decoder(8, 8));
        super::super::tokenizer::write_files(res).unwrap();
        let found = check_folder(res, Pipeline::Sdxl).unwrap();
        assert_eq!(
            found[&Part::Unet],
            sizes(&[(Text, 128), (Pooled, 96), (LatentH, 8), (LatentW, 8)])
        );
        assert_eq!(found[&Part::UnetRefiner][&Text], 80);

        build(res, "UnetRefiner", &xl(128, 96, 5));
        let e = check_folder(res, Pipeline::Sdxl).unwrap_err().to_string();
        assert!(
            e.ends_with("UnetRefiner's text width is 128 but TextEncoder2's width is 80"),
            "{e}"
        );
        build(res, "UnetRefiner", &xl(80, 96, 6));
        let e = check_folder(res, Pipeline::Sdxl).unwrap_err().to_string();
        assert!(e.ends_with("UnetRefiner.mlmodelc: input time_ids has shape [2, 6], the Swift pipeline uses [2, 5]"), "{e}");
        std::fs::remove_dir_all(res.join("UnetRefiner.mlmodelc")).unwrap();
        build(res, "Unet", &xl(128, 64, 6));
        let e = check_folder(res, Pipeline::Sdxl).unwrap_err().to_string();
        assert!(
            e.ends_with("Unet's text_embeds width is 64 but TextEncoder2's pooled width is 96"),
            "{e}"
        );
    }
}
