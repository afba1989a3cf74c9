use super::*;

// ---------------------------------------------------------------------------------------------
// Item 6: hostile packages in the evaluator (`mlc run`) and `mlc inspect`.

use mlc::mil::values as mv;
use mlc::proto::mil_spec as pb;
use mlc::proto::specification as spec;

/// A small real package (taesd decoder, 4x4 latent) built in `dir` as `m.mlpackage`.
fn small_package(dir: &Path) -> mlc::package::Package {
    synthetic_weights(&dir.join("w.safetensors"));
    let mut o = mlc::compiler::BuildOptions::new("taesd", dir.join("w.safetensors"));
    o.sizes = mlc::compiler::Sizes::Latent(vec![[4, 4]]);
    o.output = Some(dir.join("m.mlpackage"));
    mlc::compiler::build(&o).unwrap();
    mlc::package::read_package(&dir.join("m.mlpackage")).unwrap()
}

fn main_ops(model: &mut spec::Model) -> &mut Vec<pb::Operation> {
    let Some(spec::model::Type::MlProgram(p)) = &mut model.r#type else {
        panic!("not a program")
    };
    let f = p.functions.get_mut("main").unwrap();
    let opset = f.opset.clone();
    &mut f.block_specializations.get_mut(&opset).unwrap().operations
}

fn konst(name: &str, v: pb::Value) -> pb::Operation {
    let ty = v.r#type.clone().unwrap();
    pb::Operation {
        r#type: "const".into(),
        outputs: vec![mv::named(name, ty)],
        attributes: [("val".to_string(), v), mv::name_attr(name)].into(),
        ..Default::default()
    }
}

/// An op of `kind` named `out` (no declared type) with `inputs` bound by name.
fn op(kind: &str, out: &str, inputs: &[(&str, &str)]) -> pb::Operation {
    pb::Operation {
        r#type: kind.into(),
        inputs: inputs
            .iter()
            .map(|(k, v)| (k.to_string(), mv::arg(v)))
            .collect(),
        outputs: vec![pb::NamedValueType {
            name: out.into(),
            r#type: None,
        }],
        attributes: [mv::name_attr(out)].into(),
        ..Default::default()
    }
}

fn scalar(v: f32) -> pb::Value {
    mv::floats_value(&[], vec![v])
}

fn empty() -> pb::Value {
    mv::floats_value(&[0], vec![])
}

/// constexpr_affine_dequantize `dq` of 2x2 uint8 data with these zero point, scale and axis.
fn affine_dequantize(zp: pb::Value, s: pb::Value, ax: pb::Value) -> Vec<pb::Operation> {
    vec![
        konst(
            "q",
            mv::raw_bytes_value(pb::DataType::Uint8, &[2, 2], vec![1; 4]),
        ),
        konst("zp", zp),
        konst("s", s),
        konst("ax", ax),
        op(
            "constexpr_affine_dequantize",
            "dq",
            &[
                ("quantized_data", "q"),
                ("zero_point", "zp"),
                ("scale", "s"),
                ("axis", "ax"),
            ],
        ),
    ]
}

/// quantize `q` of the latent by scale `s` to `dtype`.
fn quantize(s: pb::Value, dtype: &str) -> Vec<pb::Operation> {
    vec![
        konst("s", s),
        konst("dt", mv::string_value(dtype)),
        op(
            "quantize",
            "q",
            &[("input", "latent"), ("scale", "s"), ("output_dtype", "dt")],
        ),
    ]
}

/// dequantize `d` of the latent by scale `s` along `ax`.
fn dequantize(s: pb::Value, ax: pb::Value) -> Vec<pb::Operation> {
    vec![
        konst("s", s),
        konst("ax", ax),
        op(
            "dequantize",
            "d",
            &[("input", "latent"), ("scale", "s"), ("axis", "ax")],
        ),
    ]
}

/// Binary op `kind` named `out` of a [40000, 1] column and a [1, 40000] row of ones: a result
/// of 1.6e9 elements.
fn column_by_row(kind: &str, out: &str) -> Vec<pb::Operation> {
    vec![
        konst("a", mv::floats_value(&[40000, 1], vec![1.0; 40000])),
        konst("b", mv::floats_value(&[1, 40000], vec![1.0; 40000])),
        op(kind, out, &[("x", "a"), ("y", "b")]),
    ]
}

/// Hostile ops put first in the program (they run before anything else).
fn hostile_cases() -> Vec<(&'static str, Vec<pb::Operation>, &'static str)> {
    let w4 = || mv::floats_value(&[4, 4, 1, 1], vec![0.5; 16]);
    vec![
        (
            "constexpr op without outputs",
            vec![pb::Operation {
                r#type: "constexpr_lut_to_dense".into(),
                ..Default::default()
            }],
            "op #0 (constexpr_lut_to_dense): has no outputs",
        ),
        (
            "clip with an empty alpha",
            vec![
                konst("lo", empty()),
                konst("hi", scalar(1.0)),
                op("clip", "c", &[("x", "latent"), ("alpha", "lo"), ("beta", "hi")]),
            ],
            "op c (clip): alpha must hold one value, got 0",
        ),
        (
            "rsqrt with an empty epsilon",
            vec![
                konst("eps", empty()),
                op("rsqrt", "r", &[("x", "latent"), ("epsilon", "eps")]),
            ],
            "op r (rsqrt): epsilon must hold one value, got 0",
        ),
        (
            "conv with an empty bias",
            vec![
                konst("w", w4()),
                konst("b", empty()),
                op("conv", "cv", &[("x", "latent"), ("weight", "w"), ("bias", "b")]),
            ],
            "op cv (conv): x [1, 4, 4, 4], weight [4, 4, 1, 1], bias",
        ),
        (
            "conv with empty groups",
            vec![
                konst("w", w4()),
                konst("g", empty()),
                op("conv", "cv", &[("x", "latent"), ("weight", "w"), ("groups", "g")]),
            ],
            "op cv (conv): groups must hold one value, got 0",
        ),
        (
            "dequantize with an empty scale",
            affine_dequantize(empty(), empty(), scalar(0.0)),
            "op dq (constexpr_affine_dequantize): scale [0] / zero_point [0] do not fit",
        ),
        (
            "dequantize with an empty axis",
            affine_dequantize(scalar(0.0), scalar(1.0), empty()),
            "op dq (constexpr_affine_dequantize): axis must hold one value, got 0",
        ),
        (
            "lut indexed past its end",
            vec![
                konst("i", mv::floats_value(&[2, 2], vec![0.0, 1.0, 2.0, 7.0])),
                konst("t", mv::floats_value(&[1, 1, 2, 1], vec![0.25, 0.5])),
                op("constexpr_lut_to_dense", "l", &[("indices", "i"), ("lut", "t")]),
            ],
            "op l (constexpr_lut_to_dense): index 2 is past the end of a 2-entry lut",
        ),
        (
            "lut with an absurd shape",
            vec![
                konst("i", mv::raw_bytes_value(pb::DataType::Uint8, &[1], vec![0])),
                konst("t", mv::floats_value(&[2], vec![0.25, 0.5])),
                konst("sh", mv::floats_value(&[2], vec![4e9, 4e9])),
                op(
                    "constexpr_lut_to_dense",
                    "l",
                    &[("indices", "i"), ("lut", "t"), ("shape", "sh")],
                ),
            ],
            "op l (constexpr_lut_to_dense): a result of shape [4000000000, 4000000000] would exceed",
        ),
        (
            "uint4 const of 2^62+1 elements",
            vec![konst(
                "u4",
                mv::raw_bytes_value(pb::DataType::Uint4, &[(1 << 62) + 1], vec![0; 8]),
            )],
            "op u4 (const): a result of shape [4611686018427387905] would exceed",
        ),
        (
            "upsample by 1e9",
            vec![
                konst("s", scalar(1e9)),
                op(
                    "upsample_nearest_neighbor",
                    "up",
                    &[("x", "latent"), ("scale_factor_height", "s"), ("scale_factor_width", "s")],
                ),
            ],
            "op up (upsample_nearest_neighbor): a result of shape [1, 4, 4000000000, 4000000000] would exceed",
        ),
        (
            "tile by 2^20",
            vec![
                konst("reps", mv::ints_value(&[4], vec![1, 1, 1 << 20, 1 << 20])),
                op("tile", "t", &[("x", "latent"), ("reps", "reps")]),
            ],
            "op t (tile): a result of shape [1, 4, 4194304, 4194304] would exceed",
        ),
        (
            "conv padded by 100000",
            vec![
                konst("w", w4()),
                konst("pt", mv::string_value("custom")),
                konst("pad", mv::ints_value(&[4], vec![100000; 4])),
                op(
                    "conv",
                    "cv",
                    &[("x", "latent"), ("weight", "w"), ("pad_type", "pt"), ("pad", "pad")],
                ),
            ],
            "op cv (conv): a result of shape [1, 4, 200004, 200004] would exceed",
        ),
        (
            "broadcast to 1.6e9 elements",
            column_by_row("add", "s"),
            "op s (add): a result of shape [40000, 40000] would exceed",
        ),
        (
            "matmul to 1.6e9 elements",
            column_by_row("matmul", "mm"),
            "op mm (matmul): a result of shape [40000, 40000] would exceed",
        ),
        (
            "quantize with an empty scale",
            quantize(empty(), "int8"),
            "op q (quantize): scale and zero_point must be scalars without an axis",
        ),
        (
            "quantize to int4",
            quantize(scalar(1.0), "int4"),
            "op q (quantize): output_dtype \"int4\" is not int8 or uint8",
        ),
        (
            "dequantize with an axis past the rank",
            dequantize(mv::floats_value(&[4], vec![1.0; 4]), scalar(9.0)),
            "op d (dequantize): axis 9 out of range for [1, 4, 4, 4]",
        ),
        (
            "dequantize with a scale vector of the wrong length",
            dequantize(mv::floats_value(&[3], vec![1.0; 3]), scalar(1.0)),
            "op d (dequantize): scale [3] and zero_point must have 4 values along axis 1",
        ),
    ]
}

/// Each hostile op makes `run` fail with an error naming it, and `inspect` still describes
/// the package.
#[test]
fn hostile_packages_fail_evaluation_by_op() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = small_package(tmp.path());
    let latent = mlc::kernels::Array::new(vec![1, 4, 4, 4], vec![0.1; 64]);
    let inputs = std::collections::BTreeMap::from([("latent".to_string(), latent)]);
    // The untouched package runs.
    mlc::run::run(&pkg, "main", &inputs).unwrap();
    for (what, ops, expect) in hostile_cases() {
        let mut bad = mlc::package::Package {
            path: pkg.path.clone(),
            model: pkg.model.clone(),
            weights: pkg.weights.clone(),
        };
        main_ops(&mut bad.model).splice(0..0, ops);
        let e = mlc::run::run(&bad, "main", &inputs)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(expect), "{what}: {e}");
        assert_eq!(e.lines().count(), 1, "{what}: {e}");
        mlc::inspect::describe(&bad).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// Through the binary: a tile bomb and an output-less op fail `run` with one line and write
/// nothing; `inspect` describes both.
#[test]
fn cli_run_and_inspect_of_hostile_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pkg = small_package(dir);
    latent_file(&dir.join("in.safetensors"));
    let cases = hostile_cases();
    for (what, ops, expect) in cases.into_iter().filter(|c| {
        c.0.starts_with("tile") || c.0.starts_with("constexpr op") || c.0.starts_with("uint4")
    }) {
        let mut model = pkg.model.clone();
        main_ops(&mut model).splice(0..0, ops);
        mlc::package::write_package(&dir.join("bad.mlpackage"), &model, pkg.weights.as_deref())
            .unwrap();
        let inputs = [
            "w.safetensors",
            "m.mlpackage",
            "in.safetensors",
            "bad.mlpackage",
        ];
        let args = [
            "run",
            "bad.mlpackage",
            "--input",
            "in.safetensors",
            "--output",
            "o.png",
        ];
        let e = fails(dir, &inputs, &args, &[]);
        assert!(e.contains(expect), "{what}: {e}");
        let o = mlc_env(&["inspect", "bad.mlpackage"], dir, &[]);
        assert!(o.status.success(), "{what}: {}", stderr(&o));
    }
}
