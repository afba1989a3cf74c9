//! tests/buildscript, an app crate whose build script compiles TAEF2 with mlc, built offline
//! by a nested cargo; the package it made is evaluated against PyTorch's output and checked by
//! coremltools.
//!
//! The nested build has its own target directory, target/example-buildscript, so repeated runs
//! are incremental and it never waits on the outer build's lock. Cold, it compiles mlc and its
//! dependencies once (about 2 minutes on 2 cores); warm, it takes well under a second.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn manifest() -> PathBuf {
    repo().join("tests/buildscript/Cargo.toml")
}

/// Variables the outer `cargo test` sets for this test process. Build scripts of dependencies
/// (ring's) rerun when one of them changes, so leaking them into the nested build would make it
/// dirty whenever it alternates with a build from a shell.
fn set_by_outer_cargo(name: &str) -> bool {
    ["CARGO_PKG_", "CARGO_MANIFEST_"]
        .iter()
        .any(|p| name.starts_with(p))
        || [
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&name)
}

/// `cargo SUBCOMMAND --offline` on the example, with its own target directory and the default
/// weights (the fallback in ../shared, whatever MLC_EXAMPLE_WEIGHTS says outside).
fn cargo(subcommand: &str, extra: &[&str]) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_outer_cargo) {
            cmd.env_remove(name);
        }
    }
    cmd.arg(subcommand)
        .arg("--offline")
        .arg("--manifest-path")
        .arg(manifest())
        .args(extra)
        .env(
            "CARGO_TARGET_DIR",
            repo().join("target/example-buildscript"),
        )
        .env_remove("MLC_EXAMPLE_WEIGHTS")
        .output()
        .unwrap_or_else(|e| panic!("run cargo {subcommand}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

#[test]
fn build_script_example_builds_a_package_that_decodes_taef2() {
    let t = Instant::now();
    let o = cargo("build", &[]);
    assert!(
        o.status.success(),
        "the example failed to build:\n{}",
        text(&o)
    );
    eprintln!("nested cargo build of the example: {:.1?}", t.elapsed());

    // The binary prints the path its build script baked in, and checks Manifest.json is there.
    let o = cargo("run", &["-q"]);
    assert!(o.status.success(), "the example failed:\n{}", text(&o));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let pkg_path = PathBuf::from(stdout.trim());
    assert!(
        pkg_path.ends_with("out/taef2_decoder.mlpackage")
            && pkg_path.starts_with(repo().join("target/example-buildscript")),
        "unexpected package path {pkg_path:?}"
    );
    assert!(pkg_path.join("Manifest.json").is_file(), "{pkg_path:?}");

    let pkg = mlc::package::read_package(&pkg_path).unwrap();
    let meta = pkg
        .model
        .description
        .as_ref()
        .and_then(|d| d.metadata.as_ref())
        .expect("metadata");
    assert_eq!(meta.user_defined["mlc.model"], "taef2");
    assert_eq!(meta.user_defined["mlc.image_sizes"], "256x256");
    assert_eq!(
        meta.user_defined["mlc.weights.source"], "taef2_decoder",
        "the example should fall back to ../shared/weights/taef2_decoder.safetensors"
    );

    let mut fixture =
        mlc::run::read_safetensors(&shared("fixtures/taef2/seed0_32x32.safetensors")).unwrap();
    let image = fixture.remove("image").unwrap();
    let inputs = BTreeMap::from([("latent".to_string(), fixture.remove("latent").unwrap())]);
    let out = mlc::run::run(&pkg, "main", &inputs)
        .unwrap()
        .remove("image")
        .expect("output named image");
    let c = mlc::run::compare(&out, &image);
    eprintln!("build-script package, seed0_32x32: {c:?}");
    assert!(c.max_abs <= 2e-3, "{c:?}");

    let dir = out_dir("buildscript_example");
    copy_dir(&pkg_path, &dir.join("taef2_decoder.mlpackage"));
    oracle(&dir);
}
