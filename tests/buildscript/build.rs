//! Compiles the TAEF2 (FLUX.2) decoder into a Core ML package at build time.
//!
//! The weights come from `MLC_EXAMPLE_WEIGHTS` (a `.safetensors` or `.pth` file; a relative path
//! is taken from this crate's directory), else from `../../../shared/weights/` beside the mlc
//! repository. The package lands in `$OUT_DIR/taef2_decoder.mlpackage`; the crate sees its path
//! as `env!("TAEF2_MLPACKAGE")`.

use mlc::compiler::{build, BuildOptions};
use std::path::PathBuf;

const WEIGHTS_ENV: &str = "MLC_EXAMPLE_WEIGHTS";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={WEIGHTS_ENV}");

    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let weights = match std::env::var_os(WEIGHTS_ENV) {
        Some(p) => manifest_dir.join(p),
        None => manifest_dir.join("../../../shared/weights/taef2_decoder.safetensors"),
    };
    // Rebuild the package when the weights change (and only then, or when mlc changes).
    println!("cargo:rerun-if-changed={}", weights.display());

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let mut opts = BuildOptions::new("flux2", &weights);
    opts.output = Some(out_dir.join("taef2_decoder.mlpackage"));
    // One 32x32 latent (256x256 images): small and quick to build. Add sizes for more.
    opts.sizes = mlc::compiler::Sizes::Latent(vec![[32, 32]]);

    match build(&opts) {
        Ok(report) => println!(
            "cargo:rustc-env=TAEF2_MLPACKAGE={}",
            report.package.display()
        ),
        // The error is one line naming the file or option at fault; cargo shows it.
        Err(e) => panic!("mlc could not build the TAEF2 package: {e}"),
    }
}
