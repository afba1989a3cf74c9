//! Issue 4: enumerated sizes, multifunction packages, NHWC layouts, image outputs and the ANE
//! report, each evaluated from the emitted package against PyTorch's outputs.

mod common;

use common::*;
use mlc::compiler::{build, ArrayLayout, BuildOptions, OutputType};
use mlc::kernels::{transpose, Array};
use mlc::mil::Target;
use mlc::package::read_package;
use mlc::proto::specification as spec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The four fixture sizes: (fixture, latent [h, w]).
const FIXTURES: [(&str, [usize; 2]); 4] = [
    ("seed0_32x32", [32, 32]),
    ("seed2_96x96", [96, 96]),
    ("seed3_128x128", [128, 128]),
    ("seed4_96x128", [96, 128]),
];

fn opts(out: &Path, sizes: &[[usize; 2]]) -> BuildOptions {
    let mut o = BuildOptions::new("flux2", taef2_weights());
    o.output = Some(out.to_path_buf());
    o.sizes = mlc::compiler::Sizes::Latent(sizes.to_vec());
    o
}

fn run_fn(pkg: &Path, function: &str, latent: &Array) -> Array {
    let p = read_package(pkg).unwrap();
    let mut out = mlc::run::run(
        &p,
        function,
        &BTreeMap::from([("latent".to_string(), latent.clone())]),
    )
    .unwrap();
    out.remove("image").unwrap()
}

fn all_sizes() -> Vec<[usize; 2]> {
    FIXTURES.iter().map(|(_, s)| *s).collect()
}

#[test]
fn enumerated_sizes_decode_every_fixture() {
    let dir = out_dir("shapes_enumerated");
    let pkg = build(&opts(&dir.join("enum.mlpackage"), &all_sizes()))
        .unwrap()
        .package;
    let model = read_package(&pkg).unwrap().model;
    let d = model.description.as_ref().unwrap();
    let Some(spec::feature_type::Type::MultiArrayType(a)) =
        d.input[0].r#type.as_ref().unwrap().r#type.as_ref()
    else {
        panic!()
    };
    assert_eq!(a.shape, vec![1, 32, 32, 32], "the default (first) size");
    let Some(spec::array_feature_type::ShapeFlexibility::EnumeratedShapes(e)) =
        &a.shape_flexibility
    else {
        panic!("no enumerated shapes")
    };
    let listed: Vec<Vec<i64>> = e.shapes.iter().map(|s| s.shape.clone()).collect();
    assert_eq!(
        listed,
        vec![
            vec![1, 32, 32, 32],
            vec![1, 32, 96, 96],
            vec![1, 32, 128, 128],
            vec![1, 32, 96, 128]
        ]
    );
    for (name, _) in FIXTURES {
        let (latent, image) = fixture(name);
        let c = compare(&run_fn(&pkg, "main", &latent), &image);
        eprintln!("enumerated {name}: {c:?}");
        assert!(c.max_abs <= 2e-3, "{name}: {c:?}");
    }
    oracle(&dir);
}

#[test]
fn multifunction_has_one_static_function_per_size_sharing_weights() {
    let dir = out_dir("shapes_multifunction");
    let mut o = opts(&dir.join("mf.mlpackage"), &all_sizes());
    o.multifunction = true;
    o.target = Target::Ios18;
    let pkg = build(&o).unwrap().package;
    let single = build(&opts(&dir.join("single.mlpackage"), &[[32, 32]])).unwrap();
    let p = read_package(&pkg).unwrap();
    assert_eq!(
        p.weights.as_ref().unwrap().len(),
        single.weight_bytes,
        "functions must share one copy of the weights"
    );
    let d = p.model.description.as_ref().unwrap();
    assert_eq!(d.default_function_name, "decode_256x256");
    let names: Vec<&str> = d.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "decode_256x256",
            "decode_768x768",
            "decode_1024x1024",
            "decode_768x1024"
        ]
    );
    let text = mlc::mil::print::print_model(&p.model);
    assert!(
        !text.contains(", ?"),
        "every function is static:\n{}",
        &text[..2000]
    );
    for ((name, size), f) in FIXTURES.iter().zip(&names) {
        let (latent, image) = fixture(name);
        assert_eq!(latent.shape[2..], size[..]);
        let c = compare(&run_fn(&pkg, f, &latent), &image);
        eprintln!("multifunction {f} on {name}: {c:?}");
        assert!(c.max_abs <= 2e-3, "{f}: {c:?}");
    }
    oracle(&dir);
}

#[test]
fn nhwc_gives_the_same_numbers_as_nchw_on_transposed_input() {
    let dir = out_dir("shapes_nhwc");
    let nchw = build(&opts(&dir.join("nchw.mlpackage"), &[[32, 32]]))
        .unwrap()
        .package;
    let mut o = opts(&dir.join("nhwc.mlpackage"), &[[32, 32], [32, 48]]);
    o.input_layout = ArrayLayout::Nhwc;
    o.output_layout = ArrayLayout::Nhwc;
    let nhwc = build(&o).unwrap().package;
    let text = mlc::mil::print::print_model(&read_package(&nhwc).unwrap().model);
    assert_eq!(
        text.matches("= transpose(").count(),
        2,
        "one transpose in, one out"
    );
    assert!(
        text.contains("// input latent: multiarray float16 [1, 32, 32, 32]"),
        "{}",
        &text[..600]
    );
    let (latent, image) = fixture("seed0_32x32");
    let a = run_fn(&nchw, "main", &latent);
    let b = run_fn(&nhwc, "main", &transpose(&latent, &[0, 2, 3, 1]));
    assert_eq!(b.shape, vec![1, 256, 256, 3]);
    assert_eq!(
        transpose(&b, &[0, 3, 1, 2]),
        a,
        "NHWC must compute exactly what NCHW does"
    );
    assert!(compare(&a, &image).max_abs <= 2e-3);
    oracle(&dir);
}

#[test]
fn image_output_is_rgb_scaled_and_clamped_in_the_model() {
    let dir = out_dir("shapes_image");
    let mut o = opts(&dir.join("img.mlpackage"), &[[32, 32], [32, 40]]);
    o.output_type = OutputType::Image;
    let pkg = build(&o).unwrap().package;
    let p = read_package(&pkg).unwrap();
    let out = &p.model.description.as_ref().unwrap().output[0];
    let Some(spec::feature_type::Type::ImageType(img)) =
        out.r#type.as_ref().unwrap().r#type.as_ref()
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        (img.width, img.height, img.color_space),
        (256, 256, spec::image_feature_type::ColorSpace::Rgb as i32)
    );
    assert!(mlc::run::is_image_output(&p, "main", "image"));
    let (latent, image) = fixture("seed0_32x32");
    let got = run_fn(&pkg, "main", &latent);
    let want = mlc::kernels::map(&image, |v| v.clamp(0.0, 1.0) * 255.0);
    let c = compare(
        &mlc::kernels::map(&got, |v| v / 255.0),
        &mlc::kernels::map(&want, |v| v / 255.0),
    );
    assert!(c.max_abs <= 2e-3, "{c:?}");
    assert!(got.data.iter().all(|v| (0.0..=255.0).contains(v)));
    oracle(&dir);
}

#[test]
fn ane_report_flags_what_does_not_fit() {
    let dir = out_dir("shapes_ane");
    let fits = build(&opts(&dir.join("static.mlpackage"), &[[32, 32]])).unwrap();
    assert!(
        fits.ane.fits(),
        "{:?}",
        fits.ane.misfits().collect::<Vec<_>>()
    );
    assert!(fits.ane.ops.len() > 100);
    // A convolutional decoder is laid out as the ANE wants it: no layout hints...
    assert!(
        fits.ane.hint_counts().is_empty(),
        "{:?}",
        fits.ane.hint_counts()
    );
    // ...and the transposes of a channels-last interface are the caller's choice, not hints.
    let mut o = opts(&dir.join("nhwc.mlpackage"), &[[32, 32]]);
    o.input_layout = mlc::compiler::ArrayLayout::Nhwc;
    o.output_layout = mlc::compiler::ArrayLayout::Nhwc;
    let r = build(&o).unwrap().ane;
    assert!(r.ops.iter().filter(|v| v.op_type == "transpose").count() == 2);
    assert!(r.hint_counts().is_empty(), "{:?}", r.hint_counts());

    let mut o = opts(&dir.join("fp32.mlpackage"), &[[32, 32]]);
    o.precision = mlc::compiler::Precision::Fp32;
    let r = build(&o).unwrap().ane;
    assert_eq!(
        r.misfits().count(),
        r.ops.len(),
        "every fp32 op misses the ANE"
    );
    assert!(
        r.misfits().next().unwrap().reasons[0].contains("fp32"),
        "{:?}",
        r.ops[0]
    );

    let mut o = opts(&dir.join("fp32io.mlpackage"), &[[32, 32]]);
    o.io_precision = Some(mlc::compiler::Precision::Fp32);
    let r = build(&o).unwrap().ane;
    let casts: Vec<_> = r.misfits().map(|o| o.op_type.as_str()).collect();
    assert_eq!(casts, ["cast", "cast"], "only the boundary casts");

    let r = build(&opts(&dir.join("enum.mlpackage"), &[[32, 32], [40, 40]]))
        .unwrap()
        .ane;
    assert_eq!(r.misfits().count(), 0);
    assert!(
        r.notes.iter().any(|n| n.contains("only the default shape")),
        "{:?}",
        r.notes
    );
    oracle(&dir);
}

#[test]
fn cli_sizes_layouts_and_bad_input() {
    let dir = out_dir("shapes_cli");
    let w = taef2_arg();
    let ok = mlc(
        &[
            "build",
            "flux2",
            "--weights",
            &w,
            "--image-size",
            "256,256x320",
            "--input-layout",
            "nhwc",
            "-o",
            "e.mlpackage",
        ],
        &dir,
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(
        stderr.contains("only the default shape"),
        "build warns about flexible shapes: {stderr}"
    );
    let inspect = mlc(&["inspect", "e.mlpackage", "--ane"], &dir);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("Neural Engine: all") && text.contains("note: flexible"),
        "{text}"
    );

    let mf = mlc(
        &taef2_build(
            &w,
            "32,40",
            &["--multifunction", "--target", "ios18", "-o", "mf.mlpackage"],
        ),
        &dir,
    );
    assert!(
        mf.status.success(),
        "{}",
        String::from_utf8_lossy(&mf.stderr)
    );
    let fixture = shared("fixtures/taef2/seed0_32x32.safetensors")
        .display()
        .to_string();
    let run = mlc(
        &[
            "run",
            "mf.mlpackage",
            "--input",
            &fixture,
            "--output",
            "a.png",
            "--function",
            "decode_256x256",
        ],
        &dir,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    oracle(&dir);

    let bad: &[(&[&str], &str)] = &[
        (&["--image-size", "768,100"], "multiple of 8"),
        (&["--image-size", "0"], "positive"),
        (&["--latent-size", "32,40,32"], "given twice"),
        (
            &[
                "--latent-size",
                &(8..=136)
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ],
            "at most 128",
        ),
        (
            &[
                "--multifunction",
                "--target",
                "ios18",
                "--input-layout",
                "nhwc",
            ],
            "at least two sizes",
        ),
        (&["--multifunction", "--latent-size", "32,40"], "ios18"),
        (
            &["--output-type", "image", "--io-precision", "fp16"],
            "image outputs are fp32",
        ),
    ];
    for (args, needle) in bad {
        let base = ["build", "flux2", "--weights", &w, "-o", "bad.mlpackage"];
        assert_refused(&dir, &base, args, needle);
        assert!(
            !dir.join("bad.mlpackage").exists(),
            "{args:?} left output behind"
        );
    }
    let _: &PathBuf = &dir;
}
