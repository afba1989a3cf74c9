//! Mixed precision end to end: a model's fp32 region (the sinusoidal timestep embedding) through
//! the pass pipeline, the MIL lowering and the MIL evaluator, in fp32 and fp16 builds.
//!
//! The region's value is measured against an f64 reference at t = 999, where fp16 cannot hold
//! `t · freq` (its spacing there is 0.5); the fp32 build must not change because of fences.

use mlc::ir::eval::evaluate;
use mlc::ir::parse::parse;
use mlc::ir::Graph;
use mlc::kernels::Array;
use mlc::mil::lower::{lower, FeatureTypes, Lowered, ModelInfo};
use mlc::mil::print::print_model;
use mlc::mil::Target;
use mlc::package::BlobReader;
use mlc::passes::{self, PipelineOptions};
use mlc::proto::specification::model::Type as ModelType;
use std::collections::BTreeMap;

/// The first 8 frequencies of SD's 320-channel embedding, `exp(-ln(10000) · k / 160)`, as f32:
/// near 1, so `t · f` is near t, where fp16's spacing is 0.5.
fn freqs() -> Vec<f32> {
    (0..8)
        .map(|k| (-(10000f64.ln()) * k as f64 / 160.0).exp() as f32)
        .collect()
}

/// `[sin(t · f), cos(t · f)]` of timesteps `t` [2] fenced as fp32 (if `fenced`), added to an
/// fp16 activation `x` [2, 8] scaled by the same constant (so it has both forms).
fn embedding(fenced: bool) -> Graph {
    let f: Vec<String> = freqs().iter().map(|v| format!("{v:?}")).collect();
    let (open, t, close, e) = match fenced {
        true => (
            "  %t32: fp32[2,1] = precision(%t) fp32=true\n",
            "%t32",
            "  %h: fp32[2,16] = precision(%e) fp32=false\n",
            "%h",
        ),
        false => ("", "%t", "", "%e"),
    };
    let text = format!(
        "graph t {{
  %t: fp32[2,1] = input(\"t\")
  %x: fp32[2,8] = input(\"x\")
  %f: fp32[1,8] = const([{}])
{open}  %a: fp32[2,8] = mul({t}, %f)
  %s: fp32[2,8] = sin(%a)
  %c: fp32[2,8] = cos(%a)
  %e: fp32[2,16] = concat(%s, %c) axis=1
{close}  %u: fp32[2,8] = mul(%x, %f)
  %uu: fp32[2,16] = concat(%u, %u) axis=1
  %y: fp32[2,16] = add({e}, %uu)
  return y=%y
}}
",
        f.join(", ")
    );
    parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"))
}

fn build(g: Graph, fp16: bool) -> (Graph, Lowered) {
    let opts = PipelineOptions {
        fp16,
        fp16_inputs: fp16,
        fp16_outputs: fp16,
        lower_attention: true,
        ..Default::default()
    };
    let g = passes::run(g, &passes::pipeline(&opts), |_, _| {}).unwrap();
    let lowered = lower(
        &g,
        Target::Ios16,
        &ModelInfo::default(),
        &FeatureTypes::default(),
    )
    .unwrap();
    (g, lowered)
}

fn mil_eval(l: &Lowered, inputs: &BTreeMap<String, Array>) -> Array {
    let Some(ModelType::MlProgram(program)) = &l.model.r#type else {
        panic!("not an ML program")
    };
    let blobs = l.weight_bin.as_deref().map(|b| BlobReader::new(b).unwrap());
    let mut out = mlc::mil::eval::evaluate(program, "main", blobs.as_ref(), inputs).unwrap();
    out.remove("y").unwrap()
}

fn inputs() -> BTreeMap<String, Array> {
    BTreeMap::from([
        ("t".to_string(), Array::new(vec![2, 1], vec![999.0, 981.0])),
        ("x".to_string(), Array::new(vec![2, 8], vec![0.0; 16])),
    ])
}

/// Largest |output − f64 reference| (x is zero, so the output is the embedding).
fn error_vs_f64(y: &Array) -> f64 {
    let mut worst = 0f64;
    for (b, t) in [999.0f64, 981.0].into_iter().enumerate() {
        for (k, f) in freqs().into_iter().enumerate() {
            let a = t * f64::from(f);
            worst = worst.max((f64::from(y.data[b * 16 + k]) - a.sin()).abs());
            worst = worst.max((f64::from(y.data[b * 16 + 8 + k]) - a.cos()).abs());
        }
    }
    worst
}

/// An fp32 build's fences emit nothing: the package is the one built without them.
#[test]
fn fences_leave_fp32_packages_unchanged() {
    let (_, with) = build(embedding(true), false);
    let (_, without) = build(embedding(false), false);
    let text = print_model(&with.model);
    assert_eq!(text, print_model(&without.model));
    assert_eq!(with.model, without.model);
    assert_eq!(with.weight_bin, without.weight_bin);
    assert!(!text.contains("cast("), "{text}");
}

#[test]
fn an_fp16_build_computes_the_region_in_fp32() {
    let (g, lowered) = build(embedding(true), true);
    assert_eq!(passes::cast_fp16::fp32_ops(&g), 4, "mul, sin, cos, concat");
    let text = print_model(&lowered.model);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("%{name}:")))
            .unwrap_or_else(|| panic!("no %{name} in\n{text}"))
            .to_string()
    };
    for (name, want) in [
        ("t32", "cast("),
        ("a", "mul("),
        ("s", "sin("),
        ("c", "cos("),
        ("e", "concat("),
    ] {
        let l = line(name);
        assert!(l.contains("fp32") && l.contains(want), "{l}");
    }
    for name in ["h", "u", "uu", "y"] {
        assert!(line(name).contains("fp16"), "{}", line(name));
    }
    assert!(line("h").contains("cast("), "{}", line("h"));
    // Both forms of the shared constant ship (inline, as they are small): the exact f32 values
    // for `a`, rounded to fp16 for `u`.
    let exact = format!("{:?}", freqs()[1]);
    assert!(line("a").contains(&exact), "{exact}: {}", line("a"));
    assert!(!line("u").contains(&exact), "{exact}: {}", line("u"));
}

/// The IR evaluator and the MIL evaluator agree on the mixed build (both round fp16 values the
/// same way), and the region beats fp16 throughout against f64.
#[test]
fn the_fp16_region_is_more_accurate_and_both_evaluators_agree() {
    let (g, lowered) = build(embedding(true), true);
    let ir = evaluate(&g, &inputs()).unwrap().remove("y").unwrap();
    let mil = mil_eval(&lowered, &inputs());
    assert_eq!(ir.shape, mil.shape);
    let d = ir
        .data
        .iter()
        .zip(&mil.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d <= 1e-6, "IR and MIL evaluators differ by {d}");

    let fenced = error_vs_f64(&mil);
    let (_, plain) = build(embedding(false), true);
    let plain = error_vs_f64(&mil_eval(&plain, &inputs()));
    // fp32 inside and one rounding at the end: within an fp16 half-ulp of values up to 1.
    assert!(fenced < 1e-3, "fenced: {fenced}");
    assert!(plain > 0.1, "fp16 throughout: {plain}");
    let (_, fp32) = build(embedding(true), false);
    let fp32 = error_vs_f64(&mil_eval(&fp32, &inputs()));
    assert!(fp32 < 1e-4, "fp32 build: {fp32}");
    eprintln!("error against f64: fp16 with the region {fenced:.2e}, fp16 throughout {plain:.2e}, fp32 {fp32:.2e}");
}

/// A fence that is itself an output needs a value named after the feature: an `identity`.
#[test]
fn an_output_fence_lowers_to_identity() {
    let g = parse(
        "graph t {
  %x: fp32[3] = input(\"x\")
  %s: fp32[3] = sin(%x)
  %y: fp32[3] = precision(%s) fp32=false
  return y=%y
}
",
    )
    .unwrap();
    let (_, lowered) = build(g, false);
    let text = print_model(&lowered.model);
    assert!(text.contains("identity("), "{text}");
    let x = Array::new(vec![3], vec![0.5, 2.0, -7.0]);
    let y = mil_eval(&lowered, &BTreeMap::from([("x".to_string(), x)]));
    assert_eq!(y.data, [0.5f32.sin(), 2.0f32.sin(), (-7.0f32).sin()]);
}
