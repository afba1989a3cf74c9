//! fp16 cast: weights and compute in fp16.
//!
//! Constants are rounded to fp16 once; every op is re-added so its type is re-inferred as fp16.
//! With fp16 I/O (iOS16+) the model's inputs and outputs become fp16 arrays too; otherwise the
//! model keeps fp32 I/O with one cast at each boundary (inputs and outputs are chosen apart, since
//! Core ML image outputs need fp32).
//!
//! ```text
//! %x: fp32[..] = input("x")              %x: fp32[..] = input("x")
//! %w: fp32[..] = const(..)               %x_fp16: fp16[..] = cast(%x) dtype=fp16
//! %y: fp32[..] = conv2d(%x, %w)   ==>    %w: fp16[..] = const(..)
//! return y=%y                            %y: fp16[..] = conv2d(%x_fp16, %w)
//!                                        %y_fp32: fp32[..] = cast(%y) dtype=fp32
//!                                        return y=%y_fp32          (fp32 I/O)
//! ```

use super::Pass;
use crate::ir::{ConstData, Graph, IrError, Op, Rebuilder, ValueId};
use crate::tensor::DType;

pub struct CastFp16 {
    /// The model's inputs become fp16 arrays (otherwise: fp32 inputs, cast inside).
    pub fp16_inputs: bool,
    /// The model's outputs are fp16 arrays (otherwise: cast back to fp32).
    pub fp16_outputs: bool,
}

impl Pass for CastFp16 {
    fn name(&self) -> &'static str {
        "cast_fp16"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        let (name, nodes, outputs) = g.into_parts();
        let mut r = Rebuilder::new(name, nodes.len());
        for (i, mut node) in nodes.into_iter().enumerate() {
            let old = ValueId(i as u32);
            match node.op {
                Op::Input { .. } if node.ty.dtype == DType::F32 => {
                    if self.fp16_inputs {
                        node.ty.dtype = DType::F16;
                        r.copy(old, node);
                    } else {
                        let cast_name = format!("{}_fp16", node.name);
                        let x = r.copy(old, node);
                        let c = r
                            .graph
                            .add(Op::Cast { dtype: DType::F16 }, &[x], cast_name)?;
                        r.set(old, c);
                    }
                }
                Op::Const(ConstData::Dense(ref t)) if t.dtype() == DType::F32 => {
                    let t = t.cast(DType::F16);
                    let new = r.graph.constant(node.name, t);
                    r.set(old, new);
                }
                // Exactly fp16 already: the stored bits are the fp16 constant, no rounding.
                Op::Const(ConstData::Half(t)) => {
                    let new = r.graph.constant(node.name, t);
                    r.set(old, new);
                }
                Op::Input { .. } | Op::Const(_) => {
                    r.copy(old, node);
                }
                op => {
                    let inputs: Vec<ValueId> = node.inputs.iter().map(|&v| r.get(v)).collect();
                    let new = r.graph.add(op, &inputs, node.name)?;
                    r.set(old, new);
                }
            }
        }
        r.finish_with(&outputs, |g, v| {
            if self.fp16_outputs || g.ty(v).dtype != DType::F16 {
                return Ok(v);
            }
            let name = g.fresh_name(&format!("{}_fp32", g.node(v).name));
            g.add(Op::Cast { dtype: DType::F32 }, &[v], name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Unary;
    use crate::ir::{print::print, verify::verify, Conv2d, TensorType};
    use crate::passes::testing::{max_diff, random};
    use crate::tensor::Tensor;
    use std::collections::BTreeMap;

    fn conv_graph() -> Graph {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 3, 6, 6]));
        let w = random(&[4, 3, 3, 3], 7, 0.5);
        let w = g.constant("w", Tensor::f32(w.shape, w.data));
        let y = g.add(Op::Conv2d(Conv2d::same(3)), &[x, w], "conv").unwrap();
        let y = g.add(Op::Unary(Unary::Relu), &[y], "relu").unwrap();
        g.set_output("y", y);
        g
    }

    #[test]
    fn fp16_io_makes_everything_fp16_within_rounding() {
        let g = conv_graph();
        let h = CastFp16 {
            fp16_inputs: true,
            fp16_outputs: true,
        }
        .run(g.clone())
        .unwrap();
        verify(&h).unwrap();
        let text = print(&h);
        assert!(!text.contains("fp32"), "{text}");
        assert!(!text.contains("cast("), "{text}");
        let inputs = BTreeMap::from([("x".to_string(), random(&[1, 3, 6, 6], 3, 2.0))]);
        let d = max_diff(&g, &h, &inputs);
        assert!(
            d > 0.0 && d < 5e-3,
            "fp16 rounding should show but stay small: {d}"
        );
    }

    /// Weights stored as f16 are exactly fp16 already: the cast keeps their bits.
    #[test]
    fn half_stored_weights_keep_their_bits() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 1, 3, 3]));
        let bits = [0x3c00u16, 0x0001, 0xfbff, 0x3555];
        let w = Tensor::f16(
            vec![1, 1, 2, 2],
            bits.iter().map(|&b| half::f16::from_bits(b)).collect(),
        );
        let w = g.weight("w", w);
        assert_eq!(g.ty(w).dtype, DType::F32);
        let y = g.add(Op::Conv2d(Conv2d::same(2)), &[x, w], "conv");
        g.set_output("y", y.unwrap());
        verify(&g).unwrap();
        let h = CastFp16 {
            fp16_inputs: true,
            fp16_outputs: true,
        }
        .run(g)
        .unwrap();
        verify(&h).unwrap();
        let Op::Const(ConstData::Dense(t)) = &h.node(ValueId(1)).op else {
            panic!("{}", print(&h))
        };
        let crate::tensor::TensorData::F16(v) = &t.data else {
            panic!("{t:?}")
        };
        assert_eq!(v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), bits);
    }

    #[test]
    fn fp32_io_casts_at_the_boundary() {
        let h = CastFp16 {
            fp16_inputs: false,
            fp16_outputs: false,
        }
        .run(conv_graph())
        .unwrap();
        verify(&h).unwrap();
        let text = print(&h);
        assert!(text.contains("%x: fp32[1,3,6,6] = input(\"x\")"), "{text}");
        assert!(
            text.contains("%x_fp16: fp16[1,3,6,6] = cast(%x) dtype=fp16"),
            "{text}"
        );
        assert!(
            text.contains("%relu_fp32: fp32[1,4,6,6] = cast(%relu) dtype=fp32"),
            "{text}"
        );
        assert!(text.contains("return y=%relu_fp32"), "{text}");
        assert!(text.contains("%w: fp16[4,3,3,3]"), "{text}");
    }
}
