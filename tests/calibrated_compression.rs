//! Output-aware weight compression (`--calibration` with `--palettize` / `--quantize`): on the
//! real TAEF2 decoder, calibrated on two of the shared photos, the held-out photos and the
//! PyTorch fixtures decode closer to the float model than with data-free compression.
//! Run with --nocapture for the figures.

mod common;

use common::*;
use mlc::compiler::{BuildOptions, CalibrationSource, Compression, QuantMode, Sizes};
use mlc::compress::output_aware::Steps;
use mlc::ir::{eval::evaluate, Graph};
use mlc::passes::{self, calibrated::Calibrated};
use mlc::weights::Weights;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Symlinks `names` from the shared photos into `dir`.
fn photo_dir(dir: PathBuf, names: &[&str]) -> PathBuf {
    let photos = shared("calibration");
    std::fs::create_dir_all(&dir).unwrap();
    for n in names {
        std::os::unix::fs::symlink(photos.join(n), dir.join(n)).unwrap();
    }
    dir
}

fn source(path: &Path) -> CalibrationSource {
    CalibrationSource {
        path: path.to_path_buf(),
        encoder_weights: Some(shared("weights/taef2_encoder.safetensors")),
        upscale: false,
    }
}

/// PSNR of `g` against the fp32 decoder on every held-out photo, and against PyTorch on the
/// fixture.
fn psnrs(
    g: &Graph,
    held: &mlc::calibrate::Calibration,
    reference: &Graph,
    latent: usize,
) -> Vec<f32> {
    let mut out = Vec::new();
    for i in 0..held.len() {
        let x = held.sample(i);
        let want = evaluate(reference, &x).unwrap().remove("image").unwrap();
        out.push(compare(&evaluate(g, &x).unwrap()["image"], &want).psnr);
    }
    if latent == 32 {
        for seed in ["seed0_32x32", "seed1_32x32"] {
            let (latent, image) = fixture(seed);
            let x = std::collections::BTreeMap::from([("latent".to_string(), latent)]);
            out.push(compare(&evaluate(g, &x).unwrap()["image"], &image).psnr);
        }
    }
    out
}

/// Which output-aware steps run, by name, for the table: each step added to the last, the
/// default last but one, and the weighted k-means the default leaves out.
fn variants() -> Vec<(&'static str, Steps)> {
    let none = Steps {
        weighted_kmeans: false,
        feedback: false,
        refits: 0,
        bias_correction: false,
    };
    let bias = Steps {
        bias_correction: true,
        ..none
    };
    let feedback = Steps {
        refits: 0,
        ..Steps::DEFAULT
    };
    let weighted = Steps {
        weighted_kmeans: true,
        ..Steps::DEFAULT
    };
    vec![
        ("bias correction", bias),
        ("+ feedback rounding", feedback),
        ("+ table refits (default)", Steps::DEFAULT),
        ("default with weighted k-means", weighted),
    ]
}

#[test]
fn calibrated_compression_beats_data_free_on_held_out_images() {
    let dir = out_dir("calibrated_compression");
    let cal_dir = photo_dir(
        dir.join("calibrate_on"),
        &["rocket.png", "immunohistochemistry.png"],
    );
    let held_dir = photo_dir(
        dir.join("held_out"),
        &["hubble_deep_field.png", "retina.png"],
    );
    let w = Weights::load(&taef2_weights()).unwrap();
    let latent = 32;
    let mut o = BuildOptions::new("flux2", taef2_weights());
    o.sizes = Sizes::Latent(vec![[latent, latent]]);
    let load = |path: &Path| {
        let mut c = o.clone();
        c.calibration = Some(source(path));
        c.compression = Some(Compression::Palettize {
            bits: 4,
            group_size: None,
            min_elements: 2048,
        });
        mlc::compiler::load_calibration(&c).unwrap().unwrap()
    };
    let (cal, held) = (load(&cal_dir), load(&held_dir));
    let mut o32 = o.clone();
    o32.precision = mlc::compiler::Precision::Fp32;
    let reference = mlc::compiler::declare(&o32, &w).unwrap();

    // The graph compression sees, and what the convs' inputs were on the calibration photos.
    let pipeline = mlc::compiler::pipeline_options(&o).unwrap();
    let prepared = passes::run(
        mlc::compiler::declare(&o, &w).unwrap(),
        &passes::prepare(&pipeline),
        |_, _| {},
    )
    .unwrap();
    let layers = Arc::new(mlc::calibrate::layer_inputs::collect(&prepared, &cal, false).unwrap());
    assert_eq!(layers.samples, 2);
    assert!(layers
        .layers
        .values()
        .all(|l| l.gram.is_some() && l.positions > 0));

    let settings = [
        (
            "--palettize 4",
            Compression::Palettize {
                bits: 4,
                group_size: None,
                min_elements: 2048,
            },
            2.0,
        ),
        (
            "--palettize 8",
            Compression::Palettize {
                bits: 8,
                group_size: None,
                min_elements: 2048,
            },
            1.0,
        ),
        (
            "--quantize int8",
            Compression::Quantize {
                mode: QuantMode::Int8,
                block_size: None,
                min_elements: 2048,
            },
            1.0,
        ),
    ];
    eprintln!("PSNR (dB) on hubble_deep_field, retina (vs the fp32 decoder), seed0, seed1 (vs PyTorch), {}px", latent * 8);
    for (label, c, gain) in settings {
        let mut p = pipeline.clone();
        p.compression = Some(c.clone());
        let run = |calibrated: Option<Calibrated>| {
            let g =
                passes::run(prepared.clone(), &passes::finish(&p, calibrated), |_, _| {}).unwrap();
            psnrs(&g, &held, &reference, latent)
        };
        let free = run(None);
        eprintln!("{label} data-free: {free:.2?}");
        let mut default = Vec::new();
        let all = variants();
        // The steps one by one for 4-bit tables; the default alone for the rest (CI time).
        let chosen = match c {
            Compression::Palettize { bits: 4, .. } => &all[..],
            _ => &all[2..3],
        };
        for &(name, steps) in chosen {
            let got = run(Some(Calibrated {
                layers: layers.clone(),
                steps,
            }));
            let gains: Vec<f32> = got.iter().zip(&free).map(|(a, b)| a - b).collect();
            eprintln!("{label} {name}: {got:.2?} (gain {gains:+.2?})");
            if steps == Steps::DEFAULT {
                default = got;
            }
        }
        assert_eq!(default.len(), 4);
        for (i, (a, b)) in default.iter().zip(&free).enumerate() {
            assert!(
                a - b >= gain,
                "{label}, image {i}: {a:.2} dB calibrated vs {b:.2} dB data-free"
            );
        }
    }
}

/// The whole build through the library: the package records the calibration set and how the
/// weights were fitted, and the same photos give the same bytes.
#[test]
fn calibrated_builds_are_reproducible_and_say_so() {
    let dir = out_dir("calibrated_compression_build");
    let cal_dir = photo_dir(dir.join("calibrate_on"), &["rocket.png", "retina.png"]);
    let mut o = BuildOptions::new("flux2", taef2_weights());
    o.sizes = Sizes::Latent(vec![[16, 16]]);
    o.compression = Some(Compression::Palettize {
        bits: 4,
        group_size: None,
        min_elements: 2048,
    });
    o.calibration = Some(source(&cal_dir));
    let mut bytes = Vec::new();
    for name in ["a", "b"] {
        let mut b = o.clone();
        b.output = Some(dir.join(format!("{name}.mlpackage")));
        let r = mlc::compiler::build(&b).unwrap();
        let pkg = mlc::package::read_package(&r.package).unwrap();
        let meta = &pkg
            .model
            .description
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .user_defined;
        assert_eq!(meta["mlc.weights.fit"], "layer outputs (calibrated)");
        assert_eq!(meta["mlc.calibration.sha256"].len(), 64);
        assert!(!meta.contains_key("mlc.activations"));
        assert!(r.timings.iter().any(|(s, _)| s == "weight statistics"));
        bytes.push(
            std::fs::read(r.package.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap(),
        );
    }
    assert_eq!(bytes[0], bytes[1]);
    // Different photos, different tables.
    let other = photo_dir(dir.join("other"), &["hubble_deep_field.png"]);
    let mut b = o.clone();
    b.calibration = Some(source(&other));
    b.output = Some(dir.join("c.mlpackage"));
    let r = mlc::compiler::build(&b).unwrap();
    assert_ne!(
        std::fs::read(r.package.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap(),
        bytes[0]
    );
    oracle(&dir);
}

/// Calibration reads the package's features: with `latent` renamed `z` (as Apple's Swift
/// pipeline names a decoder's input), the photos' latents feed `z`, and the same photos give
/// the same weights as without the rename.
#[test]
fn calibration_feeds_the_renamed_features() {
    let tmp = tempfile::tempdir().unwrap();
    let cal_dir = photo_dir(tmp.path().join("photos"), &["rocket.png"]);
    let mut o = BuildOptions::new("flux2", taef2_weights());
    o.sizes = Sizes::Latent(vec![[8, 8]]);
    o.compression = Some(Compression::Palettize {
        bits: 4,
        group_size: None,
        min_elements: 2048,
    });
    o.calibration = Some(source(&cal_dir));
    let build = |o: &BuildOptions, name: &str| {
        let mut b = o.clone();
        b.output = Some(tmp.path().join(name));
        let r = mlc::compiler::build(&b).unwrap();
        let pkg = mlc::package::read_package(&r.package).unwrap();
        let weights =
            std::fs::read(r.package.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap();
        (mlc::run::input_names(&pkg, "main"), weights)
    };
    let (inputs, plain) = build(&o, "plain.mlpackage");
    assert_eq!(inputs, ["latent"]);
    o.features.rename = vec![("latent".into(), "z".into())];
    let (inputs, renamed) = build(&o, "renamed.mlpackage");
    assert_eq!(inputs, ["z"]);
    assert!(
        renamed == plain,
        "the rename changed the calibrated weights"
    );
}
