//! `metadata.json`, which Xcode and `MLModel.modelDescription` read: interface schemas,
//! availability, an operation histogram and precisions (MLMODELC.md §5, checked structurally
//! against Apple's outputs). Written in NSJSONSerialization's pretty style (`"k" : v`, `\/`).

use std::collections::BTreeMap;

use crate::proto::mil_spec as pb;
use crate::proto::specification as spec;

/// A JSON value with keys in the order written.
enum J {
    Str(String),
    Int(i64),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

fn s(v: impl Into<String>) -> J {
    J::Str(v.into())
}

fn obj(entries: Vec<(&str, J)>) -> J {
    J::Obj(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

/// `metadata.json` for `model`, whose input file stem is `stem`.
pub fn metadata_json(model: &spec::Model, stem: &str) -> Result<Vec<u8>, String> {
    let program = match &model.r#type {
        Some(spec::model::Type::MlProgram(p)) => p,
        _ => return Err("not an ML Program model".into()),
    };
    let empty = spec::ModelDescription::default();
    let desc = model.description.as_ref().unwrap_or(&empty);
    let default_fn = if desc.default_function_name.is_empty() {
        "main"
    } else {
        desc.default_function_name.as_str()
    };

    let mut top = Vec::new();
    if let Some(m) = &desc.metadata {
        for (k, v) in [
            ("shortDescription", &m.short_description),
            ("version", &m.version_string),
            ("author", &m.author),
            ("license", &m.license),
        ] {
            if !v.is_empty() {
                top.push((k, s(v.clone())));
            }
        }
    }
    top.push(("metadataOutputVersion", s("3.0")));
    let (inputs, outputs) = match desc.functions.iter().find(|f| f.name == default_fn) {
        Some(f) if desc.input.is_empty() => (&f.input, &f.output),
        _ => (&desc.input, &desc.output),
    };
    top.push(("inputSchema", schema(inputs)?));
    top.push(("outputSchema", schema(outputs)?));
    if let Some(p) = storage_precision(program) {
        top.push(("storagePrecision", s(p)));
    }
    top.push(("modelParameters", J::Arr(vec![])));
    top.push((
        "specificationVersion",
        J::Int(i64::from(model.specification_version)),
    ));
    if !desc.functions.is_empty() {
        let mut fns = Vec::new();
        for f in &desc.functions {
            let pf = program
                .functions
                .get(&f.name)
                .ok_or_else(|| format!("described function {:?} is not in the program", f.name))?;
            fns.push(obj(vec![
                ("name", s(f.name.clone())),
                ("inputSchema", schema(&f.input)?),
                ("outputSchema", schema(&f.output)?),
                ("stateSchema", J::Arr(vec![])),
                ("computePrecision", s(compute_precision([pf]))),
                ("mlProgramOperationTypeHistogram", histogram([pf])),
            ]));
        }
        top.push(("functions", J::Arr(fns)));
        top.push(("defaultFunctionName", s(default_fn)));
    }
    // The top-level figures describe the default function, or the only one.
    let main: Vec<&pb::Function> = match program.functions.get(default_fn) {
        Some(f) => vec![f],
        None => program.functions.values().collect(),
    };
    top.push((
        "mlProgramOperationTypeHistogram",
        histogram(main.iter().copied()),
    ));
    top.push((
        "computePrecision",
        s(compute_precision(main.iter().copied())),
    ));
    top.push(("isUpdatable", s(if model.is_updatable { "1" } else { "0" })));
    top.push(("stateSchema", J::Arr(vec![])));
    top.push(("availability", availability(model.specification_version)?));
    top.push(("modelType", obj(vec![("name", s("MLModelType_mlProgram"))])));
    let user: Vec<(String, J)> = desc
        .metadata
        .as_ref()
        .map(|m| {
            m.user_defined
                .iter()
                .map(|(k, v)| (k.clone(), s(v.clone())))
                .collect()
        })
        .unwrap_or_default();
    top.push(("userDefinedMetadata", J::Obj(user)));
    top.push(("generatedClassName", s(class_name(stem))));
    top.push(("method", s("predict")));

    let mut out = String::new();
    pretty(&mut out, &J::Arr(vec![obj(top)]), 0);
    Ok(out.into_bytes())
}

/// The feature entries of one schema (`schema.rs` says how each is described).
fn schema(features: &[spec::FeatureDescription]) -> Result<J, String> {
    let mut out = Vec::with_capacity(features.len());
    for f in features {
        let entry = super::schema::feature_entry(f)?;
        out.push(J::Obj(
            entry
                .into_iter()
                .map(|(k, v)| (k.to_owned(), s(v)))
                .collect(),
        ));
    }
    Ok(J::Arr(out))
}

fn precision_name(dt: i32) -> Option<&'static str> {
    use pb::DataType as D;
    Some(match D::try_from(dt).ok()? {
        D::Float16 => "Float16",
        D::Float32 => "Float32",
        D::Int32 => "Int32",
        D::Int8 => "Int8",
        D::Uint8 => "UInt8",
        _ => return None,
    })
}

fn precision(mut set: Vec<&'static str>) -> String {
    set.sort_unstable();
    set.dedup();
    match set.as_slice() {
        [one] => (*one).to_owned(),
        many => format!("Mixed ({})", many.join(", ")),
    }
}

fn block(f: &pb::Function) -> impl Iterator<Item = &pb::Operation> {
    f.block_specializations
        .get(&f.opset)
        .into_iter()
        .flat_map(|b| b.operations.iter())
}

fn tensor_dtype(t: Option<&pb::ValueType>) -> Option<i32> {
    match t?.r#type.as_ref()? {
        pb::value_type::Type::TensorType(t) => Some(t.data_type),
        _ => None,
    }
}

/// The element types operations produce (constants included: an fp16 constant cast to fp32
/// makes Apple report "Mixed (Float16, Float32)").
fn compute_precision<'a>(fns: impl IntoIterator<Item = &'a pb::Function>) -> String {
    let mut set = Vec::new();
    for f in fns {
        for op in block(f) {
            for o in &op.outputs {
                if let Some(p) = tensor_dtype(o.r#type.as_ref()).and_then(precision_name) {
                    set.push(p);
                }
            }
        }
    }
    precision(set)
}

/// The element types of values stored in weight files; absent when nothing is.
fn storage_precision(p: &pb::Program) -> Option<String> {
    let mut set = Vec::new();
    for f in p.functions.values() {
        for op in block(f) {
            let attrs = op.attributes.values();
            let inputs = op.inputs.values().flat_map(|a| {
                a.arguments.iter().filter_map(|b| match &b.binding {
                    Some(pb::argument::binding::Binding::Value(v)) => Some(v),
                    _ => None,
                })
            });
            for v in attrs.chain(inputs) {
                if matches!(v.value, Some(pb::value::Value::BlobFileValue(_))) {
                    if let Some(p) = tensor_dtype(v.r#type.as_ref()).and_then(precision_name) {
                        set.push(p);
                    }
                }
            }
        }
    }
    (!set.is_empty()).then(|| precision(set))
}

/// Operation counts keyed as Apple's opset registry names them. The prefix is the opset that
/// last redefined the operation in Apple's (private) registry, so it cannot be derived; the
/// exceptions below are the ones seen in Apple's outputs, the rest use the function's opset.
fn histogram<'a>(fns: impl IntoIterator<Item = &'a pb::Function>) -> J {
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for f in fns {
        let opset = match f.opset.as_str() {
            "CoreML5" => "Ios15",
            "CoreML6" => "Ios16",
            "CoreML7" => "Ios17",
            _ => "Ios18",
        };
        for op in block(f) {
            if op.r#type == "const" {
                continue;
            }
            let camel = camel(&op.r#type);
            let key = match (op.r#type.as_str(), opset) {
                ("transpose" | "pad" | "upsample_nearest_neighbor", _) => {
                    let mut c = camel.chars();
                    c.next()
                        .map(|h| h.to_uppercase().chain(c).collect())
                        .unwrap_or_default()
                }
                ("relu", "Ios17") => format!("Ios16.{camel}"),
                (t, "Ios17") if t.starts_with("constexpr_") => format!("Ios16.{camel}"),
                _ => format!("{opset}.{camel}"),
            };
            *counts.entry(key).or_default() += 1;
        }
    }
    J::Obj(counts.into_iter().map(|(k, v)| (k, J::Int(v))).collect())
}

fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The OS versions a specification version first shipped with.
fn availability(spec_version: i32) -> Result<J, String> {
    let (mac, ios, watch, vision) = match spec_version {
        6 => ("12.0", "15.0", "8.0", "1.0"),
        7 => ("13.0", "16.0", "9.0", "1.0"),
        8 => ("14.0", "17.0", "10.0", "1.0"),
        9 => ("15.0", "18.0", "11.0", "2.0"),
        v => {
            return Err(format!(
                "no availability known for specification version {v}"
            ))
        }
    };
    Ok(obj(vec![
        ("macOS", s(mac)),
        ("iOS", s(ios)),
        ("tvOS", s(ios)),
        ("watchOS", s(watch)),
        ("visionOS", s(vision)),
        ("macCatalyst", s(ios)),
    ]))
}

/// A Swift/Objective-C identifier from a file stem.
fn class_name(stem: &str) -> String {
    let mut out: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn pretty(out: &mut String, v: &J, indent: usize) {
    let pad = |out: &mut String, n: usize| out.extend(std::iter::repeat_n(' ', n));
    match v {
        J::Str(t) => quote(out, t),
        J::Int(i) => out.push_str(&i.to_string()),
        J::Arr(items) => {
            out.push_str("[\n");
            if items.is_empty() {
                // NSJSONSerialization leaves a blank line in an empty array or object.
                out.push('\n');
            }
            for (i, item) in items.iter().enumerate() {
                pad(out, indent + 2);
                pretty(out, item, indent + 2);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            pad(out, indent);
            out.push(']');
        }
        J::Obj(entries) => {
            out.push_str("{\n");
            if entries.is_empty() {
                out.push('\n');
            }
            for (i, (k, item)) in entries.iter().enumerate() {
                pad(out, indent + 2);
                quote(out, k);
                out.push_str(" : ");
                pretty(out, item, indent + 2);
                out.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
            }
            pad(out, indent);
            out.push('}');
        }
    }
}

fn quote(out: &mut String, t: &str) {
    out.push('"');
    for c in t.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_valid_and_escapes_like_apple() {
        let mut out = String::new();
        let v = J::Arr(vec![obj(vec![
            ("a", s("x/y\"\n\u{1}")),
            ("b", J::Arr(vec![])),
            ("c", J::Int(-3)),
        ])]);
        pretty(&mut out, &v, 0);
        assert!(out.contains(r#""a" : "x\/y\"\n\u0001""#), "{out}");
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back[0]["a"], "x/y\"\n\u{1}");
        assert_eq!(back[0]["c"], -3);
    }

    #[test]
    fn class_names_are_identifiers() {
        assert_eq!(class_name("my-model.v2"), "my_model_v2");
        assert_eq!(class_name("3d"), "_3d");
    }
}
