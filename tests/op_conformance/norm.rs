//! Cases for normalisations and reductions: group norm, layer norm, reduce mean, softmax.

use crate::prelude::*;

pub(crate) fn gn_pass() -> Box<dyn Pass> {
    Box::new(LowerGroupNorm)
}

/// A normalization's input around `offset` and its constant gamma and beta along `axis`. An
/// offset mean: a one-pass variance would lose the digits these cases check.
pub(crate) fn norm_operands(
    r: &mut Rng,
    spec: &[&str],
    sizes: &[(&str, usize)],
    offset: f64,
    axis: usize,
) -> [Operand; 3] {
    let range = (offset - 3.0, offset + 3.0);
    let o = operand(r, spec, sizes, range, DType::F32, false);
    let c = o.value.shape[axis].to_string();
    let gamma = operand(r, &[&c], &[], (-2.0, 2.0), DType::F32, true);
    let beta = operand(r, &[&c], &[], (-1.0, 1.0), DType::F32, true);
    [o, gamma, beta]
}

pub(crate) fn group_norm_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(usize, f32, Spec, Sizes, f64); 3] = [
        (4, 1e-5, &["1", "8", "5", "7"], &[], 20.0),
        (2, 1e-3, &["2", "6", "3", "4"], &[], 0.0),
        (3, 1e-5, &["1", "6", "H", "W"], &[("H", 4), ("W", 6)], 0.0),
    ];
    configs
        .into_iter()
        .map(|(groups, eps, spec, sizes, offset)| {
            let [o, gamma, beta] = norm_operands(r, spec, sizes, offset, 1);
            let want = group_norm_ref(&o.value, &gamma.value, &beta.value, groups, eps as f64);
            Case::new(
                format!("group_norm {groups} groups {spec:?}"),
                Op::GroupNorm {
                    groups,
                    epsilon: eps,
                },
                vec![o, gamma, beta],
                want,
                2e-5,
            )
            .sizes(sizes)
            // MIL has no group norm: the pipeline lowers it to primitives first.
            .lowering(Lowering::Pass(gn_pass, Target::Ios16))
        })
        .collect()
}

pub(crate) fn reduce_mean_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, Vec<usize>, bool, Sizes); 5] = [
        (&["1", "3", "4", "5"], vec![2, 3], true, &[]),
        (&["2", "3", "4"], vec![1], false, &[]),
        (&["2", "3", "4"], vec![0, 2], false, &[]),
        // Every axis, not kept: a rank-0 result.
        (&["3", "2"], vec![0, 1], false, &[]),
        (
            &["1", "2", "H", "W"],
            vec![2, 3],
            true,
            &[("H", 3), ("W", 4)],
        ),
    ];
    configs
        .into_iter()
        .map(|(spec, axes, keep, sizes)| {
            let o = x(r, spec, sizes);
            let want = reduce_mean_ref(&o.value, &axes, keep);
            Case::new(
                format!("reduce_mean {spec:?} axes {axes:?} keep {keep}"),
                Op::ReduceMean {
                    axes,
                    keep_dims: keep,
                },
                vec![o],
                want,
                1e-6,
            )
            .sizes(sizes)
        })
        .collect()
}

pub(crate) fn softmax_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, usize, Sizes); 4] = [
        (&["2", "3", "5"], 2, &[]),
        (&["2", "3", "5"], 1, &[]),
        (&["4", "3"], 0, &[]),
        (&["1", "H", "6"], 2, &[("H", 3)]),
    ];
    configs
        .into_iter()
        .map(|(spec, axis, sizes)| {
            // Large logits: a softmax without the max subtraction overflows here.
            let o = operand(r, spec, sizes, (-60.0, 90.0), DType::F32, false);
            let want = softmax_ref(&o.value, axis);
            Case::new(
                format!("softmax {spec:?} axis {axis}"),
                Op::Softmax { axis },
                vec![o],
                want,
                1e-5,
            )
            .sizes(sizes)
        })
        .collect()
}

pub(crate) fn layer_norm_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(Spec, usize, f32, Sizes, f64); 5] = [
        (&["1", "5", "16"], 2, 1e-5, &[], 0.0),
        // An offset mean: a one-pass variance would lose the digits this case checks.
        (&["2", "3", "8"], 2, 1e-3, &[], 30.0),
        (&["1", "H", "6"], 2, 1e-5, &[("H", 4)], 0.0),
        // The channels of the Neural Engine's [1, D, 1, S] transformer layout.
        (&["1", "6", "1", "5"], 1, 1e-5, &[], 0.0),
        (&["1", "4", "1", "S"], 1, 1e-5, &[("S", 3)], 10.0),
    ];
    configs
        .into_iter()
        .map(|(spec, axis, eps, sizes, offset)| {
            let [o, gamma, beta] = norm_operands(r, spec, sizes, offset, axis);
            let d = o.value.shape[axis];
            let (xv, g, b) = (&o.value, &gamma.value, &beta.value);
            let stride: usize = xv.shape[axis + 1..].iter().product();
            let want = elementwise(xv.shape.clone(), |idx| {
                let j = idx[axis];
                let first = ravel(idx, &xv.shape) - j * stride;
                let vals: Vec<f64> = (0..d).map(|k| xv.data[first + k * stride] as f64).collect();
                let mean = vals.iter().sum::<f64>() / d as f64;
                let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
                (vals[j] - mean) / (var + eps as f64).sqrt() * g.data[j] as f64 + b.data[j] as f64
            });
            Case::new(
                format!("layer_norm {spec:?} axis {axis} epsilon {eps}"),
                Op::LayerNorm { axis, epsilon: eps },
                vec![o, gamma, beta],
                want,
                2e-5,
            )
            .sizes(sizes)
        })
        .collect()
}
