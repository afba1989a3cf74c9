//! Writing a Resources folder: every part of [`super::parts`] built with the ordinary build
//! (its package, then its `.mlmodelc`), the tokenizer files, `mlc.json`, all in a hidden sibling
//! that is checked against the Swift package's rules ([`super::swift::check_folder`]) and only
//! then put in place. On any failure nothing is left.

use super::checkpoint::{Checkpoint, CheckpointError, Family};
use super::parts::{self, PartSpec, Sizing};
use super::swift::{self, SwiftError};
use super::tokenizer::{self, TokenizerError, TokenizerSource};
use super::vae_check::{self, Fp16Check};
use crate::build::{BuildError, BuildOptions, BuildReport, Compression, Precision, Sizes};
use crate::lora::{LoraError, LoraSpec};
use crate::mil::Target;
use crate::models::TransformerLayout;
use crate::progress::Observer;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file beside the models that says how the folder was made.
pub const MANIFEST: &str = "mlc.json";

/// What `mlc pipeline` is asked for.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// The family the user names (`sd` takes SD 1.x and 2.x, `sdxl` SDXL); the checkpoint must
    /// be of it.
    pub command: String,
    /// A single-file checkpoint or a diffusers folder.
    pub weights: PathBuf,
    /// The Resources folder to write.
    pub output: PathBuf,
    /// The image size `[height, width]`; None: the family's.
    pub image_size: Option<[usize; 2]>,
    /// The UNet's attention layout (`split-einsum` is [`TransformerLayout::Ane`]).
    pub layout: TransformerLayout,
    /// Weight compression for the text encoders and the UNet.
    pub compression: Option<Compression>,
    /// The VAE's precision; None: fp16, fp32 for SDXL (its VAE overflows fp16).
    pub vae_precision: Option<Precision>,
    pub target: Target,
    /// LoRAs fused into each part they have keys for.
    pub loras: Vec<LoraSpec>,
    /// Keep each `<Name>.mlpackage` beside its `<Name>.mlmodelc`.
    pub keep_packages: bool,
    /// The UNet as `UnetChunk1` + `UnetChunk2`, cut near half its weights (and the refiner's
    /// as `UnetRefinerChunk1` + `2`).
    pub chunk_unet: bool,
    /// An SDXL refiner checkpoint whose UNet goes beside the base's as `UnetRefiner`.
    pub refiner: Option<PathBuf>,
    /// A folder with `vocab.json` and `merges.txt` to copy; None: the diffusers folder's
    /// `tokenizer/`, else generated from CLIP's BPE list.
    pub tokenizer: Option<PathBuf>,
    /// Who hears how far each part is: called with the part's name before it is built.
    pub progress: fn(&str) -> Observer,
}

impl PipelineOptions {
    pub fn new(command: &str, weights: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        PipelineOptions {
            command: command.to_string(),
            weights: weights.into(),
            output: output.into(),
            image_size: None,
            layout: TransformerLayout::Ane,
            compression: None,
            vae_precision: None,
            target: Target::Ios16,
            loras: Vec::new(),
            keep_packages: false,
            chunk_unet: false,
            refiner: None,
            tokenizer: None,
            progress: |_| Observer::none(),
        }
    }
}

/// One model written.
#[derive(Clone, Debug)]
pub struct PartReport {
    /// `TextEncoder`, `Unet`, ...
    pub name: &'static str,
    pub bundle: PathBuf,
    pub build: BuildReport,
    /// sha256 over the bundle's files (names and contents).
    pub bundle_sha256: String,
    pub compile_time: Duration,
    /// A part built in fp16 that [`vae_check`] evaluated: its largest fp16 activation.
    pub fp16_check: Option<Fp16Check>,
}

/// What `mlc pipeline` wrote.
#[derive(Clone, Debug)]
pub struct PipelineReport {
    pub folder: PathBuf,
    pub family: Family,
    pub image_size: [usize; 2],
    pub parts: Vec<PartReport>,
    pub tokenizer: TokenizerSource,
    /// sha256 over the tensors each part read, part by part.
    pub checkpoint_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint's family is not the command's.
    #[error("{path}: this is an {found} checkpoint; run `mlc pipeline {command}`")]
    Family {
        path: String,
        found: &'static str,
        command: &'static str,
    },
    #[error("{0}")]
    Option(String),
    /// A part failed to build or compile: its name first.
    #[error("{part}: {source}")]
    Build {
        part: &'static str,
        #[source]
        source: Box<BuildError>,
    },
    #[error("{part}: compiling: {reason}")]
    Compile { part: &'static str, reason: String },
    /// A part built in fp16 whose activations overflow fp16 (or come close) on the probe:
    /// `reason` says how and what to do.
    #[error("{part}: {flag}: activation {op} reaches {magnitude:.4e} on a test {probe}, {reason}")]
    Fp16Activations {
        part: &'static str,
        /// `--vae-precision fp16`, or the family's default that chose fp16.
        flag: &'static str,
        op: String,
        /// Its largest magnitude (infinite when its inputs already were).
        magnitude: f32,
        probe: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The folder written breaks a rule of the Swift package (a bug, or parts that disagree).
    #[error("the Resources folder would not load in Apple's Swift pipeline: {0}")]
    Swift(#[from] SwiftError),
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}

fn io(path: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Builds the Resources folder `opts` asks for.
pub fn write(opts: &PipelineOptions) -> Result<PipelineReport, PipelineError> {
    let checkpoint = Checkpoint::detect(&opts.weights)?;
    let family = checkpoint.family;
    if family.command() != opts.command {
        return Err(PipelineError::Family {
            path: opts.weights.display().to_string(),
            found: family.name(),
            command: family.command(),
        });
    }
    if family == Family::SdxlRefiner {
        return Err(PipelineError::Option(format!(
            "{}: an SDXL refiner; give the base checkpoint as --weights and this one as --refiner",
            opts.weights.display()
        )));
    }
    let refiner = match &opts.refiner {
        None => None,
        Some(path) => {
            let r = Checkpoint::detect(path)?;
            if r.family != Family::SdxlRefiner || family != Family::Sdxl {
                return Err(PipelineError::Option(format!(
                    "--refiner {}: an {} checkpoint; --refiner takes an SDXL refiner beside an SDXL base",
                    path.display(),
                    r.family.name()
                )));
            }
            Some(r)
        }
    };
    let image_size = opts.image_size.unwrap_or([family.image_side(); 2]);
    let max = crate::build::MAX_IMAGE_SIDE;
    if image_size.iter().any(|&s| s == 0 || s % 8 != 0 || s > max) {
        return Err(PipelineError::Option(format!(
            "--image-size {}x{}: each side must be a multiple of 8 (the latent is 8x smaller) from 8 to {max}",
            image_size[0], image_size[1]
        )));
    }
    let specs = parts::parts(&checkpoint, opts.layout, refiner.is_some());
    // Which parts each LoRA is for, from its keys; a LoRA for none of them is refused.
    let mut loras_of: Vec<Vec<LoraSpec>> = vec![Vec::new(); specs.len()];
    for l in &opts.loras {
        let scopes = crate::lora::scopes(l)?;
        let mut used = false;
        // A base's LoRA does not fit the refiner's UNet (other widths): the refiner takes none.
        for (spec, list) in specs.iter().zip(&mut loras_of).filter(|(s, _)| !s.refiner) {
            let scope = part_of(spec).and_then(|(m, p)| m.adapter_scope(p));
            if scope.is_some_and(|s| scopes.contains(&s)) {
                list.push(l.clone());
                used = true;
            }
        }
        if !used {
            return Err(LoraError {
                file: l.path.clone(),
                reason: format!(
                    "no key is for a model of an {} pipeline (its keys are for: {})",
                    family.name(),
                    scopes
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
            .into());
        }
    }
    let (parent, name) = place(&opts.output)?;
    check_replaceable(&opts.output)?;
    let tmp = crate::atomic_dir::hidden_sibling(&parent, &name, "tmp");
    fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
    let sources = Sources {
        base: &checkpoint,
        refiner: refiner.as_ref(),
    };
    let result = fill(opts, &sources, &specs, &loras_of, image_size, &tmp);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let replaced = crate::atomic_dir::replace_dir(&tmp, &opts.output, &parent, &name, |p| {
        check_replaceable(p)
    });
    if let Err(e) = replaced {
        let _ = fs::remove_dir_all(&tmp);
        return Err(match e {
            crate::atomic_dir::ReplaceError::Refused(e) => e,
            crate::atomic_dir::ReplaceError::Io(e) => io(&opts.output, e),
            crate::atomic_dir::ReplaceError::Busy => {
                io(&opts.output, "other writers keep replacing it")
            }
        });
    }
    Ok(PipelineReport {
        folder: opts.output.clone(),
        parts: report
            .parts
            .into_iter()
            .map(|mut p| {
                p.bundle = opts.output.join(p.bundle.file_name().unwrap_or_default());
                p.build.package = opts
                    .output
                    .join(p.build.package.file_name().unwrap_or_default());
                p
            })
            .collect(),
        ..report
    })
}

/// The registry model and part a spec builds (every spec has them: `parts`' tests).
fn part_of(spec: &PartSpec) -> Option<(&'static dyn crate::models::Model, crate::models::Part)> {
    let m = crate::models::lookup(spec.model).ok()?;
    let p = m.parts().iter().copied().find(|p| p.name() == spec.part)?;
    Some((m, p))
}

/// The checkpoints the parts read.
struct Sources<'c> {
    base: &'c Checkpoint,
    refiner: Option<&'c Checkpoint>,
}

/// Every part, the tokenizer and the manifest into `tmp`, then the Swift rules checked there.
fn fill(
    opts: &PipelineOptions,
    sources: &Sources,
    specs: &[PartSpec],
    loras_of: &[Vec<LoraSpec>],
    image_size: [usize; 2],
    tmp: &Path,
) -> Result<PipelineReport, PipelineError> {
    let checkpoint_of = |spec: &PartSpec| match (spec.refiner, sources.refiner) {
        (true, Some(r)) => r,
        _ => sources.base,
    };
    // The fp16 checks before any part is built: a refusal comes in a second, not after the
    // UNet's minute.
    let mut checks = Vec::with_capacity(specs.len());
    for (spec, loras) in specs.iter().zip(loras_of) {
        let b = build_options(opts, checkpoint_of(spec), spec, loras, image_size, tmp)?;
        let asked = spec.vae && opts.vae_precision.is_some();
        checks.push(vae_check::check(spec.name(), spec.fp16_check, &b, asked)?);
    }
    // Each bundle is hashed on a thread of its own while the next part builds (the UNet's
    // weights take seconds to hash); all are joined before the scope ends, on errors too.
    let written = std::thread::scope(|scope| -> Result<Vec<PartReport>, PipelineError> {
        let mut written = Vec::new();
        let mut hashes = Vec::new();
        let mut add = |p: PartReport| {
            let bundle = p.bundle.clone();
            hashes.push(scope.spawn(move || tree_sha256(&bundle)));
            written.push(p);
        };
        for ((spec, loras), fp16_check) in specs.iter().zip(loras_of).zip(checks) {
            let mut b = build_options(opts, checkpoint_of(spec), spec, loras, image_size, tmp)?;
            b.progress = (opts.progress)(spec.name());
            let fail = |source| PipelineError::Build {
                part: spec.name(),
                source: Box::new(source),
            };
            let chunks = match spec.swift {
                swift::Part::Unet => Some([swift::Part::UnetChunk1, swift::Part::UnetChunk2]),
                swift::Part::UnetRefiner => Some([
                    swift::Part::UnetRefinerChunk1,
                    swift::Part::UnetRefinerChunk2,
                ]),
                _ => None,
            };
            if let (true, Some(names)) = (opts.chunk_unet, chunks) {
                let packages = names.map(|p| tmp.join(package_name(p)));
                let reports = crate::build::write::build_chunks(&b, [&packages[0], &packages[1]])
                    .map_err(fail)?;
                for (part, report) in names.into_iter().zip(reports) {
                    add(compile(opts, tmp, part, report)?);
                }
            } else {
                let report = crate::build::build(&b).map_err(fail)?;
                let mut part = compile(opts, tmp, spec.swift, report)?;
                part.fp16_check = fp16_check;
                add(part);
            }
        }
        for (p, h) in written.iter_mut().zip(hashes) {
            p.bundle_sha256 = h
                .join()
                .map_err(|_| io(&p.bundle, "hashing the bundle panicked"))??;
        }
        Ok(written)
    })?;
    let tokenizer_dir = opts
        .tokenizer
        .clone()
        .or_else(|| sources.base.tokenizer_dir());
    let tokenizer = tokenizer::copy_or_generate(tokenizer_dir.as_deref(), tmp)?;
    let mut h = Sha256::new();
    for p in &written {
        h.update(format!("{} {}\n", p.name, p.build.weights_sha256));
    }
    let report = PipelineReport {
        folder: tmp.to_path_buf(),
        family: sources.base.family,
        image_size,
        parts: written,
        tokenizer,
        checkpoint_sha256: hex(&h.finalize()),
    };
    let manifest = serde_json::to_string_pretty(&manifest(opts, &report)).unwrap_or_default();
    let path = tmp.join(MANIFEST);
    fs::write(&path, manifest + "\n").map_err(|e| io(&path, e))?;
    swift::check_folder(tmp, parts::swift_pipeline(sources.base.family))
        .map_err(|e| named_as(e, tmp, &opts.output))?;
    Ok(report)
}

/// A Swift-rule error about the hidden folder being filled, told about the folder asked for
/// (the hidden one is gone by the time the user reads it).
fn named_as(e: SwiftError, tmp: &Path, out: &Path) -> PipelineError {
    let (tmp, out) = (tmp.display().to_string(), out.display().to_string());
    PipelineError::Swift(match e {
        SwiftError::Model { what, reason } => SwiftError::Model {
            what: what.replace(&tmp, &out),
            reason: reason.replace(&tmp, &out),
        },
        e => e,
    })
}

/// `<Name>.mlpackage` for a part of the folder.
fn package_name(part: swift::Part) -> String {
    format!("{}.mlpackage", part.name())
}

/// `report`'s package compiled into the folder as `part`'s bundle (the package removed unless
/// kept).
fn compile(
    opts: &PipelineOptions,
    tmp: &Path,
    part: swift::Part,
    build: BuildReport,
) -> Result<PartReport, PipelineError> {
    let name = part.name();
    let bundle = tmp.join(part.file_name());
    let t = Instant::now();
    crate::mlmodelc::compile(&build.package, &bundle, &Default::default()).map_err(|e| {
        PipelineError::Compile {
            part: name,
            reason: e.to_string(),
        }
    })?;
    let compile_time = t.elapsed();
    if !opts.keep_packages {
        fs::remove_dir_all(&build.package).map_err(|e| io(&build.package, e))?;
    }
    Ok(PartReport {
        name,
        // Filled in by the caller, hashed beside the next build.
        bundle_sha256: String::new(),
        bundle,
        build,
        compile_time,
        fp16_check: None,
    })
}

/// The ordinary build options of one part (no progress observer: the caller's to set).
fn build_options(
    opts: &PipelineOptions,
    checkpoint: &Checkpoint,
    spec: &PartSpec,
    loras: &[LoraSpec],
    [h, w]: [usize; 2],
    tmp: &Path,
) -> Result<BuildOptions, PipelineError> {
    let mut b = BuildOptions::new(spec.model, checkpoint.file(spec.component)?);
    b.part = Some(spec.part.to_string());
    b.model_options = spec.options.clone();
    b.features = spec.features.clone();
    b.output = Some(tmp.join(package_name(spec.swift)));
    b.target = opts.target;
    b.precision = match spec.vae {
        true => vae_precision(opts, checkpoint.family),
        false => Precision::Fp16,
    };
    // Float32 arrays in and out, as the Swift code passes and reads them (token ids need it).
    b.io_precision = Some(Precision::Fp32);
    b.sizes = match spec.sizing {
        Sizing::None => Sizes::Default,
        Sizing::Latent => Sizes::Latent(vec![[h / 8, w / 8]]),
        Sizing::Image => Sizes::Image(vec![[h, w]]),
    };
    if spec.compressible {
        b.compression = opts.compression.clone();
    }
    b.loras = loras.to_vec();
    Ok(b)
}

/// The VAE's precision: as asked, else fp32 for SDXL (its VAE overflows fp16) and fp16 for
/// the others.
fn vae_precision(opts: &PipelineOptions, family: Family) -> Precision {
    match (opts.vae_precision, family) {
        (Some(p), _) => p,
        (None, Family::Sdxl) => Precision::Fp32,
        (None, _) => Precision::Fp16,
    }
}

fn compression_text(c: &Compression) -> String {
    match c {
        Compression::Palettize { bits, .. } => format!("palettize {bits}"),
        Compression::Quantize { mode, .. } => format!("quantize {mode:?}").to_lowercase(),
    }
}

/// The output's parent folder and name.
fn place(out: &Path) -> Result<(PathBuf, String), PipelineError> {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io(out, "not a folder name"))?
        .to_string();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(io(&parent, "no such folder"));
    }
    Ok((parent, name))
}

/// What may be replaced: nothing, an empty folder, or a Resources folder mlc wrote (it has
/// `mlc.json`); anything else may be the user's and is refused.
fn check_replaceable(out: &Path) -> Result<(), PipelineError> {
    let Ok(meta) = fs::symlink_metadata(out) else {
        return Ok(());
    };
    if !meta.is_dir() {
        return Err(io(out, "exists and is not a folder"));
    }
    let empty = fs::read_dir(out).map_err(|e| io(out, e))?.next().is_none();
    if empty || out.join(MANIFEST).is_file() {
        return Ok(());
    }
    Err(io(
        out,
        format!("exists and is not a Resources folder mlc wrote (no {MANIFEST}); remove it or choose another -o"),
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 over a folder's files: each relative path and its contents, in name order.
fn tree_sha256(dir: &Path) -> Result<String, PipelineError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| io(&d, e))? {
            let p = e.map_err(|e| io(&d, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let rel = f.strip_prefix(dir).unwrap_or(&f);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        let mut r = fs::File::open(&f).map_err(|e| io(&f, e))?;
        loop {
            let n = r.read(&mut buf).map_err(|e| io(&f, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(hex(&h.finalize()))
}

/// `mlc.json`: the checkpoint, the family, the options and each part's hashes.
fn manifest(opts: &PipelineOptions, r: &PipelineReport) -> serde_json::Value {
    use serde_json::json;
    let parts: serde_json::Map<String, serde_json::Value> = r
        .parts
        .iter()
        .map(|p| {
            let mut part = json!({
                    "model": p.build.model,
                    "part": p.build.part.name(),
                    "weights_sha256": p.build.weights_sha256,
                    "bundle_sha256": p.bundle_sha256,
                    "loras": p.build.loras.iter().map(|l| json!({
                        "file": l.stem, "sha256": l.sha256, "weight": l.weight,
                    })).collect::<Vec<_>>(),
            });
            if let Some(c) = &p.fp16_check {
                part["fp16_activations"] = vae_check::to_json(c);
            }
            (p.name.to_string(), part)
        })
        .collect();
    json!({
        "mlc_version": env!("CARGO_PKG_VERSION"),
        "checkpoint": {
            "file": opts.weights.file_name().map(|n| n.to_string_lossy().into_owned()),
            "sha256": r.checkpoint_sha256,
        },
        "family": r.family.name(),
        "refiner": opts.refiner.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()),
        "pipeline": opts.command,
        "image_size": r.image_size,
        "options": {
            "chunk_unet": opts.chunk_unet,
            "attention": match opts.layout {
                TransformerLayout::Ane => "split-einsum",
                TransformerLayout::Standard => "original",
            },
            "compression": opts.compression.as_ref().map(compression_text),
            "vae_precision": match vae_precision(opts, r.family) {
                Precision::Fp16 => "fp16",
                Precision::Fp32 => "fp32",
            },
            "target": opts.target.to_string(),
        },
        "tokenizer": match &r.tokenizer {
            TokenizerSource::Copied(_) => "copied",
            TokenizerSource::Generated => "generated from CLIP's BPE list",
        },
        "parts": parts,
    })
}
