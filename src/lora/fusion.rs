//! Every LoRA of a build resolved against the model's weights, then applied as they are read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::delta::{Delta, Rows};
use super::formats::{self, Module, Spelling};
use super::in_place;
use super::{LoraSpec, Scope};
use crate::weights::{Overlay, TensorInfo, TensorSource, WeightFile};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Why a LoRA cannot be fused: one line, starting with the LoRA's file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct LoraError {
    pub file: PathBuf,
    pub reason: String,
}

/// What one LoRA did to the build (reports, `--json`, package metadata).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSummary {
    pub path: PathBuf,
    /// File name without folder or extension.
    pub stem: String,
    /// [`crate::weights::Weights::content_sha256`] of its tensors.
    pub sha256: String,
    pub weight: f32,
    /// Weights of the model it changed.
    pub modules: usize,
    /// Its tensors for other models of a pipeline, by [`Scope::name`]: skipped.
    pub skipped: BTreeMap<&'static str, usize>,
    /// A switchable adapter's function name; None for a LoRA fused into the weights.
    pub adapter: Option<String>,
}

/// An adapted weight: its model key, its shape and its terms (delta, the user's weight).
pub type Adapted<'f> = (&'f str, &'f [usize], Vec<(&'f Delta, f32)>);

/// One term of an adapted weight.
struct Term {
    lora: usize,
    weight: f32,
    /// The model's name of the weight, and its shape.
    model_key: String,
    shape: Vec<usize>,
    /// The LoRA key messages name.
    key: String,
    delta: Delta,
}

/// The LoRAs of a build, resolved: by source key, the terms to add to that weight.
pub struct Fusion {
    terms: BTreeMap<String, Vec<Term>>,
    files: Vec<PathBuf>,
    pub summaries: Vec<LoraSummary>,
}

/// The module names a model answers to, flattened (`.` → `_`) as kohya writes them, each to
/// the model key of its weight; None where two weights flatten alike.
struct Names(BTreeMap<String, Option<String>>);

impl Names {
    fn new(model_keys: &[(String, String)], aliases: &[(String, String)]) -> Names {
        let mut m: BTreeMap<String, Option<String>> = BTreeMap::new();
        let own = model_keys.iter().filter_map(|(k, _)| {
            k.strip_suffix(".weight")
                .map(|module| (module.to_string(), k.clone()))
        });
        for (module, key) in own.chain(aliases.iter().cloned()) {
            let slot = m.entry(flat(&module)).or_insert_with(|| Some(key.clone()));
            if slot.as_deref() != Some(key.as_str()) {
                *slot = None;
            }
        }
        Names(m)
    }
}

fn flat(module: &str) -> String {
    module.replace('.', "_")
}

impl Fusion {
    /// Reads every LoRA of `specs` and maps its keys for `scope` onto the model `model`
    /// (`names`: (model key, source key) of each tensor the model reads; `aliases`: (module
    /// name, model key) pairs the family adds; `index`: the source's tensors, for shapes).
    /// Every failure names the LoRA file and its key.
    pub fn resolve(
        specs: &[LoraSpec],
        scope: Scope,
        model: &str,
        names: &[(String, String)],
        aliases: &[(String, String)],
        index: &BTreeMap<String, TensorInfo>,
    ) -> Result<Fusion, LoraError> {
        let table = Names::new(names, aliases);
        let source_of: BTreeMap<&str, &str> = names
            .iter()
            .map(|(m, s)| (m.as_str(), s.as_str()))
            .collect();
        let mut fusion = Fusion {
            terms: BTreeMap::new(),
            files: Vec::new(),
            summaries: Vec::new(),
        };
        for (i, spec) in specs.iter().enumerate() {
            let fail = |reason: String| LoraError {
                file: spec.path.clone(),
                reason: reason.replace(['\n', '\r'], " "),
            };
            let file = WeightFile::open(&spec.path)
                .map_err(|e| fail(strip_file(&e.to_string(), &spec.path)))?;
            let source: &dyn TensorSource = &file;
            let mut all = source
                .read_all()
                .map_err(|e| fail(strip_file(&e.to_string(), &spec.path)))?;
            let meta = PeftMeta::read(&file.metadata()).map_err(fail)?;
            let modules = formats::modules(all.tensors.keys().map(String::as_str)).map_err(fail)?;
            let mut summary = LoraSummary {
                path: spec.path.clone(),
                stem: crate::weights::stem(&spec.path).unwrap_or_default(),
                sha256: all
                    .content_sha256()
                    .map_err(|e| fail(strip_file(&e.to_string(), &spec.path)))?,
                weight: spec.weight,
                modules: 0,
                skipped: BTreeMap::new(),
                adapter: None,
            };
            let count = all.tensors.len();
            let mut done = BTreeSet::new();
            for m in &modules {
                if m.scope != scope {
                    *summary.skipped.entry(m.scope.name()).or_default() += m.tensors.len();
                    continue;
                }
                let model_key = lookup(&table, m, model).map_err(fail)?;
                let (source_key, shape) = source_of
                    .get(model_key.as_str())
                    .and_then(|&s| Some((s, &index.get(s)?.shape)))
                    .ok_or_else(|| {
                        fail(format!(
                            "tensor \"{}\": weight \"{model_key}\" is not in the model's file",
                            m.key()
                        ))
                    })?;
                // Each key is one module's: taken, not copied.
                let read = |k: &str| {
                    all.tensors
                        .remove(k)
                        .ok_or_else(|| format!("tensor \"{k}\" is read twice"))
                };
                let delta = Delta::of(m, read, meta.alpha(m)).map_err(fail)?;
                delta.check(shape).map_err(|r| {
                    fail(format!(
                        "tensor \"{}\" for weight \"{model_key}\": {r}",
                        m.key()
                    ))
                })?;
                if !done.insert(source_key.to_string()) {
                    return Err(fail(format!(
                        "tensor \"{}\": a second module of this file adapts weight \"{model_key}\"",
                        m.key()
                    )));
                }
                fusion
                    .terms
                    .entry(source_key.to_string())
                    .or_default()
                    .push(Term {
                        lora: i,
                        weight: spec.weight,
                        key: m.key().to_string(),
                        model_key: model_key.clone(),
                        shape: shape.clone(),
                        delta,
                    });
                summary.modules += 1;
            }
            if summary.modules == 0 {
                let skipped = summary
                    .skipped
                    .iter()
                    .map(|(s, n)| format!("{n} for {s}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(fail(format!(
                    "no tensor is for {model} ({} part \"{}\"; the file's {} tensors: {})",
                    scope.name(),
                    scope.name(),
                    count,
                    if skipped.is_empty() {
                        "none".into()
                    } else {
                        skipped
                    }
                )));
            }
            fusion.files.push(spec.path.clone());
            fusion.summaries.push(summary);
        }
        Ok(fusion)
    }

    /// Each adapted weight as the graph form of a switchable adapter takes it: by model key,
    /// the weight's shape and its terms (delta, the user's weight).
    pub fn by_model_key(&self) -> Vec<Adapted<'_>> {
        self.terms
            .values()
            .filter_map(|terms| {
                let first = terms.first()?;
                let list = terms.iter().map(|t| (&t.delta, t.weight)).collect();
                Some((first.model_key.as_str(), first.shape.as_slice(), list))
            })
            .collect()
    }
}

impl Fusion {
    /// A term's failure: its file and key, then the reason.
    fn at(&self, t: &Term, reason: String) -> String {
        format!(
            "{} tensor \"{}\": {reason}",
            self.files[t.lora].display(),
            t.key
        )
    }
}

/// `WeightFile` errors start with the file; [`LoraError`] adds it once.
/// The models of a pipeline `spec`'s file has keys for, from its index (no tensor is read):
/// what a pipeline gives each part's build.
pub fn scopes(spec: &LoraSpec) -> Result<BTreeSet<Scope>, LoraError> {
    let fail = |reason: String| LoraError {
        file: spec.path.clone(),
        reason: reason.replace(['\n', '\r'], " "),
    };
    let file =
        WeightFile::open(&spec.path).map_err(|e| fail(strip_file(&e.to_string(), &spec.path)))?;
    let modules = formats::modules(file.tensors().keys().map(String::as_str)).map_err(fail)?;
    Ok(modules.iter().map(|m| m.scope).collect())
}

fn strip_file(message: &str, path: &Path) -> String {
    let prefix = format!("{}: ", path.display());
    message.strip_prefix(&prefix).unwrap_or(message).to_string()
}

fn lookup(table: &Names, m: &Module, model: &str) -> Result<String, String> {
    let want = match m.spelling {
        Spelling::Flat => m.path.clone(),
        Spelling::Dotted => flat(&m.path),
    };
    match table.0.get(&want) {
        Some(Some(key)) => Ok(key.clone()),
        Some(None) => Err(format!(
            "tensor \"{}\": module \"{}\" is ambiguous in {model}",
            m.key(),
            m.path
        )),
        None => Err(format!(
            "tensor \"{}\": {model} has no module \"{}\" (a LoRA for another model?)",
            m.key(),
            m.path
        )),
    }
}

impl Overlay for Fusion {
    fn name(&self) -> String {
        self.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn patches(&self, key: &str) -> bool {
        self.terms.contains_key(key)
    }

    fn patch(&self, key: &str, shape: &[usize], values: &mut [f32]) -> Result<(), String> {
        for t in self.terms.get(key).into_iter().flatten() {
            t.delta
                .add_to(shape, t.weight, values)
                .map_err(|r| self.at(t, r))?;
        }
        match values.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(format!("the fused weight's value {i} is not finite")),
        }
    }

    /// Low-rank terms (all but LoHa and LoKr) are fused in place a block of rows at a time.
    fn patch_f16(&self, key: &str, shape: &[usize], values: &mut [f16]) -> Result<(), String> {
        let terms = self.terms.get(key).map_or(&[][..], Vec::as_slice);
        let rows: Option<Vec<Rows>> = terms
            .iter()
            .map(|t| {
                t.delta
                    .rows(shape, t.weight)
                    .map(|r| r.map_err(|e| self.at(t, e)))
            })
            .collect::<Option<Result<_, _>>>()
            .transpose()?;
        let Some(rows) = rows else {
            let mut v = vec![0f32; values.len()];
            values.convert_to_f32_slice(&mut v);
            self.patch(key, shape, &mut v)?;
            in_place::fits_f16(&v, 0)?;
            values.convert_from_f32_slice(&v);
            return Ok(());
        };
        let out = shape.first().copied().unwrap_or(1);
        in_place::fuse_f16(&rows, out, values.len() / out.max(1), values)
    }
}

/// PEFT's alphas, from the safetensors metadata diffusers writes (`lora_adapter_metadata`: a
/// JSON object with `unet.lora_alpha`, `unet.alpha_pattern`, ... per model prefix).
#[derive(Default)]
struct PeftMeta(serde_json::Map<String, serde_json::Value>);

impl PeftMeta {
    fn read(meta: &BTreeMap<String, String>) -> Result<PeftMeta, String> {
        let Some(text) = meta.get("lora_adapter_metadata") else {
            return Ok(PeftMeta::default());
        };
        match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(m)) => {
                for (k, v) in &m {
                    let flag = |name: &str| k.ends_with(name) && v.as_bool() == Some(true);
                    if flag(".use_dora") {
                        return Err(format!(
                            "metadata \"{k}\": DoRA (weight-decomposed LoRA) is not supported"
                        ));
                    }
                    if flag(".use_rslora") {
                        return Err(format!("metadata \"{k}\": rank-stabilised LoRA (alpha / sqrt(r)) is not supported"));
                    }
                }
                Ok(PeftMeta(m))
            }
            _ => Err("metadata \"lora_adapter_metadata\" is not a JSON object".into()),
        }
    }

    /// The module's alpha: its `alpha_pattern` entry (PEFT matches a pattern as the module
    /// path or a dotted suffix of it), else `lora_alpha`; None without metadata.
    fn alpha(&self, m: &Module) -> Option<f32> {
        let prefix = m.scope.name();
        let get = |field: &str| self.0.get(&format!("{prefix}.{field}"));
        if let Some(serde_json::Value::Object(p)) = get("alpha_pattern") {
            for (pattern, v) in p {
                let hit = m.path == *pattern || m.path.ends_with(&format!(".{pattern}"));
                if let (true, Some(a)) = (hit, v.as_f64()) {
                    return Some(a as f32);
                }
            }
        }
        get("lora_alpha").and_then(|v| v.as_f64()).map(|a| a as f32)
    }
}
