//! Prints where the build script put the Core ML package, and checks that it is there.
//!
//! A real app would bundle this directory (copy it into its `.app` or resources) and load it with
//! Core ML at run time.

use std::path::Path;
use std::process::ExitCode;

const PACKAGE: &str = env!("TAEF2_MLPACKAGE");

fn main() -> ExitCode {
    println!("{PACKAGE}");
    if Path::new(PACKAGE).join("Manifest.json").is_file() {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: {PACKAGE}: no Manifest.json (was the package removed?)");
        ExitCode::FAILURE
    }
}
