//! Output-aware weight compression (`--calibration` with `--palettize` / `--quantize`): on the
//! real TAEF2 decoder, calibrated on two of the shared photos, the held-out photos and the
//! PyTorch fixtures decode closer to the float model than with data-free compression.
//! Run with --nocapture for the figures.

mod common;

use common::*;
use mlc::compiler::{
    compile_weights, BuildOptions, CalibrationSource, Compression, QuantMode, Sizes,
};
use mlc::ir::{eval::evaluate, Graph};
use mlc::mil::Target;
use mlc::weights::Weights;
use std::path::{Path, PathBuf};

/// Symlinks `names` from the shared photos into `dir`.
fn photo_dir(dir: PathBuf, names: &[&str]) -> PathBuf {
    let photos = shared("calibration");
    std::fs::create_dir_all(&dir).unwrap();
    for n in names {
        std::os::unix::fs::symlink(photos.join(n), dir.join(n)).unwrap();
    }
    dir
}

fn final_graph(o: &BuildOptions, w: &Weights) -> Graph {
    let mut last = None;
    compile_weights(o, w, |_, g| last = Some(g.clone())).unwrap();
    last.unwrap()
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

#[test]
fn calibrated_compression_beats_data_free_on_held_out_images() {
    let dir = out_dir("calibrated_compression");
    let cal = photo_dir(
        dir.join("calibrate_on"),
        &["rocket.png", "immunohistochemistry.png"],
    );
    let held_dir = photo_dir(
        dir.join("held_out"),
        &["hubble_deep_field.png", "retina.png"],
    );
    let w = Weights::load(&taef2_weights()).unwrap();
    let latent: usize = std::env::var("MLC_LATENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let mut o = BuildOptions::new("flux2", taef2_weights());
    o.sizes = Sizes::Latent(vec![[latent, latent]]);
    let mut held_o = o.clone();
    held_o.calibration = Some(source(&held_dir));
    held_o.compression = Some(Compression::Palettize {
        bits: 4,
        group_size: None,
        min_elements: 2048,
    });
    let held = mlc::compiler::load_calibration(&held_o).unwrap().unwrap();
    let mut o32 = o.clone();
    o32.precision = mlc::compiler::Precision::Fp32;
    let reference = mlc::compiler::declare(&o32, &w).unwrap();
    let settings = [
        (
            "palettize 4",
            Compression::Palettize {
                bits: 4,
                group_size: None,
                min_elements: 2048,
            },
        ),
        (
            "palettize 8",
            Compression::Palettize {
                bits: 8,
                group_size: None,
                min_elements: 2048,
            },
        ),
        (
            "quantize int8",
            Compression::Quantize {
                mode: QuantMode::Int8,
                block_size: None,
                min_elements: 2048,
            },
        ),
    ];
    for (label, c) in settings {
        let mut free = o.clone();
        free.compression = Some(c.clone());
        free.target = Target::Ios16;
        let t = std::time::Instant::now();
        let a = psnrs(&final_graph(&free, &w), &held, &reference, latent);
        let t_free = t.elapsed();
        let mut fit = free.clone();
        fit.calibration = Some(source(&cal));
        let t = std::time::Instant::now();
        let b = psnrs(&final_graph(&fit, &w), &held, &reference, latent);
        eprintln!(
            "{label} at {}px: data-free {a:.2?} dB ({:.1?}), calibrated {b:.2?} dB ({:.1?})",
            latent * 8,
            t_free,
            t.elapsed()
        );
    }
}
