//! Reading a package that coremltools wrote (tests/data/ct_conv_relu.mlpackage, made by
//! tests/data/make_ct_conv_relu.py): mlc's reader, printer and evaluator must understand it.

mod common;

use mlc::kernels::{self, Array};
use mlc::package::{read_package, BlobDType};
use std::collections::BTreeMap;

#[test]
fn evaluates_a_coremltools_package() {
    let path = common::repo().join("tests/data/ct_conv_relu.mlpackage");
    let pkg = read_package(&path).unwrap();
    let text = mlc::inspect::describe(&pkg).unwrap();
    assert!(text.contains("conv(x=%x_to_fp16, weight=%"), "{text}");
    assert!(
        text.contains("pad=[1, 1, 1, 1]") && text.contains("pad_type=\"custom\""),
        "{text}"
    );

    // Reference: conv (pad 1) + relu from the blob's fp16 weights, computed with the kernels
    // directly, on the input rounded to fp16 as the model's first cast does.
    let blobs = pkg.blobs().unwrap().expect("weights");
    let (dtype, bytes) = blobs.get(64).unwrap();
    assert_eq!(dtype, BlobDType::F16);
    let w: Vec<f32> = bytes
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    let w = Array::new(vec![8, 4, 3, 3], w);
    let x = Array::new(vec![1, 4, 8, 8], common::random(256, 3, 1.0));
    let x16 = kernels::map(&x, |v| half::f16::from_f32(v).to_f32());
    let p = kernels::Conv2d {
        strides: [1, 1],
        pads: [1, 1, 1, 1],
        dilations: [1, 1],
        groups: 1,
    };
    let expected = kernels::map(&kernels::conv2d(&x16, &w, None, &p), |v| v.max(0.0));

    let input_name = mlc::run::input_names(&pkg, "main")[0].clone();
    let out = mlc::run::run(&pkg, "main", &BTreeMap::from([(input_name, x)])).unwrap();
    let (_, y) = out.into_iter().next().unwrap();
    assert_eq!(y.shape, vec![1, 8, 8, 8]);
    let diff = y
        .data
        .iter()
        .zip(&expected.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "{diff}");
    assert!(
        y.data.iter().filter(|v| **v > 0.0).count() > 100,
        "relu should keep a good share"
    );
}
