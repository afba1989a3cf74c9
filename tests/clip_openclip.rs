//! CLIP text encoders from single files in OpenCLIP's own layout: the fixtures of
//! ../shared/fixtures/clip rewritten as SDXL (`conditioner.embedders.1.model.`) and SD 2.x
//! (`cond_stage_model.model.`) checkpoints store their OpenCLIP towers (q, k and v stacked in
//! `in_proj_weight`, `text_projection` transposed, `ln_1`, `mlp.c_fc`, ...) give the same
//! package, byte for byte, as the transformers-layout weights diffusers' conversion makes of them;
//! SD 2.x's without its last block, with `ln_final` after the penultimate one. Bad towers are
//! one-line errors naming the file and the key.

mod common;

use common::*;
use mlc::compiler::{build, BuildOptions, Precision};
use mlc::kernels::Array;
use mlc::models::ModelOptions;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type Tensors = BTreeMap<String, Array>;

const SDXL: &str = "conditioner.embedders.1.model.";
const SD2: &str = "cond_stage_model.model.";

fn fixture(name: &str) -> PathBuf {
    shared(&format!("fixtures/clip/{name}"))
}

/// A fixture's tensors under the builder's names (without `text_model.`).
fn transformers(name: &str) -> Tensors {
    let t = mlc::run::read_safetensors(&fixture(name).join("model.safetensors")).unwrap();
    t.into_iter()
        .map(|(k, v)| (k.strip_prefix("text_model.").unwrap_or(&k).to_string(), v))
        .collect()
}

fn stack(parts: [&Array; 3]) -> Array {
    let mut shape = parts[0].shape.clone();
    shape[0] *= 3;
    let data = parts.iter().flat_map(|a| a.data.iter().copied()).collect();
    Array::new(shape, data)
}

fn transposed(a: &Array) -> Array {
    let (rows, cols) = (a.shape[0], a.shape[1]);
    let data = (0..cols)
        .flat_map(|c| (0..rows).map(move |r| (r, c)))
        .map(|(r, c)| a.data[r * cols + c])
        .collect();
    Array::new(vec![cols, rows], data)
}

/// `t` (builder names, `layers` layers) in OpenCLIP's layout under `root`, with the tensors a
/// real tower has that the text model does not read.
fn openclip(t: &Tensors, root: &str, layers: usize) -> Tensors {
    let mut out = Tensors::new();
    let mut put = |k: String, v: Array| {
        out.insert(format!("{root}{k}"), v);
    };
    put(
        "token_embedding.weight".into(),
        t["embeddings.token_embedding.weight"].clone(),
    );
    put(
        "positional_embedding".into(),
        t["embeddings.position_embedding.weight"].clone(),
    );
    for n in 0..layers {
        let l = |k: &str| &t[&format!("encoder.layers.{n}.{k}")];
        let b = format!("transformer.resblocks.{n}.");
        for kind in ["weight", "bias"] {
            let qkv = ["q", "k", "v"].map(|p| l(&format!("self_attn.{p}_proj.{kind}")));
            put(format!("{b}attn.in_proj_{kind}"), stack(qkv));
            for (open, model) in [
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ] {
                put(
                    format!("{b}{open}.{kind}"),
                    l(&format!("{model}.{kind}")).clone(),
                );
            }
        }
    }
    put(
        "ln_final.weight".into(),
        t["final_layer_norm.weight"].clone(),
    );
    put("ln_final.bias".into(), t["final_layer_norm.bias"].clone());
    if let Some(p) = t.get("text_projection.weight") {
        put("text_projection".into(), transposed(p));
    }
    put("logit_scale".into(), Array::new(vec![], vec![4.6]));
    put(
        "attn_mask".into(),
        Array::new(vec![77, 77], vec![0.0; 77 * 77]),
    );
    out
}

/// Writes `tensors` as `file` in a folder of its own beside the config.json `config` (the
/// fixtures' heads are no model's default), returning the file. A package's metadata names the
/// weights' file stem: files compared with a fixture's `model.safetensors` are called the same.
fn write(dir: &Path, file: &str, tensors: &Tensors, config: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    let path = dir.join(file);
    mlc::run::write_safetensors(tensors, &path).unwrap();
    path
}

fn config(name: &str) -> String {
    std::fs::read_to_string(fixture(name).join("config.json")).unwrap()
}

fn options(model: &str, weights: &Path, out: PathBuf, hidden_layer: Option<usize>) -> BuildOptions {
    let mut o = BuildOptions::new(model, weights);
    o.precision = Precision::Fp16;
    o.io_precision = Some(Precision::Fp32);
    o.model_options = ModelOptions {
        hidden_layer,
        ..Default::default()
    };
    o.output = Some(out);
    o
}

/// Every file of the package `model` builds from `weights`.
fn package(
    model: &str,
    weights: &Path,
    out: PathBuf,
    hidden_layer: Option<usize>,
) -> Vec<(String, Vec<u8>)> {
    let o = options(model, weights, out, hidden_layer);
    let pkg = build(&o)
        .unwrap_or_else(|e| panic!("{}: {e}", weights.display()))
        .package;
    files(&pkg)
}

fn assert_same_package(what: &str, a: &[(String, Vec<u8>)], b: &[(String, Vec<u8>)]) {
    let names = |p: &[(String, Vec<u8>)]| p.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b), "{what}");
    assert!(
        a.iter().any(|(n, _)| n.ends_with("weight.bin")),
        "{what}: {:?}",
        names(a)
    );
    for ((name, x), (_, y)) in a.iter().zip(b) {
        assert!(x == y, "{what}: {name} differs");
    }
}

/// SDXL's file holds both encoders: CLIP-L in the transformers layout, bigG in OpenCLIP's. Each
/// model takes its own, and gets the package its transformers save gives.
#[test]
fn sdxl_checkpoint_gives_both_encoders_byte_for_byte() {
    let out = out_dir("clip_openclip_sdxl");
    let bigg = transformers("bigg");
    let mut file = openclip(&bigg, SDXL, 3);
    for (k, v) in transformers("clip_l") {
        file.insert(
            format!("conditioner.embedders.0.transformer.text_model.{k}"),
            v,
        );
    }
    file.insert(
        "model.diffusion_model.out.2.bias".into(),
        Array::new(vec![2], vec![1.0, 2.0]),
    );
    // Every key of the bigG tower was written; the q/k/v of a layer really are stacked.
    assert_eq!(
        file.keys().filter(|k| k.starts_with(SDXL)).count(),
        3 * 12 + 7
    );
    let stacked = &file[&format!("{SDXL}transformer.resblocks.2.attn.in_proj_weight")];
    assert_eq!(stacked.shape, [192, 64]);
    for (model, fixture_name, hidden_layer) in
        [("clip-bigg", "bigg", Some(2)), ("clip-l", "clip_l", None)]
    {
        let folder = out.join(format!("{model}_weights"));
        let weights = write(&folder, "model.safetensors", &file, &config(fixture_name));
        let single = package(
            model,
            &weights,
            out.join(format!("{model}_single.mlpackage")),
            hidden_layer,
        );
        let reference = package(
            model,
            &fixture(fixture_name).join("model.safetensors"),
            out.join(format!("{model}_transformers.mlpackage")),
            hidden_layer,
        );
        assert_same_package(model, &single, &reference);
        // Every tensor kept as a handle into the file (a third of a stacked q/k/v one too):
        // the same package.
        let handles = out.join(format!("{model}_handles.mlpackage"));
        let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_mlc"));
        cli.args(["build", model, "--io-precision", "fp32", "--weights"])
            .arg(&weights)
            .arg("-o")
            .arg(&handles)
            .env("MLC_SPILL_MIN_BYTES", "0");
        if let Some(n) = hidden_layer {
            cli.args(["--hidden-layer", &n.to_string()]);
        }
        let o = cli.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_same_package(&format!("{model}, handles"), &files(&handles), &single);
    }
    // The package's numbers are the fixture's (so the equal package is the right one).
    let weights = out.join("clip-bigg_weights/model.safetensors");
    let pkg = build(&options(
        "clip-bigg",
        &weights,
        out.join("bigg.mlpackage"),
        Some(2),
    ))
    .unwrap()
    .package;
    let mut case = mlc::run::read_safetensors(&fixture("bigg").join("long.safetensors")).unwrap();
    let ids = BTreeMap::from([("input_ids".to_string(), case.remove("input_ids").unwrap())]);
    let got = mlc::run::run_path(&pkg, &ids).unwrap();
    assert_within(
        "text_embeds",
        &got["text_embeds"],
        &case["text_embeds"],
        5e-3,
    );
    assert_within(
        "hidden_state",
        &got["hidden_state"],
        &case["penultimate_hidden_state"],
        5e-3,
    );
}

/// Layer norm over the last axis (eps 1e-5) of `x`.
fn layer_norm(x: &Array, w: &Array, b: &Array) -> Array {
    let d = w.data.len();
    let mut out = Vec::with_capacity(x.data.len());
    for row in x.data.chunks(d) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + 1e-5).sqrt();
        for (i, &v) in row.iter().enumerate() {
            out.push(((v as f64 - mean) * inv * w.data[i] as f64 + b.data[i] as f64) as f32);
        }
    }
    Array::new(x.shape.clone(), out)
}

/// SD 2.x's tower without its last block: the same package as the transformers weights with
/// that layer left out (what diffusers' conversion gives), and `last_hidden_state` is `ln_final`
/// of the full tower's penultimate block.
#[test]
fn sd2_checkpoint_leaves_out_the_last_block() {
    let out = out_dir("clip_openclip_sd2");
    let bigg = transformers("bigg");
    let mut file = openclip(&bigg, SD2, 3);
    file.insert(
        "first_stage_model.decoder.conv_in.bias".into(),
        Array::new(vec![2], vec![1.0, 2.0]),
    );
    let two_layers = config("bigg").replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 2");
    assert_ne!(two_layers, config("bigg"));
    let weights = write(&out.join("sd2"), "model.safetensors", &file, &two_layers);
    let truncated: Tensors = bigg
        .iter()
        .filter(|(k, _)| !k.starts_with("encoder.layers.2."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(truncated.len(), bigg.len() - 16);
    let reference = write(
        &out.join("diffusers"),
        "model.safetensors",
        &truncated,
        &two_layers,
    );
    for hidden_layer in [None, Some(1)] {
        let tag = format!("{hidden_layer:?}");
        let single = package(
            "clip-h",
            &weights,
            out.join(format!("sd2_{tag}.mlpackage")),
            hidden_layer,
        );
        let diffusers = package(
            "clip-h",
            &reference,
            out.join(format!("diffusers_{tag}.mlpackage")),
            hidden_layer,
        );
        assert_same_package(&tag, &single, &diffusers);
    }
    // Against the fixture's full three-layer model: the last hidden state is the final norm of
    // its penultimate state, and the two-layer model's own last layer is that state.
    let pkg = build(&options(
        "clip-h",
        &weights,
        out.join("sd2.mlpackage"),
        Some(1),
    ))
    .unwrap()
    .package;
    for case in ["short", "full"] {
        let mut f =
            mlc::run::read_safetensors(&fixture("bigg").join(format!("{case}.safetensors")))
                .unwrap();
        let ids = BTreeMap::from([("input_ids".to_string(), f.remove("input_ids").unwrap())]);
        let got = mlc::run::run_path(&pkg, &ids).unwrap();
        let penultimate = &f["penultimate_hidden_state"];
        assert_within(
            &format!("{case} hidden_state"),
            &got["hidden_state"],
            penultimate,
            5e-3,
        );
        let normed = layer_norm(
            penultimate,
            &bigg["final_layer_norm.weight"],
            &bigg["final_layer_norm.bias"],
        );
        assert_within(
            &format!("{case} last"),
            &got["last_hidden_state"],
            &normed,
            5e-3,
        );
        let e = relative_error(&got["last_hidden_state"], &f["last_hidden_state"]);
        assert!(
            e > 0.05,
            "{case}: the three-layer output ({e}) is not SD 2.x's"
        );
    }
}

#[test]
fn bad_openclip_towers_are_one_line_errors() {
    let out = out_dir("clip_openclip_bad");
    let bigg = transformers("bigg");
    let target = out.join("bad.mlpackage");
    let refused = |tag: &str, model: &str, file: &Tensors| {
        let weights = write(
            &out.join(tag),
            &format!("{tag}.safetensors"),
            file,
            &config("bigg"),
        );
        let e = one_line_error(&options(model, &weights, target.clone(), None));
        assert!(e.contains(&format!("{tag}.safetensors")), "{e}");
        e
    };
    // q, k and v not stacked three deep.
    let mut file = openclip(&bigg, SDXL, 3);
    let key = format!("{SDXL}transformer.resblocks.1.attn.in_proj_weight");
    let two = file[&key].data[..128 * 64].to_vec();
    file.insert(key.clone(), Array::new(vec![128, 64], two));
    let e = refused("in_proj", "clip-bigg", &file);
    assert!(e.contains(&key) && e.contains("[192, 64]"), "{e}");
    // No final layer norm.
    let mut file = openclip(&bigg, SD2, 3);
    file.remove(&format!("{SD2}ln_final.weight"));
    let e = refused("no_ln_final", "clip-h", &file);
    assert!(e.contains(&format!("\"{SD2}ln_final.weight\"")), "{e}");
    // A tensor the renaming does not know.
    let mut file = openclip(&bigg, SDXL, 3);
    file.insert(
        format!("{SDXL}transformer.resblocks.0.attn.in_proj_scale"),
        Array::new(vec![1], vec![1.0]),
    );
    let e = refused("unknown", "clip-bigg", &file);
    assert!(e.contains("resblocks.0.attn.in_proj_scale"), "{e}");
    // An OpenCLIP tower with its projection is not clip-l's: the key is named as the file has it.
    let e = refused("projected", "clip-l", &openclip(&bigg, SDXL, 3));
    assert!(
        e.contains(&format!("\"{SDXL}text_projection\"")) && e.contains("clip-bigg"),
        "{e}"
    );
    // Two towers of one kind: the projection does not tell them apart.
    let mut file = openclip(&bigg, SDXL, 3);
    for (k, v) in &bigg {
        let own = if k == "text_projection.weight" {
            ""
        } else {
            "text_model."
        };
        file.insert(
            format!("conditioner.embedders.0.transformer.{own}{k}"),
            v.clone(),
        );
    }
    let e = refused("two", "clip-bigg", &file);
    assert!(e.contains("several") && e.contains(SDXL), "{e}");
}

/// A LoRA for SDXL's second text encoder (`lora_te2_`) on q, k, v and fc1 patches the OpenCLIP
/// file's stacked in_proj exactly as it patches the transformers save: the same package, and
/// not the package without it.
#[test]
fn a_lora_patches_openclip_q_k_v_like_the_transformers_layout() {
    let out = out_dir("clip_openclip_lora");
    let bigg = transformers("bigg");
    let folder = out.join("weights");
    let weights = write(
        &folder,
        "model.safetensors",
        &openclip(&bigg, SDXL, 3),
        &config("bigg"),
    );
    let mut lora = BTreeMap::new();
    let mut seed = 7;
    for layer in [0, 2] {
        for module in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "mlp.fc1",
        ] {
            let w = &bigg[&format!("encoder.layers.{layer}.{module}.weight")];
            let (rows, cols) = (w.shape[0], w.shape[1]);
            let name = format!(
                "lora_te2_text_model_encoder_layers_{layer}_{}",
                module.replace('.', "_")
            );
            seed += 1;
            let down = mlc::tensor::Tensor::f32(vec![2, cols], random(2 * cols, seed, 0.3));
            let up = mlc::tensor::Tensor::f32(vec![rows, 2], random(rows * 2, seed + 100, 0.3));
            lora.insert(format!("{name}.lora_down.weight"), down);
            lora.insert(format!("{name}.lora_up.weight"), up);
        }
    }
    let lora_path = out.join("te2.safetensors");
    write_safetensors(&lora_path, &lora);
    let with = |weights: &Path, tag: &str, lora: bool| {
        let mut o = options(
            "clip-bigg",
            weights,
            out.join(format!("{tag}.mlpackage")),
            Some(2),
        );
        if lora {
            o.loras = vec![mlc::lora::LoraSpec {
                path: lora_path.clone(),
                weight: 0.7,
            }];
        }
        files(&build(&o).unwrap_or_else(|e| panic!("{tag}: {e}")).package)
    };
    let single = with(&weights, "openclip_lora", true);
    let reference = with(
        &fixture("bigg").join("model.safetensors"),
        "transformers_lora",
        true,
    );
    assert_same_package("clip-bigg with a LoRA", &single, &reference);
    let plain = with(&weights, "openclip_plain", false);
    let bin = |p: &[(String, Vec<u8>)]| {
        p.iter()
            .find(|(n, _)| n.ends_with("weight.bin"))
            .unwrap()
            .1
            .clone()
    };
    assert!(bin(&plain) != bin(&single), "the LoRA changed no weight");
}
