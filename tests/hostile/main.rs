//! Hostile input (issue 9), one module per theme: `weights` (memory bombs in checkpoints,
//! duplicate keys, values a package cannot hold), `files` (FIFOs, devices, symlinks out of a
//! package), `builds` (interrupted and concurrent builds, outputs), `packages` (hostile programs
//! in the evaluator and `inspect`), `sizes` (absurd and unlisted sizes). Cases:
//! memory bombs, special files, symlinks out of a package, endless or
//! slow downloads, interrupted and concurrent builds. Each must end in a one-line error (or
//! succeed), quickly, in bounded memory, and leave nothing behind.
//!
//! The binary runs with its address space limited to [`ADDRESS_SPACE`] (on Linux), so a bomb
//! that slips past the budgets makes its test fail at once (an allocation failure aborts the
//! process) instead of taking the machine's memory.

#[path = "../common/mod.rs"]
mod common;

mod builds;
mod files;
mod packages;
mod sizes;
mod weights;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mlc::weights::Weights;

// Helpers one theme defines and others use.
use builds::{latent_file, synthetic_weights, BUILD};
use files::{ct_copy, mlc_deadline, WEIGHTS_REL};
use weights::small_options;

/// Address space the binary may map. Measured under `prlimit --as`: building TAEF2 from its
/// 2.7 MB checkpoint needs under 64 MiB, and running that decoder on a 32x32 latent (larger
/// than anything run here) under 256 MiB; 2 GiB leaves room for thread stacks and allocator
/// arenas on bigger machines while still stopping a bomb long before the machine's memory.
const ADDRESS_SPACE: u64 = 2 << 30;

/// The mlc binary, to be run under the [`ADDRESS_SPACE`] limit.
fn mlc_command() -> Command {
    #[allow(unused_mut)]
    let mut c = Command::new(env!("CARGO_BIN_EXE_mlc"));
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let limit = libc::rlimit {
            rlim_cur: ADDRESS_SPACE,
            rlim_max: ADDRESS_SPACE,
        };
        // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe, on a
        // value copied into the closure.
        unsafe {
            c.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the binary in `dir` with extra environment variables.
fn mlc_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = mlc_command();
    c.args(args).current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Names in `dir` other than `inputs`: what a failed command left behind.
fn leftovers(dir: &Path, inputs: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !inputs.contains(&n.as_str()))
        .collect();
    v.sort();
    v
}

/// Asserts `o` failed with exit code 1 and a single `error:` line; returns that line.
fn one_line_error(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    err.trim_end().to_string()
}

/// Runs a command that must fail in `dir` (holding only `inputs`), checks the error is one
/// line and that nothing was left behind; returns the error line.
fn fails(dir: &Path, inputs: &[&str], args: &[&str], env: &[(&str, &str)]) -> String {
    let o = mlc_env(args, dir, env);
    let err = one_line_error(&o);
    assert_eq!(
        leftovers(dir, inputs),
        Vec::<String>::new(),
        "{args:?} left files behind"
    );
    err
}
