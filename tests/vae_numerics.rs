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
    o.part = Some(c.part.into());
    o.precision = c.precision;
    o.io_precision = Some(Precision::Fp32);
    o.sizes = sizes;
    o.model_options = options;
    o.output = Some(out);
    build(&o)
        .unwrap_or_else(|e| panic!("{}: {e}", c.model))
        .package
}

const FAMILIES: [(&str, &str); 3] = [
    ("sd-vae", "sd"),
    ("flux1-vae", "flux1"),
    ("flux2-vae", "flux2"),
];

#[test]
fn decoders_match_pytorch_in_both_layouts() {
    let dir = out_dir("vae_decoders");
    for (model, family) in FAMILIES {
        for layout in ["diffusers", "original"] {
            for (precision, tol) in [(Precision::Fp32, 1e-4), (Precision::Fp16, 5e-3)] {
                let c = Case {
                    model,
                    family,
                    part: Part::DECODER,
                    layout,
                    precision,
                };
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
                    let out =
                        mlc::run::run_path(&pkg, &BTreeMap::from([("latent".into(), latent)]))
                            .unwrap();
                    let e = relative_error(&out["image"], &f["image"]);
                    println!("decode {tag} {size}: relative max error {e:.2e}");
                    assert!(e <= tol, "{tag} {size}: {e} > {tol}");
                }
            }
        }
    }
}

#[test]
fn encoders_match_pytorch_mean_and_logvar() {
    let dir = out_dir("vae_encoders");
    for (model, family) in FAMILIES {
        for (precision, tol) in [(Precision::Fp32, 1e-4), (Precision::Fp16, 5e-3)] {
            let c = Case {
                model,
                family,
                part: Part::ENCODER,
                layout: "original",
                precision,
            };
            let tag = format!("{model}_{precision:?}").to_lowercase();
            let options = ModelOptions {
                logvar_output: true,
                ..Default::default()
            };
            let pkg = build_case(
                &c,
                Sizes::Image(vec![[64, 64], [48, 80]]),
                options,
                dir.join(format!("{tag}.mlpackage")),
            );
            for size in ["8x8", "6x10"] {
                let mut f = fixture(family, &format!("encode_{size}"));
                let image = f.remove("image").unwrap();
                let out =
                    mlc::run::run_path(&pkg, &BTreeMap::from([("image".into(), image)])).unwrap();
                let em = relative_error(&out["latent"], &f["mean"]);
                let el = relative_error(&out["logvar"], &f["logvar"]);
                println!("encode {tag} {size}: mean {em:.2e}, logvar {el:.2e}");
                assert!(em <= tol && el <= tol, "{tag} {size}: {em}, {el} > {tol}");
            }
        }
    }
}

#[test]
fn both_layouts_give_byte_identical_packages() {
    let dir = out_dir("vae_layouts");
    for (model, family) in FAMILIES {
        for part in [Part::DECODER, Part::ENCODER] {
            let bytes: Vec<Vec<u8>> = ["diffusers", "original"]
                .iter()
                .map(|layout| {
                    let c = Case {
                        model,
                        family,
                        part,
                        layout,
                        precision: Precision::Fp16,
                    };
                    let pkg = build_case(
                        &c,
                        Sizes::Latent(vec![[8, 8]]),
                        ModelOptions::default(),
                        dir.join(format!("{model}_{part}_{layout}.mlpackage")),
                    );
                    let data = pkg.join("Data/com.apple.CoreML");
                    let mut b = std::fs::read(data.join("model.mlmodel")).unwrap();
                    b.extend(std::fs::read(data.join("weights/weight.bin")).unwrap());
                    b
                })
                .collect();
            assert!(bytes[0] == bytes[1], "{model} {part}: the layouts differ");
        }
    }
}

#[test]
fn flux2_packed_latents_fold_batch_norm_and_unpatchify() {
    let dir = out_dir("vae_packed");
    let c = Case {
        model: "flux2-vae",
        family: "flux2",
        part: Part::DECODER,
        layout: "diffusers",
        precision: Precision::Fp32,
    };
    let options = ModelOptions {
        packed_input: true,
        ..Default::default()
    };
    // With packed input, latent sizes are the packed ones: 4x4 and 3x5 for 8x8 and 6x10.
    let pkg = build_case(
        &c,
        Sizes::Image(vec![[64, 64], [48, 80]]),
        options,
        dir.join("p.mlpackage"),
    );
    for size in ["8x8", "6x10"] {
        let mut f = fixture("flux2", &format!("packed_{size}"));
        let packed = f.remove("packed").unwrap();
        let out = mlc::run::run_path(&pkg, &BTreeMap::from([("latent".into(), packed)])).unwrap();
        let e = relative_error(&out["image"], &f["image"]);
        println!("flux2 packed {size}: relative max error {e:.2e}");
        assert!(e <= 1e-4, "{size}: {e}");
    }
}

#[test]
fn latent_scaling_folds_into_both_parts() {
    let dir = out_dir("vae_scaling");
    // flux1: z_model = (z - 0.1159) * 0.3611, so the scaled decoder takes z_model.
    let (scaling, shift) = (0.3611f32, 0.1159f32);
    let c = Case {
        model: "flux1-vae",
        family: "flux1",
        part: Part::DECODER,
        layout: "diffusers",
        precision: Precision::Fp32,
    };
    let options = ModelOptions {
        latent_scaling: true,
        ..Default::default()
    };
    let pkg = build_case(
        &c,
        Sizes::Latent(vec![[8, 8]]),
        options.clone(),
        dir.join("d.mlpackage"),
    );
    let mut f = fixture("flux1", "decode_8x8");
    let z = f.remove("latent").unwrap();
    let z_model = Array::new(
        z.shape.clone(),
        z.data.iter().map(|v| (v - shift) * scaling).collect(),
    );
    let out = mlc::run::run_path(&pkg, &BTreeMap::from([("latent".into(), z_model)])).unwrap();
    let e = relative_error(&out["image"], &f["image"]);
    assert!(e <= 1e-4, "scaled decoder: {e}");

    let c = Case {
        part: Part::ENCODER,
        ..c
    };
    let pkg = build_case(
        &c,
        Sizes::Latent(vec![[8, 8]]),
        options,
        dir.join("e.mlpackage"),
    );
    let mut f = fixture("flux1", "encode_8x8");
    let image = f.remove("image").unwrap();
    let out = mlc::run::run_path(&pkg, &BTreeMap::from([("image".into(), image)])).unwrap();
    let mean = &f["mean"];
    let want = Array::new(
        mean.shape.clone(),
        mean.data.iter().map(|v| (v - shift) * scaling).collect(),
    );
    let e = relative_error(&out["latent"], &want);
    assert!(e <= 1e-4, "scaled encoder: {e}");
}

#[test]
fn multifunction_ios18_uses_the_fused_attention_and_matches() {
    let dir = out_dir("vae_multifunction");
    let mut o = BuildOptions::new("sd-vae", weights("sd", "diffusers"));
    o.sizes = Sizes::Latent(vec![[8, 8], [6, 10]]);
    o.multifunction = true;
    o.target = Target::Ios18;
    o.io_precision = Some(Precision::Fp32);
    o.output = Some(dir.join("mf.mlpackage"));
    let pkg = build(&o).unwrap().package;
    let p = mlc::package::read_package(&pkg).unwrap();
    let text = mlc::mil::print::print_model(&p.model);
    assert!(
        text.contains("scaled_dot_product_attention("),
        "no fused attention"
    );
    for (size, function) in [("8x8", "decode_64x64"), ("6x10", "decode_48x80")] {
        let mut f = fixture("sd", &format!("decode_{size}"));
        let latent = f.remove("latent").unwrap();
        let out =
            mlc::run::run(&p, function, &BTreeMap::from([("latent".into(), latent)])).unwrap();
        let e = relative_error(&out["image"], &f["image"]);
        assert!(e <= 5e-3, "{function}: {e}");
    }
}

#[test]
fn bad_inputs_are_one_line_errors_and_write_nothing() {
    let dir = out_dir("vae_errors");
    let out = dir.join("x.mlpackage");
    let attempt = |model: &str, w: PathBuf, part: Part, edit: &dyn Fn(&mut BuildOptions)| {
        let mut o = BuildOptions::new(model, w);
        o.part = Some(part.into());
        o.sizes = Sizes::Latent(vec![[8, 8]]);
        o.output = Some(out.clone());
        edit(&mut o);
        let e = build(&o)
            .err()
            .unwrap_or_else(|| panic!("{model} built"))
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(!out.exists());
        e
    };
    let none: &dyn Fn(&mut BuildOptions) = &|_| {};
    // Wrong family: a FLUX.1 VAE asked to be SD's, TAESD weights asked to be a VAE.
    let e = attempt("sd-vae", weights("flux1", "diffusers"), Part::DECODER, none);
    assert!(
        e.contains("16 latent channels") && e.contains("sd-vae has 4"),
        "{e}"
    );
    let e = attempt(
        "flux1-vae",
        weights("flux2", "original"),
        Part::DECODER,
        none,
    );
    assert!(e.contains("32 latent channels"), "{e}");
    let e = attempt("sd-vae", taef2_weights(), Part::DECODER, none);
    assert!(e.contains("taef2_decoder.safetensors"), "{e}");
    // A config.json that disagrees with the tensors.
    let tmp = dir.join("cfg");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(
        weights("sd", "diffusers"),
        tmp.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(vae_dir("sd").join("diffusers/config.json")).unwrap();
    std::fs::write(
        tmp.join("config.json"),
        cfg.replace("\"latent_channels\": 4", "\"latent_channels\": 8"),
    )
    .unwrap();
    let e = attempt(
        "sd-vae",
        tmp.join("diffusion_pytorch_model.safetensors"),
        Part::DECODER,
        none,
    );
    assert!(
        e.contains("config.json") && e.contains("latent_channels"),
        "{e}"
    );
    // Missing and extra keys.
    let w = mlc::weights::Weights::load(&weights("sd", "diffusers"))
        .unwrap()
        .tensors;
    let mut missing = w.clone();
    missing.remove("decoder.mid_block.attentions.0.to_q.weight");
    let mut extra = w.clone();
    extra.insert(
        "decoder.surprise.weight".into(),
        mlc::tensor::Tensor::scalar(1.0),
    );
    for (name, tensors, want) in [
        (
            "missing",
            missing,
            "decoder.mid_block.attentions.0.to_q.weight",
        ),
        ("extra", extra, "decoder.surprise.weight"),
    ] {
        let p = dir.join(format!("{name}.safetensors"));
        write_safetensors(&p, &tensors);
        let e = attempt("sd-vae", p, Part::DECODER, none);
        assert!(e.contains(want), "{name}: {e}");
    }
    // Image sizes that are not multiples of 8; options a model has no meaning for.
    let e = attempt("sd-vae", weights("sd", "diffusers"), Part::ENCODER, &|o| {
        o.sizes = Sizes::Image(vec![[60, 64]])
    });
    assert!(e.contains("multiples of 8"), "{e}");
    let e = attempt("sd-vae", weights("sd", "diffusers"), Part::DECODER, &|o| {
        o.model_options.packed_input = true
    });
    assert!(
        e.contains("sd-vae decoder does not take --input packed"),
        "{e}"
    );
}

#[test]
fn fp16_activation_mode_reports_the_largest_value_and_overflow() {
    let dir = out_dir("vae_fp16_activations");
    let c = Case {
        model: "sd-vae",
        family: "sd",
        part: Part::DECODER,
        layout: "diffusers",
        precision: Precision::Fp16,
    };
    let pkg = build_case(
        &c,
        Sizes::Latent(vec![[8, 8]]),
        ModelOptions::default(),
        dir.join("d.mlpackage"),
    );
    let p = mlc::package::read_package(&pkg).unwrap();
    let mut f = fixture("sd", "decode_8x8");
    let latent = f.remove("latent").unwrap();
    let on = mlc::mil::eval::EvalOptions {
        fp16_activations: true,
        ..Default::default()
    };
    let run = |latent: Array| {
        mlc::run::run_with(&p, "main", &BTreeMap::from([("latent".into(), latent)]), on).unwrap()
    };
    let (out, stats) = run(latent.clone());
    assert!(
        stats.largest > 1.0 && stats.largest < mlc::mil::eval::FP16_MAX,
        "{stats:?}"
    );
    assert!(
        !stats.largest_at.is_empty() && stats.overflowed.is_empty(),
        "{stats:?}"
    );
    // Rounding every activation as a device does roughly doubles the error of fp16 weights
    // alone (2.8e-3 of the peak here), still far from a wrong image.
    let e = relative_error(&out["image"], &f["image"]);
    println!(
        "sd-vae fp16 with fp16 activations: relative max error {e:.2e}, largest {}",
        stats.largest
    );
    assert!(e <= 1e-2, "{e}");
    // A latent 10^5 times too large overflows fp16 inside the model, as it would on a device.
    let huge = Array::new(
        latent.shape.clone(),
        latent.data.iter().map(|v| v * 1e5).collect(),
    );
    let (out, stats) = run(huge);
    assert!(!stats.overflowed.is_empty(), "{stats:?}");
    assert!(out["image"].data.iter().any(|v| !v.is_finite()));

    // The CLI reports it.
    let input = dir.join("latent.safetensors");
    mlc::run::write_safetensors(&BTreeMap::from([("latent".to_string(), latent)]), &input).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args([
            "run",
            pkg.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ])
        .args([
            "--output",
            dir.join("image.png").to_str().unwrap(),
            "--fp16-activations",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("largest magnitude"),
        "{err}"
    );
}

#[test]
fn image_input_and_output_map_pixels_to_the_model_range() {
    let dir = out_dir("vae_image_io");
    // Encoder with an image input: pixels 0..255 in, the same latent as the [-1, 1] array.
    let mut f = fixture("sd", "encode_8x8");
    let image = f.remove("image").unwrap();
    let pixels = Array::new(
        image.shape.clone(),
        image.data.iter().map(|v| (v + 1.0) * 127.5).collect(),
    );
    let mut o = BuildOptions::new("sd-vae", weights("sd", "diffusers"));
    o.part = Some(Part::ENCODER.into());
    o.precision = Precision::Fp32;
    o.sizes = Sizes::Image(vec![[64, 64]]);
    o.input_type = mlc::compiler::InputType::Image;
    o.output = Some(dir.join("enc.mlpackage"));
    let pkg = build(&o).unwrap().package;
    let p = mlc::package::read_package(&pkg).unwrap();
    assert!(mlc::run::is_image_input(&p, "main", "image"));
    let out = mlc::run::run(&p, "main", &BTreeMap::from([("image".into(), pixels)])).unwrap();
    let e = relative_error(&out["latent"], &f["mean"]);
    assert!(e <= 1e-4, "image-input encoder: {e}");
    // Decoder with an image output: [-1, 1] becomes 0..255, clamped.
    let mut f = fixture("sd", "decode_8x8");
    let latent = f.remove("latent").unwrap();
    let mut o = BuildOptions::new("sd-vae", weights("sd", "diffusers"));
    o.precision = Precision::Fp32;
    o.sizes = Sizes::Latent(vec![[8, 8]]);
    o.output_type = mlc::compiler::OutputType::Image;
    o.output = Some(dir.join("dec.mlpackage"));
    let pkg = build(&o).unwrap().package;
    let out = mlc::run::run_path(&pkg, &BTreeMap::from([("latent".into(), latent)])).unwrap();
    let want = Array::new(
        f["image"].shape.clone(),
        f["image"]
            .data
            .iter()
            .map(|v| (v.clamp(-1.0, 1.0) + 1.0) * 127.5)
            .collect(),
    );
    let e = relative_error(&out["image"], &want);
    assert!(e <= 1e-4, "image-output decoder: {e}");
    // A decoder's input is a latent, not an image.
    let mut o = BuildOptions::new("sd-vae", weights("sd", "diffusers"));
    o.input_type = mlc::compiler::InputType::Image;
    o.output = Some(dir.join("bad.mlpackage"));
    let e = build(&o).err().unwrap().to_string();
    assert!(
        e.contains("sd-vae decoder does not take --input-type image"),
        "{e}"
    );
}

/// Compression on the small random VAEs is a smoke test of the path (tables, scales, lowering,
/// coremltools), not a quality figure: random weights have no structure for k-means to find.
/// A broken table or scale gives errors of order 1; these bounds are 2-4x the measured errors.
#[test]
fn compression_and_channels_last_work_on_full_vaes() {
    use mlc::compiler::{ArrayLayout, Compression, QuantMode};
    let dir = out_dir("vae_compressed");
    let mut f = fixture("sd", "decode_8x8");
    let latent = f.remove("latent").unwrap();
    let settings: [(&str, Option<Compression>, f32); 3] = [
        (
            "pal8",
            Some(Compression::Palettize {
                bits: 8,
                group_size: None,
                min_elements: 2048,
            }),
            1e-1,
        ),
        (
            "int8",
            Some(Compression::Quantize {
                mode: QuantMode::Int8,
                block_size: None,
                min_elements: 2048,
            }),
            1e-1,
        ),
        ("nhwc", None, 5e-3),
    ];
    for (tag, compression, tol) in settings {
        let mut o = BuildOptions::new("sd-vae", weights("sd", "diffusers"));
        o.sizes = Sizes::Latent(vec![[8, 8]]);
        o.io_precision = Some(Precision::Fp32);
        o.compression = compression;
        let mut input = latent.clone();
        if tag == "nhwc" {
            o.input_layout = ArrayLayout::Nhwc;
            o.output_layout = ArrayLayout::Nhwc;
            input = mlc::kernels::transpose(&latent, &[0, 2, 3, 1]);
        }
        o.output = Some(dir.join(format!("{tag}.mlpackage")));
        let pkg = build(&o).unwrap().package;
        let mut out = mlc::run::run_path(&pkg, &BTreeMap::from([("latent".into(), input)]))
            .unwrap()
            .remove("image")
            .unwrap();
        if tag == "nhwc" {
            out = mlc::kernels::transpose(&out, &[0, 3, 1, 2]);
        }
        let e = relative_error(&out, &f["image"]);
        println!("sd-vae decoder {tag}: relative max error {e:.2e}");
        assert!(e <= tol, "{tag}: {e} > {tol}");
    }
}

#[test]
fn a_full_sd_checkpoint_gives_the_vae_package() {
    // The VAE of a full SD checkpoint sits under `first_stage_model.`, beside the UNet and the
    // text encoder; only the VAE is read, and the package equals the bare VAE file's.
    let dir = out_dir("vae_full_checkpoint");
    let mut t = mlc::weights::Weights::load(&weights("sd", "original"))
        .unwrap()
        .tensors;
    t = t
        .into_iter()
        .map(|(k, v)| (format!("first_stage_model.{k}"), v))
        .collect();
    t.insert(
        "model.diffusion_model.input_blocks.0.0.weight".into(),
        mlc::tensor::Tensor::f32(vec![2, 2], vec![1.0; 4]),
    );
    t.insert(
        "cond_stage_model.transformer.text_model.final_layer_norm.weight".into(),
        mlc::tensor::Tensor::f32(vec![3], vec![1.0; 3]),
    );
    let full = dir.join("sd_full.safetensors");
    write_safetensors(&full, &t);
    let bytes = |w: PathBuf, name: &str| {
        let mut o = BuildOptions::new("sd-vae", w);
        o.sizes = Sizes::Latent(vec![[8, 8]]);
        o.output = Some(dir.join(name));
        let pkg = build(&o).unwrap().package.join("Data/com.apple.CoreML");
        let mut b = std::fs::read(pkg.join("model.mlmodel")).unwrap();
        b.extend(std::fs::read(pkg.join("weights/weight.bin")).unwrap());
        b
    };
    let vae = bytes(weights("sd", "original"), "vae.mlpackage");
    assert!(bytes(full, "full.mlpackage") == vae);
    // The same checkpoint as a PyTorch `.ckpt` (state_dict under "state_dict", beside
    // "global_step"), the form SD 1.x checkpoints are published in.
    let ckpt = dir.join("sd_full.ckpt");
    write_ckpt(&ckpt, &t);
    assert!(bytes(ckpt, "ckpt.mlpackage") == vae);
}

#[test]
fn multifunction_chunks_attention_per_function() {
    // 128x128 latents make 16,384 positions: an unchunked fp16 score matrix is 512 MiB. Each
    // function is static, so its attention is split into chunks of at most 64 MiB.
    let dir = out_dir("vae_chunks");
    let mut o = BuildOptions::new("sd-vae", weights("sd", "diffusers"));
    o.sizes = Sizes::Latent(vec![[8, 8], [128, 128]]);
    o.multifunction = true;
    o.target = Target::Ios18;
    o.output = Some(dir.join("mf.mlpackage"));
    let r = build(&o).unwrap();
    let p = mlc::package::read_package(&r.package).unwrap();
    let text = mlc::mil::print::print_model(&p.model);
    let big = text
        .split("decode_1024x1024[")
        .nth(1)
        .expect("function decode_1024x1024");
    let big = big.split("decode_64x64[").next().unwrap();
    assert_eq!(big.matches("= scaled_dot_product_attention(").count(), 8);
    let l = r.largest_intermediate.unwrap();
    assert!(!l.name.contains("attention"), "{l:?}");

    // Enumerated sizes (one symbolic graph): 8 parts of h*w/8 divide both 64 and 16,384
    // queries, so one MIL split cuts them and no score matrix passes 64 MiB at either size.
    o.multifunction = false;
    o.target = Target::Ios16;
    o.output = Some(dir.join("enumerated.mlpackage"));
    let r = build(&o).unwrap();
    let l = r.largest_intermediate.unwrap();
    assert!(!l.name.contains("attention"), "{l:?}");
    let p = mlc::package::read_package(&r.package).unwrap();
    let text = mlc::mil::print::print_model(&p.model);
    let splits: Vec<&str> = text.lines().filter(|l| l.contains("= split(")).collect();
    assert_eq!(splits.len(), 1, "{text}");
    assert!(splits[0].contains("num_splits=8"), "{}", splits[0]);
    assert_eq!(text.matches("= softmax(").count(), 8);

    // 6x10 and 128x128: the larger needs 8 parts, and no count from 8 to 60 divides both 60
    // and 16,384, so the matrix stays whole and the report names it.
    o.sizes = Sizes::Latent(vec![[6, 10], [128, 128]]);
    o.output = Some(dir.join("indivisible.mlpackage"));
    let l = build(&o).unwrap().largest_intermediate.unwrap();
    assert!(
        l.name.contains("attention") && l.bytes == 512 << 20,
        "{l:?}"
    );
}
