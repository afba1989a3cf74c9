//! `mlc inspect`: what a package holds, for people.

use crate::mil::print::print_model;
use crate::package::{Package, PackageError};
use crate::proto::specification as spec;
use prost::Message;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Description, op histogram, sizes and MIL text of a package.
pub fn describe(pkg: &Package) -> Result<String, PackageError> {
    let mut s = String::new();
    let _ = writeln!(s, "package {}", pkg.path.display());
    if let Some(d) = &pkg.model.description {
        if let Some(m) = &d.metadata {
            if !m.short_description.is_empty() {
                let _ = writeln!(s, "description: {}", m.short_description);
            }
        }
    }
    let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
    if let Some(spec::model::Type::MlProgram(p)) = &pkg.model.r#type {
        for f in p.functions.values() {
            for b in f.block_specializations.values() {
                for op in &b.operations {
                    *histogram.entry(op.r#type.as_str()).or_default() += 1;
                }
            }
        }
    }
    let _ = writeln!(
        s,
        "ops: {}",
        histogram
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let blobs = pkg.blobs()?;
    let _ = writeln!(
        s,
        "sizes: model.mlmodel {} bytes, weight.bin {} bytes in {} blobs",
        pkg.model.encoded_len(),
        pkg.weights.as_ref().map_or(0, Vec::len),
        blobs.as_ref().map_or(0, |b| b.len())
    );
    s.push('\n');
    s.push_str(&print_model(&pkg.model));
    Ok(s)
}
