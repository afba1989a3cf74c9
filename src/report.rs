//! Machine-readable build reports (`mlc build --json`): what scripts need to know about a package.

use crate::compiler::BuildReport;
use crate::package::Package;
use crate::proto::specification as spec;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn feature(f: &spec::FeatureDescription) -> Value {
    match f.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
        Some(spec::feature_type::Type::MultiArrayType(a)) => {
            let dtype = spec::array_feature_type::ArrayDataType::try_from(a.data_type)
                .map(|d| format!("{d:?}").to_lowercase())
                .unwrap_or_default();
            let enumerated: Vec<&Vec<i64>> = match &a.shape_flexibility {
                Some(spec::array_feature_type::ShapeFlexibility::EnumeratedShapes(e)) => {
                    e.shapes.iter().map(|s| &s.shape).collect()
                }
                _ => vec![],
            };
            json!({ "name": f.name, "type": "multiarray", "dtype": dtype, "shape": a.shape, "enumerated_shapes": enumerated })
        }
        Some(spec::feature_type::Type::ImageType(i)) => {
            json!({ "name": f.name, "type": "image", "width": i.width, "height": i.height })
        }
        _ => json!({ "name": f.name, "type": "other" }),
    }
}

/// The report of one build, with the written package's interface.
pub fn build_json(r: &BuildReport, pkg: &Package) -> Value {
    let d = pkg.model.description.clone().unwrap_or_default();
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(spec::model::Type::MlProgram(p)) = &pkg.model.r#type {
        for f in p.functions.values() {
            for b in f.block_specializations.values() {
                for op in &b.operations {
                    *ops.entry(op.r#type.clone()).or_default() += 1;
                }
            }
        }
    }
    let functions: Vec<Value> = d
        .functions
        .iter()
        .map(|f| json!({ "name": f.name, "inputs": f.input.iter().map(feature).collect::<Vec<_>>(), "outputs": f.output.iter().map(feature).collect::<Vec<_>>() }))
        .collect();
    json!({
        "package": r.package.display().to_string(),
        "model": r.model,
        "part": r.part.name(),
        "specification_version": pkg.model.specification_version,
        "inputs": d.input.iter().map(feature).collect::<Vec<_>>(),
        "outputs": d.output.iter().map(feature).collect::<Vec<_>>(),
        "functions": functions,
        "default_function": d.default_function_name,
        "weights_sha256": r.weights_sha256,
        "sizes": { "model_mlmodel_bytes": prost::Message::encoded_len(&pkg.model), "weight_bin_bytes": r.weight_bytes },
        "ops": { "compute": r.ops, "by_type": ops },
        "fp32_ops": r.fp32_ops,
        "loras": r.loras.iter().map(|l| json!({ "file": l.path.display().to_string(), "sha256": l.sha256, "weight": crate::build::lora::decimal(l.weight), "adapter": l.adapter, "weights_changed": l.modules, "skipped_keys": l.skipped })).collect::<Vec<_>>(),
        "largest_intermediate": r.largest_intermediate.as_ref().map(|l| json!({ "name": l.name, "shape": l.shape, "bytes": l.bytes })),
        "ane": { "fits": r.ane.fits(), "verdict": r.ane.verdict(), "notes": r.ane.notes, "misfits": r.ane.misfits().count() },
        "timings_ms": r.timings.iter().map(|(k, t)| json!({ "stage": k, "ms": t.as_secs_f64() * 1e3 })).collect::<Vec<_>>(),
    })
}
