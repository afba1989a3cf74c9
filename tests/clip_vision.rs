//! The CLIP image encoder (`clip-vision`) against transformers (5.24, fp32) on the small random
//! encoder in ../shared/fixtures/clip/vision: both cases (image0, image1), both outputs
//! (last_hidden_state, image_embeds), fp32 and fp16 packages evaluated through the emitted
//! package, with the normalised `pixel_values` array or an image input (0..255, CLIP's mean and
//! std folded in). Tolerances are relative to the reference's largest magnitude: fp32 1e-4, fp16
//! 5e-3. Also `mlc run` with a PNG or safetensors input, and bad inputs: one-line errors,
//! nothing written.

mod common;

use common::*;
use mlc::compiler::{build, BuildOptions, InputType, Precision, Sizes};
use mlc::kernels::Array;
use mlc::models::TransformerLayout;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    shared("fixtures/clip/vision")
}

fn weights() -> PathBuf {
    dir().join("model.safetensors")
}

fn case(name: &str) -> BTreeMap<String, Array> {
    mlc::run::read_safetensors(&dir().join(format!("{name}.safetensors"))).unwrap()
}

fn options(model: &str, weights: &Path, precision: Precision, out: PathBuf) -> BuildOptions {
    let mut o = BuildOptions::new(model, weights);
    o.precision = precision;
    o.io_precision = Some(Precision::Fp32);
    o.output = Some(out);
    o
}

/// The fixture's [0, 1] image as the 0..255 values a Core ML image input takes (unrounded: the
/// evaluator takes floats, so this checks the folded normalisation, not 8-bit quantization).
fn pixels(image: &Array) -> Array {
    Array::new(
        image.shape.clone(),
        image.data.iter().map(|v| v * 255.0).collect(),
    )
}

#[test]
fn vision_encoder_matches_transformers() {
    let out = out_dir("clip_vision");
    let layouts = [
        (InputType::Array, TransformerLayout::Standard),
        (InputType::Image, TransformerLayout::Standard),
        (InputType::Array, TransformerLayout::Ane),
    ];
    for (precision, tol) in [(Precision::Fp32, 1e-4), (Precision::Fp16, 5e-3)] {
        for (input_type, layout) in layouts {
            let tag = format!("clip-vision_{precision:?}_{input_type:?}_{layout:?}").to_lowercase();
            let mut o = options(
                "clip-vision",
                &weights(),
                precision,
                out.join(format!("{tag}.mlpackage")),
            );
            o.input_type = input_type;
            o.model_options.layout = layout;
            let pkg = build(&o).unwrap_or_else(|e| panic!("{tag}: {e}")).package;
            let p = mlc::package::read_package(&pkg).unwrap();
            let image_in = input_type == InputType::Image;
            assert_eq!(
                mlc::run::is_image_input(&p, "main", "pixel_values"),
                image_in
            );
            for c in ["image0", "image1"] {
                let f = case(c);
                let x = if image_in {
                    pixels(&f["image"])
                } else {
                    f["pixel_values"].clone()
                };
                let got = mlc::run::run(&p, "main", &BTreeMap::from([("pixel_values".into(), x)]))
                    .unwrap();
                for name in ["last_hidden_state", "image_embeds"] {
                    assert_within(&format!("{tag} {c} {name}"), &got[name], &f[name], tol);
                }
            }
        }
    }
}

/// The `ane` layout leaves one layout hint of the Neural Engine report where `standard` has
/// dozens: the flattening of the patch grid ([1, D, n, n] → [1, D, 1, n²]) that turns the patch
/// convolution's output into tokens.
#[test]
fn ane_layout_leaves_only_the_patch_flattening() {
    use mlc::ane::Hint;
    let out = out_dir("clip_vision_layouts");
    let mut hints = Vec::new();
    for layout in [TransformerLayout::Standard, TransformerLayout::Ane] {
        let tag = format!("clip-vision_{layout:?}").to_lowercase();
        let mut o = options(
            "clip-vision",
            &weights(),
            Precision::Fp16,
            out.join(format!("{tag}.mlpackage")),
        );
        o.io_precision = None;
        o.model_options.layout = layout;
        let r = build(&o).unwrap().ane;
        println!("{tag}: {} ops, hints {:?}", r.ops.len(), r.hint_counts());
        assert!(r.fits(), "{:?}", r.misfits().collect::<Vec<_>>());
        hints.push(r);
    }
    assert!(hints[0].hint_counts().values().sum::<usize>() > 30);
    let ane: Vec<_> = hints[1]
        .ops
        .iter()
        .filter(|v| !v.hints.is_empty())
        .map(|v| (v.name.as_str(), v.hints.clone()))
        .collect();
    assert_eq!(ane, [("patches", vec![Hint::ReshapeLastAxis])]);
    oracle(&out);
}

/// iOS18 keeps attention as one `scaled_dot_product_attention` per layer, without a mask.
#[test]
fn fused_attention_without_a_mask_matches_on_ios18() {
    let out = out_dir("clip_vision_ios18");
    let mut o = options(
        "clip-vision",
        &weights(),
        Precision::Fp16,
        out.join("clip-vision_fp16_ios18.mlpackage"),
    );
    o.target = mlc::mil::Target::Ios18;
    let pkg = build(&o).unwrap().package;
    let p = mlc::package::read_package(&pkg).unwrap();
    let text = mlc::mil::print::print_model(&p.model);
    assert_eq!(
        text.matches("scaled_dot_product_attention(").count(),
        3,
        "one fused op per layer: {text}"
    );
    assert!(!text.contains("attn_mask"), "{text}");
    for c in ["image0", "image1"] {
        let f = case(c);
        let x = f["pixel_values"].clone();
        let got = mlc::run::run(&p, "main", &BTreeMap::from([("pixel_values".into(), x)])).unwrap();
        for name in ["last_hidden_state", "image_embeds"] {
            let e = relative_error(&got[name], &f[name]);
            println!("clip-vision_fp16_ios18 {c} {name}: relative max error {e:.2e}");
            assert!(e <= 5e-3, "ios18 {c} {name}: {e}");
        }
    }
}

/// The image input's mean and std are per channel: the MIL scales by three values, and a grey
/// image gives what its per-channel normalised planes give.
#[test]
fn image_input_normalises_each_channel() {
    let out = out_dir("clip_vision_channels");
    let mut o = options(
        "clip-vision",
        &weights(),
        Precision::Fp32,
        out.join("v.mlpackage"),
    );
    o.input_type = InputType::Image;
    let pkg = build(&o).unwrap().package;
    let p = mlc::package::read_package(&pkg).unwrap();
    let text = mlc::mil::print::print_model(&p.model);
    let scaled = text
        .lines()
        .find(|l| l.contains("%pixel_values_scaled:"))
        .unwrap_or_else(|| panic!("no scaling of the image: {text}"));
    let scale = scaled.split("y=[").nth(1).and_then(|y| y.split(']').next());
    assert_eq!(scale.map(|y| y.split(", ").count()), Some(3), "{scaled}");
    // A grey image: CLIP's means differ per channel, so the normalised planes differ and the
    // model sees a tinted image; the reference is the same grey fed as normalised pixel_values.
    let grey = Array::new(vec![1, 3, 64, 64], vec![128.0; 3 * 64 * 64]);
    // The fixture README's statistics.
    let mean = [0.48145466f64, 0.4578275, 0.40821073];
    let std = [0.26862954f64, 0.26130258, 0.27577711];
    let normalised: Vec<f32> = (0..3 * 64 * 64)
        .map(|i| ((128.0 / 255.0 - mean[i / 4096]) / std[i / 4096]) as f32)
        .collect();
    let mut a = options(
        "clip-vision",
        &weights(),
        Precision::Fp32,
        out.join("a.mlpackage"),
    );
    a.input_type = InputType::Array;
    let arr = build(&a).unwrap().package;
    let want = mlc::run::run_path(
        &arr,
        &BTreeMap::from([(
            "pixel_values".into(),
            Array::new(vec![1, 3, 64, 64], normalised),
        )]),
    )
    .unwrap();
    let got = mlc::run::run(&p, "main", &BTreeMap::from([("pixel_values".into(), grey)])).unwrap();
    let e = relative_error(&got["image_embeds"], &want["image_embeds"]);
    assert!(e <= 1e-4, "grey image: {e}");
}

/// `mlc run` on the image-input package with a PNG (8-bit, as a device's image would be), and on
/// the array package with the fixture's safetensors (its `pixel_values` tensor).
#[test]
fn run_takes_a_png_or_safetensors() {
    let out = out_dir("cli_clip_vision");
    let w = weights().display().to_string();
    let o = mlc(
        &[
            "build",
            "clip-vision",
            "--weights",
            &w,
            "--input-type",
            "image",
        ],
        &out,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The text encoders' naming: the model, then its one part.
    let image_pkg = out.join("clip-vision_encoder.mlpackage");
    assert!(image_pkg.is_dir());
    let o = mlc(
        &[
            "build",
            "clip-vision",
            "--weights",
            &w,
            "--output",
            "array.mlpackage",
        ],
        &out,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for c in ["image0", "image1"] {
        let f = case(c);
        let png = out.join(format!("{c}.png"));
        mlc::run::write_png(&f["image"], 1.0, &png).unwrap();
        for (pkg, input, tol) in [
            // fp16 (the default) and 8-bit pixels: each pixel moves by up to 0.5/255, 0.0073 in
            // pixel_values. Measured: 4.3e-3 (last_hidden_state), 8e-4 (image_embeds).
            (image_pkg.display().to_string(), png.clone(), 1e-2),
            (
                "array.mlpackage".to_string(),
                dir().join(format!("{c}.safetensors")),
                5e-3,
            ),
        ] {
            let result = out.join(format!("{c}_out.safetensors"));
            let _ = std::fs::remove_file(&result);
            let o = mlc(
                &[
                    "run",
                    &pkg,
                    "--input",
                    &input.display().to_string(),
                    "--output",
                    &result.display().to_string(),
                ],
                &out,
            );
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let got = mlc::run::read_safetensors(&result).unwrap();
            for name in ["last_hidden_state", "image_embeds"] {
                let e = relative_error(&got[name], &f[name]);
                println!(
                    "run {} {c} {name}: relative max error {e:.2e}",
                    input.display()
                );
                assert!(e <= tol, "{} {c} {name}: {e} > {tol}", input.display());
            }
        }
    }
}

#[test]
fn wrong_weights_configs_and_sizes_are_one_line_errors() {
    let out = out_dir("clip_vision_bad");
    let target = out.join("bad.mlpackage");
    // A text encoder's weights given to clip-vision, and the image encoder's to clip-l.
    let text = shared("fixtures/clip/clip_l/model.safetensors");
    let e = one_line_error(&options(
        "clip-vision",
        &text,
        Precision::Fp16,
        target.clone(),
    ));
    assert!(
        e.contains("clip_l/model.safetensors")
            && e.contains("patch_embedding")
            && e.contains("clip-l"),
        "{e}"
    );
    let e = one_line_error(&options(
        "clip-l",
        &weights(),
        Precision::Fp16,
        target.clone(),
    ));
    assert!(
        e.contains("token_embedding") && e.contains("clip-vision"),
        "{e}"
    );
    // config.json disagreeing with the tensors: the field is named.
    let edits = [
        (
            "\"image_size\": 64",
            "\"image_size\": 72",
            "image_size 72 is not a multiple of patch_size 16",
        ),
        (
            "\"image_size\": 64",
            "\"image_size\": 96",
            "image_size is 96",
        ),
        ("\"patch_size\": 16", "\"patch_size\": 8", "patch_size is 8"),
        ("\"hidden_size\": 64", "\"hidden_size\": 128", "hidden_size"),
        (
            "\"num_hidden_layers\": 3",
            "\"num_hidden_layers\": 4",
            "num_hidden_layers",
        ),
        (
            "\"projection_dim\": 32",
            "\"projection_dim\": 16",
            "projection_dim",
        ),
        (
            "\"num_attention_heads\": 4",
            "\"num_attention_heads\": 5",
            "num_attention_heads",
        ),
        (
            "\"hidden_act\": \"quick_gelu\"",
            "\"hidden_act\": \"relu\"",
            "hidden_act",
        ),
    ];
    assert_config_edits_named(&out.join("weights"), &weights(), &edits, |copy| {
        one_line_error(&options(
            "clip-vision",
            copy,
            Precision::Fp16,
            target.clone(),
        ))
    });
    // An image size the patch does not divide, and one the position table does not have.
    for (side, want) in [
        (72, "not a multiple of the patch size 16"),
        (96, "fix the image size at 64x64"),
    ] {
        let mut o = options("clip-vision", &weights(), Precision::Fp16, target.clone());
        o.sizes = Sizes::Image(vec![[side, side]]);
        let e = one_line_error(&o);
        assert!(
            e.contains(&format!("{side}x{side}")) && e.contains(want),
            "{e}"
        );
    }
    // Several sizes cannot all be the weights' one.
    let mut o = options("clip-vision", &weights(), Precision::Fp16, target.clone());
    o.sizes = Sizes::Image(vec![[64, 64], [128, 128]]);
    let e = one_line_error(&o);
    assert!(e.contains("2 sizes given") && e.contains("fix"), "{e}");
    // The size the weights have is accepted, and recorded.
    let mut o = options("clip-vision", &weights(), Precision::Fp16, target.clone());
    o.sizes = Sizes::Image(vec![[64, 64]]);
    let pkg = build(&o).unwrap().package;
    let text = mlc::mil::print::print_model(&mlc::package::read_package(&pkg).unwrap().model);
    assert!(text.contains("mlc.image_sizes = 64x64"), "{text}");
    std::fs::remove_dir_all(&pkg).unwrap();
    // A text-model option has no meaning here.
    let mut o = options("clip-vision", &weights(), Precision::Fp16, target.clone());
    o.model_options.hidden_layer = Some(2);
    let e = one_line_error(&o);
    assert!(
        e.contains("clip-vision encoder does not take --hidden-layer"),
        "{e}"
    );
}
