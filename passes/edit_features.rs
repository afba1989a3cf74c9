//! Feature edits: the package's inputs and outputs as a consumer with its own conventions reads
//! them, on top of the model's interface. Apple's Swift pipeline feeds a text encoder token ids
//! as Float32 and reads `pooled_outputs`, feeds a VAE decoder `z`: a pipeline names what it
//! needs here, and no model learns another program's names.
//!
//! ```text
//! %input_ids: int32[1,77] = input("input_ids")      %input_ids: fp32[1,77] = input("input_ids")
//! %e = gather(%tok, %input_ids)               ==>   %input_ids_fp32 = precision(%input_ids) fp32=true
//! return pooled=%p, last_hidden_state=%h            %input_ids_int32: int32 = cast(%input_ids_fp32)
//!                                                   %e = gather(%tok, %input_ids_int32)
//!                                                   return pooled_outputs=%p   (outputs kept, renamed)
//! ```
//!
//! The fence keeps the ids fp32 in an fp16 build (49407 has no exact fp16 value); a package with
//! float ids therefore needs fp32 inputs. Outputs left out are removed by dead-code removal.

use super::Pass;
use crate::ir::{Graph, IrError, Node, Op, Rebuilder, ValueId};
use crate::models::{Feature, FeatureDtype, Interface};
use crate::tensor::DType;

/// What changes between the model's features and the package's. Empty: nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeatureEdits {
    /// (model name, package name), inputs and outputs alike.
    pub rename: Vec<(String, String)>,
    /// Only these outputs (model names), in this order; None keeps them all.
    pub outputs: Option<Vec<String>>,
    /// Int32 inputs (model names) the package takes as Float32 arrays, converted inside.
    pub float_inputs: Vec<String>,
}

impl FeatureEdits {
    pub fn is_empty(&self) -> bool {
        self.rename.is_empty() && self.outputs.is_none() && self.float_inputs.is_empty()
    }

    fn renamed<'a>(&'a self, name: &'a str) -> &'a str {
        self.rename
            .iter()
            .find(|(from, _)| from == name)
            .map_or(name, |(_, to)| to)
    }

    /// The package's interface: `model`'s with the edits applied; an edit naming a feature the
    /// model does not have, an output kept twice, a float input that is not int32, or two
    /// features ending up with one name is refused.
    pub fn interface(&self, model: &Interface) -> Result<Interface, String> {
        let names = |fs: &[Feature]| fs.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        let all = [names(&model.inputs), names(&model.outputs)].concat();
        let unknown = |what: &str, n: &str| {
            format!(
                "{what} {n:?} is not a feature of the model (it has {})",
                all.join(", ")
            )
        };
        for (from, _) in &self.rename {
            if !all.contains(from) {
                return Err(unknown("renamed feature", from));
            }
        }
        let mut inputs = model.inputs.clone();
        for n in &self.float_inputs {
            let f = inputs
                .iter_mut()
                .find(|f| &f.name == n)
                .ok_or_else(|| unknown("float input", n))?;
            if f.dtype != FeatureDtype::Int32 {
                return Err(format!("float input {n:?} is not an int32 input"));
            }
            f.dtype = FeatureDtype::Float;
            f.description = format!("{} Given as Float32, converted inside.", f.description);
        }
        let outputs = match &self.outputs {
            None => model.outputs.clone(),
            Some(keep) => {
                let mut out: Vec<Feature> = Vec::with_capacity(keep.len());
                for n in keep {
                    let f = model
                        .outputs
                        .iter()
                        .find(|f| &f.name == n)
                        .ok_or_else(|| unknown("kept output", n))?;
                    if out.iter().any(|o| &o.name == n) {
                        return Err(format!("output {n:?} is kept twice"));
                    }
                    out.push(f.clone());
                }
                out
            }
        };
        let mut edited = Interface {
            inputs,
            outputs,
            default_size: model.default_size.clone(),
        };
        for f in edited.inputs.iter_mut().chain(&mut edited.outputs) {
            f.name = self.renamed(&f.name).to_string();
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in edited.inputs.iter().chain(&edited.outputs) {
            if !seen.insert(&f.name) {
                return Err(format!("two features would be named {:?}", f.name));
            }
        }
        Ok(edited)
    }
}

/// The pass: the graph's features edited as [`FeatureEdits::interface`] edits the interface.
pub struct EditFeatures(pub FeatureEdits);

impl Pass for EditFeatures {
    fn name(&self) -> &'static str {
        "edit_features"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        let e = &self.0;
        let bad = |node: &str, reason: String| IrError::Type {
            node: node.to_string(),
            op: "input",
            reason,
        };
        let (name, nodes, outputs) = g.into_parts();
        let taken: std::collections::BTreeSet<&str> = nodes
            .iter()
            .filter(|n| !matches!(n.op, Op::Input { .. }))
            .map(|n| n.name.as_str())
            .collect();
        let mut r = Rebuilder::new(name, nodes.len());
        let mut found = 0;
        for (i, mut node) in nodes.iter().cloned().enumerate() {
            let old = ValueId(i as u32);
            let Op::Input { name: input } = &node.op else {
                r.copy(old, node);
                continue;
            };
            let input = input.clone();
            let to = e.renamed(&input).to_string();
            if to != input && taken.contains(to.as_str()) {
                return Err(bad(
                    &input,
                    format!("cannot be renamed {to:?}: a value of the model has that name"),
                ));
            }
            node.name = to.clone();
            node.op = Op::Input { name: to.clone() };
            if !e.float_inputs.contains(&input) {
                r.copy(old, node);
                continue;
            }
            found += 1;
            if node.ty.dtype != DType::I32 {
                return Err(bad(
                    &input,
                    "a float input must be int32 in the model".into(),
                ));
            }
            let int_ty = node.ty.clone();
            let float = r.graph.push(Node {
                ty: int_ty.with_dtype(DType::F32),
                ..node
            });
            let fenced =
                r.graph
                    .add(Op::Precision { fp32: true }, &[float], format!("{to}_fp32"))?;
            let ids = r.graph.add(
                Op::Cast { dtype: DType::I32 },
                &[fenced],
                format!("{to}_int32"),
            )?;
            r.set(old, ids);
        }
        if found != e.float_inputs.len() {
            return Err(bad(
                &e.float_inputs.join(", "),
                "not every float input is a graph input".into(),
            ));
        }
        let kept: Vec<(String, ValueId)> = match &e.outputs {
            None => outputs,
            Some(keep) => keep
                .iter()
                .map(|k| {
                    outputs
                        .iter()
                        .find(|(n, _)| n == k)
                        .cloned()
                        .ok_or_else(|| bad(k, "no graph output has this name".into()))
                })
                .collect::<Result<_, _>>()?,
        };
        let renamed: Vec<(String, ValueId)> = kept
            .into_iter()
            .map(|(n, v)| (e.renamed(&n).to_string(), v))
            .collect();
        Ok(r.finish(&renamed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::eval::evaluate as eval;
    use crate::ir::print::print;
    use crate::ir::TensorType;
    use crate::kernels::Array;
    use crate::models::Role;
    use crate::passes::cast_fp16::CastFp16;
    use crate::passes::dce::Dce;
    use crate::passes::specialize_shapes::Bindings;
    use crate::tensor::Tensor;
    use std::collections::BTreeMap;

    fn feature(name: &str, dtype: FeatureDtype) -> Feature {
        Feature {
            name: name.into(),
            role: Role::Tokens,
            dtype,
            shape: vec![],
            description: "Ids.".into(),
            image: None,
        }
    }

    /// ids → gather rows of a table; two outputs.
    fn model() -> (Graph, Interface) {
        let mut g = Graph::new("t");
        let ids = g.input("input_ids", TensorType::known(DType::I32, &[1, 3]));
        let table: Vec<f32> = (0..50_000).map(|i| i as f32).collect();
        let t = g.constant("table", Tensor::f32(vec![50_000, 1], table));
        let e = g.add(Op::Gather { axis: 0 }, &[t, ids], "embed").unwrap();
        let n = g
            .add(Op::Unary(crate::ir::Unary::Relu), &[e], "relu")
            .unwrap();
        g.set_output("last_hidden_state", e);
        g.set_output("pooled", n);
        let iface = Interface {
            inputs: vec![feature("input_ids", FeatureDtype::Int32)],
            outputs: vec![
                feature("last_hidden_state", FeatureDtype::Float),
                feature("pooled", FeatureDtype::Float),
            ],
            default_size: Bindings::new(),
        };
        (g, iface)
    }

    fn swift() -> FeatureEdits {
        FeatureEdits {
            rename: vec![("pooled".into(), "pooled_outputs".into())],
            outputs: Some(vec!["pooled".into()]),
            float_inputs: vec!["input_ids".into()],
        }
    }

    #[test]
    fn ids_as_floats_reach_the_model_exactly_in_an_fp16_build() {
        let (g, _) = model();
        let g = EditFeatures(swift()).run(g).unwrap();
        let g = Dce.run(g).unwrap();
        let g = CastFp16 {
            fp16_inputs: false,
            fp16_outputs: false,
        }
        .run(g)
        .unwrap();
        crate::ir::verify::verify(&g).unwrap();
        let text = print(&g);
        assert!(
            text.contains("%input_ids: fp32[1,3] = input(\"input_ids\")"),
            "{text}"
        );
        assert!(!text.contains("last_hidden_state"), "{text}");
        // 49407 and 49406 have no fp16 value: the ids must not pass through one.
        let ids = Array::new(vec![1, 3], vec![49406.0, 320.0, 49407.0]);
        let out = eval(&g, &BTreeMap::from([("input_ids".to_string(), ids)])).unwrap();
        let names: Vec<&str> = g.outputs().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["pooled_outputs"]);
        // The table's rows, rounded to fp16 as the model stores them.
        let want: Vec<f32> = [49406.0f32, 320.0, 49407.0]
            .iter()
            .map(|&x| half::f16::from_f32(x).to_f32())
            .collect();
        assert_eq!(out["pooled_outputs"].data, want);
    }

    #[test]
    fn the_interface_is_edited_as_the_graph_is() {
        let (_, iface) = model();
        let edited = swift().interface(&iface).unwrap();
        assert_eq!(edited.inputs[0].dtype, FeatureDtype::Float);
        let outs: Vec<&str> = edited.outputs.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(outs, ["pooled_outputs"]);
        let bad = |e: FeatureEdits| e.interface(&iface).unwrap_err();
        let e = bad(FeatureEdits {
            rename: vec![("nope".into(), "x".into())],
            ..Default::default()
        });
        assert!(e.contains("\"nope\"") && e.contains("input_ids"), "{e}");
        let e = bad(FeatureEdits {
            float_inputs: vec!["pooled".into()],
            ..Default::default()
        });
        assert!(e.contains("float input \"pooled\""), "{e}");
        let e = bad(FeatureEdits {
            rename: vec![("pooled".into(), "last_hidden_state".into())],
            ..Default::default()
        });
        assert!(e.contains("two features"), "{e}");
        let e = bad(FeatureEdits {
            outputs: Some(vec!["pooled".into(), "pooled".into()]),
            ..Default::default()
        });
        assert!(e.contains("kept twice"), "{e}");
        assert!(FeatureEdits::default().is_empty());
        assert_eq!(FeatureEdits::default().interface(&iface).unwrap(), iface);
    }

    #[test]
    fn an_input_is_not_renamed_onto_a_value_of_the_model() {
        let (g, _) = model();
        let e = EditFeatures(FeatureEdits {
            rename: vec![("input_ids".into(), "embed".into())],
            ..Default::default()
        })
        .run(g)
        .unwrap_err()
        .to_string();
        assert!(e.contains("embed"), "{e}");
    }
}
