//! Image input: a Core ML image input delivers 8-bit RGB values as 0..255 floats, so they are
//! mapped to the range the model computes in, `[low, high]`, inside the model.
//!
//! ```text
//! %image = input("image")     ==>    %image = input("image")              (0..255)
//! %conv = conv(%image, …)            %image_scaled = mul(%image, (high - low) / 255)
//!                                   (%image_low = add(%image_scaled, low)     when low != 0)
//!                                    %conv = conv(%image_low, …)
//! ```

use super::Pass;
use crate::ir::{Binary, Graph, IrError, Op, Rebuilder, ValueId};
use crate::tensor::Tensor;

pub struct ImageInput {
    pub low: f32,
    pub high: f32,
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
            let is_input = matches!(node.op, Op::Input { .. });
            let base = node.name.clone();
            let x = r.copy(old, node);
            if !is_input {
                continue;
            }
            let g = &mut r.graph;
            let dtype = g.ty(x).dtype;
            let k = g.constant(
                g.fresh_name(&format!("{base}_scale")),
                Tensor::scalar((self.high - self.low) / 255.0).cast(dtype),
            );
            let mut y = g.add(
                Op::Binary(Binary::Mul),
                &[x, k],
                g.fresh_name(&format!("{base}_scaled")),
            )?;
            if self.low != 0.0 {
                let lo = g.constant(
                    g.fresh_name(&format!("{base}_low_y")),
                    Tensor::scalar(self.low).cast(dtype),
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
        for (low, high, want) in [
            (0.0, 1.0, [0.0, 1.0, 0.5, 0.2, 1.0, 0.0]),
            (-1.0, 1.0, [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
        ] {
            let h = ImageInput { low, high }.run(g.clone()).unwrap();
            verify(&h).unwrap();
            let out = &evaluate(&h, &inputs).unwrap()["y"];
            for (a, b) in out.data.iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "{low}..{high}: {:?}", out.data);
            }
        }
    }
}
