//! Snapshots of the MIL text that ships, per model and option set (in ../snapshots). Review a
//! changed snapshot as you would review code.

mod common;

use common::*;
use mlc::compiler::{build_program_from_weights, BuildOptions, Precision};
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
    o.sizes = mlc::compiler::Sizes::Latent(vec![[latent, latent]]);
    let c = build_program_from_weights(&o, weights, |_, _| {}).unwrap();
    print_model(&c.lowered.model)
}

/// The text with the crate version blanked, so a release does not rewrite every snapshot.
fn unversioned(text: String) -> String {
    let marker = "// metadata mlc.version = ";
    text.lines()
        .map(|l| match l.strip_prefix(marker) {
            Some(v) => {
                assert_eq!(v, env!("CARGO_PKG_VERSION"));
                format!("{marker}<version>")
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

macro_rules! snapshot {
    ($name:expr, $text:expr) => {
        insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!($name, unversioned($text));
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
fn taef2_encoder_fp16() {
    let w = Weights::load(&shared("weights/taef2_encoder.safetensors")).unwrap();
    let mut o = BuildOptions::new("flux2", "unused");
    o.part = Some(mlc::models::Part::ENCODER.into());
    o.sizes = mlc::compiler::Sizes::Image(vec![[64, 64]]);
    let c = build_program_from_weights(&o, &w, |_, _| {}).unwrap();
    let text = print_model(&c.lowered.model);
    // What review must see in it: three stride-2 convs and an 8x8 latent.
    assert_eq!(text.matches("strides=[2, 2]").count(), 3, "{text}");
    assert!(
        text.contains("// output latent: multiarray float16 [1, 32, 8, 8]"),
        "{text}"
    );
    snapshot!("taef2_encoder_fp16_ios16", text);
}

#[test]
fn synthetic_taesd_fp16_ios18() {
    let w = synthetic_taesd(4, false);
    snapshot!(
        "taesd_synthetic_fp16_ios18",
        mil_text("taesd", &w, Precision::Fp16, Target::Ios18, 8)
    );
}

#[test]
fn taef2_enumerated_sizes() {
    let w = Weights::load(&taef2_weights()).unwrap();
    let mut o = BuildOptions::new("flux2", "unused");
    o.sizes = mlc::compiler::Sizes::Latent(vec![[96, 96], [128, 128], [96, 128]]);
    let c = build_program_from_weights(&o, &w, |_, _| {}).unwrap();
    snapshot!("taef2_fp16_enumerated", print_model(&c.lowered.model));
}

#[test]
fn synthetic_taesd_nhwc() {
    let mut o = BuildOptions::new("taesd", "unused");
    o.sizes = mlc::compiler::Sizes::Latent(vec![[8, 8]]);
    o.input_layout = mlc::compiler::ArrayLayout::Nhwc;
    o.output_layout = mlc::compiler::ArrayLayout::Nhwc;
    let c = build_program_from_weights(&o, &synthetic_taesd(4, false), |_, _| {}).unwrap();
    snapshot!("taesd_synthetic_nhwc", print_model(&c.lowered.model));
}

#[test]
fn synthetic_taesd_multifunction() {
    let mut o = BuildOptions::new("taesd", "unused");
    o.sizes = mlc::compiler::Sizes::Latent(vec![[8, 8], [8, 16]]);
    o.multifunction = true;
    o.target = Target::Ios18;
    let c = build_program_from_weights(&o, &synthetic_taesd(4, false), |_, _| {}).unwrap();
    snapshot!(
        "taesd_synthetic_multifunction_ios18",
        print_model(&c.lowered.model)
    );
}

#[test]
fn synthetic_taesd_compressed() {
    use mlc::compiler::{Compression, QuantMode};
    for (name, target, c) in [
        (
            "taesd_synthetic_palettize4_ios16",
            Target::Ios16,
            Compression::Palettize {
                bits: 4,
                group_size: None,
                min_elements: 2048,
            },
        ),
        (
            "taesd_synthetic_palettize3_grouped16_ios18",
            Target::Ios18,
            Compression::Palettize {
                bits: 3,
                group_size: Some(16),
                min_elements: 2048,
            },
        ),
        (
            "taesd_synthetic_int8_ios16",
            Target::Ios16,
            Compression::Quantize {
                mode: QuantMode::Int8,
                block_size: None,
                min_elements: 2048,
            },
        ),
        (
            "taesd_synthetic_int8_block4_ios18",
            Target::Ios18,
            Compression::Quantize {
                mode: QuantMode::Int8,
                block_size: Some(4),
                min_elements: 2048,
            },
        ),
    ] {
        let mut o = BuildOptions::new("taesd", "unused");
        o.sizes = mlc::compiler::Sizes::Latent(vec![[8, 8]]);
        o.target = target;
        o.compression = Some(c);
        let c = build_program_from_weights(&o, &synthetic_taesd(4, false), |_, _| {}).unwrap();
        snapshot!(name, print_model(&c.lowered.model));
    }
}

/// W8A8: int8 weights and quantize/dequantize pairs on conv and add inputs, ranges max-abs over
/// a fixed random latent (the snapshot pins placement, scales and the MIL types of the pairs).
#[test]
fn synthetic_taesd_w8a8() {
    use mlc::compiler::{ActivationRanges, Compression, QuantMode};
    let latent = mlc::kernels::Array::new(vec![1, 4, 8, 8], random(256, 21, 2.0));
    for (name, target) in [
        ("taesd_synthetic_w8a8_ios17", Target::Ios17),
        ("taesd_synthetic_w8a8_ios18", Target::Ios18),
    ] {
        let mut o = BuildOptions::new("taesd", "unused");
        o.sizes = mlc::compiler::Sizes::Latent(vec![[8, 8]]);
        o.target = target;
        o.compression = Some(Compression::Quantize {
            mode: QuantMode::Int8,
            block_size: None,
            min_elements: 2048,
        });
        o.quantize_activations = Some(ActivationRanges::MaxAbs(
            [("latent".to_string(), latent.clone())].into(),
        ));
        let c = build_program_from_weights(&o, &synthetic_taesd(4, false), |_, _| {}).unwrap();
        snapshot!(name, print_model(&c.lowered.model));
    }
}

/// The full VAEs at the fixture size (8x8 latents, fp16): the decoder with its chunk-free
/// attention, the FLUX.2 decoder on packed latents, an encoder with logvar, and the fused
/// attention of iOS18.
#[test]
fn full_vaes() {
    use mlc::compiler::Sizes;
    use mlc::models::{ModelOptions, Part};
    let vae = |family: &str| {
        shared(&format!(
            "fixtures/vae/{family}/diffusers/diffusion_pytorch_model.safetensors"
        ))
    };
    let cases: [(&str, &str, &str, Part, ModelOptions, Target); 4] = [
        (
            "sd_vae_decoder_fp16_ios16",
            "sd-vae",
            "sd",
            Part::DECODER,
            ModelOptions::default(),
            Target::Ios16,
        ),
        (
            "sd_vae_decoder_fp16_ios18",
            "sd-vae",
            "sd",
            Part::DECODER,
            ModelOptions::default(),
            Target::Ios18,
        ),
        (
            "flux2_vae_decoder_packed_fp16_ios16",
            "flux2-vae",
            "flux2",
            Part::DECODER,
            ModelOptions {
                packed_input: true,
                ..Default::default()
            },
            Target::Ios16,
        ),
        (
            "flux1_vae_encoder_fp16_ios16",
            "flux1-vae",
            "flux1",
            Part::ENCODER,
            ModelOptions {
                logvar_output: true,
                latent_scaling: true,
                ..Default::default()
            },
            Target::Ios16,
        ),
    ];
    for (name, model, family, part, options, target) in cases {
        let mut o = BuildOptions::new(model, vae(family));
        o.part = Some(part.into());
        o.model_options = options;
        o.target = target;
        o.sizes = Sizes::Image(vec![[64, 64]]);
        let c = mlc::compiler::build_program(&o, |_, _| {}).unwrap();
        snapshot!(name, print_model(&c.lowered.model));
    }
}

#[test]
fn clip_l_text_encoder_fp16() {
    let path = shared("fixtures/clip/clip_l/model.safetensors");
    let none = mlc::models::ModelOptions::default();
    let model = mlc::models::lookup("clip-l").unwrap();
    let w = model
        .load(mlc::models::Part::ENCODER, &*open(&path), &none)
        .unwrap();
    let o = BuildOptions::new("clip-l", "unused");
    let c = build_program_from_weights(&o, &w, |_, _| {}).unwrap();
    let text = print_model(&c.lowered.model);
    // What review must see in it: int32 ids in, one gather per lookup plus the pooling, the
    // causal mask added to every layer's scores, and the EOS position by argmax.
    assert!(
        text.contains("// input input_ids: multiarray int32 [1, 77]"),
        "{text}"
    );
    assert_eq!(text.matches(" = gather(").count(), 2, "{text}");
    assert_eq!(text.matches(" = reduce_argmax(").count(), 1, "{text}");
    assert_eq!(text.matches(" = layer_norm(").count(), 7, "{text}");
    snapshot!("clip_l_text_encoder_fp16_ios16", text);
}

#[test]
fn clip_l_text_encoder_ane_fp16() {
    let path = shared("fixtures/clip/clip_l/model.safetensors");
    let ane = mlc::models::ModelOptions {
        layout: mlc::models::TransformerLayout::Ane,
        ..Default::default()
    };
    let model = mlc::models::lookup("clip-l").unwrap();
    let w = model
        .load(mlc::models::Part::ENCODER, &*open(&path), &ane)
        .unwrap();
    let mut o = BuildOptions::new("clip-l", "unused");
    o.model_options = ane;
    let c = build_program_from_weights(&o, &w, |_, _| {}).unwrap();
    let text = print_model(&c.lowered.model);
    // What review must see in it: the token table gathered along its last axis straight into
    // [1, D, 1, S], 1x1 convs for every linear layer, layer norms over axis 1, one split per
    // projection and four small [1, 1, 77, 77] attentions per layer, and a single transpose,
    // to the interface's [1, 77, D].
    assert!(text.contains("%embeddings: (1, 64, 1, 77, fp16)"), "{text}");
    assert_eq!(text.matches(" = conv(").count(), 18, "{text}");
    assert_eq!(text.matches(" = split(").count(), 9, "{text}");
    assert_eq!(text.matches(" = softmax(").count(), 12, "{text}");
    assert_eq!(text.matches(" = transpose(").count(), 1, "{text}");
    assert_eq!(text.matches("axes=[1]").count(), 7, "{text}");
    snapshot!("clip_l_text_encoder_ane_fp16_ios16", text);
}

#[test]
fn clip_vision_encoder_fp16() {
    let path = shared("fixtures/clip/vision/model.safetensors");
    let none = mlc::models::ModelOptions::default();
    let model = mlc::models::lookup("clip-vision").unwrap();
    let w = model
        .load(mlc::models::Part::ENCODER, &*open(&path), &none)
        .unwrap();
    let o = BuildOptions::new("clip-vision", "unused");
    let c = build_program_from_weights(&o, &w, |_, _| {}).unwrap();
    let text = print_model(&c.lowered.model);
    // What review must see in it: the image in, one strided patch convolution, the class token
    // concatenated in front, pre-norm + two norms per layer + post-norm, no mask, and the class
    // token sliced out for the projection.
    assert!(
        text.contains("// input pixel_values: multiarray float16 [1, 3, 64, 64]"),
        "{text}"
    );
    assert_eq!(text.matches(" = conv(").count(), 1, "{text}");
    assert_eq!(text.matches(" = concat(").count(), 1, "{text}");
    assert_eq!(text.matches(" = layer_norm(").count(), 8, "{text}");
    assert_eq!(text.matches(" = slice_by_index(").count(), 1, "{text}");
    assert!(!text.contains("causal_mask"), "{text}");
    snapshot!("clip_vision_encoder_fp16_ios16", text);
}

/// MIL text of a CLIP model built from its fixture with these options.
fn clip_text(model: &str, fixture: &str, options: mlc::models::ModelOptions) -> String {
    let path = shared(&format!("fixtures/clip/{fixture}/model.safetensors"));
    let m = mlc::models::lookup(model).unwrap();
    let w = m
        .load(mlc::models::Part::ENCODER, &*open(&path), &options)
        .unwrap();
    let mut o = BuildOptions::new(model, "unused");
    o.model_options = options;
    print_model(
        &build_program_from_weights(&o, &w, |_, _| {})
            .unwrap()
            .lowered
            .model,
    )
}

#[test]
fn clip_bigg_text_encoder_both_layouts_fp16() {
    use mlc::models::{ModelOptions, TransformerLayout};
    for layout in [TransformerLayout::Standard, TransformerLayout::Ane] {
        let o = ModelOptions {
            hidden_layer: Some(2),
            layout,
            ..Default::default()
        };
        let text = clip_text("clip-bigg", "bigg", o);
        // What review must see: the projection of the pooled state (a matmul by the [P, D]
        // table, or a 1x1 conv on [1, D, 1, 1]), gelu, and the penultimate hidden state.
        assert!(
            text.contains("// output text_embeds: multiarray float16 [1, 32]"),
            "{text}"
        );
        assert!(
            text.contains("// output hidden_state: multiarray float16 [1, 77, 64]"),
            "{text}"
        );
        assert_eq!(text.matches(" = gelu(").count(), 3, "{text}");
        let name = format!("clip_bigg_text_encoder_{layout:?}_fp16_ios16").to_lowercase();
        snapshot!(name.as_str(), text);
    }
}

#[test]
fn clip_vision_encoder_ane_fp16() {
    let o = mlc::models::ModelOptions {
        layout: mlc::models::TransformerLayout::Ane,
        ..Default::default()
    };
    let text = clip_text("clip-vision", "vision", o);
    // What review must see: the patch grid flattened to [1, D, 1, 16] and the class token
    // joined on the token axis (3), per-head attention without a mask, one transpose back to
    // [1, 17, D], the class state sliced on axis 3 and projected by a 1x1 conv.
    assert!(text.contains("%tokens: (1, 64, 1, 17, fp16)"), "{text}");
    assert!(text.contains("axis=3"), "{text}");
    assert!(!text.contains("causal_mask"), "{text}");
    assert_eq!(text.matches(" = transpose(").count(), 1, "{text}");
    snapshot!("clip_vision_encoder_ane_fp16_ios16", text);
}

/// Calibrated 4-bit palettization (tables fitted to the convs' outputs on two fixed random
/// latents, biases corrected): the same program as data-free palettization (tables and biases
/// live in weight.bin), with the fit and the calibration set's hash in the metadata.
#[test]
fn synthetic_taesd_palettize4_calibrated() {
    use mlc::compiler::{CalibrationSource, Compression};
    use mlc::tensor::Tensor;
    let dir = out_dir("snapshot_calibrated");
    let latents = dir.join("latents.safetensors");
    let tensors = [(
        "latent".to_string(),
        Tensor::f32(vec![2, 4, 8, 8], random(512, 23, 2.0)),
    )];
    write_safetensors(&latents, &tensors.into());
    let mut o = BuildOptions::new("taesd", "unused");
    o.sizes = mlc::compiler::Sizes::Latent(vec![[8, 8]]);
    o.compression = Some(Compression::Palettize {
        bits: 4,
        group_size: None,
        min_elements: 2048,
    });
    o.calibration = Some(CalibrationSource {
        path: latents,
        encoder_weights: None,
        upscale: false,
    });
    let c = build_program_from_weights(&o, &synthetic_taesd(4, false), |_, _| {}).unwrap();
    let text = print_model(&c.lowered.model);
    assert!(
        text.contains("mlc.weights.fit = layer outputs (calibrated)"),
        "{text}"
    );
    snapshot!("taesd_synthetic_palettize4_calibrated", text);
}

/// The weights at `path` as the driver opens them.
fn open(path: &std::path::Path) -> Box<dyn mlc::weights::TensorSource> {
    mlc::weights::open(path).unwrap()
}

/// A UNet fixture's MIL text at a 16x16 latent, batch 2.
fn unet_text(
    fixture: &str,
    model: &str,
    layout: mlc::models::TransformerLayout,
    target: Target,
) -> String {
    let path = shared(&format!(
        "fixtures/unet/{fixture}/diffusers/diffusion_pytorch_model.safetensors"
    ));
    let o = mlc::models::ModelOptions {
        layout,
        ..Default::default()
    };
    let w = mlc::models::lookup(model)
        .unwrap()
        .load(mlc::models::unet::UNET, &*open(&path), &o)
        .unwrap();
    let mut b = BuildOptions::new(model, path);
    b.model_options = o;
    b.target = target;
    b.sizes = mlc::compiler::Sizes::Latent(vec![[16, 16]]);
    let c = build_program_from_weights(&b, &w, |_, _| {}).unwrap();
    print_model(&c.lowered.model)
}

#[test]
fn sd15_unet_standard_and_ane_fp16() {
    use mlc::models::TransformerLayout::{Ane, Standard};
    let text = unet_text("sd15", "sd-unet", Standard, Target::Ios16);
    // What review must see: the interface Apple's pipeline reads, the timestep sinusoid in an
    // fp32 region (two casts, fp32 sin and cos), 1x1-conv projections, one softmax per head
    // group of each attention (8 heads, 16 attentions), and the three upsamplers.
    assert!(
        text.contains("// input sample: multiarray float16 [2, 4, 16, 16]"),
        "{text}"
    );
    assert!(text.contains("// input encoder_hidden_states: multiarray float16 [2, 77, 64]"));
    assert!(text.contains("// output noise_pred: multiarray float16 [2, 4, 16, 16]"));
    assert_eq!(text.matches(" = cast(").count(), 2);
    assert!(
        text.contains("%time_proj_sin: (2, 16, fp32)(Tensor) = sin("),
        "{text}"
    );
    assert_eq!(text.matches(" = upsample_nearest_neighbor(").count(), 3);
    snapshot!("sd15_unet_standard_fp16_ios16", text);
    let text = unet_text("sd15", "sd-unet", Ane, Target::Ios16);
    // ane: encoder_hidden_states [B, D, 1, S], no transpose at all, one softmax per head.
    assert!(text.contains("// input encoder_hidden_states: multiarray float16 [2, 64, 1, 77]"));
    assert_eq!(text.matches(" = transpose(").count(), 0, "{text}");
    assert_eq!(text.matches(" = softmax(").count(), 16 * 2 * 8);
    snapshot!("sd15_unet_ane_fp16_ios16", text);
}

#[test]
fn sd21_unet_upcast_attention_fp16() {
    let text = unet_text(
        "sd21",
        "sd-unet",
        mlc::models::TransformerLayout::Standard,
        Target::Ios16,
    );
    // upcast_attention: every attention's q, k and v cast to fp32 and its output back (4 casts
    // per attention, 2 attentions per transformer, 16 transformers: 2 per attention level down,
    // 3 per level up, 1 in the mid block), beside the sinusoid's 2; the softmaxes compute in
    // fp32.
    assert_eq!(text.matches(" = cast(").count(), 2 + 4 * 2 * 16, "{text}");
    assert!(!text.contains("fp16)(Tensor) = softmax("), "{text}");
    snapshot!("sd21_unet_standard_fp16_ios16", text);
}

#[test]
fn sdxl_unet_fused_attention_fp16_ios18() {
    let text = unet_text(
        "sdxl",
        "sdxl-unet",
        mlc::models::TransformerLayout::Standard,
        Target::Ios18,
    );
    // SDXL: text_embeds and time_ids in, their 256-channel sinusoid in the fp32 region too (4
    // casts), and every attention one fused op, no softmax left.
    assert!(
        text.contains("// input text_embeds: multiarray float16 [2, 32]"),
        "{text}"
    );
    assert!(text.contains("// input time_ids: multiarray float16 [2, 6]"));
    assert_eq!(text.matches(" = cast(").count(), 4);
    assert!(text.contains(" = scaled_dot_product_attention("));
    assert_eq!(text.matches(" = softmax(").count(), 0);
    snapshot!("sdxl_unet_standard_fp16_ios18", text);
}
