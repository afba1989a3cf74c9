//! `mlc compile` on the full-size SD VAE decoder, and mlc's MIL parser on Apple's compiled SD
//! VAEs: the `program(1.0)` bundles of github.com/Zabriskije/CoreML-VAEs (16 decoders and 16
//! encoders compiled by coremlc 1429.0.0 from coremltools 6.2 packages). That repository is
//! GPL-3.0, so its files are not copied here: the tests that need them read a checkout named
//! by `MLC_COREML_VAES` and are ignored by default (`cargo test --release --test
//! mlmodelc_sd_vae -- --ignored --nocapture`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mlc::mlmodelc::{compile, read_bundle, CompileOptions};
use mlc::proto::mil_spec as pb;
use mlc::proto::specification as spec;

fn apple_checkout() -> PathBuf {
    PathBuf::from(
        std::env::var("MLC_COREML_VAES")
            .expect("set MLC_COREML_VAES to a checkout of github.com/Zabriskije/CoreML-VAEs"),
    )
}

/// Every `X.mlmodelc` directory under `dir` that has a `model.mil`, sorted.
fn bundles_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.join("model.mil").is_file() {
                out.push(p);
            } else if p.is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

fn program(m: &spec::Model) -> &pb::Program {
    match &m.r#type {
        Some(spec::model::Type::MlProgram(p)) => p,
        _ => panic!("not a program"),
    }
}

fn main_block(m: &spec::Model) -> &pb::Block {
    let f = &program(m).functions["main"];
    &f.block_specializations[&f.opset]
}

/// Op type → count, over the main function.
fn histogram(m: &spec::Model) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for op in &main_block(m).operations {
        *h.entry(op.r#type.clone()).or_default() += 1;
    }
    h
}

/// The shapes and dtypes of the values stored in the weight file, in file order.
fn blob_layout(m: &spec::Model) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for op in &main_block(m).operations {
        for v in op.attributes.values() {
            if let Some(pb::value::Value::BlobFileValue(b)) = &v.value {
                let ty = match v.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
                    Some(pb::value_type::Type::TensorType(t)) => {
                        let dims: Vec<String> = t
                            .dimensions
                            .iter()
                            .map(|d| match &d.dimension {
                                Some(pb::dimension::Dimension::Constant(c)) => c.size.to_string(),
                                _ => "?".into(),
                            })
                            .collect();
                        format!("{:?} [{}]", t.data_type(), dims.join(", "))
                    }
                    _ => "?".into(),
                };
                out.push((b.offset, ty));
            }
        }
    }
    out.sort();
    out
}

fn features(fs: &[spec::FeatureDescription]) -> Vec<String> {
    fs.iter()
        .map(
            |f| match f.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
                Some(spec::feature_type::Type::MultiArrayType(a)) => {
                    format!("{} {:?} {:?}", f.name, a.data_type(), a.shape)
                }
                other => format!("{} {other:?}", f.name),
            },
        )
        .collect()
}

/// Every line of every `model.mil` in the checkout parses; written again by mlc the parsed
/// program is the same text (so nothing was skipped or misread); `coremldata.bin` decodes to a
/// description whose inputs are the function's.
#[test]
#[ignore = "needs MLC_COREML_VAES (a checkout of Zabriskije/CoreML-VAEs, GPL-3.0)"]
fn apple_sd_vae_bundles_parse_back() {
    let bundles = bundles_under(&apple_checkout());
    assert_eq!(bundles.len(), 32, "16 decoders and 16 encoders");
    let mut lines = 0;
    for b in &bundles {
        let text = fs::read_to_string(b.join("model.mil")).unwrap();
        lines += text.lines().count();
        assert!(text.starts_with("program(1.0)\n"), "{}", b.display());
        let model = read_bundle(b).unwrap_or_else(|e| panic!("{e}"));
        let again =
            mlc::mlmodelc::model_mil(&model, &CompileOptions { build_info: vec![] }).unwrap();
        assert!(
            again == text,
            "{}: parse and write is not the identity",
            b.display()
        );
        let d = model.description.as_ref().unwrap();
        let mut names: Vec<&str> = d.input.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        let f = &program(&model).functions["main"];
        let fnames: Vec<&str> = f.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, fnames, "{}", b.display());
    }
    eprintln!(
        "{} bundles, {lines} lines of model.mil parsed",
        bundles.len()
    );
}

/// The full-size SD VAE decoder (synthetic weights, 64x64 latent, fp16): `mlc compile` is fast
/// and the bundle reads back; with MLC_COREML_VAES set, its interface, op kinds and weight
/// layout are printed beside Apple's sd-vae-ft-mse decoder.
#[test]
#[ignore = "writes about 400 MB; the comparison needs MLC_COREML_VAES"]
fn full_size_sd_vae_decoder() {
    use mlc::compiler::{build, BuildOptions, Sizes};
    let dir = std::env::var("MLC_SD_VAE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("mlc_sd_vae"));
    fs::create_dir_all(&dir).unwrap();
    let w = dir.join("sd_vae_decoder.safetensors");
    if !w.exists() {
        common::write_full_size_sd_vae_decoder(&w);
    }
    let mut o = BuildOptions::new("sd-vae", w);
    o.sizes = Sizes::Latent(vec![[64, 64]]);
    o.output = Some(dir.join("sd_vae_decoder.mlpackage"));
    let pkg = build(&o).unwrap().package;
    let out = dir.join("sd_vae_decoder.mlmodelc");
    let t = Instant::now();
    compile(&pkg, &out, &CompileOptions::default()).unwrap();
    let took = t.elapsed();
    eprintln!("mlc compile (in process): {took:?}");
    assert!(took.as_secs_f64() < 5.0, "{took:?}");
    let ours = read_bundle(&out).unwrap();
    let d = ours.description.as_ref().unwrap();
    assert_eq!(features(&d.input), ["latent Float16 [1, 4, 64, 64]"]);
    assert_eq!(features(&d.output), ["image Float16 [1, 3, 512, 512]"]);

    let Ok(apple) = std::env::var("MLC_COREML_VAES") else {
        return;
    };
    let apple =
        read_bundle(&Path::new(&apple).join("original/sd-vae-ft-mse_original/VAEDecoder.mlmodelc"))
            .unwrap();
    let a = apple.description.as_ref().unwrap();
    eprintln!(
        "interface: apple {:?} -> {:?}; mlc {:?} -> {:?}",
        features(&a.input),
        features(&a.output),
        features(&d.input),
        features(&d.output)
    );
    let (ha, hm) = (histogram(&apple), histogram(&ours));
    let kinds: std::collections::BTreeSet<&String> = ha.keys().chain(hm.keys()).collect();
    eprintln!("op kind: apple mlc");
    for k in kinds {
        eprintln!(
            "  {k}: {} {}",
            ha.get(k).copied().unwrap_or(0),
            hm.get(k).copied().unwrap_or(0)
        );
    }
    let (la, lm) = (blob_layout(&apple), blob_layout(&ours));
    fn count(l: &[(u64, String)]) -> BTreeMap<&str, usize> {
        let mut c = BTreeMap::new();
        for (_, t) in l {
            *c.entry(t.as_str()).or_default() += 1;
        }
        c
    }
    let (ca, cm) = (count(&la), count(&lm));
    eprintln!(
        "weights: apple {} blobs, last at offset {}; mlc {} blobs, last at offset {}",
        la.len(),
        la.last().map_or(0, |b| b.0),
        lm.len(),
        lm.last().map_or(0, |b| b.0)
    );
    let shapes: std::collections::BTreeSet<&&str> = ca.keys().chain(cm.keys()).collect();
    for s in shapes {
        let (x, y) = (ca.get(*s).copied(), cm.get(*s).copied());
        if x != y {
            eprintln!("  {s}: apple {} mlc {}", x.unwrap_or(0), y.unwrap_or(0));
        }
    }
}
