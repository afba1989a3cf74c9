//! The build's LoRAs, resolved against the model's weights before any is read, and what they
//! add to the package's metadata.

use super::error::BuildError;
use super::plan::Plan;
use crate::lora::{Fusion, LoraSummary};
use crate::models::ModelError;
use crate::weights::TensorSource;

/// The overlay fusing `plan`'s LoRAs into `source`; None without `--lora`.
pub fn fusion(plan: &Plan, source: &dyn TensorSource) -> Result<Option<Fusion>, BuildError> {
    let opts = plan.opts;
    if opts.loras.is_empty() {
        return Ok(None);
    }
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
    let fusion = Fusion::resolve(
        &opts.loras,
        scope,
        model.name(),
        &names,
        &aliases,
        source.tensors(),
    )?;
    Ok(Some(fusion))
}

/// `mlc.loras`: each LoRA's file stem, content hash and weight, as JSON, in the order fused.
pub fn metadata(loras: &[LoraSummary]) -> Option<String> {
    if loras.is_empty() {
        return None;
    }
    let list: Vec<serde_json::Value> = loras
        .iter()
        .map(|l| serde_json::json!({ "file": l.stem, "sha256": l.sha256, "weight": l.weight }))
        .collect();
    Some(serde_json::Value::Array(list).to_string())
}
