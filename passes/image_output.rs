//! Image output: Core ML image outputs take 8-bit RGB values, so the decoder's output, in the
//! model's range `[low, high]`, is clamped and mapped to [0, 255] inside the model. Only the
//! output named is an image; other outputs stay as they are.
//!
//! ```text
//!                                    %image_clip: fp32[1,3,H,W] = clip(%y) min=low max=high
//! return image=%y             ==>   (%image_shift = sub(%image_clip, low)       when low != 0)
//!                                    %image_255: fp32[1,3,H,W] = mul(…, 255 / (high - low))
//!                                    return image=%image_255
//! ```

use super::Pass;
use crate::ir::{Binary, Graph, IrError, Op, Rebuilder};
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq)]
pub struct ImageOutput {
    /// The output that is an image.
    pub name: String,
    /// The range the model's image is in.
    pub low: f32,
    pub high: f32,
}

impl Pass for ImageOutput {
    fn name(&self) -> &'static str {
        "image_output"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        let (name, nodes, outputs) = g.into_parts();
        let mut r = Rebuilder::new(name, nodes.len());
        for (i, node) in nodes.into_iter().enumerate() {
            r.copy(crate::ir::ValueId(i as u32), node);
        }
        // Called once per output, in order.
        let mut names = outputs.iter().map(|(n, _)| n.as_str());
        r.finish_with(&outputs, |g, v| {
            if names.next() != Some(self.name.as_str()) {
                return Ok(v);
            }
            let base = g.node(v).name.clone();
            let clip = g.fresh_name(&format!("{base}_clip"));
            let dtype = g.ty(v).dtype;
            let mut c = g.add(
                Op::Clip {
                    min: self.low,
                    max: self.high,
                },
                &[v],
                clip,
            )?;
            if self.low != 0.0 {
                let lo = g.fresh_name(&format!("{base}_low"));
                let lo = g.constant(lo, Tensor::scalar(self.low).cast(dtype));
                let shift = g.fresh_name(&format!("{base}_shift"));
                c = g.add(Op::Binary(Binary::Sub), &[c, lo], shift)?;
            }
            let k = g.fresh_name(&format!("{base}_255_y"));
            let scale = 255.0 / (self.high - self.low);
            let k = g.constant(k, Tensor::scalar(scale).cast(dtype));
            let scaled = g.fresh_name(&format!("{base}_255"));
            g.add(Op::Binary(Binary::Mul), &[c, k], scaled)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Unary;
    use crate::ir::{eval::evaluate, verify::verify, TensorType};
    use crate::kernels::Array;
    use crate::tensor::DType;
    use std::collections::BTreeMap;

    #[test]
    fn clamps_and_scales_to_255() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 3, 1, 2]));
        let y = g.add(Op::Unary(Unary::Relu), &[x], "y").unwrap();
        g.set_output("image", y);
        g.set_output("mask", y);
        let h = ImageOutput {
            name: "image".into(),
            low: 0.0,
            high: 1.0,
        }
        .run(g)
        .unwrap();
        verify(&h).unwrap();
        let data = vec![-1.0, 0.0, 0.25, 0.5, 1.0, 2.0];
        let x = Array::new(vec![1, 3, 1, 2], data);
        let out = evaluate(&h, &BTreeMap::from([("x".into(), x)])).unwrap();
        assert_eq!(
            out["image"].data,
            vec![0.0, 0.0, 63.75, 127.5, 255.0, 255.0]
        );
        // The output not named an image is left as the model computes it.
        assert_eq!(out["mask"].data, vec![0.0, 0.0, 0.25, 0.5, 1.0, 2.0]);
    }
}
