//! What a UNet is: its sizes, read off the tensors (the file alone must be enough: single-file
//! checkpoints carry no config) and checked against a diffusers `config.json` when one is there.

use std::collections::BTreeMap;

/// The Stable Diffusion generation a UNet belongs to: what decides the conventions the tensors
/// cannot tell (heads, the added embedding's widths).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x (1.4, 1.5, inpainting): 1x1-conv projections, 8 heads at every level.
    Sd1,
    /// SD 2.x (2.0, 2.1, 768-v): linear projections, 64 channels per head.
    Sd2,
    /// SDXL base and refiner: linear projections, 64 channels per head, `text_time` added
    /// embedding.
    Sdxl,
}

/// SDXL's added conditioning: `text_embeds` concatenated with a sinusoid of each time id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddedEmbedding {
    /// Width of `text_embeds` (bigG's projection: 1280).
    pub text_embeds: usize,
    /// Number of time ids: 6 (base: original size, crop, target size), 5 (refiner: original
    /// size, crop, aesthetic score).
    pub time_ids: usize,
    /// Channels of each time id's sinusoid (`addition_time_embed_dim`, 256).
    pub time_id_channels: usize,
}

/// A `UNet2DConditionModel`'s architecture, in diffusers' terms.
#[derive(Clone, Debug, PartialEq)]
pub struct UnetConfig {
    pub family: Family,
    /// Latent channels in: 4, or 9 for inpainting (latent, mask, masked-image latent).
    pub in_channels: usize,
    pub out_channels: usize,
    /// Channels per level, top (full resolution) first.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down level (an up level has one more).
    pub layers_per_block: usize,
    /// Transformer blocks per down level, top first; 0 for a level without attention
    /// (`DownBlock2D`). Up level `i` counted from the bottom has the depth of down level
    /// `levels - 1 - i` (diffusers' reversed list).
    pub transformer_depth: Vec<usize>,
    /// Transformer blocks in the mid block.
    pub mid_transformer_depth: usize,
    /// Attention heads per level, top first; the mid block has the last level's.
    pub heads: Vec<usize>,
    /// Width of `encoder_hidden_states` (the text encoder's hidden size).
    pub cross_attention_dim: usize,
    /// `proj_in`/`proj_out` are linear layers (`[C, C]`), not 1x1 convolutions.
    pub linear_projection: bool,
    /// Attention scores and softmax in fp32 (SD 2.1).
    pub upcast_attention: bool,
    /// The timestep sinusoid is `[cos, sin]` (true for every SD UNet).
    pub flip_sin_to_cos: bool,
    /// Subtracted from the sinusoid's frequency index denominator (0 for every SD UNet).
    pub freq_shift: f32,
    /// Width of the time embedding MLP's output (4 x `block_out_channels[0]`).
    pub time_embed_dim: usize,
    /// SDXL's `text_time` added embedding.
    pub added: Option<AddedEmbedding>,
    /// Groups of every GroupNorm (32).
    pub norm_groups: usize,
    /// Epsilon of the resnets' and `conv_norm_out`'s GroupNorms (1e-5).
    pub norm_eps: f32,
}

impl UnetConfig {
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }
}

/// Epsilon of the GroupNorm at the start of each `Transformer2DModel` (diffusers' fixed 1e-6).
pub const TRANSFORMER_NORM_EPS: f32 = 1e-6;
/// Epsilon of the LayerNorms inside each transformer block.
pub const LAYER_NORM_EPS: f32 = 1e-5;

/// The width of each time id's sinusoid in SDXL's added embedding (`addition_time_embed_dim`).
pub const TIME_ID_CHANNELS: usize = 256;
/// `text_embeds` width assumed when the added embedding's input is a whole number of time-id
/// sinusoids (bigG's projection: base 2816 = 1280 + 6 x 256, refiner 2560 = 1280 + 5 x 256).
pub const DEFAULT_TEXT_EMBEDS: usize = 1280;
/// Heads at every level of an SD 1.x UNet.
pub const SD1_HEADS: usize = 8;
/// Channels per head of SD 2.x and SDXL UNets.
pub const CHANNELS_PER_HEAD: usize = 64;

/// Shape lookups over diffusers-named tensors, with one-line errors naming the key.
struct Shapes<'a>(&'a BTreeMap<String, Vec<usize>>);

impl Shapes<'_> {
    fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    fn get<const R: usize>(&self, key: &str) -> Result<[usize; R], String> {
        let s = self
            .0
            .get(key)
            .ok_or_else(|| format!("missing tensor \"{key}\""))?;
        <[usize; R]>::try_from(s.as_slice())
            .map_err(|_| format!("tensor \"{key}\" has shape {s:?}, expected {R} dimensions"))
    }

    /// How many of `key(0)`, `key(1)`, ... are there, counting up to the first absent one.
    fn count(&self, key: impl Fn(usize) -> String) -> usize {
        (0..).take_while(|&i| self.has(&key(i))).count()
    }
}

/// Reads a UNet's architecture off its tensors (diffusers names) and checks that every tensor
/// such a UNet has is there with its shape and that nothing else is: one-line errors naming the
/// key at fault. Heads follow the family's convention (see [`conventional_heads`]); the other
/// fields the tensors cannot tell take every SD UNet's values.
pub fn detect(shapes: &BTreeMap<String, Vec<usize>>) -> Result<UnetConfig, String> {
    let mut cfg = read_sizes(shapes)?;
    cfg.heads = conventional_heads(&cfg)?;
    check_groups(&cfg)?;
    super::tensors::check(&cfg, shapes).map_err(|p| p.to_string())?;
    Ok(cfg)
}

/// The sizes the tensors give, heads left empty (config.json or [`conventional_heads`] fills
/// them); the tensors are not yet checked against the sizes ([`check_tensors`]).
pub(super) fn read_sizes(shapes: &BTreeMap<String, Vec<usize>>) -> Result<UnetConfig, String> {
    let s = Shapes(shapes);
    let [c0, in_channels, kh, kw] = s.get("conv_in.weight")?;
    if [kh, kw] != [3, 3] {
        return Err(format!(
            "tensor \"conv_in.weight\" has a {kh}x{kw} kernel; mlc builds 3x3 (conv_in_kernel 3)"
        ));
    }
    let levels = s.count(|i| format!("down_blocks.{i}.resnets.0.conv1.weight"));
    if levels == 0 {
        return Err("missing tensor \"down_blocks.0.resnets.0.conv1.weight\"".into());
    }
    let mut block_out_channels = Vec::with_capacity(levels);
    let mut transformer_depth = Vec::with_capacity(levels);
    for i in 0..levels {
        let [c, ..] = s.get::<4>(&format!("down_blocks.{i}.resnets.0.conv1.weight"))?;
        block_out_channels.push(c);
        transformer_depth.push(s.count(|k| {
            format!("down_blocks.{i}.attentions.0.transformer_blocks.{k}.attn1.to_q.weight")
        }));
    }
    if block_out_channels[0] != c0 {
        return Err(format!(
            "tensor \"conv_in.weight\" has {c0} output channels but \
             \"down_blocks.0.resnets.0.conv1.weight\" has {}",
            block_out_channels[0]
        ));
    }
    let layers_per_block = s.count(|j| format!("down_blocks.0.resnets.{j}.conv1.weight"));
    let mid = "mid_block.attentions.0";
    let mid_transformer_depth =
        s.count(|k| format!("{mid}.transformer_blocks.{k}.attn1.to_q.weight"));
    if mid_transformer_depth == 0 {
        return Err(format!(
            "missing tensor \"{mid}.transformer_blocks.0.attn1.to_q.weight\" (mlc builds \
             UNetMidBlock2DCrossAttn)"
        ));
    }
    let [_, cross_attention_dim] =
        s.get(&format!("{mid}.transformer_blocks.0.attn2.to_k.weight"))?;
    let proj_in = format!("{mid}.proj_in.weight");
    let linear_projection = match shapes.get(&proj_in).map(Vec::len) {
        Some(2) => true,
        Some(4) => false,
        Some(_) => return Err(format!(
            "tensor \"{proj_in}\" has shape {:?}, expected a linear [C, C] or 1x1-conv [C, C, 1, 1] weight",
            shapes[&proj_in]
        )),
        None => return Err(format!("missing tensor \"{proj_in}\"")),
    };
    let [time_embed_dim, _] = s.get("time_embedding.linear_1.weight")?;
    let [out_channels, ..] = s.get::<4>("conv_out.weight")?;
    let added = match s.has("add_embedding.linear_1.weight") {
        true => Some(added_embedding(
            s.get::<2>("add_embedding.linear_1.weight")?[1],
        )?),
        false => None,
    };
    let family = match (linear_projection, added.is_some()) {
        (false, false) => Family::Sd1,
        (true, false) => Family::Sd2,
        (true, true) => Family::Sdxl,
        (false, true) => {
            return Err(format!(
                "tensor \"add_embedding.linear_1.weight\" (SDXL's added embedding) beside \
                 1x1-conv projections (\"{proj_in}\" is {:?}) fits no family: SDXL's projections \
                 are linear",
                shapes[&proj_in]
            ))
        }
    };
    Ok(UnetConfig {
        family,
        in_channels,
        out_channels,
        block_out_channels,
        layers_per_block,
        transformer_depth,
        mid_transformer_depth,
        heads: Vec::new(),
        cross_attention_dim,
        linear_projection,
        upcast_attention: false,
        flip_sin_to_cos: true,
        freq_shift: 0.0,
        time_embed_dim,
        added,
        norm_groups: 32,
        norm_eps: 1e-5,
    })
}

/// SDXL's added embedding from `add_embedding.linear_1`'s in-features: `text_embeds` + n x 256
/// with n = 6 (base) or 5 (refiner); the text width is the part below 256 when there is one,
/// else bigG's 1280.
fn added_embedding(inputs: usize) -> Result<AddedEmbedding, String> {
    let below = inputs % TIME_ID_CHANNELS;
    let text_embeds = if below != 0 {
        below
    } else {
        DEFAULT_TEXT_EMBEDS
    };
    let time_ids = inputs
        .checked_sub(text_embeds)
        .map(|ids| ids / TIME_ID_CHANNELS)
        .filter(|n| [5, 6].contains(n));
    match time_ids {
        Some(time_ids) => Ok(AddedEmbedding {
            text_embeds,
            time_ids,
            time_id_channels: TIME_ID_CHANNELS,
        }),
        None => Err(format!(
            "tensor \"add_embedding.linear_1.weight\" takes {inputs} inputs, which is not \
             text_embeds + 5 or 6 time ids x {TIME_ID_CHANNELS} (SDXL base: 1280 + 6 x 256 = \
             2816, refiner: 1280 + 5 x 256 = 2560): fits no family"
        )),
    }
}

/// Heads by the family's convention (SD 1.x: 8 at every level; SD 2.x and SDXL: 64 channels
/// each). A level without attention reads no heads: it gets the convention's count when its
/// width fits, else 1 (as diffusers' configs list for such levels).
pub fn conventional_heads(cfg: &UnetConfig) -> Result<Vec<usize>, String> {
    let levels = cfg.levels();
    (0..levels)
        .map(|i| {
            let c = cfg.block_out_channels[i];
            let attention =
                has_attention(cfg, i) || (i + 1 == levels && cfg.mid_transformer_depth > 0);
            let (heads, fits, rule) = match cfg.family {
                Family::Sd1 => (
                    SD1_HEADS,
                    c > 0 && c % SD1_HEADS == 0,
                    format!("{SD1_HEADS} heads"),
                ),
                Family::Sd2 | Family::Sdxl => (
                    c / CHANNELS_PER_HEAD,
                    c > 0 && c % CHANNELS_PER_HEAD == 0,
                    format!("{CHANNELS_PER_HEAD} channels per head"),
                ),
            };
            match (fits, attention) {
                (true, _) => Ok(heads),
                (false, false) => Ok(1),
                (false, true) => Err(format!(
                    "level {i} has {c} channels, which do not fit the {:?} convention of {rule}; \
                     the tensors cannot tell the head count: give the config.json \
                     (num_attention_heads or attention_head_dim) beside the weights",
                    cfg.family
                )),
            }
        })
        .collect()
}

type Json = serde_json::Value;

/// config.json's `name`, None when absent or null (diffusers' "the default").
fn field<'a>(json: &'a Json, name: &str) -> Option<&'a Json> {
    json.get(name).filter(|v| !v.is_null())
}

fn whole(v: &Json, name: &str) -> Result<usize, String> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("{name} is {v}, not a whole number"))
}

/// A whole number, or a list of them (one per level).
fn wholes(v: &Json, name: &str) -> Result<Vec<usize>, String> {
    match v.as_array() {
        Some(list) => list.iter().map(|x| whole(x, name)).collect(),
        None => Ok(vec![whole(v, name)?]),
    }
}

fn boolean(v: &Json, name: &str) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("{name} is {v}, not true or false"))
}

fn number(v: &Json, name: &str) -> Result<f64, String> {
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("{name} is {v}, not a number"))
}

/// `name`'s value (an int, or a per-level list that must agree at every level) against what
/// the tensors give.
fn agree_each(json: &Json, name: &str, have: usize, levels: usize) -> Result<(), String> {
    let Some(v) = field(json, name) else {
        return Ok(());
    };
    let list = wholes(v, name)?;
    let fits = match v.is_array() {
        true => list.len() == levels && list.iter().all(|&n| n == have),
        false => list == [have],
    };
    match fits {
        true => Ok(()),
        false => Err(format!("{name} is {v} but the tensors give {have}")),
    }
}

/// Settings mlc does not build, as (field, the values it builds); a config.json with another
/// value is refused naming the field. Null and absent fields are diffusers' defaults, which are
/// these.
const BUILT_STRINGS: [(&str, &str); 6] = [
    ("time_embedding_type", "positional"),
    ("resnet_time_scale_shift", "default"),
    ("attention_type", "default"),
    ("mid_block_type", "UNetMidBlock2DCrossAttn"),
    ("act_fn", "silu"),
    ("addition_embed_type", "text_time"),
];
const BUILT_NULLS: [&str; 9] = [
    "class_embed_type",
    "num_class_embeds",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "time_cond_proj_dim",
    "time_embedding_act_fn",
    "timestep_post_act",
    "cross_attention_norm",
    "reverse_transformer_layers_per_block",
];
const BUILT_FALSE: [&str; 6] = [
    "dual_cross_attention",
    "only_cross_attention",
    "center_input_sample",
    "class_embeddings_concat",
    "resnet_skip_time_act",
    "mid_block_only_cross_attention",
];
const BUILT_NUMBERS: [(&str, f64); 5] = [
    ("conv_in_kernel", 3.0),
    ("conv_out_kernel", 3.0),
    ("downsample_padding", 1.0),
    ("mid_block_scale_factor", 1.0),
    ("resnet_out_scale_factor", 1.0),
];

/// Refuses the settings of `json` mlc does not build, naming the first such field.
fn refuse_unbuilt(json: &Json) -> Result<(), String> {
    for (name, built) in BUILT_STRINGS {
        if let Some(v) = field(json, name) {
            if v.as_str() != Some(built) {
                return Err(format!("{name} is {v}; mlc builds \"{built}\""));
            }
        }
    }
    for name in BUILT_NULLS {
        if let Some(v) = field(json, name) {
            return Err(format!("{name} is {v}; mlc builds UNets without it (null)"));
        }
    }
    for name in BUILT_FALSE {
        if let Some(v) = field(json, name) {
            // only_cross_attention may be given per level.
            let set = match v.as_array() {
                Some(list) => list.iter().any(|x| x.as_bool() != Some(false)),
                None => v.as_bool() != Some(false),
            };
            if set {
                return Err(format!(
                    "{name} is {v}; mlc builds UNets without it (false)"
                ));
            }
        }
    }
    for (name, built) in BUILT_NUMBERS {
        if let Some(v) = field(json, name) {
            if number(v, name)? != built {
                return Err(format!("{name} is {v}; mlc builds {built}"));
            }
        }
    }
    Ok(())
}

/// Checks a diffusers UNet `config.json` against the sizes the tensors gave (`cfg`): the reason
/// names the field and both values. Takes what only the config tells (heads, upcast, the
/// timestep sinusoid's settings, group-norm groups and epsilon) and refuses settings mlc does
/// not build, naming the field.
pub fn apply_config(cfg: &mut UnetConfig, json: &Json) -> Result<(), String> {
    if !json.is_object() {
        return Err(format!("the config is {json}, not a JSON object"));
    }
    refuse_unbuilt(json)?;
    let levels = cfg.levels();
    for (name, have) in [
        ("in_channels", cfg.in_channels),
        ("out_channels", cfg.out_channels),
        ("time_embedding_dim", cfg.time_embed_dim),
    ] {
        if let Some(v) = field(json, name) {
            if whole(v, name)? != have {
                return Err(format!("{name} is {v} but the tensors give {have}"));
            }
        }
    }
    if let Some(v) = field(json, "block_out_channels") {
        let list: Vec<usize> = match v.as_array() {
            Some(l) => l
                .iter()
                .map(|x| whole(x, "block_out_channels"))
                .collect::<Result<_, _>>()?,
            None => return Err(format!("block_out_channels is {v}, not a list")),
        };
        if list != cfg.block_out_channels {
            return Err(format!(
                "block_out_channels is {v} but the tensors give {:?}",
                cfg.block_out_channels
            ));
        }
    }
    agree_each(json, "layers_per_block", cfg.layers_per_block, levels)?;
    agree_each(json, "cross_attention_dim", cfg.cross_attention_dim, levels)?;
    if let Some(v) = field(json, "use_linear_projection") {
        if boolean(v, "use_linear_projection")? != cfg.linear_projection {
            return Err(format!(
                "use_linear_projection is {v} but the tensors give {} (proj_in.weight is {})",
                cfg.linear_projection,
                if cfg.linear_projection {
                    "[C, C]"
                } else {
                    "[C, C, 1, 1]"
                }
            ));
        }
    }
    check_block_types(cfg, json)?;
    check_depths(cfg, json)?;
    check_added(cfg, json)?;
    take_settings(cfg, json)
}

/// `down_block_types` and `up_block_types`: which levels have attention must be what the
/// tensors give (up levels mirror the down ones).
fn check_block_types(cfg: &UnetConfig, json: &Json) -> Result<(), String> {
    let levels = cfg.levels();
    for (name, with, without, mirrored) in [
        (
            "down_block_types",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
            false,
        ),
        ("up_block_types", "CrossAttnUpBlock2D", "UpBlock2D", true),
    ] {
        let Some(v) = field(json, name) else {
            continue;
        };
        let Some(list) = v.as_array().filter(|l| l.len() == levels) else {
            return Err(format!(
                "{name} is {v} but the tensors give {levels} levels"
            ));
        };
        for (i, t) in list.iter().enumerate() {
            let level = if mirrored { levels - 1 - i } else { i };
            let attention = has_attention(cfg, level);
            let want = if attention { with } else { without };
            if t.as_str() != Some(want) {
                let known = t.as_str() == Some(with) || t.as_str() == Some(without);
                let why = match known {
                    true if attention => "the tensors have attention there",
                    true => "the tensors have no attention there",
                    false => "mlc builds CrossAttn and plain blocks",
                };
                return Err(format!(
                    "{name}[{i}] is {t} but the tensors give \"{want}\" ({why})"
                ));
            }
        }
    }
    Ok(())
}

/// `transformer_layers_per_block` (an int, or one per level): the depth of each level with
/// attention, and the last one the mid block's.
fn check_depths(cfg: &UnetConfig, json: &Json) -> Result<(), String> {
    let name = "transformer_layers_per_block";
    let Some(v) = field(json, name) else {
        return Ok(());
    };
    let levels = cfg.levels();
    let list = wholes(v, name)?;
    let depths = match (v.is_array(), list.len()) {
        (false, _) => vec![list[0]; levels],
        (true, n) if n == levels => list,
        _ => {
            return Err(format!(
                "{name} is {v} but the tensors give {levels} levels"
            ))
        }
    };
    for (i, (&want, &have)) in depths.iter().zip(&cfg.transformer_depth).enumerate() {
        if have > 0 && want != have {
            return Err(format!(
                "{name} is {v} but the tensors give {have} transformer block(s) at level {i}"
            ));
        }
    }
    if depths[levels - 1] != cfg.mid_transformer_depth {
        return Err(format!(
            "{name} is {v} but the tensors give {} transformer block(s) in the mid block",
            cfg.mid_transformer_depth
        ));
    }
    Ok(())
}

/// SDXL's added embedding: `addition_embed_type` "text_time" exactly when the tensors have it,
/// with their widths.
fn check_added(cfg: &UnetConfig, json: &Json) -> Result<(), String> {
    let text_time = field(json, "addition_embed_type").is_some();
    match (&cfg.added, text_time) {
        (None, true) => Err(
            "addition_embed_type is \"text_time\" but the tensors have no add_embedding.*".into(),
        ),
        (Some(_), false) if json.get("addition_embed_type").is_some() => Err(
            "addition_embed_type is null but the tensors have add_embedding.* (text_time)".into(),
        ),
        (Some(a), _) => {
            let inputs = a
                .time_ids
                .checked_mul(a.time_id_channels)
                .and_then(|n| n.checked_add(a.text_embeds));
            for (name, have) in [
                ("projection_class_embeddings_input_dim", inputs),
                ("addition_time_embed_dim", Some(a.time_id_channels)),
            ] {
                if let Some(v) = field(json, name) {
                    if Some(whole(v, name)?) != have {
                        return Err(format!(
                            "{name} is {v} but the tensors give {}",
                            have.map_or("an overflow".into(), |n| n.to_string())
                        ));
                    }
                }
            }
            Ok(())
        }
        (None, false) => Ok(()),
    }
}

/// What only the config tells: heads (`num_attention_heads`, else diffusers' misnamed
/// `attention_head_dim`, which holds the head count), upcast attention, the timestep
/// sinusoid's settings, group-norm groups and epsilon.
fn take_settings(cfg: &mut UnetConfig, json: &Json) -> Result<(), String> {
    let levels = cfg.levels();
    for name in ["num_attention_heads", "attention_head_dim"] {
        let Some(v) = field(json, name) else {
            continue;
        };
        let heads = wholes(v, name)?;
        cfg.heads = match (v.is_array(), heads.len()) {
            (false, _) => vec![heads[0]; levels],
            (true, n) if n == levels => heads,
            _ => {
                return Err(format!(
                    "{name} is {v} but the tensors give {levels} levels"
                ))
            }
        };
        check_heads(cfg, &format!("{name} {v}"))?;
        break;
    }
    if let Some(v) = field(json, "upcast_attention") {
        cfg.upcast_attention = boolean(v, "upcast_attention")?;
    }
    if let Some(v) = field(json, "flip_sin_to_cos") {
        cfg.flip_sin_to_cos = boolean(v, "flip_sin_to_cos")?;
    }
    if let Some(v) = field(json, "freq_shift") {
        cfg.freq_shift = number(v, "freq_shift")? as f32;
    }
    if let Some(v) = field(json, "norm_eps") {
        let eps = number(v, "norm_eps")?;
        if eps <= 0.0 {
            return Err(format!("norm_eps is {v}, not a positive number"));
        }
        cfg.norm_eps = eps as f32;
    }
    if let Some(v) = field(json, "norm_num_groups") {
        cfg.norm_groups = whole(v, "norm_num_groups")?;
        check_groups(cfg).map_err(|e| format!("norm_num_groups is {v}: {e}"))?;
    }
    if cfg.heads.is_empty() {
        cfg.heads = conventional_heads(cfg)?;
    }
    Ok(())
}

/// Refuses a group count that does not divide the channels of every group norm.
pub fn check_groups(cfg: &UnetConfig) -> Result<(), String> {
    let g = cfg.norm_groups;
    match group_norm_widths(cfg)
        .into_iter()
        .find(|&c| g == 0 || c % g != 0)
    {
        Some(c) => Err(format!(
            "{g} groups do not divide the {c} channels of one of its group norms"
        )),
        None => Ok(()),
    }
}

/// The block widths and every up resnet's input width (previous output + skip): what the
/// group norms divide into groups.
fn group_norm_widths(cfg: &UnetConfig) -> Vec<usize> {
    let c = &cfg.block_out_channels;
    let mut widths = c.clone();
    for level in 0..c.len() {
        let above = c[level.saturating_sub(1)];
        let below = c.get(level + 1).copied().unwrap_or(c[level]);
        widths.extend([
            c[level].saturating_add(below),
            c[level].saturating_add(above),
        ]);
        widths.push(c[level].saturating_add(c[level]));
    }
    widths
}

/// Whether down level `i` (and its mirrored up level) has transformers.
fn has_attention(cfg: &UnetConfig, i: usize) -> bool {
    cfg.transformer_depth.get(i).is_some_and(|&d| d > 0)
}

/// Refuses heads that do not divide the channels of a level with attention (the mid block has
/// the last level's). `whose` says where the heads came from.
pub fn check_heads(cfg: &UnetConfig, whose: &str) -> Result<(), String> {
    let levels = cfg.levels();
    if cfg.heads.len() != levels {
        return Err(format!(
            "{whose} list {} levels but the tensors give {levels}",
            cfg.heads.len()
        ));
    }
    for i in 0..levels {
        let (c, h) = (cfg.block_out_channels[i], cfg.heads[i]);
        let attention = has_attention(cfg, i) || i + 1 == levels;
        if h == 0 || (attention && c % h != 0) {
            return Err(format!(
                "{whose}: {h} heads at level {i} do not divide its {c} channels"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// SD 1.5's real sizes.
    fn sd15() -> UnetConfig {
        UnetConfig {
            family: Family::Sd1,
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            transformer_depth: vec![1, 1, 1, 0],
            mid_transformer_depth: 1,
            heads: vec![8; 4],
            cross_attention_dim: 768,
            linear_projection: false,
            upcast_attention: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            time_embed_dim: 1280,
            added: None,
            norm_groups: 32,
            norm_eps: 1e-5,
        }
    }

    /// SDXL base's and refiner's real sizes.
    fn sdxl(time_ids: usize) -> UnetConfig {
        UnetConfig {
            family: Family::Sdxl,
            block_out_channels: vec![320, 640, 1280],
            transformer_depth: vec![0, 2, 10],
            mid_transformer_depth: 10,
            heads: vec![5, 10, 20],
            cross_attention_dim: 2048,
            linear_projection: true,
            added: Some(AddedEmbedding {
                text_embeds: 1280,
                time_ids,
                time_id_channels: 256,
            }),
            ..sd15()
        }
    }

    #[test]
    fn real_sizes_are_read_back_from_their_tensors() {
        for cfg in [sd15(), sdxl(6), sdxl(5)] {
            let shapes = super::super::tensors::expected(&cfg).unwrap();
            assert_eq!(detect(&shapes).unwrap(), cfg);
        }
        // 686 tensors in SD 1.5's UNet, 1680 in SDXL base's.
        assert_eq!(super::super::tensors::expected(&sd15()).unwrap().len(), 686);
        assert_eq!(
            super::super::tensors::expected(&sdxl(6)).unwrap().len(),
            1680
        );
    }

    #[test]
    fn time_ids_are_what_is_left_of_256_channel_sinusoids() {
        let a = |n| added_embedding(n).map(|a| (a.text_embeds, a.time_ids));
        assert_eq!(a(2816), Ok((1280, 6)));
        assert_eq!(a(2560), Ok((1280, 5)));
        assert_eq!(a(1568), Ok((32, 6)));
        for bad in [0, 256, 1280, 2304, 3072, 32 + 4 * 256, usize::MAX] {
            assert!(
                a(bad)
                    .unwrap_err()
                    .contains("add_embedding.linear_1.weight"),
                "{bad}"
            );
        }
    }

    #[test]
    fn config_values_of_the_wrong_kind_are_named() {
        for (json, field) in [
            (json!({"block_out_channels": 320}), "block_out_channels"),
            (json!({"in_channels": "4"}), "in_channels"),
            (
                json!({"layers_per_block": [2, 2, 3, 2]}),
                "layers_per_block",
            ),
            (
                json!({"cross_attention_dim": [768, 768]}),
                "cross_attention_dim",
            ),
            (json!({"attention_head_dim": [8, 8]}), "attention_head_dim"),
            (json!({"num_attention_heads": 0}), "num_attention_heads"),
            (json!({"upcast_attention": "yes"}), "upcast_attention"),
            (json!({"norm_eps": -1.0}), "norm_eps"),
            (json!({"up_block_types": ["UpBlock2D"]}), "up_block_types"),
            (
                json!({"transformer_layers_per_block": [[1, 1], [1, 1], [1, 1], [1, 1]]}),
                "transformer_layers_per_block",
            ),
            (
                json!({"encoder_hid_dim_type": "text_proj"}),
                "encoder_hid_dim_type",
            ),
            (json!({"time_embedding_dim": 640}), "time_embedding_dim"),
            (
                json!({"resnet_out_scale_factor": 2.0}),
                "resnet_out_scale_factor",
            ),
            (json!([1, 2]), "JSON object"),
        ] {
            let e = apply_config(&mut sd15(), &json).unwrap_err();
            assert!(e.contains(field) && !e.contains('\n'), "{json}: {e}");
        }
        // Nulls are diffusers' defaults; a per-level list applies per level.
        let mut cfg = sd15();
        let json = json!({"class_embed_type": null, "num_attention_heads": null,
            "attention_head_dim": [5, 10, 20, 20], "only_cross_attention": false,
            "freq_shift": 1, "flip_sin_to_cos": false, "norm_num_groups": 16});
        apply_config(&mut cfg, &json).unwrap();
        assert_eq!(cfg.heads, [5, 10, 20, 20]);
        assert_eq!(
            (cfg.freq_shift, cfg.flip_sin_to_cos, cfg.norm_groups),
            (1.0, false, 16)
        );
        let mut cfg = sdxl(6);
        let e = apply_config(
            &mut cfg,
            &json!({"projection_class_embeddings_input_dim": 2560}),
        )
        .unwrap_err();
        assert!(
            e.contains("projection_class_embeddings_input_dim is 2560") && e.contains("2816"),
            "{e}"
        );
        let e = apply_config(&mut cfg, &json!({"addition_embed_type": null})).unwrap_err();
        assert!(e.contains("addition_embed_type"), "{e}");
    }
}
