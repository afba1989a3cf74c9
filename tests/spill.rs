//! Large weights are kept as handles (into the weight file, or into a temporary spill file for
//! `.pth` tensors) until the package writer reads them back, a LoRA fused into the weight file's
//! tensors as they are read back: packages are the same byte for byte whether every tensor is
//! spilled or none is (`MLC_SPILL_MIN_BYTES`).

mod common;

use common::files::files;
use common::shared;
use std::path::Path;
use std::process::Command;

/// The package's files but the manifest (whose identifiers are fresh per build), built with
/// tensors of at least `min` bytes spilled; and the build's --json report.
fn build(args: &[&str], min: &str, out: &Path) -> (Vec<(String, Vec<u8>)>, serde_json::Value) {
    let o = Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        .args(["--json", "-o"])
        .arg(out)
        .env("MLC_SPILL_MIN_BYTES", min)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report = serde_json::from_slice(&o.stdout).unwrap();
    let kept = files(out)
        .into_iter()
        .filter(|(rel, _)| !rel.ends_with("Manifest.json"))
        .collect();
    (kept, report)
}

#[test]
fn spilled_and_in_memory_weights_give_the_same_package() {
    let dir = tempfile::tempdir().unwrap();
    let sd15 = shared("fixtures/unet/sd15/original.safetensors");
    let lora = shared("fixtures/unet/lora/kohya_sd15.safetensors");
    let lora = format!("{}:0.6", lora.display());
    // A .ckpt has no tensor to point into: everything large goes to the spill file.
    let ckpt = dir.path().join("sd15.ckpt");
    let tensors = mlc::weights::Weights::load(&sd15).unwrap().tensors;
    common::write_ckpt(&ckpt, &tensors);
    let (sd15, ckpt) = (sd15.to_str().unwrap(), ckpt.to_str().unwrap());
    let lora: &[&str] = &["--lora", &lora];
    // (weights, flags) of `mlc build sd-unet --latent-size 16`.
    let cases: [(&str, &[&[&str]]); 7] = [
        (sd15, &[]),
        (sd15, &[&["--layout", "ane", "--precision", "fp32"]]),
        (sd15, &[lora]),
        (ckpt, &[]),
        // Fused as read back: f16 weights widened for fp32, and read back by palettization.
        (sd15, &[lora, &["--precision", "fp32", "--layout", "ane"]]),
        (sd15, &[lora, &["--palettize", "6"]]),
        // Patched as read from a .ckpt, then spilled.
        (ckpt, &[lora]),
    ];
    for (i, (weights, flags)) in cases.into_iter().enumerate() {
        let mut args = vec![
            "build",
            "sd-unet",
            "--weights",
            weights,
            "--latent-size",
            "16",
        ];
        args.extend(flags.concat());
        let args = &args[..];
        let all = build(args, "0", &dir.path().join(format!("all{i}.mlpackage")));
        let none = build(
            args,
            "18446744073709551615",
            &dir.path().join(format!("none{i}.mlpackage")),
        );
        assert!(all
            .0
            .iter()
            .any(|(rel, b)| rel.ends_with("weight.bin") && b.len() > 100_000));
        assert!(all.0 == none.0, "{args:?}: the packages differ");
        assert_eq!(
            all.1["weights_sha256"], none.1["weights_sha256"],
            "{args:?}"
        );
    }
}

#[test]
fn spilled_weights_are_checked_as_in_memory_ones() {
    // A NaN in a large tensor is refused naming it, spilled or not.
    let dir = tempfile::tempdir().unwrap();
    let sd15 = shared("fixtures/unet/sd15/original.safetensors");
    let mut tensors = mlc::weights::Weights::load(&sd15).unwrap().tensors;
    let key = "model.diffusion_model.input_blocks.1.1.proj_in.weight";
    let t = tensors.get_mut(key).expect("the fixture has it");
    let mut v = t.to_f32();
    v[3] = f32::NAN;
    *t = mlc::tensor::Tensor::f32(t.shape.clone(), v);
    let bad = dir.path().join("nan.safetensors");
    common::write_safetensors(&bad, &tensors);
    let mut errors = Vec::new();
    for min in ["0", "18446744073709551615"] {
        let out = dir.path().join(format!("nan{min}.mlpackage"));
        let o = Command::new(env!("CARGO_BIN_EXE_mlc"))
            .args(["build", "sd-unet", "--weights"])
            .arg(&bad)
            .arg("-o")
            .arg(&out)
            .env("MLC_SPILL_MIN_BYTES", min)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && !out.exists(), "{min}: {err}");
        // Named as the model reads it (diffusers' name of the LDM key).
        let named = "down_blocks.0.attentions.0.proj_in.weight";
        assert!(err.contains(named) && err.contains("1 NaN"), "{min}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        errors.push(err.into_owned());
    }
    assert_eq!(errors[0], errors[1]);
}

/// The stderr of `mlc build sd-unet --latent-size 16` of `weights` with `lora`, tensors of at
/// least `min` bytes spilled (in `tmpdir`, if given), which must fail.
fn refused_with_lora(
    weights: &Path,
    lora: &Path,
    out: &Path,
    min: &str,
    tmpdir: Option<&Path>,
) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mlc"));
    c.args(["build", "sd-unet", "--latent-size", "16", "--weights"])
        .arg(weights)
        .arg("--lora")
        .arg(lora)
        .arg("-o")
        .arg(out)
        .env("MLC_SPILL_MIN_BYTES", min);
    if let Some(t) = tmpdir {
        c.env("TMPDIR", t);
    }
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{min}: {err}");
    err
}

#[test]
fn an_unusable_temporary_folder_is_one_line_naming_it() {
    // A .ckpt's tensors must go to a spill file; TMPDIR points at a file.
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let sd15 = shared("fixtures/unet/sd15/original.safetensors");
    let ckpt = dir.path().join("sd15.ckpt");
    common::write_ckpt(&ckpt, &mlc::weights::Weights::load(&sd15).unwrap().tensors);
    let lora = shared("fixtures/unet/lora/kohya_sd15.safetensors");
    let out = dir.path().join("x.mlpackage");
    let err = refused_with_lora(&ckpt, &lora, &out, "0", Some(&not_a_dir));
    assert!(!out.exists(), "{err}");
    assert!(
        err.contains("temporary file") && err.contains("TMPDIR"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_fused_value_fp16_cannot_hold_is_refused_spilled_or_not() {
    // Fused as the package is written (every tensor a handle) or as read: refused by the
    // LoRA's file and the weight's key, one line, nothing written.
    let dir = tempfile::tempdir().unwrap();
    let sd15 = shared("fixtures/unet/sd15/original.safetensors");
    let m = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let big = |shape: Vec<usize>| {
        let n = shape.iter().product();
        mlc::tensor::Tensor::f32(shape, vec![200.0; n])
    };
    let tensors = std::collections::BTreeMap::from([
        (format!("{m}.lora_down.weight"), big(vec![4, 32])),
        (format!("{m}.lora_up.weight"), big(vec![32, 4])),
    ]);
    let lora = dir.path().join("huge.safetensors");
    common::write_safetensors(&lora, &tensors);
    let key = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
    for min in ["0", "18446744073709551615"] {
        let out = dir.path().join(format!("huge{min}.mlpackage"));
        let err = refused_with_lora(&sd15, &lora, &out, min, None);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "huge.safetensors")
            .collect();
        assert!(left.is_empty(), "{min}: left {left:?}: {err}");
        for needle in ["huge.safetensors", key, "65504", "fp32 precision"] {
            assert!(err.contains(needle), "{min}: {needle:?} is not in: {err}");
        }
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}
