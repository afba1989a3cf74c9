//! Group-norm lowering: Core ML has no `group_norm` op, so it becomes primitives.
//!
//! The statistics are reduced per channel over H and W first, and only those tiny `[N,C,1,1]`
//! tensors are regrouped. Nothing of spatial size is ever reshaped, so the lowering is valid for
//! every enumerated input size (coremltools' lowering reshapes x to `[N,G,C/G,H,W]`, baking H and
//! W, and needs shape/slice/concat ops for flexible inputs), and everything stays rank 4 for the
//! Neural Engine. It is two-pass (centre, then variance) for fp16 accuracy.
//!
//! ```text
//!                                    %m   = group_mean(reduce_mean(%x, [2,3]))   [N,C,1,1]
//!                                    %d   = sub(%x, %m)
//! %y = group_norm(%x, %g, %b)  ==>   %v   = group_mean(reduce_mean(mul(%d, %d), [2,3]))
//!                                    %s   = mul(rsqrt(%v, eps), reshape(%g, [1,C,1,1]))
//!                                    %y   = add(mul(%d, %s), reshape(%b, [1,C,1,1]))
//! ```
//! where `group_mean(t) = reshape(tile(reduce_mean(reshape(t, [N,G,C/G,1]), [2]), [1,1,C/G,1]), [N,C,1,1])`
//! spreads each group's mean back over its channels (all groups hold C/G channels of H×W values,
//! so the mean of channel means is the group mean).

use super::Pass;
use crate::ir::{known_dims, Binary, Dim, Graph, IrError, Op, Rebuilder, ValueId};

pub struct LowerGroupNorm;

impl Pass for LowerGroupNorm {
    fn name(&self) -> &'static str {
        "lower_group_norm"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        let (name, nodes, outputs) = g.into_parts();
        let mut r = Rebuilder::new(name, nodes.len());
        for (i, node) in nodes.into_iter().enumerate() {
            let old = ValueId(i as u32);
            let Op::GroupNorm { groups, epsilon } = node.op else {
                r.copy(old, node);
                continue;
            };
            let [x, gamma, beta] = [0, 1, 2].map(|k| r.get(node.inputs[k]));
            let (n, c) = match (&node.ty.shape[0], &node.ty.shape[1]) {
                (Dim::Known(n), Dim::Known(c)) => (*n, *c),
                _ => {
                    return Err(IrError::Type {
                        node: node.name,
                        op: "group_norm",
                        reason: "batch and channels must be known".into(),
                    })
                }
            };
            let mut e = Emitter {
                g: &mut r.graph,
                prefix: &node.name,
            };
            let mc = e.op(
                Op::ReduceMean {
                    axes: vec![2, 3],
                    keep_dims: true,
                },
                &[x],
                "mean_hw",
            )?;
            let mean = e.group_mean(mc, n, c, groups, "mean")?;
            let d = e.op(Op::Binary(Binary::Sub), &[x, mean], "centered")?;
            let sq = e.op(Op::Binary(Binary::Mul), &[d, d], "squared")?;
            let vc = e.op(
                Op::ReduceMean {
                    axes: vec![2, 3],
                    keep_dims: true,
                },
                &[sq],
                "var_hw",
            )?;
            let var = e.group_mean(vc, n, c, groups, "var")?;
            let inv = e.op(Op::Rsqrt { epsilon }, &[var], "inv_std")?;
            let gamma = e.op(
                Op::Reshape {
                    shape: known_dims(&[1, c, 1, 1]),
                },
                &[gamma],
                "gamma",
            )?;
            let beta = e.op(
                Op::Reshape {
                    shape: known_dims(&[1, c, 1, 1]),
                },
                &[beta],
                "beta",
            )?;
            let scale = e.op(Op::Binary(Binary::Mul), &[inv, gamma], "scale")?;
            let y = e.op(Op::Binary(Binary::Mul), &[d, scale], "scaled")?;
            let y = r
                .graph
                .add(Op::Binary(Binary::Add), &[y, beta], node.name)?;
            r.set(old, y);
        }
        Ok(r.finish(&outputs))
    }
}

/// Adds the lowering's nodes under names derived from the group norm's own.
struct Emitter<'a> {
    g: &'a mut Graph,
    prefix: &'a str,
}

impl Emitter<'_> {
    fn op(&mut self, op: Op, args: &[ValueId], suffix: &str) -> Result<ValueId, IrError> {
        self.g.add(op, args, format!("{}_{suffix}", self.prefix))
    }

    /// `[N,C,1,1]` per-channel values → each group's mean, spread back over its channels.
    fn group_mean(
        &mut self,
        t: ValueId,
        n: usize,
        c: usize,
        groups: usize,
        tag: &str,
    ) -> Result<ValueId, IrError> {
        let cg = c / groups;
        let t = self.op(
            Op::Reshape {
                shape: known_dims(&[n, groups, cg, 1]),
            },
            &[t],
            &format!("{tag}_grouped"),
        )?;
        let t = self.op(
            Op::ReduceMean {
                axes: vec![2],
                keep_dims: true,
            },
            &[t],
            &format!("{tag}_group"),
        )?;
        let t = self.op(
            Op::Tile {
                reps: vec![1, 1, cg, 1],
            },
            &[t],
            &format!("{tag}_spread"),
        )?;
        self.op(
            Op::Reshape {
                shape: known_dims(&[n, c, 1, 1]),
            },
            &[t],
            &format!("{tag}_per_channel"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{print::print, verify::verify, TensorType};
    use crate::passes::testing::{max_diff, random};
    use crate::tensor::{DType, Tensor};
    use std::collections::BTreeMap;

    fn gn_graph(h: Dim, w: Dim) -> Graph {
        let mut g = Graph::new("t");
        let x = g.input(
            "x",
            TensorType::new(DType::F32, vec![Dim::Known(1), Dim::Known(8), h, w]),
        );
        let gamma = random(&[8], 5, 2.0);
        let beta = random(&[8], 6, 1.0);
        let gamma = g.constant("gamma", Tensor::f32(gamma.shape, gamma.data));
        let beta = g.constant("beta", Tensor::f32(beta.shape, beta.data));
        let y = g
            .add(
                Op::GroupNorm {
                    groups: 4,
                    epsilon: 1e-5,
                },
                &[x, gamma, beta],
                "gn",
            )
            .unwrap();
        g.set_output("y", y);
        g
    }

    #[test]
    fn matches_direct_group_norm() {
        let g = gn_graph(Dim::Known(5), Dim::Known(7));
        let lowered = LowerGroupNorm.run(g.clone()).unwrap();
        verify(&lowered).unwrap();
        assert!(!print(&lowered).contains("group_norm("));
        // Offset input: a one-pass variance formula would lose digits here.
        let mut x = random(&[1, 8, 5, 7], 9, 3.0);
        x.data.iter_mut().for_each(|v| *v += 20.0);
        let inputs = BTreeMap::from([("x".to_string(), x)]);
        let d = max_diff(&g, &lowered, &inputs);
        assert!(d < 1e-4, "{d}");
    }

    #[test]
    fn symbolic_spatial_sizes_stay_symbolic() {
        let lowered = LowerGroupNorm
            .run(gn_graph(Dim::sym("H"), Dim::sym("W")))
            .unwrap();
        verify(&lowered).unwrap();
        let text = print(&lowered);
        // Every reshape acts on a [N,C,1,1]-sized tensor, never on H or W.
        for line in text.lines().filter(|l| l.contains("reshape(")) {
            assert!(!line.contains('H') && !line.contains('W'), "{line}");
        }
        assert!(text.contains("%gn: fp32[1,8,H,W] = add("), "{text}");
    }
}
