//! Where a CLIP text encoder's tensors sit in a file, and its sizes read from their shapes and
//! checked against `config.json`.
//!
//! The transformers layout names every tensor under a text-model prefix: none for
//! `CLIPTextModel` saved by transformers 5, `text_model.` for older saves and
//! `CLIPTextModelWithProjection` (whose `text_projection.weight` sits beside `text_model.`), and
//! the same under a single-file checkpoint's prefix (`cond_stage_model.transformer.` in SD 1.x,
//! `conditioner.embedders.0.transformer.` in SDXL). The builder reads keys without the prefix.
//! OpenCLIP's own layout (SD 2.x, SDXL's second encoder) is read through the view in
//! [`super::openclip`]; [`TextTower`] is whichever of the two a file holds.

use super::openclip::OpenClip;
use crate::models::ModelError;
use crate::weights::{KeyPlacement, PrefixError, TensorSource, Weights};
use std::collections::BTreeMap;

/// The key whose suffix locates the text model in a file.
pub const TOKEN_EMBEDDING: &str = "embeddings.token_embedding.weight";
pub const POSITION_EMBEDDING: &str = "embeddings.position_embedding.weight";
pub const PROJECTION: &str = "text_projection.weight";

/// What identifies one CLIP tower (text or image) in a file, and how messages name it.
pub struct Tower {
    /// "text" or "image".
    pub what: &'static str,
    /// The key suffix only this tower has.
    pub anchor: &'static str,
    /// The tower's own prefix in transformers' layout (`text_model.`).
    pub own_prefix: &'static str,
    /// The projection's key, beside the tower's prefix.
    pub projection: &'static str,
    /// The layouts it is found in, for the message when it is not.
    pub layouts: &'static str,
    /// The other tower's anchor, and what to say when only that one is there.
    pub other: (&'static str, &'static str),
}

/// The text tower.
pub const TEXT: Tower = Tower {
    what: "text",
    anchor: TOKEN_EMBEDDING,
    own_prefix: "text_model.",
    projection: PROJECTION,
    layouts: "transformers layout, bare, under text_model., or under \
              cond_stage_model.transformer. or conditioner.embedders.0.transformer.; nor \
              OpenCLIP's token_embedding.weight, as under cond_stage_model.model. or \
              conditioner.embedders.1.model.",
    other: (
        super::vision_keys::PATCH_EMBEDDING,
        "an image encoder's weights (build clip-vision)",
    ),
};

/// Where a tower's keys are in a file: the root its projection sits under, and the tower's
/// own prefix below that (`text_model.`, or none in a bare save).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLayout {
    /// The prefix the model reads the file under (`""`, `cond_stage_model.transformer.`,
    /// `conditioner.embedders.0.transformer.`): where the projection would be.
    pub root: String,
    /// The tower's own prefix under the root, if the file has it (`text_model.`,
    /// `vision_model.`).
    pub own: &'static str,
    projection: &'static str,
}

impl KeyLayout {
    /// Finds the one `tower` among `keys`, under any prefix ([`KeyPlacement`] with the tower's
    /// anchor).
    pub fn find<'k>(
        keys: impl Iterator<Item = &'k str>,
        tower: &Tower,
    ) -> Result<KeyLayout, String> {
        let (what, anchor) = (tower.what, tower.anchor);
        let mut other = false;
        let keys = keys.inspect(|k| other |= k.ends_with(tower.other.0));
        match KeyLayout::locate(keys, tower)? {
            Some(layout) => Ok(layout),
            None if other => Err(format!(
                "no CLIP {what} encoder here: no key ends in \"{anchor}\", and \"{}\" says these \
                 are {}",
                tower.other.0, tower.other.1
            )),
            None => Err(format!(
                "no CLIP {what} encoder here: no key ends in \"{anchor}\" ({})",
                tower.layouts
            )),
        }
    }

    /// The one `tower` among `keys` if there is one; several are an error.
    fn locate<'k>(
        keys: impl Iterator<Item = &'k str>,
        tower: &Tower,
    ) -> Result<Option<KeyLayout>, String> {
        let placement = KeyPlacement {
            anchors: &[tower.anchor],
            prefixes: &[],
        };
        match placement.find(keys) {
            Ok(prefix) => {
                let (root, own) = match prefix.strip_suffix(tower.own_prefix) {
                    Some(root) => (root.to_string(), tower.own_prefix),
                    None => (prefix, ""),
                };
                Ok(Some(KeyLayout {
                    root,
                    own,
                    projection: tower.projection,
                }))
            }
            Err(PrefixError::Absent) => Ok(None),
            Err(e) => Err(format!(
                "several {} encoders here (under {}); give a file with one",
                tower.what,
                e.prefixes()
            )),
        }
    }

    /// A text tower's keys exactly as the builder names them.
    fn bare() -> KeyLayout {
        KeyLayout {
            root: String::new(),
            own: "",
            projection: PROJECTION,
        }
    }

    /// The prefix of the tower's own keys in the file (`cond_stage_model.transformer.
    /// text_model.`).
    pub fn prefix(&self) -> String {
        format!("{}{}", self.root, self.own)
    }

    /// The builder's key for key `k` under [`KeyLayout::root`], if `k` belongs to the tower.
    pub fn model_key(&self, k: &str) -> Option<String> {
        if k == self.projection {
            return Some(self.projection.to_string());
        }
        k.strip_prefix(self.own).map(str::to_string)
    }

    /// The shapes of the tower's float tensors in `store` (the file under the root), under the
    /// builder's keys.
    pub fn shapes(&self, store: &dyn TensorSource) -> BTreeMap<String, Vec<usize>> {
        store
            .tensors()
            .iter()
            .filter(|(_, i)| i.dtype.is_float())
            .filter_map(|(k, i)| Some((self.model_key(k)?, i.shape.clone())))
            .collect()
    }
}

/// The text encoder a file holds: in the transformers layout under a prefix, or in OpenCLIP's
/// through its view.
pub enum TextTower<'a> {
    Transformers(KeyLayout),
    OpenClip(OpenClip<'a>),
}

impl<'a> TextTower<'a> {
    /// The one text encoder in `source`. An SDXL checkpoint holds two, CLIP-L in the transformers
    /// layout and bigG in OpenCLIP's: the one whose projection (present or not) is the model's
    /// (`projection`) is taken.
    pub fn find(source: &'a dyn TensorSource, projection: bool) -> Result<TextTower<'a>, String> {
        let keys = || source.tensors().keys().map(String::as_str);
        let Some(open) = OpenClip::find(source)? else {
            return KeyLayout::find(keys(), &TEXT).map(TextTower::Transformers);
        };
        let Some(layout) = KeyLayout::locate(keys(), &TEXT)? else {
            return Ok(TextTower::OpenClip(open));
        };
        let towers = [TextTower::Transformers(layout), TextTower::OpenClip(open)];
        let roots = format!("\"{}\", \"{}\"", towers[0].root(), towers[1].root());
        let mut fits = towers
            .into_iter()
            .filter(|t| t.has_projection(source) == projection);
        match (fits.next(), fits.next()) {
            (Some(t), None) => Ok(t),
            _ => Err(format!(
                "several text encoders here (under {roots}); give a file with one"
            )),
        }
    }

    /// The prefix the encoder's keys sit under in the file.
    pub fn root(&self) -> &str {
        match self {
            TextTower::Transformers(l) => &l.root,
            TextTower::OpenClip(o) => o.root(),
        }
    }

    /// The projection's key as the file spells it (whether or not it is there).
    pub fn projection_key(&self) -> String {
        match self {
            TextTower::Transformers(l) => format!("{}{PROJECTION}", l.root),
            TextTower::OpenClip(o) => format!("{}{}", o.root(), super::openclip::OPEN_PROJECTION),
        }
    }

    fn has_projection(&self, source: &dyn TensorSource) -> bool {
        match self {
            TextTower::Transformers(_) => source.tensors().contains_key(&self.projection_key()),
            TextTower::OpenClip(o) => o.has_projection(),
        }
    }

    /// The shapes of the encoder's float tensors under the builder's keys.
    pub fn shapes(&self, source: &dyn TensorSource) -> BTreeMap<String, Vec<usize>> {
        match self {
            TextTower::Transformers(l) => l.shapes(&source.under(&l.root)),
            TextTower::OpenClip(o) => KeyLayout::bare().shapes(o),
        }
    }

    /// The encoder's tensors, read under the builder's keys; the large ones kept as handles
    /// (bigG's 1.4 GB stay out of memory).
    pub fn read(&self, source: &dyn TensorSource) -> Result<Weights, ModelError> {
        match self {
            TextTower::Transformers(_) => Ok(source.read_spilling(self.names(source)?)?),
            TextTower::OpenClip(o) => {
                let wanted = super::transformer::weight_names(o, |k| Some(k.to_string()));
                Ok((o as &dyn TensorSource).read_spilling(wanted)?)
            }
        }
    }

    /// The OpenCLIP view, as a source of its own; None for the transformers layout.
    pub fn into_view(self) -> Option<Box<dyn TensorSource + 'a>> {
        match self {
            TextTower::Transformers(_) => None,
            TextTower::OpenClip(o) => Some(Box::new(o)),
        }
    }

    /// (builder key, file key) of each tensor [`TextTower::read`] reads from the file: what a
    /// LoRA is resolved against. OpenCLIP's q, k and v are slices of one file tensor, which
    /// an overlay on the file cannot patch one by one: a LoRA goes on the view instead
    /// ([`TextTower::into_view`]), where they are the transformers layout's.
    pub fn names(&self, source: &dyn TensorSource) -> Result<Vec<(String, String)>, ModelError> {
        match self {
            TextTower::Transformers(l) => {
                let under = source.under(&l.root);
                Ok(super::transformer::weight_names(&under, |k| l.model_key(k))
                    .into_iter()
                    .map(|(m, k)| (m, format!("{}{k}", l.root)))
                    .collect())
            }
            TextTower::OpenClip(o) => Err(ModelError::WrongModel {
                file: source.path().display().to_string(),
                reason: format!(
                    "the text encoder under \"{}\" is in OpenCLIP's layout: a LoRA is resolved on its view (Model::adapter_view), not on the file",
                    o.root()
                ),
            }),
        }
    }
}

/// The shape of the tensor the builder names `k` (text and image alike).
pub fn shape_of<'s>(
    shapes: &'s BTreeMap<String, Vec<usize>>,
    k: &str,
) -> Result<&'s [usize], String> {
    shapes
        .get(k)
        .map(Vec::as_slice)
        .ok_or_else(|| format!("missing tensor \"{k}\""))
}

/// The two dimensions of the matrix the builder names `k` (text and image alike).
pub fn matrix_of(shapes: &BTreeMap<String, Vec<usize>>, k: &str) -> Result<(usize, usize), String> {
    match *shape_of(shapes, k)? {
        [a, b] => Ok((a, b)),
        ref s => Err(format!("\"{k}\" has shape {s:?}, expected 2 dimensions")),
    }
}

/// How many encoder layers the builder's keys `shapes` hold, counting from 0 up to the first
/// missing one (text and image alike).
pub fn layer_count(shapes: &BTreeMap<String, Vec<usize>>) -> Result<usize, String> {
    let mut layers = 0;
    while shapes
        .keys()
        .any(|k| k.starts_with(&format!("encoder.layers.{layers}.")))
    {
        layers += 1;
    }
    if layers == 0 {
        return Err("no \"encoder.layers.0.*\" tensors".into());
    }
    Ok(layers)
}

/// The activation of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`: OpenAI's CLIP (CLIP-L).
    QuickGelu,
    /// Exact GELU: OpenCLIP (bigG, H).
    Gelu,
}

impl Activation {
    pub fn parse(s: &str) -> Option<Activation> {
        match s {
            "quick_gelu" => Some(Activation::QuickGelu),
            "gelu" => Some(Activation::Gelu),
            _ => None,
        }
    }
}

/// A text encoder's sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub vocab: usize,
    pub positions: usize,
    /// Output size of `text_projection`, when the file has one.
    pub projection: Option<usize>,
    pub epsilon: f32,
    pub activation: Activation,
}

/// Channels per attention head of every CLIP text tower (ViT-L/14 12 x 64, OpenCLIP-H 16 x 64,
/// bigG 20 x 64): what a single-file checkpoint, which carries no config, leaves to convention.
pub const HEAD_WIDTH: usize = 64;

/// Sizes from the tensors' shapes (keys as the builder names them); the head count (the hidden
/// size over [`HEAD_WIDTH`]; 0 when that does not divide it), `epsilon` and `activation` are
/// the model's defaults, which `config.json` may override.
pub fn detect(
    shapes: &BTreeMap<String, Vec<usize>>,
    activation: Activation,
) -> Result<Config, String> {
    let matrix = |k: &str| matrix_of(shapes, k);
    let (vocab, hidden) = matrix(TOKEN_EMBEDDING)?;
    let (positions, d) = matrix(POSITION_EMBEDDING)?;
    if d != hidden {
        return Err(format!(
            "\"{POSITION_EMBEDDING}\" is [{positions}, {d}] but the token embedding has {hidden} channels"
        ));
    }
    let layers = layer_count(shapes)?;
    let (intermediate, _) = matrix("encoder.layers.0.mlp.fc1.weight")?;
    let projection = match shapes.get(PROJECTION) {
        Some(_) => Some(matrix(PROJECTION)?.0),
        None => None,
    };
    let heads = match hidden % HEAD_WIDTH {
        0 => hidden / HEAD_WIDTH,
        _ => 0,
    };
    Ok(Config {
        hidden,
        intermediate,
        layers,
        heads,
        vocab,
        positions,
        projection,
        epsilon: 1e-5,
        activation,
    })
}

/// Refuses a head count that does not divide the hidden size, and a hidden size the default head
/// width does not divide when no config.json names the heads.
pub fn check_heads(cfg: &Config) -> Result<(), String> {
    if cfg.heads == 0 {
        return Err(format!(
            "the hidden size {} is not a multiple of {HEAD_WIDTH}, the channels per head of CLIP's \
             text towers; put the model's config.json (num_attention_heads) beside the weights",
            cfg.hidden
        ));
    }
    if cfg.hidden % cfg.heads != 0 {
        return Err(format!(
            "{} heads (the model's default) do not divide the hidden size {}; put the model's \
             config.json (num_attention_heads) beside the weights",
            cfg.heads, cfg.hidden
        ));
    }
    Ok(())
}

/// Applies `config.json`'s heads, epsilon and activation and checks its sizes against the
/// tensors': the reason names the first field that disagrees.
pub fn apply_config(cfg: &mut Config, json: &serde_json::Value) -> Result<(), String> {
    check_sizes(
        json,
        &[
            ("hidden_size", cfg.hidden),
            ("intermediate_size", cfg.intermediate),
            ("num_hidden_layers", cfg.layers),
            ("vocab_size", cfg.vocab),
            ("max_position_embeddings", cfg.positions),
        ],
    )?;
    // CLIPTextModel's config names a projection_dim its weights do not have; only a model with
    // a projection is held to it.
    if let (Some(p), Some(n)) = (cfg.projection, config_int(json, "projection_dim")?) {
        if n != p {
            return Err(format!("projection_dim is {n} but the tensors give {p}"));
        }
    }
    apply_layer_config(
        json,
        cfg.hidden,
        &mut cfg.heads,
        &mut cfg.epsilon,
        &mut cfg.activation,
    )
}

/// config.json's whole number `field`, where it has one (text and image alike).
pub fn config_int(json: &serde_json::Value, field: &str) -> Result<Option<usize>, String> {
    match json.get(field) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("{field} is {v}, not a whole number")),
    }
}

/// Refuses the first of `checks` (a config.json field, and the size the tensors give) that
/// config.json has with another value (text and image alike).
pub fn check_sizes(json: &serde_json::Value, checks: &[(&str, usize)]) -> Result<(), String> {
    for &(field, have) in checks {
        if let Some(n) = config_int(json, field)? {
            if n != have {
                return Err(format!("{field} is {n} but the tensors give {have}"));
            }
        }
    }
    Ok(())
}

/// What config.json says about the encoder layers (text and image alike): heads (which must
/// divide `hidden`), layer-norm epsilon and activation; absent fields keep their values.
pub fn apply_layer_config(
    json: &serde_json::Value,
    hidden: usize,
    heads: &mut usize,
    epsilon: &mut f32,
    activation: &mut Activation,
) -> Result<(), String> {
    if let Some(v) = json.get("num_attention_heads") {
        let h = v
            .as_u64()
            .and_then(|h| usize::try_from(h).ok())
            .ok_or_else(|| format!("num_attention_heads is {v}, not a whole number"))?;
        if h == 0 || hidden % h != 0 {
            return Err(format!(
                "num_attention_heads {h} does not divide hidden_size {hidden}"
            ));
        }
        *heads = h;
    }
    if let Some(v) = json.get("layer_norm_eps") {
        let e = v
            .as_f64()
            .filter(|e| *e > 0.0 && e.is_finite())
            .ok_or_else(|| format!("layer_norm_eps is {v}, not a positive number"))?;
        *epsilon = e as f32;
    }
    if let Some(v) = json.get("hidden_act") {
        *activation = v
            .as_str()
            .and_then(Activation::parse)
            .ok_or_else(|| format!("hidden_act is {v}; mlc knows \"gelu\" and \"quick_gelu\""))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_found_under_every_prefix() {
        for (key, root, own) in [
            ("embeddings.token_embedding.weight", "", ""),
            (
                "text_model.embeddings.token_embedding.weight",
                "",
                "text_model.",
            ),
            (
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                "cond_stage_model.transformer.",
                "text_model.",
            ),
        ] {
            let l = KeyLayout::find([key, "other.weight"].into_iter(), &TEXT).unwrap();
            assert_eq!((l.root.as_str(), l.own), (root, own));
            let under_root = key.strip_prefix(root).unwrap();
            assert_eq!(l.model_key(under_root).as_deref(), Some(TOKEN_EMBEDDING));
            assert_eq!(
                l.model_key("text_projection.weight").as_deref(),
                Some(PROJECTION)
            );
            assert_eq!(l.prefix(), format!("{root}{own}"));
        }
        let e = KeyLayout::find(["decoder.conv_in.weight"].into_iter(), &TEXT).unwrap_err();
        assert!(e.contains(TOKEN_EMBEDDING), "{e}");
        let two = [
            "a.text_model.embeddings.token_embedding.weight",
            "b.text_model.embeddings.token_embedding.weight",
        ];
        let e = KeyLayout::find(two.into_iter(), &TEXT).unwrap_err();
        assert!(
            e.contains("\"a.text_model.\"") && e.contains("several"),
            "{e}"
        );
        // A key that merely ends like the token embedding is not a text model.
        assert!(
            KeyLayout::find(["xembeddings.token_embedding.weight"].into_iter(), &TEXT).is_err()
        );
    }

    #[test]
    fn config_fields_are_checked_and_applied() {
        let shapes: BTreeMap<String, Vec<usize>> = [
            (TOKEN_EMBEDDING, vec![100, 8]),
            (POSITION_EMBEDDING, vec![7, 8]),
            ("encoder.layers.0.mlp.fc1.weight", vec![32, 8]),
            ("encoder.layers.1.mlp.fc1.weight", vec![32, 8]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut cfg = detect(&shapes, Activation::QuickGelu).unwrap();
        assert_eq!((cfg.layers, cfg.intermediate, cfg.positions), (2, 32, 7));
        // 8 channels: no whole number of 64-channel heads until config.json says.
        let e = check_heads(&cfg).unwrap_err();
        assert!(
            e.contains("not a multiple of 64") && e.contains("config.json"),
            "{e}"
        );
        let json = serde_json::json!({"hidden_size": 8, "num_attention_heads": 4,
            "hidden_act": "gelu", "projection_dim": 512});
        apply_config(&mut cfg, &json).unwrap();
        assert_eq!((cfg.heads, cfg.activation), (4, Activation::Gelu));
        let e = apply_config(&mut cfg, &serde_json::json!({"num_hidden_layers": 3})).unwrap_err();
        assert!(
            e.contains("num_hidden_layers is 3") && e.contains("give 2"),
            "{e}"
        );
        let e = apply_config(&mut cfg, &serde_json::json!({"num_attention_heads": 3})).unwrap_err();
        assert!(e.contains("num_attention_heads 3"), "{e}");
        check_heads(&cfg).unwrap();
    }

    /// A single file carries no config: the heads follow from CLIP's 64 channels per head
    /// (ViT-L/14 12, OpenCLIP-H 16, bigG 20; the pipeline fixture's 64-wide tower 1).
    #[test]
    fn heads_default_to_64_channels_each() {
        for (hidden, heads) in [(768, 12), (1024, 16), (1280, 20), (64, 1)] {
            let shapes: BTreeMap<String, Vec<usize>> = [
                (TOKEN_EMBEDDING, vec![100, hidden]),
                (POSITION_EMBEDDING, vec![77, hidden]),
                ("encoder.layers.0.mlp.fc1.weight", vec![4 * hidden, hidden]),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let cfg = detect(&shapes, Activation::Gelu).unwrap();
            assert_eq!(cfg.heads, heads);
            check_heads(&cfg).unwrap();
        }
    }
}
