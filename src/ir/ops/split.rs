//! `split(x) axis=a parts=n index=i`: part `i` of `n` equal parts of `axis`. Unlike `slice`, the
//! size may be symbolic (`H*W` queries become `H*W/8` each) as long as `n` divides it at every
//! size, which is how attention over an enumerated size is chunked. The parts of one value lower
//! to a single MIL `split`, each part's value named after the first node that takes it; a second
//! node for a part already emitted becomes an `identity` (not known to run on the Neural Engine).

use super::attr::Visit;
use super::{arity, Op, Sizes};
use crate::ir::types::TensorType;
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::{MilOp, X};
use crate::mil::values::{arg, name_attr, named, tensor_type};
use crate::mil::LowerError;
use crate::proto::mil_spec as pb;

pub const NAME: &str = "split";

pub const MIL: &[MilOp] = &[
    MilOp::new("split", X).moves_data(),
    MilOp::new("identity", X).off_ane("identity is not known to run on the ANE"),
];

pub fn infer(
    inputs: &[&TensorType],
    axis: &usize,
    parts: &usize,
    index: &usize,
) -> Result<TensorType, String> {
    arity(inputs, 1..=1)?;
    let x = inputs[0];
    let d = x
        .shape
        .get(*axis)
        .ok_or_else(|| format!("axis {axis} out of range for {x}"))?;
    if *index >= *parts {
        return Err(format!("part {index} of {parts} does not exist"));
    }
    let part = d
        .divided(*parts)
        .filter(|p| d.known().is_none() || p.known().is_some())
        .ok_or_else(|| format!("{parts} parts do not divide axis {axis} of {x}"))?;
    let mut shape = x.shape.clone();
    shape[*axis] = part;
    Ok(TensorType::new(x.dtype, shape))
}

pub fn eval(
    args: &[&Array],
    _sizes: &Sizes,
    axis: &usize,
    parts: &usize,
    index: &usize,
) -> Result<Array, String> {
    let x = args[0];
    let part = match x.shape.get(*axis) {
        Some(&n) if *parts > 0 && n % parts == 0 && index < parts => n / parts,
        _ => {
            return Err(format!(
                "{:?} has no part {index} of {parts} along axis {axis}",
                x.shape
            ))
        }
    };
    let mut b = vec![0; x.shape.len()];
    let mut e = x.shape.clone();
    (b[*axis], e[*axis]) = (index * part, (index + 1) * part);
    Ok(kernels::slice(x, &b, &e, &vec![1; x.shape.len()]))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(
    v: &mut impl Visit,
    axis: &mut usize,
    parts: &mut usize,
    index: &mut usize,
) -> Result<(), String> {
    v.attr("axis", axis)?;
    v.attr("parts", parts)?;
    v.attr("index", index)
}

pub fn lower(
    e: &mut Emitter,
    id: ValueId,
    axis: &usize,
    parts: &usize,
    index: &usize,
) -> Result<(), LowerError> {
    let out = e.name(id);
    let key = (e.g.node(id).inputs[0], *axis, *parts);
    if !e.splits.contains_key(&key) {
        split_all(e, id, key)?;
    }
    let part = e.splits[&key][*index].clone();
    if part == out {
        return Ok(());
    }
    // A second node for a part already emitted (no pass merges duplicates).
    e.op(id, "identity", vec![("x", part)])
}

/// One MIL `split` for every part of `key` = (input, axis, parts): each part's value is named
/// after the first node that takes it (parts no node takes get a name of their own), so sibling
/// `Split` nodes share the op.
fn split_all(
    e: &mut Emitter,
    first: ValueId,
    key: (ValueId, usize, usize),
) -> Result<(), LowerError> {
    let g = e.g;
    let (input, axis, parts) = key;
    let base = e.name(first);
    let mut outs: Vec<Option<String>> = vec![None; parts];
    for (id, node) in g.nodes() {
        if let Op::Split {
            axis: a,
            parts: p,
            index,
        } = node.op
        {
            if node.inputs[0] == input && (a, p) == (axis, parts) && outs[index].is_none() {
                outs[index] = Some(e.name(id));
            }
        }
    }
    let outs: Vec<String> = outs
        .into_iter()
        .enumerate()
        .map(|(i, n)| n.unwrap_or_else(|| format!("{base}_unused_part{i}")))
        .collect();
    let n = e.int(&base, "num_splits", parts);
    let a = e.int(&base, "axis", axis);
    e.check_target("split", &g.node(first).name)?;
    // Equal parts: every one has the type of the first.
    let ty = tensor_type(&g.node(first).ty);
    e.ops.push(pb::Operation {
        r#type: "split".into(),
        inputs: [
            ("x".to_string(), arg(&e.name(input))),
            ("num_splits".to_string(), arg(&n)),
            ("axis".to_string(), arg(&a)),
        ]
        .into_iter()
        .collect(),
        outputs: outs.iter().map(|o| named(o, ty.clone())).collect(),
        blocks: vec![],
        attributes: [name_attr(&base)].into_iter().collect(),
    });
    e.splits.insert(key, outs);
    Ok(())
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[1,H*W,4] = input(\"x\")\n  %y: fp32[1,H*W/2,4] = split(%x) axis=1 parts=2 index=1\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
