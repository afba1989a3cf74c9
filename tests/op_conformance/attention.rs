//! Cases for matrix products and attention (fused, decomposed, chunked, masked).

use crate::prelude::*;

pub(crate) fn matmul_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    for (tx, ty) in [(false, false), (false, true), (true, false), (true, true)] {
        let xs: &[&str] = if tx { &["4", "3"] } else { &["3", "4"] };
        let ys: &[&str] = if ty { &["5", "4"] } else { &["4", "5"] };
        let (xo, yo) = (x(r, xs, &[]), x(r, ys, &[]));
        let want = matmul_ref(&xo.value, &yo.value, tx, ty);
        out.push(Case::new(
            format!("matmul tx={tx} ty={ty}"),
            Op::MatMul {
                transpose_x: tx,
                transpose_y: ty,
            },
            vec![xo, yo],
            want,
            1e-5,
        ));
    }
    let batched: [(Spec, Spec, bool, Sizes); 4] = [
        (&["2", "1", "3", "4"], &["3", "4", "5"], false, &[]),
        (&["2", "3", "4"], &["4", "2"], false, &[]),
        (&["3", "4"], &["2", "1", "4", "5"], false, &[]),
        (&["1", "L", "4"], &["1", "6", "4"], true, &[("L", 7)]),
    ];
    for (xs, ys, ty, sizes) in batched {
        let (xo, yo) = (x(r, xs, sizes), x(r, ys, sizes));
        let want = matmul_ref(&xo.value, &yo.value, false, ty);
        out.push(
            Case::new(
                format!("matmul {xs:?} by {ys:?}"),
                Op::MatMul {
                    transpose_x: false,
                    transpose_y: ty,
                },
                vec![xo, yo],
                want,
                1e-5,
            )
            .sizes(sizes),
        );
    }
    out
}

/// The attention pass with a small budget, so the cases also run the chunked form (slice +
/// concat).
pub(crate) fn attention_pass(fused: bool, sizes: Vec<BTreeMap<String, usize>>) -> Box<dyn Pass> {
    Box::new(LowerAttention {
        fused,
        max_bytes: 64,
        element_bytes: 4,
        sizes,
    })
}

pub(crate) fn attention_decomposed() -> Box<dyn Pass> {
    attention_pass(false, vec![])
}

pub(crate) fn attention_fused() -> Box<dyn Pass> {
    attention_pass(true, vec![])
}

pub(crate) fn attention_enumerated() -> Box<dyn Pass> {
    // Two enumerated query counts, 6 and 12: within 64 bytes the larger needs 4 parts, and 6 is
    // the smallest count from 4 up that divides both.
    attention_pass(false, [6, 12].map(|l| bound(&[("L", l)])).to_vec())
}

pub(crate) fn attention_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    // (name, [q, k, v] shapes, scale (None: 1/sqrt(D)), sizes, lowering)
    type L = fn() -> Box<dyn Pass>;
    type Config = (&'static str, [Spec; 3], Option<f32>, Sizes, Lowering);
    let configs: [Config; 6] = [
        (
            "1/sqrt(D) fused (iOS18's op, lowered directly)",
            [&["1", "6", "8"], &["1", "5", "8"], &["1", "5", "3"]],
            None,
            &[],
            Lowering::Direct(Target::Ios18),
        ),
        (
            "1/sqrt(D) through the fused pass",
            [&["2", "4", "4"], &["2", "6", "4"], &["2", "6", "4"]],
            None,
            &[],
            Lowering::Pass(attention_fused as L, Target::Ios18),
        ),
        (
            "other scale, chunked matmul + softmax (iOS16)",
            [&["1", "9", "4"], &["1", "5", "4"], &["1", "5", "2"]],
            Some(0.7),
            &[],
            Lowering::Pass(attention_decomposed as L, Target::Ios16),
        ),
        (
            "1/sqrt(D) decomposed for iOS16",
            [&["2", "3", "16"], &["2", "3", "16"], &["2", "3", "16"]],
            None,
            &[],
            Lowering::Pass(attention_decomposed as L, Target::Ios16),
        ),
        (
            "symbolic query count",
            [&["1", "L", "4"], &["1", "5", "4"], &["1", "5", "3"]],
            Some(0.3),
            &[("L", 6)],
            Lowering::Pass(attention_decomposed as L, Target::Ios16),
        ),
        (
            "enumerated query count in equal parts (one MIL split)",
            [&["1", "L", "4"], &["1", "5", "4"], &["1", "5", "3"]],
            Some(0.3),
            &[("L", 6)],
            Lowering::Pass(attention_enumerated as L, Target::Ios16),
        ),
    ];
    for (name, [qs, ks, vs], scale, sizes, lowering) in configs {
        let (q, k, v) = (x(r, qs, sizes), x(r, ks, sizes), x(r, vs, sizes));
        let d = q.value.shape[2] as f32;
        let scale = scale.unwrap_or(1.0 / d.sqrt());
        let want = attention_ref(&q.value, &k.value, &v.value, None, scale as f64);
        out.push(
            Case::new(
                format!("attention {name}"),
                Op::Attention { scale },
                vec![q, k, v],
                want,
                1e-5,
            )
            .sizes(sizes)
            .lowering(lowering),
        );
    }
    out
}

/// A causal mask [L, S]: 0 where query i may see key j (j <= i + S - L), -1e4 elsewhere.
pub(crate) fn causal_mask(l: usize, s: usize) -> Array {
    let data = (0..l * s)
        .map(|e| if e % s <= e / s + s - l { 0.0 } else { -1e4 })
        .collect();
    Array::new(vec![l, s], data)
}

pub(crate) fn masked_attention_cases(r: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    type L = fn() -> Box<dyn Pass>;
    // (name, [q, k, v] shapes, causal (else a random additive mask), sizes, lowering)
    type Config = (&'static str, [Spec; 3], bool, Sizes, Lowering);
    let configs: [Config; 5] = [
        (
            "causal, iOS18's op with attn_mask",
            [&["3", "5", "4"], &["3", "5", "4"], &["3", "5", "2"]],
            true,
            &[],
            Lowering::Direct(Target::Ios18),
        ),
        (
            "causal, fused and chunked (the mask cut by rows)",
            [&["2", "6", "4"], &["2", "6", "4"], &["2", "6", "4"]],
            true,
            &[],
            Lowering::Pass(attention_fused as L, Target::Ios18),
        ),
        (
            "causal, decomposed and chunked for iOS16",
            [&["2", "7", "4"], &["2", "7", "4"], &["2", "7", "3"]],
            true,
            &[],
            Lowering::Pass(attention_decomposed as L, Target::Ios16),
        ),
        (
            "random additive mask, fewer queries than keys",
            [&["1", "3", "4"], &["1", "5", "4"], &["1", "5", "3"]],
            false,
            &[],
            Lowering::Pass(attention_decomposed as L, Target::Ios16),
        ),
        (
            "enumerated query count, mask split with the queries",
            [&["1", "L", "4"], &["1", "5", "4"], &["1", "5", "3"]],
            false,
            &[("L", 6)],
            Lowering::Pass(attention_enumerated as L, Target::Ios16),
        ),
    ];
    for (name, [qs, ks, vs], causal, sizes, lowering) in configs {
        let (q, k, v) = (x(r, qs, sizes), x(r, ks, sizes), x(r, vs, sizes));
        let (l, s) = (q.value.shape[1], k.value.shape[1]);
        let mask = if causal {
            Operand {
                ty: TensorType::known(DType::F32, &[l, s]),
                value: causal_mask(l, s),
                constant: true,
            }
        } else {
            // A symbolic query count needs the mask as a model input of shape [L, S].
            let symbolic = qs[1].parse::<usize>().is_err();
            let rows = qs[1];
            let cols = s.to_string();
            operand(r, &[rows, &cols], sizes, (-3.0, 0.0), DType::F32, !symbolic)
        };
        let scale = 1.0 / (q.value.shape[2] as f32).sqrt();
        let want = attention_ref(
            &q.value,
            &k.value,
            &v.value,
            Some(&mask.value),
            scale as f64,
        );
        out.push(
            Case::new(
                format!("attention masked {name}"),
                Op::Attention { scale },
                vec![q, k, v, mask],
                want,
                1e-5,
            )
            .sizes(sizes)
            .lowering(lowering),
        );
    }
    out
}
