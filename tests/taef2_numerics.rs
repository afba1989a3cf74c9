//! Emitted TAEF2 packages, evaluated from disk by mlc's MIL evaluator, against PyTorch's outputs
//! in ../shared/fixtures/taef2, and checked by coremltools.

mod common;

use common::*;
use mlc::compiler::{build, BuildOptions, Precision};
use mlc::mil::Target;
use std::collections::BTreeMap;
use std::path::Path;

fn build_pkg(
    dir: &Path,
    name: &str,
    precision: Precision,
    io: Option<Precision>,
    latent: usize,
    target: Target,
) -> std::path::PathBuf {
    let mut o = BuildOptions::new("flux2", taef2_weights());
    o.output = Some(dir.join(name));
    o.precision = precision;
    o.io_precision = io;
    o.sizes = mlc::compiler::Sizes::Latent(vec![[latent, latent]]);
    o.target = target;
    build(&o).unwrap().package
}

fn decode(pkg: &Path, latent: &mlc::kernels::Array) -> mlc::kernels::Array {
    let inputs = BTreeMap::from([("latent".to_string(), latent.clone())]);
    let mut out = mlc::run::run_path(pkg, &inputs).unwrap();
    out.remove("image").expect("output named image")
}

#[test]
fn fp32_matches_pytorch_within_1e_4() {
    let dir = out_dir("taef2_fp32");
    let pkg = build_pkg(
        &dir,
        "taef2_fp32.mlpackage",
        Precision::Fp32,
        None,
        32,
        Target::Ios16,
    );
    for seed in ["seed0_32x32", "seed1_32x32"] {
        let (latent, image) = fixture(seed);
        let c = compare(&decode(&pkg, &latent), &image);
        eprintln!("fp32 {seed}: {c:?}");
        assert!(c.max_abs <= 1e-4, "{seed}: {c:?}");
    }
    oracle(&dir);
}

#[test]
fn fp16_matches_pytorch_within_2e_3_at_every_target() {
    let dir = out_dir("taef2_fp16");
    let (latent, image) = fixture("seed0_32x32");
    for (target, io) in [
        (Target::Ios16, None),
        (Target::Ios17, Some(Precision::Fp32)),
        (Target::Ios18, None),
    ] {
        let name = format!(
            "taef2_fp16_{target}_{}.mlpackage",
            if io.is_some() { "fp32io" } else { "fp16io" }
        );
        let pkg = build_pkg(&dir, &name, Precision::Fp16, io, 32, target);
        let c = compare(&decode(&pkg, &latent), &image);
        eprintln!("fp16 {name}: {c:?}");
        assert!(c.max_abs <= 2e-3, "{name}: {c:?}");
        // fp16 weights must actually differ from fp32 ones somewhere.
        assert!(c.max_abs > 1e-6, "{name}: suspiciously exact {c:?}");
    }
    oracle(&dir);
}

#[test]
fn default_build_decodes_768px_within_2e_3() {
    let dir = out_dir("taef2_default");
    let mut o = BuildOptions::new("flux2", taef2_weights());
    o.output = Some(dir.join("taef2.mlpackage"));
    let pkg = build(&o).unwrap().package;
    let (latent, image) = fixture("seed2_96x96");
    let c = compare(&decode(&pkg, &latent), &image);
    eprintln!("fp16 default 96x96: {c:?}");
    assert!(c.max_abs <= 2e-3, "{c:?}");
    oracle(&dir);
}
