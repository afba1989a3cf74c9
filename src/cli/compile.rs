//! `mlc compile`: an .mlpackage into the .mlmodelc bundle apps load, with mlc's own compiler.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CompileArgs {
    /// The ML Program package (or a bare .mlmodel with its weights/ directory beside it).
    pub package: PathBuf,
    /// Output bundle [default: the package's path with .mlmodelc]. Written atomically.
    #[arg(short, long, value_name = "OUT.mlmodelc")]
    pub output: Option<PathBuf>,
}

pub fn main(a: &CompileArgs) -> Result<()> {
    let out = a
        .output
        .clone()
        .unwrap_or_else(|| crate::mlmodelc::default_output(&a.package));
    super::progress::Bar::compiling(&out, false, || {
        crate::mlmodelc::compile(&a.package, &out, &Default::default())
    })?;
    println!("compiled {}", out.display());
    Ok(())
}
