//! Full-size Stable Diffusion UNet benchmark inputs: `cargo run --release --example unet_bench --
//! OUT_DIR [sd15|sdxl|all]`.
//!
//! Writes synthetic weights with the real shapes of diffusers' `UNet2DConditionModel` in the
//! diffusers layout, stored fp16 as the published fp16 variants are:
//! `OUT_DIR/{sd15,sdxl}/unet/{config.json,diffusion_pytorch_model.fp16.safetensors}` for SD 1.5
//! (859,520,964 parameters, 1.6 GiB) and SDXL base (2,567,463,684, 4.8 GiB). Values are
//! deterministic pseudo-random with a trained model's scales (weights uniform in ±1/√fan_in, norm
//! scales near 1, biases ±0.02), streamed to the file a chunk at a time: the file is never in
//! memory. A file already there with the expected header and length is kept.
//!
//! The tensors are generated from the config.json by one function following diffusers'
//! structure, so the tests can check it against the fixtures: with the small configs of
//! `../shared/fixtures/unet/{sd15,sd21,sdxl,sd15_inpaint}/diffusers` it must give exactly the
//! fixture files' keys and shapes, and with the real configs the published parameter counts
//! (`cargo test --release --example unet_bench`; CI runs it too). `tests/bench/unet_bench.sh`
//! writes the files once and times the whole-process builds.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

// Shared with the other benchmarks; this one draws four values per `next`, not `unit`.
#[allow(dead_code)]
#[path = "rng.rs"]
mod rng;
use rng::Rng;
#[path = "unet_lora.rs"]
mod lora;
#[path = "safetensors_header.rs"]
mod safetensors_header;

/// The models the benchmark writes: folder name, seed.
const MODELS: [(&str, u64); 2] = [("sd15", 1), ("sdxl", 2)];

/// A tensor of the file: shape and how to fill it.
#[derive(Debug)]
struct Spec {
    shape: Vec<usize>,
    fill: Fill,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fill {
    /// Uniform in ±1/√fan_in (PyTorch's default conv/linear init scale).
    Weight,
    /// Uniform in ±0.02.
    Bias,
    /// 1 ± 0.1 (norm scales).
    Scale,
    /// Exactly this value (a LoRA's alpha).
    Const(f32),
}

/// What decides a `UNet2DConditionModel`'s tensors, read from its config.json.
#[derive(Debug)]
struct Arch {
    in_channels: usize,
    out_channels: usize,
    conv_in_kernel: usize,
    conv_out_kernel: usize,
    /// Channels per level, top (full resolution) first.
    widths: Vec<usize>,
    /// Resnets per down level (an up level has one more).
    layers: usize,
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
    fn from_config(c: &serde_json::Value) -> Result<Arch, String> {
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
    fn tensors(&self) -> BTreeMap<String, Spec> {
        let mut t = Keys {
            specs: BTreeMap::new(),
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
        t.specs
    }
}

/// The tensors being described, added layer by layer.
struct Keys<'a> {
    specs: BTreeMap<String, Spec>,
    arch: &'a Arch,
}

impl Keys<'_> {
    fn add(&mut self, key: String, shape: Vec<usize>, fill: Fill) {
        self.specs.insert(key, Spec { shape, fill });
    }

    fn conv(&mut self, p: &str, cout: usize, cin: usize, k: usize) {
        self.add(format!("{p}.weight"), vec![cout, cin, k, k], Fill::Weight);
        self.add(format!("{p}.bias"), vec![cout], Fill::Bias);
    }

    fn linear(&mut self, p: &str, cout: usize, cin: usize) {
        self.add(format!("{p}.weight"), vec![cout, cin], Fill::Weight);
        self.add(format!("{p}.bias"), vec![cout], Fill::Bias);
    }

    fn norm(&mut self, p: &str, c: usize) {
        self.add(format!("{p}.weight"), vec![c], Fill::Scale);
        self.add(format!("{p}.bias"), vec![c], Fill::Bias);
    }

    fn resnet(&mut self, p: &str, cin: usize, cout: usize) {
        self.norm(&format!("{p}.norm1"), cin);
        self.conv(&format!("{p}.conv1"), cout, cin, 3);
        self.linear(
            &format!("{p}.time_emb_proj"),
            cout,
            self.arch.time_embed_dim,
        );
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
            self.attention(&format!("{b}.attn2"), c, self.arch.cross_attention_dim);
            self.norm(&format!("{b}.norm3"), c);
            self.linear(&format!("{b}.ff.net.0.proj"), 2 * 4 * c, c);
            self.linear(&format!("{b}.ff.net.2"), c, 4 * c);
        }
        self.projection(&format!("{p}.proj_out"), c);
    }
}

/// The real models' config.json: the fixtures' key set (diffusers 0.42.1) with the published
/// sizes of `stable-diffusion-v1-5` and `stable-diffusion-xl-base-1.0`.
fn full_config(name: &str) -> serde_json::Value {
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

fn parameters(tensors: &BTreeMap<String, Spec>) -> usize {
    tensors
        .values()
        .map(|s| s.shape.iter().product::<usize>())
        .sum()
}

/// Values per chunk: what is in memory at once while writing.
const CHUNK: usize = 1 << 20;

/// Writes the tensors as an fp16 safetensors file at `path`, streaming the data a chunk at a
/// time; four values per random draw keeps the generator well below the disk's speed.
fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Spec>,
    seed: u64,
) -> std::io::Result<()> {
    let header = tensors
        .iter()
        .map(|(k, s)| (k.as_str(), "F16", &s.shape[..], 2));
    let mut out = safetensors_header::create(path, header);
    let mut rng = Rng(seed);
    let mut buf = Vec::with_capacity(2 * CHUNK);
    for s in tensors.values() {
        let fan_in = s.shape.iter().skip(1).product::<usize>().max(1);
        let (offset, scale) = match s.fill {
            Fill::Weight => (0.0, 1.0 / (fan_in as f32).sqrt()),
            Fill::Bias => (0.0, 0.02),
            Fill::Scale => (1.0, 0.1),
            Fill::Const(c) => (c, 0.0),
        };
        let mut left: usize = s.shape.iter().product();
        while left > 0 {
            let n = left.min(CHUNK);
            buf.clear();
            let mut bits = 0u64;
            for i in 0..n {
                if i % 4 == 0 {
                    bits = rng.next();
                }
                // 16 bits at a time, uniform in [-1, 1).
                let u = ((bits >> (16 * (i % 4))) & 0xffff) as f32 / 32768.0 - 1.0;
                let v = half::f16::from_f32(offset + scale * u);
                buf.extend_from_slice(&v.to_le_bytes());
            }
            out.write_all(&buf)?;
            left -= n;
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Key → shape of a safetensors file's header, reading only the header; with the file's data
/// length (all of the file after the header).
fn header_shapes(path: &Path) -> Result<(BTreeMap<String, Vec<usize>>, u64), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut f = File::open(path).map_err(|e| err(&e))?;
    let len = f.metadata().map_err(|e| err(&e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|e| err(&e))?;
    let n = u64::from_le_bytes(n);
    if n > (100 << 20) || n > len.saturating_sub(8) {
        return Err(err(&format!(
            "header length {n} does not fit the file ({len} bytes)"
        )));
    }
    let mut h = vec![0u8; n as usize];
    f.read_exact(&mut h).map_err(|e| err(&e))?;
    let h: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&h).map_err(|e| err(&e))?;
    let mut shapes = BTreeMap::new();
    for (k, v) in h.into_iter().filter(|(k, _)| k != "__metadata__") {
        let shape = serde_json::from_value(v["shape"].clone())
            .map_err(|e| err(&format!("tensor \"{k}\": shape: {e}")))?;
        shapes.insert(k, shape);
    }
    Ok((shapes, len - 8 - n))
}

/// Whether `path` already holds these tensors' header and exactly their fp16 data.
fn is_complete(path: &Path, tensors: &BTreeMap<String, Spec>) -> bool {
    let Ok((shapes, data)) = header_shapes(path) else {
        return false;
    };
    shapes.len() == tensors.len()
        && tensors.iter().all(|(k, s)| shapes.get(k) == Some(&s.shape))
        && data == 2 * parameters(tensors) as u64
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Writes one model's folder; returns its weights file.
fn write_model(out: &Path, name: &str, seed: u64) -> Result<PathBuf, String> {
    let config = full_config(name);
    let tensors = Arch::from_config(&config)?.tensors();
    let dir = out.join(name).join("unet");
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", dir.display());
    std::fs::create_dir_all(&dir).map_err(|e| err(&e))?;
    let text = serde_json::to_string_pretty(&config).map_err(|e| err(&e))?;
    std::fs::write(dir.join("config.json"), text + "\n").map_err(|e| err(&e))?;
    let weights = dir.join("diffusion_pytorch_model.fp16.safetensors");
    write_file(&weights, &tensors, seed, name)?;
    Ok(weights)
}

/// Writes the model's rank-32 kohya LoRA beside its `unet` folder ([`lora`]); returns the file.
fn write_lora(out: &Path, name: &str, seed: u64) -> Result<PathBuf, String> {
    let arch = Arch::from_config(&full_config(name))?;
    let names = match name {
        "sdxl" => lora::Names::Sgm,
        _ => lora::Names::Diffusers,
    };
    let tensors = lora::tensors(&arch, &arch.tensors(), names, lora::RANK);
    let path = out.join(name).join(lora::FILE);
    let what = format!(
        "{name} LoRA: {} modules, rank {}",
        tensors.len() / 3,
        lora::RANK
    );
    write_file(&path, &tensors, seed.wrapping_add(100), &what)?;
    Ok(path)
}

/// Writes `tensors` to `path` unless a complete file is there, through a `.partial` file so an
/// interrupted run is never kept; prints what it did.
fn write_file(
    path: &Path,
    tensors: &BTreeMap<String, Spec>,
    seed: u64,
    name: &str,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let what = format!(
        "{name}: {} parameters in {} tensors",
        parameters(tensors),
        tensors.len()
    );
    if is_complete(path, tensors) {
        let size = std::fs::metadata(path).map_err(|e| err(&e))?.len();
        println!("{what}: kept {} ({})", path.display(), size_text(size));
        return Ok(());
    }
    let partial = path.with_extension("partial");
    let t = std::time::Instant::now();
    write_safetensors(&partial, tensors, seed).map_err(|e| err(&e))?;
    std::fs::rename(&partial, path).map_err(|e| err(&e))?;
    let secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(path).map_err(|e| err(&e))?.len();
    println!(
        "{what}: wrote {} ({}) in {secs:.1} s, {:.0} MB/s",
        path.display(),
        size_text(size),
        size as f64 / 1e6 / secs
    );
    Ok(())
}

fn size_text(bytes: u64) -> String {
    format!("{:.1} MB, {}", bytes as f64 / 1e6, gib(bytes))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.get(1).map_or("all", String::as_str);
    let models: Vec<_> = MODELS
        .iter()
        .filter(|(name, _)| which == "all" || which == *name)
        .collect();
    if args.is_empty() || args.len() > 2 || models.is_empty() {
        eprintln!("usage: unet_bench OUT_DIR [sd15|sdxl|all]");
        std::process::exit(2);
    }
    let out = PathBuf::from(&args[0]);
    for &&(name, seed) in &models {
        let model = if name == "sdxl" {
            "sdxl-unet"
        } else {
            "sd-unet"
        };
        match write_model(&out, name, seed).and_then(|w| Ok((w, write_lora(&out, name, seed)?))) {
            Ok((w, l)) => println!(
                "  /usr/bin/time -v target/release/mlc build {model} --weights {} -o /tmp/{name}.mlpackage [--lora {}]",
                w.display(),
                l.display()
            ),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: [&str; 4] = ["sd15", "sd21", "sdxl", "sd15_inpaint"];

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/unet")
            .join(name)
            .join("diffusers")
    }

    fn read_config(dir: &Path) -> serde_json::Value {
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn shapes(tensors: &BTreeMap<String, Spec>) -> BTreeMap<String, Vec<usize>> {
        tensors
            .iter()
            .map(|(k, s)| (k.clone(), s.shape.clone()))
            .collect()
    }

    /// The generator at the fixtures' sizes gives exactly their keys and shapes (diffusers'
    /// own state dicts), so at the real sizes it gives the real models'.
    #[test]
    fn generator_reproduces_every_fixture() {
        for name in FIXTURES {
            let dir = fixture(name);
            let ours = shapes(&Arch::from_config(&read_config(&dir)).unwrap().tensors());
            let (theirs, _) =
                header_shapes(&dir.join("diffusion_pytorch_model.safetensors")).unwrap();
            let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
            let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{name}: {} missing (first {:?}), {} extra (first {:?})",
                missing.len(),
                missing.first(),
                extra.len(),
                extra.first()
            );
            assert_eq!(ours, theirs, "{name}: shapes differ");
        }
    }

    #[test]
    fn real_configs_give_the_published_parameter_counts() {
        let count = |name| parameters(&Arch::from_config(&full_config(name)).unwrap().tensors());
        assert_eq!(count("sd15"), 859_520_964);
        assert_eq!(count("sdxl"), 2_567_463_684);
    }

    #[test]
    fn real_configs_have_the_fixtures_fields() {
        for name in ["sd15", "sdxl"] {
            let keys = |c: &serde_json::Value| c.as_object().unwrap().keys().cloned().collect();
            let ours: std::collections::BTreeSet<String> = keys(&full_config(name));
            let theirs: std::collections::BTreeSet<String> = keys(&read_config(&fixture(name)));
            assert_eq!(ours, theirs, "{name}");
        }
    }

    /// What the writer streams is a safetensors file mlc reads back, with every tensor fp16 at
    /// its fill's scale, the same bytes for the same seed and other values for another.
    #[test]
    fn writer_round_trips_through_mlc() {
        let tensors = Arch::from_config(&read_config(&fixture("sdxl")))
            .unwrap()
            .tensors();
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = ["a", "b", "c"].map(|n| dir.path().join(n));
        write_safetensors(&a, &tensors, 7).unwrap();
        write_safetensors(&b, &tensors, 7).unwrap();
        write_safetensors(&c, &tensors, 8).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert!(
            bytes == std::fs::read(&b).unwrap(),
            "same seed, other bytes"
        );
        assert!(
            bytes != std::fs::read(&c).unwrap(),
            "other seed, same bytes"
        );
        assert!(is_complete(&a, &tensors));
        let cut = File::options().write(true).open(&c).unwrap();
        cut.set_len(bytes.len() as u64 - 2).unwrap();
        assert!(!is_complete(&c, &tensors), "a cut file counts as complete");
        assert!(!is_complete(
            &a,
            &Arch::from_config(&read_config(&fixture("sd15")))
                .unwrap()
                .tensors()
        ));

        let w = mlc::weights::Weights::load(&a).unwrap();
        assert_eq!(w.tensors.len(), tensors.len());
        for (k, s) in &tensors {
            let t = &w.tensors[k];
            assert_eq!(t.shape, s.shape, "{k}");
            assert_eq!(t.dtype(), mlc::tensor::DType::F16, "{k}");
            let v = t.to_f32();
            let fan_in = s.shape[1..].iter().product::<usize>().max(1) as f32;
            let (centre, bound) = match s.fill {
                Fill::Weight => (0.0, 1.0 / fan_in.sqrt()),
                Fill::Bias => (0.0, 0.02),
                Fill::Scale => (1.0, 0.1),
                Fill::Const(c) => (c, 0.0),
            };
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            let spread = v.iter().fold(0f32, |m, x| m.max((x - centre).abs()));
            assert!(
                spread <= bound * 1.001 && (v.len() < 32 || spread > bound * 0.5),
                "{k}: values reach {spread}, the fill's bound is {bound}"
            );
            if v.len() >= 1024 {
                assert!((mean - centre).abs() < bound * 0.1, "{k}: mean {mean}");
            }
        }
    }

    #[test]
    fn configs_outside_the_sd_unets_are_refused_naming_the_field() {
        let cases: [(&str, serde_json::Value, &str); 4] = [
            (
                "down_block_types",
                serde_json::Value::from(vec!["AttnDownBlock2D"; 4]),
                "AttnDownBlock2D",
            ),
            (
                "transformer_layers_per_block",
                serde_json::json!([1, 2]),
                "one integer per level",
            ),
            (
                "addition_embed_type",
                serde_json::json!("text"),
                "supported: null, text_time",
            ),
            (
                "class_embed_type",
                serde_json::json!("timestep"),
                "only null",
            ),
        ];
        for (key, value, says) in cases {
            let mut c = read_config(&fixture("sd15"));
            c[key] = value;
            let e = Arch::from_config(&c).unwrap_err();
            assert!(
                e.contains(key) && e.contains(says) && !e.contains('\n'),
                "{e}"
            );
        }
        let mut c = read_config(&fixture("sd15"));
        c.as_object_mut().unwrap().remove("cross_attention_dim");
        assert_eq!(
            Arch::from_config(&c).unwrap_err(),
            "config.json: missing field \"cross_attention_dim\""
        );
    }
    /// The full-size LoRAs adapt the module set kohya's sd-scripts reports (722 modules for
    /// SDXL, 192 for SD 1.5) with the real shapes: SDXL's cross-attention reads 2048 channels,
    /// GEGLU's projection gives 2 · 4C, SD 1.5's projections are 1x1 convolutions.
    #[test]
    fn full_size_loras_cover_kohyas_modules_with_real_shapes() {
        let lora_of = |name, names| {
            let arch = Arch::from_config(&full_config(name)).unwrap();
            lora::tensors(&arch, &arch.tensors(), names, lora::RANK)
        };
        let sdxl = lora_of("sdxl", lora::Names::Sgm);
        let sd15 = lora_of("sd15", lora::Names::Diffusers);
        assert_eq!(sdxl.len(), 3 * 722);
        assert_eq!(sd15.len(), 3 * 192);
        let shape = |t: &BTreeMap<String, Spec>, k: &str| {
            t.get(k)
                .map(|s| s.shape.clone())
                .unwrap_or_else(|| panic!("no {k}"))
        };
        let x = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k";
        assert_eq!(shape(&sdxl, &format!("{x}.lora_down.weight")), [32, 2048]);
        assert_eq!(shape(&sdxl, &format!("{x}.lora_up.weight")), [640, 32]);
        let x = "lora_unet_middle_block_1_transformer_blocks_9_ff_net_0_proj";
        assert_eq!(shape(&sdxl, &format!("{x}.lora_up.weight")), [10240, 32]);
        let x = "lora_unet_output_blocks_5_1_transformer_blocks_1_ff_net_2";
        assert_eq!(shape(&sdxl, &format!("{x}.lora_down.weight")), [32, 2560]);
        assert_eq!(shape(&sdxl, &format!("{x}.alpha")), Vec::<usize>::new());
        let x = "lora_unet_up_blocks_3_attentions_2_proj_out";
        assert_eq!(
            shape(&sd15, &format!("{x}.lora_down.weight")),
            [32, 320, 1, 1]
        );
        assert_eq!(
            shape(&sd15, &format!("{x}.lora_up.weight")),
            [320, 32, 1, 1]
        );
    }

    /// At the fixtures' sizes the generator names exactly the transformer modules of the LoRA
    /// fixtures (written independently, checked against diffusers' loader), with their shapes:
    /// SGM names for SDXL, diffusers names for SD 1.5. Their resnet (LoCon) and text-encoder
    /// keys are left out: the benchmark's LoRA adapts what kohya adapts by default.
    #[test]
    fn fixture_sizes_give_the_lora_fixtures_keys() {
        for (name, file, names) in [
            ("sdxl", "kohya_sdxl_sgm", lora::Names::Sgm),
            ("sd15", "kohya_sd15", lora::Names::Diffusers),
        ] {
            let arch = Arch::from_config(&read_config(&fixture(name))).unwrap();
            let ours = shapes(&lora::tensors(&arch, &arch.tensors(), names, 4));
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/fixtures/unet/lora")
                .join(format!("{file}.safetensors"));
            let (mut theirs, _) = header_shapes(&path).unwrap();
            theirs.retain(|k, _| {
                !k.starts_with("lora_te") && !k.contains("_layers_") && !k.contains("resnets")
            });
            assert!(theirs.len() > 100, "{file}: {} keys", theirs.len());
            assert_eq!(ours, theirs, "{name}");
        }
    }

    /// mlc fuses the generated SDXL LoRA into every module it names, written by the same
    /// writer as the benchmark's (fp16, alpha a scalar), and the fused build differs.
    #[test]
    fn mlc_fuses_every_module_of_a_generated_lora() {
        let dir = tempfile::tempdir().unwrap();
        let arch = Arch::from_config(&read_config(&fixture("sdxl"))).unwrap();
        let tensors = lora::tensors(&arch, &arch.tensors(), lora::Names::Sgm, 4);
        let file = dir.path().join("lora.safetensors");
        write_safetensors(&file, &tensors, 3).unwrap();
        let weights = fixture("sdxl").join("diffusion_pytorch_model.safetensors");
        let build = |loras: Vec<mlc::lora::LoraSpec>, out: &str| {
            let mut o = mlc::compiler::BuildOptions::new("sdxl-unet", &weights);
            o.sizes = mlc::compiler::Sizes::Latent(vec![[16, 16]]);
            o.loras = loras;
            o.output = Some(dir.path().join(out));
            mlc::compiler::build(&o).unwrap()
        };
        let fused = build(
            vec![mlc::lora::LoraSpec {
                path: file,
                weight: 1.0,
            }],
            "fused.mlpackage",
        );
        let base = build(Vec::new(), "base.mlpackage");
        assert_eq!(fused.loras.len(), 1);
        assert_eq!(fused.loras[0].modules, tensors.len() / 3);
        assert!(fused.loras[0].skipped.is_empty());
        assert_ne!(fused.weights_sha256, base.weights_sha256);
    }
}
