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
    // A compiled bundle is read back into a package's form (`mlmodelc::read_as_package`); say
    // which it was, and that its model size is of that form, not of a file in the bundle.
    let bundle = pkg.path.extension().is_some_and(|e| e == "mlmodelc");
    let kind = if bundle { "bundle" } else { "package" };
    let _ = writeln!(s, "{kind} {}", pkg.path.display());
    if let Some(d) = &pkg.model.description {
        if let Some(m) = &d.metadata {
            if !m.short_description.is_empty() {
                let _ = writeln!(s, "description: {}", m.short_description);
            }
        }
    }
    s.push_str(&loras(pkg));
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
        "sizes: model.mlmodel {} bytes{}, weight.bin {} bytes in {} blobs",
        pkg.model.encoded_len(),
        if bundle { " (re-encoded)" } else { "" },
        pkg.weights.as_ref().map_or(0, Vec::len),
        blobs.as_ref().map_or(0, |b| b.len())
    );
    s.push_str(&compression(pkg)?);
    s.push('\n');
    s.push_str(&print_model(&pkg.model));
    Ok(s)
}

/// One line per LoRA the build fused (`lora:`) or kept switchable (`adapter NAME:`, with the
/// function that runs it), from the `mlc.loras` metadata; empty without any.
pub fn loras(pkg: &Package) -> String {
    let Some(text) = pkg
        .model
        .description
        .as_ref()
        .and_then(|d| d.metadata.as_ref())
        .and_then(|m| m.user_defined.get("mlc.loras"))
    else {
        return String::new();
    };
    let Ok(serde_json::Value::Array(list)) = serde_json::from_str::<serde_json::Value>(text) else {
        return format!("loras: unreadable mlc.loras metadata: {text}\n");
    };
    let mut s = String::new();
    for l in &list {
        let field = |k: &str| {
            l.get(k)
                .map(|v| v.to_string().trim_matches('"').to_string())
        };
        let what = match field("adapter") {
            Some(name) => format!("adapter {name} (function {name})"),
            None => "lora (fused)".to_string(),
        };
        let _ = writeln!(
            s,
            "{what}: {} at {}, sha256 {}",
            field("file").unwrap_or_default(),
            field("weight").unwrap_or_default(),
            field("sha256").unwrap_or_default()
        );
    }
    s
}

/// One line per compressed weight (kind, bits, tables, stored bytes vs fp16 dense bytes) and the
/// total; empty for a model without compressed weights.
pub fn compression(pkg: &Package) -> Result<String, PackageError> {
    use crate::proto::mil_spec as pb;
    let Some(spec::model::Type::MlProgram(p)) = &pkg.model.r#type else {
        return Ok(String::new());
    };
    let blobs = pkg.blobs()?;
    let mut lines = Vec::new();
    let (mut stored_total, mut dense_total) = (0usize, 0usize);
    for f in p.functions.values().take(1) {
        for b in f.block_specializations.values() {
            let consts: std::collections::HashMap<&str, &pb::Operation> = b
                .operations
                .iter()
                .filter(|o| o.r#type == "const")
                .filter_map(|o| o.outputs.first().map(|n| (n.name.as_str(), o)))
                .collect();
            // Bytes a const takes: its blob's data, or its immediate's encoded size.
            let bytes = |name: &str| -> usize {
                let Some(op) = consts.get(name) else { return 0 };
                match op.attributes.get("val").and_then(|v| v.value.as_ref()) {
                    Some(pb::value::Value::BlobFileValue(bv)) => blobs
                        .as_ref()
                        .and_then(|r| r.get(bv.offset).ok())
                        .map_or(0, |(_, d)| d.len()),
                    Some(pb::value::Value::ImmediateValue(iv)) => prost::Message::encoded_len(iv),
                    None => 0,
                }
            };
            let dims = |name: &str| -> Vec<u64> {
                let Some(op) = consts.get(name) else {
                    return vec![];
                };
                match op.outputs[0]
                    .r#type
                    .as_ref()
                    .and_then(|t| t.r#type.as_ref())
                {
                    Some(pb::value_type::Type::TensorType(t)) => t
                        .dimensions
                        .iter()
                        .filter_map(|d| match &d.dimension {
                            Some(pb::dimension::Dimension::Constant(c)) => Some(c.size),
                            _ => None,
                        })
                        .collect(),
                    _ => vec![],
                }
            };
            for op in b
                .operations
                .iter()
                .filter(|o| o.r#type.starts_with("constexpr_"))
            {
                let arg = |k: &str| -> String {
                    match op
                        .inputs
                        .get(k)
                        .and_then(|a| a.arguments.first())
                        .and_then(|b| b.binding.as_ref())
                    {
                        Some(pb::argument::binding::Binding::Name(n)) => n.clone(),
                        _ => String::new(),
                    }
                };
                let Some(out) = op.outputs.first() else {
                    continue;
                };
                let n: u64 = match out.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
                    Some(pb::value_type::Type::TensorType(t)) => t
                        .dimensions
                        .iter()
                        .map(|d| match &d.dimension {
                            Some(pb::dimension::Dimension::Constant(c)) => c.size,
                            _ => 0,
                        })
                        .fold(1u64, u64::saturating_mul),
                    _ => 0,
                };
                let (kind, stored) = match op.r#type.as_str() {
                    "constexpr_lut_to_dense" => {
                        let lut = dims(&arg("lut"));
                        let (tables, entries) = if lut.len() >= 3 {
                            (
                                lut[..lut.len() - 2]
                                    .iter()
                                    .fold(1u64, |n, &d| n.saturating_mul(d)),
                                lut[lut.len() - 2],
                            )
                        } else {
                            (1, lut.iter().fold(1u64, |n, &d| n.saturating_mul(d)))
                        };
                        let bits = entries.trailing_zeros();
                        (
                            format!("palettized {bits}-bit, {tables} table(s) of {entries}"),
                            bytes(&arg("indices")) + bytes(&arg("lut")),
                        )
                    }
                    "constexpr_affine_dequantize" => (
                        "8-bit, per channel".to_string(),
                        bytes(&arg("quantized_data"))
                            + bytes(&arg("scale"))
                            + bytes(&arg("zero_point")),
                    ),
                    "constexpr_blockwise_shift_scale" => {
                        let scale = dims(&arg("scale"));
                        (
                            format!("8-bit, scales {scale:?}"),
                            bytes(&arg("data")) + bytes(&arg("scale")) + bytes(&arg("offset")),
                        )
                    }
                    other => (other.to_string(), 0),
                };
                let dense = usize::try_from(n).unwrap_or(usize::MAX).saturating_mul(2);
                stored_total = stored_total.saturating_add(stored);
                dense_total = dense_total.saturating_add(dense);
                lines.push(format!(
                    "  {:<24} {kind}: {stored} bytes (fp16 dense {dense})",
                    out.name
                ));
            }
        }
    }
    if lines.is_empty() {
        return Ok(String::new());
    }
    let ratio = dense_total as f64 / stored_total.max(1) as f64;
    Ok(format!(
        "compressed weights: {} tensors, {stored_total} bytes (fp16 dense {dense_total}, {ratio:.2}x smaller)\n{}\n",
        lines.len(),
        lines.join("\n")
    ))
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

/// `mlc inspect --ranges`: one line per op (program order) with the largest magnitude seen over
/// the calibration samples and the typical one (RMS), flagged where fp16 would fail:
/// `overflow` (beyond 65,504, or infinite), `coarse` (half the fp16 spacing at the largest
/// magnitude exceeds 10% of the RMS), `subnormal` (over 1% of non-zero values below 2^-14).
pub fn ranges(stats: &crate::mil::eval::ActivationStats, samples: usize, sha256: &str) -> String {
    use crate::mil::eval::FP16_MAX;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "activation ranges over {samples} calibration samples (sha256 {sha256})"
    );
    let width = stats
        .ops
        .iter()
        .map(|r| r.op.len())
        .max()
        .unwrap_or(2)
        .max(2);
    let _ = writeln!(
        s,
        "{:width$}  {:<14}  {:>12}  {:>12}  fp16",
        "op", "type", "max |x|", "rms"
    );
    let (mut overflow, mut precision) = (0, 0);
    for r in &stats.ops {
        let mut flags = Vec::new();
        if r.overflows_fp16() {
            flags.push("overflow");
            overflow += 1;
        }
        if r.coarse_in_fp16() {
            flags.push("coarse");
        }
        if r.subnormal_in_fp16() {
            flags.push("subnormal");
        }
        if r.loses_fp16_precision() {
            precision += 1;
        }
        let _ = writeln!(
            s,
            "{:width$}  {:<14}  {:>12.4e}  {:>12.4e}  {}",
            r.op,
            r.kind,
            r.abs_max,
            r.rms(),
            flags.join(",")
        );
    }
    let (peak, at) = stats
        .ops
        .iter()
        .map(|r| (r.abs_max, r.op.as_str()))
        .fold((0f32, ""), |m, x| if x.0 > m.0 { x } else { m });
    let _ = writeln!(
        s,
        "largest {peak:.4e} at {at} ({:.2}% of fp16's {FP16_MAX}); {overflow} ops overflow fp16, \
         {precision} lose precision (coarse: half the fp16 spacing at the largest value exceeds \
         10% of the op's RMS; subnormal: over 1% of non-zero values below 2^-14)",
        100.0 * peak / FP16_MAX
    );
    s
}
