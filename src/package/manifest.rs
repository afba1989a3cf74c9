//! `Manifest.json`: the package's table of contents.
//!
//! ```json
//! {
//!     "fileFormatVersion": "1.0.0",
//!     "itemInfoEntries": {
//!         "<id>": { "author": "com.apple.CoreML", "description": "CoreML Model Specification",
//!                   "name": "model.mlmodel", "path": "com.apple.CoreML/model.mlmodel" },
//!         "<id>": { "author": "com.apple.CoreML", "description": "CoreML Model Weights",
//!                   "name": "weights", "path": "com.apple.CoreML/weights" }
//!     },
//!     "rootModelIdentifier": "<model id>"
//! }
//! ```
//!
//! Entry paths are relative to the package's `Data/` directory.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PackageError;

/// Item identifier of `model.mlmodel` in packages mlc writes. coremltools draws random UUIDs;
/// mlc uses fixed ones so that the same model always gives the same bytes. The value is arbitrary
/// but UUID-shaped ("mlc" and "model" in hex), since Core ML expects a UUID string.
pub const MODEL_ITEM_ID: &str = "6d6c6300-0000-4000-8000-6d6f64656c00";
/// Item identifier of the `weights` directory in packages mlc writes ("mlc", "weight" in hex).
pub const WEIGHTS_ITEM_ID: &str = "6d6c6300-0000-4000-8000-776569676874";

pub(crate) const MANIFEST_FILE: &str = "Manifest.json";
pub(crate) const DATA_DIR: &str = "Data";
pub(crate) const MODEL_PATH: &str = "com.apple.CoreML/model.mlmodel";
pub(crate) const WEIGHTS_DIR_PATH: &str = "com.apple.CoreML/weights";
pub(crate) const WEIGHTS_FILE: &str = "weight.bin";

const AUTHOR: &str = "com.apple.CoreML";

// Field order is alphabetical so that serialization matches coremltools' sorted keys.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    // Optional when reading: nothing depends on it, and a missing version is no reason to refuse
    // an otherwise usable package.
    #[serde(default)]
    pub file_format_version: String,
    pub item_info_entries: BTreeMap<String, ItemInfo>,
    pub root_model_identifier: String,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ItemInfo {
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub name: String,
    pub path: String,
}

impl Manifest {
    /// The manifest of a package mlc writes: the model, and the weights if there are any.
    pub(crate) fn for_model(with_weights: bool) -> Self {
        let mut entries = BTreeMap::new();
        entries.insert(
            MODEL_ITEM_ID.to_owned(),
            ItemInfo {
                author: AUTHOR.to_owned(),
                description: "CoreML Model Specification".to_owned(),
                name: "model.mlmodel".to_owned(),
                path: MODEL_PATH.to_owned(),
            },
        );
        if with_weights {
            entries.insert(
                WEIGHTS_ITEM_ID.to_owned(),
                ItemInfo {
                    author: AUTHOR.to_owned(),
                    description: "CoreML Model Weights".to_owned(),
                    name: "weights".to_owned(),
                    path: WEIGHTS_DIR_PATH.to_owned(),
                },
            );
        }
        Manifest {
            file_format_version: "1.0.0".to_owned(),
            item_info_entries: entries,
            root_model_identifier: MODEL_ITEM_ID.to_owned(),
        }
    }

    /// The JSON text, laid out like coremltools' (4-space indent, sorted keys, final newline).
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        self.serialize(&mut ser)
            .expect("serializing strings and maps to memory cannot fail");
        out.push(b'\n');
        out
    }

    /// Parses `bytes`, read from `path` (named in errors).
    pub(crate) fn parse(bytes: &[u8], path: &Path) -> Result<Self, PackageError> {
        serde_json::from_slice(bytes).map_err(|e| PackageError::Manifest {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Path of the root model file relative to `Data/`, refusing entries that would escape it.
    pub(crate) fn root_model_path(&self, manifest_path: &Path) -> Result<PathBuf, PackageError> {
        let bad = |reason: String| PackageError::Manifest {
            path: manifest_path.to_path_buf(),
            reason,
        };
        let id = &self.root_model_identifier;
        let entry = self.item_info_entries.get(id).ok_or_else(|| {
            bad(format!(
                "rootModelIdentifier {id:?} has no itemInfoEntries entry"
            ))
        })?;
        let rel = Path::new(&entry.path);
        let is_plain = rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if entry.path.is_empty() || !is_plain {
            return Err(bad(format!(
                "root model path {:?} is not a relative path inside the package",
                entry.path
            )));
        }
        Ok(rel.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT_MANIFEST: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ct_conv_relu.mlpackage/Manifest.json"
    ));

    /// Replaces the model and weights identifiers in `json` by placeholders that sort the same
    /// way the originals do, so that texts from different writers can be compared.
    fn anonymize(json: &str, model_id: &str, weights_id: &str) -> String {
        let (m, w) = if model_id < weights_id {
            ("ID-A", "ID-B")
        } else {
            ("ID-B", "ID-A")
        };
        json.replace(model_id, m).replace(weights_id, w)
    }

    fn ids(m: &Manifest) -> (String, String) {
        let model = m.root_model_identifier.clone();
        let weights = m.item_info_entries.keys().find(|k| **k != model).unwrap();
        (model, weights.clone())
    }

    #[test]
    fn written_manifest_matches_coremltools() {
        let theirs_text = std::str::from_utf8(CT_MANIFEST).unwrap();
        let theirs = Manifest::parse(CT_MANIFEST, Path::new("Manifest.json")).unwrap();
        let (model_id, weights_id) = ids(&theirs);
        let theirs_anon = anonymize(theirs_text, &model_id, &weights_id);

        // Same formatting: re-serializing coremltools' manifest reproduces its text exactly.
        let reparsed = Manifest::parse(theirs_anon.as_bytes(), Path::new("Manifest.json")).unwrap();
        assert_eq!(String::from_utf8(reparsed.to_json()).unwrap(), theirs_anon);

        // Same content: ours differs only in the identifiers.
        let ours = Manifest::for_model(true);
        assert_eq!(ours.file_format_version, theirs.file_format_version);
        assert_eq!(ours.root_model_identifier, MODEL_ITEM_ID);
        assert_eq!(ours.item_info_entries.len(), 2);
        assert_eq!(
            ours.item_info_entries[MODEL_ITEM_ID],
            theirs.item_info_entries[&model_id]
        );
        assert_eq!(
            ours.item_info_entries[WEIGHTS_ITEM_ID],
            theirs.item_info_entries[&weights_id]
        );
    }

    #[test]
    fn root_model_path_of_coremltools_manifest() {
        let m = Manifest::parse(CT_MANIFEST, Path::new("Manifest.json")).unwrap();
        assert_eq!(
            m.root_model_path(Path::new("Manifest.json")).unwrap(),
            Path::new("com.apple.CoreML/model.mlmodel")
        );
    }

    #[test]
    fn rejects_escaping_and_missing_entries() {
        let p = Path::new("x/Manifest.json");
        let mut m = Manifest::for_model(false);
        m.item_info_entries.get_mut(MODEL_ITEM_ID).unwrap().path = "../../etc/passwd".into();
        let e = m.root_model_path(p).unwrap_err();
        assert!(e.to_string().starts_with("x/Manifest.json: "), "{e}");
        m.item_info_entries.get_mut(MODEL_ITEM_ID).unwrap().path = "/etc/passwd".into();
        assert!(m.root_model_path(p).is_err());
        m.root_model_identifier = "nope".into();
        let e = m.root_model_path(p).unwrap_err();
        assert!(e.to_string().contains("\"nope\""), "{e}");
    }

    #[test]
    fn corrupt_manifest_never_panics() {
        // Bytes that change JSON structure, plus invalid UTF-8.
        const JSON_NOISE: &[u8] = b"{}[]\":,./\\ 0a\x00\xff";
        let mut rng = super::super::blob::tests::Rng(12345);
        let p = Path::new("Manifest.json");
        // Dropping anything but trailing whitespace leaves incomplete JSON.
        for len in 0..CT_MANIFEST.trim_ascii_end().len() {
            assert!(Manifest::parse(&CT_MANIFEST[..len], p).is_err());
        }
        for _ in 0..3000 {
            let mut b = CT_MANIFEST.to_vec();
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(b.len());
                b[i] = JSON_NOISE[rng.below(JSON_NOISE.len())];
            }
            if let Ok(m) = Manifest::parse(&b, p) {
                let _ = m.root_model_path(p);
            }
        }
    }
}
