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
        for op in &block.operations {
            if op.r#type == "const" || op.r#type.starts_with("constexpr_") {
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
                if op.r#type != "cast" && t.data_type != pb::DataType::Float16 as i32 {
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
            report.ops.push(OpVerdict {
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
    let mut by_type: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for o in &r.ops {
        let e = by_type.entry(o.op_type.as_str()).or_default();
        e.0 += 1;
        e.1 += o.fits() as usize;
    }
    s.push_str("op type                      count  fit\n");
    for (t, (n, ok)) in by_type {
        let _ = writeln!(s, "{t:<28} {n:>5}  {ok:>3}");
    }
    s
}
