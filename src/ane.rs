//! The Neural Engine report: for every op of an ML Program, whether it fits the constraints the
//! ANE is known to have, and a model-level verdict.
//!
//! Apple does not document the ANE. The rules here are the widely reported ones (Apple's
//! "Deploying Transformers on the Apple Neural Engine", coremltools' documentation, and
//! hollance/neural-engine): it computes in fp16 only; tensors of rank 4 (N, C, H, W) suit it best
//! and rank above 5 does not run; no dimension may exceed 16384; and only a known set of op
//! types runs there. With enumerated (flexible) shapes only the default shape is known to be
//! compiled for it. A "fits" verdict is therefore necessary, not sufficient: only a device run
//! (Xcode's performance report) proves placement.
//!
//! Besides what does not fit, the report gives layout hints: ops that fit but waste the
//! Neural Engine's time by the same guidance. Its native tensors are 4-D with the last axis
//! padded to 64 bytes, so compute on other ranks, transposes and reshapes of the last axis
//! (memory copies) and linear layers as matmuls (a 1x1 convolution uses its convolution
//! engine) are flagged. Ops at the interface (reached from an input or output through casts,
//! reshapes and transposes only) are not: the caller chose that layout.
//!
//! What is known per op type (whether it runs there, whether it only moves data) is in the op
//! table's rows ([`crate::mil::ops`]), which the IR op files that emit those ops declare.

use crate::mil::ops::Ane;
use crate::proto::mil_spec as pb;
use crate::proto::specification as spec;
use std::fmt::Write;

/// Largest dimension the ANE is known to accept.
pub const MAX_DIM: u64 = 16384;

/// One op's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpVerdict {
    pub function: String,
    pub name: String,
    pub op_type: String,
    /// Why it does not fit; empty when it does.
    pub reasons: Vec<String>,
    /// How an op that fits could suit the Neural Engine better (see the module's doc).
    pub hints: Vec<Hint>,
}

/// A layout hint: an op that fits the Neural Engine but wastes its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hint {
    /// Compute on a tensor of rank other than 4.
    Rank,
    /// A transpose: a memory copy.
    Transpose,
    /// A reshape that changes the last axis: a memory copy.
    ReshapeLastAxis,
    /// A matmul by a constant: a linear layer the convolution engine would run as a 1x1 conv.
    LinearAsMatmul,
}

impl Hint {
    pub fn describe(self) -> &'static str {
        match self {
            Hint::Rank => "compute on a tensor of rank other than 4 (the Neural Engine's are (B, C, H, W); a transformer's (B, C, 1, S))",
            Hint::Transpose => "a transpose copies memory",
            Hint::ReshapeLastAxis => "a reshape of the last axis (padded to 64 bytes) copies memory",
            Hint::LinearAsMatmul => "a linear layer as a matmul by a constant (as a 1x1 conv it runs on the convolution engine)",
        }
    }
}

impl OpVerdict {
    pub fn fits(&self) -> bool {
        self.reasons.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AneReport {
    pub ops: Vec<OpVerdict>,
    /// Model-level remarks (flexible shapes, …).
    pub notes: Vec<String>,
}

impl AneReport {
    /// Ops that do not fit.
    pub fn misfits(&self) -> impl Iterator<Item = &OpVerdict> {
        self.ops.iter().filter(|o| !o.fits())
    }

    /// Layout hints over all ops, counted per hint.
    pub fn hint_counts(&self) -> std::collections::BTreeMap<Hint, usize> {
        let mut m = std::collections::BTreeMap::new();
        for h in self.ops.iter().flat_map(|o| &o.hints) {
            *m.entry(*h).or_insert(0) += 1;
        }
        m
    }

    /// Every op fits and no model-level caveat applies.
    pub fn fits(&self) -> bool {
        self.misfits().next().is_none() && self.notes.is_empty()
    }

    /// One line for the whole model.
    pub fn verdict(&self) -> String {
        let bad = self.misfits().count();
        let n = self.ops.len();
        match (bad, self.notes.is_empty()) {
            (0, true) => format!("fits the Neural Engine: all {n} compute ops meet its known constraints"),
            (0, false) => format!("all {n} compute ops meet the Neural Engine's constraints, with caveats"),
            _ => format!("{bad} of {n} compute ops do not fit the Neural Engine; Core ML will run them (and maybe their neighbours) on the CPU or GPU"),
        }
    }
}

/// Analyses every function of an ML Program model.
pub fn analyze(model: &spec::Model) -> AneReport {
    let mut report = AneReport::default();
    let Some(spec::model::Type::MlProgram(p)) = &model.r#type else {
        report.notes.push("not an ML Program".into());
        return report;
    };
    let mut flexible = false;
    for (fname, f) in &p.functions {
        let Some(block) = f
            .block_specializations
            .get(&f.opset)
            .or_else(|| f.block_specializations.values().next())
        else {
            continue;
        };
        let types = value_types(f, block);
        let constants: std::collections::HashSet<&str> = block
            .operations
            .iter()
            .filter(|op| is_constant(&op.r#type))
            .flat_map(|op| op.outputs.iter().map(|o| o.name.as_str()))
            .collect();
        let interface = interface_values(f, block);
        for op in &block.operations {
            if is_constant(&op.r#type) {
                continue;
            }
            let mut reasons = Vec::new();
            match crate::mil::ops::lookup(&op.r#type).map(|d| d.ane) {
                Some(Ane::Yes) => {}
                Some(Ane::No(why)) => reasons.push(why.to_string()),
                None => reasons.push(format!(
                    "op type {} is not known to run on the ANE",
                    op.r#type
                )),
            }
            for o in &op.outputs {
                let Some(pb::value_type::Type::TensorType(t)) =
                    o.r#type.as_ref().and_then(|t| t.r#type.as_ref())
                else {
                    continue;
                };
                // A cast's job is its dtype; `quantize` makes the int8 activations that iOS17's
                // W8A8 runs (its pairs fuse into int8 compute).
                let converts = matches!(op.r#type.as_str(), "cast" | "quantize");
                if !converts && t.data_type != pb::DataType::Float16 as i32 {
                    reasons.push(format!(
                        "output {} is {}, the ANE computes in fp16",
                        o.name,
                        dtype_name(t.data_type)
                    ));
                }
                if t.rank > 5 {
                    reasons.push(format!("output {} has rank {}, above 5", o.name, t.rank));
                }
                for d in &t.dimensions {
                    match &d.dimension {
                        Some(pb::dimension::Dimension::Constant(c)) if c.size > MAX_DIM => {
                            reasons.push(format!(
                                "output {} has a dimension of {}, above {MAX_DIM}",
                                o.name, c.size
                            ));
                        }
                        Some(pb::dimension::Dimension::Unknown(_)) => flexible = true,
                        _ => {}
                    }
                }
            }
            let at_interface = op
                .outputs
                .iter()
                .all(|o| interface.contains(o.name.as_str()));
            let hints = if reasons.is_empty() && !at_interface {
                hints(op, &types, &constants)
            } else {
                Vec::new()
            };
            report.ops.push(OpVerdict {
                hints,
                function: fname.clone(),
                name: op
                    .outputs
                    .first()
                    .map(|o| o.name.clone())
                    .unwrap_or_default(),
                op_type: op.r#type.clone(),
                reasons,
            });
        }
    }
    if flexible {
        report.notes.push(
            "flexible (enumerated) shapes: only the default shape is known to stay on the Neural Engine; a multifunction build (iOS18) gives every size a static function".into(),
        );
    }
    report
}

fn is_constant(op_type: &str) -> bool {
    op_type == "const" || op_type.starts_with("constexpr_")
}

/// Data-movement ops of other tools' packages that the op table does not list (its rows say
/// which of the others only move data).
const OTHER_DATA_MOVEMENT: &[&str] = &["gather_along_axis", "slice_by_size"];

/// Whether an op only moves data: its rank is its inputs' business.
fn moves_data(op_type: &str) -> bool {
    crate::mil::ops::lookup(op_type).is_some_and(|o| o.moves_data)
        || OTHER_DATA_MOVEMENT.contains(&op_type)
}

/// The names of an op's tensor arguments (variable references).
fn arguments<'a>(op: &'a pb::Operation, param: &str) -> impl Iterator<Item = &'a str> {
    op.inputs
        .get(param)
        .into_iter()
        .flat_map(|a| &a.arguments)
        .filter_map(|b| match &b.binding {
            Some(pb::argument::binding::Binding::Name(n)) => Some(n.as_str()),
            _ => None,
        })
}

fn tensor_type(t: &pb::ValueType) -> Option<&pb::TensorType> {
    match &t.r#type {
        Some(pb::value_type::Type::TensorType(t)) => Some(t),
        _ => None,
    }
}

/// Every named value's tensor type: the function's inputs and every op's outputs.
fn value_types<'a>(
    f: &'a pb::Function,
    block: &'a pb::Block,
) -> std::collections::HashMap<&'a str, &'a pb::TensorType> {
    let inputs = f
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.r#type.as_ref()));
    let outputs = block
        .operations
        .iter()
        .flat_map(|op| &op.outputs)
        .map(|o| (o.name.as_str(), o.r#type.as_ref()));
    inputs
        .chain(outputs)
        .filter_map(|(n, t)| Some((n, tensor_type(t?)?)))
        .collect()
}

/// Values that only change the interface's form: the function's inputs and outputs and what
/// reaches them through casts, reshapes and transposes alone.
fn interface_values<'a>(
    f: &'a pb::Function,
    block: &'a pb::Block,
) -> std::collections::HashSet<&'a str> {
    const FORM: &[&str] = &["cast", "reshape", "transpose"];
    let mut set: std::collections::HashSet<&str> = f
        .inputs
        .iter()
        .map(|i| i.name.as_str())
        .chain(block.outputs.iter().map(String::as_str))
        .collect();
    let form = || {
        block
            .operations
            .iter()
            .filter(|op| FORM.contains(&op.r#type.as_str()))
    };
    // Forward from the inputs, in program order.
    for op in form() {
        if arguments(op, "x").all(|x| set.contains(x)) && arguments(op, "x").next().is_some() {
            set.extend(op.outputs.iter().map(|o| o.name.as_str()));
        }
    }
    // Backward from the outputs.
    for op in form().collect::<Vec<_>>().into_iter().rev() {
        if op.outputs.iter().all(|o| set.contains(o.name.as_str())) {
            set.extend(arguments(op, "x"));
        }
    }
    set
}

/// The layout hints for an op that fits.
fn hints(
    op: &pb::Operation,
    types: &std::collections::HashMap<&str, &pb::TensorType>,
    constants: &std::collections::HashSet<&str>,
) -> Vec<Hint> {
    let mut h = Vec::new();
    let out = op.outputs.first().and_then(|o| types.get(o.name.as_str()));
    match op.r#type.as_str() {
        "transpose" => h.push(Hint::Transpose),
        "reshape" => {
            let x = arguments(op, "x").next().and_then(|x| types.get(x));
            let last = |t: &pb::TensorType| t.dimensions.last().cloned();
            if let (Some(x), Some(y)) = (x, out) {
                if last(x) != last(y) {
                    h.push(Hint::ReshapeLastAxis);
                }
            }
        }
        "matmul" | "linear"
            if op.r#type == "linear"
                || arguments(op, "x")
                    .chain(arguments(op, "y"))
                    .any(|v| constants.contains(v)) =>
        {
            h.push(Hint::LinearAsMatmul)
        }
        _ => {}
    }
    if !moves_data(&op.r#type) && out.is_some_and(|t| t.rank != 4) {
        h.push(Hint::Rank);
    }
    h
}

fn dtype_name(d: i32) -> String {
    match pb::DataType::try_from(d) {
        Ok(pb::DataType::Float32) => "fp32".into(),
        Ok(pb::DataType::Float16) => "fp16".into(),
        Ok(t) => format!("{t:?}").to_lowercase(),
        Err(_) => format!("dtype {d}"),
    }
}

/// The report as text: the verdict, caveats, every op that does not fit, and a per-op-type table.
pub fn report(model: &spec::Model) -> String {
    let r = analyze(model);
    let mut s = format!("Neural Engine: {}\n", r.verdict());
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    for o in r.misfits() {
        let _ = writeln!(
            s,
            "does not fit: {}/{} ({}): {}",
            o.function,
            o.name,
            o.op_type,
            o.reasons.join("; ")
        );
    }
    for (hint, n) in r.hint_counts() {
        let first = r
            .ops
            .iter()
            .find(|o| o.hints.contains(&hint))
            .map(|o| format!("{}/{}", o.function, o.name))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "layout hint: {n} ops: {} (first: {first})",
            hint.describe()
        );
    }
    let mut by_type: std::collections::BTreeMap<&str, (usize, usize, usize)> = Default::default();
    for o in &r.ops {
        let e = by_type.entry(o.op_type.as_str()).or_default();
        e.0 += 1;
        e.1 += o.fits() as usize;
        e.2 += !o.hints.is_empty() as usize;
    }
    s.push_str("op type                      count  fit  hints\n");
    for (t, (n, ok, hinted)) in by_type {
        let _ = writeln!(s, "{t:<28} {n:>5}  {ok:>3}  {hinted:>5}");
    }
    s
}
