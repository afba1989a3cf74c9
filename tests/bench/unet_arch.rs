//! The synthetic UNets' tensors (included with `#[path]`): every tensor of a diffusers
//! `UNet2DConditionModel` from its config.json, in diffusers' names or the single-file
//! checkpoints' LDM/SGM names ([`Arch::ldm_name`]).

use std::collections::BTreeMap;

use super::tensor_file::{Fill, Spec, Specs};

/// What decides a `UNet2DConditionModel`'s tensors, read from its config.json.
#[derive(Debug)]
pub struct Arch {
    in_channels: usize,
    out_channels: usize,
    conv_in_kernel: usize,
    conv_out_kernel: usize,
    /// Channels per level, top (full resolution) first.
    widths: Vec<usize>,
    /// Resnets per down level (an up level has one more).
    pub layers: usize,
    /// Transformer blocks per down level, top first; 0 for a `DownBlock2D`.
    down_depth: Vec<usize>,
    /// Transformer blocks per up level, bottom first; 0 for an `UpBlock2D`.
    up_depth: Vec<usize>,
    /// Transformer blocks of the mid block (diffusers gives it the last level's).
    mid_depth: usize,
    cross_attention_dim: usize,
    /// `proj_in`/`proj_out` are linear layers, not 1x1 convolutions.
    linear_projection: bool,
    time_embed_dim: usize,
    /// In-features of `add_embedding.linear_1` (SDXL's `text_time`).
    added: Option<usize>,
}

fn field<'a>(c: &'a serde_json::Value, key: &str) -> Result<&'a serde_json::Value, String> {
    c.get(key)
        .ok_or_else(|| format!("config.json: missing field \"{key}\""))
}

fn count(v: &serde_json::Value, key: &str) -> Result<usize, String> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("config.json: \"{key}\" is {v}, not a positive integer"))
}

fn string_list(c: &serde_json::Value, key: &str, n: usize) -> Result<Vec<String>, String> {
    let v = field(c, key)?;
    let list: Option<Vec<String>> = v
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or(None);
    match list {
        Some(l) if l.len() == n => Ok(l),
        _ => Err(format!(
            "config.json: \"{key}\" is {v}, not a list of {n} names (one per block_out_channels entry)"
        )),
    }
}

/// A per-level count given as one integer for all levels or a list of one per level.
fn per_level(c: &serde_json::Value, key: &str, n: usize) -> Result<Vec<usize>, String> {
    let v = field(c, key)?;
    match v.as_array() {
        None => Ok(vec![count(v, key)?; n]),
        Some(a) if a.len() == n => a.iter().map(|x| count(x, key)).collect(),
        Some(_) => Err(format!(
            "config.json: \"{key}\" is {v}, not one integer per level ({n})"
        )),
    }
}

/// Fails naming `key` unless the config leaves it null (a feature SD UNets do not use).
fn unused(c: &serde_json::Value, key: &str) -> Result<(), String> {
    match c.get(key) {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(v) => Err(format!(
            "config.json: \"{key}\" is {v}; only null is supported (no SD UNet sets it)"
        )),
    }
}

impl Arch {
    /// The architecture of a diffusers `UNet2DConditionModel` config.json, limited to what SD
    /// 1.x/2.x and SDXL UNets use; anything else is refused naming the field.
    pub fn from_config(c: &serde_json::Value) -> Result<Arch, String> {
        let widths: Vec<usize> = match field(c, "block_out_channels")?.as_array() {
            Some(a) if !a.is_empty() => a
                .iter()
                .map(|x| count(x, "block_out_channels"))
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(
                    "config.json: \"block_out_channels\" is not a list of channel counts".into(),
                )
            }
        };
        let n = widths.len();
        for key in [
            "class_embed_type",
            "encoder_hid_dim_type",
            "time_cond_proj_dim",
            "reverse_transformer_layers_per_block",
        ] {
            unused(c, key)?;
        }
        let attention = |key: &str, cross: &str, plain: &str| -> Result<Vec<bool>, String> {
            string_list(c, key, n)?
                .iter()
                .map(|t| match t.as_str() {
                    t if t == cross => Ok(true),
                    t if t == plain => Ok(false),
                    t => Err(format!(
                        "config.json: \"{key}\" has \"{t}\"; supported: {cross}, {plain}"
                    )),
                })
                .collect()
        };
        let down = attention("down_block_types", "CrossAttnDownBlock2D", "DownBlock2D")?;
        let up = attention("up_block_types", "CrossAttnUpBlock2D", "UpBlock2D")?;
        let mid = field(c, "mid_block_type")?;
        if mid != "UNetMidBlock2DCrossAttn" {
            return Err(format!(
                "config.json: \"mid_block_type\" is {mid}; supported: UNetMidBlock2DCrossAttn"
            ));
        }
        let depth = per_level(c, "transformer_layers_per_block", n)?;
        let down_depth = (0..n).map(|i| if down[i] { depth[i] } else { 0 }).collect();
        let up_depth = (0..n)
            .map(|i| if up[i] { depth[n - 1 - i] } else { 0 })
            .collect();
        let added = match field(c, "addition_embed_type")? {
            serde_json::Value::Null => None,
            v if v == "text_time" => Some(count(
                field(c, "projection_class_embeddings_input_dim")?,
                "projection_class_embeddings_input_dim",
            )?),
            v => {
                return Err(format!(
                    "config.json: \"addition_embed_type\" is {v}; supported: null, text_time"
                ))
            }
        };
        let time_embed_dim = match c.get("time_embedding_dim") {
            None | Some(serde_json::Value::Null) => widths[0]
                .checked_mul(4)
                .ok_or("config.json: \"block_out_channels\" too large")?,
            Some(v) => count(v, "time_embedding_dim")?,
        };
        let kernel = |key: &str| match c.get(key) {
            None => Ok(3),
            Some(v) => count(v, key),
        };
        let linear_projection = match field(c, "use_linear_projection")? {
            serde_json::Value::Bool(b) => *b,
            v => {
                return Err(format!(
                    "config.json: \"use_linear_projection\" is {v}, not true or false"
                ))
            }
        };
        Ok(Arch {
            in_channels: count(field(c, "in_channels")?, "in_channels")?,
            out_channels: count(field(c, "out_channels")?, "out_channels")?,
            conv_in_kernel: kernel("conv_in_kernel")?,
            conv_out_kernel: kernel("conv_out_kernel")?,
            layers: count(field(c, "layers_per_block")?, "layers_per_block")?,
            mid_depth: depth[n - 1],
            down_depth,
            up_depth,
            cross_attention_dim: count(field(c, "cross_attention_dim")?, "cross_attention_dim")?,
            linear_projection,
            time_embed_dim,
            added,
            widths,
        })
    }

    /// Every tensor of the model under diffusers' names, in the structure of
    /// `UNet2DConditionModel.__init__` (`get_down_block`, `get_up_block`, `get_mid_block`).
    pub fn tensors(&self) -> BTreeMap<String, Spec> {
        let mut t = Keys {
            specs: Specs::default(),
            arch: self,
        };
        let w = &self.widths;
        let n = w.len();
        let te = self.time_embed_dim;

        t.conv("conv_in", w[0], self.in_channels, self.conv_in_kernel);
        t.linear("time_embedding.linear_1", te, w[0]);
        t.linear("time_embedding.linear_2", te, te);
        if let Some(inputs) = self.added {
            t.linear("add_embedding.linear_1", te, inputs);
            t.linear("add_embedding.linear_2", te, te);
        }

        let mut cin = w[0];
        for (i, &c) in w.iter().enumerate() {
            let p = format!("down_blocks.{i}");
            for j in 0..self.layers {
                t.resnet(&format!("{p}.resnets.{j}"), if j == 0 { cin } else { c }, c);
                if self.down_depth[i] > 0 {
                    t.transformer(&format!("{p}.attentions.{j}"), c, self.down_depth[i]);
                }
            }
            if i + 1 < n {
                t.conv(&format!("{p}.downsamplers.0.conv"), c, c, 3);
            }
            cin = c;
        }

        let top = w[n - 1];
        t.resnet("mid_block.resnets.0", top, top);
        t.transformer("mid_block.attentions.0", top, self.mid_depth);
        t.resnet("mid_block.resnets.1", top, top);

        // Up level i (bottom first) at width w[n-1-i]: its first resnet takes the level below's
        // output, each resnet also a skip from the down path, the last one the skip from the
        // level above's input (conv_in for the top level).
        let mut prev = top;
        for i in 0..n {
            let c = w[n - 1 - i];
            let skip_in = w[(n - 1 - i).saturating_sub(1)];
            let p = format!("up_blocks.{i}");
            for j in 0..=self.layers {
                let from = if j == 0 { prev } else { c };
                let skip = if j == self.layers { skip_in } else { c };
                t.resnet(&format!("{p}.resnets.{j}"), from + skip, c);
                if self.up_depth[i] > 0 {
                    t.transformer(&format!("{p}.attentions.{j}"), c, self.up_depth[i]);
                }
            }
            if i + 1 < n {
                t.conv(&format!("{p}.upsamplers.0.conv"), c, c, 3);
            }
            prev = c;
        }

        t.norm("conv_norm_out", w[0]);
        t.conv("conv_out", self.out_channels, w[0], self.conv_out_kernel);
        t.specs.0
    }

    /// The single-file checkpoints' name of one of this UNet's diffusers keys or module paths,
    /// without the `model.diffusion_model.` prefix: CompVis LDM names for SD 1.x/2.x, Stability's
    /// SGM names for SDXL (the same scheme plus `label_emb`). A down level holds `layers`
    /// resnet/transformer pairs (`input_blocks.N.0`/`.1`, input block 0 is conv_in) and then its
    /// downsampler (`input_blocks.N.0.op`); an up level `layers + 1` pairs and then its upsampler
    /// (`.1.conv` after a resnet alone, `.2.conv` after a pair). Inside a transformer the names
    /// are diffusers'; a resnet's parts are renamed ([`RESNET_PARTS`]).
    pub fn ldm_name(&self, key: &str) -> Result<String, String> {
        let l = self.layers;
        let unknown = || format!("\"{key}\" is not a tensor of a UNet2DConditionModel");
        let under = |module: &str| {
            key.strip_prefix(module)
                .filter(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        for (module, ldm) in TOP_LEVEL {
            if let Some(rest) = under(module) {
                return Ok(format!("{ldm}{rest}"));
            }
        }
        for (j, ldm) in [(0, "middle_block.0"), (1, "middle_block.2")] {
            if let Some(rest) = under(&format!("mid_block.resnets.{j}")) {
                return Ok(format!(
                    "{ldm}.{}",
                    resnet_part(&rest[1..]).ok_or_else(unknown)?
                ));
            }
        }
        let parts: Vec<&str> = key.splitn(5, '.').collect();
        let [blocks, i, kind, j, rest] = parts[..] else {
            return Err(unknown());
        };
        let (Ok(i), Ok(j)) = (i.parse::<usize>(), j.parse::<usize>()) else {
            return Err(unknown());
        };
        let resnet = || resnet_part(rest).ok_or_else(unknown);
        Ok(match (blocks, kind) {
            ("down_blocks", "resnets") => {
                format!("input_blocks.{}.0.{}", (l + 1) * i + j + 1, resnet()?)
            }
            ("down_blocks", "attentions") => {
                format!("input_blocks.{}.1.{rest}", (l + 1) * i + j + 1)
            }
            ("down_blocks", "downsamplers") => {
                let rest = rest.strip_prefix("conv.").ok_or_else(unknown)?;
                format!("input_blocks.{}.0.op.{rest}", (l + 1) * (i + 1))
            }
            ("up_blocks", "resnets") => {
                format!("output_blocks.{}.0.{}", (l + 1) * i + j, resnet()?)
            }
            ("up_blocks", "attentions") => format!("output_blocks.{}.1.{rest}", (l + 1) * i + j),
            ("up_blocks", "upsamplers") => {
                let attention = self.up_depth.get(i).ok_or_else(unknown)? > &0;
                let slot = if attention { 2 } else { 1 };
                format!("output_blocks.{}.{slot}.{rest}", (l + 1) * i + l)
            }
            _ => return Err(unknown()),
        })
    }
}

/// Modules outside the down, mid and up blocks: diffusers' name, LDM/SGM's.
const TOP_LEVEL: [(&str, &str); 8] = [
    ("conv_in", "input_blocks.0.0"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("mid_block.attentions.0", "middle_block.1"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
];

/// A resnet's layers: diffusers' name, LDM/SGM's.
const RESNET_PARTS: [(&str, &str); 6] = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
];

/// `rest` (a resnet's `layer.param`) under LDM/SGM's layer name.
fn resnet_part(rest: &str) -> Option<String> {
    let (layer, param) = rest.split_once('.')?;
    let (_, ldm) = RESNET_PARTS.iter().find(|(d, _)| *d == layer)?;
    Some(format!("{ldm}.{param}"))
}

/// The tensors being described, added layer by layer.
struct Keys<'a> {
    specs: Specs,
    arch: &'a Arch,
}

/// The layer writers ([`Specs::conv`], ...) on the tensors being described.
impl std::ops::Deref for Keys<'_> {
    type Target = Specs;
    fn deref(&self) -> &Specs {
        &self.specs
    }
}

impl std::ops::DerefMut for Keys<'_> {
    fn deref_mut(&mut self) -> &mut Specs {
        &mut self.specs
    }
}

impl Keys<'_> {
    fn resnet(&mut self, p: &str, cin: usize, cout: usize) {
        self.norm(&format!("{p}.norm1"), cin);
        self.conv(&format!("{p}.conv1"), cout, cin, 3);
        let time = self.arch.time_embed_dim;
        self.linear(&format!("{p}.time_emb_proj"), cout, time);
        self.norm(&format!("{p}.norm2"), cout);
        self.conv(&format!("{p}.conv2"), cout, cout, 3);
        if cin != cout {
            self.conv(&format!("{p}.conv_shortcut"), cout, cin, 1);
        }
    }

    /// `proj_in`/`proj_out`: a linear layer or a 1x1 convolution.
    fn projection(&mut self, p: &str, c: usize) {
        if self.arch.linear_projection {
            self.linear(p, c, c);
        } else {
            self.conv(p, c, c, 1);
        }
    }

    /// q, k, v without bias (k and v from `kv` channels), the output projection with one.
    fn attention(&mut self, p: &str, c: usize, kv: usize) {
        self.add(format!("{p}.to_q.weight"), vec![c, c], Fill::Weight);
        self.add(format!("{p}.to_k.weight"), vec![c, kv], Fill::Weight);
        self.add(format!("{p}.to_v.weight"), vec![c, kv], Fill::Weight);
        self.linear(&format!("{p}.to_out.0"), c, c);
    }

    /// A `Transformer2DModel` of `depth` `BasicTransformerBlock`s (self-attention,
    /// cross-attention, GEGLU feed-forward with inner width 4c).
    fn transformer(&mut self, p: &str, c: usize, depth: usize) {
        self.norm(&format!("{p}.norm"), c);
        self.projection(&format!("{p}.proj_in"), c);
        for k in 0..depth {
            let b = format!("{p}.transformer_blocks.{k}");
            self.norm(&format!("{b}.norm1"), c);
            self.attention(&format!("{b}.attn1"), c, c);
            self.norm(&format!("{b}.norm2"), c);
            let context = self.arch.cross_attention_dim;
            self.attention(&format!("{b}.attn2"), c, context);
            self.norm(&format!("{b}.norm3"), c);
            self.linear(&format!("{b}.ff.net.0.proj"), 2 * 4 * c, c);
            self.linear(&format!("{b}.ff.net.2"), c, 4 * c);
        }
        self.projection(&format!("{p}.proj_out"), c);
    }
}

/// The real models' config.json: the fixtures' key set (diffusers 0.42.1) with the published
/// sizes of `stable-diffusion-v1-5` and `stable-diffusion-xl-base-1.0`.
pub fn full_config(name: &str) -> serde_json::Value {
    let mut c = serde_json::json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "addition_embed_type_num_heads": 64,
        "attention_type": "default",
        "center_input_sample": false,
        "class_embed_type": null,
        "class_embeddings_concat": false,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_norm": null,
        "downsample_padding": 1,
        "dropout": 0.0,
        "dual_cross_attention": false,
        "encoder_hid_dim": null,
        "encoder_hid_dim_type": null,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": null,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_attention_heads": null,
        "num_class_embeds": null,
        "only_cross_attention": false,
        "out_channels": 4,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": false,
        "resnet_time_scale_shift": "default",
        "reverse_transformer_layers_per_block": null,
        "time_cond_proj_dim": null,
        "time_embedding_act_fn": null,
        "time_embedding_dim": null,
        "time_embedding_type": "positional",
        "timestep_post_act": null,
        "upcast_attention": false,
    });
    let sizes = if name == "sdxl" {
        serde_json::json!({
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "attention_head_dim": [5, 10, 20],
            "block_out_channels": [320, 640, 1280],
            "cross_attention_dim": 2048,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "projection_class_embeddings_input_dim": 2816,
            "sample_size": 128,
            "transformer_layers_per_block": [1, 2, 10],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "use_linear_projection": true,
        })
    } else {
        serde_json::json!({
            "addition_embed_type": null,
            "addition_time_embed_dim": null,
            "attention_head_dim": 8,
            "block_out_channels": [320, 640, 1280, 1280],
            "cross_attention_dim": 768,
            "down_block_types": [
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D"
            ],
            "projection_class_embeddings_input_dim": null,
            "sample_size": 64,
            "transformer_layers_per_block": 1,
            "up_block_types": [
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D"
            ],
            "use_linear_projection": false,
        })
    };
    if let (Some(c), serde_json::Value::Object(s)) = (c.as_object_mut(), sizes) {
        c.extend(s);
    }
    c
}
