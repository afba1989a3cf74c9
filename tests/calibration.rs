//! Calibration: photos and safetensors into model inputs, statistics against brute force, and
//! `mlc inspect --ranges` on a TAEF2 decoder with the shared photos (../shared/calibration).

mod common;

use common::*;
use mlc::calibrate::image::{decode, fit};
use mlc::calibrate::{collect, Calibration, ImageFeed, SampleSpec};
use mlc::compiler::{build, BuildOptions, Sizes};
use mlc::ir::{Binary, Dim, Graph, Op, TensorType, Unary, ValueId};
use mlc::kernels::Array;
use mlc::models::{lookup, ModelOptions, Part, Role};
use mlc::tensor::{DType, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn photos() -> PathBuf {
    shared("calibration")
}

fn encoder_weights() -> PathBuf {
    shared("weights/taef2_encoder.safetensors")
}

/// Photos straight into input `image` at `size` (an encoder's target).
fn direct(size: [usize; 2]) -> SampleSpec {
    SampleSpec {
        inputs: vec![("image".into(), vec![1, 3, size[0], size[1]])],
        images: ImageFeed::Direct {
            input: "image".into(),
            size,
            range: (0.0, 1.0),
        },
        upscale: false,
    }
}

/// The TAEF2 decoder's target at `latent` x `latent`, photos through the TAEF2 encoder.
fn taef2_decoder_target(latent: usize, encoder: Option<&Path>) -> SampleSpec {
    let m = lookup("flux2").unwrap();
    let none = ModelOptions::default();
    let iface = m.interface(Part::DECODER, &none);
    let b = iface.bindings(Role::Latent, [latent, latent]).unwrap();
    SampleSpec::for_model(m, Part::DECODER, &iface, &none, &b, None, encoder).unwrap()
}

fn write_png(
    path: &Path,
    color: png::ColorType,
    depth: png::BitDepth,
    w: u32,
    h: u32,
    data: &[u8],
) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(data).unwrap();
    wr.finish().unwrap();
}

/// Mean of the 2x2 block at (y, x) of an interleaved 8-bit RGB image of width `w`, channel c.
fn block_mean(rgb: &[u8], w: usize, y: usize, x: usize, c: usize) -> f32 {
    let p = |y: usize, x: usize| f32::from(rgb[(y * w + x) * 3 + c]) / 255.0;
    (p(y, x) + p(y, x + 1) + p(y + 1, x) + p(y + 1, x + 1)) / 4.0
}

/// A 6-wide, 4-high RGB image to 2x2: scale 1/2 and a centred 4x4 window (columns 1..5), so
/// each output pixel is the mean of one 2x2 block.
#[test]
fn png_is_area_averaged_and_centre_cropped() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, h) = (6usize, 4usize);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
    let p = tmp.path().join("a.png");
    write_png(&p, png::ColorType::Rgb, png::BitDepth::Eight, 6, 4, &rgb);
    let cal = Calibration::load(&p, &direct([2, 2])).unwrap();
    let x = &cal.inputs()["image"][0];
    assert_eq!(x.shape, [1, 3, 2, 2]);
    for c in 0..3 {
        for i in 0..2 {
            for j in 0..2 {
                let want = block_mean(&rgb, w, 2 * i, 1 + 2 * j, c);
                let got = x.data[c * 4 + i * 2 + j];
                assert!((got - want).abs() < 1e-6, "{c},{i},{j}: {got} vs {want}");
            }
        }
    }
}

/// A 24-wide, 16-high JPEG of flat 8x8 blocks (what JPEG keeps almost exactly) to 8x8: scale
/// 1/2, window columns 4..20.
#[test]
fn jpeg_is_area_averaged_and_centre_cropped() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, h) = (24usize, 16usize);
    let mut rgb = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let b = (y / 8) * 3 + x / 8;
            for c in 0..3 {
                rgb[(y * w + x) * 3 + c] = (40 + b * 30 + c * 20) as u8;
            }
        }
    }
    let p = tmp.path().join("b.jpg");
    let enc = jpeg_encoder::Encoder::new_file(&p, 100).unwrap();
    enc.encode(&rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    let img = decode(&p).unwrap();
    assert_eq!((img.height, img.width), (16, 24));
    let x = fit(&img, [8, 8], false).unwrap();
    let mut worst = 0f32;
    for c in 0..3 {
        for i in 0..8 {
            for j in 0..8 {
                let want = block_mean(&rgb, w, 2 * i, 4 + 2 * j, c);
                worst = worst.max((x.data[c * 64 + i * 8 + j] - want).abs());
            }
        }
    }
    // JPEG's colour conversion rounds each channel by a level or two.
    assert!(worst <= 3.0 / 255.0, "worst {worst}");
}

#[test]
fn png_grey_alpha_and_16_bit_decode_to_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    let grey = tmp.path().join("g.png");
    write_png(
        &grey,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        2,
        1,
        &[0, 255],
    );
    let g = decode(&grey).unwrap();
    assert_eq!(g.data, [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
    let rgba = tmp.path().join("a.png");
    write_png(
        &rgba,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        1,
        1,
        &[51, 102, 255, 7],
    );
    assert_eq!(decode(&rgba).unwrap().data, [0.2, 0.4, 1.0]);
    let deep = tmp.path().join("d.png");
    let px: Vec<u8> = [65535u16, 32768, 0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    write_png(
        &deep,
        png::ColorType::Rgb,
        png::BitDepth::Sixteen,
        1,
        1,
        &px,
    );
    assert_eq!(decode(&deep).unwrap().data, [1.0, 32768.0 / 65535.0, 0.0]);
}

#[test]
fn shared_photos_load_sorted_with_a_stable_hash() {
    let t = direct([64, 64]);
    let a = Calibration::load(&photos(), &t).unwrap();
    assert_eq!(a.len(), 4, "the four photos, README.md skipped");
    let names: Vec<&str> = (0..4)
        .map(|i| {
            Path::new(a.source(i))
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        names,
        [
            "hubble_deep_field.png",
            "immunohistochemistry.png",
            "retina.png",
            "rocket.png"
        ]
    );
    for x in &a.inputs()["image"] {
        assert_eq!(x.shape, [1, 3, 64, 64]);
        assert!(x.data.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    let b = Calibration::load(&photos(), &t).unwrap();
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.hash().len(), 64);
    // One photo fewer is another set.
    let tmp = tempfile::tempdir().unwrap();
    for n in &names[..3] {
        std::fs::copy(photos().join(n), tmp.path().join(n)).unwrap();
    }
    let c = Calibration::load(tmp.path(), &t).unwrap();
    assert_eq!(c.len(), 3);
    assert_ne!(c.hash(), a.hash());
    assert_eq!(c.inputs()["image"][..], a.inputs()["image"][..3]);
}

#[test]
fn bad_calibration_inputs_are_one_line_errors_naming_the_culprit() {
    let tmp = tempfile::tempdir().unwrap();
    let one_line = |e: String| {
        assert!(!e.contains('\n'), "{e}");
        e
    };
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "no photos").unwrap();
    let e = one_line(
        Calibration::load(&empty, &direct([8, 8]))
            .unwrap_err()
            .to_string(),
    );
    assert!(e.contains("empty") && e.contains("no .png"), "{e}");

    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("bad.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    let e = one_line(
        Calibration::load(&broken, &direct([8, 8]))
            .unwrap_err()
            .to_string(),
    );
    assert!(e.contains("bad.png") && e.contains("PNG"), "{e}");

    let e = one_line(
        Calibration::load(&tmp.path().join("missing"), &direct([8, 8]))
            .unwrap_err()
            .to_string(),
    );
    assert!(e.contains("missing"), "{e}");

    // The 512x512 photo cannot fill 768x768 (and is the first smaller one in sorted order).
    let e = one_line(
        Calibration::load(&photos(), &direct([768, 768]))
            .unwrap_err()
            .to_string(),
    );
    assert!(
        e.contains("immunohistochemistry.png") && e.contains("512x512") && e.contains("768x768"),
        "{e}"
    );

    let mut wrong = BTreeMap::new();
    wrong.insert(
        "latent".to_string(),
        Tensor::f32(vec![1, 16, 8, 8], vec![0.0; 1024]),
    );
    wrong.insert("other".to_string(), Tensor::f32(vec![1], vec![0.0]));
    let f = tmp.path().join("latents.safetensors");
    write_safetensors(&f, &wrong);
    let t = taef2_decoder_target(8, None);
    let e = one_line(Calibration::load(&f, &t).unwrap_err().to_string());
    assert!(
        e.contains("latents.safetensors")
            && e.contains("\"latent\"")
            && e.contains("[1, 16, 8, 8]")
            && e.contains("[1, 32, 8, 8]"),
        "{e}"
    );

    // A decoder's photos need its encoder; TAEF2 publishes none, so the weights must be given.
    let e = one_line(Calibration::load(&photos(), &t).unwrap_err().to_string());
    assert!(e.contains("--encoder-weights"), "{e}");
}

#[test]
fn safetensors_batches_split_into_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 32 * 8 * 8;
    let data = random(3 * n, 7, 2.0);
    let f = tmp.path().join("three.safetensors");
    let t = BTreeMap::from([(
        "latent".to_string(),
        Tensor::f32(vec![3, 32, 8, 8], data.clone()),
    )]);
    write_safetensors(&f, &t);
    let cal = Calibration::load(&f, &taef2_decoder_target(8, None)).unwrap();
    assert_eq!(cal.len(), 3);
    assert_eq!(cal.inputs()["latent"][2].shape, [1, 32, 8, 8]);
    assert_eq!(cal.inputs()["latent"][2].data, data[2 * n..]);
    let again = Calibration::load(&f, &taef2_decoder_target(8, None)).unwrap();
    assert_eq!(cal.hash(), again.hash());
    let mut changed = data;
    changed[5] += 1.0;
    let g = tmp.path().join("changed.safetensors");
    write_safetensors(
        &g,
        &BTreeMap::from([(
            "latent".to_string(),
            Tensor::f32(vec![3, 32, 8, 8], changed),
        )]),
    );
    assert_ne!(
        Calibration::load(&g, &taef2_decoder_target(8, None))
            .unwrap()
            .hash(),
        cal.hash()
    );
}

/// A decoder's photos are the TAEF2 encoder's latents of the fitted photo.
#[test]
fn decoder_photos_become_encoder_latents() {
    let enc = encoder_weights();
    let t = taef2_decoder_target(8, Some(&enc));
    let cal = Calibration::load(&photos(), &t).unwrap();
    assert_eq!(cal.len(), 4);
    let mut o = BuildOptions::new("flux2", &enc);
    o.part = Some(Part::ENCODER.into());
    o.sizes = Sizes::Image(vec![[64, 64]]);
    let w = lookup("flux2")
        .unwrap()
        .load(
            Part::ENCODER,
            &*mlc::weights::open(&enc).unwrap(),
            &ModelOptions::default(),
        )
        .unwrap();
    let g = mlc::compiler::declare(&o, &w).unwrap();
    let img = fit(
        &decode(&photos().join("retina.png")).unwrap(),
        [64, 64],
        false,
    )
    .unwrap();
    let out = mlc::ir::eval::evaluate(&g, &BTreeMap::from([("image".to_string(), img)])).unwrap();
    let latent = &cal.inputs()["latent"][2];
    assert_eq!(latent.shape, [1, 32, 8, 8]);
    assert_eq!(latent.data, out["latent"].data);
}

/// x → relu → ×2.5 → + x: every intermediate is easy to compute here by hand.
fn small_graph() -> (Graph, [ValueId; 4]) {
    let mut g = Graph::new("small");
    let shape = [1, 3, 5, 4].map(Dim::Known).to_vec();
    let x = g.input("x", TensorType::new(DType::F32, shape));
    let r = g.add(Op::Unary(Unary::Relu), &[x], "r").unwrap();
    let k = g.constant("k", Tensor::scalar(2.5));
    let m = g.add(Op::Binary(Binary::Mul), &[r, k], "m").unwrap();
    let y = g.add(Op::Binary(Binary::Add), &[m, x], "y").unwrap();
    g.set_output("y", y);
    (g, [x, r, m, y])
}

#[test]
fn statistics_match_brute_force() {
    let (g, ids) = small_graph();
    let samples: Vec<Array> = (0..3)
        .map(|i| Array::new(vec![1, 3, 5, 4], random(60, 100 + i, 1.0 + i as f32)))
        .collect();
    let cal = Calibration::from_samples(
        BTreeMap::from([("x".to_string(), samples.clone())]),
        vec!["a".into(), "b".into(), "c".into()],
    )
    .unwrap();
    let stats = collect(&g, &cal, false).unwrap();
    assert_eq!(stats.samples, 3);
    assert_eq!(stats.calibration_sha256, cal.hash());
    assert_eq!(stats.values.len(), 4, "x, r, m, y; not the constant");
    let fns: [fn(f32) -> f32; 4] = [
        |x| x,
        |x| x.max(0.0),
        |x| x.max(0.0) * 2.5,
        |x| x.max(0.0) * 2.5 + x,
    ];
    for (id, f) in ids.iter().zip(fns) {
        let s = &stats.values[id];
        let all: Vec<Vec<f32>> = samples
            .iter()
            .map(|a| a.data.iter().map(|&v| f(v)).collect())
            .collect();
        let flat: Vec<f32> = all.concat();
        assert_eq!(s.count, 180);
        assert_eq!(s.min, flat.iter().copied().fold(f32::INFINITY, f32::min));
        assert_eq!(
            s.max,
            flat.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        );
        assert_eq!(s.abs_max, flat.iter().fold(0f32, |m, v| m.max(v.abs())));
        let (mean, m2) = (s.channel_mean(), s.channel_second_moment());
        for c in 0..3 {
            let ch: Vec<f64> = all
                .iter()
                .flat_map(|d| d[c * 20..(c + 1) * 20].iter().map(|&v| v as f64))
                .collect();
            let bm = ch.iter().sum::<f64>() / 60.0;
            let bq = ch.iter().map(|v| v * v).sum::<f64>() / 60.0;
            assert!(
                (mean[c] - bm).abs() <= 1e-12 * bq.sqrt().max(1.0),
                "{id} mean {c}"
            );
            assert!((m2[c] - bq).abs() <= 1e-12 * bq.max(1.0), "{id} m2 {c}");
        }
        assert_eq!(s.histogram.total(), 180);
    }
}

/// True mean squared error of symmetric `bits`-bit quantization of `data` clipped at `c`.
fn true_mse(data: &[f32], c: f64, bits: u32) -> f64 {
    let q = ((1i64 << (bits - 1)) - 1) as f64;
    let s = c / q;
    data.iter()
        .map(|&x| {
            let x = x as f64;
            let v = (x / s).round().clamp(-q, q) * s;
            (x - v).powi(2)
        })
        .sum::<f64>()
        / data.len() as f64
}

/// Heavy-tailed activations (Laplace-like, half of them exact zeros as after a ReLU, a few
/// outliers), with the range growing between samples so that the histogram re-bins: the chosen
/// clipping range must be as good as the best found by brute force on the raw values.
#[test]
fn clip_range_matches_a_brute_force_search() {
    let (g, ids) = small_graph();
    let n = 3 * 5 * 4;
    let samples: Vec<Array> = (0..40u64)
        .map(|i| {
            let u = random(n, 500 + i, 1.0);
            let data = u
                .iter()
                .enumerate()
                .map(|(j, &v)| {
                    let mag = -(1.0 - v.abs()).max(1e-6).ln() * 0.2;
                    let outlier = if (i * 60 + j as u64) % 797 == 0 {
                        30.0
                    } else {
                        1.0
                    };
                    v.signum() * mag * outlier * (1.0 + (i / 10) as f32)
                })
                .collect();
            Array::new(vec![1, 3, 5, 4], data)
        })
        .collect();
    let sources = (0..40).map(|i| i.to_string()).collect();
    let cal =
        Calibration::from_samples(BTreeMap::from([("x".to_string(), samples)]), sources).unwrap();
    let stats = collect(&g, &cal, false).unwrap();
    let (x, r) = (ids[0], ids[1]);
    for id in [x, r] {
        let data: Vec<f32> = cal.inputs()["x"]
            .iter()
            .flat_map(|a| a.data.iter().map(|&v| if id == r { v.max(0.0) } else { v }))
            .collect();
        let s = &stats.values[&id];
        for bits in [8, 4] {
            let c = s.clip_range(bits);
            let best = (1..=4000)
                .map(|k| true_mse(&data, s.abs_max as f64 * k as f64 / 4000.0, bits))
                .fold(f64::INFINITY, f64::min);
            let got = true_mse(&data, c as f64, bits);
            assert!(
                got <= best * 1.03,
                "{id} int{bits}: clip {c} gives {got:.4e}, brute force {best:.4e}"
            );
            println!(
                "{id} int{bits}: clip {c} of max {}, mse {got:.4e} vs best {best:.4e}",
                s.abs_max
            );
            // Where clipping pays (4 bits here), the range is not the raw max.
            if bits == 4 {
                assert!(
                    c < 0.75 * s.abs_max,
                    "{id} int{bits}: outliers not clipped ({c})"
                );
            }
        }
    }
}

/// The shared photos through a TAEF2 decoder package: ops named as the builder names them, and
/// the output's reported largest magnitude equals the one computed by running the package.
#[test]
fn inspect_ranges_names_ops_and_reports_what_the_package_computes() {
    let dir = out_dir("calibration_ranges");
    let pkg = dir.join("taef2_8.mlpackage");
    let mut o = BuildOptions::new("flux2", taef2_weights());
    o.output = Some(pkg.clone());
    o.sizes = Sizes::Latent(vec![[8, 8]]);
    build(&o).unwrap();
    let enc = encoder_weights();
    let folder = photos();
    let args = [
        "inspect",
        pkg.to_str().unwrap(),
        "--ranges",
        "--calibration",
        folder.to_str().unwrap(),
        "--encoder-weights",
        enc.to_str().unwrap(),
    ];
    let out = mlc(&args, &repo());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("over 4 calibration samples"), "{text}");
    let line = |op: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(op))
            .unwrap_or_else(|| panic!("no line for {op}:\n{text}"))
            .to_string()
    };
    let conv = line("l8_conv2_conv");
    assert_eq!(conv.split_whitespace().nth(1), Some("conv"), "{conv}");
    let image_max: f32 = line("image")
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let cal = Calibration::load(&photos(), &taef2_decoder_target(8, Some(&enc))).unwrap();
    let p = mlc::package::read_package(&pkg).unwrap();
    let mut want = 0f32;
    for i in 0..cal.len() {
        let y = mlc::run::run(&p, "main", &cal.sample(i)).unwrap();
        want = want.max(y["image"].data.iter().fold(0f32, |m, v| m.max(v.abs())));
    }
    assert!(
        (image_max - want).abs() <= 1e-3 * want,
        "reported {image_max}, computed {want}"
    );
    assert!(text.contains("0 ops overflow fp16"), "{text}");

    // A latent file of the wrong shape: one line naming the file, tensor and both shapes.
    let f = dir.join("wrong.safetensors");
    let wrong = BTreeMap::from([(
        "latent".to_string(),
        Tensor::f32(vec![1, 32, 4, 4], vec![0.0; 512]),
    )]);
    write_safetensors(&f, &wrong);
    let mut bad = args;
    bad[4] = f.to_str().unwrap();
    let out = mlc(&bad, &repo());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("wrong.safetensors")
            && err.contains("[1, 32, 4, 4]")
            && err.contains("[1, 32, 8, 8]"),
        "{err}"
    );
    oracle(&dir);
}
