//! Full VAE decoders and encoders against PyTorch (diffusers 0.42.1, fp32) on the small random
//! VAEs in ../shared/fixtures/vae: every family, both weight layouts, fp32 and fp16 packages,
//! enumerated and multifunction sizes. Tolerances are relative to the reference's largest
//! magnitude: fp32 1e-4, fp16 5e-3.

mod common;

use common::*;
use mlc::compiler::{build, BuildOptions, Precision, Sizes};
use mlc::kernels::Array;
use mlc::mil::Target;
use mlc::models::{ModelOptions, Part};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn vae_dir(family: &str) -> PathBuf {
    shared(&format!("fixtures/vae/{family}"))
}

fn fixture(family: &str, name: &str) -> BTreeMap<String, Array> {
    mlc::run::read_safetensors(&vae_dir(family).join(format!("{name}.safetensors"))).unwrap()
}

/// Largest |a - b| over the largest |b|.
fn relative_error(out: &Array, reference: &Array) -> f32 {
    assert_eq!(out.shape, reference.shape);
    let peak = reference.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = out
        .data
        .iter()
        .zip(&reference.data)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / peak
}

struct Case {
    model: &'static str,
    family: &'static str,
    part: Part,
    layout: &'static str,
    precision: Precision,
}

fn weights(family: &str, layout: &str) -> PathBuf {
    match layout {
        "diffusers" => vae_dir(family).join("diffusers/diffusion_pytorch_model.safetensors"),
        _ => vae_dir(family).join("original.safetensors"),
    }
}

fn build_case(c: &Case, sizes: Sizes, options: ModelOptions, out: PathBuf) -> PathBuf {
    let mut o = BuildOptions::new(c.model, weights(c.family, c.layout));
    o.part = Some(c.part);
    o.precision = c.precision;
    o.io_precision = Some(Precision::Fp32);
    o.sizes = sizes;
    o.model_options = options;
    o.output = Some(out);
    build(&o).unwrap_or_else(|e| panic!("{}: {e}", c.model)).package
}

const FAMILIES: [(&str, &str); 3] = [("sd-vae", "sd"), ("flux1-vae", "flux1"), ("flux2-vae", "flux2")];

#[test]
fn decoders_match_pytorch_in_both_layouts() {
    let dir = out_dir("vae_decoders");
    for (model, family) in FAMILIES {
        for layout in ["diffusers", "original"] {
            for (precision, tol) in [(Precision::Fp32, 1e-4), (Precision::Fp16, 5e-3)] {
                let c = Case { model, family, part: Part::Decoder, layout, precision };
                let tag = format!("{model}_{layout}_{precision:?}").to_lowercase();
                let pkg = build_case(
                    &c,
                    Sizes::Latent(vec![[8, 8], [6, 10]]),
                    ModelOptions::default(),
                    dir.join(format!("{tag}.mlpackage")),
                );
                for size in ["8x8", "6x10"] {
                    let mut f = fixture(family, &format!("decode_{size}"));
                    let latent = f.remove("latent").unwrap();
                    let out = mlc::run::run_path(&pkg, &BTreeMap::from([("latent".into(), latent)]))
                        .unwrap();
                    let e = relative_error(&out["image"], &f["image"]);
                    println!("decode {tag} {size}: relative max error {e:.2e}");
                    assert!(e <= tol, "{tag} {size}: {e} > {tol}");
                }
            }
        }
    }
}
