use super::*;

// ---------------------------------------------------------------------------------------------
// Item 8: absurd sizes, and enumerated sizes enforced by `run`.

#[test]
fn absurd_sizes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    synthetic_weights(&dir.join("w.safetensors"));
    for (flag, size, expect) in [
        (
            "--image-size",
            "18446744073709551608",
            "is over the limit of 16384 per side",
        ),
        (
            "--latent-size",
            "4294967296",
            "is over the limit of 16384 per side",
        ),
        (
            "--latent-size",
            "4x4294967296",
            "is over the limit of 16384 per side",
        ),
        (
            "--latent-size",
            "2049",
            "gives 16392x16392 images, over the limit of 16384 pixels",
        ),
        (
            "--image-size",
            "16392",
            "is over the limit of 16384 per side",
        ),
    ] {
        let args = [
            "build",
            "taesd",
            "--weights",
            "w.safetensors",
            flag,
            size,
            "-o",
            "m.mlpackage",
        ];
        let e = fails(dir, &["w.safetensors"], &args, &[]);
        assert!(e.contains(flag) && e.contains(expect), "{flag} {size}: {e}");
    }
    // The library says the same, and the largest sizes are accepted.
    let mut o = small_options(mlc::compiler::Precision::Fp16);
    o.sizes = mlc::compiler::Sizes::Latent(vec![[4, 4], [3000, 4]]);
    let e = o.size_bindings().unwrap_err().to_string();
    assert!(
        e.ends_with(
            "latent size 3000x4 gives 24000x32 images, over the limit of 16384 pixels per side"
        ),
        "{e}"
    );
    o.sizes = mlc::compiler::Sizes::Latent(vec![[2048, 2048]]);
    o.size_bindings().unwrap();
    o.sizes = mlc::compiler::Sizes::Image(vec![[16384, 8]]);
    o.size_bindings().unwrap();
}

#[test]
fn run_enforces_enumerated_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    synthetic_weights(&dir.join("w.safetensors"));
    let mut o = mlc::compiler::BuildOptions::new("taesd", dir.join("w.safetensors"));
    o.sizes = mlc::compiler::Sizes::Latent(vec![[4, 4], [2, 6]]);
    o.output = Some(dir.join("m.mlpackage"));
    mlc::compiler::build(&o).unwrap();
    let pkg = mlc::package::read_package(&dir.join("m.mlpackage")).unwrap();
    let run = |h: usize, w: usize| {
        let latent = mlc::kernels::Array::new(vec![1, 4, h, w], vec![0.1; 4 * h * w]);
        let inputs = std::collections::BTreeMap::from([("latent".to_string(), latent)]);
        mlc::run::run(&pkg, "main", &inputs).map(|o| o.len())
    };
    assert_eq!(run(4, 4).unwrap(), 1);
    assert_eq!(run(2, 6).unwrap(), 1);
    for (h, w) in [(6, 2), (3, 3), (8, 8)] {
        let e = run(h, w).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "input \"latent\": shape 1x4x{h}x{w} is not one of the enumerated shapes: 1x4x4x4, 1x4x2x6"
            )
        );
    }
    // Through the binary: one line, no output written.
    let data: Vec<u8> = (0..36).flat_map(|_| 0.5f32.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 4, 3, 3], &data)
            .unwrap();
    safetensors::serialize_to_file([("latent", view)], None, &dir.join("in.safetensors")).unwrap();
    let inputs = ["w.safetensors", "m.mlpackage", "in.safetensors"];
    let args = [
        "run",
        "m.mlpackage",
        "--input",
        "in.safetensors",
        "--output",
        "o.safetensors",
    ];
    let e = fails(dir, &inputs, &args, &[]);
    assert!(
        e.contains("1x4x3x3 is not one of the enumerated shapes"),
        "{e}"
    );
}
