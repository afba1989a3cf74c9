//! What the layer tests share: random weights, inputs, evaluation through the IR evaluator, and
//! states moved between the two transformer layouts.

use crate::ir::{eval::evaluate, verify::verify, Graph, TensorType, ValueId};
pub use crate::kernels::test_util::Lcg;
use crate::kernels::Array;
use crate::models::TransformerLayout;
use crate::tensor::{DType, Tensor};
use crate::weights::Weights;
use std::collections::BTreeMap;

/// Weights with values in [-1, 1) under `keys`, drawn from `seed`.
pub fn random_weights(seed: u64, keys: &[(&str, &[usize])]) -> Weights {
    let mut rng = Lcg(seed);
    let tensors = keys
        .iter()
        .map(|(k, shape)| {
            let n = shape.iter().product();
            (k.to_string(), Tensor::f32(shape.to_vec(), rng.vec(n)))
        })
        .collect();
    Weights::from_tensors("w.safetensors".into(), tensors)
}

/// A float input of a known shape.
pub fn input(g: &mut Graph, name: &str, shape: &[usize]) -> ValueId {
    g.input(name, TensorType::known(DType::F32, shape))
}

/// The outputs of `g` (verified first) on `inputs`.
pub fn run(g: &Graph, inputs: &[(&str, Array)]) -> BTreeMap<String, Array> {
    verify(g).unwrap();
    let inputs = inputs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    evaluate(g, &inputs).unwrap()
}

pub fn assert_close(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= tolerance, "{what}: off by {worst}");
}

/// The shape of `[B, S, D]` states in `layout`.
pub fn states_shape(layout: TransformerLayout, b: usize, s: usize, d: usize) -> Vec<usize> {
    match layout {
        TransformerLayout::Standard => vec![b, s, d],
        TransformerLayout::Ane => vec![b, d, 1, s],
    }
}

/// `[B, S, D]` states as `layout` holds them.
pub fn to_layout(layout: TransformerLayout, x: &Array) -> Array {
    let [b, s, d] = x.shape[..] else {
        panic!("states are [B, S, D], got {:?}", x.shape)
    };
    match layout {
        TransformerLayout::Standard => x.clone(),
        TransformerLayout::Ane => {
            let mut y = vec![0.0; x.len()];
            for bi in 0..b {
                for si in 0..s {
                    for di in 0..d {
                        y[(bi * d + di) * s + si] = x.data[(bi * s + si) * d + di];
                    }
                }
            }
            Array::new(vec![b, d, 1, s], y)
        }
    }
}

/// States of `layout` back as `[B, S, D]`.
pub fn from_layout(layout: TransformerLayout, y: &Array) -> Array {
    match layout {
        TransformerLayout::Standard => y.clone(),
        TransformerLayout::Ane => {
            let [b, d, 1, s] = y.shape[..] else {
                panic!("ane states are [B, D, 1, S], got {:?}", y.shape)
            };
            let mut x = vec![0.0; y.len()];
            for bi in 0..b {
                for si in 0..s {
                    for di in 0..d {
                        x[(bi * s + si) * d + di] = y.data[(bi * d + di) * s + si];
                    }
                }
            }
            Array::new(vec![b, s, d], x)
        }
    }
}
