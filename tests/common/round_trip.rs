//! The compiled round trip every package the tests write goes through (issue 12): `mlc
//! compile`, the bundle read back (`model.mil` parsed, `coremldata.bin` decoded, the weights
//! it names), and checked against the package it came from.
//!
//! Two checks, because evaluating every package at its own size would cost minutes (a 768x768
//! decoder): the program read back must equal the package's (up to what `model.mil` does not
//! carry, see [`normalized`]) with the same weight bytes, which makes every evaluation equal;
//! and where a function is cheap to evaluate, both are evaluated on the same inputs and must
//! give the same bits. Packages with enumerated shapes must fail with exactly mlc's refusal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlc::kernels::Array;
use mlc::package::Package;
use mlc::proto::mil_spec as pb;
use mlc::proto::specification as spec;

/// Functions whose inputs hold at most this many elements are evaluated on both sides; the
/// test suite's small builds (an 8x8 latent, 77 token ids) fit, full-size ones do not.
const EVAL_MAX_INPUT_ELEMENTS: usize = 4096;

/// Every `.mlpackage` under `dir`, at any depth, sorted.
pub fn packages_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(d) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if p.extension().is_some_and(|x| x == "mlpackage") {
                out.push(p);
            } else {
                walk(&p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// What one package's round trip did, for the caller's counts.
#[derive(Debug, PartialEq, Eq)]
pub enum RoundTrip {
    /// Compiled, read back equal; `evaluated` functions ran on both sides with equal outputs.
    Equal { evaluated: usize },
    /// Refused for its enumerated shapes, as mlc compile must.
    RefusedEnumerated,
}

/// Runs the round trip on every package under `dir`; panics naming the package at fault.
pub fn compiled_round_trip(dir: &Path) -> Vec<(PathBuf, RoundTrip)> {
    packages_under(dir)
        .into_iter()
        .map(|p| {
            let r = round_trip(&p);
            (p, r)
        })
        .collect()
}

/// The round trip of one package.
pub fn round_trip(path: &Path) -> RoundTrip {
    let name = path.display();
    let pkg = mlc::package::read_package(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.mlmodelc");
    if let Err(e) = mlc::mlmodelc::compile(path, &out, &Default::default()) {
        let e = e.to_string();
        assert!(!out.exists(), "{name}: a refused compile left a bundle");
        assert!(!e.contains('\n'), "{name}: {e}");
        if has_enumerated_shapes(&pkg.model) {
            assert!(
                e.contains("has enumerated shapes") && e.contains("--multifunction"),
                "{name}: not the refusal of enumerated shapes: {e}"
            );
            return RoundTrip::RefusedEnumerated;
        }
        panic!("{name}: mlc compile failed: {e}");
    }
    assert!(
        !has_enumerated_shapes(&pkg.model),
        "{name}: enumerated shapes compiled"
    );
    check_schemas(&out, &pkg.model, &name.to_string());
    let bundle =
        mlc::mlmodelc::read_as_package(&out).unwrap_or_else(|e| panic!("{name}: read back: {e}"));
    assert!(
        bundle.weights == pkg.weights,
        "{name}: the bundle's weights differ from the package's"
    );
    assert_eq!(
        bundle.model.specification_version, pkg.model.specification_version,
        "{name}"
    );
    let (d_read, d_src) = (
        bundle.model.description.clone().unwrap_or_default(),
        pkg.model.description.clone().unwrap_or_default(),
    );
    assert_eq!(d_read.input, d_src.input, "{name}: inputs");
    assert_eq!(d_read.output, d_src.output, "{name}: outputs");
    assert_eq!(d_read.functions, d_src.functions, "{name}: functions");
    assert_eq!(
        d_read.default_function_name, d_src.default_function_name,
        "{name}"
    );
    let (read, src) = (normalized(&bundle.model), normalized(&pkg.model));
    assert_eq!(
        read.functions.keys().collect::<Vec<_>>(),
        src.functions.keys().collect::<Vec<_>>(),
        "{name}: functions"
    );
    for (f, a) in &src.functions {
        let b = &read.functions[f];
        assert_eq!(b.inputs, a.inputs, "{name}: {f}: inputs");
        assert_eq!(b.opset, a.opset, "{name}: {f}: opset");
        assert_eq!(b.attributes, a.attributes, "{name}: {f}: attributes");
        let (x, y) = (&a.block_specializations, &b.block_specializations);
        assert_eq!(
            x.keys().collect::<Vec<_>>(),
            y.keys().collect::<Vec<_>>(),
            "{name}: {f}"
        );
        for (k, bx) in x {
            let by = &y[k];
            assert_eq!(by.outputs, bx.outputs, "{name}: {f}: outputs");
            assert_eq!(
                by.operations.len(),
                bx.operations.len(),
                "{name}: {f}: op count"
            );
            // Op by op, so a failure names the first op that differs.
            for (op_x, op_y) in bx.operations.iter().zip(&by.operations) {
                assert!(
                    op_x == op_y,
                    "{name}: {f}: op {:?} ({}) differs after the round trip:\n{op_x:?}\n{op_y:?}",
                    op_x.outputs.first().map(|o| &o.name),
                    op_x.r#type
                );
            }
            assert_eq!(by, bx, "{name}: {f}: block");
        }
    }
    assert_eq!(read, src, "{name}: program");

    let mut evaluated = 0;
    for f in src.functions.keys() {
        let Some(inputs) = cheap_inputs(&pkg, f) else {
            continue;
        };
        let a = mlc::run::run(&pkg, f, &inputs).unwrap_or_else(|e| panic!("{name}: {f}: {e}"));
        let b = mlc::run::run(&bundle, f, &inputs)
            .unwrap_or_else(|e| panic!("{name}: {f}: bundle: {e}"));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{name}: {f}"
        );
        for (k, x) in &a {
            let y = &b[k];
            assert_eq!(x.shape, y.shape, "{name}: {f}: {k}");
            let bits = |v: &Array| v.data.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert!(bits(x) == bits(y), "{name}: {f}: {k}: different numbers");
        }
        evaluated += 1;
    }
    RoundTrip::Equal { evaluated }
}

/// The program without what `model.mil` does not carry or what compiling adds: doc strings,
/// `buildInfo` (the compiler adds its own entries), the order of function inputs (coremlc
/// sorts them; inputs bind by name) and `FlexibleShapeInformation` (coremlc derives it from the
/// description, which the bundle keeps in `coremldata.bin` and the check above compares).
fn normalized(model: &spec::Model) -> pb::Program {
    let Some(spec::model::Type::MlProgram(p)) = &model.r#type else {
        panic!("not an ML Program");
    };
    let mut p = p.clone();
    p.doc_string.clear();
    p.attributes.remove("buildInfo");
    for f in p.functions.values_mut() {
        f.inputs.sort_by(|a, b| a.name.cmp(&b.name));
        f.attributes.remove("FlexibleShapeInformation");
    }
    p
}

/// `metadata.json`'s top-level schemas describe the default function's features, by name and
/// kind, images with their size and color space.
fn check_schemas(bundle: &Path, model: &spec::Model, name: &str) {
    use spec::feature_type::Type as T;
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("metadata.json")).unwrap()).unwrap();
    let d = model.description.clone().unwrap_or_default();
    let f = d
        .functions
        .iter()
        .find(|f| f.name == d.default_function_name);
    let (inputs, outputs) = match f {
        Some(f) if d.input.is_empty() => (&f.input, &f.output),
        _ => (&d.input, &d.output),
    };
    for (key, features) in [("inputSchema", inputs), ("outputSchema", outputs)] {
        let entries = json[0][key].as_array().unwrap();
        assert_eq!(entries.len(), features.len(), "{name}: {key}");
        for (e, f) in entries.iter().zip(features) {
            assert_eq!(e["name"], f.name.as_str(), "{name}: {key}");
            match f.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
                Some(T::ImageType(i)) => {
                    assert_eq!(e["type"], "Image", "{name}: {}", f.name);
                    assert_eq!(e["width"], i.width.to_string().as_str(), "{name}");
                    assert_eq!(e["height"], i.height.to_string().as_str(), "{name}");
                    let color = e["colorspace"].as_str().unwrap();
                    assert!(["RGB", "BGR", "Grayscale"].contains(&color), "{name}");
                }
                _ => assert_eq!(e["type"], "MultiArray", "{name}: {}", f.name),
            }
        }
    }
}

fn has_enumerated_shapes(model: &spec::Model) -> bool {
    use spec::array_feature_type::ShapeFlexibility as F;
    use spec::feature_type::Type as T;
    use spec::image_feature_type::SizeFlexibility as S;
    let Some(d) = &model.description else {
        return false;
    };
    d.input
        .iter()
        .chain(d.functions.iter().flat_map(|f| &f.input))
        .any(
            |f| match f.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
                Some(T::MultiArrayType(a)) => {
                    matches!(a.shape_flexibility, Some(F::EnumeratedShapes(_)))
                }
                Some(T::ImageType(i)) => matches!(i.size_flexibility, Some(S::EnumeratedSizes(_))),
                _ => false,
            },
        )
}

/// Deterministic inputs for `function` at its smallest allowed shape, if they are small enough
/// to evaluate quickly: values in [-2, 2), token ids 0..7 for int32 inputs, pixels in [0, 255]
/// for images.
fn cheap_inputs(pkg: &Package, function: &str) -> Option<BTreeMap<String, Array>> {
    use spec::array_feature_type::ShapeFlexibility as F;
    use spec::feature_type::Type as T;
    let mut out = BTreeMap::new();
    let mut total = 0usize;
    for (i, f) in mlc::run::features(pkg, function).0.iter().enumerate() {
        let (shape, kind): (Vec<usize>, u8) =
            match f.r#type.as_ref().and_then(|t| t.r#type.as_ref())? {
                T::MultiArrayType(a) => {
                    let shape = match &a.shape_flexibility {
                        Some(F::ShapeRange(r)) => r
                            .size_ranges
                            .iter()
                            .map(|r| usize::try_from(r.lower_bound.max(1)).ok())
                            .collect::<Option<_>>()?,
                        _ => a
                            .shape
                            .iter()
                            .map(|&d| usize::try_from(d).ok())
                            .collect::<Option<_>>()?,
                    };
                    let int = mlc::run::is_int_input(pkg, function, &f.name);
                    (shape, if int { 1 } else { 0 })
                }
                T::ImageType(im) => {
                    let (h, w) = (
                        usize::try_from(im.height).ok()?,
                        usize::try_from(im.width).ok()?,
                    );
                    (vec![1, 3, h, w], 2)
                }
                _ => return None,
            };
        let n: usize = shape.iter().product();
        total = total.checked_add(n)?;
        if total > EVAL_MAX_INPUT_ELEMENTS {
            return None;
        }
        let data: Vec<f32> = match kind {
            0 => super::random(n, 11 + i as u64, 2.0),
            1 => (0..n).map(|j| (j % 7) as f32).collect(),
            _ => super::random(n, 11 + i as u64, 1.0)
                .into_iter()
                .map(|v| ((v + 1.0) * 127.5).round())
                .collect(),
        };
        out.insert(f.name.clone(), Array::new(shape, data));
    }
    Some(out)
}
