//! `mlc pipeline` end to end on the tiny SD 1.x checkpoint of ../shared/fixtures/pipeline (its
//! README says what it is): the Resources folder from the single file and from the diffusers
//! folder, every file, every feature as Apple's Swift package reads it, and every compiled
//! model's numbers against the fp32 PyTorch reference.

mod common;

use common::{out_dir, relative_error, shared};
use mlc::kernels::Array;
use mlc::proto::specification as spec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    shared("fixtures/pipeline").join(rel)
}

fn mlc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        .output()
        .expect("run mlc")
}

/// `mlc pipeline sd --weights WEIGHTS --image-size 64 -o OUT [extra]`, which must succeed.
fn pipeline(weights: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "pipeline",
        "sd",
        "--weights",
        weights.to_str().unwrap(),
        "--image-size",
        "64",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let o = mlc(&args);
    assert!(
        o.status.success(),
        "mlc {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The features of a compiled model: name → (shape, array type).
fn features(fs: &[spec::FeatureDescription]) -> BTreeMap<String, (Vec<i64>, i32)> {
    fs.iter()
        .map(|f| {
            let Some(spec::feature_type::Type::MultiArrayType(a)) =
                f.r#type.as_ref().and_then(|t| t.r#type.as_ref())
            else {
                panic!("{} is not a multi-array", f.name)
            };
            (f.name.clone(), (a.shape.clone(), a.data_type))
        })
        .collect()
}

const F32: i32 = spec::array_feature_type::ArrayDataType::Float32 as i32;

/// (name, shape) of each input or output.
type Features<'a> = &'a [(&'a str, &'a [i64])];

/// Each model's inputs and outputs as the README's table lists them, Float32 throughout (mlc
/// gives every part fp32 I/O).
fn check_interfaces(dir: &Path) {
    let want: [(&str, Features, Features); 4] = [
        (
            "TextEncoder",
            &[("input_ids", &[1, 77])],
            &[
                ("last_hidden_state", &[1, 77, 64]),
                ("pooled_outputs", &[1, 64]),
            ],
        ),
        (
            "Unet",
            &[
                ("sample", &[2, 4, 8, 8]),
                ("timestep", &[2]),
                ("encoder_hidden_states", &[2, 64, 1, 77]),
            ],
            &[("noise_pred", &[2, 4, 8, 8])],
        ),
        (
            "VAEDecoder",
            &[("z", &[1, 4, 8, 8])],
            &[("image", &[1, 3, 64, 64])],
        ),
        (
            "VAEEncoder",
            &[("x", &[1, 3, 64, 64])],
            &[("latent", &[1, 8, 8, 8])],
        ),
    ];
    for (name, inputs, outputs) in want {
        let bundle = dir.join(format!("{name}.mlmodelc"));
        let model = mlc::mlmodelc::read_bundle(&bundle).unwrap();
        let d = model.description.as_ref().unwrap();
        for (have, want) in [(features(&d.input), inputs), (features(&d.output), outputs)] {
            let want: BTreeMap<String, (Vec<i64>, i32)> = want
                .iter()
                .map(|(n, s)| (n.to_string(), (s.to_vec(), F32)))
                .collect();
            assert_eq!(have, want, "{name}");
        }
    }
}

fn run(dir: &Path, name: &str, inputs: &[(&str, &Array)]) -> BTreeMap<String, Array> {
    let pkg = mlc::mlmodelc::read_as_package(&dir.join(format!("{name}.mlmodelc"))).unwrap();
    let inputs = inputs
        .iter()
        .map(|(n, a)| (n.to_string(), (*a).clone()))
        .collect();
    mlc::run::run(&pkg, &mlc::run::default_function(&pkg), &inputs).unwrap()
}

fn within(what: &str, got: &Array, want: &Array, tol: f32) -> f32 {
    let e = relative_error(got, want);
    eprintln!("{what}: max error {e:.2e} of the reference's largest magnitude");
    assert!(e <= tol, "{what}: {e} > {tol}");
    e
}

/// Every part's numbers against the reference: fp16 within 5e-3 of the reference's largest
/// magnitude, the UNet within 1e-2 (the README's bounds).
fn check_numbers(dir: &Path) {
    let r = mlc::run::read_safetensors(&fixture("reference.safetensors")).unwrap();
    for (ids, state, pooled) in [
        ("prompt_ids", "last_hidden_state", "pooled_output"),
        (
            "negative_ids",
            "negative_last_hidden_state",
            "negative_pooled_output",
        ),
    ] {
        // The ids go in as Float32, as the Swift code feeds them.
        let out = run(dir, "TextEncoder", &[("input_ids", &r[ids])]);
        within(state, &out["last_hidden_state"], &r[state], 5e-3);
        within(pooled, &out["pooled_outputs"], &r[pooled], 5e-3);
    }
    for (t, noise) in [("timestep", "noise_pred"), ("timestep_b", "noise_pred_b")] {
        let out = run(
            dir,
            "Unet",
            &[
                ("sample", &r["sample"]),
                ("timestep", &r[t]),
                ("encoder_hidden_states", &r["encoder_hidden_states_ane"]),
            ],
        );
        within(noise, &out["noise_pred"], &r[noise], 1e-2);
    }
    let out = run(dir, "VAEDecoder", &[("z", &r["z"])]);
    within("image", &out["image"], &r["image"], 5e-3);
    let out = run(dir, "VAEEncoder", &[("x", &r["x"])]);
    within("latent (mean ‖ logvar)", &out["latent"], &r["latent"], 5e-3);
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn single_file_and_diffusers_folder_give_the_swift_resources() {
    let out = out_dir("pipeline_sd15");
    let single = out.join("single");
    pipeline(
        &fixture("sd15_tiny.safetensors"),
        &single,
        &["--keep-packages"],
    );
    assert_eq!(
        names(&single),
        [
            "TextEncoder.mlmodelc",
            "TextEncoder.mlpackage",
            "Unet.mlmodelc",
            "Unet.mlpackage",
            "VAEDecoder.mlmodelc",
            "VAEDecoder.mlpackage",
            "VAEEncoder.mlmodelc",
            "VAEEncoder.mlpackage",
            "merges.txt",
            "mlc.json",
            "vocab.json",
        ]
    );
    let folder = out.join("folder");
    pipeline(&fixture("diffusers"), &folder, &[]);
    assert!(!folder.join("Unet.mlpackage").exists());
    for dir in [&single, &folder] {
        check_interfaces(dir);
        check_numbers(dir);
        // The Swift package's own rules (files, names, types, sizes across models).
        mlc::pipeline::swift::check_folder(dir, mlc::pipeline::swift::Pipeline::Sd).unwrap();
        let vocab = std::fs::read_to_string(dir.join("vocab.json")).unwrap();
        let merges = std::fs::read_to_string(dir.join("merges.txt")).unwrap();
        let ids = mlc::pipeline::tokenizer::encode(&vocab, &merges, "a photo of a cat").unwrap();
        assert_eq!(ids, [49406, 320, 1125, 539, 320, 2368, 49407]);
    }
    // Copied from the folder's tokenizer/, generated for the single file: the same bytes.
    for f in ["vocab.json", "merges.txt"] {
        let want = std::fs::read(fixture("diffusers/tokenizer").join(f)).unwrap();
        assert_eq!(std::fs::read(single.join(f)).unwrap(), want, "{f}");
        assert_eq!(std::fs::read(folder.join(f)).unwrap(), want, "{f}");
    }
    // The same tensors, so the same weights hash per part, whatever the container.
    let manifest = |d: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("mlc.json")).unwrap()).unwrap()
    };
    let (a, b) = (manifest(&single), manifest(&folder));
    assert_eq!(a["family"], "SD 1.x");
    assert_eq!(a["checkpoint"]["sha256"], b["checkpoint"]["sha256"]);
    for part in ["TextEncoder", "Unet", "VAEDecoder", "VAEEncoder"] {
        let sha = &a["parts"][part]["weights_sha256"];
        assert!(sha.as_str().is_some_and(|s| s.len() == 64), "{part}");
        assert_eq!(sha, &b["parts"][part]["weights_sha256"], "{part}");
    }
    common::oracle(&single);
}

#[test]
fn bad_checkpoints_and_outputs_are_one_line_errors_leaving_nothing() {
    let out = out_dir("pipeline_errors");
    let fail = |args: &[&str]| {
        let o = mlc(args);
        assert!(!o.status.success(), "{args:?}");
        let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    };
    let res = out.join("Resources");
    let r = res.to_str().unwrap();
    let single = fixture("sd15_tiny.safetensors");
    let s = single.to_str().unwrap();
    // `mlc pipeline FAMILY --weights WEIGHTS -o Resources [extra]`, which must fail.
    let run = |family: &str, weights: &str, extra: &[&str]| {
        let mut args = vec!["pipeline", family, "--weights", weights, "-o", r];
        args.extend(extra);
        fail(&args)
    };
    // The wrong family for the command.
    let e = run("sdxl", s, &[]);
    assert!(e.contains("SD 1.x") && e.contains("mlc pipeline sd"), "{e}");
    // A file that is a single part (the VAE alone) names the missing text encoder prefixes.
    let vae = shared("fixtures/vae/sd/original.safetensors");
    let e = run("sd", vae.to_str().unwrap(), &[]);
    assert!(e.contains("cond_stage_model.transformer."), "{e}");
    // A folder that is not mlc's is never replaced.
    std::fs::create_dir(&res).unwrap();
    std::fs::write(res.join("notes.txt"), "mine").unwrap();
    let e = run("sd", s, &["--image-size", "64"]);
    assert!(e.contains("mlc.json"), "{e}");
    assert_eq!(names(&res), ["notes.txt"]);
    std::fs::remove_dir_all(&res).unwrap();
    // Sizes: a side that is not a multiple of 8.
    let e = run("sd", s, &["--image-size", "60"]);
    assert!(e.contains("--image-size 60x60"), "{e}");
    let e = run("sd", s, &["--image-size", "131072"]);
    assert!(e.contains("--image-size 131072x131072"), "{e}");
    // A failing part (here: a LoRA whose keys fit no model of the pipeline) leaves nothing.
    let lora = out.join("te2.safetensors");
    let mut t = BTreeMap::new();
    t.insert(
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".to_string(),
        mlc::tensor::Tensor::f32(vec![1, 64], vec![0.0; 64]),
    );
    common::write_safetensors(&lora, &t);
    let l = format!("{}:0.5", lora.display());
    let e = run("sd", s, &["--image-size", "64", "--lora", &l]);
    assert!(
        e.contains("te2.safetensors") && e.contains("text_encoder_2"),
        "{e}"
    );
    assert_eq!(names(&out), ["te2.safetensors"]);
}

/// A folder mlc wrote is replaced in place, and a LoRA goes to the parts it has keys for.
#[test]
fn a_lora_reaches_each_part_it_has_keys_for() {
    let out = out_dir("pipeline_lora");
    let res = out.join("Resources");
    let single = fixture("sd15_tiny.safetensors");
    // A text-encoder-only LoRA: the UNet is built without it (no error), the text encoder
    // with it.
    let lora = out.join("te.safetensors");
    let mut t = BTreeMap::new();
    let key = "lora_te_text_model_encoder_layers_0_mlp_fc1";
    let down: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
    let up: Vec<f32> = (0..256).map(|i| (i as f32 * 0.11).cos() * 0.1).collect();
    t.insert(
        format!("{key}.lora_down.weight"),
        mlc::tensor::Tensor::f32(vec![1, 64], down),
    );
    t.insert(
        format!("{key}.lora_up.weight"),
        mlc::tensor::Tensor::f32(vec![256, 1], up),
    );
    common::write_safetensors(&lora, &t);
    pipeline(&single, &res, &[]);
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(res.join("mlc.json")).unwrap()).unwrap();
    pipeline(&single, &res, &["--lora", lora.to_str().unwrap()]);
    let with: serde_json::Value =
        serde_json::from_slice(&std::fs::read(res.join("mlc.json")).unwrap()).unwrap();
    let sha = |m: &serde_json::Value, p: &str| m["parts"][p]["bundle_sha256"].clone();
    assert_ne!(sha(&base, "TextEncoder"), sha(&with, "TextEncoder"));
    assert_eq!(sha(&base, "Unet"), sha(&with, "Unet"));
    assert_eq!(with["parts"]["TextEncoder"]["loras"][0]["file"], "te");
    assert_eq!(with["parts"]["Unet"]["loras"], serde_json::json!([]));
    // Nothing but the folder (no hidden siblings left by the replacement).
    assert_eq!(names(&out), ["Resources", "te.safetensors"]);
}

/// `--chunk-unet`: chunk 1 then chunk 2 computes what the whole UNet computes, each chunk holds
/// about half the weights, and compression reaches both.
#[test]
fn unet_chunks_chain_to_the_whole_unet() {
    let out = out_dir("pipeline_chunks");
    let single = fixture("sd15_tiny.safetensors");
    let (whole, chunked) = (out.join("whole"), out.join("chunked"));
    pipeline(&single, &whole, &["--palettize", "4"]);
    pipeline(
        &single,
        &chunked,
        &["--palettize", "4", "--chunk-unet", "--keep-packages"],
    );
    assert!(!chunked.join("Unet.mlmodelc").exists());
    let r = mlc::run::read_safetensors(&fixture("reference.safetensors")).unwrap();
    let inputs = [
        ("sample", &r["sample"]),
        ("timestep", &r["timestep_b"]),
        ("encoder_hidden_states", &r["encoder_hidden_states_ane"]),
    ];
    let want = run(&whole, "Unet", &inputs)["noise_pred"].clone();
    let first = run(&chunked, "UnetChunk1", &inputs);
    // The Swift code feeds chunk 2 the model's inputs and chunk 1's outputs, by name.
    let pkg2 = mlc::mlmodelc::read_as_package(&chunked.join("UnetChunk2.mlmodelc")).unwrap();
    let f = mlc::run::default_function(&pkg2);
    let mut feed: BTreeMap<String, Array> = BTreeMap::new();
    for name in mlc::run::input_names(&pkg2, &f) {
        let v = match first.get(&name) {
            Some(v) => v.clone(),
            None => inputs.iter().find(|(n, _)| *n == name).unwrap().1.clone(),
        };
        feed.insert(name, v);
    }
    assert!(feed.len() > 3, "{:?}", feed.keys());
    let got = mlc::run::run(&pkg2, &f, &feed).unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), ["noise_pred"]);
    // The same ops and weights; crossing values are fp16 arrays, rounded as the device rounds
    // them, where the whole model's evaluation keeps them wider.
    within("chunked vs whole", &got["noise_pred"], &want, 2e-3);
    let bytes = |name: &str| {
        std::fs::metadata(chunked.join(name).join("weights/weight.bin"))
            .unwrap()
            .len() as f64
    };
    let (a, b) = (bytes("UnetChunk1.mlmodelc"), bytes("UnetChunk2.mlmodelc"));
    let share = a / (a + b);
    assert!((0.35..=0.65).contains(&share), "chunk 1 holds {share:.3}");
    for chunk in ["UnetChunk1.mlmodelc", "UnetChunk2.mlmodelc"] {
        let mil = std::fs::read_to_string(chunked.join(chunk).join("model.mil")).unwrap();
        assert!(
            mil.contains("constexpr_lut_to_dense"),
            "{chunk} is not palettized"
        );
    }
    common::oracle(&chunked);
}
