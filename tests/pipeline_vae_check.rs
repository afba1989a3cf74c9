//! `mlc pipeline`'s fp16 check of a VAE built in fp16 (src/pipeline/vae_check.rs), on a tiny
//! SDXL diffusers folder put together from the fixtures (the SDXL UNet fixture, the CLIP-L and
//! bigG fixtures, the pipeline fixture's VAE and tokenizer): `--vae-precision fp16` passes and
//! records the largest activation; the same VAE with one decoder resnet scaled up, so that its
//! activations pass fp16's range, is refused in one line, exit code 1, nothing left behind.

mod common;

use common::shared;
use std::path::{Path, PathBuf};
use std::process::Command;

fn mlc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        .output()
        .expect("run mlc")
}

/// A tiny SDXL diffusers folder in `dir` (its parts linked from the fixtures), with `vae` as
/// its `vae/`.
fn tiny_sdxl(dir: &Path, vae: &Path) -> PathBuf {
    let root = dir.join("sdxl_tiny");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1"}"#,
    )
    .unwrap();
    // The UNet's cross-attention is 128 = CLIP-L's 64 + bigG's 64, its text_embeds bigG's
    // projection, 32.
    for (name, target) in [
        ("unet", shared("fixtures/unet/sdxl/diffusers")),
        ("text_encoder", shared("fixtures/clip/clip_l")),
        ("text_encoder_2", shared("fixtures/clip/bigg")),
        ("tokenizer", shared("fixtures/pipeline/diffusers/tokenizer")),
        ("vae", vae.to_path_buf()),
    ] {
        std::os::unix::fs::symlink(std::fs::canonicalize(target).unwrap(), root.join(name))
            .unwrap();
    }
    root
}

/// The pipeline fixture's VAE with the decoder's first up-block resnet's last conv scaled by
/// `factor` (its weights stay far inside fp16's range; its output, and the next GroupNorm's
/// squares, do not).
fn scaled_vae(dir: &Path, factor: f32) -> PathBuf {
    let from = shared("fixtures/pipeline/diffusers/vae");
    let vae = dir.join("vae_scaled");
    std::fs::create_dir_all(&vae).unwrap();
    std::fs::copy(from.join("config.json"), vae.join("config.json")).unwrap();
    let mut t =
        mlc::run::read_safetensors(&from.join("diffusion_pytorch_model.safetensors")).unwrap();
    for k in [
        "decoder.up_blocks.0.resnets.0.conv2.weight",
        "decoder.up_blocks.0.resnets.0.conv2.bias",
    ] {
        let a = t.get_mut(k).unwrap_or_else(|| panic!("no {k}"));
        a.data.iter_mut().for_each(|v| *v *= factor);
        assert!(a.data.iter().all(|v| v.abs() < 65504.0));
    }
    mlc::run::write_safetensors(&t, &vae.join("diffusion_pytorch_model.safetensors")).unwrap();
    vae
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `mlc pipeline sdxl --image-size 64 -o OUT --json [extra]`.
fn pipeline(weights: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "pipeline",
        "sdxl",
        "--weights",
        weights.to_str().unwrap(),
        "--image-size",
        "64",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend(extra);
    mlc(&args)
}

/// `--vae-precision fp16` on a VAE that fits fp16: both VAE parts checked, their largest
/// activation (under the refusal limit) in mlc.json and --json, one stderr line; SDXL's
/// default fp32 VAE is not checked.
#[test]
fn sdxl_vae_in_fp16_passes_the_check_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_sdxl(dir.path(), &shared("fixtures/pipeline/diffusers/vae"));
    let out = dir.path().join("Resources");
    let o = pipeline(&weights, &out, &["--vae-precision", "fp16"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let manifest = json(&out.join("mlc.json"));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for part in ["VAEDecoder", "VAEEncoder"] {
        let m = &manifest["parts"][part]["fp16_activations"];
        let largest = m["largest"]
            .as_f64()
            .unwrap_or_else(|| panic!("{part}: {m}"));
        assert!(largest > 0.0 && largest < 65504.0 / 2.0, "{part}: {m}");
        assert!(m["at"].as_str().is_some_and(|a| !a.is_empty()), "{m}");
        let r = report["parts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == part)
            .unwrap();
        assert_eq!(r["fp16_activations"]["largest"], m["largest"], "{part}");
        assert!(r["fp16_activations"]["seconds"].as_f64().unwrap() > 0.0);
        assert!(stderr.contains(&format!("{part} ")), "{stderr}");
    }
    assert_eq!(
        manifest["parts"]["VAEDecoder"]["fp16_activations"]["probe_shape"],
        serde_json::json!([1, 4, 4, 4])
    );
    assert!(manifest["parts"]["Unet"].get("fp16_activations").is_none());
    assert_eq!(
        stderr.lines().filter(|l| l.contains("fp16 check")).count(),
        1,
        "{stderr}"
    );

    // SDXL's default: the VAE in fp32, nothing to check.
    let fp32 = dir.path().join("Fp32");
    let o = pipeline(&weights, &fp32, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest = json(&fp32.join("mlc.json"));
    assert_eq!(manifest["options"]["vae_precision"], "fp32");
    assert!(manifest["parts"]["VAEDecoder"]
        .get("fp16_activations")
        .is_none());
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A decoder whose activations pass fp16's range is refused: one line naming the flag, the
/// part, the op and the magnitude, and what to do; exit code 1; no folder, no temporary. The
/// same checkpoint builds with the VAE in fp32.
#[test]
fn sdxl_vae_that_overflows_fp16_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_sdxl(dir.path(), &scaled_vae(dir.path(), 1000.0));
    let parent = dir.path().join("out");
    std::fs::create_dir(&parent).unwrap();
    let out = parent.join("Resources");
    let o = pipeline(&weights, &out, &["--vae-precision", "fp16"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let line = stderr.trim_end();
    for want in [
        "error: VAEDecoder: --vae-precision fp16: activation decoder_up_blocks_0_resnets_",
        " on a test latent, past fp16's largest value 65504",
        "drop --vae-precision fp16",
    ] {
        assert!(line.contains(want), "{want:?} not in {line}");
    }
    // The magnitude, a number past fp16's range (or inf).
    let magnitude = line
        .split(" reaches ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap();
    assert!(
        magnitude == "inf" || magnitude.parse::<f64>().unwrap() > 65504.0,
        "{line}"
    );
    assert!(o.stdout.is_empty());
    let left: Vec<_> = std::fs::read_dir(&parent).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // In fp32 (SDXL's default) the same weights build.
    let o = pipeline(&weights, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("VAEDecoder.mlmodelc").is_dir());
}

/// SD 1.x's default fp16 VAE: the decoder is checked (the encoder only when fp16 is asked
/// for), and refused with advice to build in fp32 when it overflows.
#[test]
fn sd_default_fp16_decoder_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = shared("fixtures/pipeline/diffusers");
    // The SD 1.x folder with the scaled VAE.
    let sd = dir.path().join("sd_tiny");
    std::fs::create_dir(&sd).unwrap();
    std::fs::copy(
        fixture.join("model_index.json"),
        sd.join("model_index.json"),
    )
    .unwrap();
    for name in ["unet", "text_encoder", "tokenizer", "scheduler"] {
        std::os::unix::fs::symlink(fixture.join(name), sd.join(name)).unwrap();
    }
    let run = |vae: &Path, out: &Path| {
        let link = sd.join("vae");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(std::fs::canonicalize(vae).unwrap(), &link).unwrap();
        mlc(&[
            "pipeline",
            "sd",
            "--weights",
            sd.to_str().unwrap(),
            "--image-size",
            "64",
            "-o",
            out.to_str().unwrap(),
            "--json",
        ])
    };
    let out = dir.path().join("Resources");
    let o = run(&fixture.join("vae"), &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest = json(&out.join("mlc.json"));
    assert_eq!(manifest["options"]["vae_precision"], "fp16");
    assert!(manifest["parts"]["VAEDecoder"]["fp16_activations"]["largest"].is_number());
    assert!(manifest["parts"]["VAEEncoder"]
        .get("fp16_activations")
        .is_none());

    let bad = dir.path().join("Bad");
    let o = run(&scaled_vae(dir.path(), 1000.0), &bad);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: VAEDecoder: fp16 (the default): activation ")
            && stderr
                .trim_end()
                .ends_with("build the VAE in fp32 with --vae-precision fp32")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!bad.exists());
}
