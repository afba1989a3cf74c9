//! Full-size CLIP text encoder benchmark inputs: `cargo run --release --example clip_bench --
//! OUT_DIR`.
//!
//! Writes synthetic weights with the real shapes of the text encoders Stable Diffusion
//! pipelines ship, in transformers' layout (`model.safetensors` + `config.json`), stored in
//! fp16 as the published fp16 variants are: `OUT_DIR/clip-l/` (OpenAI CLIP ViT-L/14's
//! `CLIPTextModel`: hidden 768, MLP 3072, 12 layers, 12 heads, quick_gelu) and `OUT_DIR/bigg/`
//! (OpenCLIP ViT-bigG/14 as `CLIPTextModelWithProjection`: hidden 1280, MLP 5120, 32 layers, 20
//! heads, gelu, projection 1280). Vocabulary 49408, 77 positions. Values are deterministic
//! pseudo-random with a trained model's scales (linear weights uniform in ±1/√fan_in, norm
//! scales near 1, embeddings ±0.02).
//!
//! It then lowers each model in both layouts through `mlc::compiler::build_program` and prints the op
//! counts, the Neural Engine report's misfits and layout hints, and the commands that time the
//! whole-process builds.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use mlc::compiler::{build_program, BuildOptions};
use mlc::models::{ModelOptions, TransformerLayout};

struct Arch {
    name: &'static str,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    projection: Option<usize>,
    act: &'static str,
}

const VOCAB: usize = 49408;
const POSITIONS: usize = 77;

#[derive(Clone, Copy)]
enum Fill {
    Weight,
    Bias,
    Scale,
    Embedding,
}

impl Arch {
    fn tensors(&self) -> BTreeMap<String, (Vec<usize>, Fill)> {
        let (d, i) = (self.hidden, self.intermediate);
        let mut t = BTreeMap::new();
        let mut add = |k: String, shape: Vec<usize>, f: Fill| {
            t.insert(k, (shape, f));
        };
        let m = "text_model";
        add(
            format!("{m}.embeddings.token_embedding.weight"),
            vec![VOCAB, d],
            Fill::Embedding,
        );
        add(
            format!("{m}.embeddings.position_embedding.weight"),
            vec![POSITIONS, d],
            Fill::Embedding,
        );
        for n in 0..self.layers {
            let p = format!("{m}.encoder.layers.{n}");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                add(
                    format!("{p}.self_attn.{proj}.weight"),
                    vec![d, d],
                    Fill::Weight,
                );
                add(format!("{p}.self_attn.{proj}.bias"), vec![d], Fill::Bias);
            }
            for norm in ["layer_norm1", "layer_norm2"] {
                add(format!("{p}.{norm}.weight"), vec![d], Fill::Scale);
                add(format!("{p}.{norm}.bias"), vec![d], Fill::Bias);
            }
            add(format!("{p}.mlp.fc1.weight"), vec![i, d], Fill::Weight);
            add(format!("{p}.mlp.fc1.bias"), vec![i], Fill::Bias);
            add(format!("{p}.mlp.fc2.weight"), vec![d, i], Fill::Weight);
            add(format!("{p}.mlp.fc2.bias"), vec![d], Fill::Bias);
        }
        add(format!("{m}.final_layer_norm.weight"), vec![d], Fill::Scale);
        add(format!("{m}.final_layer_norm.bias"), vec![d], Fill::Bias);
        if let Some(p) = self.projection {
            add("text_projection.weight".into(), vec![p, d], Fill::Weight);
        }
        t
    }

    fn config(&self) -> serde_json::Value {
        let mut c = serde_json::json!({
            "architectures": [if self.projection.is_some() { "CLIPTextModelWithProjection" } else { "CLIPTextModel" }],
            "model_type": "clip_text_model",
            "hidden_act": self.act,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "max_position_embeddings": POSITIONS,
            "vocab_size": VOCAB,
            "layer_norm_eps": 1e-5,
        });
        if let Some(p) = self.projection {
            c["projection_dim"] = p.into();
        }
        c
    }
}

use mlc::rng::SplitMix64;
#[path = "safetensors_header.rs"]
mod safetensors_header;

/// Writes the tensors as an fp16 safetensors file, streaming the data.
fn write_safetensors(path: &Path, tensors: &BTreeMap<String, (Vec<usize>, Fill)>, seed: u64) {
    let header = tensors
        .iter()
        .map(|(k, (shape, _))| (k.as_str(), "F16", &shape[..], 2));
    let mut out = safetensors_header::create(path, header);
    let mut rng = SplitMix64(seed);
    let mut buf = Vec::new();
    for (shape, fill) in tensors.values() {
        buf.clear();
        let fan_in = shape.last().copied().unwrap_or(1).max(1) as f32;
        for _ in 0..shape.iter().product::<usize>() {
            let u = 2.0 * rng.uniform() - 1.0;
            let v = match fill {
                Fill::Weight => u / fan_in.sqrt(),
                Fill::Bias | Fill::Embedding => 0.02 * u,
                Fill::Scale => 1.0 + 0.1 * u,
            };
            buf.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        out.write_all(&buf).unwrap();
    }
    out.flush().unwrap();
}

fn main() {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            eprintln!("usage: clip_bench OUT_DIR");
            std::process::exit(2)
        });
    let archs = [
        Arch {
            name: "clip-l",
            hidden: 768,
            intermediate: 3072,
            layers: 12,
            heads: 12,
            projection: None,
            act: "quick_gelu",
        },
        Arch {
            name: "bigg",
            hidden: 1280,
            intermediate: 5120,
            layers: 32,
            heads: 20,
            projection: Some(1280),
            act: "gelu",
        },
    ];
    for (seed, a) in archs.iter().enumerate() {
        let dir = out.join(a.name);
        std::fs::create_dir_all(&dir).unwrap();
        let weights = dir.join("model.safetensors");
        let tensors = a.tensors();
        let params: usize = tensors
            .values()
            .map(|(s, _)| s.iter().product::<usize>())
            .sum();
        if !weights.exists() {
            write_safetensors(&weights, &tensors, seed as u64 + 1);
        }
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&a.config()).unwrap(),
        )
        .unwrap();
        let model = if a.projection.is_some() {
            "clip-bigg"
        } else {
            "clip-l"
        };
        println!(
            "{model}: {:.1} M parameters, {:.1} MiB in fp16 ({})",
            params as f64 / 1e6,
            (params * 2) as f64 / (1u64 << 20) as f64,
            weights.display()
        );
        for layout in [TransformerLayout::Standard, TransformerLayout::Ane] {
            let mut o = BuildOptions::new(model, &weights);
            o.model_options = ModelOptions {
                hidden_layer: Some(2),
                layout,
                ..Default::default()
            };
            let c = build_program(&o, |_, _| {}).unwrap();
            let ops = mlc::compiler::count_ops(&c.lowered.model);
            let r = mlc::ane::analyze(&c.lowered.model);
            let hints: usize = r.hint_counts().values().sum();
            let misfits: Vec<_> = r.misfits().map(|v| v.op_type.clone()).collect();
            println!(
                "  {layout:?}: {ops} MIL ops, off the ANE: {misfits:?}, layout hints: {hints} {:?}",
                r.hint_counts()
            );
        }
        for layout in ["standard", "ane"] {
            println!(
                "  /usr/bin/time -v target/release/mlc build {model} --weights {} --layout {layout} --hidden-layer penultimate -o /tmp/{model}_{layout}.mlpackage",
                weights.display()
            );
        }
    }
}
