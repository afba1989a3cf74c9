//! The IR's textual form, one node per line, for pass tests and `--dump-passes`:
//!
//! ```text
//! graph taesd_decoder {
//!   %latent: fp32[1,4,8,8] = input("latent")
//!   %clamp_div_y: fp32[] = const(3.0)
//!   %clamp_div: fp32[1,4,8,8] = div(%latent, %clamp_div_y)
//!   ...
//!   return image=%l19_conv
//! }
//! ```
//! Constants of more than eight elements print as a summary, not their data.

use super::{ConstData, Graph, Op};
use crate::tensor::TensorData;
use std::fmt::Write;

pub fn print(g: &Graph) -> String {
    let mut s = format!("graph {} {{\n", g.name);
    for (_, node) in g.nodes() {
        let args: Vec<String> = node
            .inputs
            .iter()
            .map(|&v| format!("%{}", g.node(v).name))
            .collect();
        let body = match &node.op {
            Op::Input { name } => format!("input({name:?})"),
            Op::Const(c) => format!("const({})", const_summary(c)),
            op => {
                let attrs = op.attr_text();
                let sep = if attrs.is_empty() { "" } else { " " };
                format!("{}({}){sep}{attrs}", op.name(), args.join(", "))
            }
        };
        let _ = writeln!(s, "  %{}: {} = {body}", node.name, node.ty);
    }
    let outs: Vec<String> = g
        .outputs()
        .iter()
        .map(|(n, v)| format!("{n}=%{}", g.node(*v).name))
        .collect();
    let _ = writeln!(s, "  return {}\n}}", outs.join(", "));
    s
}

fn const_summary(c: &ConstData) -> String {
    let read;
    let t = match c {
        ConstData::Dense(t) | ConstData::Half(t) => t,
        // Printed as the dense constant it stands for (spilling changes no text); the few values
        // a short one prints are read back.
        ConstData::Spilled { data, .. } if data.len() > 8 => {
            return format!("dense, {} elements", data.len())
        }
        ConstData::Spilled { .. } => match c.in_memory() {
            Ok(std::borrow::Cow::Owned(ConstData::Dense(t) | ConstData::Half(t))) => {
                read = t;
                &read
            }
            _ => return "spilled, unreadable".into(),
        },
        ConstData::Palettized(p) => {
            return format!(
                "palettized, {}-bit, {} table(s) of {}",
                p.bits,
                p.shape[0] / p.group_size,
                p.lut.dtype()
            )
        }
        ConstData::Quantized(q) => {
            let kind = match q.q.data {
                crate::compress::quantize::QuantData::Symmetric(_) => "int8",
                crate::compress::quantize::QuantData::Affine { .. } => "uint8",
            };
            return format!("{kind}, scales {:?} of {}", q.q.scale_shape, q.dtype);
        }
    };
    if t.len() > 8 {
        return format!("dense, {} elements", t.len());
    }
    let vals: Vec<String> = match &t.data {
        TensorData::F32(v) => v.iter().map(|x| format!("{x:?}")).collect(),
        TensorData::F16(v) => v.iter().map(|x| format!("{:?}", x.to_f32())).collect(),
        TensorData::I32(v) => v.iter().map(|x| x.to_string()).collect(),
        TensorData::Bool(v) => v.iter().map(|x| x.to_string()).collect(),
    };
    if t.shape.is_empty() {
        vals.join("")
    } else {
        format!("[{}]", vals.join(", "))
    }
}
