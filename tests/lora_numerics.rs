//! LoRAs fused at build time against diffusers' own LoRA loader (references in
//! ../shared/fixtures/unet/lora, made with `load_lora_weights` + `set_adapters` and checked there
//! against the explicit fusion formula): kohya SD 1.x with LoCon on the UNet and its text-encoder
//! half on CLIP-L at 1.0 and 0.6, kohya SDXL in SGM names (from the diffusers folder and from the
//! single file), PEFT SDXL at 0.8, and two LoRAs at once. Error over the reference's largest
//! magnitude: fp32 ≤ 1e-4, fp16 ≤ 5e-3. Each case also checks that the same build without the
//! LoRA is far from the reference (so the test can fail) and equals the fixture's base output.

mod common;

use common::*;
use mlc::compiler::{build, BuildOptions, Precision};
use mlc::kernels::Array;
use mlc::lora::LoraSpec;
use mlc::models::{ModelOptions, TransformerLayout};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn unet(name: &str) -> PathBuf {
    shared(&format!("fixtures/unet/{name}"))
}

fn lora(file: &str) -> PathBuf {
    shared(&format!("fixtures/unet/lora/{file}"))
}

fn spec(file: &str, weight: f32) -> LoraSpec {
    LoraSpec {
        path: lora(file),
        weight,
    }
}

/// The reference file's inputs for a UNet in `layout`, and the named outputs.
fn reference(
    file: &str,
    layout: TransformerLayout,
) -> (BTreeMap<String, Array>, BTreeMap<String, Array>) {
    let all = mlc::run::read_safetensors(&lora(file)).unwrap();
    let (mut inputs, mut outputs) = (BTreeMap::new(), BTreeMap::new());
    for (k, v) in all {
        match k.as_str() {
            "sample" | "timestep" | "text_embeds" | "time_ids" => {
                inputs.insert(k, v);
            }
            "encoder_hidden_states" if layout == TransformerLayout::Standard => {
                inputs.insert(k, v);
            }
            "encoder_hidden_states_ane" if layout == TransformerLayout::Ane => {
                inputs.insert("encoder_hidden_states".into(), v);
            }
            _ => {
                outputs.insert(k, v);
            }
        }
    }
    (inputs, outputs)
}

struct Case {
    tag: &'static str,
    model: &'static str,
    weights: PathBuf,
    loras: Vec<LoraSpec>,
    reference: &'static str,
    /// The reference output with the LoRAs, and without.
    with: &'static str,
    base: Option<&'static str>,
}

fn run_unet(
    c: &Case,
    loras: &[LoraSpec],
    p: Precision,
    layout: TransformerLayout,
    out: &Path,
) -> (Array, Array, f32) {
    let (inputs, outputs) = reference(c.reference, layout);
    let mut o = BuildOptions::new(c.model, &c.weights);
    o.precision = p;
    o.io_precision = Some(Precision::Fp32);
    o.sizes = mlc::compiler::Sizes::Latent(vec![[16, 16]]);
    o.model_options = ModelOptions {
        layout,
        ..Default::default()
    };
    o.loras = loras.to_vec();
    o.output = Some(out.join(format!(
        "{}_{}_{p:?}_{layout:?}.mlpackage",
        c.tag,
        loras.len()
    )));
    let pkg = build(&o).unwrap().package;
    let got = mlc::run::run_path(&pkg, &inputs)
        .unwrap()
        .remove("noise_pred")
        .unwrap();
    let want = outputs[c.with].clone();
    let e = relative_error(&got, &want);
    (got, want, e)
}

#[test]
fn unet_loras_match_diffusers() {
    let out = out_dir("lora_numerics");
    let sd15 = unet("sd15/diffusers/diffusion_pytorch_model.safetensors");
    let sdxl = unet("sdxl/diffusers/diffusion_pytorch_model.safetensors");
    let cases = [
        Case {
            tag: "kohya_sd15_w1",
            model: "sd-unet",
            weights: sd15.clone(),
            loras: vec![spec("kohya_sd15.safetensors", 1.0)],
            reference: "kohya_sd15_ref.safetensors",
            with: "noise_pred_w1_0",
            base: Some("noise_pred_base"),
        },
        Case {
            tag: "kohya_sd15_w06",
            model: "sd-unet",
            weights: sd15.clone(),
            loras: vec![spec("kohya_sd15.safetensors", 0.6)],
            reference: "kohya_sd15_ref.safetensors",
            with: "noise_pred_w0_6",
            base: None,
        },
        Case {
            tag: "kohya_sd15_single_file",
            model: "sd-unet",
            weights: unet("sd15/original.safetensors"),
            loras: vec![spec("kohya_sd15.safetensors", 1.0)],
            reference: "kohya_sd15_ref.safetensors",
            with: "noise_pred_w1_0",
            base: None,
        },
        Case {
            tag: "kohya_sdxl_sgm",
            model: "sdxl-unet",
            weights: sdxl.clone(),
            loras: vec![spec("kohya_sdxl_sgm.safetensors", 1.0)],
            reference: "kohya_sdxl_sgm_ref.safetensors",
            with: "noise_pred_w1_0",
            base: Some("noise_pred_base"),
        },
        Case {
            tag: "kohya_sdxl_sgm_single_file",
            model: "sdxl-unet",
            weights: unet("sdxl/original.safetensors"),
            loras: vec![spec("kohya_sdxl_sgm.safetensors", 1.0)],
            reference: "kohya_sdxl_sgm_ref.safetensors",
            with: "noise_pred_w1_0",
            base: None,
        },
        Case {
            tag: "peft_sdxl",
            model: "sdxl-unet",
            weights: sdxl.clone(),
            loras: vec![spec("peft_sdxl.safetensors", 0.8)],
            reference: "peft_sdxl_ref.safetensors",
            with: "noise_pred_w0_8",
            base: Some("noise_pred_base"),
        },
        Case {
            tag: "two_loras",
            model: "sd-unet",
            weights: sd15.clone(),
            loras: vec![
                spec("kohya_sd15.safetensors", 1.0),
                spec("kohya_sd15_b.safetensors", -0.5),
            ],
            reference: "two_lora_sd15_ref.safetensors",
            with: "noise_pred",
            base: None,
        },
    ];
    let (mut report, mut failed) = (String::new(), Vec::new());
    let mut check = |what: String, e: f32, ok: bool| {
        report += &format!("{what}: {e:.2e}\n");
        if !ok {
            failed.push(format!("{what}: {e:.2e}"));
        }
    };
    for c in &cases {
        let (_, _, e) = run_unet(
            c,
            &c.loras,
            Precision::Fp32,
            TransformerLayout::Standard,
            &out,
        );
        check(format!("{} fp32", c.tag), e, e <= 1e-4);
        // Without the LoRA the output must be far from the reference (the LoRA is seen) and,
        // where the fixture has it, at diffusers' base output.
        let (without, want, e) =
            run_unet(c, &[], Precision::Fp32, TransformerLayout::Standard, &out);
        check(format!("{} without the LoRA", c.tag), e, e > 1e-2);
        if let Some(base) = c.base {
            let (_, outputs) = reference(c.reference, TransformerLayout::Standard);
            let e = relative_error(&without, &outputs[base]);
            check(format!("{} base", c.tag), e, e <= 1e-4);
        }
        let _ = want;
    }
    for c in [&cases[0], &cases[3], &cases[5], &cases[6]] {
        for layout in [TransformerLayout::Standard, TransformerLayout::Ane] {
            let (_, _, e) = run_unet(c, &c.loras, Precision::Fp16, layout, &out);
            check(format!("{} fp16 {layout:?}", c.tag), e, e <= 5e-3);
        }
    }
    eprintln!("{report}");
    assert!(failed.is_empty(), "{failed:#?}\n{report}");
}

/// The text-encoder half of the kohya SD 1.x LoRA (`lora_te_`) on CLIP-L, at 1.0 and 0.6.
#[test]
fn text_encoder_lora_matches_diffusers() {
    let out = out_dir("lora_numerics_clip");
    let all = mlc::run::read_safetensors(&lora("kohya_sd15_ref.safetensors")).unwrap();
    let ids = BTreeMap::from([("input_ids".to_string(), all["input_ids"].clone())]);
    let weights = shared("fixtures/clip/clip_l/model.safetensors");
    for (loras, want, tol, p) in [
        (
            vec![spec("kohya_sd15.safetensors", 1.0)],
            "last_hidden_state_w1_0",
            1e-4,
            Precision::Fp32,
        ),
        (
            vec![spec("kohya_sd15.safetensors", 0.6)],
            "last_hidden_state_w0_6",
            1e-4,
            Precision::Fp32,
        ),
        (
            vec![spec("kohya_sd15.safetensors", 1.0)],
            "last_hidden_state_w1_0",
            5e-3,
            Precision::Fp16,
        ),
        (vec![], "last_hidden_state_base", 1e-4, Precision::Fp32),
    ] {
        let mut o = BuildOptions::new("clip-l", &weights);
        o.precision = p;
        o.io_precision = Some(Precision::Fp32);
        o.loras = loras.clone();
        o.output = Some(out.join(format!("{want}_{p:?}.mlpackage")));
        let pkg = build(&o).unwrap().package;
        let got = mlc::run::run_path(&pkg, &ids).unwrap();
        let e = relative_error(&got["last_hidden_state"], &all[want]);
        assert!(e <= tol, "{want} {p:?}: {e:.2e} > {tol:.0e}");
        if loras.is_empty() {
            let e = relative_error(&got["last_hidden_state"], &all["last_hidden_state_w1_0"]);
            assert!(e > 1e-2, "the LoRA changes nothing measurable: {e:.2e}");
        }
    }
}

/// A switchable-adapter package (iOS18): the default function `main` is the base model, each
/// adapter a function computing what the LoRA fused into the weights computes, and weight.bin
/// holds the base weights once (reported against the base package and one fused copy each).
#[test]
fn adapter_functions_match_their_fused_twins() {
    let out = out_dir("lora_adapters");
    let sd15 = unet("sd15/diffusers/diffusion_pytorch_model.safetensors");
    let options = |p: Precision, layout: TransformerLayout, tag: &str| {
        let mut o = BuildOptions::new("sd-unet", &sd15);
        o.precision = p;
        o.io_precision = Some(Precision::Fp32);
        o.target = mlc::mil::Target::Ios18;
        o.sizes = mlc::compiler::Sizes::Latent(vec![[16, 16]]);
        o.model_options = ModelOptions {
            layout,
            ..Default::default()
        };
        o.output = Some(out.join(format!("{tag}_{p:?}_{layout:?}.mlpackage")));
        o
    };
    let adapters = vec![
        mlc::lora::AdapterSpec::parse(&format!(
            "style={}",
            lora("kohya_sd15.safetensors").display()
        ))
        .unwrap(),
        mlc::lora::AdapterSpec::parse(&format!(
            "b={}:-0.5",
            lora("kohya_sd15_b.safetensors").display()
        ))
        .unwrap(),
    ];
    let weight_bin = |pkg: &Path| {
        std::fs::metadata(pkg.join("Data/com.apple.CoreML/weights/weight.bin"))
            .unwrap()
            .len()
    };
    for (p, layout, tol) in [
        (Precision::Fp32, TransformerLayout::Standard, 1e-4),
        (Precision::Fp16, TransformerLayout::Ane, 5e-3),
    ] {
        let (inputs, outputs) = reference("kohya_sd15_ref.safetensors", layout);
        let mut o = options(p, layout, "adapters");
        o.adapters = adapters.clone();
        let report = build(&o).unwrap();
        let pkg = mlc::package::read_package(&report.package).unwrap();
        let run = |f: &str| {
            mlc::run::run(&pkg, f, &inputs)
                .unwrap()
                .remove("noise_pred")
                .unwrap()
        };
        // Each function against its fused twin, built with --lora.
        let mut twins = Vec::new();
        for (function, loras) in [
            ("main", vec![]),
            ("style", vec![spec("kohya_sd15.safetensors", 1.0)]),
            ("b", vec![spec("kohya_sd15_b.safetensors", -0.5)]),
        ] {
            let mut t = options(p, layout, &format!("twin_{function}"));
            t.loras = loras;
            let twin = build(&t).unwrap().package;
            if function == "style" {
                let listed = mlc::inspect::loras(&mlc::package::read_package(&twin).unwrap());
                assert!(
                    listed.starts_with("lora (fused): kohya_sd15 at 1"),
                    "{listed}"
                );
            }
            let want = mlc::run::run_path(&twin, &inputs)
                .unwrap()
                .remove("noise_pred")
                .unwrap();
            let e = relative_error(&run(function), &want);
            eprintln!("{p:?} {layout:?} function {function} vs its fused twin: {e:.2e}");
            assert!(e <= tol, "{p:?} {layout:?} {function}: {e:.2e} > {tol:.0e}");
            twins.push(twin);
        }
        // And against diffusers.
        for (function, reference) in [("main", "noise_pred_base"), ("style", "noise_pred_w1_0")] {
            let e = relative_error(&run(function), &outputs[reference]);
            assert!(
                e <= tol,
                "{p:?} {layout:?} {function} vs diffusers: {e:.2e}"
            );
        }
        let e = relative_error(&run("style"), &run("main"));
        assert!(e > 1e-2, "the adapter changes nothing: {e:.2e}");
        let (bin, base) = (weight_bin(&report.package), weight_bin(&twins[0]));
        eprintln!(
            "{p:?} {layout:?}: weight.bin {bin} bytes; the base model alone {base}; base + one fused copy per adapter {}",
            3 * base
        );
        // The base weights once, plus the adapters' small pairs (kohya_sd15 rank 4 on 207
        // weights, kohya_sd15_b rank 2 on 108): well under a second copy.
        assert!(bin > base && bin < base + base / 5, "{bin} vs {base}");
    }
}
