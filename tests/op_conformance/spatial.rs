//! Cases for the spatial ops: convolution, nearest upsampling, pixel shuffle.

use crate::prelude::*;

pub(crate) fn conv_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    let p = |s: usize, pads: [usize; 4], d: usize, g: usize| Conv2d {
        strides: [s, s],
        pads,
        dilations: [d, d],
        groups: g,
    };
    // (name, x, weight shape, attributes, with bias, sizes)
    type Config = (&'static str, Spec, [usize; 4], Conv2d, bool, Sizes);
    let configs: [Config; 6] = [
        (
            "same 3x3 bias",
            &["1", "3", "5", "6"],
            [4, 3, 3, 3],
            Conv2d::same(3),
            true,
            &[],
        ),
        (
            "1x1 batch 2",
            &["2", "4", "3", "3"],
            [5, 4, 1, 1],
            Conv2d::same(1),
            true,
            &[],
        ),
        (
            "stride 2 asymmetric pads",
            &["1", "2", "7", "6"],
            [3, 2, 3, 3],
            p(2, [0, 1, 1, 0], 1, 1),
            false,
            &[],
        ),
        (
            "dilation 2",
            &["1", "2", "7", "7"],
            [2, 2, 3, 3],
            p(1, [2, 2, 2, 2], 2, 1),
            true,
            &[],
        ),
        (
            "groups 2",
            &["1", "4", "5", "5"],
            [6, 2, 3, 3],
            p(1, [1, 1, 1, 1], 1, 2),
            true,
            &[],
        ),
        (
            "symbolic stride 2",
            &["1", "2", "H", "W"],
            [3, 2, 3, 3],
            p(2, [1, 1, 1, 1], 1, 1),
            true,
            &[("H", 6), ("W", 8)],
        ),
    ];
    for (name, xs, ws, params, bias, sizes) in configs {
        let xo = x(r, xs, sizes);
        let ws: Vec<String> = ws.iter().map(|n| n.to_string()).collect();
        let ws: Vec<&str> = ws.iter().map(String::as_str).collect();
        let wo = w(r, &ws);
        let cout = wo.value.shape[0].to_string();
        let bo = bias.then(|| w(r, &[&cout]));
        let want = conv_ref(&xo.value, &wo.value, bo.as_ref().map(|b| &b.value), &params);
        let mut operands = vec![xo, wo];
        operands.extend(bo);
        out.push(
            Case::new(
                format!("conv2d {name}"),
                Op::Conv2d(params),
                operands,
                want,
                1e-5,
            )
            .sizes(sizes),
        );
    }
    out
}

pub(crate) fn upsample_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(usize, Spec, Sizes); 2] = [
        (2, &["1", "2", "3", "4"], &[]),
        (3, &["2", "1", "H", "W"], &[("H", 2), ("W", 3)]),
    ];
    configs
        .into_iter()
        .map(|(s, spec, sizes)| {
            let o = x(r, spec, sizes);
            let a = &o.value;
            let shape = vec![a.shape[0], a.shape[1], a.shape[2] * s, a.shape[3] * s];
            let want = elementwise(shape, |i| {
                a.data[ravel(&[i[0], i[1], i[2] / s, i[3] / s], &a.shape)] as f64
            });
            Case::new(
                format!("upsample x{s}"),
                Op::Upsample { scale: s },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

pub(crate) fn pixel_shuffle_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(usize, Spec, Sizes); 3] = [
        (2, &["1", "8", "2", "3"], &[]),
        (3, &["2", "9", "2", "2"], &[]),
        (2, &["1", "4", "H", "W"], &[("H", 3), ("W", 2)]),
    ];
    configs
        .into_iter()
        .map(|(f, spec, sizes)| {
            let o = x(r, spec, sizes);
            let a = &o.value;
            let shape = vec![
                a.shape[0],
                a.shape[1] / (f * f),
                a.shape[2] * f,
                a.shape[3] * f,
            ];
            // out[n, c, h*r + i, w*r + j] = in[n, c*r*r + i*r + j, h, w]
            let want = elementwise(shape, |o| {
                let (h, i, w, j) = (o[2] / f, o[2] % f, o[3] / f, o[3] % f);
                a.data[ravel(&[o[0], o[1] * f * f + i * f + j, h, w], &a.shape)] as f64
            });
            Case::new(
                format!("pixel_shuffle x{f} {spec:?}"),
                Op::PixelShuffle { factor: f },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}
