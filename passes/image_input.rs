//! Image input: a Core ML image input delivers 8-bit RGB values as 0..255 floats, so they are
//! mapped to what the model computes on inside the model, per channel `x * scale + bias`: a
//! range `[low, high]` (the same for every channel), or a range then a normalisation like
//! CLIP's `(x - mean) / std`.
//!
//! ```text
//! %image = input("image")     ==>    %image = input("image")              (0..255)
//! %conv = conv(%image, …)            %image_scaled = mul(%image, scale)
//!                                   (%image_low = add(%image_scaled, bias)     when bias != 0)
//!                                    %conv = conv(%image_low, …)
//! ```
//!
//! A scale or bias equal on every channel is a scalar; otherwise a `[1, 3, 1, 1]` constant.

use super::Pass;
use crate::ir::{Binary, Graph, IrError, Op, Rebuilder, ValueId};
use crate::tensor::Tensor;

/// Per channel, `pixel * scale + bias` for pixels in 0..255.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelMap {
    pub scale: [f32; 3],
    pub bias: [f32; 3],
}

impl PixelMap {
    /// 0..255 to `[low, high]`.
    pub fn range(low: f32, high: f32) -> PixelMap {
        PixelMap {
            scale: [(high - low) / 255.0; 3],
            bias: [low; 3],
        }
    }

    /// 0..255 to `[low, high]`, then `(x - mean) / std`, as one multiply-add (computed in f64,
    /// rounded once).
    pub fn normalized(low: f32, high: f32, mean: [f32; 3], std: [f32; 3]) -> PixelMap {
        let (lo, span) = (low as f64, (high - low) as f64);
        let mut m = PixelMap {
            scale: [0.0; 3],
            bias: [0.0; 3],
        };
        for c in 0..3 {
            let s = std[c] as f64;
            m.scale[c] = (span / 255.0 / s) as f32;
            m.bias[c] = ((lo - mean[c] as f64) / s) as f32;
        }
        m
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ImageInput {
    /// The input that is an image; other inputs stay as they are.
    pub name: String,
    pub map: PixelMap,
}

/// A scalar when every channel has the same value, else `[1, 3, 1, 1]`.
fn per_channel(v: [f32; 3]) -> Tensor {
    if v.iter().all(|&x| x == v[0]) {
        Tensor::scalar(v[0])
    } else {
        Tensor::f32(vec![1, 3, 1, 1], v.to_vec())
    }
}

impl Pass for ImageInput {
    fn name(&self) -> &'static str {
        "image_input"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        let (name, nodes, outputs) = g.into_parts();
        let mut r = Rebuilder::new(name, nodes.len());
        for (i, node) in nodes.into_iter().enumerate() {
            let old = ValueId(i as u32);
            let is_input = matches!(node.op, Op::Input { .. }) && node.name == self.name;
            let base = node.name.clone();
            let x = r.copy(old, node);
            if !is_input {
                continue;
            }
            let g = &mut r.graph;
            let dtype = g.ty(x).dtype;
            let k = g.constant(
                g.fresh_name(&format!("{base}_scale")),
                per_channel(self.map.scale).cast(dtype),
            );
            let mut y = g.add(
                Op::Binary(Binary::Mul),
                &[x, k],
                g.fresh_name(&format!("{base}_scaled")),
            )?;
            if self.map.bias != [0.0; 3] {
                let lo = g.constant(
                    g.fresh_name(&format!("{base}_low_y")),
                    per_channel(self.map.bias).cast(dtype),
                );
                y = g.add(
                    Op::Binary(Binary::Add),
                    &[y, lo],
                    g.fresh_name(&format!("{base}_low")),
                )?;
            }
            r.set(old, y);
        }
        Ok(r.finish(&outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{eval::evaluate, verify::verify, Dim, TensorType};
    use crate::kernels::Array;
    use crate::tensor::DType;
    use std::collections::BTreeMap;

    #[test]
    fn pixels_map_to_the_model_range() {
        let mut g = Graph::new("t");
        let x = g.input(
            "image",
            TensorType::new(
                DType::F32,
                vec![Dim::Known(1), Dim::Known(3), Dim::Known(1), Dim::Known(2)],
            ),
        );
        let y = g.add(Op::Unary(crate::ir::Unary::Relu), &[x], "y").unwrap();
        g.set_output("y", y);
        let px = Array::new(vec![1, 3, 1, 2], vec![0.0, 255.0, 127.5, 51.0, 255.0, 0.0]);
        let inputs = BTreeMap::from([("image".to_string(), px)]);
        let clip = PixelMap::normalized(0.0, 1.0, [0.5, 0.25, 0.0], [0.5, 0.25, 2.0]);
        for (map, want) in [
            (PixelMap::range(0.0, 1.0), [0.0, 1.0, 0.5, 0.2, 1.0, 0.0]),
            (PixelMap::range(-1.0, 1.0), [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
            // Channel 0: (x - 0.5) / 0.5; 1: (x - 0.25) / 0.25; 2: x / 2 (relu after).
            (clip, [0.0, 1.0, 1.0, 0.0, 0.5, 0.0]),
        ] {
            let name = "image".to_string();
            let h = ImageInput { name, map }.run(g.clone()).unwrap();
            verify(&h).unwrap();
            let out = &evaluate(&h, &inputs).unwrap()["y"];
            for (a, b) in out.data.iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "{map:?}: {:?}", out.data);
            }
        }
    }

    #[test]
    fn only_the_named_input_is_an_image() {
        let mut g = Graph::new("t");
        let ty = TensorType::known(DType::F32, &[1, 3, 1, 1]);
        let image = g.input("image", ty.clone());
        let mask = g.input("mask", ty);
        let y = g.add(Op::Binary(Binary::Add), &[image, mask], "y").unwrap();
        g.set_output("y", y);
        let map = PixelMap::range(0.0, 1.0);
        let name = "image".to_string();
        let h = ImageInput { name, map }.run(g).unwrap();
        verify(&h).unwrap();
        let a = |v: f32| Array::new(vec![1, 3, 1, 1], vec![v; 3]);
        let inputs = BTreeMap::from([
            ("image".to_string(), a(255.0)),
            ("mask".to_string(), a(2.0)),
        ]);
        // The image's 255 is the model's 1; the mask's 2 stays 2.
        assert_eq!(evaluate(&h, &inputs).unwrap()["y"].data, vec![3.0; 3]);
    }
}
