//! The build's LoRAs, resolved against the model's weights before any is read, and what they
//! add to the package's metadata.

use super::error::BuildError;
use super::plan::Plan;
use crate::lora::{Fusion, LoraSummary};
use crate::models::ModelError;
use crate::passes::low_rank_adapter::{Branch, LowRankAdapter};
use crate::tensor::Tensor;
use crate::weights::TensorSource;
use std::collections::BTreeMap;

/// The overlay fusing `plan`'s LoRAs into `source`; None without `--lora`.
pub fn fusion(plan: &Plan, source: &dyn TensorSource) -> Result<Option<Fusion>, BuildError> {
    match plan.opts.loras.is_empty() {
        true => Ok(None),
        false => resolve(plan, source, &plan.opts.loras).map(Some),
    }
}

/// Each `--adapter` as the pass that adds its branches to a function, by function name, and
/// what each adapter is (for the metadata and the report).
#[allow(clippy::type_complexity)]
pub fn adapters(
    plan: &Plan,
    source: &dyn TensorSource,
) -> Result<(Vec<(String, LowRankAdapter)>, Vec<LoraSummary>), BuildError> {
    let (mut passes, mut summaries) = (Vec::new(), Vec::new());
    for a in &plan.opts.adapters {
        let fusion = resolve(plan, source, std::slice::from_ref(&a.lora))?;
        let mut branches = BTreeMap::new();
        for (model_key, shape, terms) in fusion.by_model_key() {
            // Builders name a weight's constant after its key (dots as underscores).
            let node = model_key.replace('.', "_");
            let branch = match terms[..] {
                [(delta, weight)] if delta.low_rank(weight).is_some() => {
                    let (down, up) = delta.low_rank(weight).expect("checked");
                    Branch::LowRank { down, up }
                }
                _ => {
                    let n = shape.iter().product();
                    let mut values = vec![0f32; n];
                    for (delta, weight) in terms {
                        delta.add_to(shape, weight, &mut values).map_err(|reason| {
                            crate::lora::LoraError {
                                file: a.lora.path.clone(),
                                reason,
                            }
                        })?;
                    }
                    Branch::Full(Tensor::f32(shape.to_vec(), values))
                }
            };
            branches.insert(node, branch);
        }
        passes.push((a.name.clone(), LowRankAdapter { branches }));
        summaries.extend(fusion.summaries.into_iter().map(|mut s| {
            s.adapter = Some(a.name.clone());
            s
        }));
    }
    Ok((passes, summaries))
}

fn resolve(
    plan: &Plan,
    source: &dyn TensorSource,
    loras: &[crate::lora::LoraSpec],
) -> Result<Fusion, BuildError> {
    let opts = plan.opts;
    let (model, part) = (plan.model, plan.part);
    let Some(scope) = model.adapter_scope(part) else {
        // validate() refuses --lora for a part without ModelOption::Lora; a part that declares
        // the option but names no scope is a family's bug.
        return Err(ModelError::Option {
            model: model.name(),
            part,
            option: "--lora",
            takes: model.options(part).flags(),
        }
        .into());
    };
    let names = model.weight_names(part, source, &opts.model_options)?;
    let keys: Vec<String> = names.iter().map(|(m, _)| m.clone()).collect();
    let aliases = model.adapter_names(part, &keys);
    Ok(Fusion::resolve(
        loras,
        scope,
        model.name(),
        &names,
        &aliases,
        source.tensors(),
    )?)
}

/// `w` as the user wrote it (0.6, not f32's 0.6000000238418579 widened to f64).
pub fn decimal(w: f32) -> serde_json::Value {
    w.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// `mlc.loras`: each LoRA's file stem, content hash and weight (and, for a switchable
/// adapter, its function), as JSON, in the order given.
pub fn metadata(loras: &[LoraSummary]) -> Option<String> {
    if loras.is_empty() {
        return None;
    }
    let list: Vec<serde_json::Value> = loras
        .iter()
        .map(|l| {
            let mut v =
                serde_json::json!({ "file": l.stem, "sha256": l.sha256, "weight": decimal(l.weight) });
            if let Some(name) = &l.adapter {
                v["adapter"] = name.clone().into();
            }
            v
        })
        .collect();
    Some(serde_json::Value::Array(list).to_string())
}
