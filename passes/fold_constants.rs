//! Constant folding.
//!
//! 1. An op whose inputs are all constants becomes a constant (computed by the reference
//!    evaluator, stored in the op's dtype): the reshaped group-norm gamma/beta, for instance.
//! 2. Division by a constant becomes multiplication by its reciprocal: the soft clamp
//!    `tanh(x / 3) * 3` then costs two multiplies, which the Neural Engine prefers to a divide.
//!
//! ```text
//! %three = const(3.0)                       %three = const(3.0)
//! %d = div(%x, %three)               ==>    %d_recip = const(0.33333334)
//! %t = tanh(%d)                             %d = mul(%x, %d_recip)
//! %y = mul(%t, %three)                      %t = tanh(%d)
//!                                           %y = mul(%t, %three)
//! ```

use super::Pass;
use crate::ir::{eval::eval_op, Binary, ConstData, Graph, IrError, Node, Op, Rebuilder, ValueId};
use crate::kernels::Array;
use crate::tensor::Tensor;

pub struct FoldConstants;

impl Pass for FoldConstants {
    fn name(&self) -> &'static str {
        "fold_constants"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        let (name, mut nodes, outputs) = g.into_parts();
        // A spilled weight that an op folds (all its inputs constant, or the divisor of a
        // division) is read back for it; the others stay spilled.
        let is_const = |n: &Node| matches!(n.op, Op::Const(_));
        let mut folded = vec![false; nodes.len()];
        for n in &nodes {
            let ins = &n.inputs;
            let all = !is_const(n) && ins.iter().all(|v| is_const(&nodes[v.index()]));
            for (k, v) in ins.iter().enumerate() {
                let divisor = k == 1 && matches!(n.op, Op::Binary(Binary::Div));
                folded[v.index()] |= all || (divisor && is_const(&nodes[v.index()]));
            }
        }
        super::read_back(&mut nodes, |i| folded[i])?;
        let mut r = Rebuilder::new(name, nodes.len());
        for (i, node) in nodes.into_iter().enumerate() {
            let old = ValueId(i as u32);
            let inputs: Vec<ValueId> = node.inputs.iter().map(|&v| r.get(v)).collect();
            let consts: Option<Vec<&Tensor>> =
                inputs.iter().map(|&v| as_const(&r.graph, v)).collect();
            match (&node.op, consts) {
                (Op::Input { .. } | Op::Const(_), _) => {
                    r.copy(old, node);
                }
                (op, Some(consts)) => {
                    let arrays: Vec<Array> = consts
                        .iter()
                        .map(|t| Array::new(t.shape.clone(), t.to_f32()))
                        .collect();
                    let refs: Vec<&Array> = arrays.iter().collect();
                    let v = eval_op(op, &refs).map_err(|reason| IrError::Eval {
                        node: node.name.clone(),
                        reason,
                    })?;
                    let t = Tensor::f32(v.shape, v.data).cast(node.ty.dtype);
                    let new = r.graph.constant(node.name, t);
                    r.set(old, new);
                }
                (Op::Binary(Binary::Div), None) if as_const(&r.graph, inputs[1]).is_some() => {
                    let divisor = as_const(&r.graph, inputs[1]).expect("checked");
                    let recip: Vec<f32> = divisor.to_f32().iter().map(|d| 1.0 / d).collect();
                    // In the constant's type (an f16-stored fp32 constant stays fp32).
                    let dtype = r.graph.ty(inputs[1]).dtype;
                    let t = Tensor::f32(divisor.shape.clone(), recip).cast(dtype);
                    let c = r.graph.constant(format!("{}_recip", node.name), t);
                    let new = r
                        .graph
                        .add(Op::Binary(Binary::Mul), &[inputs[0], c], node.name)?;
                    r.set(old, new);
                }
                _ => {
                    r.copy(
                        old,
                        Node {
                            inputs: node.inputs.clone(),
                            ..node
                        },
                    );
                }
            }
        }
        Ok(r.finish(&outputs))
    }
}

fn as_const(g: &Graph, v: ValueId) -> Option<&Tensor> {
    match &g.node(v).op {
        // Read as f32 values, which an f16-stored constant gives exactly.
        Op::Const(ConstData::Dense(t) | ConstData::Half(t)) => Some(t),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{known_dims, Unary};
    use crate::ir::{print::print, verify::verify, TensorType};
    use crate::passes::testing::{max_diff, random};
    use crate::tensor::DType;
    use std::collections::BTreeMap;

    #[test]
    fn soft_clamp_div_becomes_mul_and_constant_subgraphs_fold() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 4, 3, 3]));
        let three = g.constant("three", Tensor::scalar(3.0));
        let d = g.add(Op::Binary(Binary::Div), &[x, three], "div").unwrap();
        let t = g.add(Op::Unary(Unary::Tanh), &[d], "tanh").unwrap();
        let y = g
            .add(Op::Binary(Binary::Mul), &[t, three], "clamp")
            .unwrap();
        let gamma = g.constant("gamma", Tensor::f32(vec![4], vec![1.0, 2.0, 3.0, 4.0]));
        let g4 = g
            .add(
                Op::Reshape {
                    shape: known_dims(&[1, 4, 1, 1]),
                },
                &[gamma],
                "gamma4",
            )
            .unwrap();
        let out = g.add(Op::Binary(Binary::Mul), &[y, g4], "out").unwrap();
        g.set_output("y", out);

        let folded = FoldConstants.run(g.clone()).unwrap();
        verify(&folded).unwrap();
        let text = print(&folded);
        assert!(!text.contains("div("), "{text}");
        assert!(
            text.contains("%div: fp32[1,4,3,3] = mul(%x, %div_recip)"),
            "{text}"
        );
        assert!(
            text.contains("%gamma4: fp32[1,4,1,1] = const([1.0, 2.0, 3.0, 4.0])"),
            "{text}"
        );
        let inputs = BTreeMap::from([("x".to_string(), random(&[1, 4, 3, 3], 1, 10.0))]);
        assert!(max_diff(&g, &folded, &inputs) < 1e-6);
    }
}
