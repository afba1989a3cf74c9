//! Cases for inputs, constants and elementwise ops (the unary and binary tables, rsqrt, clip,
//! fake quantization, casts).

use crate::prelude::*;

pub(crate) fn input_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    let configs: [(&str, Spec, Sizes, DType); 3] = [
        ("static", &["2", "3"], &[], DType::F32),
        (
            "symbolic",
            &["1", "2", "H", "W"],
            &[("H", 3), ("W", 5)],
            DType::F32,
        ),
        // fp16 inputs are rounded on the way in: `operand` pre-rounds, so exact equality holds.
        ("fp16", &["4", "5"], &[], DType::F16),
    ];
    for (name, spec, sizes, dtype) in configs {
        let o = operand(r, spec, sizes, (-3.0, 3.0), dtype, false);
        let want = map_ref(&o.value, |v| v);
        out.push(
            Case::new(
                format!("input {name}"),
                Op::Input { name: "x".into() },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes),
        );
    }
    out
}

pub(crate) fn const_cases(r: &mut Rng) -> Vec<Case> {
    // Below and above the 10-element threshold: immediate values and weight.bin blobs.
    [
        (vec![], DType::F32),
        (vec![3], DType::F32),
        (vec![2, 3, 4], DType::F32),
        (vec![12], DType::F16),
    ]
    .into_iter()
    .map(|(shape, dtype)| {
        let a = r.array(&shape, -5.0, 5.0);
        let t = Tensor::f32(a.shape.clone(), a.data).cast(dtype);
        let want = Ref {
            shape: shape.clone(),
            data: t.to_f32().iter().map(|&v| v as f64).collect(),
        };
        Case::new(
            format!("const {dtype}{shape:?}"),
            Op::Const(ConstData::Dense(t)),
            vec![],
            want,
            0.0,
        )
        .dtype(dtype)
    })
    .collect()
}

pub(crate) fn unary_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    for &u in Unary::ALL {
        let (f, (lo, hi)) = unary_ref(u);
        let configs: [(Spec, Sizes); 2] = [
            (&["2", "3", "4"], &[]),
            (&["1", "3", "H", "W"], &[("H", 4), ("W", 3)]),
        ];
        for (spec, sizes) in configs {
            let o = operand(r, spec, sizes, (lo, hi), DType::F32, false);
            let want = map_ref(&o.value, f);
            out.push(
                Case::new(
                    format!("{} {spec:?}", u.name()),
                    Op::Unary(u),
                    vec![o],
                    want,
                    1e-6,
                )
                .sizes(sizes),
            );
        }
    }
    out
}

pub(crate) fn binary_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    let shapes: [(Spec, Spec, Sizes); 5] = [
        (&["2", "3", "4"], &["2", "3", "4"], &[]),
        (&["2", "1", "4"], &["3", "1"], &[]),
        (&[], &["2", "3"], &[]),
        (
            &["1", "3", "H", "W"],
            &["1", "3", "1", "1"],
            &[("H", 2), ("W", 5)],
        ),
        (
            &["1", "1", "H", "1"],
            &["2", "1", "W"],
            &[("H", 3), ("W", 4)],
        ),
    ];
    for &b in Binary::ALL {
        let (f, yr) = binary_ref(b);
        for (sx, sy, sizes) in shapes {
            let xo = operand(r, sx, sizes, (-2.0, 2.0), DType::F32, false);
            let yo = operand(r, sy, sizes, yr, DType::F32, false);
            let shape = broadcast_shape(&xo.value.shape, &yo.value.shape);
            let want = elementwise(shape, |i| {
                f(broadcast_at(&xo.value, i), broadcast_at(&yo.value, i))
            });
            out.push(
                Case::new(
                    format!("{} {sx:?} by {sy:?}", b.name()),
                    Op::Binary(b),
                    vec![xo, yo],
                    want,
                    1e-6,
                )
                .sizes(sizes),
            );
        }
        // fp16 operands: the MIL evaluator rounds fp16 outputs, the IR evaluator does not.
        let xo = operand(r, &["3", "4"], &[], (-2.0, 2.0), DType::F16, false);
        let yo = operand(r, &["4"], &[], yr, DType::F16, false);
        let want = elementwise(vec![3, 4], |i| {
            f(broadcast_at(&xo.value, i), broadcast_at(&yo.value, i))
        });
        out.push(Case::new(
            format!("{} fp16", b.name()),
            Op::Binary(b),
            vec![xo, yo],
            want,
            1e-3,
        ));
    }
    out
}

pub(crate) fn rsqrt_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(f32, Spec, Sizes); 2] = [
        (1e-5, &["2", "3"], &[]),
        (0.5, &["1", "2", "H"], &[("H", 3)]),
    ];
    configs
        .into_iter()
        .map(|(eps, spec, sizes)| {
            let o = operand(r, spec, sizes, (0.0, 4.0), DType::F32, false);
            let want = map_ref(&o.value, |v| 1.0 / (v + eps as f64).sqrt());
            Case::new(
                format!("rsqrt eps={eps}"),
                Op::Rsqrt { epsilon: eps },
                vec![o],
                want,
                1e-6,
            )
            .sizes(sizes)
        })
        .collect()
}

pub(crate) fn clip_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(f32, f32, Spec, Sizes); 3] = [
        (-1.0, 0.5, &["3", "4"], &[]),
        (0.0, 6.0, &["1", "H", "2"], &[("H", 5)]),
        // min > max is defined by the formula (and by MIL's clip): everything becomes max.
        (1.0, -1.0, &["2", "3"], &[]),
    ];
    configs
        .into_iter()
        .map(|(lo, hi, spec, sizes)| {
            let o = operand(r, spec, sizes, (-8.0, 8.0), DType::F32, false);
            let want = map_ref(&o.value, |v| v.max(lo as f64).min(hi as f64));
            Case::new(
                format!("clip {lo}..{hi}"),
                Op::Clip { min: lo, max: hi },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}

/// Lowered to iOS17's `quantize` and `dequantize`. Inputs reach past the int8 range on both
/// sides (clipped to -128 and 127), and exact halves check rounding to even.
pub(crate) fn fake_quantize_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(f32, i8, Spec, Sizes); 3] = [
        (0.0625, 0, &["2", "3", "4"], &[]),
        (0.25, -3, &["1", "2", "H", "W"], &[("H", 3), ("W", 2)]),
        (1.0, 5, &["8"], &[]),
    ];
    configs
        .into_iter()
        .map(|(scale, zp, spec, sizes)| {
            let mut o = operand(r, spec, sizes, (-200.0, 200.0), DType::F32, false);
            // A halfway value (2.5 steps) must round to 2, one at -3.5 to -4.
            o.value.data[0] = 2.5 * scale;
            o.value.data[1] = -3.5 * scale;
            let (s, z) = (scale as f64, zp as f64);
            let reference = |v: f64| {
                let t = v / s;
                // Round half to even, written out.
                let f = t.floor();
                let r = if t - f == 0.5 {
                    if f % 2.0 == 0.0 {
                        f
                    } else {
                        f + 1.0
                    }
                } else {
                    t.round()
                };
                ((r + z).clamp(-128.0, 127.0) - z) * s
            };
            let want = map_ref(&o.value, reference);
            Case::new(
                format!("fake_quantize scale {scale} zero point {zp}"),
                Op::FakeQuantize {
                    scale,
                    zero_point: zp,
                },
                vec![o],
                want,
                1e-6,
            )
            .sizes(sizes)
            .lowering(Lowering::Direct(Target::Ios17))
        })
        .collect()
}

pub(crate) fn cast_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    let to_f16 = |v: f64| f16::from_f64(v).to_f64();
    let configs: [(DType, DType, Spec, Sizes); 3] = [
        (DType::F32, DType::F16, &["3", "4"], &[]),
        (DType::F16, DType::F32, &["1", "H"], &[("H", 6)]),
        (DType::F32, DType::I32, &["2", "5"], &[]),
    ];
    for (from, to, spec, sizes) in configs {
        let o = operand(r, spec, sizes, (-300.0, 300.0), from, false);
        let want = map_ref(&o.value, |v| match to {
            DType::F16 => to_f16(v),
            DType::I32 => v.trunc(),
            _ => v,
        });
        out.push(
            Case::new(
                format!("cast {from} to {to}"),
                Op::Cast { dtype: to },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
            .dtype(to),
        );
    }
    out
}

/// Fences pass the value unchanged in either direction (the fp16 build's casts are the pass's
/// business); an output fence lowers to an `identity`.
pub(crate) fn precision_cases(r: &mut Rng) -> Vec<Case> {
    let configs: [(bool, DType, Spec, Sizes); 3] = [
        (true, DType::F32, &["2", "3"], &[]),
        (false, DType::F32, &["1", "H"], &[("H", 5)]),
        (true, DType::F16, &["4"], &[]),
    ];
    configs
        .into_iter()
        .map(|(fp32, dtype, spec, sizes)| {
            let o = operand(r, spec, sizes, (-1000.0, 1000.0), dtype, false);
            let want = map_ref(&o.value, |v| v);
            Case::new(
                format!("precision fp32={fp32} on {dtype}"),
                Op::Precision { fp32 },
                vec![o],
                want,
                0.0,
            )
            .sizes(sizes)
        })
        .collect()
}
