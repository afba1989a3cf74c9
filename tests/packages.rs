//! Package-level properties: determinism, container independence, interface and metadata.

mod common;

use common::*;
use mlc::compiler::{build, BuildOptions};
use mlc::package::read_package;
use mlc::proto::specification as spec;
use std::path::Path;

fn build_from(weights: &Path, out: &Path) {
    build_with(weights, out, |_| {});
}

fn build_with(weights: &Path, out: &Path, set: impl Fn(&mut BuildOptions)) {
    let mut o = BuildOptions::new("taef2", weights);
    o.output = Some(out.to_path_buf());
    o.sizes = mlc::compiler::Sizes::Latent(vec![[32, 32]]);
    set(&mut o);
    build(&o).unwrap();
}

/// The checkpoint stores fp16, the safetensors fp32 (the same values): fp16 weights stay fp16
/// in the graph, so an fp32 build widens them where it lowers or compresses them, and must
/// then match the fp32 file's package byte for byte.
#[test]
fn fp16_weights_in_fp32_builds_match_the_fp32_file() {
    use mlc::compiler::{Compression, Precision};
    type Setting = fn(&mut BuildOptions);
    let dir = out_dir("fp16_weights_fp32_build");
    let settings: [(&str, Setting); 2] = [
        ("fp32", |o| o.precision = Precision::Fp32),
        ("fp32_palettized", |o| {
            o.precision = Precision::Fp32;
            o.compression = Some(Compression::Palettize {
                bits: 4,
                group_size: None,
                min_elements: 2048,
            });
        }),
    ];
    for (name, set) in settings {
        let st = dir.join(format!("{name}_st.mlpackage"));
        let pth = dir.join(format!("{name}_pth.mlpackage"));
        build_with(&taef2_weights(), &st, set);
        build_with(&shared("weights/taef2_decoder.pth"), &pth, set);
        let (a, b) = (files(&st), files(&pth));
        assert!(a[1].1.len() > 1000, "{name}: no weights");
        assert_eq!(a, b, "{name}: .pth and .safetensors builds differ");
    }
}

#[test]
fn same_inputs_same_bytes_and_containers_do_not_matter() {
    let dir = out_dir("determinism");
    build_from(&taef2_weights(), &dir.join("a.mlpackage"));
    build_from(&taef2_weights(), &dir.join("b.mlpackage"));
    build_from(
        &shared("weights/taef2_decoder.pth"),
        &dir.join("pth.mlpackage"),
    );
    let a = files(&dir.join("a.mlpackage"));
    assert_eq!(
        a.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [
            "Data/com.apple.CoreML/model.mlmodel",
            "Data/com.apple.CoreML/weights/weight.bin",
            "Manifest.json"
        ]
    );
    assert_eq!(a, files(&dir.join("b.mlpackage")), "two builds differ");
    assert_eq!(
        a,
        files(&dir.join("pth.mlpackage")),
        ".pth and .safetensors builds differ"
    );

    // Diffusers-style keys: same tensors, so the same graph, weights and digest; only the
    // recorded source (the file stem) differs.
    build_from(
        &shared("weights/taef2_diffusers_style.safetensors"),
        &dir.join("diffusers.mlpackage"),
    );
    let d = files(&dir.join("diffusers.mlpackage"));
    assert_eq!(a[1], d[1], "weight.bin differs for diffusers-style keys");
    let meta = |p: &str| {
        read_package(&dir.join(p))
            .unwrap()
            .model
            .description
            .unwrap()
            .metadata
            .unwrap()
            .user_defined
    };
    let (ma, md) = (meta("a.mlpackage"), meta("diffusers.mlpackage"));
    assert_eq!(ma["mlc.weights.sha256"], md["mlc.weights.sha256"]);
    assert_eq!(ma["mlc.weights.source"], "taef2_decoder");
    assert_eq!(md["mlc.weights.source"], "taef2_diffusers_style");
    oracle(&dir);
}

#[test]
fn interface_and_metadata() {
    let dir = out_dir("interface");
    let mut o = BuildOptions::new("flux2", taef2_weights());
    o.output = Some(dir.join("m.mlpackage"));
    o.sizes = mlc::compiler::Sizes::Latent(vec![[32, 48]]);
    o.target = mlc::mil::Target::Ios17;
    let report = build(&o).unwrap();
    assert!(
        report.weight_bytes > 2_600_000 && report.weight_bytes < 2_800_000,
        "{}",
        report.weight_bytes
    );
    let m = read_package(&report.package).unwrap().model;
    assert_eq!(m.specification_version, 8);
    let d = m.description.as_ref().unwrap();
    let array =
        |f: &spec::FeatureDescription| match f.r#type.as_ref().unwrap().r#type.as_ref().unwrap() {
            spec::feature_type::Type::MultiArrayType(a) => (a.shape.clone(), a.data_type),
            other => panic!("{other:?}"),
        };
    assert_eq!(d.input.len(), 1);
    assert_eq!(d.input[0].name, "latent");
    assert_eq!(
        array(&d.input[0]),
        (
            vec![1, 32, 32, 48],
            spec::array_feature_type::ArrayDataType::Float16 as i32
        )
    );
    assert_eq!(d.output[0].name, "image");
    assert_eq!(
        array(&d.output[0]),
        (
            vec![1, 3, 256, 384],
            spec::array_feature_type::ArrayDataType::Float16 as i32
        )
    );
    let meta = &d.metadata.as_ref().unwrap().user_defined;
    assert_eq!(meta["mlc.model"], "taef2");
    assert_eq!(meta["mlc.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(meta["mlc.weights.sha256"].len(), 64);
    let Some(spec::model::Type::MlProgram(p)) = &m.r#type else {
        panic!("not a program")
    };
    assert_eq!(p.functions["main"].opset, "CoreML7");
    // No group_norm survives, and every conv weight is fp16 in the blob file.
    let ops = &p.functions["main"].block_specializations["CoreML7"].operations;
    let count = |t: &str| ops.iter().filter(|o| o.r#type == t).count();
    assert_eq!(count("conv"), 3 * 2 + 10 * 3 + 3 + 2);
    assert_eq!(count("upsample_nearest_neighbor"), 3);
    assert_eq!(count("cast"), 0, "fp16 I/O needs no casts");
    oracle(&dir);
}
