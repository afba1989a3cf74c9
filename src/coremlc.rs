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

/// Runs `xcrun coremlc compile pkg out_dir` and returns the `.mlmodelc` it wrote.
pub fn compile(pkg: &Path, out_dir: &Path) -> Result<Compiled, CoremlcError> {
    let argv = command_line(pkg, out_dir);
    let command = argv.join(" ");
    std::fs::create_dir_all(out_dir).map_err(CoremlcError::Missing)?;
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
