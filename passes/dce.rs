//! Dead-code removal: drops every node that no graph output depends on. Inputs always stay (they
//! are the model's interface).
//!
//! ```text
//! %a = const(...)            %b = relu(%x)
//! %b = relu(%x)        ==>   return y=%b
//! return y=%b
//! ```

use super::Pass;
use crate::ir::{Graph, IrError, Op, Rebuilder};

pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        let mut live = vec![false; g.len()];
        for (_, v) in g.outputs() {
            live[v.index()] = true;
        }
        // Arena order is topological, so one backward sweep finds every live node.
        for (id, node) in g.nodes().collect::<Vec<_>>().into_iter().rev() {
            if live[id.index()] || matches!(node.op, Op::Input { .. }) {
                live[id.index()] = true;
                for v in &node.inputs {
                    live[v.index()] = true;
                }
            }
        }
        let (name, nodes, outputs) = g.into_parts();
        let mut r = Rebuilder::new(name, nodes.len());
        for (i, node) in nodes.into_iter().enumerate() {
            if live[i] {
                r.copy(crate::ir::ValueId(i as u32), node);
            }
        }
        Ok(r.finish(&outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{print::print, TensorType};
    use crate::ir::{Binary, Unary};
    use crate::tensor::{DType, Tensor};

    #[test]
    fn removes_unused_nodes_and_keeps_inputs() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[2]));
        let _unused_in = g.input("y", TensorType::known(DType::F32, &[2]));
        let c = g.constant("c", Tensor::f32(vec![2], vec![1.0, 2.0]));
        let dead = g.add(Op::Binary(Binary::Add), &[x, c], "dead").unwrap();
        let _deader = g.add(Op::Unary(Unary::Relu), &[dead], "deader").unwrap();
        let r = g.add(Op::Unary(Unary::Relu), &[x], "r").unwrap();
        g.set_output("out", r);
        let out = Dce.run(g).unwrap();
        crate::ir::verify::verify(&out).unwrap();
        let text = print(&out);
        assert!(!text.contains("dead") && !text.contains("%c:"), "{text}");
        assert!(text.contains("%y: fp32[2] = input"), "{text}");
        assert_eq!(out.len(), 3);
    }
}
