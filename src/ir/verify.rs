//! The verifier: checks every invariant listed in [`super`] and reports all violations at once
//! (the first one in full, with a count), so a broken pass shows everything it broke.

use super::{Graph, IrError, Op};
use std::collections::HashSet;

/// Checks:
/// 1. every op input refers to an earlier node (defs before uses, hence acyclic);
/// 2. every non-input node's stored type equals the type its op infers now;
/// 3. node names are non-empty and unique;
/// 4. graph outputs exist and refer to valid values; every `Input` node is a graph input.
pub fn verify(g: &Graph) -> Result<(), IrError> {
    let mut errors = violations(g);
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        count => Err(IrError::Many {
            count,
            first: Box::new(errors.remove(0)),
        }),
    }
}

/// Every violation of [`verify`]'s invariants, in node order (outputs last).
pub fn violations(g: &Graph) -> Vec<IrError> {
    let mut errors = Vec::new();
    let mut names = HashSet::new();
    for (id, node) in g.nodes() {
        if node.name.is_empty() || !names.insert(node.name.as_str()) {
            errors.push(IrError::DuplicateName(node.name.clone()));
        }
        if let Some(&bad) = node.inputs.iter().find(|v| v.index() >= id.index()) {
            errors.push(IrError::Dangling {
                node: node.name.clone(),
                value: bad,
            });
            continue;
        }
        match &node.op {
            Op::Input { .. } => {
                if !g.inputs().contains(&id) {
                    errors.push(IrError::Type {
                        node: node.name.clone(),
                        op: "input",
                        reason: "not a graph input".into(),
                    });
                }
            }
            op => {
                let types: Vec<_> = node.inputs.iter().map(|&v| g.ty(v)).collect();
                match op.infer(&types) {
                    Ok(t) if t == node.ty => {}
                    Ok(t) => errors.push(IrError::StaleType {
                        node: node.name.clone(),
                        stored: node.ty.clone(),
                        inferred: t,
                    }),
                    Err(reason) => errors.push(IrError::Type {
                        node: node.name.clone(),
                        op: op.name(),
                        reason,
                    }),
                }
            }
        }
    }
    if g.outputs().is_empty() {
        errors.push(IrError::NoOutputs);
    }
    for (name, v) in g.outputs() {
        if v.index() >= g.len() {
            errors.push(IrError::BadOutput {
                name: name.clone(),
                value: *v,
            });
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Binary, Node, TensorType, Unary, ValueId};
    use crate::tensor::DType;

    fn ty(n: usize) -> TensorType {
        TensorType::known(DType::F32, &[n])
    }

    fn relu(input: u32, t: TensorType, name: &str) -> Node {
        Node {
            op: Op::Unary(Unary::Relu),
            inputs: vec![ValueId(input)],
            ty: t,
            name: name.into(),
        }
    }

    fn good() -> Graph {
        let mut g = Graph::new("t");
        let x = g.input("x", ty(3));
        let y = g.add(Op::Unary(Unary::Relu), &[x], "y").unwrap();
        g.set_output("y", y);
        g
    }

    #[test]
    fn a_good_graph_has_no_violations() {
        assert_eq!(violations(&good()), vec![]);
        verify(&good()).unwrap();
    }

    #[test]
    fn each_broken_invariant_is_named() {
        let cases: Vec<(&str, Graph, IrError)> = vec![
            (
                "dangling",
                {
                    let mut g = good();
                    g.push(relu(7, ty(3), "z"));
                    g
                },
                IrError::Dangling {
                    node: "z".into(),
                    value: ValueId(7),
                },
            ),
            (
                "self-use",
                {
                    let mut g = good();
                    g.push(relu(2, ty(3), "z"));
                    g
                },
                IrError::Dangling {
                    node: "z".into(),
                    value: ValueId(2),
                },
            ),
            (
                "stale",
                {
                    let mut g = good();
                    g.push(relu(0, ty(4), "z"));
                    g
                },
                IrError::StaleType {
                    node: "z".into(),
                    stored: ty(4),
                    inferred: ty(3),
                },
            ),
            (
                "duplicate",
                {
                    let mut g = good();
                    g.push(relu(0, ty(3), "y"));
                    g
                },
                IrError::DuplicateName("y".into()),
            ),
            (
                "empty name",
                {
                    let mut g = good();
                    g.push(relu(0, ty(3), ""));
                    g
                },
                IrError::DuplicateName(String::new()),
            ),
            (
                "bad output",
                {
                    let mut g = good();
                    g.set_output("w", ValueId(40));
                    g
                },
                IrError::BadOutput {
                    name: "w".into(),
                    value: ValueId(40),
                },
            ),
            (
                "no outputs",
                {
                    let (name, nodes, _) = good().into_parts();
                    Graph::from_parts(name, nodes, vec![])
                },
                IrError::NoOutputs,
            ),
            (
                "unregistered input",
                {
                    let mut g = good();
                    g.inputs_mut().clear();
                    g
                },
                IrError::Type {
                    node: "x".into(),
                    op: "input",
                    reason: "not a graph input".into(),
                },
            ),
        ];
        for (what, g, want) in cases {
            assert_eq!(violations(&g), vec![want.clone()], "{what}");
            assert_eq!(verify(&g), Err(want), "{what}");
        }
    }

    #[test]
    fn every_violation_of_a_broken_graph_is_reported() {
        let mut g = good();
        g.push(relu(9, ty(3), "dangles"));
        g.push(relu(0, ty(5), "stale"));
        g.push(relu(0, ty(3), "y"));
        // An op whose inputs no longer fit: adding an fp32[3] to an fp32[2].
        let c = g.constant("c", crate::tensor::Tensor::f32(vec![2], vec![1.0, 2.0]));
        g.push(Node {
            op: Op::Binary(Binary::Add),
            inputs: vec![ValueId(0), c],
            ty: ty(3),
            name: "mismatch".into(),
        });
        g.set_output("bad", ValueId(99));
        g.inputs_mut().clear();
        let all = violations(&g);
        let names: Vec<String> = all
            .iter()
            .map(|e| match e {
                IrError::Dangling { node, .. } => format!("dangling {node}"),
                IrError::StaleType { node, .. } => format!("stale {node}"),
                IrError::DuplicateName(n) => format!("duplicate {n}"),
                IrError::BadOutput { name, .. } => format!("output {name}"),
                IrError::Type { node, op, .. } => format!("type {node} {op}"),
                other => format!("{other}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "type x input",
                "dangling dangles",
                "stale stale",
                "duplicate y",
                "type mismatch add",
                "output bad"
            ],
            "{all:?}"
        );
        match verify(&g) {
            Err(IrError::Many { count, first }) => {
                assert_eq!(count, 6);
                assert_eq!(*first, all[0]);
            }
            other => panic!("expected all six problems, got {other:?}"),
        }
    }
}
