//! The SD UNets against diffusers (0.42.1, fp32 references from fp16 weights) on the small random
//! UNets in ../shared/fixtures/unet: every fixture (sd15, sd21, sdxl, sd15_inpaint) and case
//! (batch 1 and 2, 16x16 and 12x20 latents), fp32 and fp16 packages evaluated through the
//! emitted package, in both layouts. Error over the reference's largest magnitude: fp32 1e-4,
//! fp16 5e-3 and no worse than coremltools' own fp16 conversion of the case (the timestep
//! sinusoids computed in fp32 are what beats it: 2.7e-4 to 4.1e-4 where coremltools reaches
//! 3.7e-4 to 3.9e-3).

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

/// coremltools 9.0's own fp16 conversions of the same fixtures, error over the largest
/// |noise_pred| (the fixtures' README): mlc's fp16 packages must not be worse.
fn coremltools_fp16(name: &str, case: &str) -> f32 {
    match (name, case) {
        ("sd15", "b1_16x16") => 1.3e-3,
        ("sd15", "b2_16x16") => 1.3e-3,
        ("sd15", "b2_12x20") => 4.2e-4,
        ("sd21", "b1_16x16") => 3.4e-3,
        ("sd21", "b2_16x16") => 3.3e-3,
        ("sd21", "b2_12x20") => 9.5e-4,
        ("sdxl", "b1_16x16") => 3.0e-3,
        ("sdxl", "b2_16x16") => 3.9e-3,
        ("sdxl", "b2_12x20") => 2.4e-3,
        ("sd15_inpaint", "b1_16x16") => 8.4e-4,
        ("sd15_inpaint", "b2_16x16") => 1.2e-3,
        ("sd15_inpaint", "b2_12x20") => 3.7e-4,
        _ => unreachable!("{name} {case}"),
    }
}

#[test]
fn every_fixture_matches_diffusers() {
    let out = out_dir("unet_numerics");
    let (mut report, mut failed) = (String::new(), Vec::new());
    for name in ["sd15", "sd21", "sdxl", "sd15_inpaint"] {
        for c in ["b1_16x16", "b2_16x16", "b2_12x20"] {
            for layout in [TransformerLayout::Standard, TransformerLayout::Ane] {
                let fp16 = coremltools_fp16(name, c).min(5e-3);
                for (p, tol) in [(Precision::Fp32, 1e-4), (Precision::Fp16, fp16)] {
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

/// One package for 16x16 and 24x24 latents (enumerated shapes), and one function per size
/// (iOS18 multifunction, `unet_16x16`, `unet_24x24`): each computes diffusers' numbers at 16x16,
/// the multifunction one with fused attention.
#[test]
fn enumerated_and_multifunction_packages_match() {
    let out = out_dir("unet_sizes");
    for (name, layout) in [
        ("sd15", TransformerLayout::Ane),
        ("sdxl", TransformerLayout::Standard),
    ] {
        let (inputs, want) = case(name, "b2_16x16", layout);
        for multifunction in [false, true] {
            let mut o = BuildOptions::new(model(name), weights(name));
            o.io_precision = Some(Precision::Fp32);
            o.sizes = mlc::compiler::Sizes::Latent(vec![[16, 16], [24, 24]]);
            o.multifunction = multifunction;
            if multifunction {
                o.target = mlc::mil::Target::Ios18;
            }
            o.model_options = ModelOptions {
                layout,
                ..Default::default()
            };
            let tag = format!("{name}_{layout:?}_multifunction_{multifunction}");
            o.output = Some(out.join(format!("{tag}.mlpackage")));
            let pkg = mlc::package::read_package(&build(&o).unwrap().package).unwrap();
            let function = mlc::run::default_function(&pkg);
            let text = mlc::mil::print::print_model(&pkg.model);
            if multifunction {
                assert_eq!(function, "unet_16x16");
                assert!(text.contains("unet_24x24"), "{tag}");
                if layout == TransformerLayout::Standard {
                    assert!(text.contains("scaled_dot_product_attention("), "{tag}");
                }
            } else {
                assert!(text.contains("enumerated"), "{tag}: {}", &text[..2000]);
            }
            let got = mlc::run::run(&pkg, &function, &inputs).unwrap();
            assert_within(&tag, &got["noise_pred"], &want, 5e-3);
        }
    }
}

/// The command line end to end: `mlc build` each fixture fp16, then `mlc run` with all inputs from
/// the case's one safetensors file and `--fp16-activations`: the run reports the largest
/// activation (within fp16's range) and writes diffusers' `noise_pred` within 5e-3.
#[test]
fn build_and_run_on_the_command_line_report_fp16_activations() {
    let out = out_dir("unet_cli");
    for name in ["sd15", "sd21", "sdxl", "sd15_inpaint"] {
        let pkg = out.join(format!("{name}_cli.mlpackage"));
        let weights = weights(name).display().to_string();
        let args = [
            "build",
            model(name),
            "--weights",
            &weights,
            "--latent-size",
            "16",
            "-o",
            pkg.to_str().unwrap(),
        ];
        let o = common::cli::mlc(&args, &out);
        assert!(o.status.success(), "{}", common::cli::stderr(&o));
        let case = fixture(name).join("b2_16x16.safetensors");
        let result = out.join(format!("{name}_noise_pred.safetensors"));
        let args = [
            "run",
            pkg.to_str().unwrap(),
            "--input",
            case.to_str().unwrap(),
            "--output",
            result.to_str().unwrap(),
            "--fp16-activations",
            "--force",
        ];
        let o = common::cli::mlc(&args, &out);
        let err = common::cli::stderr(&o);
        assert!(o.status.success(), "{err}");
        let largest: f32 = err
            .split("largest magnitude ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no fp16 activation report in {err}"));
        assert!(
            largest.is_finite() && largest < 65504.0,
            "{name}: {largest}"
        );
        let got = mlc::run::read_safetensors(&result).unwrap();
        let (_, want) = case_of(name);
        assert_within(&format!("{name} cli"), &got["noise_pred"], &want, 5e-3);
    }
}

fn case_of(name: &str) -> (BTreeMap<String, Array>, Array) {
    case(name, "b2_16x16", TransformerLayout::Standard)
}
