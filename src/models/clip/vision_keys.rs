//! Where a CLIP image encoder's tensors sit in a file, and its sizes read from their shapes and
//! checked against `config.json`.
//!
//! transformers' `CLIPVisionModelWithProjection` (and a whole `CLIPModel`) names the image model
//! under `vision_model.` with `visual_projection.weight` beside it; a bare save has no prefix. The
//! builder reads keys without the prefix.

use super::keys::Activation;
use std::collections::BTreeMap;

/// The key whose suffix locates the image model in a file.
pub const PATCH_EMBEDDING: &str = "embeddings.patch_embedding.weight";
pub const CLASS_EMBEDDING: &str = "embeddings.class_embedding";
pub const POSITION_EMBEDDING: &str = "embeddings.position_embedding.weight";
pub const PROJECTION: &str = "visual_projection.weight";

/// Every CLIP image encoder has 64-channel heads; the default head count when no config.json
/// names one.
const HEAD_SIZE: usize = 64;

pub use super::keys::KeyLayout;

/// The image tower.
pub const IMAGE: super::keys::Tower = super::keys::Tower {
    what: "image",
    anchor: PATCH_EMBEDDING,
    own_prefix: "vision_model.",
    projection: PROJECTION,
    layouts: "transformers layout, bare or under vision_model.",
    other: (
        super::keys::TOKEN_EMBEDDING,
        "a text encoder's weights (build clip-l, clip-bigg or clip-h)",
    ),
};

/// An image encoder's sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Side of the square input image, in pixels.
    pub image: usize,
    /// Side of a patch (the patch embedding's kernel and stride).
    pub patch: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    /// Output size of `visual_projection`.
    pub projection: usize,
    pub epsilon: f32,
    pub activation: Activation,
}

impl Config {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image / self.patch
    }

    /// The sequence: the class token, then the patches.
    pub fn tokens(&self) -> usize {
        1 + self.grid() * self.grid()
    }
}

/// Sizes from the tensors' shapes (keys as the builder names them); heads, epsilon and the
/// activation are defaults (64-channel heads, 1e-5, quick_gelu) that `config.json` may override.
pub fn detect(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Config, String> {
    let shape = |k: &str| super::keys::shape_of(shapes, k);
    let matrix = |k: &str| super::keys::matrix_of(shapes, k);
    let (hidden, patch) = match shape(PATCH_EMBEDDING)?[..] {
        [d, 3, p, q] if p == q && p > 0 && d > 0 => (d, p),
        ref s => {
            return Err(format!(
                "\"{PATCH_EMBEDDING}\" has shape {s:?}, expected [hidden, 3, patch, patch] (a \
                 square patch over RGB)"
            ))
        }
    };
    match shape(CLASS_EMBEDDING)?[..] {
        [d] if d == hidden => {}
        ref s => {
            return Err(format!(
                "\"{CLASS_EMBEDDING}\" has shape {s:?}, expected [{hidden}] (the hidden size)"
            ))
        }
    }
    let (positions, d) = matrix(POSITION_EMBEDDING)?;
    if d != hidden {
        return Err(format!(
            "\"{POSITION_EMBEDDING}\" is [{positions}, {d}] but the patch embedding has {hidden} \
             channels"
        ));
    }
    // positions = 1 + grid²: the class token and a square grid of patches.
    let grid = (1..=positions)
        .take_while(|g| g.checked_mul(*g).is_some_and(|n| n < positions))
        .find(|g| 1 + g * g == positions)
        .ok_or_else(|| {
            format!(
                "\"{POSITION_EMBEDDING}\" has {positions} positions; expected 1 + a square \
                 number of patches"
            )
        })?;
    let image = grid
        .checked_mul(patch)
        .ok_or_else(|| format!("{grid} patches of {patch} pixels overflow"))?;
    let layers = super::keys::layer_count(shapes)?;
    let (intermediate, _) = matrix("encoder.layers.0.mlp.fc1.weight")?;
    let projection = match shapes.get(PROJECTION) {
        Some(_) => matrix(PROJECTION)?.0,
        None => {
            return Err(format!(
                "no \"{PROJECTION}\": clip-vision builds CLIPVisionModelWithProjection, whose \
                 image_embeds need it"
            ))
        }
    };
    Ok(Config {
        image,
        patch,
        hidden,
        intermediate,
        layers,
        heads: (hidden / HEAD_SIZE).max(1),
        projection,
        epsilon: 1e-5,
        activation: Activation::QuickGelu,
    })
}

/// Refuses a head count that does not divide the hidden size (the default one, when no
/// config.json names it).
pub fn check_heads(cfg: &Config) -> Result<(), String> {
    if cfg.hidden % cfg.heads != 0 {
        return Err(format!(
            "{} heads (the default: {HEAD_SIZE} channels each) do not divide the hidden size {}; \
             put the model's config.json (num_attention_heads) beside the weights",
            cfg.heads, cfg.hidden
        ));
    }
    Ok(())
}

/// Applies `config.json`'s heads, epsilon and activation and checks its sizes against the
/// tensors': the reason names the first field that disagrees.
pub fn apply_config(cfg: &mut Config, json: &serde_json::Value) -> Result<(), String> {
    use super::keys::config_int;
    if let (Some(image), Some(patch)) = (
        config_int(json, "image_size")?,
        config_int(json, "patch_size")?,
    ) {
        if patch == 0 || image % patch != 0 {
            return Err(format!(
                "image_size {image} is not a multiple of patch_size {patch}"
            ));
        }
    }
    super::keys::check_sizes(
        json,
        &[
            ("image_size", cfg.image),
            ("patch_size", cfg.patch),
            ("hidden_size", cfg.hidden),
            ("intermediate_size", cfg.intermediate),
            ("num_hidden_layers", cfg.layers),
            ("projection_dim", cfg.projection),
            ("num_channels", 3),
        ],
    )?;
    super::keys::apply_layer_config(
        json,
        cfg.hidden,
        &mut cfg.heads,
        &mut cfg.epsilon,
        &mut cfg.activation,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(positions: usize, patch: usize) -> BTreeMap<String, Vec<usize>> {
        [
            (PATCH_EMBEDDING, vec![8, 3, patch, patch]),
            (CLASS_EMBEDDING, vec![8]),
            (POSITION_EMBEDDING, vec![positions, 8]),
            ("encoder.layers.0.mlp.fc1.weight", vec![32, 8]),
            (PROJECTION, vec![4, 8]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn sizes_come_from_the_position_table_and_patch() {
        let cfg = detect(&shapes(1 + 7 * 7, 14)).unwrap();
        assert_eq!((cfg.image, cfg.patch, cfg.tokens()), (98, 14, 50));
        assert_eq!((cfg.layers, cfg.projection, cfg.heads), (1, 4, 1));
        let e = detect(&shapes(7 * 7, 14)).unwrap_err();
        assert!(e.contains("49 positions"), "{e}");
        let mut no_proj = shapes(5, 2);
        no_proj.remove(PROJECTION);
        assert!(detect(&no_proj).unwrap_err().contains(PROJECTION));
    }

    #[test]
    fn config_fields_are_checked_and_applied() {
        let mut cfg = detect(&shapes(1 + 4 * 4, 16)).unwrap();
        let json = serde_json::json!({"image_size": 64, "patch_size": 16, "hidden_size": 8,
            "num_attention_heads": 2, "hidden_act": "gelu"});
        apply_config(&mut cfg, &json).unwrap();
        assert_eq!((cfg.heads, cfg.activation), (2, Activation::Gelu));
        for (json, want) in [
            (
                serde_json::json!({"image_size": 72, "patch_size": 16}),
                "image_size 72 is not a multiple of patch_size 16",
            ),
            (
                serde_json::json!({"image_size": 96}),
                "image_size is 96 but the tensors give 64",
            ),
            (
                serde_json::json!({"projection_dim": 5}),
                "projection_dim is 5",
            ),
            (
                serde_json::json!({"num_attention_heads": 3}),
                "num_attention_heads 3",
            ),
        ] {
            let e = apply_config(&mut cfg, &json).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn layouts_are_found_and_text_weights_are_named() {
        let l = KeyLayout::find(
            [
                "vision_model.embeddings.patch_embedding.weight",
                "visual_projection.weight",
            ]
            .into_iter(),
            &IMAGE,
        )
        .unwrap();
        assert_eq!((l.root.as_str(), l.own), ("", "vision_model."));
        assert_eq!(
            l.model_key("visual_projection.weight").as_deref(),
            Some(PROJECTION)
        );
        let e = KeyLayout::find(
            ["text_model.embeddings.token_embedding.weight"].into_iter(),
            &IMAGE,
        )
        .unwrap_err();
        assert!(e.contains("clip-l"), "{e}");
    }
}
