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
            Image(s) => match got.checked_rem(8) {
                Some(0) if got > 0 => *bound.entry(s).or_insert(got / 8) == got / 8,
                _ => false,
            },
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
    let disagree = |what: String| refuse(&dir.display().to_string(), what);
    let text = size(Part::TextEncoder, Text);
    let text2 = size(Part::TextEncoder2, Text);
    let pooled2 = size(Part::TextEncoder2, Pooled);
    let base_text = match pipeline {
        Pipeline::Sd => text,
        Pipeline::Sdxl => text.zip(text2).and_then(|(a, b)| a.checked_add(b)),
    };
    let mut pairs = vec![(
        "Unet text width",
        size(Part::Unet, Text),
        "the text encoders' width",
        base_text,
    )];
    if pipeline == Pipeline::Sdxl {
        pairs.push((
            "Unet text_embeds width",
            size(Part::Unet, Pooled),
            "TextEncoder2's pooled width",
            pooled2,
        ));
        pairs.push((
            "UnetRefiner text width",
            size(Part::UnetRefiner, Text),
            "TextEncoder2's width",
            text2,
        ));
        pairs.push((
            "UnetRefiner text_embeds width",
            size(Part::UnetRefiner, Pooled),
            "TextEncoder2's pooled width",
            pooled2,
        ));
    }
    for part in [Part::VaeDecoder, Part::VaeEncoder, Part::UnetRefiner] {
        for s in [LatentH, LatentW] {
            pairs.push((
                "the Unet's latent size",
                size(Part::Unet, s),
                part.file_name(),
                size(part, s),
            ));
        }
    }
    for (a, x, b, y) in pairs {
        if let (Some(x), Some(y)) = (x, y) {
            if x != y {
                return disagree(format!("{a} is {x} but {b} gives {y}"));
            }
        }
    }
    Ok(())
}
