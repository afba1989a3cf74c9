//! Compiling a package with Apple's `coremlc` (`xcrun coremlc compile PKG OUTDIR`), where Apple's
//! tools exist. The result, `OUTDIR/<name>.mlmodelc`, is what apps load at run time.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum CoremlcError {
    #[error("cannot run xcrun ({0}): compiling to .mlmodelc needs macOS with Xcode's command-line tools; the .mlpackage itself was written and can be compiled there with `xcrun coremlc compile PKG OUTDIR`")]
    Missing(std::io::Error),
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
    #[error("`{command}` succeeded but {expected} does not exist")]
    NoOutput { command: String, expected: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `coremlc` produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    pub mlmodelc: PathBuf,
    /// coremlc's own output (stdout then stderr), trimmed.
    pub output: String,
}

/// The exact command line run for `pkg` into `out_dir`.
pub fn command_line(pkg: &Path, out_dir: &Path) -> Vec<String> {
    vec![
        "xcrun".into(),
        "coremlc".into(),
        "compile".into(),
        pkg.display().to_string(),
        out_dir.display().to_string(),
    ]
}

/// Runs `xcrun coremlc compile pkg out_dir` and returns the `.mlmodelc` it wrote. The
/// directories of `out_dir` that did not exist are created for it, and removed again (if still
/// empty) when compiling fails, e.g. because there is no `xcrun`.
pub fn compile_with_xcrun(pkg: &Path, out_dir: &Path) -> Result<Compiled, CoremlcError> {
    let mut created = Vec::new();
    let mut missing = out_dir;
    while !missing.as_os_str().is_empty() && std::fs::symlink_metadata(missing).is_err() {
        created.push(missing.to_path_buf());
        missing = missing.parent().unwrap_or(Path::new(""));
    }
    std::fs::create_dir_all(out_dir).map_err(|source| CoremlcError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let result = run(pkg, out_dir);
    if result.is_err() {
        // Innermost first; `remove_dir` leaves any directory that is not empty.
        for dir in &created {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

fn run(pkg: &Path, out_dir: &Path) -> Result<Compiled, CoremlcError> {
    let argv = command_line(pkg, out_dir);
    let command = argv.join(" ");
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .map_err(CoremlcError::Missing)?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string();
    if !out.status.success() {
        return Err(CoremlcError::Failed {
            command,
            status: out.status.to_string(),
            output,
        });
    }
    let stem = pkg
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mlmodelc = out_dir.join(format!("{stem}.mlmodelc"));
    if !mlmodelc.exists() {
        return Err(CoremlcError::NoOutput {
            command,
            expected: mlmodelc,
        });
    }
    Ok(Compiled { mlmodelc, output })
}
