//! Splitting a graph in two at a position in its node order, for models too large to map as one
//! (Apple's Stable Diffusion package loads a UNet as `UnetChunk1` + `UnetChunk2`).
//!
//! The ops before the cut form chunk 1, the ops from the cut on chunk 2. Every value an op of
//! chunk 1 computes and something after the cut reads (an op or a model output) crosses: it is an
//! output of chunk 1 and an input of chunk 2 under one feature name, with the same type. Graph
//! inputs and constants are not placed by position but by use: each chunk takes the model inputs
//! its ops read (under their own names) and holds the constants they read. Chunk 2's outputs are
//! the model's, by name and in order. Ops keep their relative order, so evaluating chunk 1 and
//! then chunk 2 computes exactly what the whole graph computes.
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

/// The two halves of a graph cut where the weight bytes before the cut are closest to half.
pub fn split_in_two(g: &Graph) -> Result<[Graph; 2], IrError> {
    let cut = best_cut(g)?;
    split_at(g, cut)
}

/// The same at a given position in the node order (for tests and for callers that choose).
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
        reason: "no op position leaves chunk 1 a graph input and only static shapes crossing"
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
