//! 8-bit weight compression (`--palettize 8`, `--quantize int8`) on the CLIP encoders, text
//! (clip-l) and image (clip-vision), against transformers on ../shared/fixtures/clip: every case,
//! every output, fp16 packages evaluated through the emitted package. The token embedding table
//! (49,408 x 64 here, 38 M values in CLIP-L) is the largest weight, so it must be compressed
//! too, and the packages' weights shrink to about half the fp16 ones.

mod common;

use common::*;
use mlc::compiler::{build, BuildOptions, Compression, Precision, QuantMode};
use mlc::kernels::Array;
use mlc::mil::target::Target;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Budgets (relative to the reference's largest magnitude), about 2x the worst errors measured
/// on the fixtures' random weights (palettized 1.9e-2 for clip-l, 8.0e-3 for clip-vision; int8
/// 1.7e-2 and 1.1e-2), where k-means and per-channel scales find no structure to exploit; the
/// uncompressed fp16 packages measure below 1e-3 against the same references.
const PALETTIZE_8: f32 = 4e-2;
const INT8: f32 = 4e-2;

fn fixture(dir: &str) -> PathBuf {
    shared(&format!("fixtures/clip/{dir}"))
}

/// (model, fixture folder, cases, (input, its name in a case), (output, its name in a case)).
type Setup = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static [(&'static str, &'static str)],
);

const MODELS: [Setup; 2] = [
    (
        "clip-l",
        "clip_l",
        &["short", "long", "full"],
        "input_ids",
        &[
            ("last_hidden_state", "last_hidden_state"),
            ("pooled", "pooler_output"),
        ],
    ),
    (
        "clip-vision",
        "vision",
        &["image0", "image1"],
        "pixel_values",
        &[
            ("last_hidden_state", "last_hidden_state"),
            ("image_embeds", "image_embeds"),
        ],
    ),
];

fn weight_bytes(pkg: &Path) -> u64 {
    let p = pkg.join("Data/com.apple.CoreML/weights/weight.bin");
    std::fs::metadata(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .len()
}

#[test]
fn eight_bit_weights_stay_within_budget() {
    let out = out_dir("clip_compressed");
    let pal8 = |group_size| Compression::Palettize {
        bits: 8,
        group_size,
        min_elements: 2048,
    };
    let int8 = |block_size| Compression::Quantize {
        mode: QuantMode::Int8,
        block_size,
        min_elements: 2048,
    };
    // The grouped forms (iOS18) meet tensors whose rows or columns their size does not divide
    // (the 77 or 17 position embeddings, the 77-wide causal mask, the 3-channel patch
    // embedding): those keep one table or one scale per channel instead of failing the build.
    let settings: [(&str, Option<Compression>, f32, Target); 5] = [
        ("fp16", None, 5e-3, Target::Ios16),
        ("pal8", Some(pal8(None)), PALETTIZE_8, Target::Ios16),
        ("int8", Some(int8(None)), INT8, Target::Ios16),
        ("pal8_g64", Some(pal8(Some(64))), PALETTIZE_8, Target::Ios18),
        ("int8_b16", Some(int8(Some(16))), INT8, Target::Ios18),
    ];
    for (model, dir, cases, input, outputs) in MODELS {
        let mut fp16_bytes = 0;
        for (tag, compression, tol, target) in &settings {
            let name = format!("{model}_{tag}");
            let mut o = BuildOptions::new(model, fixture(dir).join("model.safetensors"));
            o.precision = Precision::Fp16;
            o.io_precision = Some(Precision::Fp32);
            o.compression = compression.clone();
            o.target = *target;
            o.output = Some(out.join(format!("{name}.mlpackage")));
            let pkg = build(&o).unwrap_or_else(|e| panic!("{name}: {e}")).package;
            let bytes = weight_bytes(&pkg);
            if compression.is_none() {
                fp16_bytes = bytes;
            } else {
                // 8 bits a weight instead of 16, plus tables or scales and the small tensors
                // left in fp16.
                println!("{name}: weights {bytes} bytes, fp16 {fp16_bytes}");
                assert!(
                    bytes * 10 < fp16_bytes * 6,
                    "{name}: {bytes} bytes of weights against fp16's {fp16_bytes}"
                );
            }
            let p = mlc::package::read_package(&pkg).unwrap();
            if model == "clip-l" && compression.is_some() {
                let text = mlc::mil::print::print_model(&p.model);
                let table = text
                    .lines()
                    .find(|l| l.contains("%embeddings_token_embedding_weight:"))
                    .unwrap_or_else(|| panic!("{name}: no token table"));
                assert!(table.contains("constexpr_"), "{name}: {table}");
            }
            for case in cases.iter() {
                let f =
                    mlc::run::read_safetensors(&fixture(dir).join(format!("{case}.safetensors")))
                        .unwrap();
                let x: Array = f[input].clone();
                let got = mlc::run::run(&p, "main", &BTreeMap::from([(input.into(), x)])).unwrap();
                for (output, reference) in outputs.iter() {
                    let what = format!("{name} {case} {output}");
                    assert_within(&what, &got[*output], &f[*reference], *tol);
                }
            }
        }
    }
}
