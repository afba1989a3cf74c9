//! fp16 cast: weights and compute in fp16, except in the regions a model fences as fp32.
//!
//! Constants are rounded to fp16 once; every op is re-added so its type is re-inferred as fp16.
//! With fp16 I/O (iOS16+) the model's inputs and outputs become fp16 arrays too; otherwise the
//! model keeps fp32 I/O with one cast at each boundary (inputs and outputs are chosen apart, since
//! Core ML image outputs need fp32).
//!
//! ```text
//! %x: fp32[..] = input("x")              %x: fp32[..] = input("x")
//! %w: fp32[..] = const(..)               %x_fp16: fp16[..] = cast(%x) dtype=fp16
//! %y: fp32[..] = conv2d(%x, %w)   ==>    %w: fp16[..] = const(..)
//! return y=%y                            %y: fp16[..] = conv2d(%x_fp16, %w)
//!                                        %y_fp32: fp32[..] = cast(%y) dtype=fp32
//!                                        return y=%y_fp32          (fp32 I/O)
//! ```
//!
//! Mixed precision: a `precision(%v) fp32=true` fence becomes a cast to fp32 (nothing if `%v`
//! is fp32 already) and `fp32=false` a cast back to fp16. An op whose non-constant float
//! inputs are fp32 stays fp32, and so do its constants: a constant used in and out of a region
//! gets both forms, fp16 under its own name and fp32 (its exact values; a weight stored as f16
//! keeps its stored bits, typed fp32) as `<name>_fp32`. An op fed by both an fp16 and an fp32
//! value is a model bug (a fence is missing), named in the error. An output computed in fp32
//! is cast to fp16 when the model's outputs are fp16. Without fences the graph comes out as it
//! always did.
//!
//! ```text
//! %t = input("t")                        %t: fp16 = input("t")
//! %f = const(..)                         %f: fp32 = const(..)       (only the region uses it)
//! %t32 = precision(%t) fp32=true   ==>   %t32: fp32 = cast(%t) dtype=fp32
//! %a = mul(%t32, %f)                     %a: fp32 = mul(%t32, %f)
//! %s = sin(%a)                           %s: fp32 = sin(%a)
//! %y = precision(%s) fp32=false          %y: fp16 = cast(%s) dtype=fp16
//! ```
//!
//! (fp16 I/O; with fp32 inputs the region reads the input itself, not its fp16 cast.)
//!
//! Constant folding runs first, so an op's constant operands are constants, not ops over them
//! (those would compute in fp16 and meet an fp32 region as a mixed input).

use super::Pass;
use crate::ir::{ConstData, Graph, IrError, Node, Op, Rebuilder, ValueId};
use crate::tensor::DType;
use std::collections::BTreeSet;

pub struct CastFp16 {
    /// The model's inputs become fp16 arrays (otherwise: fp32 inputs, cast inside).
    pub fp16_inputs: bool,
    /// The model's outputs are fp16 arrays (otherwise: cast back to fp32).
    pub fp16_outputs: bool,
}

/// The precision a value has after the pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prec {
    Half,
    Full,
    /// An fp32 constant, which takes the form each user needs.
    Const,
    /// Not a float (int32 indices), or a constant kept as it is (compressed, already fp16).
    Other,
}

/// Which forms of a constant its users need.
#[derive(Clone, Copy, Debug, Default)]
struct Forms {
    half: bool,
    full: bool,
}

/// Where each value's precision comes from, decided before anything is rebuilt so that a
/// constant can be written with all its forms where it stands.
struct Plan {
    /// Each value's precision.
    value: Vec<Prec>,
    /// The precision each op computes in (its constants follow it), `Half` for the others.
    compute: Vec<Prec>,
    /// The forms each constant needs (unused entries for other nodes).
    forms: Vec<Forms>,
}

impl Plan {
    fn new(nodes: &[Node], outputs: &[(String, ValueId)]) -> Result<Plan, IrError> {
        let float = |d: DType| matches!(d, DType::F32 | DType::F16);
        let mut value = Vec::with_capacity(nodes.len());
        let mut compute = Vec::with_capacity(nodes.len());
        for node in nodes {
            let (c, v) = match &node.op {
                Op::Input { .. } if float(node.ty.dtype) => (Prec::Half, Prec::Half),
                Op::Const(data) if has_half_form(data) => (Prec::Half, Prec::Const),
                Op::Input { .. } | Op::Const(_) => (Prec::Half, Prec::Other),
                Op::Precision { fp32: true } => (Prec::Full, Prec::Full),
                Op::Precision { fp32: false } => (Prec::Half, Prec::Half),
                op => {
                    let fed = |p: Prec| node.inputs.iter().find(|v| value[v.index()] == p);
                    let c = match (fed(Prec::Half), fed(Prec::Full)) {
                        (Some(&h), Some(&f)) => {
                            return Err(IrError::Type {
                                node: node.name.clone(),
                                op: op.name(),
                                reason: format!(
                                    "mixes fp16 input {} and fp32 input {} (a precision fence is missing)",
                                    nodes[h.index()].name,
                                    nodes[f.index()].name
                                ),
                            })
                        }
                        (None, Some(_)) => Prec::Full,
                        _ => Prec::Half,
                    };
                    // A non-float result (indices) joins no region.
                    (c, if float(node.ty.dtype) { c } else { Prec::Other })
                }
            };
            compute.push(c);
            value.push(v);
        }
        let mut forms = vec![Forms::default(); nodes.len()];
        for (node, &c) in nodes.iter().zip(&compute) {
            for v in &node.inputs {
                if value[v.index()] == Prec::Const {
                    let f = &mut forms[v.index()];
                    match c {
                        Prec::Full => f.full = true,
                        _ => f.half = true,
                    }
                }
            }
        }
        for (_, v) in outputs {
            forms[v.index()].half = true;
        }
        for f in &mut forms {
            // As before regions existed: an unused constant is still rounded (dce drops it).
            f.half |= !f.full;
        }
        Ok(Plan {
            value,
            compute,
            forms,
        })
    }
}

/// Whether the cast rounds the constant (the others, compressed or fp16 already, stay as they
/// are).
fn has_half_form(data: &ConstData) -> bool {
    match data {
        ConstData::Dense(t) => t.dtype() == DType::F32,
        ConstData::Half(_) => true,
        ConstData::Spilled { dtype, .. } => *dtype == DType::F32,
        _ => false,
    }
}

/// The fp16 form of an fp32 constant: rounded once, or the stored bits of a weight stored as
/// f16 (exactly fp16 already); a spilled one is retyped, and rounded when it is read back.
fn half_form(data: &ConstData) -> Option<ConstData> {
    match data {
        ConstData::Dense(t) if t.dtype() == DType::F32 => {
            Some(ConstData::Dense(t.cast(DType::F16)))
        }
        ConstData::Half(t) => Some(ConstData::Dense(t.clone())),
        ConstData::Spilled { data, .. } => Some(ConstData::Spilled {
            data: data.clone(),
            dtype: DType::F16,
        }),
        _ => None,
    }
}

impl Pass for CastFp16 {
    fn name(&self) -> &'static str {
        "cast_fp16"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        let (name, nodes, outputs) = g.into_parts();
        let plan = Plan::new(&nodes, &outputs)?;
        // Names a constant's fp32 form may not take: every name of the old graph.
        let fenced = nodes.iter().any(|n| matches!(n.op, Op::Precision { .. }));
        let old_names: BTreeSet<String> = match fenced {
            true => nodes.iter().map(|n| n.name.clone()).collect(),
            false => BTreeSet::new(),
        };
        let mut r = Rebuilder::new(name, nodes.len());
        // The fp32 forms of constants used in both precisions, and the fp32 arrays of inputs
        // cast at the boundary (a region reads them uncast), by old handle.
        let mut full_form: Vec<Option<ValueId>> = vec![None; nodes.len()];
        // New values computed in fp32, for the outputs' casts.
        let mut full_values = BTreeSet::new();
        for (i, mut node) in nodes.into_iter().enumerate() {
            let old = ValueId(i as u32);
            let compute = plan.compute[i];
            match node.op {
                Op::Input { .. } if node.ty.dtype == DType::F32 => {
                    if self.fp16_inputs {
                        node.ty.dtype = DType::F16;
                        r.copy(old, node);
                    } else {
                        let cast_name = format!("{}_fp16", node.name);
                        let x = r.copy(old, node);
                        let c = r
                            .graph
                            .add(Op::Cast { dtype: DType::F16 }, &[x], cast_name)?;
                        r.set(old, c);
                        full_form[i] = Some(x);
                    }
                }
                Op::Const(data) if plan.value[i] == Prec::Const => {
                    let forms = plan.forms[i];
                    if let Some(c) = half_form(&data).filter(|_| forms.half) {
                        let new = r.graph.constant_data(node.name.clone(), c);
                        r.set(old, new);
                    }
                    if forms.full {
                        let name = match forms.half {
                            true => fresh(&old_names, &r.graph, &format!("{}_fp32", node.name)),
                            false => node.name,
                        };
                        // Dense fp32 keeps its exact values; f16-stored stays so, typed fp32.
                        let new = r.graph.push(Node {
                            ty: data.ty(),
                            op: Op::Const(data),
                            inputs: vec![],
                            name,
                        });
                        full_form[i] = Some(new);
                        if !forms.half {
                            r.set(old, new);
                        }
                    }
                }
                Op::Input { .. } | Op::Const(_) => {
                    r.copy(old, node);
                }
                op => {
                    let inputs: Vec<ValueId> = node
                        .inputs
                        .iter()
                        .map(|&v| match (compute, full_form[v.index()]) {
                            (Prec::Full, Some(f)) => f,
                            _ => r.get(v),
                        })
                        .collect();
                    let new = match op {
                        Op::Precision { fp32 } => {
                            let x = inputs[0];
                            let to = if fp32 { DType::F32 } else { DType::F16 };
                            match r.graph.ty(x).dtype == to {
                                true => x,
                                false => r.graph.add(Op::Cast { dtype: to }, &[x], node.name)?,
                            }
                        }
                        op => r.graph.add(op, &inputs, node.name)?,
                    };
                    r.set(old, new);
                    if compute == Prec::Full {
                        full_values.insert(new);
                    }
                }
            }
        }
        r.finish_with(&outputs, |g, v| {
            let dtype = g.ty(v).dtype;
            if dtype == DType::F16 && !self.fp16_outputs {
                let name = g.fresh_name(&format!("{}_fp32", g.node(v).name));
                return g.add(Op::Cast { dtype: DType::F32 }, &[v], name);
            }
            if dtype == DType::F32 && self.fp16_outputs && full_values.contains(&v) {
                let name = g.fresh_name(&format!("{}_fp16", g.node(v).name));
                return g.add(Op::Cast { dtype: DType::F16 }, &[v], name);
            }
            Ok(v)
        })
    }
}

/// `base`, or `base_N`: a name neither graph has.
fn fresh(old: &BTreeSet<String>, new: &Graph, base: &str) -> String {
    let taken = |s: &str| old.contains(s) || new.nodes().any(|(_, n)| n.name == s);
    if !taken(base) {
        return base.to_string();
    }
    (1..)
        .map(|i| format!("{base}_{i}"))
        .find(|s| !taken(s))
        .expect("unbounded")
}

/// Ops an fp16 build computes in fp32 (its fenced regions; the fences' casts not counted).
pub fn fp32_ops(g: &Graph) -> usize {
    g.nodes()
        .filter(|(_, n)| !matches!(n.op, Op::Input { .. } | Op::Const(_) | Op::Cast { .. }))
        .filter(|(_, n)| n.ty.dtype == DType::F32)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{print::print, verify::verify, Binary, Conv2d, TensorType, Unary};
    use crate::kernels::Array;
    use crate::passes::testing::{max_diff, random};
    use crate::tensor::Tensor;
    use std::collections::BTreeMap;

    fn conv_graph() -> Graph {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 3, 6, 6]));
        let w = random(&[4, 3, 3, 3], 7, 0.5);
        let w = g.constant("w", Tensor::f32(w.shape, w.data));
        let y = g.add(Op::Conv2d(Conv2d::same(3)), &[x, w], "conv").unwrap();
        let y = g.add(Op::Unary(Unary::Relu), &[y], "relu").unwrap();
        g.set_output("y", y);
        g
    }

    #[test]
    fn fp16_io_makes_everything_fp16_within_rounding() {
        let g = conv_graph();
        let h = CastFp16 {
            fp16_inputs: true,
            fp16_outputs: true,
        }
        .run(g.clone())
        .unwrap();
        verify(&h).unwrap();
        let text = print(&h);
        assert!(!text.contains("fp32"), "{text}");
        assert!(!text.contains("cast("), "{text}");
        let inputs = BTreeMap::from([("x".to_string(), random(&[1, 3, 6, 6], 3, 2.0))]);
        let d = max_diff(&g, &h, &inputs);
        assert!(
            d > 0.0 && d < 5e-3,
            "fp16 rounding should show but stay small: {d}"
        );
    }

    /// Weights stored as f16 are exactly fp16 already: the cast keeps their bits.
    #[test]
    fn half_stored_weights_keep_their_bits() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 1, 3, 3]));
        let bits = [0x3c00u16, 0x0001, 0xfbff, 0x3555];
        let w = Tensor::f16(
            vec![1, 1, 2, 2],
            bits.iter().map(|&b| half::f16::from_bits(b)).collect(),
        );
        let w = g.weight("w", w);
        assert_eq!(g.ty(w).dtype, DType::F32);
        let y = g.add(Op::Conv2d(Conv2d::same(2)), &[x, w], "conv");
        g.set_output("y", y.unwrap());
        verify(&g).unwrap();
        let h = CastFp16 {
            fp16_inputs: true,
            fp16_outputs: true,
        }
        .run(g)
        .unwrap();
        verify(&h).unwrap();
        let Op::Const(ConstData::Dense(t)) = &h.node(ValueId(1)).op else {
            panic!("{}", print(&h))
        };
        let crate::tensor::TensorData::F16(v) = &t.data else {
            panic!("{t:?}")
        };
        assert_eq!(v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), bits);
    }

    #[test]
    fn fp32_io_casts_at_the_boundary() {
        let h = CastFp16 {
            fp16_inputs: false,
            fp16_outputs: false,
        }
        .run(conv_graph())
        .unwrap();
        verify(&h).unwrap();
        let text = print(&h);
        assert!(text.contains("%x: fp32[1,3,6,6] = input(\"x\")"), "{text}");
        assert!(
            text.contains("%x_fp16: fp16[1,3,6,6] = cast(%x) dtype=fp16"),
            "{text}"
        );
        assert!(
            text.contains("%relu_fp32: fp32[1,4,6,6] = cast(%relu) dtype=fp32"),
            "{text}"
        );
        assert!(text.contains("return y=%relu_fp32"), "{text}");
        assert!(text.contains("%w: fp16[4,3,3,3]"), "{text}");
    }

    /// The sinusoidal embedding of `t` in an fp32 region, added to an fp16 activation that
    /// uses the region's constant too.
    const REGION: &str = "graph t {
  %t: fp32[2,1] = input(\"t\")
  %x: fp32[2,4] = input(\"x\")
  %f: fp32[1,4] = const([1.0, 0.94406086, 0.8912509, 0.84139514])
  %t32: fp32[2,1] = precision(%t) fp32=true
  %a: fp32[2,4] = mul(%t32, %f)
  %s: fp32[2,4] = sin(%a)
  %c: fp32[2,4] = cos(%a)
  %e: fp32[2,8] = concat(%s, %c) axis=1
  %h: fp32[2,8] = precision(%e) fp32=false
  %u: fp32[2,4] = mul(%x, %f)
  %uu: fp32[2,8] = concat(%u, %u) axis=1
  %y: fp32[2,8] = add(%h, %uu)
  return y=%y
}
";

    fn region() -> Graph {
        crate::ir::parse::parse(REGION).unwrap()
    }

    fn fp16_io(g: Graph) -> Result<Graph, IrError> {
        CastFp16 {
            fp16_inputs: true,
            fp16_outputs: true,
        }
        .run(g)
    }

    fn find<'g>(g: &'g Graph, name: &str) -> &'g Node {
        g.nodes()
            .map(|(_, n)| n)
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no {name} in\n{}", print(g)))
    }

    #[test]
    fn fenced_ops_stay_fp32_and_fences_become_casts() {
        let h = fp16_io(region()).unwrap();
        verify(&h).unwrap();
        let text = print(&h);
        let dtype = |n: &str| find(&h, n).ty.dtype;
        for n in ["t32", "a", "s", "c", "e"] {
            assert_eq!(dtype(n), DType::F32, "{n}:\n{text}");
        }
        for n in ["t", "x", "h", "u", "uu", "y"] {
            assert_eq!(dtype(n), DType::F16, "{n}:\n{text}");
        }
        assert!(
            text.contains("%t32: fp32[2,1] = cast(%t) dtype=fp32"),
            "{text}"
        );
        assert!(
            text.contains("%h: fp16[2,8] = cast(%e) dtype=fp16"),
            "{text}"
        );
        assert!(!text.contains("precision("), "{text}");
        // mul, sin, cos and concat; the fences' casts are not counted.
        assert_eq!(fp32_ops(&h), 4, "{text}");
        assert_eq!(fp32_ops(&fp16_io(region_without_fences()).unwrap()), 0);
    }

    fn region_without_fences() -> Graph {
        let text = REGION
            .replace("  %t32: fp32[2,1] = precision(%t) fp32=true\n", "")
            .replace("  %h: fp32[2,8] = precision(%e) fp32=false\n", "")
            .replace("mul(%t32, %f)", "mul(%t, %f)")
            .replace("add(%h, %uu)", "add(%e, %uu)");
        crate::ir::parse::parse(&text).unwrap()
    }

    /// A constant used in and out of the region gets both forms: fp16 under its name for the
    /// fp16 op, the exact fp32 values for the fenced one.
    #[test]
    fn a_shared_constant_gets_both_forms() {
        let h = fp16_io(region()).unwrap();
        let (half, full) = (find(&h, "f"), find(&h, "f_fp32"));
        let want = [1.0f32, 0.94406086, 0.8912509, 0.84139514];
        let Op::Const(ConstData::Dense(t)) = &full.op else {
            panic!("{:?}", full.op)
        };
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(t.to_f32(), want, "fp32 values kept exactly");
        assert_eq!(half.ty.dtype, DType::F16);
        let rounded: Vec<f32> = want
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        let Op::Const(c) = &half.op else { panic!() };
        assert_eq!(c.dense().unwrap().to_f32(), rounded);
        // Each user reads its own form.
        let mul = |n: &str| h.node(find(&h, n).inputs[1]).name.clone();
        assert_eq!((mul("a"), mul("u")), ("f_fp32".into(), "f".into()));
    }

    /// A weight stored as f16 keeps its stored bits in both forms; the fp32 form stays
    /// f16-stored, typed fp32.
    #[test]
    fn a_half_stored_constant_stays_half_stored_in_the_region() {
        let mut g = Graph::new("t");
        let t = g.input("t", TensorType::known(DType::F32, &[2, 1]));
        let x = g.input("x", TensorType::known(DType::F32, &[2, 4]));
        let bits = [0x3c00u16, 0x2e66, 0x211f, 0x1419];
        let f = Tensor::f16(
            vec![1, 4],
            bits.iter().map(|&b| half::f16::from_bits(b)).collect(),
        );
        let f = g.weight("f", f);
        let t32 = g.add(Op::Precision { fp32: true }, &[t], "t32").unwrap();
        let a = g.add(Op::Binary(Binary::Mul), &[t32, f], "a").unwrap();
        let s = g.add(Op::Unary(Unary::Sin), &[a], "s").unwrap();
        let s16 = g.add(Op::Precision { fp32: false }, &[s], "s16").unwrap();
        let u = g.add(Op::Binary(Binary::Mul), &[x, f], "u").unwrap();
        let y = g.add(Op::Binary(Binary::Add), &[s16, u], "y").unwrap();
        g.set_output("y", y);
        let h = fp16_io(g).unwrap();
        verify(&h).unwrap();
        let full = find(&h, "f_fp32");
        let Op::Const(ConstData::Half(t)) = &full.op else {
            panic!("{:?}", full.op)
        };
        assert_eq!(full.ty.dtype, DType::F32);
        let stored = |t: &Tensor| -> Vec<u16> {
            match &t.data {
                crate::tensor::TensorData::F16(v) => v.iter().map(|x| x.to_bits()).collect(),
                d => panic!("{d:?}"),
            }
        };
        assert_eq!(stored(t), bits);
        let Op::Const(ConstData::Dense(t)) = &find(&h, "f").op else {
            panic!()
        };
        assert_eq!(stored(t), bits);
    }

    /// Only in the region: a constant no fp16 op uses keeps its name, in fp32.
    #[test]
    fn a_region_only_constant_keeps_its_name() {
        let text = REGION.replace("mul(%x, %f)", "mul(%x, %x)");
        let h = fp16_io(crate::ir::parse::parse(&text).unwrap()).unwrap();
        assert_eq!(find(&h, "f").ty.dtype, DType::F32);
        assert!(!print(&h).contains("f_fp32"), "{}", print(&h));
    }

    #[test]
    fn mixing_fp16_and_fp32_inputs_names_the_node() {
        // The region is never closed: `y` adds fp32 `e` to fp16 `uu`.
        let text = REGION.replace("precision(%e) fp32=false", "relu(%e)");
        let err = fp16_io(crate::ir::parse::parse(&text).unwrap()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("node y (add): mixes fp16 input uu and fp32 input h"),
            "{msg}"
        );
    }

    /// With fp32 inputs the region reads the input as given (no round trip through fp16), and
    /// an fp32 result leaves as is; with fp16 outputs it is cast.
    #[test]
    fn regions_at_the_boundary() {
        let text = "graph t {
  %t: fp32[2] = input(\"t\")
  %t32: fp32[2] = precision(%t) fp32=true
  %s: fp32[2] = sin(%t32)
  return y=%s
}
";
        let g = crate::ir::parse::parse(text).unwrap();
        let h = CastFp16 {
            fp16_inputs: false,
            fp16_outputs: false,
        }
        .run(g.clone())
        .unwrap();
        verify(&h).unwrap();
        let out = print(&h);
        assert!(
            out.contains("%s: fp32[2] = sin(%t)\n  return y=%s"),
            "{out}"
        );
        let h = fp16_io(g).unwrap();
        verify(&h).unwrap();
        let out = print(&h);
        assert!(
            out.contains("%s_fp16: fp16[2] = cast(%s) dtype=fp16"),
            "{out}"
        );
        assert!(out.contains("return y=%s_fp16"), "{out}");
    }

    /// The region is worth it: at t = 999, fp16's `t · freq` is off by up to 0.25 rad (its
    /// spacing there is 0.5), and the frequencies themselves are rounded. The reference is f64
    /// on the constant's f32 values.
    #[test]
    fn the_region_is_more_accurate_than_fp16() {
        let t = Array::new(vec![2, 1], vec![999.0, 517.0]);
        let x = Array::new(vec![2, 4], vec![0.0; 8]);
        let inputs = BTreeMap::from([("t".to_string(), t), ("x".to_string(), x)]);
        let freqs = [1.0f32, 0.94406086, 0.8912509, 0.84139514].map(f64::from);
        let err = |g: Graph| {
            let h = fp16_io(g).unwrap();
            let y = &crate::ir::eval::evaluate(&h, &inputs).unwrap()["y"];
            let mut worst = 0f64;
            for (b, t) in [999.0f64, 517.0].into_iter().enumerate() {
                for (k, f) in freqs.iter().enumerate() {
                    let a = t * f;
                    let (s, c) = (y.data[b * 8 + k], y.data[b * 8 + 4 + k]);
                    worst = worst.max((f64::from(s) - a.sin()).abs());
                    worst = worst.max((f64::from(c) - a.cos()).abs());
                }
            }
            worst
        };
        let (fenced, plain) = (err(region()), err(region_without_fences()));
        // fp32 inside, one rounding to fp16 at the end: half an fp16 ulp of values up to 1.
        assert!(fenced < 1e-3, "fenced: {fenced}");
        assert!(plain > 0.1, "fp16 throughout: {plain}");
    }
}
