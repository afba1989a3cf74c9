//! Enumerated-shape specialization.
//!
//! A model built for several sizes has symbolic spatial dimensions (`H`, `W`). Two jobs:
//!
//! - [`CheckSizes`] (a pass) proves that every op is valid for every enumerated size: it binds
//!   the symbols to each size and re-infers every type, so nothing (a reshape, a conv that would
//!   change a symbolic size) can silently hold for one size only. The graph stays symbolic.
//! - [`specialize`] substitutes one size, giving a fully static graph: one function of a
//!   multifunction package.
//!
//! ```text
//! %latent: fp16[1,32,H,W] = input("latent")       %latent: fp16[1,32,96,128] = input("latent")
//! %l1_conv: fp16[1,64,H,W] = conv2d(...)   ==>    %l1_conv: fp16[1,64,96,128] = conv2d(...)
//!                                (H=96, W=128)
//! ```

use super::Pass;
use crate::ir::{Graph, IrError, Op, Rebuilder, TensorType, ValueId};
use std::collections::BTreeMap;

/// Symbol values for one enumerated size, e.g. `{H: 96, W: 128}`.
pub type Bindings = BTreeMap<String, usize>;

fn bind(ty: &TensorType, b: &Bindings) -> Result<TensorType, IrError> {
    let shape = ty
        .shape
        .iter()
        .map(|d| d.bind(b))
        .collect::<Option<_>>()
        .ok_or_else(|| IrError::Type {
            node: String::new(),
            op: "input",
            reason: format!("{ty} is not a whole size at {}", describe(b)),
        })?;
    Ok(TensorType::new(ty.dtype, shape))
}

fn describe(b: &Bindings) -> String {
    b.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The graph with every symbol bound: inputs get concrete types and every op is re-inferred.
pub fn specialize(g: &Graph, b: &Bindings) -> Result<Graph, IrError> {
    let mut r = Rebuilder::new(g.name.clone(), g.len());
    for (id, node) in g.nodes() {
        let mut node = node.clone();
        match node.op {
            Op::Input { .. } | Op::Const(_) => {
                node.ty = bind(&node.ty, b).map_err(|e| named(e, &node.name))?;
                r.copy(id, node);
            }
            _ => {
                let inputs: Vec<ValueId> = node.inputs.iter().map(|&v| r.get(v)).collect();
                let op = bound_op(&node.op, b, &node.name)?;
                let new = r
                    .graph
                    .add(op, &inputs, node.name)
                    .map_err(|e| at_size(e, b))?;
                r.set(id, new);
            }
        }
    }
    Ok(r.finish(g.outputs()))
}

fn named(e: IrError, name: &str) -> IrError {
    match e {
        IrError::Type { op, reason, .. } => IrError::Type {
            node: name.to_string(),
            op,
            reason,
        },
        other => other,
    }
}

/// The op with the sizes in its attributes (a reshape's target) bound.
fn bound_op(op: &Op, b: &Bindings, name: &str) -> Result<Op, IrError> {
    op.bind_sizes(b).ok_or_else(|| IrError::Type {
        node: name.to_string(),
        op: op.name(),
        reason: format!("a size in its attributes is not whole at {}", describe(b)),
    })
}

fn at_size(e: IrError, b: &Bindings) -> IrError {
    match e {
        IrError::Type { node, op, reason } => IrError::Type {
            node,
            op,
            reason: format!("{reason} (at {})", describe(b)),
        },
        other => other,
    }
}

/// [`specialize`] as a pass: the graph of one function of a multifunction package.
pub struct Specialize {
    pub sizes: Bindings,
    /// The function it becomes, for dumps and messages.
    pub function: String,
}

impl Pass for Specialize {
    fn name(&self) -> &'static str {
        "specialize_shapes"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        specialize(&g, &self.sizes)
    }
}

/// Checks every op for every size in `sizes`; the graph passes through unchanged.
pub struct CheckSizes {
    pub sizes: Vec<Bindings>,
}

impl Pass for CheckSizes {
    fn name(&self) -> &'static str {
        "check_sizes"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        for b in &self.sizes {
            // Types only: no graph (and no weight) is copied per size.
            let mut types: Vec<TensorType> = Vec::with_capacity(g.len());
            for (_, node) in g.nodes() {
                let ty = match &node.op {
                    Op::Input { .. } | Op::Const(_) => {
                        bind(&node.ty, b).map_err(|e| named(e, &node.name))?
                    }
                    op => {
                        let ins: Vec<&TensorType> =
                            node.inputs.iter().map(|v| &types[v.index()]).collect();
                        let op = bound_op(op, b, &node.name)?;
                        op.infer(&ins).map_err(|reason| {
                            at_size(
                                IrError::Type {
                                    node: node.name.clone(),
                                    op: op.name(),
                                    reason,
                                },
                                b,
                            )
                        })?
                    }
                };
                types.push(ty);
            }
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Dim;
    use crate::ir::{print::print, verify::verify, Conv2d};
    use crate::passes::testing::random;
    use crate::tensor::{DType, Tensor};

    fn sym_graph() -> Graph {
        let mut g = Graph::new("t");
        let x = g.input(
            "x",
            TensorType::new(
                DType::F32,
                vec![Dim::Known(1), Dim::Known(2), Dim::sym("H"), Dim::sym("W")],
            ),
        );
        let w = random(&[3, 2, 3, 3], 1, 0.5);
        let w = g.constant("w", Tensor::f32(w.shape, w.data));
        let y = g.add(Op::Conv2d(Conv2d::same(3)), &[x, w], "conv").unwrap();
        let y = g.add(Op::Upsample { scale: 2 }, &[y], "up").unwrap();
        g.set_output("y", y);
        g
    }

    #[test]
    fn specializes_to_static_types() {
        let b = Bindings::from([("H".into(), 5), ("W".into(), 7)]);
        let s = specialize(&sym_graph(), &b).unwrap();
        verify(&s).unwrap();
        let text = print(&s);
        assert!(
            text.contains("%up: fp32[1,3,10,14] = upsample(%conv)"),
            "{text}"
        );
        assert!(!text.contains('H'), "{text}");
    }

    #[test]
    fn check_names_the_op_and_size_that_fails() {
        let ok = Bindings::from([("H".into(), 8), ("W".into(), 8)]);
        let g = CheckSizes {
            sizes: vec![ok.clone()],
        }
        .run(sym_graph())
        .unwrap();
        assert_eq!(g, sym_graph(), "the check changes nothing");
        // A zero width is smaller than the 3x3 kernel.
        let bad = Bindings::from([("H".into(), 8), ("W".into(), 0)]);
        let e = CheckSizes {
            sizes: vec![ok, bad],
        }
        .run(sym_graph())
        .unwrap_err()
        .to_string();
        assert!(e.contains("conv") && e.contains("H=8, W=0"), "{e}");
    }
}
