//! Issue 3: palettization and 8-bit quantization of TAEF2, checked for quantization error,
//! package size, decoded image quality (from the emitted package) and coremltools' acceptance.

mod common;

use common::*;
use mlc::compiler::{build, build_program_from_weights, BuildOptions, Compression, QuantMode};
use mlc::ir::{ConstData, Graph, Op};
use mlc::kernels::Array;
use mlc::mil::Target;
use mlc::weights::Weights;
use std::collections::BTreeMap;
use std::path::Path;

fn palettize(bits: u32, group_size: Option<usize>) -> Compression {
    Compression::Palettize {
        bits,
        group_size,
        min_elements: 2048,
    }
}

fn quantize(mode: QuantMode, block_size: Option<usize>) -> Compression {
    Compression::Quantize {
        mode,
        block_size,
        min_elements: 2048,
    }
}

/// Sum over compressed weights of the squared error against the fp32 weights.
fn total_sse(c: Compression, target: Target) -> (f64, usize) {
    let w = Weights::load(&taef2_weights()).unwrap();
    let mut o = BuildOptions::new("flux2", "unused");
    o.sizes = mlc::compiler::Sizes::Latent(vec![[8, 8]]);
    o.target = target;
    o.compression = Some(c);
    let mut graphs: BTreeMap<String, Graph> = BTreeMap::new();
    build_program_from_weights(&o, &w, |pass, g| {
        graphs.insert(pass.to_string(), g.clone());
    })
    .unwrap();
    let dense: BTreeMap<&str, Vec<f32>> = graphs["fold_constants"]
        .nodes()
        .filter_map(|(_, n)| match &n.op {
            Op::Const(c) => Some((n.name.as_str(), c.dense().unwrap().to_f32())),
            _ => None,
        })
        .collect();
    let compressed = graphs
        .get("palettize")
        .or(graphs.get("quantize"))
        .expect("a compression pass ran");
    let (mut sse, mut count) = (0f64, 0);
    for (_, n) in compressed.nodes() {
        if let Op::Const(c @ (ConstData::Palettized(_) | ConstData::Quantized(_))) = &n.op {
            count += 1;
            let got = c.dense().unwrap().to_f32();
            sse += dense[n.name.as_str()]
                .iter()
                .zip(&got)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
        }
    }
    (sse, count)
}

#[test]
fn quantization_error_meets_the_reference_figures() {
    // The reference tool's sums on the same weights; exact k-means cannot lose to them.
    for (c, limit) in [
        (palettize(4, None), 66.1545),
        (palettize(8, None), 0.18579),
        (quantize(QuantMode::Int8, None), 0.79300),
    ] {
        let (sse, n) = total_sse(c.clone(), Target::Ios16);
        eprintln!("{c:?}: {n} tensors, total squared error {sse:.6}");
        assert_eq!(n, 40, "every conv weight with >= 2048 elements");
        assert!(sse <= limit, "{c:?}: {sse} > {limit}");
    }
    // Finer granularity can only help.
    let (grouped, _) = total_sse(palettize(4, Some(16)), Target::Ios18);
    let (tensor, _) = total_sse(palettize(4, None), Target::Ios18);
    assert!(grouped < tensor, "{grouped} vs {tensor}");
    let (block, _) = total_sse(quantize(QuantMode::Int8, Some(16)), Target::Ios18);
    let (channel, _) = total_sse(quantize(QuantMode::Int8, None), Target::Ios18);
    assert!(block < channel, "{block} vs {channel}");
}

/// Builds the TAEF2 decoder compressed by `c` for `target` as `name` in `dir` (at `latent_size`,
/// or the default) and decodes a fixture's latent with it: the package's weight.bin bytes, and
/// the decoded image against the fixture's, both printed.
fn decode_compressed(
    dir: &Path,
    name: &str,
    c: Compression,
    target: Target,
    latent_size: Option<[usize; 2]>,
    (latent, image): (&Array, &Array),
) -> (usize, mlc::run::Compare) {
    let mut o = BuildOptions::new("flux2", taef2_weights());
    o.output = Some(dir.join(format!("{name}.mlpackage")));
    if let Some(size) = latent_size {
        o.sizes = mlc::compiler::Sizes::Latent(vec![size]);
    }
    o.target = target;
    o.compression = Some(c);
    let r = build(&o).unwrap();
    let inputs = BTreeMap::from([("latent".to_string(), latent.clone())]);
    let out = mlc::run::run_path(&r.package, &inputs)
        .unwrap()
        .remove("image")
        .unwrap();
    let q = compare(&out, image);
    eprintln!("{name}: weight.bin {} bytes, {q:?}", r.weight_bytes);
    (r.weight_bytes, q)
}

#[test]
fn packages_are_small_accurate_and_load_in_coremltools() {
    let dir = out_dir("compression");
    let (latent, image) = fixture("seed2_96x96");
    // (compression, target, weight.bin budget, PSNR floor on seed2): budgets are the reference
    // tool's sizes and quality.
    let cases = [
        (
            "pal4_ios16",
            palettize(4, None),
            Target::Ios16,
            688_448,
            27.3,
        ),
        (
            "pal8_ios16",
            palettize(8, None),
            Target::Ios16,
            1_372_992,
            52.0,
        ),
        (
            "int8_ios16",
            quantize(QuantMode::Int8, None),
            Target::Ios16,
            1_363_840,
            44.6,
        ),
        (
            "pal4_ios18",
            palettize(4, None),
            Target::Ios18,
            688_448,
            27.3,
        ),
        (
            "int8_ios18",
            quantize(QuantMode::Int8, None),
            Target::Ios18,
            1_363_840,
            44.6,
        ),
    ];
    for (name, c, target, max_bytes, min_psnr) in cases {
        let (weight_bytes, q) = decode_compressed(&dir, name, c, target, None, (&latent, &image));
        assert!(
            weight_bytes <= max_bytes,
            "{name}: {weight_bytes} > {max_bytes}"
        );
        assert!(q.psnr >= min_psnr, "{name}: {q:?}");
    }
    // Small variants of the other forms, for the oracle and the evaluator.
    let (small, small_image) = fixture("seed0_32x32");
    for (name, c, target) in [
        ("pal3_grouped_ios18", palettize(3, Some(16)), Target::Ios18),
        ("pal2_ios16", palettize(2, None), Target::Ios16),
        ("pal6_ios17", palettize(6, None), Target::Ios17),
        (
            "uint8_ios16",
            quantize(QuantMode::Uint8, None),
            Target::Ios16,
        ),
        (
            "uint8_ios18",
            quantize(QuantMode::Uint8, None),
            Target::Ios18,
        ),
        (
            "int8_block16_ios18",
            quantize(QuantMode::Int8, Some(16)),
            Target::Ios18,
        ),
    ] {
        let fixture = (&small, &small_image);
        let (_, q) = decode_compressed(&dir, name, c, target, Some([32, 32]), fixture);
        // Even 2-bit palettes decode recognisably (~19.6 dB); broken decompression gives < 10 dB.
        assert!(q.psnr > 18.0, "{name}: {q:?}");
    }
    oracle(&dir);
}

#[test]
fn compression_flags_reject_undefined_combinations() {
    let dir = out_dir("compression_cli");
    let w = taef2_arg();
    let bad: &[(&[&str], &str)] = &[
        (
            &["--palettize", "3"],
            "--palettize 3: ios16 supports [1, 2, 4, 6, 8] bits (3 needs target ios18)",
        ),
        (&["--palettize", "5", "--target", "ios18"], "--palettize 5"),
        (
            &[
                "--palettize",
                "4",
                "--granularity",
                "per-grouped-channel=16",
            ],
            "needs target ios18",
        ),
        (
            &[
                "--palettize",
                "4",
                "--granularity",
                "per-grouped-channel=48",
                "--target",
                "ios18",
            ],
            "group size 48 divides the output channels of no weight",
        ),
        (
            &["--palettize", "4", "--quantize", "int8"],
            "no defined meaning",
        ),
        (
            &["--quantize", "int8", "--block-size", "16"],
            "needs target ios18",
        ),
        (
            &[
                "--quantize",
                "int8",
                "--block-size",
                "48",
                "--target",
                "ios18",
            ],
            "block size 48 divides the input channels of no weight",
        ),
        (
            &[
                "--quantize",
                "uint8",
                "--block-size",
                "16",
                "--target",
                "ios18",
            ],
            "int8 only",
        ),
    ];
    for (args, needle) in bad {
        let base = taef2_build(&w, "8", &["-o", "bad.mlpackage"]);
        assert_refused(&dir, &base, args, needle);
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "{args:?} left output behind"
        );
    }
}
