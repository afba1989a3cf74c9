//! Graphviz view of the IR (petgraph's `Dot`): one node per op labelled `name: op type`, edges in
//! dataflow direction. Constants are drawn small so that the compute graph stays readable.

use super::{Graph, Op};
use petgraph::dot::{Config, Dot};
use petgraph::graph::DiGraph;

pub fn to_dot(g: &Graph) -> String {
    let mut pg: DiGraph<String, String> = DiGraph::new();
    let ids: Vec<_> = g
        .nodes()
        .map(|(_, n)| {
            let label = match &n.op {
                Op::Const(_) => format!("{}: const {}", n.name, n.ty),
                op => format!("{}: {} {}", n.name, op.name(), n.ty),
            };
            pg.add_node(label)
        })
        .collect();
    for (id, n) in g.nodes() {
        for (slot, v) in n.inputs.iter().enumerate() {
            pg.add_edge(ids[v.index()], ids[id.index()], slot.to_string());
        }
    }
    format!("{}", Dot::with_config(&pg, &[Config::EdgeNoLabel]))
}

#[cfg(test)]
mod tests {
    use crate::ir::{Binary, Unary};
    use crate::ir::{Graph, Op, TensorType};
    use crate::tensor::DType;

    #[test]
    fn every_node_and_edge_appears() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[2]));
        let r = g.add(Op::Unary(Unary::Relu), &[x], "r").unwrap();
        let y = g.add(Op::Binary(Binary::Add), &[r, x], "y").unwrap();
        g.set_output("y", y);
        let dot = super::to_dot(&g);
        assert!(dot.starts_with("digraph {"), "{dot}");
        let edges = dot
            .lines()
            .filter(|l| l.trim_start().split(" -> ").count() == 2)
            .count();
        assert_eq!(edges, 3, "{dot}");
        assert!(dot.contains("label = \"r: relu fp32[2]\""), "{dot}");
    }
}
