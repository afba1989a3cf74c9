//! Compiling an ML Program to a `.mlmodelc` bundle without Apple's tools: what `coremlc
//! compile` writes, reproduced from public Apple outputs (`../shared/MLMODELC.md`).
//!
//! ```text
//! out.mlmodelc/
//!   model.mil                  the program as text, coremlc's dialect (mil_text)
//!   coremldata.bin             header + the model description (coremldata)
//!   analytics/coremldata.bin   hash and name of the input model file (coremldata)
//!   metadata.json              schemas, availability, op histogram (metadata)
//!   weights/weight.bin         copied unchanged: BLOBFILE offsets stay valid
//! ```
//!
//! mlc writes its own bundle rather than depending on the `mlmodelc-export` crate: the MIL
//! types and blob format are already here, and that crate's dialect choice, parameter order
//! and `const` naming differ from Apple's on the models mlc builds (spec 7 and 8).
//!
//! Inputs are untrusted: the model file is size-capped, every blob reference is checked
//! against its weight file's header and record before anything is written, weight files are
//! streamed (never read whole), and the bundle appears only when complete.

pub mod coremldata;
pub mod metadata;
pub mod mil_text;
pub mod parse;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use prost::Message;

use crate::atomic_dir::{hidden_sibling, replace_dir, ReplaceError};
use crate::package::manifest::{Manifest, DATA_DIR, MANIFEST_FILE};
use crate::proto::mil_spec as pb;
use crate::proto::specification as spec;

/// Why mlc cannot compile enumerated shapes, and what to do instead: the build refuses them
/// before building with the same words ([`crate::build::Plan::check_mlc_compilable`]).
pub const ENUMERATED_SHAPES: &str = "whose keys in coremlc's output are an unknown hash; build with --multifunction (one function per shape) or compile with --compiler xcrun";

/// Why compiling failed; one line each, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The input cannot be compiled (not an ML Program, a construct coremlc's output for is
    /// unknown, a corrupt model file, a bad weight reference).
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

fn invalid(path: &Path, reason: impl Into<String>) -> CompileError {
    CompileError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CompileError + '_ {
    move |source| CompileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What goes into `buildInfo` besides the program's own entries.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub build_info: Vec<(String, String)>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            build_info: mil_text::mlc_build_info(),
        }
    }
}

/// `model.mlmodel` is the program, not the weights; as in the package reader.
const MAX_MODEL_BYTES: u64 = 256 << 20;
const BLOB_HEADER: u64 = 64;
const BLOB_RECORD: u64 = 64;
const BLOB_SENTINEL: u32 = 0xDEAD_BEEF;

/// The default output: `X.mlpackage` → `X.mlmodelc` beside it.
pub fn default_output(src: &Path) -> PathBuf {
    src.with_extension("mlmodelc")
}

/// A model file and the directory `@model_path` names.
struct Source {
    model_path: PathBuf,
    model_dir: PathBuf,
    /// The file stem coremlc names the model by (`modelName`, `generatedClassName`).
    stem: String,
}

fn resolve(src: &Path) -> Result<Source, CompileError> {
    let stem = src
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_owned();
    if src.is_dir() {
        let manifest_path = src.join(MANIFEST_FILE);
        let bytes =
            crate::limits::read_regular(&manifest_path, 1 << 20).map_err(io(&manifest_path))?;
        let manifest = Manifest::parse(&bytes, &manifest_path)
            .map_err(|e| invalid(&manifest_path, e.to_string()))?;
        let rel = manifest
            .root_model_path(&manifest_path)
            .map_err(|e| invalid(&manifest_path, e.to_string()))?;
        let model_path = src.join(DATA_DIR).join(rel);
        let model_dir = model_path.parent().unwrap_or(src).to_path_buf();
        Ok(Source {
            model_path,
            model_dir,
            stem,
        })
    } else {
        let model_dir = match src.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Source {
            model_path: src.to_path_buf(),
            model_dir,
            stem,
        })
    }
}

/// The bundle's files, all in memory except the weights, which are copied from their source.
struct Bundle {
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Bundle-relative path → source file.
    weights: BTreeMap<PathBuf, PathBuf>,
}

/// Compiles `src` (an `.mlpackage` directory or a bare `.mlmodel` with `weights/` beside it)
/// into the bundle `out` (ending in `.mlmodelc`), atomically: on any error nothing is left.
pub fn compile(src: &Path, out: &Path, opts: &CompileOptions) -> Result<(), CompileError> {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.ends_with(".mlmodelc") && n.len() > ".mlmodelc".len())
        .ok_or_else(|| {
            invalid(
                out,
                "a compiled model path must end in a name like model.mlmodelc",
            )
        })?
        .to_owned();
    let bundle = prepare(src, opts)?;
    write_atomically(out, &name, &bundle)
}

fn prepare(src: &Path, opts: &CompileOptions) -> Result<Bundle, CompileError> {
    let source = resolve(src)?;
    let mp = &source.model_path;
    let bytes = crate::limits::read_regular(mp, MAX_MODEL_BYTES).map_err(io(mp))?;
    let model = spec::Model::decode(bytes.as_slice())
        .map_err(|e| invalid(mp, format!("cannot decode Core ML model: {e}")))?;
    let program = match &model.r#type {
        Some(spec::model::Type::MlProgram(p)) => p,
        _ => {
            return Err(invalid(
                mp,
                "not an ML Program model (NeuralNetwork and other model kinds are not supported by mlc compile; use --compiler xcrun)",
            ))
        }
    };
    // Outside 6..=9 there is no Apple output to copy the header word and dialect from.
    if !(6..=9).contains(&model.specification_version) {
        return Err(invalid(
            mp,
            format!(
                "specification version {} is not supported (ML Programs of spec 6 to 9 are)",
                model.specification_version
            ),
        ));
    }
    let mil = mil_text::write_model(&model, &opts.build_info).map_err(|r| invalid(mp, r))?;
    let weights = check_weights(program, &source)?;
    let coremldata =
        coremldata::coremldata_bin(&bytes, model.specification_version, program.functions.len())
            .map_err(|r| invalid(mp, r))?;
    let analytics = coremldata::analytics_bin(&bytes, &source.stem);
    let meta = metadata::metadata_json(&model, &source.stem).map_err(|r| invalid(mp, r))?;
    Ok(Bundle {
        files: vec![
            ("model.mil".into(), mil.into_bytes()),
            ("coremldata.bin".into(), coremldata),
            ("analytics/coremldata.bin".into(), analytics),
            ("metadata.json".into(), meta),
        ],
        weights,
    })
}

/// Every blob reference of the program, by file.
fn blob_refs(p: &pb::Program) -> BTreeMap<String, BTreeSet<u64>> {
    fn visit(v: &pb::Value, out: &mut BTreeMap<String, BTreeSet<u64>>) {
        if let Some(pb::value::Value::BlobFileValue(b)) = &v.value {
            out.entry(b.file_name.clone()).or_default().insert(b.offset);
        }
    }
    fn block(b: &pb::Block, out: &mut BTreeMap<String, BTreeSet<u64>>) {
        for op in &b.operations {
            op.attributes.values().for_each(|v| visit(v, out));
            for a in op.inputs.values() {
                for b in &a.arguments {
                    if let Some(pb::argument::binding::Binding::Value(v)) = &b.binding {
                        visit(v, out);
                    }
                }
            }
            op.blocks.iter().for_each(|b| block(b, out));
        }
    }
    let mut out = BTreeMap::new();
    for f in p.functions.values() {
        f.block_specializations
            .values()
            .for_each(|b| block(b, &mut out));
    }
    out
}

/// The relative path a `BLOBFILE` path names under `@model_path/`; nothing that could leave
/// the model's directory (`..`, absolute paths) passes.
fn blob_rel(file: &str) -> Result<&Path, String> {
    file.strip_prefix("@model_path/")
        .map(Path::new)
        .filter(|r| {
            r.components().all(|c| matches!(c, Component::Normal(_))) && r.components().count() > 0
        })
        .ok_or_else(|| {
            format!(
                "blob file {:?} is not a path under @model_path/",
                file.escape_debug().to_string()
            )
        })
}

/// Checks each referenced weight file (inside the model directory, a valid blob header, each
/// offset a valid record whose data lies in the file) by reading headers only.
fn check_weights(
    p: &pb::Program,
    source: &Source,
) -> Result<BTreeMap<PathBuf, PathBuf>, CompileError> {
    let mut out = BTreeMap::new();
    let root = fs::canonicalize(&source.model_dir).map_err(io(&source.model_dir))?;
    for (file, offsets) in blob_refs(p) {
        let rel = blob_rel(&file).map_err(|r| invalid(&source.model_path, r))?;
        let path = source.model_dir.join(rel);
        let real = fs::canonicalize(&path).map_err(io(&path))?;
        if !real.starts_with(&root) {
            return Err(invalid(&path, "resolves outside the model's directory"));
        }
        let (mut f, len) = crate::limits::open_regular(&real).map_err(io(&path))?;
        let mut header = [0u8; BLOB_HEADER as usize];
        if len < BLOB_HEADER {
            return Err(invalid(
                &path,
                format!("file is {len} bytes, shorter than the blob header"),
            ));
        }
        f.read_exact(&mut header).map_err(io(&path))?;
        let version = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if version != 2 {
            return Err(invalid(
                &path,
                format!("blob storage version {version}, expected 2"),
            ));
        }
        for offset in offsets {
            check_record(&mut f, len, offset)
                .map_err(|r| invalid(&path, format!("at offset {offset}: {r}")))?;
        }
        out.insert(rel.to_path_buf(), path);
    }
    Ok(out)
}

fn check_record(f: &mut fs::File, len: u64, offset: u64) -> Result<(), String> {
    if offset < BLOB_HEADER || offset % 64 != 0 {
        return Err(
            "not a metadata record offset (records start on 64-byte boundaries after the header)"
                .into(),
        );
    }
    if offset.checked_add(BLOB_RECORD).is_none_or(|e| e > len) {
        return Err(format!(
            "metadata record runs past the end of the {len}-byte file"
        ));
    }
    let mut rec = [0u8; BLOB_RECORD as usize];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut rec))
        .map_err(|e| e.to_string())?;
    let u32_at = |i: usize| u32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&rec[i..i + 8]);
        u64::from_le_bytes(b)
    };
    if u32_at(0) != BLOB_SENTINEL {
        return Err(format!(
            "bad sentinel {:#010x}, expected {BLOB_SENTINEL:#010x}",
            u32_at(0)
        ));
    }
    if crate::package::BlobDType::from_u32(u32_at(4)).is_none() {
        return Err(format!("unknown blob data type {}", u32_at(4)));
    }
    let (size, data) = (u64_at(8), u64_at(16));
    if data.checked_add(size).is_none_or(|e| e > len) {
        return Err(format!(
            "data of {size} bytes at offset {data} runs past the end of the {len}-byte file"
        ));
    }
    Ok(())
}

/// Writes the bundle into a hidden sibling and renames it into place; an existing bundle at
/// `out` is replaced only if it looks like one (so a mistyped `-o` deletes nothing else).
fn write_atomically(out: &Path, name: &str, bundle: &Bundle) -> Result<(), CompileError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    check_replaceable(out)?;
    // The directories created here are removed again if the write fails, innermost first.
    let mut created = Vec::new();
    let mut missing = parent.as_path();
    while !missing.as_os_str().is_empty() && fs::symlink_metadata(missing).is_err() {
        created.push(missing.to_path_buf());
        missing = missing.parent().unwrap_or(Path::new(""));
    }
    fs::create_dir_all(&parent).map_err(io(&parent))?;
    let tmp = hidden_sibling(&parent, name, "tmp");
    let result = fill(&tmp, bundle).and_then(|()| replace(&tmp, out, &parent, name));
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
        for dir in &created {
            // Only empty ones: something else may have arrived meanwhile.
            let _ = fs::remove_dir(dir);
        }
    }
    result
}

/// Refuses to replace anything at `out` but a compiled model, so a mistyped `-o` deletes
/// nothing else.
fn check_replaceable(out: &Path) -> Result<(), CompileError> {
    match fs::symlink_metadata(out) {
        Ok(meta) if !meta.is_dir() || !out.join("model.mil").is_file() => Err(invalid(
            out,
            "exists and is not a compiled model; not replacing it",
        )),
        _ => Ok(()),
    }
}

fn fill(dir: &Path, bundle: &Bundle) -> Result<(), CompileError> {
    fs::create_dir(dir).map_err(io(dir))?;
    for (rel, bytes) in &bundle.files {
        let path = dir.join(rel);
        if let Some(p) = path.parent() {
            fs::create_dir_all(p).map_err(io(p))?;
        }
        fs::write(&path, bytes).map_err(io(&path))?;
    }
    for (rel, from) in &bundle.weights {
        let to = dir.join(rel);
        if let Some(p) = to.parent() {
            fs::create_dir_all(p).map_err(io(p))?;
        }
        // Streams the file (or clones it, where the file system can): weights are never
        // held in memory.
        fs::copy(from, &to).map_err(io(from))?;
    }
    Ok(())
}

/// Moves the finished `tmp` to `out` (see [`replace_dir`]), checking again what is there.
fn replace(tmp: &Path, out: &Path, parent: &Path, name: &str) -> Result<(), CompileError> {
    replace_dir(tmp, out, parent, name, check_replaceable).map_err(|e| match e {
        ReplaceError::Refused(e) => e,
        ReplaceError::Io(source) => io(out)(source),
        ReplaceError::Busy => invalid(out, "is being written by another mlc process; try again"),
    })
}

/// `model.mil` alone, for tests and tools that compare text.
pub fn model_mil(model: &spec::Model, opts: &CompileOptions) -> Result<String, String> {
    mil_text::write_model(model, &opts.build_info)
}

/// Reads a compiled bundle back as a package, so whatever describes or runs packages (`mlc
/// inspect`, `mlc run`) works on it too: the model as [`read_bundle`] gives it, and the one
/// weight file its program refers to (any name under `@model_path/`, checked to stay inside
/// the bundle, read within the weight-file limit, its header validated; none if it is missing).
pub fn read_as_package(dir: &Path) -> Result<crate::package::Package, CompileError> {
    let model = read_bundle(dir)?;
    let program = match &model.r#type {
        Some(spec::model::Type::MlProgram(p)) => p,
        _ => return Err(invalid(dir, "not an ML Program bundle")),
    };
    let files: Vec<String> = blob_refs(program).into_keys().collect();
    let weights = match &files[..] {
        [] => None,
        // A missing file reads as no weights, as for a package: the bundle still describes
        // (a checkout without its large files), and evaluating it names what is missing.
        [file] => match bundle_file(dir, file) {
            Err(CompileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            Err(e) => return Err(e),
            Ok(path) => {
                let bytes = crate::limits::read_weight_file(&path).map_err(io(&path))?;
                crate::package::BlobReader::new(&bytes)
                    .map_err(|e| invalid(&path, e.to_string()))?;
                Some(bytes)
            }
        },
        _ => {
            return Err(invalid(
                &dir.join("model.mil"),
                format!(
                    "refers to {} weight files ({}); mlc reads bundles with one",
                    files.len(),
                    files.join(", ")
                ),
            ))
        }
    };
    Ok(crate::package::Package {
        path: dir.to_path_buf(),
        model,
        weights,
    })
}

/// The file a `BLOBFILE` path names in a bundle, which must resolve to inside it.
fn bundle_file(dir: &Path, file: &str) -> Result<PathBuf, CompileError> {
    let mil = dir.join("model.mil");
    let rel = blob_rel(file).map_err(|r| invalid(&mil, r))?;
    let path = dir.join(rel);
    let root = fs::canonicalize(dir).map_err(io(dir))?;
    let real = fs::canonicalize(&path).map_err(io(&path))?;
    if !real.starts_with(&root) {
        return Err(invalid(&path, "resolves outside the bundle"));
    }
    Ok(real)
}

/// Reads a compiled bundle back: the program from `model.mil`, the description and
/// specification version from `coremldata.bin`. Bundles are untrusted: sizes are capped and
/// the header is checked before the payload is decoded.
pub fn read_bundle(dir: &Path) -> Result<spec::Model, CompileError> {
    let mil_path = dir.join("model.mil");
    let text = crate::limits::read_regular(&mil_path, parse::MAX_MIL_BYTES as u64)
        .map_err(io(&mil_path))?;
    let text = String::from_utf8(text).map_err(|_| invalid(&mil_path, "not UTF-8 text"))?;
    let program = parse::parse_program(&text).map_err(|r| invalid(&mil_path, r))?;

    let cd_path = dir.join("coremldata.bin");
    let cd = crate::limits::read_regular(&cd_path, MAX_MODEL_BYTES).map_err(io(&cd_path))?;
    let bad = |r: &str| invalid(&cd_path, r);
    if cd.len() < 0x53 || cd[0..4] != 502u32.to_le_bytes() || &cd[0x24..0x2b] != b"generic" {
        return Err(bad("not an ML Program's coremldata.bin (bad header)"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&cd[0x4b..0x53]);
    let payload = usize::try_from(u64::from_le_bytes(len))
        .ok()
        .and_then(|l| 0x53usize.checked_add(l))
        .and_then(|end| cd.get(0x53..end))
        .ok_or_else(|| bad("description length runs past the end of the file"))?;
    let description = spec::ModelDescription::decode(payload).map_err(|e| {
        invalid(
            &cd_path,
            format!("cannot decode the model description: {e}"),
        )
    })?;
    Ok(spec::Model {
        specification_version: i32::from(cd[0x2b]),
        description: Some(description),
        is_updatable: false,
        r#type: Some(spec::model::Type::MlProgram(program)),
    })
}
