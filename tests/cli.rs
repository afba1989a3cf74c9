//! The real binary: successful runs, and bad input with a one-line cause and nothing left behind.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs a build that must fail; returns its error line and checks the directory stays empty.
fn fails(dir: &Path, args: &[&str]) -> String {
    let o = mlc(args, dir);
    let err = stderr(&o);
    assert!(!o.status.success(), "expected failure for {args:?}");
    // 1: mlc's own error, one line; 2: a usage error from clap.
    match o.status.code() {
        Some(1) => assert!(
            err.starts_with("error: ") && err.trim_end().lines().count() == 1,
            "{err}"
        ),
        Some(2) => assert!(
            err.starts_with("error: ") && err.contains("--help"),
            "{err}"
        ),
        other => panic!("exit code {other:?}: {err}"),
    }
    // Inputs the test wrote stay; nothing else may appear (no package, no temporary).
    let left: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.contains("mlpackage") || name.starts_with('.') || name.contains("tmp")
        })
        .collect();
    assert!(left.is_empty(), "{args:?} left {left:?} behind");
    err
}

#[test]
fn build_inspect_run_round_trip() {
    let dir = out_dir("cli_round_trip");
    let o = mlc(&taef2_build(&taef2_arg(), "32", &[]), &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let pkg = dir.join("taef2_decoder.mlpackage");
    assert!(pkg.join("Manifest.json").is_file());

    let o = mlc(&["inspect", "taef2_decoder.mlpackage"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "conv 41",
        "upsample_nearest_neighbor 3",
        "// input latent: multiarray float16 [1, 32, 32, 32]",
        "main[CoreML6](%latent: (1, 32, 32, 32, fp16)(Tensor))",
        "} -> (%image)",
        "weight.bin 2",
    ] {
        assert!(
            text.contains(needle),
            "inspect output lacks {needle:?}:\n{}",
            &text[..text.len().min(3000)]
        );
    }

    let fixture = shared("fixtures/taef2/seed0_32x32.safetensors");
    let o = mlc(
        &[
            "run",
            "taef2_decoder.mlpackage",
            "--input",
            &fixture.display().to_string(),
            "--output",
            "img.png",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(dir.join("img.png")).unwrap(),
    ));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    assert_eq!(
        (info.width, info.height, info.color_type),
        (256, 256, png::ColorType::Rgb)
    );
    oracle(&dir);
}

#[test]
fn bad_input_gives_one_line_cause_and_no_output() {
    let dir = out_dir("cli_errors");
    let w = taef2_arg();

    let e = fails(
        &dir,
        &["build", "flux2", "--weights", "missing.safetensors"],
    );
    assert!(e.contains("missing.safetensors"), "{e}");

    std::fs::write(dir.join("empty.safetensors"), b"").unwrap();
    let e = fails(&dir, &["build", "flux2", "--weights", "empty.safetensors"]);
    assert!(e.contains("empty.safetensors"), "{e}");

    let bytes = std::fs::read(taef2_weights()).unwrap();
    std::fs::write(dir.join("cut.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = fails(&dir, &["build", "flux2", "--weights", "cut.safetensors"]);
    assert!(e.contains("cut.safetensors"), "{e}");

    let mut garbled = bytes.clone();
    garbled[8..40].fill(b'#');
    std::fs::write(dir.join("garbled.safetensors"), &garbled).unwrap();
    let e = fails(
        &dir,
        &["build", "flux2", "--weights", "garbled.safetensors"],
    );
    assert!(e.contains("garbled.safetensors"), "{e}");

    let pth = std::fs::read(shared("weights/taef2_decoder.pth")).unwrap();
    std::fs::write(dir.join("cut.pth"), &pth[..pth.len() - 5000]).unwrap();
    let e = fails(&dir, &["build", "flux2", "--weights", "cut.pth"]);
    assert!(e.contains("cut.pth"), "{e}");

    // Right file, wrong model: a 32-channel TAEF2 decoder is not taesd3's 16-channel one.
    let e = fails(&dir, &["build", "taesd3", "--weights", &w]);
    assert!(
        e.contains("taef2 decoder (32 latent channels")
            && e.contains("not taesd3 (16 latent channels"),
        "{e}"
    );

    let e = fails(&dir, &["build", "sdxl-vea", "--weights", &w]);
    assert!(
        e.contains("unknown model \"sdxl-vea\"") && e.contains("flux2") && e.contains("sdxl-vae"),
        "{e}"
    );
    // A tiny autoencoder's weights given to a full VAE.
    let e = fails(&dir, &["build", "sdxl-vae", "--weights", &w]);
    assert!(
        e.contains("taef2_decoder.safetensors") && e.contains("not an AutoencoderKL"),
        "{e}"
    );

    // Wrong key set and wrong shapes, written with the safetensors crate.
    let mut t = mlc::run::read_safetensors(&taef2_weights()).unwrap();
    t.remove("4.conv.2.bias");
    write_st(&dir.join("nokey.safetensors"), &t);
    let e = fails(&dir, &["build", "flux2", "--weights", "nokey.safetensors"]);
    assert!(
        e.contains("nokey.safetensors") && e.contains("4.conv.2.bias"),
        "{e}"
    );

    let mut t = mlc::run::read_safetensors(&taef2_weights()).unwrap();
    t.insert(
        "8.conv.0.weight".into(),
        mlc::kernels::Array::new(vec![64, 32, 3, 3], vec![0.0; 64 * 32 * 9]),
    );
    write_st(&dir.join("shape.safetensors"), &t);
    let e = fails(&dir, &["build", "flux2", "--weights", "shape.safetensors"]);
    assert!(
        e.contains("shape.safetensors")
            && e.contains("8.conv.0.weight")
            && e.contains("[64, 32, 3, 3]")
            && e.contains("[64, 64, 3, 3]"),
        "{e}"
    );

    let mut t = mlc::run::read_safetensors(&taef2_weights()).unwrap();
    t.insert(
        "20.weight".into(),
        mlc::kernels::Array::new(vec![3], vec![0.0; 3]),
    );
    write_st(&dir.join("extra.safetensors"), &t);
    let e = fails(&dir, &["build", "flux2", "--weights", "extra.safetensors"]);
    assert!(
        e.contains("extra.safetensors") && e.contains("20.weight"),
        "{e}"
    );

    // Unwritable output: a path under a regular file.
    std::fs::write(dir.join("afile"), b"x").unwrap();
    let e = fails(
        &dir,
        &[
            "build",
            "flux2",
            "--weights",
            &w,
            "-o",
            "afile/out.mlpackage",
        ],
    );
    assert!(e.contains("afile/out.mlpackage"), "{e}");
    std::fs::remove_file(dir.join("afile")).unwrap();

    let e = fails(
        &dir,
        &["build", "flux2", "--weights", &w, "--image-size", "100"],
    );
    assert!(e.contains("multiple of 8"), "{e}");
    let e = fails(
        &dir,
        &["build", "flux2", "--weights", &w, "--target", "ios12"],
    );
    assert!(e.contains("ios12"), "{e}");
}

fn write_st(path: &Path, t: &std::collections::BTreeMap<String, mlc::kernels::Array>) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = t
        .iter()
        .map(|(k, a)| {
            (
                k.clone(),
                a.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                a.shape.clone(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, b, s)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn published_weights_come_from_the_hugging_face_cache() {
    let dir = out_dir("cli_hub");
    let home = dir.join("hf");
    // A cache laid out as huggingface_hub does it, holding (synthetic) taesd decoder weights.
    let repo = home.join("hub/models--madebyollin--taesd");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let t: std::collections::BTreeMap<String, mlc::kernels::Array> = synthetic_taesd(4, false)
        .tensors
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                mlc::kernels::Array::new(v.shape.clone(), v.to_f32()),
            )
        })
        .collect();
    write_st(
        &repo
            .join("snapshots")
            .join(commit)
            .join("taesd_decoder.safetensors"),
        &t,
    );

    let run = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_mlc"))
            .args(["build", model, "--latent-size", "8", "-o", "m.mlpackage"])
            .current_dir(&dir)
            .env("HF_HOME", &home)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HUGGINGFACE_HUB_CACHE")
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let o = run("taesd");
    assert!(o.status.success(), "{}", stderr(&o));
    let meta = mlc::package::read_package(&dir.join("m.mlpackage"))
        .unwrap()
        .model
        .description
        .unwrap()
        .metadata
        .unwrap();
    assert_eq!(meta.user_defined["mlc.weights.source"], "taesd_decoder");

    // Not cached, and offline: a clear error that says what to do, nothing written.
    std::fs::remove_dir_all(dir.join("m.mlpackage")).unwrap();
    let o = run("flux2");
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("HF_HUB_OFFLINE") && e.contains("--weights"),
        "{e}"
    );
    assert!(!dir.join("m.mlpackage").exists());
    // taesd3 has no single published decoder file.
    let o = run("taesd3");
    assert!(
        !o.status.success() && stderr(&o).contains("--weights"),
        "{}",
        stderr(&o)
    );
}

/// `build --compile` uses mlc's own compiler by default (no xcrun on PATH needed), and
/// `mlc compile` writes the same bundle beside the package or where -o says.
#[test]
fn compile_without_apple_tools() {
    let dir = out_dir("cli_compile");
    let w = taef2_arg();
    let o = mlc(
        &taef2_build(&w, "8", &["-o", "m.mlpackage", "--compile"]),
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let bundle = dir.join("m.mlmodelc");
    assert_eq!(
        tree(&bundle),
        [
            "analytics/coremldata.bin",
            "coremldata.bin",
            "metadata.json",
            "model.mil",
            "weights/weight.bin"
        ]
    );
    assert_eq!(
        std::fs::read(bundle.join("weights/weight.bin")).unwrap(),
        std::fs::read(dir.join("m.mlpackage/Data/com.apple.CoreML/weights/weight.bin")).unwrap()
    );
    let mil = std::fs::read_to_string(bundle.join("model.mil")).unwrap();
    assert!(mil.starts_with("program(1.0)\n"), "{mil}");
    assert!(mil.contains("func main<ios16>("), "{mil}");

    let o = mlc(
        &["compile", "m.mlpackage", "-o", "sub/other.mlmodelc"],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "compiled sub/other.mlmodelc"
    );
    for f in tree(&bundle) {
        assert_eq!(
            std::fs::read(bundle.join(&f)).unwrap(),
            std::fs::read(dir.join("sub/other.mlmodelc").join(&f)).unwrap(),
            "{f}: same input, same bytes"
        );
    }
    std::fs::remove_dir_all(&bundle).unwrap();
    let o = mlc(&["compile", "m.mlpackage"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(bundle.join("model.mil").is_file());

    // Read back, the bundle describes like its package: same interface, ops and weights.
    let from_pkg = mlc(&["inspect", "m.mlpackage"], &dir);
    let from_bundle = mlc(&["inspect", "m.mlmodelc"], &dir);
    assert!(from_bundle.status.success(), "{}", stderr(&from_bundle));
    let body = |o: &Output| -> Vec<String> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.starts_with("package ") && !l.starts_with("bundle "))
            .filter(|l| !l.starts_with("sizes: "))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(body(&from_bundle), body(&from_pkg));
    let first = |o: &Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .map(str::to_owned)
    };
    assert_eq!(first(&from_bundle).as_deref(), Some("bundle m.mlmodelc"));

    // Run on the bundle writes the same bytes as run on its package.
    let latent = mlc::tensor::Tensor::f32(vec![1, 32, 8, 8], random(32 * 64, 7, 2.0));
    write_safetensors(
        &dir.join("latent.safetensors"),
        &[("latent".to_string(), latent)].into_iter().collect(),
    );
    for (model, out) in [("m.mlpackage", "p.png"), ("m.mlmodelc", "c.png")] {
        let args = [
            "run",
            model,
            "--input",
            "latent.safetensors",
            "--output",
            out,
        ];
        let o = mlc(&args, &dir);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let png = std::fs::read(dir.join("p.png")).unwrap();
    assert!(png.len() > 1000, "a 64x64 image");
    assert_eq!(std::fs::read(dir.join("c.png")).unwrap(), png);
    // A bundle without its weights still describes, and running it names the missing file.
    std::fs::rename(bundle.join("weights"), dir.join("moved")).unwrap();
    let o = mlc(&["inspect", "m.mlmodelc"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(body(&o)[..3], body(&from_pkg)[..3]);
    std::fs::rename(dir.join("moved"), bundle.join("weights")).unwrap();
    std::fs::rename(bundle.join("weights"), dir.join("moved")).unwrap();
    let o = mlc(
        &[
            "run",
            "m.mlmodelc",
            "--input",
            "latent.safetensors",
            "--output",
            "x.png",
        ],
        &dir,
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.trim_end().lines().count() == 1, "{err}");
    assert!(
        err.contains("m.mlmodelc")
            && err.contains("weights/weight.bin")
            && err.contains("no weights"),
        "{err}"
    );
    assert!(!dir.join("x.png").exists());
    std::fs::rename(dir.join("moved"), bundle.join("weights")).unwrap();

    // --compile-to names a directory, as with Apple's coremlc.
    let o = mlc(
        &taef2_build(&w, "8", &["-o", "n.mlpackage", "--compile-to", "out/c"]),
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("out/c/n.mlmodelc/model.mil").is_file());
}

/// Enumerated shapes, a missing package and a NeuralNetwork model: one line each, nothing
/// written.
#[test]
fn compile_refusals_are_one_line() {
    let dir = out_dir("cli_compile_refusals");
    let w = taef2_arg();
    let o = mlc(&taef2_build(&w, "8,16", &["-o", "e.mlpackage"]), &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(dir.join("nn.mlmodel"), [0x08, 0x04, 0xa2, 0x1f, 0x00]).unwrap();
    for (args, needle) in [
        (&["compile", "e.mlpackage"][..], "--multifunction"),
        (&["compile", "missing.mlpackage"][..], "missing.mlpackage: "),
        (
            &["compile", "nn.mlmodel", "-o", "nn.mlmodelc"][..],
            "not an ML Program",
        ),
        // Refused before building: no package is written either.
        (
            &[
                "build",
                "flux2",
                "--weights",
                &w,
                "--latent-size",
                "8,16",
                "--compile",
                "-o",
                "f.mlpackage",
            ][..],
            "--compile: several sizes",
        ),
    ] {
        let before = tree(&dir);
        let o = mlc(args, &dir);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.trim_end().lines().count() == 1,
            "{err}"
        );
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(tree(&dir), before, "{args:?} wrote something");
        assert!(!dir.join("e.mlmodelc").exists() && !dir.join("nn.mlmodelc").exists());
    }
}

/// Writes int32 token ids [1, n] under `input_ids`.
fn write_ids(path: &Path, ids: &[i32]) {
    let bytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![1, ids.len()], &bytes)
            .unwrap();
    safetensors::serialize_to_file(vec![("input_ids".to_string(), view)], None, path).unwrap();
}

#[test]
fn text_encoder_build_and_run_with_ids_or_tokens() {
    let dir = out_dir("cli_clip");
    let fixture = shared("fixtures/clip/clip_l");
    let weights = fixture.join("model.safetensors").display().to_string();
    let o = mlc(
        &[
            "build",
            "clip-l",
            "--weights",
            &weights,
            "--hidden-layer",
            "penultimate",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // A text encoder's one part is its default: no --part needed, and the name says it.
    let pkg = dir.join("clip-l_encoder.mlpackage");
    assert!(pkg.is_dir());
    let pkg = pkg.display().to_string();
    let case = fixture.join("short.safetensors");
    let o = mlc(
        &[
            "run",
            &pkg,
            "--input",
            &case.display().to_string(),
            "--output",
            "ids.safetensors",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let from_file = mlc::run::read_safetensors(&dir.join("ids.safetensors")).unwrap();
    let reference = mlc::run::read_safetensors(&case).unwrap();
    let (got, want) = (&from_file["pooled"], &reference["pooler_output"]);
    let peak = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got
        .data
        .iter()
        .zip(&want.data)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 5e-3 * peak, "pooled off by {worst} (peak {peak})");
    assert_eq!(from_file["hidden_state"].shape, [1, 77, 64]);
    // The same prompt as --tokens, up to its EOS: clip-l's fixture pads with EOS as --tokens
    // does, so every output is the same.
    let ids = &reference["input_ids"].data;
    let eos = ids.iter().position(|&v| v == 49407.0).unwrap();
    let tokens: Vec<String> = ids[..=eos]
        .iter()
        .map(|v| (*v as i64).to_string())
        .collect();
    let o = mlc(
        &[
            "run",
            &pkg,
            "--tokens",
            &tokens.join(","),
            "--output",
            "tokens.safetensors",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let from_tokens = mlc::run::read_safetensors(&dir.join("tokens.safetensors")).unwrap();
    assert_eq!(from_tokens, from_file);

    // Bad input, in a directory of its own (the checks look for stray packages).
    let bad = out_dir("cli_clip_bad");
    let run_fails = |input: &[&str]| {
        let mut args = vec!["run", pkg.as_str()];
        args.extend_from_slice(input);
        args.extend(["--output", "o.safetensors"]);
        fails(&bad, &args)
    };
    write_ids(&bad.join("short.safetensors"), &[49406, 320, 49407]);
    let e = run_fails(&["--input", "short.safetensors"]);
    assert!(e.contains("input_ids") && e.contains("[1, 3]"), "{e}");
    let mut floats = std::collections::BTreeMap::new();
    floats.insert(
        "input_ids".to_string(),
        mlc::kernels::Array::new(vec![1, 77], vec![1.5; 77]),
    );
    write_st(&bad.join("floats.safetensors"), &floats);
    let e = run_fails(&["--input", "floats.safetensors"]);
    assert!(e.contains("input_ids") && e.contains("1.5"), "{e}");
    let many: Vec<String> = (0..78).map(|i| i.to_string()).collect();
    let e = run_fails(&["--tokens", &many.join(",")]);
    assert!(e.contains("78 ids") && e.contains("1 to 77"), "{e}");
    let e = run_fails(&["--tokens", "1,x"]);
    assert!(e.contains("\"x\""), "{e}");
    assert!(!bad.join("o.safetensors").exists());
    let vae = shared("fixtures/vae/sd/diffusers/diffusion_pytorch_model.safetensors");
    let e = fails(
        &bad,
        &["build", "clip-l", "--weights", &vae.display().to_string()],
    );
    assert!(e.contains("token_embedding"), "{e}");
    let e = fails(
        &bad,
        &[
            "build",
            "clip-l",
            "--weights",
            &weights,
            "--hidden-layer",
            "0",
        ],
    );
    assert!(e.contains("penultimate"), "{e}");
    let e = fails(
        &bad,
        &[
            "build",
            "sd-vae",
            "--weights",
            &vae.display().to_string(),
            "--hidden-layer",
            "2",
        ],
    );
    assert!(
        e.contains("sd-vae decoder does not take --hidden-layer"),
        "{e}"
    );
}

/// An option the model does not declare is refused before anything is read or written: `sd-vae
/// --layout ane` once built the standard package, byte for byte.
#[test]
fn undeclared_options_are_refused_naming_flag_and_model() {
    let dir = out_dir("cli_undeclared_options");
    let vae = shared("fixtures/vae/sd/diffusers/diffusion_pytorch_model.safetensors");
    let vae = vae.display().to_string();
    let clip = shared("fixtures/clip/clip_l/model.safetensors");
    let clip = clip.display().to_string();
    for (args, needle) in [
        (
            &["build", "sd-vae", "--weights", &vae, "--layout", "ane"][..],
            "sd-vae decoder does not take --layout",
        ),
        (
            &[
                "build",
                "sd-vae",
                "--part",
                "encoder",
                "--weights",
                &vae,
                "--input",
                "packed",
            ][..],
            "sd-vae encoder does not take --input packed",
        ),
        (
            &[
                "build",
                "clip-l",
                "--weights",
                &clip,
                "--input-layout",
                "nhwc",
            ][..],
            "clip-l encoder does not take --input-layout",
        ),
    ] {
        let e = fails(&dir, args);
        assert!(
            e.contains(needle) && e.contains("(it takes: "),
            "{args:?}: {e}"
        );
    }
    assert!(!dir.join("sd-vae_decoder.mlpackage").exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

/// `--quantize-activations int8` needs MIL's iOS17 `quantize` and measured ranges: below iOS17,
/// or without calibration, one line naming the flag (and the target), nothing written.
#[test]
fn int8_activation_refusals_are_one_line() {
    let dir = out_dir("cli_w8a8_refusals");
    let w = taef2_arg();
    let base = ["build", "flux2", "--weights", &w, "--quantize", "int8"];
    let photos = shared("calibration").display().to_string();
    let mut args = base.to_vec();
    args.extend(["--quantize-activations", "int8", "--target", "ios16"]);
    args.extend(["--calibration", &photos]);
    let e = fails(&dir, &args);
    assert!(
        e.contains("--quantize-activations int8") && e.contains("ios17") && e.contains("ios16"),
        "{e}"
    );
    let mut args = base.to_vec();
    args.extend(["--quantize-activations", "int8", "--target", "ios17"]);
    let e = fails(&dir, &args);
    assert!(e.contains("--calibration"), "{e}");
    // A calibration set that is not there: named, before any work.
    args.extend(["--calibration", "no_such_photos"]);
    let e = fails(&dir, &args);
    assert!(
        e.contains("no_such_photos") && e.contains("not found"),
        "{e}"
    );
    // Photos that would calibrate nothing: a mistake to name, not a no-op.
    let args = ["build", "flux2", "--weights", &w, "--calibration", &photos];
    let e = fails(&dir, &args);
    assert!(
        e.starts_with("error: --calibration:") && e.contains("weight compression"),
        "{e}"
    );
    assert!(!dir.join("taef2_decoder.mlpackage").exists());
}
