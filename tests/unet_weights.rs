//! Reading Stable Diffusion UNets' weights (../shared/fixtures/unet): the architecture read off
//! the tensors against each fixture's config.json, the single-file layouts against the
//! diffusers one, the EMA copy, and bad input refused in one line naming the file and the key
//! or field.

mod common;

use common::shared;
use mlc::models::unet::config::{self, AddedEmbedding, Family, UnetConfig};
use mlc::models::unet::{read, tensors};
use mlc::models::{ModelError, ModelOptions};
use mlc::tensor::{Tensor, TensorData};
use mlc::weights::{self, Weights};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FIXTURES: [&str; 4] = ["sd15", "sd21", "sdxl", "sd15_inpaint"];

fn diffusers(m: &str) -> PathBuf {
    shared(&format!(
        "fixtures/unet/{m}/diffusers/diffusion_pytorch_model.safetensors"
    ))
}

fn original(m: &str) -> PathBuf {
    shared(&format!("fixtures/unet/{m}/original.safetensors"))
}

fn config_json(m: &str) -> Value {
    let path = shared(&format!("fixtures/unet/{m}/diffusers/config.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn shapes_of(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let source = weights::open(path).unwrap();
    source
        .tensors()
        .iter()
        .map(|(k, i)| (k.clone(), i.shape.clone()))
        .collect()
}

/// The UNet's tensors, all in memory (the loader keeps only handles of the large ones).
fn load(path: &Path, ema: bool) -> Result<(Weights, UnetConfig), ModelError> {
    let source = weights::open(path)?;
    let o = ModelOptions {
        ema,
        ..ModelOptions::default()
    };
    let (w, cfg) = read::load(source.as_ref(), &o)?;
    Ok((w.into_memory()?, cfg))
}

#[test]
fn large_tensors_stay_out_of_memory_and_read_back_as_they_are() {
    // SD 1.5's fixture has 32 tensors of 64 KiB or more (f16 in a safetensors file, so the
    // handles point into the file), SDXL's some too; a .ckpt's are copied to a spill file.
    for m in ["sd15", "sdxl"] {
        let source = weights::open(&original(m)).unwrap();
        let (w, _) = read::load(source.as_ref(), &ModelOptions::default()).unwrap();
        assert!(!w.spilled.is_empty(), "{m}: nothing spilled");
        assert!(
            w.spilled.values().all(|s| s.data.len() * 2 >= 1 << 16),
            "{m}"
        );
        assert!(w.tensors.values().all(|t| t.len() * 2 < 1 << 16), "{m}");
        let hash = w.content_sha256().unwrap();
        let all = w.into_memory().unwrap();
        assert!(all.spilled.is_empty());
        assert_eq!(
            all.content_sha256().unwrap(),
            hash,
            "{m}: the hash leaves taken as read"
        );
        let whole = Weights::load(&original(m)).unwrap();
        let prefix = "model.diffusion_model.";
        let originals = whole
            .tensors
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count();
        assert_eq!(all.tensors.len(), originals, "{m}");
    }
}

fn load_err(path: &Path, ema: bool) -> String {
    match load(path, ema) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// The config a fixture's config.json describes, built from its fields as diffusers reads them.
fn from_json(m: &str) -> UnetConfig {
    let j = config_json(m);
    let int = |v: &Value| v.as_u64().unwrap() as usize;
    let block_out_channels: Vec<usize> = j["block_out_channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(int)
        .collect();
    let levels = block_out_channels.len();
    let per_level = |v: &Value| match v.as_array() {
        Some(a) => a.iter().map(int).collect::<Vec<_>>(),
        None => vec![int(v); levels],
    };
    let attention: Vec<bool> = j["down_block_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().starts_with("CrossAttn"))
        .collect();
    let depth = per_level(&j["transformer_layers_per_block"]);
    let heads = match j["num_attention_heads"].is_null() {
        true => per_level(&j["attention_head_dim"]),
        false => per_level(&j["num_attention_heads"]),
    };
    let text_time = j["addition_embed_type"] == "text_time";
    let linear = j["use_linear_projection"].as_bool().unwrap();
    UnetConfig {
        family: match (linear, text_time) {
            (false, _) => Family::Sd1,
            (true, false) => Family::Sd2,
            (true, true) => Family::Sdxl,
        },
        in_channels: int(&j["in_channels"]),
        out_channels: int(&j["out_channels"]),
        layers_per_block: int(&j["layers_per_block"]),
        transformer_depth: (0..levels)
            .map(|i| if attention[i] { depth[i] } else { 0 })
            .collect(),
        mid_transformer_depth: depth[levels - 1],
        heads,
        cross_attention_dim: int(&j["cross_attention_dim"]),
        linear_projection: linear,
        upcast_attention: j["upcast_attention"].as_bool().unwrap(),
        flip_sin_to_cos: j["flip_sin_to_cos"].as_bool().unwrap(),
        freq_shift: j["freq_shift"].as_f64().unwrap() as f32,
        // diffusers' default time_embedding_dim: 4 x the first level's channels.
        time_embed_dim: 4 * block_out_channels[0],
        // The fixtures' README: SDXL base's 6 time ids.
        added: text_time.then(|| {
            let per_id = int(&j["addition_time_embed_dim"]);
            AddedEmbedding {
                text_embeds: int(&j["projection_class_embeddings_input_dim"]) - 6 * per_id,
                time_ids: 6,
                time_id_channels: per_id,
            }
        }),
        norm_groups: int(&j["norm_num_groups"]),
        norm_eps: j["norm_eps"].as_f64().unwrap() as f32,
        block_out_channels,
    }
}

#[test]
fn the_tensors_give_each_fixtures_config() {
    for m in FIXTURES {
        let want = from_json(m);
        let mut cfg = config::detect(&shapes_of(&diffusers(m))).unwrap();
        // Upcast attention is the one field only config.json tells (SD 2.1's).
        assert_eq!(
            cfg,
            UnetConfig {
                upcast_attention: false,
                ..want.clone()
            },
            "{m}"
        );
        config::apply_config(&mut cfg, &config_json(m)).unwrap();
        assert_eq!(cfg, want, "{m}");
    }
    // Heads by the family's convention, without config.json.
    let heads = |m| config::detect(&shapes_of(&diffusers(m))).unwrap().heads;
    assert_eq!(heads("sd15"), [8, 8, 8, 8]);
    assert_eq!(heads("sd21"), [1, 1, 1, 1]);
    assert_eq!(heads("sdxl"), [1, 1, 1]);
    let sdxl = config::detect(&shapes_of(&diffusers("sdxl"))).unwrap();
    assert_eq!(sdxl.family, Family::Sdxl);
    assert_eq!(sdxl.transformer_depth, [0, 1, 2]);
    let sd21 = config::detect(&shapes_of(&diffusers("sd21"))).unwrap();
    assert_eq!((sd21.family, sd21.linear_projection), (Family::Sd2, true));
    assert_eq!(
        config::detect(&shapes_of(&diffusers("sd15_inpaint")))
            .unwrap()
            .in_channels,
        9
    );
}

#[test]
fn a_diffusers_file_loads_with_the_config_beside_it() {
    for m in FIXTURES {
        let (w, cfg) = load(&diffusers(m), false).unwrap();
        assert_eq!(cfg, from_json(m), "{m}");
        assert_eq!(w.tensors.len(), shapes_of(&diffusers(m)).len(), "{m}");
        assert_eq!(read::config_of(&w).unwrap(), cfg, "{m}");
    }
}

#[test]
fn single_files_load_to_the_diffusers_tensors() {
    for m in ["sd15", "sdxl"] {
        let (a, a_cfg) = load(&original(m), false).unwrap();
        let (b, b_cfg) = load(&diffusers(m), false).unwrap();
        assert_eq!(a_cfg, b_cfg, "{m}");
        assert_eq!(
            a.tensors.keys().collect::<Vec<_>>(),
            b.tensors.keys().collect::<Vec<_>>(),
            "{m}"
        );
        for (k, t) in &a.tensors {
            let u = &b.tensors[k];
            assert_eq!(t.shape, u.shape, "{m} {k}");
            assert!(matches!(t.data, TensorData::F16(_)), "{m} {k}");
            assert_eq!(t.to_le_bytes(), u.to_le_bytes(), "{m} {k}");
        }
    }
}

/// Writes tensors in their own dtype (f16 stays f16).
fn write(path: &Path, tensors: &BTreeMap<String, Tensor>) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = tensors
        .iter()
        .map(|(k, t)| {
            let dtype = match t.data {
                TensorData::F16(_) => safetensors::Dtype::F16,
                TensorData::I32(_) => safetensors::Dtype::I32,
                _ => safetensors::Dtype::F32,
            };
            (k.clone(), t.to_le_bytes(), t.shape.clone(), dtype)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, b, s, d)| {
            let v = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (k.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn all_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Weights::load(path).unwrap().tensors
}

#[test]
fn ema_reads_the_ema_copy_and_only_with_ema() {
    let dir = tempfile::tempdir().unwrap();
    let model = all_tensors(&original("sd15"));
    let mut file = BTreeMap::new();
    for (k, t) in &model {
        // The EMA copy holds the fixture's values; the model's own keys a decoy.
        let dotless = k.strip_prefix("model.").unwrap().replace('.', "");
        file.insert(format!("model_ema.{dotless}"), t.clone());
        let decoy: Vec<f32> = t.to_f32().iter().map(|v| v * 0.5 + 1.0).collect();
        file.insert(k.clone(), Tensor::f32(t.shape.clone(), decoy));
    }
    file.insert("model_ema.num_updates".into(), Tensor::i32(vec![], vec![7]));
    file.insert("model_ema.decay".into(), Tensor::f32(vec![], vec![0.9999]));
    // A full checkpoint's other models are ignored.
    file.insert(
        "first_stage_model.decoder.conv_in.weight".into(),
        Tensor::f32(vec![2, 2, 3, 3], vec![0.0; 36]),
    );
    let path = dir.path().join("v1-5-pruned.safetensors");
    write(&path, &file);
    let (want, _) = load(&diffusers("sd15"), false).unwrap();

    let (ema, cfg) = load(&path, true).unwrap();
    assert_eq!(cfg, load(&diffusers("sd15"), false).unwrap().1);
    assert_eq!(ema.tensors.len(), want.tensors.len());
    for (k, t) in &want.tensors {
        assert_eq!(ema.tensors[k].to_le_bytes(), t.to_le_bytes(), "{k}");
    }
    let (plain, _) = load(&path, false).unwrap();
    let k = "down_blocks.0.resnets.0.conv1.weight";
    let decoy: Vec<f32> = want.tensors[k]
        .to_f32()
        .iter()
        .map(|v| v * 0.5 + 1.0)
        .collect();
    assert_eq!(plain.tensors[k].to_f32(), decoy);

    // An EMA copy with a tensor missing, and --ema on files without one.
    let gone = format!("model_ema.diffusion_model{}", "input_blocks11proj_inweight");
    assert!(file.remove(&gone).is_some());
    write(&path, &file);
    let e = load_err(&path, true);
    assert!(e.contains(&gone) && e.contains("--ema"), "{e}");
    for p in [original("sd15"), diffusers("sd15")] {
        let e = load_err(&p, true);
        assert!(e.contains("--ema") && e.contains("model_ema."), "{e}");
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

/// Asserts a one-line message naming `file` and each of `names`.
fn names(e: &str, file: &Path, names: &[&str]) {
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains(&file.display().to_string()), "{e}");
    for n in names {
        assert!(e.contains(n), "{n} not in: {e}");
    }
}

#[test]
fn other_models_files_are_named_for_what_they_are() {
    let vae = shared("fixtures/vae/sd/diffusers/diffusion_pytorch_model.safetensors");
    names(&load_err(&vae, false), &vae, &["no UNet", "VAE weights"]);
    let vae = shared("fixtures/vae/sd/original.safetensors");
    names(&load_err(&vae, false), &vae, &["no UNet", "VAE weights"]);
    let clip = shared("fixtures/clip/clip_l/model.safetensors");
    names(
        &load_err(&clip, false),
        &clip,
        &["no UNet", "CLIP text encoder", "token_embedding"],
    );
}

#[test]
fn missing_extra_and_misshapen_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // Diffusers layout.
    let mut t = all_tensors(&diffusers("sd15"));
    let gone = "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2.bias";
    let kept = t.remove(gone).unwrap();
    let path = dir.path().join("missing.safetensors");
    write(&path, &t);
    names(&load_err(&path, false), &path, &["missing tensor", gone]);
    t.insert(gone.into(), kept);
    t.insert(
        "down_blocks.0.extra.weight".into(),
        Tensor::f32(vec![2], vec![0.0; 2]),
    );
    let path = dir.path().join("extra.safetensors");
    write(&path, &t);
    names(
        &load_err(&path, false),
        &path,
        &["\"down_blocks.0.extra.weight\""],
    );

    // Original layout: messages use the file's names.
    let mut t = all_tensors(&original("sdxl"));
    t.insert(
        "model.diffusion_model.input_blocks.1.7.weight".into(),
        Tensor::f32(vec![2], vec![0.0; 2]),
    );
    // Outside the UNet's prefix: ignored.
    t.insert(
        "conditioner.embedders.0.x.weight".into(),
        Tensor::f32(vec![1], vec![0.0]),
    );
    let path = dir.path().join("sdxl_extra.safetensors");
    write(&path, &t);
    names(
        &load_err(&path, false),
        &path,
        &["\"model.diffusion_model.input_blocks.1.7.weight\""],
    );
    t.remove("model.diffusion_model.input_blocks.1.7.weight");
    // A second attention in a level where the others have none.
    let k = "model.diffusion_model.output_blocks.8.0.out_layers.3.weight";
    let v = t.remove(k).unwrap();
    t.insert(
        k.into(),
        Tensor::f32(vec![32, 32, 1, 3], vec![0.0; 32 * 32 * 3]),
    );
    let path = dir.path().join("sdxl_shape.safetensors");
    write(&path, &t);
    names(
        &load_err(&path, false),
        &path,
        &[k, "[32, 32, 1, 3]", "[32, 32, 3, 3]"],
    );
    t.insert(k.into(), v);
    let k = "model.diffusion_model.middle_block.1.transformer_blocks.1.attn2.to_v.weight";
    t.remove(k).unwrap();
    let path = dir.path().join("sdxl_missing.safetensors");
    write(&path, &t);
    names(
        &load_err(&path, false),
        &path,
        &[
            "mid_block.attentions.0.transformer_blocks.1.attn2.to_v.weight",
            "original",
        ],
    );
}

#[test]
fn widths_that_fit_no_family_are_refused_naming_the_key() {
    let base = shapes_of(&diffusers("sdxl"));
    // 32 + 4 x 256: four time ids.
    let mut s = base.clone();
    s.insert(
        "add_embedding.linear_1.weight".into(),
        vec![128, 32 + 4 * 256],
    );
    let e = config::detect(&s).unwrap_err();
    assert!(
        e.contains("add_embedding.linear_1.weight") && e.contains("1056"),
        "{e}"
    );
    // The refiner's five.
    s.insert(
        "add_embedding.linear_1.weight".into(),
        vec![128, 32 + 5 * 256],
    );
    assert_eq!(config::detect(&s).unwrap().added.unwrap().time_ids, 5);
    // One cross-attention narrower than the others.
    let mut s = base.clone();
    let k = "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight";
    s.insert(k.into(), vec![64, 96]);
    let e = config::detect(&s).unwrap_err();
    assert!(e.contains(k) && e.contains("[64, 96]"), "{e}");
    // Inconsistent widths.
    let mut s = base;
    s.insert(
        "down_blocks.1.resnets.1.conv1.weight".into(),
        vec![64, 48, 3, 3],
    );
    let e = config::detect(&s).unwrap_err();
    assert!(e.contains("down_blocks.1.resnets.1.conv1.weight"), "{e}");
    // The added embedding beside conv projections.
    let mut s = shapes_of(&diffusers("sd15"));
    s.insert("add_embedding.linear_1.weight".into(), vec![128, 2816]);
    let e = config::detect(&s).unwrap_err();
    assert!(
        e.contains("add_embedding.linear_1.weight") && e.contains("no family"),
        "{e}"
    );
}

#[test]
fn heads_that_fit_no_convention_ask_for_the_config() {
    // SD 2.x with 32-channel levels: 64 channels per head do not fit.
    let mut cfg = from_json("sd21");
    cfg.block_out_channels = vec![32, 32, 64, 64];
    let shapes = tensors::expected(&cfg).unwrap();
    let e = config::detect(&shapes).unwrap_err();
    assert!(
        e.contains("level 0") && e.contains("32 channels") && e.contains("config.json"),
        "{e}"
    );
    // A config.json's heads settle it.
    let mut sizes = config::detect(&tensors::expected(&from_json("sd21")).unwrap()).unwrap();
    sizes.block_out_channels = cfg.block_out_channels.clone();
    let json = serde_json::json!({"attention_head_dim": [2, 2, 4, 4]});
    config::apply_config(&mut sizes, &json).unwrap();
    assert_eq!(sizes.heads, [2, 2, 4, 4]);
    let e = config::apply_config(&mut sizes, &serde_json::json!({"num_attention_heads": 3}))
        .unwrap_err();
    assert!(e.contains("3 heads") && e.contains("level 0"), "{e}");
}

/// A folder holding the sd15 fixture's weights and `config`.
fn with_config(dir: &Path, config: &Value) -> PathBuf {
    let path = dir.join("diffusion_pytorch_model.safetensors");
    if !path.exists() {
        std::fs::copy(diffusers("sd15"), &path).unwrap();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    path
}

#[test]
fn a_config_json_that_disagrees_is_named_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let json = config_json("sd15");
    let config = dir.path().join("config.json");
    let set = |field: &str, v: Value| {
        let mut j = json.clone();
        j[field] = v;
        with_config(dir.path(), &j)
    };
    for (field, value, said) in [
        (
            "block_out_channels",
            serde_json::json!([32, 32, 64, 128]),
            "[32, 32, 64, 64]",
        ),
        ("layers_per_block", serde_json::json!(3), "2"),
        ("in_channels", serde_json::json!(9), "4"),
        ("cross_attention_dim", serde_json::json!(768), "64"),
        ("use_linear_projection", serde_json::json!(true), "false"),
        ("transformer_layers_per_block", serde_json::json!(2), "1"),
        (
            "down_block_types",
            serde_json::json!([
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
                "DownBlock2D"
            ]),
            "CrossAttnDownBlock2D",
        ),
        (
            "addition_embed_type",
            serde_json::json!("text_time"),
            "add_embedding",
        ),
        (
            "class_embed_type",
            serde_json::json!("timestep"),
            "timestep",
        ),
        (
            "time_embedding_type",
            serde_json::json!("fourier"),
            "positional",
        ),
        (
            "resnet_time_scale_shift",
            serde_json::json!("scale_shift"),
            "default",
        ),
        ("attention_type", serde_json::json!("gated"), "default"),
        (
            "mid_block_type",
            serde_json::json!("UNetMidBlock2DSimpleCrossAttn"),
            "UNetMidBlock2DCrossAttn",
        ),
        (
            "addition_embed_type",
            serde_json::json!("text_image"),
            "text_time",
        ),
        ("dual_cross_attention", serde_json::json!(true), "false"),
        (
            "only_cross_attention",
            serde_json::json!([false, true, false, false]),
            "false",
        ),
        ("center_input_sample", serde_json::json!(true), "false"),
        ("conv_in_kernel", serde_json::json!(5), "3"),
        ("norm_num_groups", serde_json::json!(24), "24"),
        ("attention_head_dim", serde_json::json!(3), "3 heads"),
    ] {
        let path = set(field, value.clone());
        let e = load_err(&path, false);
        names(&e, &config, &[field, said]);
        // Scalars are quoted whole; lists by the element at fault or whole.
        let quoted = value.is_array() || field == "attention_head_dim";
        assert!(quoted || e.contains(&value.to_string()), "{e}");
    }
    // What only config.json tells is taken.
    let mut j = json.clone();
    j["upcast_attention"] = Value::Bool(true);
    j["num_attention_heads"] = serde_json::json!([4, 4, 8, 8]);
    j["norm_eps"] = serde_json::json!(1e-6);
    let (_, cfg) = load(&with_config(dir.path(), &j), false).unwrap();
    assert!(cfg.upcast_attention);
    assert_eq!(cfg.heads, [4, 4, 8, 8]);
    assert_eq!(cfg.norm_eps, 1e-6);
    // Another model's config.json (a VAE's in the same folder) is passed over.
    let vae = shared("fixtures/vae/sd/diffusers/config.json");
    let vae: Value = serde_json::from_slice(&std::fs::read(vae).unwrap()).unwrap();
    let (_, cfg) = load(&with_config(dir.path(), &vae), false).unwrap();
    assert_eq!(cfg, from_json("sd15"));
}

#[test]
fn shards_and_ckpt_files_load_like_the_one_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    // SDXL's diffusers file in three shards with their index, and its config.json beside.
    let src = diffusers("sdxl");
    let bytes = std::fs::read(&src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut all = st.tensors();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut map = serde_json::Map::new();
    for (i, chunk) in all.chunks(all.len().div_ceil(3)).enumerate() {
        let shard = format!("diffusion_pytorch_model-{:05}-of-00003.safetensors", i + 1);
        for (k, _) in chunk {
            map.insert(k.clone(), shard.clone().into());
        }
        safetensors::serialize_to_file(chunk.to_vec(), None, &dir.path().join(&shard)).unwrap();
    }
    let index = dir
        .path()
        .join("diffusion_pytorch_model.safetensors.index.json");
    let json = serde_json::json!({"metadata": {"total_size": bytes.len()}, "weight_map": map});
    std::fs::write(&index, json.to_string()).unwrap();
    std::fs::copy(
        src.with_file_name("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let (sharded, cfg) = load(&index, false).unwrap();
    let (whole, want) = load(&src, false).unwrap();
    assert_eq!(cfg, want);
    assert_eq!(sharded.tensors, whole.tensors);

    // SD 1.5's single file as a training checkpoint (.ckpt, f32), in a folder of its own (the
    // SDXL config.json above would be checked against it, and disagree).
    let own = tempfile::tempdir().unwrap();
    let ckpt = own.path().join("sd15.ckpt");
    common::write_ckpt(&ckpt, &all_tensors(&original("sd15")));
    let (from_ckpt, cfg) = load(&ckpt, false).unwrap();
    let (whole, want) = load(&diffusers("sd15"), false).unwrap();
    assert_eq!(cfg, want);
    assert_eq!(from_ckpt.tensors.len(), whole.tensors.len());
    for (k, t) in &whole.tensors {
        assert_eq!(from_ckpt.tensors[k].to_f32(), t.to_f32(), "{k}");
    }
}

/// Every file of a built package, by path inside it.
fn package_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                files.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    files
}

#[test]
fn single_file_and_diffusers_layouts_build_the_same_package() {
    use mlc::compiler::{build, BuildOptions, Sizes};
    let dir = tempfile::tempdir().unwrap();
    for (m, model) in [("sd15", "sd-unet"), ("sdxl", "sdxl-unet")] {
        // Named like the diffusers file, since the package records the weights' file stem.
        let single = dir
            .path()
            .join(m)
            .join("diffusion_pytorch_model.safetensors");
        std::fs::create_dir_all(single.parent().unwrap()).unwrap();
        std::fs::copy(original(m), &single).unwrap();
        let built = |weights: &Path, out: &str| {
            let mut o = BuildOptions::new(model, weights);
            o.sizes = Sizes::Latent(vec![[16, 16]]);
            o.output = Some(dir.path().join(out));
            package_files(&build(&o).unwrap().package)
        };
        let a = built(&single, &format!("{m}_single.mlpackage"));
        let b = built(&diffusers(m), &format!("{m}_diffusers.mlpackage"));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{m}"
        );
        for (k, v) in &a {
            assert!(v == &b[k], "{m}: {} differs", k.display());
        }
    }
}

/// On the command line: another model's weights, a UNet of the other family, a UNet option a
/// VAE does not take and several odd sizes are each one line naming the file or flag, and
/// nothing is written.
#[test]
fn the_command_line_refuses_bad_unet_input_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let unet = |f: &str| {
        shared(&format!(
            "fixtures/unet/{f}/diffusers/diffusion_pytorch_model.safetensors"
        ))
        .display()
        .to_string()
    };
    let vae = shared("fixtures/vae/sd/diffusers/diffusion_pytorch_model.safetensors")
        .display()
        .to_string();
    let cases: [(&[&str], &str); 5] = [
        (&["build", "sd-unet", "--weights", &vae], "VAE"),
        (
            &["build", "sd-unet", "--weights", &unet("sdxl")],
            "sdxl-unet",
        ),
        (
            &["build", "sdxl-unet", "--weights", &unet("sd15")],
            "sd-unet",
        ),
        (
            &["build", "sd-vae", "--weights", &vae, "--batch", "1"],
            "--batch",
        ),
        (
            &[
                "build",
                "sd-unet",
                "--weights",
                &unet("sd15"),
                "--latent-size",
                "12x20,16",
            ],
            "multiple of 8",
        ),
    ];
    for (args, needle) in cases {
        let mut all = args.to_vec();
        all.extend(["-o", "out.mlpackage"]);
        let o = common::cli::mlc(&all, dir);
        let err = common::cli::stderr(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "{args:?} left files"
        );
    }
}
