//! The layers that multiply their input by a constant weight, in the one form output-aware
//! compression works in: `rows` outputs, each the dot product of a row of `dim` weights with a
//! `dim`-long "patch" of the input.
//!
//! - A conv (`[O, I/groups, kh, kw]` weights): a row per output channel, a patch per output
//!   position (the receptive field, columns `(c, ky, kx)` as the weight stores them).
//! - A matmul by a constant matrix (the `standard` transformer layout's linear layers,
//!   `x · Wᵀ`): a row per output feature, a patch per token (the input's feature vector).
//!   Either operand may be the constant and either may be transposed; when the weight is
//!   stored `[dim, rows]` ([`WeightedLayer::transposed`]) compression sees its transpose.
//!
//! Only weights read by that one layer qualify: compressing a shared constant for one reader's
//! inputs would misfit it for the others.

use super::{Binary, ConstData, Conv2d, Node, Op, ValueId};

/// How a layer's patches are laid out in its input.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// A conv; `kernel` = `[kh, kw]`.
    Conv { conv: Conv2d, kernel: [usize; 2] },
    /// A matmul: the `dim` features of a patch lie along the input's last axis
    /// (`features_last`) or its second-to-last; the `rows` outputs along the result's last axis
    /// (`outputs_last`: the weight is the right operand) or its second-to-last.
    Linear {
        features_last: bool,
        outputs_last: bool,
    },
}

/// One layer whose weight is a dense constant read by it alone.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightedLayer {
    /// The conv or matmul.
    pub node: ValueId,
    pub weight: ValueId,
    /// The activation it multiplies.
    pub input: ValueId,
    pub rows: usize,
    pub dim: usize,
    pub kind: Kind,
    /// The weight is stored `[dim, rows]`: compression works on its transpose.
    pub transposed: bool,
}

impl WeightedLayer {
    /// Every such layer of `nodes` (a graph's nodes in order, with its use counts).
    pub fn find(nodes: &[Node], uses: &[usize]) -> Vec<WeightedLayer> {
        (0..nodes.len())
            .filter_map(|i| WeightedLayer::at(nodes, uses, i))
            .collect()
    }

    /// Node `i` as a weighted layer, if it is one.
    fn at(nodes: &[Node], uses: &[usize], i: usize) -> Option<WeightedLayer> {
        let n = &nodes[i];
        let node = ValueId(u32::try_from(i).ok()?);
        let sole_constant = |v: ValueId| -> Option<Vec<usize>> {
            let c = nodes.get(v.index())?;
            let dense = matches!(
                c.op,
                Op::Const(ConstData::Dense(_) | ConstData::Half(_) | ConstData::Spilled { .. })
            );
            (dense && uses.get(v.index()) == Some(&1))
                .then(|| c.ty.known_shape())
                .flatten()
        };
        let layer = match &n.op {
            Op::Conv2d(conv) => {
                let (&x, &w) = (n.inputs.first()?, n.inputs.get(1)?);
                let &[o, i, kh, kw] = sole_constant(w)?.as_slice() else {
                    return None;
                };
                WeightedLayer {
                    node,
                    weight: w,
                    input: x,
                    rows: o,
                    dim: i.checked_mul(kh)?.checked_mul(kw)?,
                    kind: Kind::Conv {
                        conv: conv.clone(),
                        kernel: [kh, kw],
                    },
                    transposed: false,
                }
            }
            Op::MatMul {
                transpose_x,
                transpose_y,
            } => {
                let (&a, &b) = (n.inputs.first()?, n.inputs.get(1)?);
                let constant = |v: ValueId| matches!(nodes.get(v.index()), Some(c) if matches!(c.op, Op::Const(_)));
                // Both constant: folding's business, not a layer with inputs.
                let (weight, input, outputs_last) = match (constant(a), constant(b)) {
                    (false, true) => (b, a, true),
                    (true, false) => (a, b, false),
                    _ => return None,
                };
                let &[s0, s1] = sole_constant(weight)?.as_slice() else {
                    return None;
                };
                // x [M, K] · y [K, N]: the right operand stores [K = dim, N = rows] unless
                // transposed; the left one [M = rows, K = dim] unless transposed.
                let (transposed, features_last) = match outputs_last {
                    true => (!transpose_y, !transpose_x),
                    false => (*transpose_x, *transpose_y),
                };
                let (rows, dim) = if transposed { (s1, s0) } else { (s0, s1) };
                WeightedLayer {
                    node,
                    weight,
                    input,
                    rows,
                    dim,
                    kind: Kind::Linear {
                        features_last,
                        outputs_last,
                    },
                    transposed,
                }
            }
            _ => return None,
        };
        (layer.rows > 0 && layer.dim > 0).then_some(layer)
    }

    /// The conv's groups (row `o` reads the input channels of group `o / (rows / groups)`).
    pub fn groups(&self) -> usize {
        match &self.kind {
            Kind::Conv { conv, .. } => conv.groups,
            Kind::Linear { .. } => 1,
        }
    }

    /// Patch columns per input channel (kh × kw; 1 for a matmul).
    pub fn kernel_area(&self) -> usize {
        match &self.kind {
            Kind::Conv { kernel, .. } => kernel[0] * kernel[1],
            Kind::Linear { .. } => 1,
        }
    }

    /// The index of the constant that adds one value per row to the layer's output, when it is
    /// a dense constant nothing else reads: a conv's bias input, or for a matmul read only by an
    /// `add`, that add's other operand when its shape is `rows` along the output axis and 1
    /// elsewhere (so it neither broadcasts the result nor varies across patches).
    pub fn bias(&self, nodes: &[Node], uses: &[usize]) -> Option<usize> {
        let sole_dense = |v: ValueId| {
            let c = nodes.get(v.index())?;
            let dense = matches!(
                c.op,
                Op::Const(ConstData::Dense(_) | ConstData::Half(_) | ConstData::Spilled { .. })
            );
            (dense && uses.get(v.index()) == Some(&1)).then_some(c)
        };
        match &self.kind {
            Kind::Conv { .. } => {
                let b = *nodes.get(self.node.index())?.inputs.get(2)?;
                sole_dense(b).map(|_| b.index())
            }
            Kind::Linear { outputs_last, .. } => {
                if uses.get(self.node.index()) != Some(&1) {
                    return None;
                }
                let out_rank = nodes.get(self.node.index())?.ty.rank();
                let add = nodes[self.node.index() + 1..]
                    .iter()
                    .find(|n| n.inputs.contains(&self.node) && n.op == Op::Binary(Binary::Add))?;
                let &[x, y] = add.inputs.as_slice() else {
                    return None;
                };
                let b = if x == self.node { y } else { x };
                let shape = sole_dense(b)?.ty.known_shape()?;
                // Right-aligned against the output: `rows` on its output axis, 1 elsewhere.
                let axis_from_end = if *outputs_last { 1 } else { 2 };
                let at = shape.len().checked_sub(axis_from_end)?;
                let fits = shape.len() <= out_rank
                    && shape
                        .iter()
                        .enumerate()
                        .all(|(i, &s)| if i == at { s == self.rows } else { s == 1 });
                fits.then_some(b.index())
            }
        }
    }

    /// The weight in `[rows, dim]` order from its stored order (`rows · dim` values).
    pub fn to_rows<T: Copy>(&self, stored: &[T]) -> Vec<T> {
        match self.transposed {
            true => crate::tensor::transpose(stored, self.dim, self.rows),
            false => stored.to_vec(),
        }
    }

    /// The weight in its stored order from `[rows, dim]` order (`rows · dim` values).
    pub fn to_stored<T: Copy>(&self, rows: &[T]) -> Vec<T> {
        match self.transposed {
            true => crate::tensor::transpose(rows, self.rows, self.dim),
            false => rows.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Graph, TensorType};
    use crate::tensor::{DType, Tensor};

    fn layers(g: &Graph) -> Vec<WeightedLayer> {
        WeightedLayer::find(g.node_slice(), &g.use_counts())
    }

    /// Every operand order and transpose flag reads the weight as `[rows = outputs, dim =
    /// inputs]`, with the stored transpose when it is not, and the bias only where it adds one
    /// value per output along the output axis.
    #[test]
    fn matmul_weights_in_rows_by_dim_form() {
        // (weight shape, weight first, transpose_x, transpose_y) -> (transposed, features_last,
        // outputs_last); the activation is [1, 5, 3] (3 features) or [1, 3, 5].
        let cases = [
            ([4, 3], false, false, true, false, true, true),
            ([3, 4], false, false, false, true, true, true),
            ([3, 4], false, true, false, true, false, true),
            ([4, 3], true, false, false, false, false, false),
            ([3, 4], true, true, true, true, true, false),
        ];
        for (ws, first, tx, ty, transposed, features_last, outputs_last) in cases {
            let mut g = Graph::new("t");
            let xs = if features_last { [1, 5, 3] } else { [1, 3, 5] };
            let x = g.input("x", TensorType::known(DType::F32, &xs));
            let w = g.constant(
                "w",
                Tensor::f32(ws.to_vec(), (0..12).map(|v| v as f32).collect()),
            );
            let op = Op::MatMul {
                transpose_x: tx,
                transpose_y: ty,
            };
            let ins = if first { [w, x] } else { [x, w] };
            let y = g.add(op, &ins, "mm").unwrap();
            let bshape = if outputs_last { vec![4] } else { vec![4, 1] };
            let b = g.constant("b", Tensor::f32(bshape, vec![0.0; 4]));
            let z = g.add(Op::Binary(Binary::Add), &[b, y], "linear").unwrap();
            g.set_output("z", z);
            let found = layers(&g);
            assert_eq!(found.len(), 1, "{ws:?} {first} {tx} {ty}");
            let l = &found[0];
            assert_eq!((l.rows, l.dim, l.transposed), (4, 3, transposed));
            assert_eq!(
                l.kind,
                Kind::Linear {
                    features_last,
                    outputs_last
                }
            );
            assert_eq!(l.bias(g.node_slice(), &g.use_counts()), Some(b.index()));
            let stored: Vec<u16> = (0..12).collect();
            let rows = l.to_rows(&stored);
            // Row o, column j is the weight of input j in output o, wherever it is stored.
            let at = |o: usize, j: usize| if transposed { j * 4 + o } else { o * 3 + j };
            for o in 0..4 {
                for j in 0..3 {
                    assert_eq!(usize::from(rows[o * 3 + j]), at(o, j));
                }
            }
            assert_eq!(l.to_stored(&rows), stored);
        }
    }

    /// A weight read twice, a bias that varies across tokens, and a matmul read by more than
    /// its add are left alone (no layer, no bias).
    #[test]
    fn shared_weights_and_other_biases_are_not_taken() {
        let mm = Op::MatMul {
            transpose_x: false,
            transpose_y: true,
        };
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 5, 3]));
        let w = g.constant("w", Tensor::f32(vec![4, 3], vec![0.5; 12]));
        let y1 = g.add(mm.clone(), &[x, w], "a").unwrap();
        let y2 = g.add(mm.clone(), &[x, w], "b").unwrap();
        let s = g.add(Op::Binary(Binary::Add), &[y1, y2], "s").unwrap();
        g.set_output("s", s);
        assert!(layers(&g).is_empty());

        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 5, 3]));
        let w = g.constant("w", Tensor::f32(vec![4, 3], vec![0.5; 12]));
        let y = g.add(mm.clone(), &[x, w], "mm").unwrap();
        let b = g.constant("b", Tensor::f32(vec![5, 4], vec![0.0; 20]));
        let z = g.add(Op::Binary(Binary::Add), &[y, b], "z").unwrap();
        g.set_output("z", z);
        let l = layers(&g);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].bias(g.node_slice(), &g.use_counts()), None);

        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 5, 3]));
        let w = g.constant("w", Tensor::f32(vec![4, 3], vec![0.5; 12]));
        let y = g.add(mm, &[x, w], "mm").unwrap();
        let b = g.constant("b", Tensor::f32(vec![4], vec![0.0; 4]));
        let z = g.add(Op::Binary(Binary::Add), &[y, b], "z").unwrap();
        g.set_output("z", z);
        g.set_output("y", y);
        let l = layers(&g);
        assert_eq!(l[0].bias(g.node_slice(), &g.use_counts()), None);
    }
}
