//! mlc: a pure-Rust model compiler for Apple Core ML.
//!
//! The pipeline, each stage knowing only the one before it:
//! weights ([`weights`]) → model builder ([`models`]) → IR ([`ir`]) → passes ([`passes`]) →
//! MIL program ([`mil`]) → `.mlpackage` ([`package`]). [`compiler::build`] runs it all; the CLI
//! ([`cli`]) is a thin layer over it. [`mil::eval`] and [`run`] evaluate what was emitted.
//!
//! ```no_run
//! let mut opts = mlc::compiler::BuildOptions::new("flux2", "taef2_decoder.safetensors");
//! opts.output = Some("taef2.mlpackage".into());
//! let report = mlc::compiler::build(&opts)?;
//! println!("{} ops in {}", report.ops, report.package.display());
//! # Ok::<(), mlc::compiler::BuildError>(())
//! ```

pub mod ane;
pub(crate) mod atomic_dir;
pub mod build;
pub mod calibrate;
#[cfg(feature = "cli")]
pub mod cli;
pub mod compiler;
pub mod compress;
pub mod coremlc;
pub mod dump;
pub mod fuzzing;
pub mod hub;
pub mod huge_pages;
pub mod inspect;
pub mod ir;
pub mod kernels;
pub mod limits;
pub mod lora;
pub mod mil;
pub mod mlmodelc;
pub mod models;
pub mod package;
pub(crate) mod parallel;
#[path = "../passes/mod.rs"]
pub mod passes;
pub mod pipeline;
pub mod progress;
pub mod proto;
pub mod report;
pub mod rng;
pub mod run;
pub mod tensor;
pub mod weights;
