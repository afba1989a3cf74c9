//! The package's metadata: description, author, license, sizes, the weights' hash and source,
//! and each feature's description; and the names of a multifunction package's functions.

use super::error::BuildError;
use super::plan::Plan;
use crate::mil::ModelInfo;
use crate::models::{Feature, ImageSpec, Part, Role};
use std::collections::BTreeMap;

/// The metadata of the package `plan` builds from the weights at `weights_path`.
pub(super) fn model_info(
    plan: &Plan,
    weights_path: &std::path::Path,
    sha256: &str,
) -> Result<ModelInfo, BuildError> {
    let (opts, model, part, iface) = (plan.opts, plan.model, plan.part, &plan.interface);
    // The features presented as Core ML images, as the lowering types them.
    let images = plan.lowering();
    // Text encoders have no image; an image encoder's weights fix its size (none is recorded
    // unless one was asked for).
    let (role, sizes): (Role, Vec<String>) = match plan.named_sizes() {
        Ok((role, sizes)) if !plan.fixed_by_weights() => (
            role,
            sizes.iter().map(|s| format!("{}x{}", s[0], s[1])).collect(),
        ),
        _ => (Role::Image, Vec::new()),
    };
    let mut user_defined = BTreeMap::from([
        ("mlc.model".to_string(), model.name().to_string()),
        (
            "mlc.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("mlc.target".to_string(), opts.target.name().to_string()),
        ("mlc.weights.sha256".to_string(), sha256.to_string()),
    ]);
    if !sizes.is_empty() {
        // A UNet's sizes are its latent's.
        let key = format!("mlc.{}_sizes", role.name());
        user_defined.insert(key, sizes.join(","));
    }
    if let Some(source) = model.weights_source(weights_path) {
        user_defined.insert("mlc.weights.source".to_string(), source);
    }
    if part != model.parts()[0] {
        user_defined.insert("mlc.part".to_string(), part.name().to_string());
    }
    let d = model.description(part, &sizes.join(", "));
    Ok(ModelInfo {
        short_description: d.short,
        author: d.author,
        license: d.license,
        version: env!("CARGO_PKG_VERSION").to_string(),
        user_defined,
        feature_descriptions: iface
            .inputs
            .iter()
            .map(|f| (f, images.image_inputs.contains(&f.name)))
            .chain(
                iface
                    .outputs
                    .iter()
                    .map(|f| (f, images.image_outputs.contains(&f.name))),
            )
            .map(|(f, as_image)| (f.name.clone(), feature_description(f, as_image)))
            .collect(),
    })
}

/// What a feature's description says; an RGB image passed as a Core ML image is described as
/// one, since the interface's text speaks of the array the model computes on.
fn feature_description(f: &Feature, as_image: bool) -> String {
    match (as_image, f.image) {
        (
            true,
            Some(ImageSpec {
                range: (lo, hi),
                normalization,
            }),
        ) => format!(
            "RGB image, 8 bits per channel (pixels 0..255 are the model's [{lo}, {hi}]{})",
            if normalization.is_some() {
                ", then normalised per channel"
            } else {
                ""
            }
        ),
        _ => f.description.clone(),
    }
}

/// Function names of a multifunction package: what it does and the image size it does it at
/// (`decode_768x1024`).
pub fn function_name(part: Part, image: [usize; 2]) -> String {
    format!("{}_{}x{}", part.function_verb(), image[0], image[1])
}

/// Sets the weights' hash in a lowered model's metadata (known once the lowering has read every
/// tensor fused as it was written).
pub(super) fn set_weights_sha256(model: &mut crate::proto::specification::Model, sha256: &str) {
    if let Some(meta) = model.description.as_mut().and_then(|d| d.metadata.as_mut()) {
        meta.user_defined
            .insert("mlc.weights.sha256".to_string(), sha256.to_string());
    }
}
