//! MIL text, in the style of coremltools' program printout, read from the protobuf itself:
//!
//! ```text
//! main[CoreML6](%latent: (1, 32, 96, 96, fp16)(Tensor)) {
//!   block0() {
//!     %l1_weight: (64, 32, 3, 3, fp16)(Tensor) = const(val=@weight.bin[64])
//!     %l1_conv: (1, 64, 96, 96, fp16)(Tensor) = conv(x=%l0_clamp, weight=%l1_weight, bias=%l1_bias, strides=[1, 1], ...)
//!   } -> (%image)
//! }
//! ```
//! Immediate constants (op parameters, scalars) are shown inline where they are used; constants
//! stored in `weight.bin` get a line of their own with their blob offset. Snapshot tests pin this
//! text, so it is deterministic: op inputs print in a fixed order.

use crate::proto::mil_spec as pb;
use crate::proto::specification as spec;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The model description, metadata and every function of an ML Program model.
pub fn print_model(model: &spec::Model) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// specification version {}",
        model.specification_version
    );
    if let Some(d) = &model.description {
        for (kind, feats) in [("input", &d.input), ("output", &d.output)] {
            for f in feats {
                let _ = writeln!(
                    s,
                    "// {kind} {}: {}",
                    f.name,
                    feature_type(f.r#type.as_ref())
                );
            }
        }
        if !d.default_function_name.is_empty() {
            let _ = writeln!(s, "// default function {}", d.default_function_name);
        }
        for func in &d.functions {
            for (kind, feats) in [("input", &func.input), ("output", &func.output)] {
                for f in feats {
                    let _ = writeln!(
                        s,
                        "// function {} {kind} {}: {}",
                        func.name,
                        f.name,
                        feature_type(f.r#type.as_ref())
                    );
                }
            }
        }
        if let Some(m) = &d.metadata {
            for (k, v) in m.user_defined.iter().collect::<BTreeMap<_, _>>() {
                let _ = writeln!(s, "// metadata {k} = {v}");
            }
        }
    }
    match &model.r#type {
        Some(spec::model::Type::MlProgram(p)) => s.push_str(&print_program(p)),
        _ => s.push_str("// (not an ML Program)\n"),
    }
    s
}

fn feature_type(t: Option<&spec::FeatureType>) -> String {
    match t.and_then(|t| t.r#type.as_ref()) {
        Some(spec::feature_type::Type::MultiArrayType(a)) => {
            let dt = spec::array_feature_type::ArrayDataType::try_from(a.data_type)
                .map(|d| format!("{d:?}").to_lowercase())
                .unwrap_or_else(|_| format!("dtype {}", a.data_type));
            let mut text = format!("multiarray {dt} {:?}", a.shape);
            if let Some(spec::array_feature_type::ShapeFlexibility::EnumeratedShapes(e)) =
                &a.shape_flexibility
            {
                let shapes: Vec<String> =
                    e.shapes.iter().map(|s| format!("{:?}", s.shape)).collect();
                text.push_str(&format!(" enumerated {}", shapes.join(" ")));
            }
            text
        }
        Some(spec::feature_type::Type::ImageType(i)) => {
            let cs = spec::image_feature_type::ColorSpace::try_from(i.color_space)
                .map(|c| format!("{c:?}").to_uppercase())
                .unwrap_or_else(|_| format!("colorspace {}", i.color_space));
            let mut text = format!("image {cs} {}x{} (WxH)", i.width, i.height);
            if let Some(spec::image_feature_type::SizeFlexibility::EnumeratedSizes(e)) =
                &i.size_flexibility
            {
                let sizes: Vec<String> = e
                    .sizes
                    .iter()
                    .map(|s| format!("{}x{}", s.width, s.height))
                    .collect();
                text.push_str(&format!(" enumerated {}", sizes.join(" ")));
            }
            text
        }
        Some(other) => format!("{other:?}"),
        None => "(no type)".to_string(),
    }
}

pub fn print_program(p: &pb::Program) -> String {
    let mut s = String::new();
    for (name, f) in &p.functions {
        let inputs: Vec<String> = f
            .inputs
            .iter()
            .map(|i| format!("%{}: {}", i.name, value_type(i.r#type.as_ref())))
            .collect();
        let _ = writeln!(s, "{name}[{}]({}) {{", f.opset, inputs.join(", "));
        for (i, (_, block)) in f.block_specializations.iter().enumerate() {
            print_block(&mut s, block, i, 1);
        }
        s.push_str("}\n");
    }
    s
}

fn print_block(s: &mut String, b: &pb::Block, index: usize, depth: usize) {
    let pad = "  ".repeat(depth);
    let _ = writeln!(s, "{pad}block{index}() {{");
    let mut inline: BTreeMap<&str, String> = BTreeMap::new();
    for op in &b.operations {
        let out = op.outputs.first();
        let name = out.map_or("?", |o| o.name.as_str());
        let ty = value_type(out.and_then(|o| o.r#type.as_ref()));
        if op.r#type == "const" {
            match op.attributes.get("val").and_then(|v| v.value.as_ref()) {
                Some(pb::value::Value::ImmediateValue(iv)) => {
                    inline.insert(name, immediate(iv, op.attributes["val"].r#type.as_ref()));
                }
                Some(pb::value::Value::BlobFileValue(bv)) => {
                    let file = bv.file_name.rsplit('/').next().unwrap_or(&bv.file_name);
                    let _ = writeln!(
                        s,
                        "{pad}  %{name}: {ty} = const(val=@{file}[{}])",
                        bv.offset
                    );
                }
                None => {
                    let _ = writeln!(s, "{pad}  %{name}: {ty} = const()");
                }
            }
            continue;
        }
        let mut keys: Vec<&String> = op.inputs.keys().collect();
        let order = super::ops::lookup(&op.r#type).map(|d| d.inputs);
        keys.sort_by_key(|k| (input_rank(order, k), k.as_str()));
        let args: Vec<String> = keys
            .into_iter()
            .map(|k| {
                let vals: Vec<String> = op.inputs[k]
                    .arguments
                    .iter()
                    .map(|b| match &b.binding {
                        Some(pb::argument::binding::Binding::Name(n)) => inline
                            .get(n.as_str())
                            .cloned()
                            .unwrap_or_else(|| format!("%{n}")),
                        Some(pb::argument::binding::Binding::Value(v)) => match &v.value {
                            Some(pb::value::Value::ImmediateValue(iv)) => {
                                immediate(iv, v.r#type.as_ref())
                            }
                            _ => "<value>".to_string(),
                        },
                        None => "?".to_string(),
                    })
                    .collect();
                let v = if vals.len() == 1 {
                    vals[0].clone()
                } else {
                    format!("({})", vals.join(", "))
                };
                format!("{k}={v}")
            })
            .collect();
        let outs: Vec<String> = op
            .outputs
            .iter()
            .map(|o| format!("%{}: {}", o.name, value_type(o.r#type.as_ref())))
            .collect();
        let _ = writeln!(
            s,
            "{pad}  {} = {}({})",
            outs.join(", "),
            op.r#type,
            args.join(", ")
        );
        for (i, nested) in op.blocks.iter().enumerate() {
            print_block(s, nested, i, depth + 2);
        }
    }
    let outs: Vec<String> = b.outputs.iter().map(|o| format!("%{o}")).collect();
    let _ = writeln!(s, "{pad}}} -> ({})", outs.join(", "));
}

/// Data inputs first, in the order the op table lists them (for ops it does not know, a common
/// order of data input names); parameters after, by name.
fn input_rank(order: Option<&[&str]>, k: &str) -> usize {
    if let Some(order) = order {
        return order.iter().position(|n| *n == k).unwrap_or(100);
    }
    [
        "x",
        "y",
        "weight",
        "bias",
        "indices",
        "lut",
        "quantized_data",
        "data",
    ]
    .iter()
    .position(|n| *n == k)
    .unwrap_or(100)
}

fn dtype_name(d: i32) -> String {
    match pb::DataType::try_from(d) {
        Ok(pb::DataType::Float16) => "fp16".into(),
        Ok(pb::DataType::Float32) => "fp32".into(),
        Ok(pb::DataType::Float64) => "fp64".into(),
        Ok(pb::DataType::Int32) => "int32".into(),
        Ok(pb::DataType::Int64) => "int64".into(),
        Ok(pb::DataType::Bool) => "bool".into(),
        Ok(pb::DataType::String) => "string".into(),
        Ok(other) => format!("{other:?}").to_lowercase(),
        Err(_) => format!("dtype{d}"),
    }
}

/// `(1, 64, 96, 96, fp16)(Tensor)`, with `?` for unknown dimensions.
pub fn value_type(t: Option<&pb::ValueType>) -> String {
    match t.and_then(|t| t.r#type.as_ref()) {
        Some(pb::value_type::Type::TensorType(tt)) => {
            let mut parts: Vec<String> = tt
                .dimensions
                .iter()
                .map(|d| match &d.dimension {
                    Some(pb::dimension::Dimension::Constant(c)) => c.size.to_string(),
                    _ => "?".to_string(),
                })
                .collect();
            parts.push(dtype_name(tt.data_type));
            format!("({})(Tensor)", parts.join(", "))
        }
        Some(other) => format!("{other:?}"),
        None => "(?)".to_string(),
    }
}

fn immediate(iv: &pb::value::ImmediateValue, ty: Option<&pb::ValueType>) -> String {
    use pb::tensor_value::Value as V;
    let Some(pb::value::immediate_value::Value::Tensor(t)) = &iv.value else {
        return "<immediate>".into();
    };
    let scalar = matches!(ty.and_then(|t| t.r#type.as_ref()), Some(pb::value_type::Type::TensorType(tt)) if tt.rank == 0);
    let is_f16 = matches!(ty.and_then(|t| t.r#type.as_ref()), Some(pb::value_type::Type::TensorType(tt)) if tt.data_type == pb::DataType::Float16 as i32);
    let items: Vec<String> = match &t.value {
        Some(V::Floats(v)) => v.values.iter().map(|x| format!("{x:?}")).collect(),
        Some(V::Doubles(v)) => v.values.iter().map(|x| format!("{x:?}")).collect(),
        Some(V::Ints(v)) => v.values.iter().map(|x| x.to_string()).collect(),
        Some(V::LongInts(v)) => v.values.iter().map(|x| x.to_string()).collect(),
        Some(V::Bools(v)) => v
            .values
            .iter()
            .map(|x| if *x { "True".into() } else { "False".into() })
            .collect(),
        Some(V::Strings(v)) => v.values.iter().map(|x| format!("{x:?}")).collect(),
        Some(V::Bytes(v)) if is_f16 => v
            .values
            .chunks_exact(2)
            .map(|c| format!("{:?}", half::f16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        Some(V::Bytes(v)) => {
            let dt = match ty.and_then(|t| t.r#type.as_ref()) {
                Some(pb::value_type::Type::TensorType(tt)) => {
                    pb::DataType::try_from(tt.data_type).ok()
                }
                _ => None,
            };
            match dt {
                Some(pb::DataType::Uint8) => v.values.iter().map(|b| b.to_string()).collect(),
                Some(pb::DataType::Int8) => {
                    v.values.iter().map(|&b| (b as i8).to_string()).collect()
                }
                Some(pb::DataType::Uint32) => v
                    .values
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]).to_string())
                    .collect(),
                _ => vec![format!("<{} bytes>", v.values.len())],
            }
        }
        None => vec![],
    };
    if scalar && items.len() == 1 {
        items[0].clone()
    } else {
        format!("[{}]", items.join(", "))
    }
}
