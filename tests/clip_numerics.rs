//! CLIP text encoders against transformers (5.24, fp32) on the small random encoders in
//! ../shared/fixtures/clip: every case (short, long, full), every output (last and penultimate
//! hidden states, pooled or projected embedding), fp32 and fp16 packages evaluated through the
//! emitted package, in both layouts (`standard` and `ane`). Tolerances are relative to the reference's largest magnitude: fp32 1e-4,
//! fp16 5e-3. Bad inputs: one-line errors, nothing written.

mod common;

use common::*;
use mlc::compiler::{build, BuildOptions, Precision};
use mlc::kernels::Array;
use mlc::models::{ModelOptions, TransformerLayout};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn dir(fixture: &str) -> PathBuf {
    shared(&format!("fixtures/clip/{fixture}"))
}

fn options(model: &str, weights: &Path, precision: Precision, out: PathBuf) -> BuildOptions {
    let mut o = BuildOptions::new(model, weights);
    o.precision = precision;
    o.io_precision = Some(Precision::Fp32);
    o.model_options = ModelOptions {
        hidden_layer: Some(2),
        ..Default::default()
    };
    o.output = Some(out);
    o
}

fn check_cases(tag: &str, pkg: &Path, fixture: &str, pooled: (&str, &str), tol: f32) {
    for case in ["short", "long", "full"] {
        let mut f =
            mlc::run::read_safetensors(&dir(fixture).join(format!("{case}.safetensors"))).unwrap();
        let ids = f.remove("input_ids").unwrap();
        let got = mlc::run::run_path(pkg, &BTreeMap::from([("input_ids".into(), ids)])).unwrap();
        for (name, reference) in [
            ("last_hidden_state", "last_hidden_state"),
            ("hidden_state", "penultimate_hidden_state"),
            pooled,
        ] {
            assert_within(
                &format!("{tag} {case} {name}"),
                &got[name],
                &f[reference],
                tol,
            );
        }
    }
}

/// iOS18 keeps attention as one `scaled_dot_product_attention` per layer, the causal mask as its
/// `attn_mask`.
#[test]
fn fused_attention_with_the_mask_matches_on_ios18() {
    let out = out_dir("clip_ios18");
    let mut o = options(
        "clip-bigg",
        &dir("bigg").join("model.safetensors"),
        Precision::Fp16,
        out.join("clip-bigg_fp16_ios18.mlpackage"),
    );
    o.target = mlc::mil::Target::Ios18;
    let pkg = build(&o).unwrap().package;
    let text = mlc::mil::print::print_model(&mlc::package::read_package(&pkg).unwrap().model);
    assert_eq!(
        text.matches("scaled_dot_product_attention(").count(),
        3,
        "one fused op per layer"
    );
    assert!(text.contains("attn_mask=%causal_mask"), "{text}");
    check_cases(
        "clip-bigg_fp16_ios18",
        &pkg,
        "bigg",
        ("text_embeds", "text_embeds"),
        5e-3,
    );
}

#[test]
fn text_encoders_match_transformers() {
    let out = out_dir("clip_text");
    // (model, fixture, pooled output and its name in the fixture)
    let models = [
        ("clip-l", "clip_l", "pooled", "pooler_output"),
        ("clip-bigg", "bigg", "text_embeds", "text_embeds"),
    ];
    for (model, fixture, pooled, pooled_ref) in models {
        for (precision, tol) in [(Precision::Fp32, 1e-4), (Precision::Fp16, 5e-3)] {
            for layout in [TransformerLayout::Standard, TransformerLayout::Ane] {
                let tag = format!("{model}_{precision:?}_{layout:?}").to_lowercase();
                let mut o = options(
                    model,
                    &dir(fixture).join("model.safetensors"),
                    precision,
                    out.join(format!("{tag}.mlpackage")),
                );
                o.model_options.layout = layout;
                let pkg = build(&o).unwrap_or_else(|e| panic!("{tag}: {e}")).package;
                check_cases(&tag, &pkg, fixture, (pooled, pooled_ref), tol);
            }
        }
    }
}

/// The pooled output follows the EOS token: moving it moves the pooled state, which a model
/// pooling at a fixed position (or the last one) would not show on the fixtures alone.
#[test]
fn pooled_state_is_taken_at_the_largest_id() {
    let out = out_dir("clip_pooling");
    let o = options(
        "clip-l",
        &dir("clip_l").join("model.safetensors"),
        Precision::Fp32,
        out.join("clip-l.mlpackage"),
    );
    let pkg = build(&o).unwrap().package;
    let mut ids = vec![0f32; 77];
    ids[0] = 49406.0;
    for (i, v) in ids.iter_mut().enumerate().skip(1).take(9) {
        *v = 320.0 + i as f32;
    }
    ids[10] = 49407.0;
    let ids = Array::new(vec![1, 77], ids);
    let got = mlc::run::run_path(&pkg, &BTreeMap::from([("input_ids".into(), ids)])).unwrap();
    let (last, pooled) = (&got["last_hidden_state"], &got["pooled"]);
    assert_eq!(pooled.shape, [1, 64]);
    assert_eq!(pooled.data[..], last.data[10 * 64..11 * 64]);
    assert_ne!(pooled.data[..], last.data[76 * 64..]);
}

#[test]
fn wrong_weights_and_configs_are_one_line_errors() {
    let out = out_dir("clip_bad");
    let target = out.join("bad.mlpackage");
    // A VAE's weights given to clip-l.
    let vae = shared("fixtures/vae/sd/diffusers/diffusion_pytorch_model.safetensors");
    let e = one_line_error(&options("clip-l", &vae, Precision::Fp16, target.clone()));
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("token_embedding"),
        "{e}"
    );
    // A text encoder with a projection given to clip-l, and one without to clip-bigg.
    let bigg = dir("bigg").join("model.safetensors");
    let e = one_line_error(&options("clip-l", &bigg, Precision::Fp16, target.clone()));
    assert!(
        e.contains("text_projection.weight") && e.contains("clip-bigg"),
        "{e}"
    );
    let l = dir("clip_l").join("model.safetensors");
    let e = one_line_error(&options("clip-bigg", &l, Precision::Fp16, target.clone()));
    assert!(e.contains("CLIPTextModel weights"), "{e}");
    // config.json disagreeing with the tensors: the field is named.
    let clip_l_error = |weights: &Path| {
        one_line_error(&options("clip-l", weights, Precision::Fp16, target.clone()))
    };
    let edits = [
        (
            "\"num_hidden_layers\": 3",
            "\"num_hidden_layers\": 4",
            "num_hidden_layers",
        ),
        ("\"hidden_size\": 64", "\"hidden_size\": 128", "hidden_size"),
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
    let copy = assert_config_edits_named(&out.join("weights"), &l, &edits, clip_l_error);
    // Without config.json the heads are CLIP's 64 channels each, as in a single file: one for
    // the fixture's 64 channels (its config says 4): the model builds, another graph.
    std::fs::remove_file(copy.with_file_name("config.json")).unwrap();
    let heads = |weights: &Path| {
        let o = options("clip-l", weights, Precision::Fp32, target.clone());
        let w = mlc::models::lookup("clip-l")
            .unwrap()
            .load(
                mlc::models::Part::ENCODER,
                &*mlc::weights::open(weights).unwrap(),
                &o.model_options,
            )
            .unwrap();
        mlc::ir::print::print(&mlc::build::declare(&o, &w).unwrap())
    };
    let (one, four) = (heads(&copy), heads(&l));
    assert!(one.contains("[1,77,64]") && one != four);
    // A hidden layer beyond the model's depth.
    let mut o = options("clip-l", &l, Precision::Fp16, target);
    o.model_options.hidden_layer = Some(4);
    let e = one_line_error(&o);
    assert!(
        e.contains("--hidden-layer 4") && e.contains("3 layers"),
        "{e}"
    );
}

/// The same tensors under a single-file checkpoint's prefix, beside other models' tensors, give
/// the same outputs as the transformers save (only the text encoder's keys are read).
#[test]
fn single_file_prefixes_give_the_same_encoder() {
    let out = out_dir("clip_single_file");
    let tensors = mlc::run::read_safetensors(&dir("bigg").join("model.safetensors")).unwrap();
    let ids = mlc::run::read_safetensors(&dir("bigg").join("long.safetensors"))
        .unwrap()
        .remove("input_ids")
        .unwrap();
    let inputs = BTreeMap::from([("input_ids".to_string(), ids)]);
    let reference = {
        let o = options(
            "clip-bigg",
            &dir("bigg").join("model.safetensors"),
            Precision::Fp32,
            out.join("transformers.mlpackage"),
        );
        mlc::run::run_path(&build(&o).unwrap().package, &inputs).unwrap()
    };
    for root in [
        "cond_stage_model.transformer.",
        "conditioner.embedders.0.transformer.",
    ] {
        let mut file: BTreeMap<String, Array> = tensors
            .iter()
            .map(|(k, v)| (format!("{root}{k}"), v.clone()))
            .collect();
        // Another model's tensor in the same file, never read.
        file.insert(
            "model.diffusion_model.out.2.weight".into(),
            Array::new(vec![2], vec![1.0, 2.0]),
        );
        let tag = root.trim_end_matches('.').replace('.', "_");
        let folder = out.join(&tag);
        std::fs::create_dir_all(&folder).unwrap();
        // The fixture's heads (4) are no model's default: its config.json comes along.
        std::fs::copy(dir("bigg").join("config.json"), folder.join("config.json")).unwrap();
        let weights = folder.join("checkpoint.safetensors");
        mlc::run::write_safetensors(&file, &weights).unwrap();
        let o = options(
            "clip-bigg",
            &weights,
            Precision::Fp32,
            out.join(format!("{tag}.mlpackage")),
        );
        let got = mlc::run::run_path(&build(&o).unwrap().package, &inputs).unwrap();
        for name in ["last_hidden_state", "hidden_state", "text_embeds"] {
            let e = relative_error(&got[name], &reference[name]);
            assert!(e <= 1e-6, "{root} {name}: {e}");
        }
    }
}

/// The `ane` layout is what the report asks for: every layout hint it gives `standard` (rank-3
/// compute, transposes, reshapes of the last axis, linear layers as matmuls) is gone, with the
/// same ops off the Neural Engine (the int32 argmax) in both.
#[test]
fn ane_layout_clears_the_layout_hints_of_standard() {
    use mlc::ane::Hint;
    let out = out_dir("clip_layouts");
    let mut reports = Vec::new();
    for layout in [TransformerLayout::Standard, TransformerLayout::Ane] {
        let mut o = options(
            "clip-bigg",
            &dir("bigg").join("model.safetensors"),
            Precision::Fp16,
            out.join(format!("clip-bigg_{layout:?}.mlpackage").to_lowercase()),
        );
        o.io_precision = None;
        o.model_options.layout = layout;
        let r = build(&o).unwrap().ane;
        let mut ops = BTreeMap::<&str, usize>::new();
        for v in &r.ops {
            *ops.entry(v.op_type.as_str()).or_default() += 1;
        }
        println!(
            "{layout:?}: {} ops {ops:?}, hints {:?}",
            r.ops.len(),
            r.hint_counts()
        );
        reports.push(r);
    }
    let (standard, ane) = (&reports[0], &reports[1]);
    let hints = standard.hint_counts();
    for h in [
        Hint::Rank,
        Hint::Transpose,
        Hint::ReshapeLastAxis,
        Hint::LinearAsMatmul,
    ] {
        assert!(hints.get(&h).is_some_and(|&n| n >= 3), "{h:?}: {hints:?}");
    }
    assert!(ane.hint_counts().is_empty(), "{:?}", ane.hint_counts());
    let misfits = |r: &mlc::ane::AneReport| {
        r.misfits()
            .map(|v| (v.name.clone(), v.op_type.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(misfits(standard), misfits(ane));
    assert_eq!(
        misfits(ane),
        [("eos_position".into(), "reduce_argmax".into())]
    );
    // Per head, not per layer: 4 heads x 3 layers.
    let softmax = ane.ops.iter().filter(|v| v.op_type == "softmax").count();
    assert_eq!(softmax, 12);
    oracle(&out);
}

/// `--pooled` on a projecting encoder: the extra `pooled` output is the state `text_embeds`
/// projects (pooled · text_projectionᵀ = text_embeds), what a CLIPTextModel's pooler_output is.
#[test]
fn pooled_output_is_the_state_before_the_projection() {
    let out = out_dir("clip_pooled");
    let weights = dir("bigg").join("model.safetensors");
    let mut o = options(
        "clip-bigg",
        &weights,
        Precision::Fp32,
        out.join("bigg.mlpackage"),
    );
    o.model_options.pooled_output = true;
    build(&o).unwrap();
    let case = mlc::run::read_safetensors(&dir("bigg").join("short.safetensors")).unwrap();
    let inputs = BTreeMap::from([("input_ids".to_string(), case["input_ids"].clone())]);
    let got = mlc::run::run_path(&out.join("bigg.mlpackage"), &inputs).unwrap();
    let pooled = &got["pooled"];
    assert_eq!(pooled.shape, [1, 64]);
    let w = &mlc::run::read_safetensors(&weights).unwrap()["text_projection.weight"];
    let projected: Vec<f32> = (0..32)
        .map(|i| (0..64).map(|j| w.data[i * 64 + j] * pooled.data[j]).sum())
        .collect();
    let projected = Array::new(vec![1, 32], projected);
    assert_within("pooled · Pᵀ", &projected, &case["text_embeds"], 1e-4);
    // Not the projection itself: the widths differ here.
    assert_ne!(pooled.shape, got["text_embeds"].shape);
    // clip-l has no projection: its `pooled` is there already, and the flag is refused.
    let mut l = options(
        "clip-l",
        &dir("clip_l").join("model.safetensors"),
        Precision::Fp32,
        out.join("l.mlpackage"),
    );
    l.model_options.pooled_output = true;
    let e = one_line_error(&l);
    assert!(e.contains("--pooled"), "{e}");
}
