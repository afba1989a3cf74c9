//! Running the mlc binary as the command-line tests do, and the build most of them start from.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the mlc binary in `cwd`.
pub fn mlc(args: &[&str], cwd: &Path) -> Output {
    mlc_with_path(args, cwd, None)
}

/// Runs the mlc binary in `cwd` with `path` as PATH where given (a stand-in xcrun, or none).
pub fn mlc_with_path(args: &[&str], cwd: &Path, path: Option<&Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mlc"));
    c.args(args).current_dir(cwd);
    if let Some(p) = path {
        c.env("PATH", p);
    }
    c.output().unwrap()
}

/// A run's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs mlc with `base` then `args` in `cwd`: it must fail with `needle` in its error. The
/// failure names the case by `args`.
pub fn assert_refused(cwd: &Path, base: &[&str], args: &[&str], needle: &str) {
    let mut all = base.to_vec();
    all.extend_from_slice(args);
    let o = mlc(&all, cwd);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains(needle),
        "{args:?}: {err}"
    );
}

/// The shared TAEF2 decoder weights as a command-line argument.
pub fn taef2_arg() -> String {
    super::taef2_weights().display().to_string()
}

/// `build flux2 --weights <weights> --latent-size <latent_size>`, then `extra`.
pub fn taef2_build<'a>(weights: &'a str, latent_size: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "build",
        "flux2",
        "--weights",
        weights,
        "--latent-size",
        latent_size,
    ];
    args.extend_from_slice(extra);
    args
}
