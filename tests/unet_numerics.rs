//! The SD UNets against diffusers (0.42.1, fp32 references from fp16 weights) on the small random
//! UNets in ../shared/fixtures/unet: every fixture (sd15, sd21, sdxl, sd15_inpaint) and case
//! (batch 1 and 2, 16x16 and 12x20 latents), fp32 and fp16 packages evaluated through the
//! emitted package, in both layouts. Error over the reference's largest magnitude: fp32 1e-4,
//! fp16 5e-3.

mod common;

use common::*;
use mlc::compiler::{build, BuildOptions, Precision};
use mlc::kernels::Array;
use mlc::models::{ModelOptions, TransformerLayout};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    shared(&format!("fixtures/unet/{name}"))
}

fn weights(name: &str) -> PathBuf {
    fixture(name).join("diffusers/diffusion_pytorch_model.safetensors")
}

fn model(name: &str) -> &'static str {
    if name == "sdxl" {
        "sdxl-unet"
    } else {
        "sd-unet"
    }
}

/// The case's inputs under the package's names, and its reference `noise_pred`.
fn case(name: &str, case: &str, layout: TransformerLayout) -> (BTreeMap<String, Array>, Array) {
    let mut f =
        mlc::run::read_safetensors(&fixture(name).join(format!("{case}.safetensors"))).unwrap();
    let want = f.remove("noise_pred").unwrap();
    let ane = f.remove("encoder_hidden_states_ane").unwrap();
    if layout == TransformerLayout::Ane {
        f.insert("encoder_hidden_states".into(), ane);
    }
    (f, want)
}

/// Builds `name` for `case`'s batch and latent size and returns the largest error over the
/// reference's largest magnitude.
fn error(
    name: &str,
    case_name: &str,
    precision: Precision,
    layout: TransformerLayout,
    out: &Path,
) -> f32 {
    let (inputs, want) = case(name, case_name, layout);
    let b = want.shape[0];
    let (h, w) = (want.shape[2], want.shape[3]);
    let mut o = BuildOptions::new(model(name), weights(name));
    o.precision = precision;
    o.io_precision = Some(Precision::Fp32);
    o.sizes = mlc::compiler::Sizes::Latent(vec![[h, w]]);
    o.model_options = ModelOptions {
        batch: Some(b),
        layout,
        ..Default::default()
    };
    let tag = format!("{name}_{case_name}_{precision:?}_{layout:?}");
    o.output = Some(out.join(format!("{tag}.mlpackage")));
    let pkg = build(&o).unwrap().package;
    let got = mlc::run::run_path(&pkg, &inputs).unwrap();
    relative_error(&got["noise_pred"], &want)
}

#[test]
fn every_fixture_matches_diffusers() {
    let out = out_dir("unet_numerics");
    let (mut report, mut failed) = (String::new(), Vec::new());
    for name in ["sd15", "sd21", "sdxl", "sd15_inpaint"] {
        for c in ["b1_16x16", "b2_16x16", "b2_12x20"] {
            for layout in [TransformerLayout::Standard, TransformerLayout::Ane] {
                for (p, tol) in [(Precision::Fp32, 1e-4), (Precision::Fp16, 5e-3)] {
                    let e = error(name, c, p, layout, &out);
                    report += &format!("{name} {c} {p:?} {layout:?}: {e:.2e}\n");
                    if e > tol {
                        failed.push(format!("{name} {c} {p:?} {layout:?}: {e:.2e} > {tol:.0e}"));
                    }
                }
            }
        }
    }
    eprintln!("{report}");
    assert!(failed.is_empty(), "{failed:#?}");
}
