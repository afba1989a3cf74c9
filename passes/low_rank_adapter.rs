//! One switchable adapter as a graph form: beside each adapted layer's shared base weight, the
//! adapter's low-rank pair as two small layers whose output is added to the layer's
//! (`W·x + s·B(A·x)`), so every function of an adapter package shares the base weights (the
//! blob writer stores identical constants once). A linear layer (matmul by a transposed
//! constant) gets two matmuls; a convolution (1x1, LoCon's 3x3, a linear as a 1x1 conv) gets
//! A as a convolution with the layer's own strides and padding, then B as a 1x1. Adapters
//! with no low-rank form (LoHa, LoKr) replace the weight with a fused copy in this function.

use std::collections::{BTreeMap, BTreeSet};

use crate::ir::{Binary, ConstData, Conv2d, Graph, IrError, Op, Rebuilder, ValueId};
use crate::tensor::Tensor;

/// What the adapter adds to one weight constant (by node name).
#[derive(Clone, Debug)]
pub enum Branch {
    /// A [r, in, (kh, kw)] and B [out, r, (1, 1)], f32, B already times the adapter's scale.
    LowRank { down: Tensor, up: Tensor },
    /// The scaled delta of the whole weight, f32, in the weight's shape.
    Full(Tensor),
}

#[derive(Clone)]
pub struct LowRankAdapter {
    /// Weight constant node name → its branch.
    pub branches: BTreeMap<String, Branch>,
}

impl super::Pass for LowRankAdapter {
    fn name(&self) -> &'static str {
        "low_rank_adapter"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        let mut r = Rebuilder::new(g.name.clone(), g.len());
        let mut used = BTreeSet::new();
        let weight_of = |v: ValueId| -> Option<(&str, &Branch)> {
            let n = g.node(v);
            matches!(n.op, Op::Const(_)).then_some(())?;
            self.branches.get(&n.name).map(|b| (n.name.as_str(), b))
        };
        for (id, node) in g.nodes() {
            if let (Op::Const(c), Some(Branch::Full(delta))) =
                (&node.op, self.branches.get(&node.name))
            {
                let base = match c {
                    ConstData::Dense(_) | ConstData::Half(_) | ConstData::Spilled { .. } => c
                        .dense()
                        .map_err(|reason| fail(&node.name, &reason))?
                        .to_f32(),
                    _ => return Err(fail(&node.name, "the base weight is already compressed")),
                };
                if delta.shape != node.ty.known_shape().unwrap_or_default() {
                    return Err(fail(&node.name, "the delta's shape is not the weight's"));
                }
                let fused: Vec<f32> = base
                    .iter()
                    .zip(delta.to_f32())
                    .map(|(w, d)| w + d)
                    .collect();
                let new = r
                    .graph
                    .weight(node.name.clone(), Tensor::f32(delta.shape.clone(), fused));
                r.set(id, new);
                used.insert(node.name.clone());
                continue;
            }
            let y = r.copy(id, node.clone());
            let Some(&w) = node.inputs.get(1) else {
                continue;
            };
            let Some((wname, Branch::LowRank { down, up })) = weight_of(w) else {
                continue;
            };
            let x = r.get(node.inputs[0]);
            let rank = up.shape[1];
            let name = |what: &str| format!("{wname}_adapter_{what}");
            let branch = match &node.op {
                Op::MatMul {
                    transpose_x: false,
                    transpose_y: true,
                } => {
                    let inner = down.len() / rank;
                    let matmul = Op::MatMul {
                        transpose_x: false,
                        transpose_y: true,
                    };
                    let a = r
                        .graph
                        .weight(name("down"), down.reshaped(vec![rank, inner]));
                    let t = r.graph.add(matmul.clone(), &[x, a], name("a"))?;
                    let b = r
                        .graph
                        .weight(name("up"), up.reshaped(vec![up.shape[0], rank]));
                    r.graph.add(matmul, &[t, b], name("b"))?
                }
                Op::Conv2d(conv) if conv.groups == 1 => {
                    let shape = g
                        .ty(w)
                        .known_shape()
                        .ok_or_else(|| fail(wname, "the weight's shape is not known"))?;
                    let [_, cin, kh, kw] = shape[..] else {
                        return Err(fail(wname, "a convolution weight of rank 4 was expected"));
                    };
                    if down.len() != rank * cin * kh * kw {
                        return Err(fail(
                            wname,
                            "the adapter's down projection does not fit the kernel",
                        ));
                    }
                    let a = r
                        .graph
                        .weight(name("down"), down.reshaped(vec![rank, cin, kh, kw]));
                    let t = r.graph.add(Op::Conv2d(conv.clone()), &[x, a], name("a"))?;
                    let b = r
                        .graph
                        .weight(name("up"), up.reshaped(vec![up.shape[0], rank, 1, 1]));
                    r.graph
                        .add(Op::Conv2d(Conv2d::same(1)), &[t, b], name("b"))?
                }
                _ => {
                    return Err(fail(
                        wname,
                        &format!("consumed by {}, which takes no adapter", node.op.name()),
                    ))
                }
            };
            let sum = r
                .graph
                .add(Op::Binary(Binary::Add), &[y, branch], name("sum"))?;
            r.set(id, sum);
            used.insert(wname.to_string());
        }
        if let Some(missing) = self.branches.keys().find(|k| !used.contains(*k)) {
            return Err(fail(missing, "no layer of the graph uses this weight"));
        }
        Ok(r.finish(g.outputs()))
    }
}

fn fail(node: &str, reason: &str) -> IrError {
    IrError::Type {
        node: node.to_string(),
        op: "low_rank_adapter",
        reason: reason.to_string(),
    }
}
