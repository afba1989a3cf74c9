//! `mlc::mlmodelc` against Apple's own `coremlc` outputs (tests/data/mlmodelc, from the
//! mlmodelc-export crate's fixtures): every file byte for byte, except `metadata.json`, which
//! is compared as JSON.

use std::fs;
use std::path::{Path, PathBuf};

use mlc::mlmodelc::{compile, CompileOptions};

const FIXTURES: &[&str] = &[
    "flexible-gather",
    "flexible-multifunction",
    "flexible-range",
    "flexible-weighted-legacy",
    "fp16-subnormal-cast",
    "neg-0d-scalar",
    "quantized-constexpr",
];

fn dir(fixture: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/mlmodelc")
        .join(fixture)
}

/// Apple's `buildInfo` entries, read from its `model.mil`, so the whole file can be compared.
fn apple_build_info(mil: &str) -> Vec<(String, String)> {
    let line = mil.lines().nth(1).unwrap();
    let mut out = Vec::new();
    for key in ["coremlc-component-MIL", "coremlc-version"] {
        let at = line.find(&format!("\"{key}\", \"")).unwrap() + key.len() + 5;
        let end = at + line[at..].find('"').unwrap();
        out.push((key.to_owned(), line[at..end].to_owned()));
    }
    out
}

fn compile_fixture(fixture: &str, opts: &CompileOptions) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("input.mlmodelc");
    compile(&dir(fixture).join("input.mlmodel"), &out, opts)
        .unwrap_or_else(|e| panic!("{fixture}: {e}"));
    (tmp, out)
}

#[test]
fn model_mil_is_byte_exact() {
    for f in FIXTURES {
        let expected =
            fs::read_to_string(dir(f).join("expected-macos.mlmodelc/model.mil")).unwrap();
        let opts = CompileOptions {
            build_info: apple_build_info(&expected),
        };
        let (_tmp, out) = compile_fixture(f, &opts);
        let got = fs::read_to_string(out.join("model.mil")).unwrap();
        assert_eq!(got, expected, "{f}: model.mil differs");

        // mlc's own buildInfo changes that line only.
        let (_tmp, out) = compile_fixture(f, &CompileOptions::default());
        let own = fs::read_to_string(out.join("model.mil")).unwrap();
        let own_lines: Vec<&str> = own.split('\n').collect();
        let apple_lines: Vec<&str> = expected.split('\n').collect();
        assert_eq!(own_lines.len(), apple_lines.len(), "{f}");
        for (i, (a, b)) in own_lines.iter().zip(&apple_lines).enumerate() {
            if i == 1 {
                assert!(a.contains("{\"mlc-version\", \""), "{f}: {a}");
                assert!(!a.contains("coremlc"), "{f}: {a}");
            } else {
                assert_eq!(a, b, "{f}: line {i}");
            }
        }
    }
}

#[test]
fn binary_files_and_weights_are_byte_exact() {
    for f in FIXTURES {
        let (_tmp, out) = compile_fixture(f, &CompileOptions::default());
        let expected = dir(f).join("expected-macos.mlmodelc");
        for rel in ["coremldata.bin", "analytics/coremldata.bin"] {
            assert_eq!(
                fs::read(out.join(rel)).unwrap(),
                fs::read(expected.join(rel)).unwrap(),
                "{f}: {rel} differs"
            );
        }
        let weights = expected.join("weights/weights.bin");
        assert_eq!(
            out.join("weights/weights.bin").exists(),
            weights.exists(),
            "{f}: weights"
        );
        if weights.exists() {
            assert_eq!(
                fs::read(out.join("weights/weights.bin")).unwrap(),
                fs::read(weights).unwrap()
            );
        }
        let mut names: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = fs::read_dir(&expected)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        want.sort();
        assert_eq!(names, want, "{f}: bundle layout");
    }
}

#[test]
fn metadata_json_is_structurally_equal() {
    for f in FIXTURES {
        let (_tmp, out) = compile_fixture(f, &CompileOptions::default());
        let got: serde_json::Value =
            serde_json::from_slice(&fs::read(out.join("metadata.json")).unwrap()).unwrap();
        let want: serde_json::Value = serde_json::from_slice(
            &fs::read(dir(f).join("expected-macos.mlmodelc/metadata.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(got, want, "{f}: metadata.json differs");
    }
}

#[test]
fn enumerated_shapes_are_refused_with_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("e.mlmodelc");
    let e = compile(
        &dir("flexible-enumerated").join("input.mlmodel"),
        &out,
        &CompileOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("enumerated shapes") && e.contains("--multifunction"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    assert!(!out.exists());
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "left something behind"
    );
}

/// A writable copy of a fixture's input (model file and weights).
fn input_copy(fixture: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = dir(fixture);
    fs::copy(src.join("input.mlmodel"), tmp.path().join("input.mlmodel")).unwrap();
    if src.join("weights").exists() {
        fs::create_dir(tmp.path().join("weights")).unwrap();
        fs::copy(
            src.join("weights/weights.bin"),
            tmp.path().join("weights/weights.bin"),
        )
        .unwrap();
    }
    let model = tmp.path().join("input.mlmodel");
    (tmp, model)
}

/// Compiling fails with a one-line error containing `needle`, and leaves nothing beside the
/// input but what was there.
fn refused(model: &Path, needle: &str) {
    let parent = model.parent().unwrap();
    let before = fs::read_dir(parent).unwrap().count();
    let out = parent.join("x.mlmodelc");
    let e = compile(model, &out, &CompileOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains(needle), "{e}");
    assert!(!e.contains('\n'), "{e}");
    assert!(!out.exists());
    assert_eq!(fs::read_dir(parent).unwrap().count(), before, "{e}");
}

#[test]
fn missing_weights_are_refused() {
    let (_tmp, model) = input_copy("quantized-constexpr");
    fs::remove_file(model.parent().unwrap().join("weights/weights.bin")).unwrap();
    refused(&model, "weights.bin");
}

#[test]
fn blobs_out_of_range_are_refused() {
    let (_tmp, model) = input_copy("quantized-constexpr");
    let w = model.parent().unwrap().join("weights/weights.bin");
    // The record at 64 stays, but its data no longer fits the file.
    let bytes = fs::read(&w).unwrap();
    fs::write(&w, &bytes[..130]).unwrap();
    refused(&model, "runs past the end");
    // A record offset past the end of the file.
    fs::write(&w, &bytes[..64]).unwrap();
    refused(&model, "at offset 64");
}

#[test]
fn neural_network_models_are_refused() {
    use prost::Message;
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("nn.mlmodel");
    let mut bytes = mlc::proto::specification::Model {
        specification_version: 4,
        ..Default::default()
    }
    .encode_to_vec();
    // Field 500 (`neuralNetwork`), an empty message: unknown to mlc's schema subset.
    bytes.extend_from_slice(&[0xa2, 0x1f, 0x00]);
    fs::write(&model, bytes).unwrap();
    refused(&model, "not an ML Program");
    fs::write(&model, b"\xff\xff").unwrap();
    refused(&model, "cannot decode");
}

#[test]
fn only_a_compiled_model_is_replaced() {
    let (_tmp, model) = input_copy("flexible-range");
    let parent = model.parent().unwrap().to_path_buf();
    let out = parent.join("x.mlmodelc");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("precious.txt"), b"keep").unwrap();
    let e = compile(&model, &out, &CompileOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not replacing"), "{e}");
    assert_eq!(fs::read(out.join("precious.txt")).unwrap(), b"keep");
    fs::remove_dir_all(&out).unwrap();
    // A bundle is replaced by a fresh one.
    compile(&model, &out, &CompileOptions::default()).unwrap();
    fs::write(out.join("stale"), b"").unwrap();
    compile(&model, &out, &CompileOptions::default()).unwrap();
    assert!(!out.join("stale").exists());
    assert!(out.join("model.mil").is_file());
    let hidden: Vec<_> = fs::read_dir(&parent)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .collect();
    assert!(hidden.is_empty(), "temporaries left: {hidden:?}");
}

/// The spec-7 package coremltools 9.0 wrote: the old dialect, laid out as in Apple's spec-7
/// bundles (MLMODELC.md §2.1: `tensor<T, []>` scalars, 12/8/4 indentation, no final newline).
#[test]
fn spec_7_package_gets_the_old_dialect() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ct_conv_relu.mlpackage");
    let out = tmp.path().join("ct.mlmodelc");
    compile(&pkg, &out, &CompileOptions::default()).unwrap();
    let mil = fs::read_to_string(out.join("model.mil")).unwrap();
    let lines: Vec<&str> = mil.split('\n').collect();
    assert_eq!(lines[0], "program(1.0)");
    assert!(lines[1].starts_with(
        "[buildInfo = dict<tensor<string, []>, tensor<string, []>>({{\"coremltools-component-milinternal\", \"\"}, {\"coremltools-version\", \"9.0\"}, {\"mlc-version\", "
    ), "{}", lines[1]);
    assert_eq!(
        lines[3],
        "    func main<ios16>(tensor<fp32, [1, 4, 8, 8]> x) {"
    );
    assert!(lines.contains(&"            tensor<int32, []> conv_groups_0 = const()[name = tensor<string, []>(\"conv_groups_0\"), val = tensor<int32, []>(1)];"));
    assert!(lines.contains(&"            tensor<fp16, [8, 4, 3, 3]> conv_weight_0_to_fp16 = const()[name = tensor<string, []>(\"conv_weight_0_to_fp16\"), val = tensor<fp16, [8, 4, 3, 3]>(BLOBFILE(path = tensor<string, []>(\"@model_path/weights/weight.bin\"), offset = tensor<uint64, []>(64)))];"));
    assert!(mil.ends_with("        } -> (out);\n}"));
    // The package's weights keep their name and offsets.
    assert_eq!(
        fs::read(out.join("weights/weight.bin")).unwrap(),
        fs::read(pkg.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap()
    );
    let cd = fs::read(out.join("coremldata.bin")).unwrap();
    assert_eq!((cd[4], cd[0x2b]), (5, 7), "header word and spec version");
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(meta[0]["availability"]["macOS"], "13.0");
    assert_eq!(meta[0]["storagePrecision"], "Float16");
    assert_eq!(meta[0]["generatedClassName"], "ct_conv_relu");
}

/// Parsing Apple's `model.mil` and mlc's own gives back the program: written again, it is the
/// same text, and it has the source's operations, names and types.
#[test]
fn model_mil_parses_back_to_the_source_program() {
    use mlc::proto::specification::{model, Model};
    use prost::Message;
    let program = |m: &Model| match &m.r#type {
        Some(model::Type::MlProgram(p)) => p.clone(),
        _ => panic!("not a program"),
    };
    let mut cases: Vec<(String, Model, PathBuf)> = FIXTURES
        .iter()
        .map(|f| {
            let bytes = fs::read(dir(f).join("input.mlmodel")).unwrap();
            (
                f.to_string(),
                Model::decode(bytes.as_slice()).unwrap(),
                dir(f).join("expected-macos.mlmodelc"),
            )
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ct_conv_relu.mlpackage");
    let ct = tmp.path().join("ct.mlmodelc");
    compile(&pkg, &ct, &CompileOptions::default()).unwrap();
    let ct_model = Model::decode(
        fs::read(pkg.join("Data/com.apple.CoreML/model.mlmodel"))
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    cases.push(("ct_conv_relu".into(), ct_model, ct));

    for (name, source, bundle) in cases {
        let text = fs::read_to_string(bundle.join("model.mil")).unwrap();
        let read = mlc::mlmodelc::read_bundle(&bundle).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            read.specification_version, source.specification_version,
            "{name}"
        );
        // The description in coremldata.bin is the source's (plus an empty metadata).
        let (d_read, d_src) = (
            read.description.clone().unwrap(),
            source.description.clone().unwrap(),
        );
        assert_eq!(d_read.input, d_src.input, "{name}");
        assert_eq!(d_read.output, d_src.output, "{name}");
        assert_eq!(d_read.functions, d_src.functions, "{name}");

        let (p_read, p_src) = (program(&read), program(&source));
        assert_eq!(
            p_read.functions.keys().collect::<Vec<_>>(),
            p_src.functions.keys().collect::<Vec<_>>()
        );
        for (fname, f) in &p_src.functions {
            let g = &p_read.functions[fname];
            assert_eq!(g.opset, f.opset, "{name}");
            let mut inputs = f.inputs.clone();
            inputs.sort_by(|a, b| a.name.cmp(&b.name));
            assert_eq!(g.inputs, inputs, "{name}: {fname} inputs");
            let (a, b) = (
                &g.block_specializations[&g.opset],
                &f.block_specializations[&f.opset],
            );
            assert_eq!(a.outputs, b.outputs, "{name}");
            assert_eq!(a.operations.len(), b.operations.len(), "{name}");
            for (x, y) in a.operations.iter().zip(&b.operations) {
                assert_eq!(x.r#type, y.r#type, "{name}");
                assert_eq!(x.outputs, y.outputs, "{name}");
                assert_eq!(
                    x.inputs.keys().collect::<Vec<_>>(),
                    y.inputs.keys().collect::<Vec<_>>(),
                    "{name}"
                );
                assert_eq!(
                    x.attributes.keys().collect::<Vec<_>>(),
                    y.attributes.keys().collect::<Vec<_>>(),
                    "{name}"
                );
            }
        }
        // Values compare by their text: written again, the parsed program is the same file.
        let again =
            mlc::mlmodelc::model_mil(&read, &CompileOptions { build_info: vec![] }).unwrap();
        assert_eq!(again, text, "{name}: parse and write is not the identity");
    }
}

/// The bundle, read back, evaluates to exactly the numbers of its package (mlc's evaluator on
/// both; the weights are the same file).
#[test]
fn compiled_bundle_evaluates_like_its_package() {
    use mlc::kernels::Array;
    let tmp = tempfile::tempdir().unwrap();
    let pkg_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ct_conv_relu.mlpackage");
    let out = tmp.path().join("ct.mlmodelc");
    compile(&pkg_path, &out, &CompileOptions::default()).unwrap();
    let pkg = mlc::package::read_package(&pkg_path).unwrap();
    let bundle = mlc::mlmodelc::read_as_package(&out).unwrap();
    let x: Vec<f32> = (0..256)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let inputs = [("x".to_string(), Array::new(vec![1, 4, 8, 8], x))]
        .into_iter()
        .collect();
    let a = mlc::run::run(&pkg, "main", &inputs).unwrap();
    let b = mlc::run::run(&bundle, "main", &inputs).unwrap();
    assert_eq!(a["out"].data, b["out"].data);
    assert!(
        a["out"].data.iter().any(|&v| v > 0.0),
        "a trivial output proves nothing"
    );
}

/// Packages mlc itself writes, beyond the fixtures: a 4-bit palettized TAEF2 decoder at iOS16
/// (`constexpr_lut_to_dense`, whose `shape` is uint32 stored as bytes) and a CLIP text encoder
/// (int32 ids, gather, layer norm, argmax, masked attention): compiled, read back and evaluated
/// to the same numbers as the package; and a W8A8 TAEF2 at iOS17 (int8 weights, `quantize` to
/// int8 tensors and `dequantize` with int8 scalar zero points).
#[test]
fn mlc_packages_compile_and_evaluate_alike() {
    use mlc::compiler::{build, BuildOptions, Sizes};
    use mlc::kernels::Array;
    use mlc::passes::Compression;
    use std::collections::BTreeMap;
    let tmp = tempfile::tempdir().unwrap();
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let mut taef2 = BuildOptions::new("flux2", shared.join("weights/taef2_decoder.safetensors"));
    taef2.sizes = Sizes::Latent(vec![[4, 4]]);
    taef2.compression = Some(Compression::Palettize {
        bits: 4,
        group_size: None,
        min_elements: 1024,
    });
    taef2.output = Some(tmp.path().join("taef2.mlpackage"));
    let latent: Vec<f32> = (0..32 * 16)
        .map(|i| ((i * 29 % 97) as f32 - 48.0) / 24.0)
        .collect();
    let mut clip = BuildOptions::new(
        "clip-l",
        shared.join("fixtures/clip/clip_l/model.safetensors"),
    );
    clip.output = Some(tmp.path().join("clip.mlpackage"));
    let mut ids = vec![49407.0f32; 77];
    ids[..4].copy_from_slice(&[49406.0, 320.0, 1125.0, 49407.0]);
    let latent = Array::new(vec![1, 32, 4, 4], latent);
    let mut w8a8 = taef2.clone();
    w8a8.target = mlc::mil::Target::Ios17;
    w8a8.compression = Some(Compression::Quantize {
        mode: mlc::compiler::QuantMode::Int8,
        block_size: None,
        min_elements: 1024,
    });
    w8a8.quantize_activations = Some(mlc::compiler::ActivationRanges::MaxAbs(BTreeMap::from([(
        "latent".to_string(),
        latent.clone(),
    )])));
    w8a8.output = Some(tmp.path().join("taef2_w8a8.mlpackage"));
    let cases = [
        (taef2, "latent", latent.clone()),
        (w8a8, "latent", latent),
        (clip, "input_ids", Array::new(vec![1, 77], ids)),
    ];
    for (opts, input, value) in cases {
        let pkg_path = build(&opts).unwrap().package;
        let out = pkg_path.with_extension("mlmodelc");
        compile(&pkg_path, &out, &CompileOptions::default()).unwrap();
        if opts.quantize_activations.is_some() {
            let mil = fs::read_to_string(out.join("model.mil")).unwrap();
            assert!(mil.contains("quantize(") && mil.contains("dequantize("));
        }
        let pkg = mlc::package::read_package(&pkg_path).unwrap();
        let bundle = mlc::mlmodelc::read_as_package(&out).unwrap();
        let inputs = BTreeMap::from([(input.to_string(), value)]);
        let a = mlc::run::run(&pkg, "main", &inputs).unwrap();
        let b = mlc::run::run(&bundle, "main", &inputs).unwrap();
        assert!(!a.is_empty());
        assert_eq!(a, b, "{}", pkg_path.display());
    }
}

/// A bundle is untrusted when read back: weight paths that leave it, by `..` or by a symlink,
/// are one-line errors naming the file at fault.
#[cfg(unix)]
#[test]
fn hostile_bundles_are_refused_when_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ct_conv_relu.mlpackage");
    let out = tmp.path().join("ct.mlmodelc");
    compile(&pkg, &out, &CompileOptions::default()).unwrap();
    let mil = fs::read_to_string(out.join("model.mil")).unwrap();
    let read_err = || {
        let e = mlc::mlmodelc::read_as_package(&out)
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    };
    let reference = "\"@model_path/weights/weight.bin\"";
    assert_eq!(
        mil.matches(reference).count(),
        1,
        "one weight in the program"
    );

    fs::write(
        out.join("model.mil"),
        mil.replace(reference, "\"@model_path/../weight.bin\""),
    )
    .unwrap();
    let e = read_err();
    assert!(e.contains("not a path under @model_path/"), "{e}");

    fs::write(out.join("model.mil"), &mil).unwrap();
    assert!(mlc::mlmodelc::read_as_package(&out)
        .unwrap()
        .weights
        .is_some());

    // The weight file a symlink to outside the bundle.
    let outside = tmp.path().join("outside.bin");
    fs::copy(out.join("weights/weight.bin"), &outside).unwrap();
    fs::remove_file(out.join("weights/weight.bin")).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("weights/weight.bin")).unwrap();
    let e = read_err();
    assert!(
        e.contains("weight.bin") && e.contains("resolves outside the bundle"),
        "{e}"
    );
}
