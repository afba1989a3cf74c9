//! Full-size single-file Stable Diffusion checkpoints for the `mlc pipeline` benchmark:
//! `cargo run --release --example pipeline_bench -- OUT_DIR [sd15|sdxl|all]`.
//!
//! Writes synthetic checkpoints with exactly the key names, shapes and dtypes of the published
//! single files, stored fp16 as their fp16 variants are:
//! - `OUT_DIR/sd15_single_file.safetensors` as `v1-5-pruned-emaonly.safetensors`: the UNet under
//!   `model.diffusion_model.` (LDM names), the VAE under `first_stage_model.` (LDM names), CLIP
//!   ViT-L/14's text tower under `cond_stage_model.transformer.text_model.` (transformers'
//!   names), and the keys readers skip: the DDPM schedule buffers (fp32 [1000]),
//!   `model_ema.decay` (fp32 []), `model_ema.num_updates` (int32 []) and the text tower's
//!   `position_ids` (int64 [1, 77]); 1,066,247,386 values, 2.1 GB.
//! - `OUT_DIR/sdxl_single_file.safetensors` as `sd_xl_base_1.0.safetensors`: the UNet under
//!   `model.diffusion_model.` (SGM names), the VAE under `first_stage_model.`, CLIP-L under
//!   `conditioner.embedders.0.transformer.text_model.` and OpenCLIP ViT-bigG/14's text tower under
//!   `conditioner.embedders.1.model.` in OpenCLIP's own layout (`transformer.resblocks.N.attn.
//!   in_proj_weight` with q, k, v stacked, `ln_1`, `mlp.c_fc`, `positional_embedding`,
//!   `text_projection` [1280, 1280], `logit_scale`); 3,468,837,945 values, 6.9 GB.
//!
//! The UNet's tensors come from unet_bench's generator (`unet_arch.rs`, checked there against
//! diffusers' own state dicts) renamed to the single-file names; the values are the same
//! deterministic pseudo-random fills at a trained model's scales, streamed to the file a chunk
//! at a time (`tensor_file.rs`). A file already there with the expected header and length is
//! kept. At the fixtures' sizes the generator gives exactly the keys, shapes and dtypes of
//! `../shared/fixtures/pipeline/sd15_tiny.safetensors` (made with diffusers and transformers).
//! The tests also write tiny files in the SD 2.x layout (OpenCLIP ViT-H under
//! `cond_stage_model.model.`, SD 2.x's UNet conventions) and the SDXL refiner's (bigG alone under
//! `conditioner.embedders.0.model.`, the UNet's cross-attention and added embedding from bigG),
//! and `mlc pipeline` turns each family's tiny file (the refiner beside the base) into a
//! Resources folder that passes the Swift package's rules
//! (`cargo test --release --example pipeline_bench`).
//! `tests/bench/pipeline_bench.sh` writes the files once and times the builds.

use std::collections::BTreeMap;
use std::path::PathBuf;

// Shared with the other benchmarks.
#[allow(dead_code)]
#[path = "safetensors_header.rs"]
mod safetensors_header;
#[allow(dead_code)]
#[path = "tensor_file.rs"]
mod tensor_file;
#[allow(dead_code)]
#[path = "unet_arch.rs"]
mod unet_arch;
use tensor_file::{write_file, Fill, Spec, Specs};
use unet_arch::{full_config, Arch};

/// CLIP's vocabulary and positions (every SD text encoder's).
const VOCAB: usize = 49408;
const POSITIONS: usize = 77;
/// The DDPM schedule's steps (the length of SD 1.x's schedule buffers).
const STEPS: usize = 1000;

/// A transformer text tower's sizes.
#[derive(Clone, Copy)]
struct Text {
    hidden: usize,
    layers: usize,
    mlp: usize,
}

/// An OpenCLIP text tower and its projection's width.
#[derive(Clone, Copy)]
struct OpenClip {
    tower: Text,
    projection: usize,
}

/// A checkpoint's text encoders, which also say its family (and so its layout).
// SD 2.x and the refiner are written at tiny sizes only, by the tests.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Copy)]
enum Encoders {
    /// SD 1.x: CLIP ViT-L/14 in transformers' layout.
    Sd1(Text),
    /// SD 2.x: OpenCLIP ViT-H/14 (all its blocks; readers drop the last).
    Sd2(OpenClip),
    /// SDXL base: CLIP-L and OpenCLIP bigG.
    SdxlBase { clip_l: Text, bigg: OpenClip },
    /// SDXL refiner: OpenCLIP bigG alone.
    SdxlRefiner(OpenClip),
}

/// What decides a checkpoint's tensors.
struct Sizes {
    unet: serde_json::Value,
    /// The VAE's `block_out_channels`.
    vae: Vec<usize>,
    text: Encoders,
}

impl Sizes {
    fn full(name: &str) -> Sizes {
        let clip_l = Text {
            hidden: 768,
            layers: 12,
            mlp: 3072,
        };
        let bigg = OpenClip {
            tower: Text {
                hidden: 1280,
                layers: 32,
                mlp: 5120,
            },
            projection: 1280,
        };
        Sizes {
            unet: full_config(name),
            vae: vec![128, 256, 512, 512],
            text: match name {
                "sdxl" => Encoders::SdxlBase { clip_l, bigg },
                _ => Encoders::Sd1(clip_l),
            },
        }
    }
}

/// The checkpoints the benchmark writes: name, file, seed.
const MODELS: [(&str, &str, u64); 2] = [
    ("sd15", "sd15_single_file.safetensors", 11),
    ("sdxl", "sdxl_single_file.safetensors", 12),
];

/// The tensors of a file being described, added layer by layer (the layer writers are
/// [`Specs`]'; the blocks of each model are below).
type Tensors = Specs;

impl Tensors {
    /// The UNet of `config` under `prefix` in LDM/SGM names.
    fn unet(&mut self, prefix: &str, config: &serde_json::Value) -> Result<(), String> {
        let arch = Arch::from_config(config)?;
        for (key, spec) in arch.tensors() {
            self.0
                .insert(format!("{prefix}{}", arch.ldm_name(&key)?), spec);
        }
        Ok(())
    }

    /// An LDM VAE resnet (`nin_shortcut` where the channels change).
    fn vae_block(&mut self, p: &str, cin: usize, cout: usize) {
        self.norm(&format!("{p}.norm1"), cin);
        self.conv(&format!("{p}.conv1"), cout, cin, 3);
        self.norm(&format!("{p}.norm2"), cout);
        self.conv(&format!("{p}.conv2"), cout, cout, 3);
        if cin != cout {
            self.conv(&format!("{p}.nin_shortcut"), cout, cin, 1);
        }
    }

    /// An LDM VAE mid block: resnet, single-head attention with 1x1-conv q/k/v/proj_out, resnet.
    fn vae_mid(&mut self, p: &str, c: usize) {
        self.vae_block(&format!("{p}.mid.block_1"), c, c);
        self.norm(&format!("{p}.mid.attn_1.norm"), c);
        for x in ["q", "k", "v", "proj_out"] {
            self.conv(&format!("{p}.mid.attn_1.{x}"), c, c, 1);
        }
        self.vae_block(&format!("{p}.mid.block_2"), c, c);
    }

    /// SD's `AutoencoderKL` under `prefix` in LDM names: 2 resnets per encoder level and 3 per
    /// decoder level, 4 latent channels; the decoder's `up.N` numbered like the encoder's
    /// levels, so `up.3` (the widest) runs first.
    fn vae(&mut self, prefix: &str, widths: &[usize]) {
        const LATENT: usize = 4;
        let (n, top) = (widths.len(), widths[widths.len() - 1]);
        let e = format!("{prefix}encoder");
        self.conv(&format!("{e}.conv_in"), widths[0], 3, 3);
        let mut cin = widths[0];
        for (i, &c) in widths.iter().enumerate() {
            for j in 0..2 {
                self.vae_block(&format!("{e}.down.{i}.block.{j}"), cin, c);
                cin = c;
            }
            if i + 1 < n {
                self.conv(&format!("{e}.down.{i}.downsample.conv"), c, c, 3);
            }
        }
        self.vae_mid(&e, top);
        self.norm(&format!("{e}.norm_out"), top);
        self.conv(&format!("{e}.conv_out"), 2 * LATENT, top, 3);
        self.conv(&format!("{prefix}quant_conv"), 2 * LATENT, 2 * LATENT, 1);
        self.conv(&format!("{prefix}post_quant_conv"), LATENT, LATENT, 1);

        let d = format!("{prefix}decoder");
        self.conv(&format!("{d}.conv_in"), top, LATENT, 3);
        self.vae_mid(&d, top);
        let mut cin = top;
        for (i, &c) in widths.iter().enumerate().rev() {
            for j in 0..3 {
                self.vae_block(&format!("{d}.up.{i}.block.{j}"), cin, c);
                cin = c;
            }
            if i > 0 {
                self.conv(&format!("{d}.up.{i}.upsample.conv"), c, c, 3);
            }
        }
        self.norm(&format!("{d}.norm_out"), widths[0]);
        self.conv(&format!("{d}.conv_out"), 3, widths[0], 3);
    }

    /// transformers' `CLIPTextModel` under `prefix` (ending in `text_model.`), with the
    /// `position_ids` buffer single files carry.
    fn clip_text(&mut self, prefix: &str, t: Text) {
        let d = t.hidden;
        let emb = format!("{prefix}embeddings");
        self.add(
            format!("{emb}.token_embedding.weight"),
            vec![VOCAB, d],
            Fill::Bias,
        );
        self.add(
            format!("{emb}.position_embedding.weight"),
            vec![POSITIONS, d],
            Fill::Bias,
        );
        self.add(
            format!("{emb}.position_ids"),
            vec![1, POSITIONS],
            Fill::Positions,
        );
        for n in 0..t.layers {
            let p = format!("{prefix}encoder.layers.{n}");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                self.linear(&format!("{p}.self_attn.{proj}"), d, d);
            }
            self.norm(&format!("{p}.layer_norm1"), d);
            self.norm(&format!("{p}.layer_norm2"), d);
            self.linear(&format!("{p}.mlp.fc1"), t.mlp, d);
            self.linear(&format!("{p}.mlp.fc2"), d, t.mlp);
        }
        self.norm(&format!("{prefix}final_layer_norm"), d);
    }

    /// OpenCLIP's text tower under `prefix` (ending in `model.`) in OpenCLIP's own layout: q, k
    /// and v stacked in `attn.in_proj_weight`, `text_projection` stored [hidden, projection], and
    /// `logit_scale` (ln 100, as trained CLIP models end).
    fn open_clip_text(&mut self, prefix: &str, clip: OpenClip) {
        let (t, projection) = (clip.tower, clip.projection);
        let d = t.hidden;
        self.add(
            format!("{prefix}token_embedding.weight"),
            vec![VOCAB, d],
            Fill::Bias,
        );
        self.add(
            format!("{prefix}positional_embedding"),
            vec![POSITIONS, d],
            Fill::Bias,
        );
        for n in 0..t.layers {
            let p = format!("{prefix}transformer.resblocks.{n}");
            self.norm(&format!("{p}.ln_1"), d);
            self.add(
                format!("{p}.attn.in_proj_weight"),
                vec![3 * d, d],
                Fill::Weight,
            );
            self.add(format!("{p}.attn.in_proj_bias"), vec![3 * d], Fill::Bias);
            self.linear(&format!("{p}.attn.out_proj"), d, d);
            self.norm(&format!("{p}.ln_2"), d);
            self.linear(&format!("{p}.mlp.c_fc"), t.mlp, d);
            self.linear(&format!("{p}.mlp.c_proj"), d, t.mlp);
        }
        self.norm(&format!("{prefix}ln_final"), d);
        self.add(
            format!("{prefix}text_projection"),
            vec![d, projection],
            Fill::Weight,
        );
        self.add(
            format!("{prefix}logit_scale"),
            Vec::new(),
            Fill::Const(100f32.ln()),
        );
    }

    /// The buffers SD 1.x and 2.x files carry beside the models (LatentDiffusion's DDPM
    /// schedule and the EMA's bookkeeping), which readers skip.
    fn ddpm_buffers(&mut self) {
        for key in [
            "betas",
            "alphas_cumprod",
            "alphas_cumprod_prev",
            "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod",
            "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod",
            "posterior_variance",
            "posterior_log_variance_clipped",
            "posterior_mean_coef1",
            "posterior_mean_coef2",
        ] {
            self.add(key.into(), vec![STEPS], Fill::F32(0.5));
        }
        self.add("model_ema.decay".into(), Vec::new(), Fill::F32(0.9999));
        self.add("model_ema.num_updates".into(), Vec::new(), Fill::I32(0));
    }
}

/// Every tensor of a single-file checkpoint, in the layout of its family's published files.
fn checkpoint(sizes: &Sizes) -> Result<BTreeMap<String, Spec>, String> {
    let mut t = Tensors::default();
    t.unet("model.diffusion_model.", &sizes.unet)?;
    t.vae("first_stage_model.", &sizes.vae);
    match sizes.text {
        Encoders::Sd1(clip_l) => {
            t.clip_text("cond_stage_model.transformer.text_model.", clip_l);
            t.ddpm_buffers();
        }
        Encoders::Sd2(h) => {
            t.open_clip_text("cond_stage_model.model.", h);
            t.ddpm_buffers();
        }
        Encoders::SdxlBase { clip_l, bigg } => {
            t.clip_text("conditioner.embedders.0.transformer.text_model.", clip_l);
            t.open_clip_text("conditioner.embedders.1.model.", bigg);
        }
        Encoders::SdxlRefiner(bigg) => t.open_clip_text("conditioner.embedders.0.model.", bigg),
    }
    Ok(t.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.get(1).map_or("all", String::as_str);
    let models: Vec<_> = MODELS
        .iter()
        .filter(|(name, ..)| which == "all" || which == *name)
        .collect();
    if args.is_empty() || args.len() > 2 || models.is_empty() {
        eprintln!("usage: pipeline_bench OUT_DIR [sd15|sdxl|all]");
        std::process::exit(2);
    }
    let out = PathBuf::from(&args[0]);
    for &&(name, file, seed) in &models {
        let path = out.join(file);
        let written = std::fs::create_dir_all(&out)
            .map_err(|e| format!("{}: {e}", out.display()))
            .and_then(|()| checkpoint(&Sizes::full(name)))
            .and_then(|tensors| write_file(&path, &tensors, seed, name));
        if let Err(e) = written {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        let sd = name == "sd15";
        println!(
            "  target/release/mlc pipeline {} --weights {} -o /tmp/{name}_resources",
            if sd { "sd" } else { "sdxl" },
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor_file::{parameters, write_safetensors};
    use std::path::Path;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
    }

    fn config(path: &Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Key → (dtype, shape) of a safetensors file's header.
    fn header(path: &Path) -> BTreeMap<String, (String, Vec<usize>)> {
        let bytes = std::fs::read(path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let h: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        h.into_iter()
            .filter(|(k, _)| k != "__metadata__")
            .map(|(k, v)| {
                let dtype = v["dtype"].as_str().unwrap().to_string();
                (
                    k,
                    (dtype, serde_json::from_value(v["shape"].clone()).unwrap()),
                )
            })
            .collect()
    }

    fn ours(tensors: &BTreeMap<String, Spec>) -> BTreeMap<String, (String, Vec<usize>)> {
        tensors
            .iter()
            .map(|(k, s)| (k.clone(), (s.fill.dtype().0.into(), s.shape.clone())))
            .collect()
    }

    /// Fails with the first keys one side has and the other lacks, then compares the rest.
    fn assert_same(
        what: &str,
        ours: &BTreeMap<String, (String, Vec<usize>)>,
        theirs: &BTreeMap<String, (String, Vec<usize>)>,
    ) {
        let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
        let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{what}: {} missing (first {:?}), {} extra (first {:?})",
            missing.len(),
            missing.first(),
            extra.len(),
            extra.first()
        );
        assert_eq!(ours, theirs, "{what}: dtypes or shapes differ");
    }

    /// The tiny text towers: 64 wide (one head of CLIP's 64 channels), 3 blocks.
    const TINY_TEXT: Text = Text {
        hidden: 64,
        layers: 3,
        mlp: 256,
    };
    /// A tiny bigG: the tower with its projection to 32 (the tiny SDXL UNet's text_embeds).
    const TINY_BIGG: OpenClip = OpenClip {
        tower: TINY_TEXT,
        projection: 32,
    };

    /// The tiny SD 1.x fixture's sizes: `block_out_channels` of its UNet and VAE, text 64 wide.
    fn tiny_sd15() -> Sizes {
        let d = fixtures().join("pipeline/diffusers");
        Sizes {
            unet: config(&d.join("unet/config.json")),
            vae: vec![32, 32, 64, 64],
            text: Encoders::Sd1(TINY_TEXT),
        }
    }

    /// A tiny SD 2.x: the SD 2.1 UNet fixture's config (linear projections, 64 channels, one
    /// head of 64, cross-attention 64) with a 64-wide OpenCLIP tower whose projection is as
    /// wide as it, as ViT-H's is (1024 to 1024): the folder's `pooled_outputs` is clip-h's
    /// `text_embeds`, and the Swift rules want it as wide as the hidden states.
    fn tiny_sd2() -> Sizes {
        Sizes {
            unet: config(&fixtures().join("unet/sd21/diffusers/config.json")),
            vae: vec![32, 32, 64, 64],
            text: Encoders::Sd2(OpenClip {
                tower: TINY_TEXT,
                projection: TINY_TEXT.hidden,
            }),
        }
    }

    /// A tiny SDXL base: the UNet fixture's config (cross-attention 128 = 64 + 64, text_embeds
    /// 32) with 64-wide CLIP-L and bigG towers and bigG's projection to 32.
    fn tiny_sdxl() -> Sizes {
        Sizes {
            unet: config(&fixtures().join("unet/sdxl/diffusers/config.json")),
            vae: vec![32, 32, 64, 64],
            text: Encoders::SdxlBase {
                clip_l: TINY_TEXT,
                bigg: TINY_BIGG,
            },
        }
    }

    /// A tiny SDXL refiner beside [`tiny_sdxl`]: its UNet changed as the refiner changes SDXL
    /// base's (cross-attention from bigG alone, 64; the added embedding takes bigG's
    /// projection and 5 time ids, 32 + 5 x 256), the base's bigG, no CLIP-L.
    fn tiny_refiner() -> Sizes {
        let mut unet = config(&fixtures().join("unet/sdxl/diffusers/config.json"));
        unet["cross_attention_dim"] = TINY_BIGG.tower.hidden.into();
        unet["projection_class_embeddings_input_dim"] = (TINY_BIGG.projection + 5 * 256).into();
        Sizes {
            unet,
            vae: vec![32, 32, 64, 64],
            text: Encoders::SdxlRefiner(TINY_BIGG),
        }
    }

    /// At the fixture's sizes the SD 1.x checkpoint is the fixture's key for key: every name,
    /// shape and dtype, the skipped buffers included.
    #[test]
    fn sd15_at_the_fixtures_sizes_is_the_pipeline_fixture() {
        let theirs = header(&fixtures().join("pipeline/sd15_tiny.safetensors"));
        assert_eq!(theirs.len(), 995);
        assert_same(
            "sd15_tiny",
            &ours(&checkpoint(&tiny_sd15()).unwrap()),
            &theirs,
        );
    }

    /// The SDXL UNet's SGM names and the VAE's LDM names against the fixtures' single files
    /// (written from diffusers' own converter's map).
    #[test]
    fn sdxl_unet_and_vae_match_the_original_fixtures() {
        let t = checkpoint(&tiny_sdxl()).unwrap();
        let part = |prefix: &str| -> BTreeMap<_, _> {
            ours(&t)
                .into_iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v)))
                .collect()
        };
        let unet = header(&fixtures().join("unet/sdxl/original.safetensors"))
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("model.diffusion_model.").unwrap().into(), v))
            .collect();
        assert_same("sdxl unet", &part("model.diffusion_model."), &unet);
        let vae = header(&fixtures().join("vae/sd/original.safetensors"));
        let widths =
            config(&fixtures().join("vae/sd/diffusers/config.json"))["block_out_channels"].clone();
        let mut v = Tensors::default();
        v.vae("", &serde_json::from_value::<Vec<usize>>(widths).unwrap());
        // The VAE fixture is fp32.
        let fp32 = |t: BTreeMap<String, (String, Vec<usize>)>| -> BTreeMap<_, _> {
            t.into_iter()
                .map(|(k, (_, s))| (k, ("F32".to_string(), s)))
                .collect()
        };
        assert_same("sd vae", &fp32(ours(&v.0)), &fp32(vae.clone()));
        assert!(part("first_stage_model.").len() == vae.len());
        let bigg = part("conditioner.embedders.1.model.");
        assert_eq!(bigg.len(), 2 + 3 * 12 + 2 + 2);
        assert_eq!(
            bigg["transformer.resblocks.2.attn.in_proj_weight"].1,
            [192, 64]
        );
        assert_eq!(bigg["text_projection"].1, [64, 32]);
        assert_eq!(bigg["logit_scale"], ("F16".to_string(), vec![]));
    }

    /// SD 2.x's tower sits under `cond_stage_model.model.` in OpenCLIP's layout, beside the
    /// DDPM buffers and with no transformers-layout tower; the refiner's bigG is the base's
    /// under `conditioner.embedders.0.model.`, no CLIP-L, and its UNet differs from the base's
    /// only where cross-attention and the added embedding read bigG alone.
    #[test]
    fn sd2_and_refiner_layouts() {
        let under = |t: &BTreeMap<String, (String, Vec<usize>)>, prefix: &str| -> BTreeMap<_, _> {
            t.iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
                .collect()
        };
        let sd2 = ours(&checkpoint(&tiny_sd2()).unwrap());
        let h = under(&sd2, "cond_stage_model.model.");
        assert_eq!(h.len(), 2 + 3 * 12 + 2 + 2);
        assert_eq!(
            h["transformer.resblocks.2.attn.in_proj_weight"].1,
            [192, 64]
        );
        assert_eq!(h["text_projection"].1, [64, 64]);
        assert!(under(&sd2, "cond_stage_model.transformer.").is_empty());
        assert_eq!(sd2["alphas_cumprod"].0, "F32");
        let unet = under(&sd2, "model.diffusion_model.");
        assert_eq!(unet["middle_block.1.proj_in.weight"].1, [64, 64]);
        assert_eq!(
            unet["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].1,
            [64, 64]
        );

        let base = ours(&checkpoint(&tiny_sdxl()).unwrap());
        let refiner = ours(&checkpoint(&tiny_refiner()).unwrap());
        assert_eq!(
            under(&refiner, "conditioner.embedders.0.model."),
            under(&base, "conditioner.embedders.1.model.")
        );
        let refiner_keys: Vec<_> = refiner.keys().filter(|k| k.starts_with("cond")).collect();
        assert!(refiner_keys
            .iter()
            .all(|k| k.starts_with("conditioner.embedders.0.model.")));
        assert_eq!(
            under(&refiner, "first_stage_model."),
            under(&base, "first_stage_model.")
        );
        let (r, b) = (
            under(&refiner, "model.diffusion_model."),
            under(&base, "model.diffusion_model."),
        );
        assert!(r.keys().eq(b.keys()));
        let differ: Vec<_> = r.keys().filter(|k| r[*k] != b[*k]).collect();
        assert!(differ.iter().all(|k| k.ends_with("attn2.to_k.weight")
            || k.ends_with("attn2.to_v.weight")
            || *k == "label_emb.0.0.weight"));
        assert_eq!(r["label_emb.0.0.weight"].1, [128, 32 + 5 * 256]);
        assert_eq!(b["label_emb.0.0.weight"].1, [128, 32 + 6 * 256]);
        let to_k = "middle_block.1.transformer_blocks.0.attn2.to_k.weight";
        assert_eq!((&r[to_k].1, &b[to_k].1), (&vec![64, 64], &vec![64, 128]));
    }

    /// The UNet's single-file names at the real sizes, spot-checked against names in the
    /// published files; a key outside the UNet is refused naming it.
    #[test]
    fn ldm_names_at_the_real_sizes() {
        let sd15 = Arch::from_config(&full_config("sd15")).unwrap();
        let sdxl = Arch::from_config(&full_config("sdxl")).unwrap();
        for (arch, diffusers, ldm) in [
            (
                &sd15,
                "up_blocks.0.upsamplers.0.conv.weight",
                "output_blocks.2.1.conv.weight",
            ),
            (
                &sd15,
                "up_blocks.1.upsamplers.0.conv.bias",
                "output_blocks.5.2.conv.bias",
            ),
            (
                &sd15,
                "down_blocks.2.downsamplers.0.conv.weight",
                "input_blocks.9.0.op.weight",
            ),
            (
                &sd15,
                "mid_block.resnets.1.time_emb_proj.weight",
                "middle_block.2.emb_layers.1.weight",
            ),
            (&sdxl, "add_embedding.linear_2.bias", "label_emb.0.2.bias"),
            (
                &sdxl,
                "mid_block.attentions.0.transformer_blocks.9.attn2.to_k.weight",
                "middle_block.1.transformer_blocks.9.attn2.to_k.weight",
            ),
            (
                &sdxl,
                "up_blocks.0.attentions.2.proj_out.weight",
                "output_blocks.2.1.proj_out.weight",
            ),
            (
                &sdxl,
                "up_blocks.0.upsamplers.0.conv.weight",
                "output_blocks.2.2.conv.weight",
            ),
            (
                &sdxl,
                "up_blocks.2.resnets.2.conv_shortcut.bias",
                "output_blocks.8.0.skip_connection.bias",
            ),
        ] {
            assert_eq!(arch.ldm_name(diffusers).unwrap(), ldm, "{diffusers}");
        }
        let e = sd15
            .ldm_name("down_blocks.0.resnets.0.nin.weight")
            .unwrap_err();
        assert!(e.contains("\"down_blocks.0.resnets.0.nin.weight\""), "{e}");
    }

    /// The full sizes give the published models' parameter counts: UNets (unet_bench's
    /// test), the SD VAE 83,653,863, CLIP-L's text tower 123,060,480 and bigG's with its
    /// projection 694,659,840 (+ logit_scale), plus the buffers.
    #[test]
    fn full_sizes_give_the_published_parameter_counts() {
        let count = |prefix: &str, t: &BTreeMap<String, Spec>| -> usize {
            t.iter()
                .filter(|(k, s)| k.starts_with(prefix) && s.fill.dtype().0 == "F16")
                .map(|(_, s)| s.shape.iter().product::<usize>())
                .sum()
        };
        let sd15 = checkpoint(&Sizes::full("sd15")).unwrap();
        assert_eq!(count("model.diffusion_model.", &sd15), 859_520_964);
        assert_eq!(count("first_stage_model.", &sd15), 83_653_863);
        assert_eq!(count("cond_stage_model.", &sd15), 123_060_480);
        assert_eq!(parameters(&sd15), 1_066_247_386);
        let sdxl = checkpoint(&Sizes::full("sdxl")).unwrap();
        assert_eq!(count("model.diffusion_model.", &sdxl), 2_567_463_684);
        assert_eq!(count("first_stage_model.", &sdxl), 83_653_863);
        assert_eq!(count("conditioner.embedders.0.", &sdxl), 123_060_480);
        assert_eq!(count("conditioner.embedders.1.", &sdxl), 694_659_841);
        assert_eq!(parameters(&sdxl), 3_468_837_945);
        for t in [&sd15, &sdxl] {
            assert!(t.values().all(|s| s.fill.dtype().0 == "F16"
                || matches!(s.fill, Fill::F32(_) | Fill::I32(_) | Fill::Positions)));
        }
    }

    /// `mlc pipeline` with `p`'s options at `--image-size 128`, and the folder's Swift check:
    /// the report, the folder's file names (sorted) and the sizes each model reads.
    fn resources(
        mut p: mlc::pipeline::PipelineOptions,
    ) -> (
        mlc::pipeline::PipelineReport,
        Vec<String>,
        BTreeMap<mlc::pipeline::swift::Part, mlc::pipeline::swift::Sizes>,
    ) {
        p.image_size = Some([128, 128]);
        let r = mlc::pipeline::write(&p)
            .unwrap_or_else(|e| panic!("{} pipeline: {e}", p.weights.display()));
        let out = &p.output;
        let mut files: Vec<String> = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let sizes =
            mlc::pipeline::swift::check_folder(out, mlc::pipeline::parts::swift_pipeline(r.family))
                .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
        (r, files, sizes)
    }

    /// Builds `model`'s `part` from `file` at the tiny sizes (latent 16x16, image 64x64).
    fn build_part(file: &Path, model: &str, part: &str, output: PathBuf) {
        let mut o = mlc::compiler::BuildOptions::new(model, file);
        o.part = Some(part.into());
        if model.ends_with("unet") {
            o.sizes = mlc::compiler::Sizes::Latent(vec![[16, 16]]);
        } else if model.ends_with("vae") {
            o.sizes = mlc::compiler::Sizes::Image(vec![[64, 64]]);
        }
        o.output = Some(output);
        let built = mlc::compiler::build(&o);
        assert!(
            built.is_ok(),
            "{} {model} {part}: {:?}",
            file.display(),
            built.err()
        );
    }

    /// A text width `check_folder` read.
    fn text_of(
        sizes: &BTreeMap<mlc::pipeline::swift::Part, mlc::pipeline::swift::Sizes>,
        part: mlc::pipeline::swift::Part,
    ) -> usize {
        usize::try_from(sizes[&part][&mlc::pipeline::swift::Size::Text]).unwrap()
    }

    /// The family `mlc.json` records.
    fn manifest_family(out: &Path) -> String {
        let json = config(&out.join("mlc.json"));
        json["family"].as_str().unwrap().to_string()
    }

    /// mlc builds every part of tiny SDXL and SD 2.x single files (so it finds each part by the
    /// real prefixes and reads OpenCLIP's layout), and of the tiny SD 1.x one written by the
    /// same writer, the buffers skipped; each gives the Resources folder the Swift package
    /// reads, its UNet reading the text encoders' width.
    #[test]
    fn mlc_builds_every_part_from_the_written_files() {
        use mlc::pipeline::swift::Part;
        let dir = tempfile::tempdir().unwrap();
        for (name, sizes, parts, family, text) in [
            (
                "sdxl",
                tiny_sdxl(),
                &[
                    ("sdxl-unet", "unet"),
                    ("sdxl-vae", "decoder"),
                    ("sdxl-vae", "encoder"),
                    ("clip-l", "encoder"),
                    ("clip-bigg", "encoder"),
                ][..],
                "SDXL base",
                // Both encoders' states side by side.
                2 * TINY_TEXT.hidden,
            ),
            (
                "sd15",
                tiny_sd15(),
                &[
                    ("sd-unet", "unet"),
                    ("sd-vae", "decoder"),
                    ("clip-l", "encoder"),
                ][..],
                "SD 1.x",
                TINY_TEXT.hidden,
            ),
            (
                "sd2",
                tiny_sd2(),
                &[
                    ("sd-unet", "unet"),
                    ("sd-vae", "decoder"),
                    ("clip-h", "encoder"),
                ][..],
                "SD 2.x",
                TINY_TEXT.hidden,
            ),
        ] {
            let file = dir.path().join(format!("{name}.safetensors"));
            write_safetensors(&file, &checkpoint(&sizes).unwrap(), 5).unwrap();
            for &(model, part) in parts {
                let output = dir.path().join(format!("{name}_{model}_{part}.mlpackage"));
                build_part(&file, model, part, output);
            }
            // The whole Resources folder, checked against the Swift package's rules on the way.
            let command = if name == "sdxl" { "sdxl" } else { "sd" };
            let out = dir.path().join(format!("{name}_Resources"));
            let (r, files, sizes) =
                resources(mlc::pipeline::PipelineOptions::new(command, &file, &out));
            let mut want = vec!["TextEncoder.mlmodelc"];
            if name == "sdxl" {
                want.push("TextEncoder2.mlmodelc");
            }
            want.extend([
                "Unet.mlmodelc",
                "VAEDecoder.mlmodelc",
                "VAEEncoder.mlmodelc",
                "merges.txt",
                "mlc.json",
                "vocab.json",
            ]);
            assert_eq!(files, want, "{name}");
            assert_eq!(r.family.name(), family, "{name}");
            assert_eq!(manifest_family(&out), family, "{name}");
            assert_eq!(text_of(&sizes, Part::Unet), text, "{name}");
            assert_eq!(
                text_of(&sizes, Part::TextEncoder),
                TINY_TEXT.hidden,
                "{name}"
            );
        }
    }

    /// A tiny refiner file: mlc finds its UNet and bigG by the refiner's prefixes (bigG under
    /// `conditioner.embedders.0.model.`, where the base keeps CLIP-L) and builds them; beside
    /// the tiny base, `mlc pipeline sdxl --refiner` adds `UnetRefiner.mlmodelc` reading bigG's
    /// states alone and 5 time ids, and passes the Swift rules; the refiner given as
    /// `--weights` is refused in one line naming `--refiner`, nothing written.
    #[test]
    fn mlc_builds_the_refiner_beside_the_base() {
        use mlc::pipeline::swift::{Part, Size};
        let dir = tempfile::tempdir().unwrap();
        let refiner = dir.path().join("refiner.safetensors");
        write_safetensors(&refiner, &checkpoint(&tiny_refiner()).unwrap(), 6).unwrap();
        for (model, part) in [
            ("sdxl-unet", "unet"),
            ("clip-bigg", "encoder"),
            ("sdxl-vae", "decoder"),
        ] {
            build_part(
                &refiner,
                model,
                part,
                dir.path().join(format!("{model}_{part}.mlpackage")),
            );
        }

        let base = dir.path().join("sdxl.safetensors");
        write_safetensors(&base, &checkpoint(&tiny_sdxl()).unwrap(), 5).unwrap();
        let out = dir.path().join("Resources");
        let mut p = mlc::pipeline::PipelineOptions::new("sdxl", &base, &out);
        p.refiner = Some(refiner.clone());
        // check_folder (in `resources`) also holds UnetRefiner to `time_ids` [2, 5], by which
        // the Swift code tells it from the base.
        let (r, files, sizes) = resources(p);
        assert_eq!(
            files,
            [
                "TextEncoder.mlmodelc",
                "TextEncoder2.mlmodelc",
                "Unet.mlmodelc",
                "UnetRefiner.mlmodelc",
                "VAEDecoder.mlmodelc",
                "VAEEncoder.mlmodelc",
                "merges.txt",
                "mlc.json",
                "vocab.json",
            ]
        );
        assert_eq!(r.family.name(), "SDXL base");
        let manifest = config(&out.join("mlc.json"));
        assert_eq!(manifest["refiner"], "refiner.safetensors");
        assert!(manifest["parts"]["UnetRefiner"]["bundle_sha256"].is_string());
        // The refiner reads bigG's states alone; the base both encoders'.
        let bigg = text_of(&sizes, Part::TextEncoder2);
        assert_eq!(bigg, TINY_BIGG.tower.hidden);
        assert_eq!(text_of(&sizes, Part::UnetRefiner), bigg);
        assert_eq!(text_of(&sizes, Part::Unet), 2 * TINY_TEXT.hidden);
        let pooled = |part: Part| sizes[&part][&Size::Pooled];
        assert_eq!(pooled(Part::UnetRefiner), pooled(Part::TextEncoder2));
        assert_eq!(pooled(Part::UnetRefiner), 32);

        let wrong = dir.path().join("Wrong");
        let e = mlc::pipeline::write(&mlc::pipeline::PipelineOptions::new(
            "sdxl", &refiner, &wrong,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("--refiner") && !e.contains('\n'), "{e}");
        assert!(!wrong.exists());
    }
}
