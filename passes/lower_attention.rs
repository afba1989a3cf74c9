//! Attention lowering: `attention(q, k, v)` becomes what the target runs, in query chunks small
//! enough that no score matrix exceeds a byte budget.
//!
//! ```text
//!                                       %qs = mul(%q, scale)
//!                                       per chunk [a, b) of the L queries:
//! %o = attention(%q, %k, %v)   ==>        %s_i = matmul(slice(%qs, 1, a..b), %k, transpose_y)
//!      q [B,L,D] k [B,S,D]                %o_i = matmul(softmax(%s_i, 2), %v)
//!                                       %o  = concat(%o_0, …, axis 1)
//! ```
//! A mask [L, S] (fourth input) is cut into the same rows (axis 0) and added to each chunk's
//! scores before the softmax, or passed to the fused op as its `attn_mask`.
//! With `fused` (iOS18), each chunk is one `attention` op that lowering emits as
//! `scaled_dot_product_attention` (whose scale is 1/sqrt(D)). A full-size VAE attends over
//! 16,384 positions at a 1024x1024 image: one fp16 score matrix is 512 MiB, eight chunks keep
//! each at 64 MiB. A static query count is sliced into near-equal chunks; a symbolic one (an
//! enumerated `H*W`) is split into equal parts, which needs a part count that divides the
//! query count at every enumerated size: the smallest such count within budget is taken, and
//! when none exists the matrix stays whole (the build report names its size).

use super::specialize_shapes::Bindings;
use super::Pass;
use crate::ir::{Binary, Dim, Graph, IrError, Op, Rebuilder, ValueId};
use crate::tensor::Tensor;

pub struct LowerAttention {
    /// Keep `attention` ops (iOS18's fused op) instead of matmul + softmax.
    pub fused: bool,
    /// Largest score matrix, in bytes.
    pub max_bytes: usize,
    /// Bytes per element of the scores (2 for fp16 compute).
    pub element_bytes: usize,
    /// Symbol values of every enumerated size (empty for static graphs).
    pub sizes: Vec<Bindings>,
}

/// How the queries are cut.
#[derive(Clone, Copy)]
enum Cut {
    Whole,
    /// Near-equal static slices of a known query count.
    Slices {
        count: usize,
        queries: usize,
    },
    /// Equal parts of a symbolic query count.
    Parts(usize),
}

impl LowerAttention {
    fn cut(&self, b: &Dim, l: &Dim, s: &Dim) -> Cut {
        let budget = self.max_bytes.max(1);
        let chunks = |b: usize, l: usize, s: usize| {
            b.saturating_mul(l)
                .saturating_mul(s)
                .saturating_mul(self.element_bytes)
                .div_ceil(budget)
                .clamp(1, l.max(1))
        };
        if let (Some(b), Some(l), Some(s)) = (b.known(), l.known(), s.known()) {
            return match chunks(b, l, s) {
                1 => Cut::Whole,
                count => Cut::Slices { count, queries: l },
            };
        }
        let resolved: Option<Vec<[usize; 3]>> = self
            .sizes
            .iter()
            .map(|z| {
                let r = |d: &Dim| d.resolve(&|sym| z.get(sym).copied());
                Some([r(b)?, r(l)?, r(s)?])
            })
            .collect();
        let Some(resolved) = resolved.filter(|r| !r.is_empty()) else {
            return Cut::Whole;
        };
        let need = resolved
            .iter()
            .map(|&[b, l, s]| chunks(b, l, s))
            .max()
            .unwrap_or(1);
        let fewest = resolved.iter().map(|r| r[1]).min().unwrap_or(1);
        match (need..=fewest).find(|k| resolved.iter().all(|r| r[1] % k == 0)) {
            Some(1) | None => Cut::Whole,
            Some(k) => Cut::Parts(k),
        }
    }
}

/// The chunk budget the issue asks for: 64 MiB.
pub const MAX_SCORE_BYTES: usize = 64 << 20;

impl Pass for LowerAttention {
    fn name(&self) -> &'static str {
        "lower_attention"
    }

    fn run(&self, g: Graph) -> Result<Graph, IrError> {
        let (name, nodes, outputs) = g.into_parts();
        let mut r = Rebuilder::new(name, nodes.len());
        for (i, node) in nodes.into_iter().enumerate() {
            let old = ValueId(i as u32);
            let Op::Attention { scale } = node.op else {
                r.copy(old, node);
                continue;
            };
            let [q, k, v] = [0, 1, 2].map(|j| r.get(node.inputs[j]));
            let mask = node.inputs.get(3).map(|&m| r.get(m));
            let (qt, kt) = (r.graph.ty(q).clone(), r.graph.ty(k).clone());
            let cut = self.cut(&qt.shape[0], &qt.shape[1], &kt.shape[1]);
            let d = qt.shape[2].known();
            let default_scale =
                d.is_some_and(|d| (1.0 / (d as f32).sqrt() - scale).abs() <= 1e-6 * scale);
            let n = &node.name;
            let g = &mut r.graph;
            let fused = self.fused && default_scale;
            let q = if fused {
                q
            } else {
                let s = g.constant(format!("{n}_scale"), Tensor::scalar(scale).cast(qt.dtype));
                g.add(Op::Binary(Binary::Mul), &[q, s], format!("{n}_q_scaled"))?
            };
            let chunks = match cut {
                Cut::Whole => 1,
                Cut::Slices { count, .. } => count,
                Cut::Parts(k) => k,
            };
            let mut parts = Vec::with_capacity(chunks);
            for c in 0..chunks {
                let tag = if chunks == 1 {
                    String::new()
                } else {
                    format!("_{c}")
                };
                // The chunk's rows along `axis`: the queries' axis 1, the mask's axis 0.
                let cut_op = |axis: usize| match cut {
                    Cut::Whole => None,
                    Cut::Slices { count, queries } => Some(Op::Slice {
                        axis,
                        begin: c * queries / count,
                        end: (c + 1) * queries / count,
                    }),
                    Cut::Parts(k) => Some(Op::Split {
                        axis,
                        parts: k,
                        index: c,
                    }),
                };
                let qc = match cut_op(1) {
                    None => q,
                    Some(op) => g.add(op, &[q], format!("{n}_q{tag}"))?,
                };
                let mc = match (mask, cut_op(0)) {
                    (None, _) => None,
                    (Some(m), None) => Some(m),
                    (Some(m), Some(op)) => Some(g.add(op, &[m], format!("{n}_mask{tag}"))?),
                };
                let out = if fused {
                    let mut ins = vec![qc, k, v];
                    ins.extend(mc);
                    g.add(Op::Attention { scale }, &ins, format!("{n}_sdpa{tag}"))?
                } else {
                    let s = g.add(
                        Op::MatMul {
                            transpose_x: false,
                            transpose_y: true,
                        },
                        &[qc, k],
                        format!("{n}_scores{tag}"),
                    )?;
                    let s = match mc {
                        None => s,
                        Some(m) => {
                            g.add(Op::Binary(Binary::Add), &[s, m], format!("{n}_masked{tag}"))?
                        }
                    };
                    let p = g.add(Op::Softmax { axis: 2 }, &[s], format!("{n}_weights{tag}"))?;
                    g.add(
                        Op::MatMul {
                            transpose_x: false,
                            transpose_y: false,
                        },
                        &[p, v],
                        format!("{n}_out{tag}"),
                    )?
                };
                parts.push(out);
            }
            let out = if parts.len() == 1 {
                parts[0]
            } else {
                g.add(Op::Concat { axis: 1 }, &parts, format!("{n}_concat"))?
            };
            r.set(old, out);
        }
        Ok(r.finish(&outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{print::print, verify::verify, Dim, TensorType};
    use crate::passes::testing::{max_diff, random};
    use crate::tensor::DType;
    use std::collections::BTreeMap;

    fn graph(l: Dim, s: usize, d: usize, scale: f32) -> Graph {
        let mut g = Graph::new("t");
        let ty = |n: Dim| TensorType::new(DType::F32, vec![Dim::Known(1), n, Dim::Known(d)]);
        let q = g.input("q", ty(l));
        let k = g.input("k", ty(Dim::Known(s)));
        let v = g.input("v", ty(Dim::Known(s)));
        let o = g.add(Op::Attention { scale }, &[q, k, v], "attn").unwrap();
        g.set_output("o", o);
        g
    }

    fn inputs(l: usize, s: usize, d: usize) -> BTreeMap<String, crate::kernels::Array> {
        BTreeMap::from([
            ("q".to_string(), random(&[1, l, d], 1, 2.0)),
            ("k".to_string(), random(&[1, s, d], 2, 2.0)),
            ("v".to_string(), random(&[1, s, d], 3, 1.0)),
        ])
    }

    #[test]
    fn chunks_keep_every_score_matrix_in_budget_and_the_result() {
        let (l, s, d) = (50, 40, 8);
        let g = graph(Dim::Known(l), s, d, 0.3);
        let pass = LowerAttention {
            fused: false,
            max_bytes: 7 * s * 4,
            element_bytes: 4,
            sizes: vec![],
        };
        let low = pass.run(g.clone()).unwrap();
        verify(&low).unwrap();
        let text = print(&low);
        let scores: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("= matmul") && l.contains("_scores"))
            .collect();
        assert_eq!(scores.len(), 8, "{text}");
        for (_, n) in low.nodes() {
            if n.name.contains("_scores") {
                let rows = n.ty.shape[1].known().unwrap();
                assert!(rows * s * 4 <= 7 * s * 4, "{}", n.ty);
            }
        }
        assert!(!text.contains("attention("), "{text}");
        let diff = max_diff(&g, &low, &inputs(l, s, d));
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn one_chunk_when_it_fits_and_fused_keeps_the_op() {
        let (l, s, d) = (12, 12, 16);
        let g = graph(Dim::Known(l), s, d, 0.25);
        let plain = LowerAttention {
            fused: false,
            max_bytes: MAX_SCORE_BYTES,
            element_bytes: 2,
            sizes: vec![],
        }
        .run(g.clone())
        .unwrap();
        assert!(!print(&plain).contains("slice("));
        assert!(max_diff(&g, &plain, &inputs(l, s, d)) < 1e-5);
        let fused = LowerAttention {
            fused: true,
            max_bytes: MAX_SCORE_BYTES,
            element_bytes: 2,
            sizes: vec![],
        }
        .run(g.clone())
        .unwrap();
        assert!(print(&fused).contains("attention("), "{}", print(&fused));
        // A scale MIL's fused op cannot express is decomposed even when fusing.
        let odd = graph(Dim::Known(l), s, d, 0.3);
        let low = LowerAttention {
            fused: true,
            max_bytes: MAX_SCORE_BYTES,
            element_bytes: 2,
            sizes: vec![],
        }
        .run(odd)
        .unwrap();
        assert!(!print(&low).contains("attention("));
    }

    #[test]
    fn symbolic_query_counts_stay_whole() {
        let g = graph(Dim::sym("L"), 6, 4, 0.5);
        let low = LowerAttention {
            fused: false,
            max_bytes: 1,
            element_bytes: 2,
            sizes: vec![],
        }
        .run(g)
        .unwrap();
        verify(&low).unwrap();
        assert!(!print(&low).contains("slice("));
    }

    #[test]
    fn enumerated_query_counts_split_into_equal_parts_that_divide_every_size() {
        let (s, d) = (5, 4);
        let g = graph(Dim::sym("L"), s, d, 0.3);
        let sizes = |ls: &[usize]| -> Vec<Bindings> {
            ls.iter()
                .map(|&l| BTreeMap::from([("L".to_string(), l)]))
                .collect()
        };
        // 12 queries need 4 parts of 64 bytes; 4 and 5 do not divide 6, so 6 parts.
        let pass = LowerAttention {
            fused: false,
            max_bytes: 64,
            element_bytes: 4,
            sizes: sizes(&[6, 12]),
        };
        let low = pass.run(g.clone()).unwrap();
        verify(&low).unwrap();
        let text = print(&low);
        assert_eq!(text.matches("= split(").count(), 6, "{text}");
        assert!(text.contains("fp32[1,L/6,5] = matmul"), "{text}");
        assert!(text.contains("fp32[1,L,4] = concat("), "{text}");
        for l in [6, 12] {
            let diff = max_diff(&g, &low, &inputs(l, s, d));
            assert!(diff < 1e-5, "L={l}: {diff}");
        }
        // No count within reach divides both 7 and 12: the matrix stays whole.
        let whole = LowerAttention {
            sizes: sizes(&[7, 12]),
            ..pass
        }
        .run(g)
        .unwrap();
        assert!(!print(&whole).contains("split("), "{}", print(&whole));
    }
}
