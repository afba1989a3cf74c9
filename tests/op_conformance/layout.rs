//! Cases for the ops that move data: reshapes, tile, transpose, slices, splits, concat,
//! gather, argmax.

use crate::prelude::*;

pub(crate) fn reshape_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, Spec, Sizes); 3] = [
        (&["2", "3", "4"], &["6", "4"], &[]),
        (&["2", "3", "4"], &["4", "1", "6"], &[]),
        (
            &["1", "2", "H", "W"],
            &["1", "2", "H*W"],
            &[("H", 3), ("W", 5)],
        ),
    ];
    configs
        .into_iter()
        .map(|(from, to, sizes)| {
            let o = x(r, from, sizes);
            let want = Ref {
                shape: resolve(&dims(to), &bound(sizes)),
                data: f64s(&o.value),
            };
            Case::new(
                format!("reshape {from:?} to {to:?}"),
                Op::Reshape { shape: dims(to) },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

pub(crate) fn tile_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, Vec<usize>, Sizes); 3] = [
        (&["2", "3"], vec![2, 3], &[]),
        (&["1", "2", "1", "1"], vec![1, 1, 3, 1], &[]),
        (&["1", "H", "2"], vec![2, 1, 2], &[("H", 3)]),
    ];
    configs
        .into_iter()
        .map(|(spec, reps, sizes)| {
            let o = x(r, spec, sizes);
            let a = &o.value;
            let shape: Vec<usize> = a.shape.iter().zip(&reps).map(|(n, k)| n * k).collect();
            let want = elementwise(shape, |i| {
                let src: Vec<usize> = i.iter().zip(&a.shape).map(|(i, n)| i % n).collect();
                a.data[ravel(&src, &a.shape)] as f64
            });
            Case::new(
                format!("tile {spec:?} by {reps:?}"),
                Op::Tile { reps },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

pub(crate) fn transpose_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, Vec<usize>, Sizes); 3] = [
        (&["2", "3"], vec![1, 0], &[]),
        (&["2", "3", "4", "5"], vec![0, 2, 3, 1], &[]),
        (
            &["1", "3", "H", "W"],
            vec![3, 1, 0, 2],
            &[("H", 2), ("W", 4)],
        ),
    ];
    configs
        .into_iter()
        .map(|(spec, perm, sizes)| {
            let o = x(r, spec, sizes);
            let a = &o.value;
            let shape: Vec<usize> = perm.iter().map(|&p| a.shape[p]).collect();
            let want = elementwise(shape, |i| {
                let mut src = vec![0; i.len()];
                for (k, &p) in perm.iter().enumerate() {
                    src[p] = i[k];
                }
                a.data[ravel(&src, &a.shape)] as f64
            });
            Case::new(
                format!("transpose {spec:?} perm {perm:?}"),
                Op::Transpose { perm },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

/// Int32 operand of `shape` with whole values in `lo..hi` (as the evaluators carry them: f32).
pub(crate) fn int_operand(
    r: &mut Rng,
    shape: &[usize],
    lo: i32,
    hi: i32,
    constant: bool,
) -> Operand {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| (lo as f64 + (hi - lo) as f64 * r.next()).floor() as f32)
        .collect();
    Operand {
        ty: TensorType::known(DType::I32, shape),
        value: Array::new(shape.to_vec(), data),
        constant,
    }
}

pub(crate) fn gather_cases(r: &mut Rng) -> Vec<Case> {
    // (x shape, indices shape, axis, indices a constant)
    type Config = (Spec, &'static [usize], usize, bool);
    let configs: [Config; 4] = [
        // An embedding lookup: table [V, D] by ids [1, S].
        (&["11", "4"], &[1, 6], 0, false),
        // CLIP's pooling: one position of [1, S, D].
        (&["1", "7", "3"], &[1], 1, false),
        (&["2", "5", "3"], &[2, 2], 2, true),
        (&["6", "2"], &[], 0, true),
    ];
    configs
        .into_iter()
        .map(|(spec, ishape, axis, constant)| {
            let o = operand(r, spec, &[], (-2.0, 2.0), DType::F32, true);
            let n = o.value.shape[axis] as i32;
            let i = int_operand(r, ishape, 0, n, constant);
            let (xv, iv) = (&o.value, &i.value);
            let mut shape = xv.shape[..axis].to_vec();
            shape.extend(ishape);
            shape.extend(&xv.shape[axis + 1..]);
            let want = elementwise(shape, |idx| {
                let k = ishape.len();
                let pick = iv.data[ravel(&idx[axis..axis + k], ishape)] as usize;
                let mut src = idx[..axis].to_vec();
                src.push(pick);
                src.extend(&idx[axis + k..]);
                xv.data[ravel(&src, &xv.shape)] as f64
            });
            Case::new(
                format!("gather {spec:?} by {ishape:?} along {axis}"),
                Op::Gather { axis },
                vec![o, i],
                want,
                0.0,
            )
        })
        .collect()
}

pub(crate) fn argmax_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    let float: [(Spec, usize); 2] = [(&["2", "7"], 1), (&["3", "4", "5"], 0)];
    for (spec, axis) in float {
        let o = x(r, spec, &[]);
        out.push((format!("argmax {spec:?} axis {axis}"), o, axis));
    }
    // Token ids with the largest one repeated (padding with EOS): the first one counts.
    let mut ids = int_operand(r, &[1, 9], 0, 50, false);
    for j in [4, 6, 7, 8] {
        ids.value.data[j] = 60.0;
    }
    out.push(("argmax int32 ids, ties take the first".into(), ids, 1));
    out.into_iter()
        .map(|(name, o, axis)| {
            let xv = &o.value;
            let mut shape = xv.shape.clone();
            shape.remove(axis);
            let want = elementwise(shape, |idx| {
                let at = |j: usize| {
                    let mut i = idx.to_vec();
                    i.insert(axis, j);
                    xv.data[ravel(&i, &xv.shape)]
                };
                let mut best = 0;
                for j in 0..xv.shape[axis] {
                    if at(j) > at(best) {
                        best = j;
                    }
                }
                best as f64
            });
            Case::new(name, Op::ArgMax { axis }, vec![o], want, 0.0).dtype(DType::I32)
        })
        .collect()
}

pub(crate) fn slice_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, usize, usize, usize, Sizes); 4] = [
        (&["5", "3"], 0, 1, 4, &[]),
        (&["2", "6", "3"], 1, 0, 2, &[]),
        (&["2", "3", "7"], 2, 6, 7, &[]),
        (&["1", "H", "8"], 2, 3, 8, &[("H", 4)]),
    ];
    configs
        .into_iter()
        .map(|(spec, axis, begin, end, sizes)| {
            let o = x(r, spec, sizes);
            let a = &o.value;
            let mut shape = a.shape.clone();
            shape[axis] = end - begin;
            let want = elementwise(shape, |i| {
                let mut src = i.to_vec();
                src[axis] += begin;
                a.data[ravel(&src, &a.shape)] as f64
            });
            Case::new(
                format!("slice {spec:?} axis {axis} {begin}..{end}"),
                Op::Slice { axis, begin, end },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

pub(crate) fn split_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, usize, usize, usize, Sizes); 4] = [
        (&["6", "3"], 0, 3, 1, &[]),
        (&["2", "4", "3"], 1, 1, 0, &[]),
        (&["1", "4*H", "2"], 1, 4, 3, &[("H", 3)]),
        (&["1", "2", "8*H"], 2, 8, 5, &[("H", 3)]),
    ];
    configs
        .into_iter()
        .map(|(spec, axis, parts, index, sizes)| {
            let o = x(r, spec, sizes);
            let a = &o.value;
            let part = a.shape[axis] / parts;
            let mut shape = a.shape.clone();
            shape[axis] = part;
            let want = elementwise(shape, |i| {
                let mut src = i.to_vec();
                src[axis] += index * part;
                a.data[ravel(&src, &a.shape)] as f64
            });
            Case::new(
                format!("split {spec:?} axis {axis} part {index} of {parts}"),
                Op::Split { axis, parts, index },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

pub(crate) fn reshape_like_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, Spec, Sizes); 2] = [
        (&["2", "3", "4"], &["6", "4"], &[]),
        // The reference's size is only known at run time: lowered through MIL's `shape` op.
        (
            &["1", "2", "H*W"],
            &["1", "2", "H", "W"],
            &[("H", 3), ("W", 4)],
        ),
    ];
    configs
        .into_iter()
        .map(|(from, like, sizes)| {
            let o = x(r, from, sizes);
            let reference = x(r, like, sizes);
            let want = Ref {
                shape: reference.value.shape.clone(),
                data: f64s(&o.value),
            };
            Case::new(
                format!("reshape_like {from:?} like {like:?}"),
                Op::ReshapeLike,
                vec![o, reference],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

pub(crate) fn concat_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Vec<Spec>, usize, Sizes); 4] = [
        (vec![&["2", "3"]], 0, &[]),
        (vec![&["2", "3"], &["2", "1"]], 1, &[]),
        (
            vec![&["1", "2", "4"], &["1", "3", "4"], &["1", "1", "4"]],
            1,
            &[],
        ),
        (vec![&["1", "H", "2"], &["1", "H", "3"]], 2, &[("H", 3)]),
    ];
    configs
        .into_iter()
        .map(|(specs, axis, sizes)| {
            let ops: Vec<Operand> = specs.iter().map(|s| x(r, s, sizes)).collect();
            let mut shape = ops[0].value.shape.clone();
            shape[axis] = ops.iter().map(|o| o.value.shape[axis]).sum();
            let want = elementwise(shape, |i| {
                let mut at = i[axis];
                for o in &ops {
                    let n = o.value.shape[axis];
                    if at < n {
                        let mut src = i.to_vec();
                        src[axis] = at;
                        return o.value.data[ravel(&src, &o.value.shape)] as f64;
                    }
                    at -= n;
                }
                unreachable!()
            });
            Case::new(
                format!("concat {specs:?} axis {axis}"),
                Op::Concat { axis },
                ops,
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}
