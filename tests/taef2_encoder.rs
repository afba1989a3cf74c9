//! The TAEF2 encoder (`--part encoder`): emitted packages, evaluated from disk by mlc's MIL
//! evaluator, against PyTorch's latents in ../shared/fixtures/taef2_encoder, and checked by
//! coremltools. Run with `--nocapture` to see the measured errors (the README's table).

mod common;

use common::*;
use mlc::compiler::{build, BuildOptions, Precision, Sizes};
use mlc::kernels::Array;
use mlc::mil::Target;
use mlc::models::Part;
use mlc::package::read_package;
use mlc::proto::specification as spec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The fixtures: (name, image [h, w]).
const FIXTURES: [(&str, [usize; 2]); 3] = [
    ("rocket_64x64", [64, 64]),
    ("rocket_256x256", [256, 256]),
    ("rocket_128x192", [128, 192]),
];

/// fp32 against PyTorch fp32 (the bound).
const FP32_MAX_ABS: f32 = 1e-4;

/// fp16 bound per fixture: what the reference tool's (coremltools') fp16 conversion of the same
/// encoder measured, 2.3e-2 at 64x64 and 5.9e-2 at 256x256, read at the two significant figures
/// it was reported with (2.35e-2, 5.95e-2). Rounding the fixture image to fp16 and nothing else
/// already costs 5.915e-2 at 256x256 in PyTorch, so 5.9e-2 itself cannot be the exact figure.
/// 128x192 was not measured there; it is held to the larger bound.
fn fp16_bound(name: &str) -> f32 {
    match name {
        "rocket_64x64" => 2.35e-2,
        _ => 5.95e-2,
    }
}

fn encoder_weights() -> PathBuf {
    shared("weights/taef2_encoder.safetensors")
}

/// (image, latent) of a fixture in ../shared/fixtures/taef2_encoder.
fn enc_fixture(name: &str) -> (Array, Array) {
    let mut t = mlc::run::read_safetensors(&shared(&format!(
        "fixtures/taef2_encoder/{name}.safetensors"
    )))
    .unwrap();
    (t.remove("image").unwrap(), t.remove("latent").unwrap())
}

fn all_sizes() -> Vec<[usize; 2]> {
    FIXTURES.iter().map(|(_, s)| *s).collect()
}

fn opts(
    out: &Path,
    precision: Precision,
    io: Option<Precision>,
    sizes: &[[usize; 2]],
) -> BuildOptions {
    let mut o = BuildOptions::new("flux2", encoder_weights());
    o.part = Some(Part::ENCODER.into());
    o.output = Some(out.to_path_buf());
    o.precision = precision;
    o.io_precision = io;
    o.sizes = Sizes::Image(sizes.to_vec());
    o
}

/// Builds the encoder for every fixture's size at `out`; returns the package.
fn build_all_sizes(out: &Path, precision: Precision, io: Option<Precision>) -> PathBuf {
    build(&opts(out, precision, io, &all_sizes()))
        .unwrap()
        .package
}

fn encode(pkg: &Path, function: &str, image: &Array) -> Array {
    let p = read_package(pkg).unwrap();
    let inputs = BTreeMap::from([("image".to_string(), image.clone())]);
    let mut out = mlc::run::run(&p, function, &inputs).unwrap();
    out.remove("latent").expect("output named latent")
}

/// Encodes every fixture with `function(size)` of `pkg`; returns the worst ratio of max abs
/// error to `bound(fixture)` after printing each measurement.
fn check_all(
    label: &str,
    pkg: &Path,
    function: impl Fn([usize; 2]) -> String,
    bound: impl Fn(&str) -> f32,
) {
    for (name, size) in FIXTURES {
        let (image, latent) = enc_fixture(name);
        assert_eq!(image.shape, [1, 3, size[0], size[1]]);
        assert_eq!(latent.shape, [1, 32, size[0] / 8, size[1] / 8]);
        let out = encode(pkg, &function(size), &image);
        let c = compare(&out, &latent);
        println!(
            "{label} {name}: max abs {:.3e}, mean abs {:.3e}",
            c.max_abs, c.mean_abs
        );
        assert!(
            c.max_abs <= bound(name),
            "{label} {name}: {c:?} > {}",
            bound(name)
        );
    }
}

#[test]
fn fp32_enumerated_matches_pytorch_within_1e_4() {
    let dir = out_dir("taef2_encoder_fp32");
    let pkg = build_all_sizes(&dir.join("enc_fp32.mlpackage"), Precision::Fp32, None);
    check_all("fp32", &pkg, |_| "main".into(), |_| FP32_MAX_ABS);
    oracle(&dir);
}

#[test]
fn fp16_enumerated_within_the_reference_tools_error() {
    let dir = out_dir("taef2_encoder_fp16");
    for (label, io) in [
        ("fp16 fp16-io", None),
        ("fp16 fp32-io", Some(Precision::Fp32)),
    ] {
        let pkg = build_all_sizes(
            &dir.join(format!("enc_{}.mlpackage", label.replace(' ', "_"))),
            Precision::Fp16,
            io,
        );
        check_all(label, &pkg, |_| "main".into(), fp16_bound);
    }
    oracle(&dir);
}

#[test]
fn enumerated_package_lists_every_image_size() {
    let dir = out_dir("taef2_encoder_enumerated");
    let pkg = build_all_sizes(&dir.join("enc.mlpackage"), Precision::Fp16, None);
    let model = read_package(&pkg).unwrap().model;
    let d = model.description.as_ref().unwrap();
    let array = |f: &spec::FeatureDescription| match f.r#type.as_ref().unwrap().r#type.as_ref() {
        Some(spec::feature_type::Type::MultiArrayType(a)) => a.clone(),
        other => panic!("{}: {other:?}", f.name),
    };
    let (input, output) = (array(&d.input[0]), array(&d.output[0]));
    assert_eq!(
        (d.input[0].name.as_str(), d.output[0].name.as_str()),
        ("image", "latent")
    );
    assert_eq!(input.shape, [1, 3, 64, 64], "the default (first) size");
    assert!(
        output.shape.is_empty(),
        "a flexible output has no fixed shape"
    );
    let Some(spec::array_feature_type::ShapeFlexibility::EnumeratedShapes(e)) =
        &input.shape_flexibility
    else {
        panic!("no enumerated shapes")
    };
    let listed: Vec<Vec<i64>> = e.shapes.iter().map(|s| s.shape.clone()).collect();
    assert_eq!(listed, [[1, 3, 64, 64], [1, 3, 256, 256], [1, 3, 128, 192]]);
    let meta = d.metadata.as_ref().unwrap();
    assert_eq!(meta.user_defined["mlc.part"], "encoder");
    assert_eq!(
        meta.user_defined["mlc.image_sizes"],
        "64x64,256x256,128x192"
    );
    oracle(&dir);
}

#[test]
fn multifunction_encodes_every_fixture_with_its_own_function() {
    let dir = out_dir("taef2_encoder_multifunction");
    let mut o = opts(
        &dir.join("mf.mlpackage"),
        Precision::Fp16,
        None,
        &all_sizes(),
    );
    o.multifunction = true;
    o.target = Target::Ios18;
    let pkg = build(&o).unwrap().package;
    let p = read_package(&pkg).unwrap();
    let d = p.model.description.as_ref().unwrap();
    assert_eq!(d.default_function_name, "encode_64x64");
    let names: Vec<&str> = d.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["encode_64x64", "encode_256x256", "encode_128x192"]);
    let text = mlc::mil::print::print_model(&p.model);
    assert!(!text.contains(", ?"), "every function is static");
    assert!(
        text.contains("%latent: (1, 32, 16, 24, fp16)(Tensor)"),
        "encode_128x192 gives a 16x24 latent"
    );
    check_all(
        "fp16 multifunction",
        &pkg,
        |[h, w]| format!("encode_{h}x{w}"),
        fp16_bound,
    );
    oracle(&dir);
}

#[test]
fn pth_and_safetensors_give_byte_identical_packages() {
    let dir = out_dir("taef2_encoder_pth");
    let mut from_st = opts(
        &dir.join("st.mlpackage"),
        Precision::Fp16,
        None,
        &[[64, 64]],
    );
    from_st.weights = Some(encoder_weights());
    let mut from_pth = from_st.clone();
    from_pth.output = Some(dir.join("pth.mlpackage"));
    from_pth.weights = Some(shared("weights/taef2_encoder.pth"));
    let a = files(&build(&from_st).unwrap().package);
    let b = files(&build(&from_pth).unwrap().package);
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert!(a.len() >= 3, "{:?}", names(&a));
    assert_eq!(names(&a), names(&b));
    for ((k, va), (_, vb)) in a.iter().zip(&b) {
        assert!(va == vb, "{k} differs between .pth and .safetensors");
    }
    oracle(&dir);
}

// --- The binary: wrong weights, bad sizes, `mlc run` on an encoder. ---

/// `build flux2 --part encoder --weights <enc> --image-size <size>`, then `extra`.
fn encoder_build<'a>(enc: &'a str, size: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "build",
        "flux2",
        "--part",
        "encoder",
        "--weights",
        enc,
        "--image-size",
        size,
    ];
    args.extend_from_slice(extra);
    args
}

/// Runs mlc where it must fail with its own one-line error, leaving `dir` as it was.
fn fails(dir: &Path, args: &[&str]) -> String {
    let before: Vec<PathBuf> = listing(dir);
    let o = mlc(args, dir);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{args:?}: {err}"
    );
    assert_eq!(listing(dir), before, "{args:?} wrote something");
    err
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn wrong_part_weights_and_bad_sizes_fail_naming_the_cause() {
    let dir = out_dir("taef2_encoder_errors");
    let enc = encoder_weights().display().to_string();
    let dec = taef2_arg();

    let e = fails(
        &dir,
        &["build", "flux2", "--part", "encoder", "--weights", &dec],
    );
    assert_eq!(
        e.trim_end(),
        format!(
            "error: {dec}: these are TAESD-family decoder weights (they have \"1.weight\", not the encoder's \"14.weight\"); give encoder weights, or build the decoder part (--part decoder)"
        )
    );
    let e = fails(&dir, &["build", "flux2", "--weights", &enc]);
    assert_eq!(
        e.trim_end(),
        format!(
            "error: {enc}: these are TAESD-family encoder weights (they have \"14.weight\", not the decoder's \"1.weight\"); give decoder weights, or build the encoder part (--part encoder)"
        )
    );
    // Right part, wrong model.
    let e = fails(
        &dir,
        &["build", "taef1", "--part", "encoder", "--weights", &enc],
    );
    assert_eq!(
        e.trim_end(),
        format!(
            "error: {enc}: these weights are a taef2 encoder (32 latent channels, group-norm pool), not taef1 (16 latent channels)"
        )
    );
    // The encoder's image must be a multiple of 8.
    let e = fails(&dir, &encoder_build(&enc, "60", &[]));
    assert!(
        e.contains("--image-size") && e.contains("60x60") && e.contains("multiples of 8"),
        "{e}"
    );
    let e = fails(&dir, &encoder_build(&enc, "64,64x60", &[]));
    assert!(e.contains("64x60") && e.contains("multiples of 8"), "{e}");
    // No published encoder weights: --weights is required.
    let e = fails(&dir, &["build", "flux2", "--part", "encoder"]);
    assert!(
        e.contains("no published encoder weights") && e.contains("taef2"),
        "{e}"
    );
}

/// Writes a `[1, 3, H, W]` array in [0, 1] as an 8-bit RGB PNG.
fn write_png(image: &Array, path: &Path) {
    let [1, 3, h, w] = image.shape[..] else {
        panic!("{:?}", image.shape)
    };
    let plane = h * w;
    let mut rgb = Vec::with_capacity(3 * plane);
    for i in 0..plane {
        for c in 0..3 {
            rgb.push((image.data[c * plane + i] * 255.0).round() as u8);
        }
    }
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(&rgb).unwrap();
    wr.finish().unwrap();
}

fn latent_of(path: &Path) -> Array {
    let mut t = mlc::run::read_safetensors(path).unwrap();
    assert_eq!(
        t.keys().collect::<Vec<_>>(),
        ["latent"],
        "{}",
        path.display()
    );
    t.remove("latent").unwrap()
}

#[test]
fn run_encodes_a_png_or_safetensors_image_into_a_safetensors_latent() {
    let dir = out_dir("taef2_encoder_cli_run");
    let enc = encoder_weights().display().to_string();
    let name = "rocket_128x192";
    let fixture_path = shared(&format!("fixtures/taef2_encoder/{name}.safetensors"));
    let (image, latent) = enc_fixture(name);
    write_png(&image, &dir.join("rocket.png"));
    // The fixture images are 8-bit levels v/255, so the PNG holds them exactly and mlc reads
    // them back bit for bit; a PNG of any other image would cost up to 1/510 per pixel, which
    // this encoder amplifies (see the README), so no looser bound is needed or meaningful here.
    let read = mlc::run::read_png(&dir.join("rocket.png")).unwrap();
    assert_eq!(read.shape, image.shape);
    assert!(
        read.data == image.data,
        "the PNG does not hold the fixture image exactly"
    );

    for (pkg, precision) in [
        ("enc_fp32.mlpackage", "fp32"),
        ("enc_fp16.mlpackage", "fp16"),
    ] {
        let o = mlc(
            &encoder_build(&enc, "128x192", &["--precision", precision, "-o", pkg]),
            &dir,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("taef2 encoder"), "{out}");
    }
    let run = |pkg: &str, input: &str, output: &str| {
        let o = mlc(&["run", pkg, "--input", input, "--output", output], &dir);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(out.contains("latent [1, 32, 16, 24]"), "{out}");
        latent_of(&dir.join(output))
    };
    let fixture_arg = fixture_path.display().to_string();
    // fp32: strictly, from either input.
    let from_st = run("enc_fp32.mlpackage", &fixture_arg, "st.safetensors");
    let from_png = run("enc_fp32.mlpackage", "rocket.png", "png.safetensors");
    for (label, l) in [("safetensors input", &from_st), ("PNG input", &from_png)] {
        let c = compare(l, &latent);
        println!("cli fp32 {label} {name}: max abs {:.3e}", c.max_abs);
        assert!(c.max_abs <= FP32_MAX_ABS, "{label}: {c:?}");
    }
    assert!(
        from_png.data == from_st.data,
        "PNG and safetensors runs differ"
    );
    // fp16: within the reference tool's error, from the PNG.
    let c = compare(
        &run("enc_fp16.mlpackage", "rocket.png", "png16.safetensors"),
        &latent,
    );
    println!("cli fp16 PNG input {name}: max abs {:.3e}", c.max_abs);
    assert!(c.max_abs <= fp16_bound(name), "{c:?}");

    // A latent is no PNG, and a PNG is no latent: one-line errors, nothing written.
    let e = fails(
        &dir,
        &[
            "run",
            "enc_fp32.mlpackage",
            "--input",
            "rocket.png",
            "--output",
            "latent.png",
        ],
    );
    assert_eq!(
        e.trim_end(),
        "error: latent.png: the model's output \"latent\" is [1, 32, 16, 24], not an image; write it to a .safetensors file"
    );
    let dec = taef2_arg();
    let o = mlc(&taef2_build(&dec, "32", &["-o", "dec.mlpackage"]), &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = fails(
        &dir,
        &[
            "run",
            "dec.mlpackage",
            "--input",
            "rocket.png",
            "--output",
            "img.png",
        ],
    );
    assert_eq!(
        e.trim_end(),
        "error: rocket.png: a PNG is an RGB image, but the model's input \"latent\" is [1, 32, 32, 32]; give it as safetensors"
    );
    // A decoder's image can go to safetensors too (an output path without .png).
    let seed = shared("fixtures/taef2/seed0_32x32.safetensors");
    let o = mlc(
        &[
            "run",
            "dec.mlpackage",
            "--input",
            &seed.display().to_string(),
            "--output",
            "img.safetensors",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut t = mlc::run::read_safetensors(&dir.join("img.safetensors")).unwrap();
    let (_, want) = fixture("seed0_32x32");
    let c = compare(&t.remove("image").unwrap(), &want);
    assert!(c.max_abs <= 2e-3, "decoder fp16 against PyTorch: {c:?}");
    oracle(&dir);
}

/// A diffusers `AutoencoderTiny` file holds both halves as `encoder.layers.N` (upstream index N)
/// and `decoder.layers.N` (upstream N + 1): each part reads its own half and gives the package
/// its upstream file gives, byte for byte.
#[test]
fn diffusers_full_autoencoder_builds_both_parts() {
    let dir = out_dir("taef2_encoder_diffusers");
    let load = |p: &Path| mlc::weights::Weights::load(p).unwrap().tensors;
    let mut full = BTreeMap::new();
    for (k, t) in load(&encoder_weights()) {
        full.insert(format!("encoder.layers.{k}"), t);
    }
    for (k, t) in load(&taef2_weights()) {
        let (i, rest) = k.split_once('.').unwrap();
        let i: usize = i.parse().unwrap();
        full.insert(format!("decoder.layers.{}.{rest}", i - 1), t);
    }
    // Named like the upstream files: the file's stem is the package's `mlc.weights.source`.
    let both = |part: Part| {
        let p = dir
            .join(part.to_string())
            .join(format!("taef2_{part}.safetensors"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        write_safetensors(&p, &full);
        p
    };
    let bytes = |part: Part, w: PathBuf, name: &str| {
        let mut o = BuildOptions::new("flux2", w);
        o.part = Some(part.into());
        o.sizes = Sizes::Image(vec![[64, 64]]);
        o.output = Some(dir.join(name));
        let pkg = build(&o).unwrap().package.join("Data/com.apple.CoreML");
        let mut b = std::fs::read(pkg.join("model.mlmodel")).unwrap();
        b.extend(std::fs::read(pkg.join("weights/weight.bin")).unwrap());
        b
    };
    for (part, upstream) in [
        (Part::ENCODER, encoder_weights()),
        (Part::DECODER, taef2_weights()),
    ] {
        assert!(
            bytes(part, both(part), &format!("both_{part}.mlpackage"))
                == bytes(part, upstream, &format!("upstream_{part}.mlpackage")),
            "{part}"
        );
    }
}
