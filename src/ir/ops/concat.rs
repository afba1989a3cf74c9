//! `concat(x0, x1, ..) axis=a`: the inputs joined along `axis`. Equal symbolic parts (the
//! chunks of attention over an enumerated size) add up to their count times one of them; MIL's
//! `concat` with `interleave=false`.

use super::attr::Visit;
use super::Sizes;
use crate::ir::types::{Dim, TensorType};
use crate::ir::ValueId;
use crate::kernels::{self, Array};
use crate::mil::emit::Emitter;
use crate::mil::ops::MilOp;
use crate::mil::values::{arg, args, name_attr, named, tensor_type};
use crate::mil::LowerError;
use crate::proto::mil_spec as pb;

pub const NAME: &str = "concat";

pub const MIL: &[MilOp] = &[MilOp::new("concat", &["values"]).moves_data()];

pub fn infer(inputs: &[&TensorType], axis: &usize) -> Result<TensorType, String> {
    if inputs.is_empty() {
        return Err("takes at least one input".into());
    }
    let x = inputs[0];
    if *axis >= x.rank() {
        return Err(format!("axis {axis} out of range for {x}"));
    }
    for t in inputs {
        let same = t.rank() == x.rank()
            && t.dtype == x.dtype
            && (0..x.rank()).all(|a| a == *axis || t.shape[a] == x.shape[a]);
        if !same {
            return Err(format!("{t} does not join {x} along axis {axis}"));
        }
    }
    let sizes: Option<Vec<usize>> = inputs.iter().map(|t| t.shape[*axis].known()).collect();
    let d = &x.shape[*axis];
    let total = match sizes {
        Some(n) => Dim::Known(n.iter().sum()),
        // Equal symbolic parts (attention chunks of an enumerated size) add up to
        // their count times one of them; unequal ones have no monomial sum.
        None if inputs.iter().all(|t| &t.shape[*axis] == d) => d.scaled(inputs.len()),
        None => {
            return Err(format!(
                "axis {axis} sizes are not all known and not all equal: cannot add them"
            ))
        }
    };
    let mut shape = x.shape.clone();
    shape[*axis] = total;
    Ok(TensorType::new(x.dtype, shape))
}

pub fn eval(args: &[&Array], _sizes: &Sizes, axis: &usize) -> Result<Array, String> {
    kernels::concat(args, *axis).ok_or_else(|| format!("inputs do not join along axis {axis}"))
}

/// The attributes, in printed order: the one declaration the printer and the parser share.
pub fn attrs(v: &mut impl Visit, axis: &mut usize) -> Result<(), String> {
    v.attr("axis", axis)
}

pub fn lower(e: &mut Emitter, id: ValueId, axis: &usize) -> Result<(), LowerError> {
    let out = e.name(id);
    let a = e.int(&out, "axis", *axis);
    let i = e.flag(&out, "interleave", false);
    let values: Vec<String> = (0..e.g.node(id).inputs.len())
        .map(|k| e.input(id, k))
        .collect();
    let node = e.g.node(id);
    e.check_target("concat", &node.name)?;
    e.ops.push(pb::Operation {
        r#type: "concat".into(),
        inputs: [
            ("values".to_string(), args(&values)),
            ("axis".to_string(), arg(&a)),
            ("interleave".to_string(), arg(&i)),
        ]
        .into_iter()
        .collect(),
        outputs: vec![named(&out, tensor_type(&node.ty))],
        blocks: vec![],
        attributes: [name_attr(&out)].into_iter().collect(),
    });
    Ok(())
}

#[cfg(test)]
pub fn examples() -> Vec<String> {
    [
        "graph t {\n  %x: fp32[1,2,H] = input(\"x\")\n  %y: fp32[1,4,H] = concat(%x, %x) axis=1\n  return y=%y\n}\n",
    ]
    .map(String::from)
    .to_vec()
}
