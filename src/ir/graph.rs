//! The graph: an arena of nodes in definition order, each producing one typed value.

use super::ops::{ConstData, Op};
use super::types::TensorType;
use super::IrError;
use crate::tensor::{DType, Tensor};
use std::fmt;

/// A handle to a node and to the one value it produces. Handles index the arena, so they are only
/// meaningful in the graph that made them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub(crate) u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub ty: TensorType,
    /// Unique within the graph; becomes the MIL value name.
    pub name: String,
}

/// A dataflow graph. Invariants (checked by [`super::verify`]): every input handle refers to an
/// earlier node (so arena order is a topological order and there are no cycles), stored types
/// equal re-inferred types, names are unique, and inputs/outputs name valid values.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub name: String,
    nodes: Vec<Node>,
    inputs: Vec<ValueId>,
    outputs: Vec<(String, ValueId)>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            nodes: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Declares a model input.
    pub fn input(&mut self, name: &str, ty: TensorType) -> ValueId {
        let id = self.push(Node {
            op: Op::Input {
                name: name.to_string(),
            },
            inputs: vec![],
            ty,
            name: name.to_string(),
        });
        self.inputs.push(id);
        id
    }

    pub fn constant(&mut self, name: impl Into<String>, data: Tensor) -> ValueId {
        self.constant_data(name, ConstData::Dense(data))
    }

    /// A constant in any of its forms, typed as the form says.
    pub fn constant_data(&mut self, name: impl Into<String>, data: ConstData) -> ValueId {
        let ty = data.ty();
        self.push(Node {
            op: Op::Const(data),
            inputs: vec![],
            ty,
            name: name.into(),
        })
    }

    /// A model weight still in its spill file, as an fp32 constant (see [`ConstData::Spilled`]).
    pub fn spilled_weight(
        &mut self,
        name: impl Into<String>,
        data: crate::weights::Spilled,
    ) -> ValueId {
        let dtype = DType::F32;
        self.constant_data(name, ConstData::Spilled { data, dtype })
    }

    /// A model weight as an fp32 constant: dense when stored as f32, [`ConstData::Half`] when
    /// stored as f16 (kept as it is, not widened).
    pub fn weight(&mut self, name: impl Into<String>, data: Tensor) -> ValueId {
        let data = match data.dtype() {
            DType::F16 => ConstData::Half(data),
            _ => ConstData::Dense(data),
        };
        let ty = data.ty();
        self.push(Node {
            op: Op::Const(data),
            inputs: vec![],
            ty,
            name: name.into(),
        })
    }

    /// Adds an op, inferring its type from its inputs.
    pub fn add(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        name: impl Into<String>,
    ) -> Result<ValueId, IrError> {
        let name = name.into();
        let types: Vec<&TensorType> = inputs
            .iter()
            .map(|&v| {
                self.nodes
                    .get(v.index())
                    .map(|n| &n.ty)
                    .ok_or(IrError::Dangling {
                        node: name.clone(),
                        value: v,
                    })
            })
            .collect::<Result<_, _>>()?;
        let ty = op.infer(&types).map_err(|reason| IrError::Type {
            node: name.clone(),
            op: op.name(),
            reason,
        })?;
        Ok(self.push(Node {
            op,
            inputs: inputs.to_vec(),
            ty,
            name,
        }))
    }

    /// Adds a node whose type the caller vouches for (passes copying nodes between graphs); the
    /// verifier re-infers it.
    pub fn push(&mut self, node: Node) -> ValueId {
        let id = ValueId(self.nodes.len() as u32);
        if let Op::Input { .. } = node.op {
            if !self.inputs.contains(&id) {
                self.inputs.push(id);
            }
        }
        self.nodes.push(node);
        id
    }

    pub fn set_output(&mut self, name: &str, v: ValueId) {
        self.outputs.push((name.to_string(), v));
    }

    pub fn node(&self, v: ValueId) -> &Node {
        &self.nodes[v.index()]
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.nodes[v.index()].ty
    }

    /// Nodes in definition (topological) order.
    pub fn nodes(&self) -> impl Iterator<Item = (ValueId, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (ValueId(i as u32), n))
    }

    /// The nodes in definition order, indexed by [`ValueId::index`].
    pub fn node_slice(&self) -> &[Node] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn inputs(&self) -> &[ValueId] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[(String, ValueId)] {
        &self.outputs
    }

    /// Lets verifier tests break the input registry, which `push` otherwise keeps in step.
    #[cfg(test)]
    pub(crate) fn inputs_mut(&mut self) -> &mut Vec<ValueId> {
        &mut self.inputs
    }

    /// A graph from parts taken with [`Graph::into_parts`] and changed in place (handles kept).
    pub fn from_parts(name: String, nodes: Vec<Node>, outputs: Vec<(String, ValueId)>) -> Graph {
        let mut g = Graph::new(name);
        for n in nodes {
            g.push(n);
        }
        for (n, v) in outputs {
            g.set_output(&n, v);
        }
        g
    }

    /// Consumes the graph into its parts, for passes that rebuild it.
    pub fn into_parts(self) -> (String, Vec<Node>, Vec<(String, ValueId)>) {
        (self.name, self.nodes, self.outputs)
    }

    /// How many times each value is used (as an op input or a graph output).
    pub fn use_counts(&self) -> Vec<usize> {
        let mut uses = vec![0; self.nodes.len()];
        for n in &self.nodes {
            for v in &n.inputs {
                uses[v.index()] += 1;
            }
        }
        for (_, v) in &self.outputs {
            uses[v.index()] += 1;
        }
        uses
    }

    /// A name not yet used in the graph, derived from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        let taken = |s: &str| self.nodes.iter().any(|n| n.name == s);
        if !taken(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|s| !taken(s))
            .expect("unbounded")
    }
}

/// Rebuilds a graph node by node: the helper every pass uses. `map` translates handles of the old
/// graph into the new one.
pub struct Rebuilder {
    pub graph: Graph,
    map: Vec<Option<ValueId>>,
}

impl Rebuilder {
    pub fn new(name: String, old_len: usize) -> Rebuilder {
        Rebuilder {
            graph: Graph::new(name),
            map: vec![None; old_len],
        }
    }

    /// The new handle of an old value (panics if the old value was dropped while still used: a
    /// pass bug).
    pub fn get(&self, old: ValueId) -> ValueId {
        self.map[old.index()].unwrap_or_else(|| panic!("value {old} used after being dropped"))
    }

    pub fn set(&mut self, old: ValueId, new: ValueId) {
        self.map[old.index()] = Some(new);
    }

    /// Copies `node` (from the old graph, handle `old`) with its inputs remapped.
    pub fn copy(&mut self, old: ValueId, mut node: Node) -> ValueId {
        node.inputs = node.inputs.iter().map(|&v| self.get(v)).collect();
        let new = self.graph.push(node);
        self.set(old, new);
        new
    }

    /// Like [`Rebuilder::finish`], letting `f` put ops in front of each output (a cast, a
    /// transpose) and return the value the output should take.
    pub fn finish_with(
        mut self,
        outputs: &[(String, ValueId)],
        mut f: impl FnMut(&mut Graph, ValueId) -> Result<ValueId, IrError>,
    ) -> Result<Graph, IrError> {
        let mapped: Vec<(String, ValueId)> = outputs
            .iter()
            .map(|(n, v)| (n.clone(), self.get(*v)))
            .collect();
        for (name, v) in mapped {
            let out = f(&mut self.graph, v)?;
            self.graph.set_output(&name, out);
        }
        Ok(self.graph)
    }

    pub fn finish(mut self, outputs: &[(String, ValueId)]) -> Graph {
        for (name, v) in outputs {
            let nv = self.get(*v);
            self.graph.set_output(name, nv);
        }
        self.graph
    }
}
