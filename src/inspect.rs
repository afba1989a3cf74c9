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

/// The program of a package as a Graphviz graph: inputs and non-const ops as nodes, dataflow
/// edges between them (constants are left out to keep the graph readable).
pub fn dot(model: &spec::Model) -> String {
    use petgraph::dot::{Config, Dot};
    use petgraph::graph::DiGraph;
    let mut g: DiGraph<String, &str> = DiGraph::new();
    if let Some(spec::model::Type::MlProgram(p)) = &model.r#type {
        for (fname, f) in &p.functions {
            let mut by_name = std::collections::HashMap::new();
            for i in &f.inputs {
                by_name.insert(
                    i.name.clone(),
                    g.add_node(format!("{fname}: input {}", i.name)),
                );
            }
            for b in f.block_specializations.values() {
                for op in b.operations.iter().filter(|o| o.r#type != "const") {
                    let name = op
                        .outputs
                        .first()
                        .map(|o| o.name.clone())
                        .unwrap_or_default();
                    let n = g.add_node(format!("{name}: {}", op.r#type));
                    for arg in op.inputs.values().flat_map(|a| &a.arguments) {
                        if let Some(crate::proto::mil_spec::argument::binding::Binding::Name(src)) =
                            &arg.binding
                        {
                            if let Some(&s) = by_name.get(src) {
                                g.add_edge(s, n, "");
                            }
                        }
                    }
                    for o in &op.outputs {
                        by_name.insert(o.name.clone(), n);
                    }
                }
            }
        }
    }
    format!("{}", Dot::with_config(&g, &[Config::EdgeNoLabel]))
}
