//! Transpose cancellation: `transpose(transpose(x, p), q)` is one transpose with the composed
//! permutation, or nothing when that is the identity.
//!
//! ```text
//! %a = transpose(%x) perm=[0, 3, 1, 2]
//! %b = transpose(%a) perm=[0, 2, 3, 1]   ==>   (uses of %b read %x; %a goes if unused)
//! ```

use super::Pass;
use crate::ir::{Graph, IrError, Op, Rebuilder, ValueId};

pub struct CancelTransposes;

impl Pass for CancelTransposes {
    fn name(&self) -> &'static str {
        "cancel_transposes"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        let (name, nodes, outputs) = g.into_parts();
        let mut r = Rebuilder::new(name, nodes.len());
        for (i, node) in nodes.into_iter().enumerate() {
            let old = ValueId(i as u32);
            let Op::Transpose { perm: outer } = &node.op else {
                r.copy(old, node);
                continue;
            };
            let src = r.get(node.inputs[0]);
            let Op::Transpose { perm: inner } = &r.graph.node(src).op else {
                r.copy(old, node);
                continue;
            };
            // y[i] = a[outer[i]] = x[inner[outer[i]]]
            let composed: Vec<usize> = outer.iter().map(|&o| inner[o]).collect();
            let x = r.graph.node(src).inputs[0];
            let new = if composed.iter().enumerate().all(|(i, &p)| i == p) {
                x
            } else {
                r.graph
                    .add(Op::Transpose { perm: composed }, &[x], node.name)?
            };
            r.set(old, new);
        }
        // A cancelled pair may leave its first transpose unused; dce removes it.
        Ok(r.finish(&outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Unary;
    use crate::ir::{print::print, verify::verify, TensorType};
    use crate::passes::testing::{max_diff, random};
    use crate::tensor::DType;
    use std::collections::BTreeMap;

    #[test]
    fn inverse_pairs_vanish_and_others_compose() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 2, 3, 4]));
        let a = g
            .add(
                Op::Transpose {
                    perm: vec![0, 3, 1, 2],
                },
                &[x],
                "a",
            )
            .unwrap();
        let b = g
            .add(
                Op::Transpose {
                    perm: vec![0, 2, 3, 1],
                },
                &[a],
                "b",
            )
            .unwrap();
        let c = g
            .add(
                Op::Transpose {
                    perm: vec![0, 2, 3, 1],
                },
                &[b],
                "c",
            )
            .unwrap();
        let d = g
            .add(
                Op::Transpose {
                    perm: vec![3, 2, 1, 0],
                },
                &[c],
                "d",
            )
            .unwrap();
        let y = g.add(Op::Unary(Unary::Relu), &[d], "y").unwrap();
        g.set_output("y", y);
        let h = crate::passes::dce::Dce
            .run(CancelTransposes.run(g.clone()).unwrap())
            .unwrap();
        verify(&h).unwrap();
        let text = print(&h);
        // a∘b cancel; c∘d compose into one transpose of x.
        assert_eq!(text.matches("transpose(").count(), 1, "{text}");
        assert!(
            text.contains("%d: fp32[2,4,3,1] = transpose(%x) perm=[1, 3, 2, 0]"),
            "{text}"
        );
        let inputs = BTreeMap::from([("x".to_string(), random(&[1, 2, 3, 4], 1, 1.0))]);
        assert_eq!(max_diff(&g, &h, &inputs), 0.0);
    }
}
