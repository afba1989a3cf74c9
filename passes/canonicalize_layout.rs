//! NCHW canonicalization: the model may take or return channels-last arrays, but everything
//! inside stays NCHW. One transpose enters at each NHWC input and one leaves at each NHWC output;
//! [`super::cancel_transposes`] then removes any pair that cancels.
//!
//! ```text
//! %latent: fp32[1,32,H,W] = input("latent")    %latent: fp32[1,H,W,32] = input("latent")
//! %c = conv2d(%latent, ...)             ==>    %latent_nchw: fp32[1,32,H,W] = transpose(%latent) perm=[0, 3, 1, 2]
//!                                              %c = conv2d(%latent_nchw, ...)
//! ```

use super::Pass;
use crate::ir::{Graph, IrError, Op, Rebuilder, TensorType};

/// NHWC → NCHW.
pub const TO_NCHW: [usize; 4] = [0, 3, 1, 2];
/// NCHW → NHWC.
pub const TO_NHWC: [usize; 4] = [0, 2, 3, 1];

pub struct CanonicalizeLayout {
    pub input_nhwc: bool,
    pub output_nhwc: bool,
}

impl Pass for CanonicalizeLayout {
    fn name(&self) -> &'static str {
        "canonicalize_layout"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        let (name, nodes, outputs) = g.into_parts();
        let mut r = Rebuilder::new(name, nodes.len());
        for (i, mut node) in nodes.into_iter().enumerate() {
            let old = crate::ir::ValueId(i as u32);
            if !(self.input_nhwc && matches!(node.op, Op::Input { .. }) && node.ty.rank() == 4) {
                r.copy(old, node);
                continue;
            }
            let nchw = node.ty.clone();
            node.ty = TensorType::new(
                nchw.dtype,
                TO_NHWC.iter().map(|&p| nchw.shape[p].clone()).collect(),
            );
            let t_name = format!("{}_nchw", node.name);
            let x = r.copy(old, node);
            let t = r.graph.add(
                Op::Transpose {
                    perm: TO_NCHW.to_vec(),
                },
                &[x],
                t_name,
            )?;
            r.set(old, t);
        }
        r.finish_with(&outputs, |g, v| {
            if !self.output_nhwc || g.ty(v).rank() != 4 {
                return Ok(v);
            }
            let name = g.fresh_name(&format!("{}_nhwc", g.node(v).name));
            g.add(
                Op::Transpose {
                    perm: TO_NHWC.to_vec(),
                },
                &[v],
                name,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{print::print, verify::verify, Conv2d, Dim};
    use crate::kernels::{transpose, Array};
    use crate::passes::testing::random;
    use crate::tensor::{DType, Tensor};
    use std::collections::BTreeMap;

    #[test]
    fn nhwc_io_gives_transposed_numbers() {
        let mut g = Graph::new("t");
        let x = g.input(
            "x",
            TensorType::new(
                DType::F32,
                vec![Dim::Known(1), Dim::Known(2), Dim::sym("H"), Dim::Known(5)],
            ),
        );
        let w = random(&[3, 2, 3, 3], 1, 0.5);
        let w = g.constant("w", Tensor::f32(w.shape, w.data));
        let y = g.add(Op::Conv2d(Conv2d::same(3)), &[x, w], "conv").unwrap();
        g.set_output("y", y);
        let h = CanonicalizeLayout {
            input_nhwc: true,
            output_nhwc: true,
        }
        .run(g.clone())
        .unwrap();
        verify(&h).unwrap();
        let text = print(&h);
        assert!(text.contains("%x: fp32[1,H,5,2] = input(\"x\")"), "{text}");
        assert!(
            text.contains("%x_nchw: fp32[1,2,H,5] = transpose(%x) perm=[0, 3, 1, 2]"),
            "{text}"
        );
        assert!(text.contains("return y=%conv_nhwc"), "{text}");

        let x: Array = random(&[1, 2, 4, 5], 2, 1.0);
        let want =
            crate::ir::eval::evaluate(&g, &BTreeMap::from([("x".into(), x.clone())])).unwrap();
        let got =
            crate::ir::eval::evaluate(&h, &BTreeMap::from([("x".into(), transpose(&x, &TO_NHWC))]))
                .unwrap();
        assert_eq!(got["y"], transpose(&want["y"], &TO_NHWC));
    }
}
