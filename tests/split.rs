//! A UNet split in two as Apple's Stable Diffusion package loads it (`UnetChunk1` +
//! `UnetChunk2`): the tiny SD 1.x and SDXL UNets of ../shared/fixtures/unet built at an 8x8
//! latent, fp16 and fp32, plain and 4-bit palettized. Chunk 1 on the model's inputs, then chunk 2
//! on the model's inputs and chunk 1's outputs, gives exactly the whole graph's `noise_pred`, in
//! the IR evaluator and through the lowered ML Programs; each chunk holds 35-65 % of the weight
//! bytes.

mod common;

use common::*;
use mlc::compiler::{build_program, BuildOptions, Compression, Precision, Sizes};
use mlc::ir::split::{split_at_owned, split_in_two, weight_bytes};
use mlc::ir::{ConstData, Graph, Op};
use mlc::kernels::Array;
use mlc::mil::eval::EvalOptions;
use mlc::mil::lower::{lower, FeatureTypes, ModelInfo};
use mlc::models::{ModelOptions, TransformerLayout};
use mlc::package::BlobReader;
use mlc::proto::specification::model::Type;
use std::collections::BTreeMap;

/// The final graph of a UNet fixture built at an 8x8 latent, batch 2: what the lowering sees.
fn final_graph(name: &str, precision: Precision, compression: Option<Compression>) -> Graph {
    let model = if name == "sdxl" {
        "sdxl-unet"
    } else {
        "sd-unet"
    };
    let weights = shared(&format!(
        "fixtures/unet/{name}/diffusers/diffusion_pytorch_model.safetensors"
    ));
    let mut o = BuildOptions::new(model, weights);
    o.precision = precision;
    o.io_precision = Some(Precision::Fp32);
    o.sizes = Sizes::Latent(vec![[8, 8]]);
    o.compression = compression;
    o.model_options = ModelOptions {
        batch: Some(2),
        layout: TransformerLayout::Ane,
        ..Default::default()
    };
    let mut last = None;
    build_program(&o, |_, g| last = Some(g.clone())).unwrap();
    last.unwrap()
}

/// Deterministic values for every input of `g`, by name.
fn inputs(g: &Graph) -> BTreeMap<String, Array> {
    g.inputs()
        .iter()
        .enumerate()
        .map(|(k, &v)| {
            let shape = g.ty(v).known_shape().unwrap();
            let n = shape.iter().product();
            let node = g.node(v);
            let mut values = random(n, k as u64 + 1, 1.0);
            if node.name == "timestep" {
                values
                    .iter_mut()
                    .for_each(|x| *x = (x.abs() * 999.0).round());
            }
            (node.name.clone(), Array::new(shape, values))
        })
        .collect()
}

fn input_names(g: &Graph) -> Vec<String> {
    g.inputs().iter().map(|&v| g.node(v).name.clone()).collect()
}

fn output_names(g: &Graph) -> Vec<String> {
    g.outputs().iter().map(|(n, _)| n.clone()).collect()
}

/// Chunk 1 on the model's inputs, then chunk 2 on those and chunk 1's outputs, as the Swift
/// package feeds them; `run` evaluates one graph.
fn chained(
    halves: &[Graph; 2],
    feed: &BTreeMap<String, Array>,
    run: impl Fn(&Graph, &BTreeMap<String, Array>) -> BTreeMap<String, Array>,
) -> BTreeMap<String, Array> {
    let mut all = feed.clone();
    all.extend(run(&halves[0], feed));
    run(&halves[1], &all)
}

fn ir_eval(g: &Graph, feed: &BTreeMap<String, Array>) -> BTreeMap<String, Array> {
    mlc::ir::eval::evaluate(g, feed).unwrap()
}

/// The graph lowered to an ML Program in memory and run by mlc's MIL evaluator, every fp16 value
/// rounded to fp16 as a device stores it.
fn mil_eval(g: &Graph, feed: &BTreeMap<String, Array>) -> BTreeMap<String, Array> {
    let target = mlc::mil::Target::Ios18;
    let lowered = lower(g, target, &ModelInfo::default(), &FeatureTypes::default()).unwrap();
    let Some(Type::MlProgram(program)) = &lowered.model.r#type else {
        panic!("{}: not an ML Program", g.name);
    };
    let blobs = lowered
        .weight_bin
        .as_deref()
        .map(|b| BlobReader::new(b).unwrap());
    // Only the inputs the graph declares: Core ML refuses extra features.
    let own: BTreeMap<String, Array> = feed
        .iter()
        .filter(|(k, _)| input_names(g).contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let options = EvalOptions {
        fp16_activations: true,
        ..Default::default()
    };
    mlc::mil::eval::evaluate_with(program, "main", blobs.as_ref(), &own, options)
        .unwrap()
        .0
}

fn compressed(g: &Graph) -> usize {
    g.nodes()
        .filter(|(_, n)| matches!(n.op, Op::Const(ConstData::Palettized(_))))
        .count()
}

/// Splits the final graph of `name` and checks the chunks against the whole graph; returns the
/// whole graph's weight bytes.
fn check(name: &str, precision: Precision, compression: Option<Compression>) -> u64 {
    let what = format!("{name} {precision:?} {compression:?}");
    let g = final_graph(name, precision, compression.clone());
    let feed = inputs(&g);
    let whole = ir_eval(&g, &feed);
    let t = std::time::Instant::now();
    let halves = split_in_two(&g).unwrap();
    let took = t.elapsed();
    let [one, two] = &halves;

    assert!(input_names(one).contains(&"sample".to_string()), "{what}");
    if name == "sdxl" {
        assert!(input_names(one).contains(&"time_ids".to_string()), "{what}");
    }
    assert_eq!(output_names(two), ["noise_pred"], "{what}");
    // The IR evaluator keeps fp16-typed values at f32 precision inside a graph but rounds an
    // fp16 input, so in an fp16 build the crossing values are rounded once more than in the
    // whole graph: exact in fp32, close in fp16 (the lowered programs below, which round every
    // fp16 value as the device does, are exact in both).
    let got = chained(&halves, &feed, ir_eval);
    match precision {
        Precision::Fp32 => assert_eq!(got["noise_pred"], whole["noise_pred"], "{what}: IR"),
        Precision::Fp16 => {
            let e = relative_error(&got["noise_pred"], &whole["noise_pred"]);
            eprintln!("{what}: IR evaluator, chained vs whole: {e:.1e}");
            assert!(e < 2e-3, "{what}: IR evaluator {e:.1e}");
        }
    }

    let total = weight_bytes(&g);
    let shares = [weight_bytes(one), weight_bytes(two)].map(|b| b as f64 / total as f64);
    for s in shares {
        assert!((0.35..=0.65).contains(&s), "{what}: shares {shares:?}");
    }
    if compression.is_some() {
        assert!(compressed(one) > 0 && compressed(two) > 0, "{what}");
        assert_eq!(compressed(one) + compressed(two), compressed(&g), "{what}");
    }

    let crossing: Vec<String> = one
        .outputs()
        .iter()
        .map(|(n, v)| format!("{n} {}", one.ty(*v)))
        .collect();
    eprintln!(
        "{what}: {} + {} of {} nodes, weights {:.1} % + {:.1} % of {total} bytes, crossing {crossing:?}, \
         chunk 1 reads {:?}, chunk 2 reads {:?}, split in {took:?}",
        one.len(),
        two.len(),
        g.len(),
        shares[0] * 100.0,
        shares[1] * 100.0,
        input_names(one),
        input_names(two),
    );

    // Both halves lower to ML Programs whose chained outputs are the whole program's.
    let lowered = chained(&halves, &feed, mil_eval);
    assert_eq!(
        lowered["noise_pred"],
        mil_eval(&g, &feed)["noise_pred"],
        "{what}: lowered"
    );

    // Consuming the graph gives the same halves.
    assert_eq!(
        split_at_owned(g.clone(), mlc::ir::split::best_cut(&g).unwrap()).unwrap(),
        halves
    );
    total
}

#[test]
fn sd15_unet_chunks_compute_the_whole_unet() {
    let fp16 = check("sd15", Precision::Fp16, None);
    let fp32 = check("sd15", Precision::Fp32, None);
    // The fp32 build's weights, fp16 in the file, are written (and counted) as fp32; int32
    // shapes and the fp16 build's fp32 regions keep their size.
    let ratio = fp32 as f64 / fp16 as f64;
    assert!((ratio - 2.0).abs() < 0.01, "{fp32} / {fp16} bytes");
}

#[test]
fn sdxl_unet_chunks_compute_the_whole_unet() {
    check("sdxl", Precision::Fp16, None);
    check("sdxl", Precision::Fp32, None);
}

#[test]
fn palettized_chunks_stay_compressed() {
    let palettize = Compression::Palettize {
        bits: 4,
        group_size: None,
        min_elements: 2048,
    };
    let packed = check("sd15", Precision::Fp16, Some(palettize));
    // Counted at their compressed size: 4-bit indices for the large weights (the small ones
    // stay fp16), not the fp16 values they stand for.
    let dense = check("sd15", Precision::Fp16, None);
    assert!(packed * 3 < dense, "{packed} of {dense} bytes");
}

/// Full-size measurement (not run by default): `MLC_SPLIT_BENCH=DIR cargo test --release --test
/// split -- --ignored --nocapture`, DIR holding `tests/bench/unet_bench.sh`'s synthetic UNets
/// (`DIR/{sd15,sdxl}/unet/diffusion_pytorch_model.fp16.safetensors`; MODELS="sd15 sdxl" picks,
/// default sd15). Builds the fp16 ANE-layout UNet at a 64x64 latent, splits it consuming the
/// graph, and prints each half's weight share, the crossing values, the time taken and the
/// weight.bin of each lowered half.
#[test]
#[ignore]
fn full_size_split() {
    let Ok(dir) = std::env::var("MLC_SPLIT_BENCH") else {
        eprintln!("set MLC_SPLIT_BENCH to the folder of tests/bench/unet_bench.sh's weights");
        return;
    };
    let models = std::env::var("MODELS").unwrap_or_else(|_| "sd15".into());
    for name in models.split_whitespace() {
        let model = if name == "sdxl" {
            "sdxl-unet"
        } else {
            "sd-unet"
        };
        let path = std::path::Path::new(&dir).join(format!(
            "{name}/unet/diffusion_pytorch_model.fp16.safetensors"
        ));
        let mut o = BuildOptions::new(model, &path);
        o.io_precision = Some(Precision::Fp32);
        o.sizes = Sizes::Latent(vec![[64, 64]]);
        o.model_options = ModelOptions {
            layout: TransformerLayout::Ane,
            ..Default::default()
        };
        let t = std::time::Instant::now();
        let w = mlc::weights::Weights::load(&path).unwrap();
        let g = mlc::compiler::declare_owned(&o, w).unwrap();
        let pipeline = mlc::compiler::pipeline_options(&o).unwrap();
        let g = mlc::passes::run(g, &mlc::passes::prepare(&pipeline), |_, _| {}).unwrap();
        let g = mlc::passes::run(g, &mlc::passes::finish(&pipeline, None), |_, _| {}).unwrap();
        eprintln!(
            "{name}: final graph of {} nodes in {:?}",
            g.len(),
            t.elapsed()
        );
        let total = weight_bytes(&g);
        let t = std::time::Instant::now();
        let cut = mlc::ir::split::best_cut(&g).unwrap();
        let chose = t.elapsed();
        let t = std::time::Instant::now();
        let halves = split_at_owned(g, cut).unwrap();
        let split = t.elapsed();
        let [one, two] = &halves;
        let crossing: u64 = one
            .outputs()
            .iter()
            .map(|(_, v)| {
                let ty = one.ty(*v);
                let n: usize = ty.known_shape().unwrap().iter().product();
                (n * ty.dtype.byte_size()) as u64
            })
            .sum();
        eprintln!(
            "{name}: cut at node {cut} (chosen in {chose:?}, split in {split:?}): weights {} + {} \
             of {total} bytes ({:.1} % + {:.1} %), {} values cross ({crossing} bytes), chunk 1 \
             reads {:?}, chunk 2 reads the model inputs {:?}",
            weight_bytes(one),
            weight_bytes(two),
            weight_bytes(one) as f64 * 100.0 / total as f64,
            weight_bytes(two) as f64 * 100.0 / total as f64,
            one.outputs().len(),
            input_names(one),
            input_names(two)
                .into_iter()
                .filter(|n| input_names(one).contains(n))
                .collect::<Vec<_>>(),
        );
        let [one, two] = halves;
        for h in [one, two] {
            let t = std::time::Instant::now();
            let target = mlc::mil::Target::Ios16;
            let l = lower(&h, target, &ModelInfo::default(), &FeatureTypes::default()).unwrap();
            eprintln!(
                "{name}: {} lowered in {:?}, weight.bin {} bytes",
                h.name,
                t.elapsed(),
                l.weight_bytes()
            );
        }
    }
}
