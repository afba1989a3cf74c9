//! Splitting a graph in two at a position in its node order, for models too large to map as one
//! (Apple's Stable Diffusion package loads a UNet as `UnetChunk1` + `UnetChunk2`).
//!
//! The ops before the cut form chunk 1, the ops from the cut on chunk 2. Every value an op of
//! chunk 1 computes and something after the cut reads (an op or a model output) crosses: it is an
//! output of chunk 1 and an input of chunk 2 under one feature name, with the same type. Graph
//! inputs and constants are not placed by position but by use: each chunk takes the model inputs
//! its ops read (under their own names) and holds the constants they read. Chunk 2's outputs are
//! the model's, by name and in order. Ops keep their relative order, so evaluating chunk 1 and
//! then chunk 2 computes exactly what the whole graph computes. Crossing values keep their type:
//! fp16 in an fp16 build (Float16 multi-arrays, iOS 16 and newer, as Apple's own chunker makes).
//! The IR evaluator, which keeps fp16-typed values at f32 precision inside a graph but rounds an
//! fp16 input, sees those rounded once more than in the whole graph; the device does not.
//!
//! Before:
//! ```text
//!   %x = input("x")   %w1 = const   %a = conv(%x, %w1)   %b = relu(%a)
//!   %w2 = const       %c = conv(%b, %w2)   %d = add(%c, %a)   return y=%d
//! ```
//! Cut at `%c`: chunk 1 reads `x`, holds `w1` and returns `a` and `b` (both read after the cut);
//! chunk 2 reads `a` and `b`, holds `w2` and returns `y`.

use super::verify::verify;
use super::{ConstData, Graph, IrError, Node, Op, ValueId};
use std::borrow::Cow;
use std::collections::HashSet;

/// The two halves of a graph cut where each holds closest to half the weight bytes (the cut of
/// [`best_cut`]).
pub fn split_in_two(g: &Graph) -> Result<[Graph; 2], IrError> {
    let cut = best_cut(g)?;
    split_at(g, cut)
}

/// The same at a given position in the node order (for tests and for callers that choose): the
/// ops before `cut` form chunk 1.
///
/// A model output an op before the cut computes crosses too, and chunk 2 returns its input
/// unchanged: valid IR, but the lowering would name one feature of chunk 2 as both an input and
/// an output. [`best_cut`] never cuts there.
pub fn split_at(g: &Graph, cut: usize) -> Result<[Graph; 2], IrError> {
    let plan = Plan::new(g, cut)?;
    plan.assemble(
        &g.name,
        g.node_slice().iter().map(Cow::Borrowed),
        g.outputs(),
    )
}

/// [`split_at`] consuming the graph: each constant moves into the half that reads it (cloned only
/// when both do), so a model's weights are in memory once, not twice.
pub fn split_at_owned(g: Graph, cut: usize) -> Result<[Graph; 2], IrError> {
    let plan = Plan::new(&g, cut)?;
    let (name, nodes, outputs) = g.into_parts();
    plan.assemble(&name, nodes.into_iter().map(Cow::Owned), &outputs)
}

/// Bytes of constant data a graph stores (what "half the weights" measures): what the lowering
/// writes for each constant, so compressed weights count at their compressed size.
pub fn weight_bytes(g: &Graph) -> u64 {
    g.nodes()
        .filter_map(|(_, n)| match &n.op {
            Op::Const(c) => Some(const_bytes(c)),
            _ => None,
        })
        .fold(0, u64::saturating_add)
}

/// The bytes one constant takes in a package. A [`ConstData::Half`] still in the graph at
/// lowering is written as fp32 (an fp16 build has made its weights dense fp16 by then).
pub fn const_bytes(c: &ConstData) -> u64 {
    let times = |n: usize, size: usize| (n as u64).saturating_mul(size as u64);
    match c {
        ConstData::Dense(t) => times(t.len(), t.dtype().byte_size()),
        ConstData::Half(t) => times(t.len(), 4),
        ConstData::Spilled { data, dtype } => times(data.len(), dtype.byte_size()),
        ConstData::Palettized(p) => {
            let bits = (p.indices.len() as u64).saturating_mul(u64::from(p.bits));
            bits.div_ceil(8)
                .saturating_add(times(p.lut.len(), p.lut.dtype().byte_size()))
        }
        ConstData::Quantized(q) => {
            use crate::compress::quantize::QuantData;
            let data = match &q.q.data {
                QuantData::Symmetric(v) => v.len() as u64,
                QuantData::Affine { data, zero_point } => {
                    (data.len() as u64).saturating_add(zero_point.len() as u64)
                }
            };
            data.saturating_add(times(q.q.scale.len(), q.dtype.byte_size()))
        }
    }
}

/// The cut [`split_in_two`] makes: among the op positions that leave chunk 1 a graph input and
/// chunk 2 every model output computed, and whose crossing values all have static shapes, the
/// one where the two halves' weight bytes are closest; ties go to fewer crossing bytes, then to
/// the earlier position. Linear in nodes and edges.
///
/// The halves are compared with each other rather than chunk 1 with half the total: a constant
/// both read counts in both, as both packages store it.
pub fn best_cut(g: &Graph) -> Result<usize, IrError> {
    verify(g)?;
    let n = g.len();
    let uses = Uses::of(g);
    let nodes = g.node_slice();
    // Indexed by position 0..=n: what starts being held or crossing there.
    let mut first_read = vec![0u64; n + 1];
    let mut last_read = vec![0u64; n + 1];
    let mut cross_start = vec![0u128; n + 2];
    let mut cross_end = vec![0u128; n + 2];
    let mut crossing = vec![0i64; n + 2];
    let mut symbolic = vec![0i64; n + 2];
    for (i, node) in nodes.iter().enumerate() {
        let Some((first, last)) = uses.span(i) else {
            continue;
        };
        match &node.op {
            Op::Const(c) => {
                let b = const_bytes(c);
                first_read[first] = first_read[first].saturating_add(b);
                last_read[last] = last_read[last].saturating_add(b);
            }
            Op::Input { .. } => {}
            // Crosses every cut p with i < p <= last.
            _ if last > i => {
                match value_bytes(node) {
                    Some(b) => {
                        cross_start[i + 1] += u128::from(b);
                        cross_end[last + 1] += u128::from(b);
                    }
                    None => {
                        symbolic[i + 1] += 1;
                        symbolic[last + 1] -= 1;
                    }
                }
                crossing[i + 1] += 1;
                crossing[last + 1] -= 1;
            }
            _ => {}
        }
    }
    // Chunk 1 must read a graph input; chunk 2 must compute every model output an op defines.
    let after_input = g
        .inputs()
        .iter()
        .filter_map(|v| uses.span(v.index()).map(|(f, _)| f))
        .min()
        .unwrap_or(n);
    let before_outputs = g
        .outputs()
        .iter()
        .filter(|(_, v)| is_op(&nodes[v.index()]))
        .map(|(_, v)| v.index())
        .min()
        .unwrap_or(n);
    let mut after: u64 = last_read.iter().fold(0, |a, &b| a.saturating_add(b));
    let (mut before, mut bytes, mut count, mut sym) = (0u64, 0u128, 0i64, 0i64);
    let mut best: Option<((u64, u128), usize)> = None;
    for p in 0..n {
        // Now `before` holds the weights read before p, `after` those read at p or later.
        bytes = bytes + cross_start[p] - cross_end[p];
        count += crossing[p];
        sym += symbolic[p];
        if p > after_input && p <= before_outputs && is_op(&nodes[p]) && count > 0 && sym == 0 {
            let key = (before.abs_diff(after), bytes);
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, p));
            }
        }
        before = before.saturating_add(first_read[p]);
        after = after.saturating_sub(last_read[p]);
    }
    best.map(|(_, p)| p).ok_or_else(|| IrError::Type {
        node: g.name.clone(),
        op: "split",
        reason: "no op position leaves chunk 1 a graph input, chunk 2 every model output and only \
                 static shapes crossing (a model built for one size has them)"
            .into(),
    })
}

/// Where each node is first and last read: by an op (its position) or a model output (position
/// `len`, after every op).
struct Uses {
    first: Vec<usize>,
    last: Vec<usize>,
}

impl Uses {
    const UNREAD: usize = usize::MAX;

    fn of(g: &Graph) -> Uses {
        let n = g.len();
        let mut u = Uses {
            first: vec![Self::UNREAD; n],
            last: vec![0; n],
        };
        let reads = g
            .nodes()
            .flat_map(|(id, node)| node.inputs.iter().map(move |v| (v.index(), id.index())))
            .chain(g.outputs().iter().map(|(_, v)| (v.index(), n)));
        for (v, at) in reads {
            u.first[v] = u.first[v].min(at);
            u.last[v] = u.last[v].max(at);
        }
        u
    }

    /// The first and last read of node `i`, if anything reads it.
    fn span(&self, i: usize) -> Option<(usize, usize)> {
        (self.first[i] != Self::UNREAD).then(|| (self.first[i], self.last[i]))
    }
}

fn is_op(node: &Node) -> bool {
    !matches!(node.op, Op::Input { .. } | Op::Const(_))
}

/// The bytes of a computed value, if its shape is static.
fn value_bytes(node: &Node) -> Option<u64> {
    let shape = node.ty.known_shape()?;
    let bytes = shape
        .iter()
        .try_fold(node.ty.dtype.byte_size() as u64, |acc, &d| {
            acc.checked_mul(d as u64)
        });
    Some(bytes.unwrap_or(u64::MAX))
}

/// A checked cut of one graph: where each node goes and the feature name of each crossing value.
struct Plan {
    cut: usize,
    uses: Uses,
    /// By node: the feature name it crosses under, if it does.
    crossing: Vec<Option<String>>,
}

impl Plan {
    fn new(g: &Graph, cut: usize) -> Result<Plan, IrError> {
        // Checked first: the analysis below indexes by the graph's handles.
        verify(g)?;
        let n = g.len();
        let refuse = |node: &str, reason: String| IrError::Type {
            node: node.to_string(),
            op: "split",
            reason,
        };
        if cut == 0 || cut >= n {
            return Err(refuse(
                &g.name,
                format!("cut position {cut} is outside 1..{n} (the graph has {n} nodes)"),
            ));
        }
        let nodes = g.node_slice();
        if !nodes[cut..].iter().any(is_op) {
            return Err(refuse(
                &g.name,
                format!("no op at or after cut position {cut}"),
            ));
        }
        let uses = Uses::of(g);
        if !g
            .inputs()
            .iter()
            .any(|v| uses.span(v.index()).is_some_and(|(first, _)| first < cut))
        {
            return Err(refuse(
                &g.name,
                format!("no op before cut position {cut} reads a graph input"),
            ));
        }
        let crosses =
            |i: usize| is_op(&nodes[i]) && uses.span(i).is_some_and(|(_, last)| last >= cut);
        let mut names = FeatureNames::new(g);
        let mut crossing = vec![None; n];
        for (i, node) in nodes.iter().enumerate().take(cut) {
            if !crosses(i) {
                continue;
            }
            if node.ty.known_shape().is_none() {
                return Err(refuse(
                    &node.name,
                    format!(
                        "crosses cut position {cut} with symbolic shape {}; split a graph built \
                         for one size",
                        node.ty
                    ),
                ));
            }
            crossing[i] = Some(names.for_value(g, ValueId(i as u32)));
        }
        if crossing.iter().all(Option::is_none) {
            return Err(refuse(
                &g.name,
                format!("nothing computed before cut position {cut} is read after it"),
            ));
        }
        Ok(Plan {
            cut,
            uses,
            crossing,
        })
    }

    /// Builds both halves from the graph's nodes (borrowed or owned), in their original order.
    ///
    /// A constant both halves read is in both: each half is a program of its own and must hold
    /// every value it reads, and constants have no identity to lose by being copied. The ones
    /// shared in practice are small (reshape targets, axes, scalars); a shared weight would be
    /// stored twice, which [`weight_bytes`] of each half shows.
    fn assemble<'a>(
        &self,
        name: &str,
        nodes: impl Iterator<Item = Cow<'a, Node>>,
        outputs: &[(String, ValueId)],
    ) -> Result<[Graph; 2], IrError> {
        let mut one = Half::new(format!("{name}_chunk1"), self.crossing.len());
        let mut two = Half::new(format!("{name}_chunk2"), self.crossing.len());
        for (i, node) in nodes.enumerate() {
            if is_op(&node) {
                if i >= self.cut {
                    two.copy(i, node.into_owned())?;
                    continue;
                }
                let ty = node.ty.clone();
                let id = one.copy(i, node.into_owned())?;
                if let Some(feature) = &self.crossing[i] {
                    one.graph.set_output(feature, id);
                    two.copy(
                        i,
                        Node {
                            op: Op::Input {
                                name: feature.clone(),
                            },
                            inputs: vec![],
                            ty,
                            name: feature.clone(),
                        },
                    )?;
                }
                continue;
            }
            let Some((first, last)) = self.uses.span(i) else {
                continue;
            };
            match (first < self.cut, last >= self.cut) {
                (true, true) => {
                    one.copy(i, node.as_ref().clone())?;
                    two.copy(i, node.into_owned())?;
                }
                (true, false) => {
                    one.copy(i, node.into_owned())?;
                }
                (false, _) => {
                    two.copy(i, node.into_owned())?;
                }
            }
        }
        for (feature, v) in outputs {
            let id = two.get(*v, feature)?;
            two.graph.set_output(feature, id);
        }
        let halves = [one.graph, two.graph];
        for h in &halves {
            verify(h)?;
        }
        Ok(halves)
    }
}

/// One half being built: the graph and where each node of the whole graph went in it.
struct Half {
    graph: Graph,
    map: Vec<Option<ValueId>>,
}

impl Half {
    fn new(name: String, len: usize) -> Half {
        Half {
            graph: Graph::new(name),
            map: vec![None; len],
        }
    }

    fn get(&self, v: ValueId, user: &str) -> Result<ValueId, IrError> {
        self.map
            .get(v.index())
            .copied()
            .flatten()
            .ok_or_else(|| IrError::Dangling {
                node: user.to_string(),
                value: v,
            })
    }

    /// Adds node `i` of the whole graph, its inputs remapped into this half.
    fn copy(&mut self, i: usize, mut node: Node) -> Result<ValueId, IrError> {
        node.inputs = node
            .inputs
            .iter()
            .map(|&v| self.get(v, &node.name))
            .collect::<Result<_, _>>()?;
        let id = self.graph.push(node);
        self.map[i] = Some(id);
        Ok(id)
    }
}

/// Feature names for crossing values: the node's own name when it is a valid feature name
/// (letters, digits, `_`, not starting with a digit: what Core ML tools accept everywhere) and no
/// other value's output name, else a sanitised one no node or output of the graph uses.
struct FeatureNames {
    taken: HashSet<String>,
}

impl FeatureNames {
    fn new(g: &Graph) -> FeatureNames {
        let taken = g
            .nodes()
            .map(|(_, n)| n.name.clone())
            .chain(g.outputs().iter().map(|(o, _)| o.clone()))
            .collect();
        FeatureNames { taken }
    }

    fn for_value(&mut self, g: &Graph, v: ValueId) -> String {
        let name = &g.node(v).name;
        let other_output = g.outputs().iter().any(|(o, w)| o == name && *w != v);
        if is_feature_name(name) && !other_output {
            return name.clone();
        }
        let mut base: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if !base.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            base.insert_str(0, "v_");
        }
        let fresh = std::iter::once(base.clone())
            .chain((1..).map(|k| format!("{base}_{k}")))
            .find(|s| !self.taken.contains(s))
            .unwrap_or(base);
        self.taken.insert(fresh.clone());
        fresh
    }
}

fn is_feature_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::eval::evaluate;
    use crate::ir::{Binary, Conv2d, Dim, Palettized, Quantized, TensorType, Unary};
    use crate::kernels::Array;
    use crate::tensor::{DType, Tensor};
    use std::collections::BTreeMap;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7 + seed * 13) % 11) as f32 / 5.0 - 1.0)
            .collect()
    }

    /// Two 3x3 convs of 144 weight bytes each around a bias both halves read; `a` skips to the
    /// end, `t` is read only at the end, and `z` is computed before `y`.
    ///
    /// ```text
    /// 0 x  1 t  2 w1  3 s  4 a=conv(x,w1)  5 b=a+s  6 c=b[..,0:2]  7 d=concat(c,c)
    /// 8 w2  9 e=conv(d,w2)  10 f=e+s  11 g=f+a  12 y=g*t          return y=%y, z=%f
    /// ```
    fn model() -> Graph {
        let mut g = Graph::new("m");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 2, 4, 4]));
        let t = g.input("t", TensorType::known(DType::F32, &[1, 2, 1, 1]));
        let w1 = g.constant("w1", Tensor::f32(vec![2, 2, 3, 3], values(36, 1)));
        let s = g.constant("s", Tensor::f32(vec![1, 2, 1, 1], vec![0.5, -0.25]));
        let conv = Op::Conv2d(Conv2d::same(3));
        let a = g.add(conv.clone(), &[x, w1], "a").unwrap();
        let b = g.add(Op::Binary(Binary::Add), &[a, s], "b").unwrap();
        let slice = Op::Slice {
            axis: 3,
            begin: 0,
            end: 2,
        };
        let c = g.add(slice, &[b], "c").unwrap();
        let d = g.add(Op::Concat { axis: 3 }, &[c, c], "d").unwrap();
        let w2 = g.constant("w2", Tensor::f32(vec![2, 2, 3, 3], values(36, 2)));
        let e = g.add(conv, &[d, w2], "e").unwrap();
        let f = g.add(Op::Binary(Binary::Add), &[e, s], "f").unwrap();
        let h = g.add(Op::Binary(Binary::Add), &[f, a], "g").unwrap();
        let y = g.add(Op::Binary(Binary::Mul), &[h, t], "y").unwrap();
        g.set_output("y", y);
        g.set_output("z", f);
        g
    }

    fn inputs() -> BTreeMap<String, Array> {
        BTreeMap::from([
            ("x".to_string(), Array::new(vec![1, 2, 4, 4], values(32, 3))),
            (
                "t".to_string(),
                Array::new(vec![1, 2, 1, 1], vec![1.5, -2.0]),
            ),
        ])
    }

    /// Chunk 1 on the model's inputs, then chunk 2 on the model's inputs and chunk 1's outputs.
    fn chained(halves: &[Graph; 2]) -> BTreeMap<String, Array> {
        let mut feed = inputs();
        feed.extend(evaluate(&halves[0], &inputs()).unwrap());
        evaluate(&halves[1], &feed).unwrap()
    }

    fn names(g: &Graph, ids: &[ValueId]) -> Vec<String> {
        ids.iter().map(|&v| g.node(v).name.clone()).collect()
    }

    fn output_names(g: &Graph) -> Vec<&str> {
        g.outputs().iter().map(|(n, _)| n.as_str()).collect()
    }

    fn consts(g: &Graph) -> Vec<&str> {
        g.nodes()
            .filter(|(_, n)| matches!(n.op, Op::Const(_)))
            .map(|(_, n)| n.name.as_str())
            .collect()
    }

    #[test]
    fn chunk_one_then_chunk_two_computes_the_whole_graph() {
        let g = model();
        let halves = split_at(&g, 7).unwrap();
        let [one, two] = &halves;
        assert_eq!(names(one, one.inputs()), ["x"]);
        assert_eq!(output_names(one), ["a", "c"]);
        assert_eq!(names(two, two.inputs()), ["t", "a", "c"]);
        assert_eq!(output_names(two), ["y", "z"]);
        for (feature, v) in one.outputs() {
            let input = two.inputs().iter().find(|&&i| two.node(i).name == *feature);
            assert_eq!(two.ty(*input.unwrap()), one.ty(*v), "{feature}");
        }
        assert_eq!(consts(one), ["w1", "s"]);
        assert_eq!(consts(two), ["s", "w2"]);
        assert_eq!(chained(&halves), evaluate(&g, &inputs()).unwrap());
        assert_eq!(split_at_owned(g.clone(), 7).unwrap(), halves);
    }

    #[test]
    fn weights_count_each_form_at_its_stored_size() {
        let g = model();
        assert_eq!(weight_bytes(&g), 144 + 8 + 144);
        let [one, two] = split_at(&g, 7).unwrap();
        assert_eq!((weight_bytes(&one), weight_bytes(&two)), (152, 152));
        let half = Tensor::f32(vec![4], vec![1.0; 4]).cast(DType::F16);
        assert_eq!(const_bytes(&ConstData::Dense(half.clone())), 8);
        // Lowered as fp32.
        assert_eq!(const_bytes(&ConstData::Half(half)), 16);
        let lut = Tensor::f32(vec![2, 16], vec![0.0; 32]).cast(DType::F16);
        let p = ConstData::Palettized(Palettized {
            shape: vec![4, 9],
            bits: 3,
            group_size: 2,
            lut,
            indices: vec![1; 36],
        });
        // 36 3-bit indices in 14 bytes, two 16-entry fp16 tables.
        assert_eq!(const_bytes(&p), 14 + 64);
        let q = crate::compress::quantize::Quantized {
            shape: vec![4, 9],
            scale_shape: vec![4, 1],
            scale: vec![1.0; 4],
            data: crate::compress::quantize::QuantData::Affine {
                data: vec![0; 36],
                zero_point: vec![0; 4],
            },
        };
        let q = ConstData::Quantized(Quantized {
            q,
            dtype: DType::F32,
        });
        assert_eq!(const_bytes(&q), 36 + 4 + 16);
    }

    #[test]
    fn the_chosen_cut_balances_weights_then_crosses_least() {
        // Positions 6, 7 and 9 all leave 152 bytes on each side; 7 crosses a and the 64-byte
        // slice c, 6 and 9 a full-size value instead of c. 10 would leave w2 in chunk 1.
        let g = model();
        assert_eq!(best_cut(&g).unwrap(), 7);
        assert_eq!(split_in_two(&g).unwrap(), split_at(&g, 7).unwrap());
    }

    #[test]
    fn a_model_output_computed_before_the_cut_crosses() {
        let mut g = model();
        let b = g.node_slice().iter().position(|n| n.name == "b").unwrap();
        g.set_output("early", ValueId(b as u32));
        let halves = split_at(&g, 7).unwrap();
        assert_eq!(output_names(&halves[0]), ["a", "b", "c"]);
        assert_eq!(output_names(&halves[1]), ["y", "z", "early"]);
        assert_eq!(chained(&halves), evaluate(&g, &inputs()).unwrap());
        // The search keeps every model output in chunk 2: b (position 5) is the only choice.
        assert_eq!(best_cut(&g).unwrap(), b);
    }

    #[test]
    fn crossing_names_are_valid_and_unique_feature_names() {
        let (name, mut nodes, outputs) = model().into_parts();
        nodes[4].name = "down.0/conv".into();
        nodes[6].name = "down_0_conv".into();
        let g = Graph::from_parts(name, nodes, outputs);
        let [one, two] = split_at(&g, 7).unwrap();
        assert_eq!(output_names(&one), ["down_0_conv_1", "down_0_conv"]);
        assert_eq!(
            names(&two, two.inputs()),
            ["t", "down_0_conv_1", "down_0_conv"]
        );
        assert!(is_feature_name("_a1") && !is_feature_name("1a") && !is_feature_name("a.b"));
    }

    #[test]
    fn bad_cuts_are_refused_in_one_line() {
        let g = model();
        let err = |cut| split_at(&g, cut).unwrap_err().to_string();
        assert_eq!(
            err(0),
            "node m (split): cut position 0 is outside 1..13 (the graph has 13 nodes)"
        );
        assert!(err(13).contains("outside 1..13"), "{}", err(13));
        assert!(err(4).contains("no op before cut position 4 reads a graph input"));
        // A trailing constant: nothing to compute after the cut.
        let mut g2 = model();
        g2.constant("unused", Tensor::f32(vec![1], vec![0.0]));
        assert_eq!(
            split_at(&g2, 13).unwrap_err().to_string(),
            "node m (split): no op at or after cut position 13"
        );
        for e in [err(0), err(4)] {
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn symbolic_shapes_may_not_cross() {
        let mut g = Graph::new("s");
        let ty = TensorType::new(DType::F32, vec![Dim::Known(2), Dim::sym("H")]);
        let x = g.input("x", ty);
        let a = g.add(Op::Unary(Unary::Relu), &[x], "a").unwrap();
        let b = g.add(Op::Unary(Unary::Relu), &[a], "b").unwrap();
        g.set_output("y", b);
        assert_eq!(
            split_at(&g, 2).unwrap_err().to_string(),
            "node a (split): crosses cut position 2 with symbolic shape fp32[2,H]; split a graph \
             built for one size"
        );
        assert!(best_cut(&g).is_err());
    }
}
