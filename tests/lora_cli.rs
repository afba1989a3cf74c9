//! `--lora` on the command line: what `--json` and the package's metadata say about a LoRA
//! (file, content hash, weight, weights changed, keys skipped for the other models), that the
//! weight reaches the weights hash, that a LoRA and its negative cancel (fp32), and the
//! refusals of the flag itself (`FILE:abc`, a model that takes no LoRA).

mod common;

use common::cli::{mlc, stderr};
use common::*;
use std::collections::BTreeMap;
use std::path::Path;

fn sd15() -> String {
    shared("fixtures/unet/sd15/diffusers/diffusion_pytorch_model.safetensors")
        .display()
        .to_string()
}

fn kohya_sd15() -> String {
    shared("fixtures/unet/lora/kohya_sd15.safetensors")
        .display()
        .to_string()
}

/// `mlc build sd-unet` of the sd15 fixture at 16x16 with `extra`, into `dir/name`: its `--json`
/// report and stderr.
fn build_json(dir: &Path, name: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let pkg = dir.join(name);
    let weights = sd15();
    let mut args = vec![
        "build",
        "sd-unet",
        "--weights",
        &weights,
        "--latent-size",
        "16",
        "--json",
        "-o",
        pkg.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = mlc(&args, dir);
    let err = stderr(&o);
    assert!(o.status.success(), "{extra:?}: {err}");
    let json = serde_json::from_slice(&o.stdout).unwrap();
    (json, err)
}

/// The LoRAs the package's metadata records (`mlc.loras`), as `mlc inspect` prints them.
fn metadata_loras(dir: &Path, pkg: &str) -> serde_json::Value {
    let o = mlc(&["inspect", pkg], dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("// metadata mlc.loras = "))
        .unwrap_or_else(|| panic!("no mlc.loras in {pkg}"));
    serde_json::from_str(line).unwrap()
}

/// The package's user-defined metadata, through the library's reader.
fn user_defined(pkg: &Path) -> BTreeMap<String, String> {
    let model = mlc::package::read_package(pkg).unwrap().model;
    model.description.unwrap().metadata.unwrap().user_defined
}

fn weights_sha(j: &serde_json::Value) -> &str {
    j["weights_sha256"].as_str().unwrap()
}

#[test]
fn json_and_metadata_report_the_lora() {
    let out = out_dir("lora_cli");
    let lora = kohya_sd15();
    let at06 = format!("{lora}:0.6");
    let (j06, err) = build_json(&out, "w06.mlpackage", &["--lora", &at06]);
    let sha = mlc::weights::open(Path::new(&lora))
        .unwrap()
        .read_all()
        .unwrap()
        .content_sha256()
        .unwrap();
    let l = &j06["loras"];
    assert_eq!(l.as_array().map(Vec::len), Some(1), "{l}");
    let l = &l[0];
    assert_eq!(l["file"], lora.as_str());
    assert_eq!(l["sha256"], sha.as_str());
    assert!((l["weight"].as_f64().unwrap() - 0.6).abs() < 1e-6, "{l}");
    assert_eq!(l["weights_changed"], 207);
    assert_eq!(l["skipped_keys"], serde_json::json!({ "text_encoder": 54 }));
    assert!(
        err.contains("207 weights changed") && err.contains("54 for text_encoder"),
        "{err}"
    );
    let meta = metadata_loras(&out, "w06.mlpackage");
    assert_eq!(meta.as_array().map(Vec::len), Some(1), "{meta}");
    assert_eq!(meta[0]["file"], "kohya_sd15");
    assert_eq!(meta[0]["sha256"], sha.as_str());
    assert!((meta[0]["weight"].as_f64().unwrap() - 0.6).abs() < 1e-6);
    // The same through the library's reader.
    let meta_lib = user_defined(&out.join("w06.mlpackage"));
    let from_lib: serde_json::Value = serde_json::from_str(&meta_lib["mlc.loras"]).unwrap();
    assert_eq!(from_lib, meta);

    // The weight reaches the weights: 1.0 (the default), 0.6 and none hash apart.
    let (j10, _) = build_json(&out, "w10.mlpackage", &["--lora", &lora]);
    let (base, _) = build_json(&out, "base.mlpackage", &[]);
    assert!((j10["loras"][0]["weight"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    let hashes = [weights_sha(&j06), weights_sha(&j10), weights_sha(&base)];
    assert!(
        hashes[0] != hashes[1] && hashes[0] != hashes[2] && hashes[1] != hashes[2],
        "{hashes:?}"
    );
    assert_eq!(base["loras"], serde_json::json!([]));
    assert!(!user_defined(&out.join("base.mlpackage")).contains_key("mlc.loras"));
}

/// `--lora a --lora a:-1` adds and takes away the same delta: at fp32 the package evaluates as
/// the base model's does (fp16 would round the twice-patched weights, so compare there).
#[test]
fn a_lora_and_its_negative_cancel() {
    let out = out_dir("lora_cli_cancel");
    let lora = kohya_sd15();
    let neg = format!("{lora}:-1");
    let fp32 = ["--precision", "fp32"];
    let (j, _) = build_json(
        &out,
        "cancel.mlpackage",
        &[&fp32[..], &["--lora", &lora, "--lora", &neg]].concat(),
    );
    assert_eq!(j["loras"].as_array().map(Vec::len), Some(2));
    assert!((j["loras"][1]["weight"].as_f64().unwrap() + 1.0).abs() < 1e-9);
    build_json(&out, "base.mlpackage", &fp32);
    build_json(
        &out,
        "plus.mlpackage",
        &[&fp32[..], &["--lora", &lora]].concat(),
    );
    let mut inputs =
        mlc::run::read_safetensors(&shared("fixtures/unet/sd15/b2_16x16.safetensors")).unwrap();
    inputs.remove("noise_pred");
    inputs.remove("encoder_hidden_states_ane");
    let run = |name: &str| {
        let r = mlc::run::run_path(&out.join(name), &inputs).unwrap();
        r["noise_pred"].clone()
    };
    let (cancel, base, plus) = (
        run("cancel.mlpackage"),
        run("base.mlpackage"),
        run("plus.mlpackage"),
    );
    let e = relative_error(&cancel, &base);
    let moved = relative_error(&plus, &base);
    eprintln!("a + a:-1 against the base: {e:.2e}; a alone against the base: {moved:.2e}");
    assert!(e <= 1e-5, "{e:.2e}");
    assert!(moved > 1e-3, "{moved:.2e}");
}

/// The flag's own refusals: a weight that is not a number reads as part of the file name (a
/// Windows path may hold colons), so the error names the whole argument; models whose weights
/// no LoRA names do not take the flag. One line, no package.
#[test]
fn the_flag_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let lora = kohya_sd15();
    let bad = format!("{lora}:abc");
    let pkg = dir.path().join("m.mlpackage");
    let vae = shared("fixtures/vae/sd/diffusers/diffusion_pytorch_model.safetensors");
    let taesd = shared("weights/taef2_decoder.safetensors");
    let cases: [(Vec<String>, &[&str]); 4] = [
        (
            vec![
                "sd-unet".into(),
                "--weights".into(),
                sd15(),
                "--latent-size".into(),
                "16".into(),
                "--lora".into(),
                bad.clone(),
            ],
            &["kohya_sd15.safetensors:abc", "not found"],
        ),
        (
            vec![
                "sd-unet".into(),
                "--weights".into(),
                sd15(),
                "--latent-size".into(),
                "16".into(),
                "--lora".into(),
                format!("{lora}:inf"),
            ],
            &["--lora", "finite"],
        ),
        (
            vec![
                "sd-vae".into(),
                "--weights".into(),
                path(&vae),
                "--lora".into(),
                lora.clone(),
            ],
            &["sd-vae", "does not take --lora"],
        ),
        (
            vec![
                "taesd".into(),
                "--weights".into(),
                path(&taesd),
                "--lora".into(),
                lora.clone(),
            ],
            &["taesd", "does not take --lora"],
        ),
    ];
    for (args, needles) in cases {
        let mut all = vec!["build".to_string()];
        all.extend(args);
        all.extend(["-o".to_string(), path(&pkg)]);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let o = mlc(&all, dir.path());
        let err = stderr(&o);
        assert!(!o.status.success(), "{all:?}");
        // clap adds its "For more information, try '--help'." to a flag it refuses.
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
            .collect();
        assert_eq!(lines.len(), 1, "{err}");
        for n in needles {
            assert!(lines[0].contains(n), "{n:?} not in {err}");
        }
        let left: BTreeMap<_, _> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| (e.unwrap().file_name(), ()))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
