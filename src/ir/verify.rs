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
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        count => Err(IrError::Many {
            count,
            first: Box::new(errors.remove(0)),
        }),
    }
}
