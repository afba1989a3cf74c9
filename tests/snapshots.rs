//! Snapshots of the MIL text that ships, per model and option set (in ../snapshots). Review a
//! changed snapshot as you would review code.

mod common;

use common::*;
use mlc::compiler::{compile_weights, BuildOptions, Precision};
use mlc::mil::print::print_model;
use mlc::mil::Target;
use mlc::weights::Weights;

fn mil_text(
    model: &str,
    weights: &Weights,
    precision: Precision,
    target: Target,
    latent: usize,
) -> String {
    let mut o = BuildOptions::new(model, "unused");
    o.precision = precision;
    o.target = target;
    o.latent_size = [latent, latent];
    let c = compile_weights(&o, weights, |_, _| {}).unwrap();
    print_model(&c.lowered.model)
}

macro_rules! snapshot {
    ($name:expr, $text:expr) => {
        insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!($name, $text);
        });
    };
}

#[test]
fn taef2_fp32() {
    let w = Weights::load(&taef2_weights()).unwrap();
    snapshot!(
        "taef2_fp32_ios16",
        mil_text("flux2", &w, Precision::Fp32, Target::Ios16, 96)
    );
}

#[test]
fn taef2_fp16() {
    let w = Weights::load(&taef2_weights()).unwrap();
    snapshot!(
        "taef2_fp16_ios16",
        mil_text("flux2", &w, Precision::Fp16, Target::Ios16, 96)
    );
}

#[test]
fn synthetic_taesd_fp16_ios18() {
    let w = synthetic_taesd(4, false);
    snapshot!(
        "taesd_synthetic_fp16_ios18",
        mil_text("taesd", &w, Precision::Fp16, Target::Ios18, 8)
    );
}
