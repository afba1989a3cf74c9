//! int8 activation quantization (W8A8 with `quantize` weights): a quantize–dequantize pair
//! ([`Op::FakeQuantize`], lowered to iOS17's `quantize` and `dequantize`) in front of the ops
//! Core ML runs in int8 when their float inputs come out of such a pair.
//!
//! Placement follows coremltools' `insert_prefix_quantize_dequantize_pair` (the MIL pass behind
//! `linear_quantize_activations`): the `x` input of every conv (its pools, avg and max, have no
//! IR op here), and both inputs of every `add` whose two inputs are activations (an add with a
//! constant operand is a bias or a shift and keeps it float). Scales are per tensor and
//! symmetric as there: `scale = clip / 127`, zero point 0, where `clip` is the value's clipping
//! magnitude from calibration. Where coremltools gives each consumer its own pair, a value read
//! by several of them here gets one pair that they share: the same numbers, fewer ops.
//!
//! ```text
//! %h: fp16[1,64,H,W] = relu(%c)                      %h: fp16[1,64,H,W] = relu(%c)
//! %y: fp16[1,64,H,W] = conv2d(%h, %w, %b)      ==>   %h_q8: fp16[1,64,H,W] = fake_quantize(%h) scale=0.0236 zero_point=0
//! %s: fp16[1,64,H,W] = add(%y, %x)                   %y: fp16[1,64,H,W] = conv2d(%h_q8, %w, %b)
//!                                                    %y_q8 = fake_quantize(%y) …; %x_q8 = fake_quantize(%x) …
//!                                                    %s: fp16[1,64,H,W] = add(%y_q8, %x_q8)
//! ```
//!
//! Left alone: values without a range (the pair needs one), values whose range is zero (they
//! are always 0, and MIL refuses a zero scale), an add with only one of its two ranges (Core
//! ML's int8 add needs both), and the convs and adds in `keep_float` (for a search that keeps
//! the most sensitive layers in float). In an fp16 model the scale is rounded to fp16, the type
//! MIL stores it in, so that the evaluator and the package use the same scale.

use super::Pass;
use crate::ir::{Binary, Graph, IrError, Node, Op, Rebuilder, ValueId};
use crate::tensor::DType;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The largest int8 step count of a symmetric range, as coremltools' `LINEAR_SYMMETRIC`
/// (-127..127; `quantize` still clips to -128 for values past the range).
pub const INT8_STEPS: f32 = 127.0;

pub struct QuantizeActivations {
    /// Symmetric clipping magnitude per IR value (of the graph this pass runs on).
    pub ranges: HashMap<ValueId, f32>,
    /// Convs and adds (by their value) whose inputs stay float.
    pub keep_float: BTreeSet<ValueId>,
}

/// Which inputs of `node` take a pair: conv `x`, or both inputs of an add of two activations.
fn quantized_inputs(g: &Graph, node: &Node) -> Vec<usize> {
    match &node.op {
        Op::Conv2d(_) => vec![0],
        Op::Binary(Binary::Add) => {
            let activation = |v: ValueId| !matches!(g.node(v).op, Op::Const(_));
            if node.inputs.iter().all(|&v| activation(v)) {
                vec![0, 1]
            } else {
                vec![]
            }
        }
        _ => vec![],
    }
}

/// The convs and adds the pass can quantize, in graph order, each with the values that need a
/// range for it: what calibration must measure, and what a per-layer search chooses among.
pub fn sites(g: &Graph) -> Vec<(ValueId, Vec<ValueId>)> {
    g.nodes()
        .filter_map(|(id, n)| {
            let idx = quantized_inputs(g, n);
            (!idx.is_empty()).then(|| (id, idx.iter().map(|&i| n.inputs[i]).collect()))
        })
        .collect()
}

impl QuantizeActivations {
    /// The scale for value `v`, `None` where it is left float; an error for a range that is
    /// not a finite magnitude.
    fn scale(&self, g: &Graph, v: ValueId) -> Result<Option<f32>, IrError> {
        let Some(&clip) = self.ranges.get(&v) else {
            return Ok(None);
        };
        if !(clip.is_finite() && clip >= 0.0) {
            return Err(IrError::Type {
                node: g.node(v).name.clone(),
                op: "quantize_activations",
                reason: format!("activation range {clip} is not a finite magnitude >= 0"),
            });
        }
        let mut scale = clip / INT8_STEPS;
        if g.ty(v).dtype == DType::F16 {
            scale = half::f16::from_f32(scale).to_f32();
        }
        // A zero range, or one so small that its fp16 scale is zero.
        Ok((scale > 0.0 && scale.is_finite()).then_some(scale))
    }
}

impl Pass for QuantizeActivations {
    fn name(&self) -> &'static str {
        "quantize_activations"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        // Which inputs of which consumers are rewired, and each quantized value's scale.
        let mut scales: BTreeMap<ValueId, f32> = BTreeMap::new();
        let mut rewire: BTreeMap<ValueId, Vec<usize>> = BTreeMap::new();
        for (id, inputs) in sites(&g) {
            if self.keep_float.contains(&id) {
                continue;
            }
            let found: Vec<Option<f32>> = inputs
                .iter()
                .map(|&v| self.scale(&g, v))
                .collect::<Result<_, _>>()?;
            if found.iter().any(Option::is_none) {
                continue;
            }
            for (&v, s) in inputs.iter().zip(found) {
                scales.insert(v, s.expect("checked above"));
            }
            rewire.insert(id, quantized_inputs(&g, g.node(id)));
        }

        let names: BTreeMap<ValueId, String> = scales
            .keys()
            .map(|&v| (v, g.fresh_name(&format!("{}_q8", g.node(v).name))))
            .collect();
        let (name, nodes, outputs) = g.into_parts();
        let mut r = Rebuilder::new(name, nodes.len());
        // Old value → its pair in the new graph.
        let mut pair: BTreeMap<ValueId, ValueId> = BTreeMap::new();
        for (i, mut node) in nodes.into_iter().enumerate() {
            let old = ValueId(i as u32);
            let originals = node.inputs.clone();
            node.inputs = node.inputs.iter().map(|&v| r.get(v)).collect();
            for &k in rewire.get(&old).into_iter().flatten() {
                node.inputs[k] = pair[&originals[k]];
            }
            let new = r.graph.push(node);
            r.set(old, new);
            if let Some(&scale) = scales.get(&old) {
                let q = r.graph.add(
                    Op::FakeQuantize {
                        scale,
                        zero_point: 0,
                    },
                    &[new],
                    names[&old].clone(),
                )?;
                pair.insert(old, q);
            }
        }
        Ok(r.finish(&outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Conv2d, TensorType, Unary};
    use crate::kernels::Array;
    use crate::passes::testing::{max_diff, random};
    use crate::tensor::Tensor;

    /// x → conv → relu → add(relu, x): one conv and one add of two activations, plus an add of
    /// a constant that must stay float. Returns the graph, x, the conv, the relu, the add.
    fn graph(dtype: DType) -> (Graph, [ValueId; 4], Vec<f32>) {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(dtype, &[1, 2, 4, 4]));
        let w = random(&[2, 2, 3, 3], 7, 0.5);
        let wt = g.constant(
            "w",
            Tensor::f32(w.shape.clone(), w.data.clone()).cast(dtype),
        );
        let c = g.add(Op::Conv2d(Conv2d::same(3)), &[x, wt], "c").unwrap();
        let r = g.add(Op::Unary(Unary::Relu), &[c], "r").unwrap();
        let s = g.add(Op::Binary(Binary::Add), &[r, x], "s").unwrap();
        let k = g.constant("k", Tensor::scalar(0.5).cast(dtype));
        let y = g.add(Op::Binary(Binary::Add), &[s, k], "y").unwrap();
        g.set_output("y", y);
        (g, [x, c, r, s], w.data)
    }

    fn inputs() -> BTreeMap<String, Array> {
        BTreeMap::from([("x".to_string(), random(&[1, 2, 4, 4], 3, 1.0))])
    }

    fn count(g: &Graph) -> usize {
        g.nodes()
            .filter(|(_, n)| matches!(n.op, Op::FakeQuantize { .. }))
            .count()
    }

    #[test]
    fn pairs_go_on_conv_inputs_and_adds_of_activations_within_the_scales_bound() {
        let (g, [x, _, r, _], w) = graph(DType::F32);
        // The largest |conv output| any x in [-1, 1] can give: no value is clipped.
        let l1 = w.chunks(18).map(|o| o.iter().map(|v| v.abs()).sum::<f32>());
        let l1 = l1.fold(0.0, f32::max);
        let pass = QuantizeActivations {
            ranges: HashMap::from([(x, 1.0), (r, l1)]),
            keep_float: BTreeSet::new(),
        };
        let q = pass.run(g.clone()).unwrap();
        crate::ir::verify::verify(&q).unwrap();
        // x's pair is shared by the conv and the add; the relu has one; the add of k none.
        assert_eq!(count(&q), 2);
        let (sx, sr) = (1.0 / INT8_STEPS, l1 / INT8_STEPS);
        // Rounding moves each quantized value by at most half a step: through the conv that is
        // sx/2 times the largest L1 norm of a filter, then the relu passes it, and the add adds
        // its own two half steps.
        let bound = sx / 2.0 * l1 + sr / 2.0 + sx / 2.0;
        let d = max_diff(&g, &q, &inputs());
        assert!(d > 0.0, "the pairs change nothing");
        assert!(d <= bound * 1.0001, "{d} > {bound}");
    }

    #[test]
    fn missing_ranges_kept_layers_and_zero_ranges_stay_float() {
        let (g, [x, c, r, s], _) = graph(DType::F32);
        let run = |ranges: HashMap<ValueId, f32>, keep: &[ValueId]| {
            let pass = QuantizeActivations {
                ranges,
                keep_float: keep.iter().copied().collect(),
            };
            count(&pass.run(g.clone()).unwrap())
        };
        assert_eq!(run(HashMap::new(), &[]), 0);
        // The add lacks r's range: only the conv's input.
        assert_eq!(run(HashMap::from([(x, 1.0)]), &[]), 1);
        assert_eq!(run(HashMap::from([(x, 1.0), (r, 4.0)]), &[c]), 2);
        assert_eq!(run(HashMap::from([(x, 1.0), (r, 4.0)]), &[c, s]), 0);
        assert_eq!(run(HashMap::from([(x, 0.0), (r, 4.0)]), &[]), 0);
        // A range on a value no conv or add reads is not used.
        assert_eq!(run(HashMap::from([(c, 4.0)]), &[]), 0);
    }

    #[test]
    fn a_bad_range_names_the_value() {
        let (g, [x, ..], _) = graph(DType::F32);
        for bad in [f32::NAN, -1.0, f32::INFINITY] {
            let pass = QuantizeActivations {
                ranges: HashMap::from([(x, bad)]),
                keep_float: BTreeSet::new(),
            };
            let e = pass.run(g.clone()).unwrap_err().to_string();
            assert!(
                e.contains("node x") && e.contains("activation range"),
                "{e}"
            );
        }
    }

    #[test]
    fn fp16_scales_are_exact_in_fp16() {
        let (g, [x, ..], _) = graph(DType::F16);
        let pass = QuantizeActivations {
            ranges: HashMap::from([(x, 1.3)]),
            keep_float: BTreeSet::new(),
        };
        let q = pass.run(g).unwrap();
        crate::ir::verify::verify(&q).unwrap();
        let scale = q
            .nodes()
            .find_map(|(_, n)| match n.op {
                Op::FakeQuantize { scale, .. } => Some(scale),
                _ => None,
            })
            .unwrap();
        assert_eq!(half::f16::from_f32(scale).to_f32(), scale);
        assert!((scale - 1.3 / 127.0).abs() <= 1.3 / 127.0 / 1024.0);
    }

    #[test]
    fn sites_list_convs_and_adds_of_activations() {
        let (g, [x, c, r, s], _) = graph(DType::F32);
        assert_eq!(sites(&g), vec![(c, vec![x]), (s, vec![r, x])]);
    }
}
