//! Graph-to-graph passes and the pipeline that orders them.
//!
//! Each pass is one file with one job; it consumes a graph and returns a rewritten one. The
//! verifier runs after every pass, so a pass bug surfaces with the pass's name on it, and any
//! pass's output can be dumped (`--dump-passes`).

pub mod calibrated;
pub mod cancel_transposes;
pub mod canonicalize_layout;
pub mod cast_fp16;
pub mod dce;
pub mod edit_features;
pub mod fold_constants;
pub mod image_input;
pub mod image_output;
pub mod low_rank_adapter;
pub mod lower_attention;
pub mod lower_group_norm;
pub mod palettize;
pub mod quantize;
pub mod quantize_activations;
pub mod specialize_shapes;

use crate::ir::{verify::verify, ConstData, Graph, IrError, Node, Op};
use crate::progress::{Observer, Stage};

/// A named graph transform.
pub trait Pass {
    fn name(&self) -> &'static str;
    fn run(&self, g: Graph) -> Result<Graph, IrError>;
    /// [`Pass::run`], counting what the pass counts (the compression passes: tensors) into
    /// `progress`, whose stage [`run_observed`] has begun.
    fn run_observed(&self, g: Graph, _progress: &Observer) -> Result<Graph, IrError> {
        self.run(g)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("pass {pass}: {source}")]
pub struct PassError {
    pub pass: &'static str,
    #[source]
    pub source: IrError,
}

/// Which options shape the pipeline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineOptions {
    /// Weights and compute in fp16.
    pub fp16: bool,
    /// With `fp16`: the model takes fp16 arrays (iOS16+) instead of casting at its boundary.
    pub fp16_inputs: bool,
    /// With `fp16`: the model returns fp16 arrays.
    pub fp16_outputs: bool,
    /// Channels-last model input / output (`[1, H, W, C]`); inside, everything stays NCHW.
    pub input_nhwc: bool,
    pub output_nhwc: bool,
    /// The output is an 8-bit image: clamp the model's range `(low, high)` and map it to
    /// [0, 255] in the model.
    pub image_output: Option<image_output::ImageOutput>,
    /// The input is an 8-bit image: map [0, 255] to what the model computes on, per channel.
    pub image_input: Option<image_input::ImageInput>,
    /// Symbol values of every enumerated size, when the graph has symbolic sizes.
    pub sizes: Vec<specialize_shapes::Bindings>,
    /// Weight compression, if any.
    pub compression: Option<Compression>,
    /// Keep attention as one fused op (iOS18's `scaled_dot_product_attention`).
    pub fused_attention: bool,
    /// Lower attention in this pipeline; a multifunction build lowers it per function instead,
    /// after specialisation, when query counts are static and can be chunked.
    pub lower_attention: bool,
}

/// How weights are compressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compression {
    Palettize {
        bits: u32,
        group_size: Option<usize>,
        min_elements: usize,
    },
    Quantize {
        mode: quantize::Mode,
        block_size: Option<usize>,
        min_elements: usize,
    },
}

/// Attention lowering for `opts`: fused at iOS18, chunked to the score budget.
pub fn attention_pass(opts: &PipelineOptions) -> lower_attention::LowerAttention {
    lower_attention::LowerAttention {
        fused: opts.fused_attention,
        max_bytes: lower_attention::MAX_SCORE_BYTES,
        element_bytes: if opts.fp16 { 2 } else { 4 },
        sizes: opts.sizes.clone(),
    }
}

/// The passes for `opts`, in order, with data-free weight compression: [`prepare`] then
/// [`finish`].
pub fn pipeline(opts: &PipelineOptions) -> Vec<Box<dyn Pass>> {
    let mut passes = prepare(opts);
    passes.extend(finish(opts, None));
    passes
}

/// The passes up to weight compression: what the model computes, in the types and layout it
/// will store. Calibrated compression measures the convs' inputs on this graph.
pub fn prepare(opts: &PipelineOptions) -> Vec<Box<dyn Pass>> {
    let mut passes: Vec<Box<dyn Pass>> = vec![
        // Before folding: the lowering reshapes gamma/beta, which folding then precomputes.
        Box::new(lower_group_norm::LowerGroupNorm),
    ];
    if opts.lower_attention {
        passes.push(Box::new(attention_pass(opts)));
    }
    if let Some(o) = &opts.image_output {
        // Before the layout pass, so scaling happens on NCHW values like every other op.
        passes.push(Box::new(o.clone()));
    }
    if let Some(i) = &opts.image_input {
        passes.push(Box::new(i.clone()));
    }
    if opts.input_nhwc || opts.output_nhwc {
        passes.push(Box::new(canonicalize_layout::CanonicalizeLayout {
            input_nhwc: opts.input_nhwc,
            output_nhwc: opts.output_nhwc,
        }));
        passes.push(Box::new(cancel_transposes::CancelTransposes));
    }
    passes.push(Box::new(fold_constants::FoldConstants));
    if opts.fp16 {
        // After folding, so that folded constants are computed in f32 and rounded once.
        passes.push(Box::new(cast_fp16::CastFp16 {
            fp16_inputs: opts.fp16_inputs,
            fp16_outputs: opts.fp16_outputs,
        }));
    }
    passes
}

/// Weight compression (fitted to the layers' outputs where `calibrated` has their inputs'
/// statistics, measured on the graph [`prepare`] produced) and the clean-up after it.
pub fn finish(
    opts: &PipelineOptions,
    calibrated: Option<calibrated::Calibrated>,
) -> Vec<Box<dyn Pass>> {
    let mut passes: Vec<Box<dyn Pass>> = Vec::new();
    // After the fp16 cast: tables and scales are fitted to the values the model stores.
    match opts.compression.clone() {
        Some(Compression::Palettize {
            bits,
            group_size,
            min_elements,
        }) => passes.push(Box::new(palettize::Palettize {
            bits,
            group_size,
            min_elements,
            calibrated: calibrated.clone(),
        })),
        Some(Compression::Quantize {
            mode,
            block_size,
            min_elements,
        }) => passes.push(Box::new(quantize::Quantize {
            mode,
            block_size,
            min_elements,
            calibrated,
        })),
        None => {}
    }
    // Late: earlier passes leave the constants and transposes they replaced behind.
    passes.push(Box::new(dce::Dce));
    if !opts.sizes.is_empty() {
        // Last: proves the final graph valid at every enumerated size.
        passes.push(Box::new(specialize_shapes::CheckSizes {
            sizes: opts.sizes.clone(),
        }));
    }
    passes
}

/// Runs `passes` in order, verifying after each and handing every result to `after` (for dumps
/// and timings).
pub fn run(
    g: Graph,
    passes: &[Box<dyn Pass>],
    after: impl FnMut(&dyn Pass, &Graph),
) -> Result<Graph, PassError> {
    run_observed(g, passes, &Observer::none(), after)
}

/// [`run`], each pass a [`Stage::Pass`] of `progress`.
pub fn run_observed(
    mut g: Graph,
    passes: &[Box<dyn Pass>],
    progress: &Observer,
    mut after: impl FnMut(&dyn Pass, &Graph),
) -> Result<Graph, PassError> {
    verify(&g).map_err(|source| PassError {
        pass: "input",
        source,
    })?;
    for p in passes {
        progress.begin(Stage::Pass(p.name()));
        g = p.run_observed(g, progress).map_err(|source| PassError {
            pass: p.name(),
            source,
        })?;
        verify(&g).map_err(|source| PassError {
            pass: p.name(),
            source,
        })?;
        after(p.as_ref(), &g);
    }
    Ok(g)
}

/// Reads back into memory the spilled constants among `nodes` that `wanted` picks by index:
/// what a pass that changes values (compression, folding, adapters) does before it looks at
/// them. A graph without spilled constants is left as it is.
pub fn read_back(nodes: &mut [Node], wanted: impl Fn(usize) -> bool) -> Result<(), IrError> {
    for (i, n) in nodes.iter_mut().enumerate() {
        if let Op::Const(c @ ConstData::Spilled { .. }) = &mut n.op {
            if wanted(i) {
                let read = c.in_memory().map_err(|reason| IrError::Eval {
                    node: n.name.clone(),
                    reason,
                })?;
                *c = read.into_owned();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing {
    //! Equivalence checking: a pass is correct when the graph computes the same before and after.
    use crate::ir::{eval::evaluate, Graph};
    use crate::kernels::Array;
    use std::collections::BTreeMap;

    /// Deterministic pseudo-random values in [-scale, scale).
    pub fn random(shape: &[usize], seed: u64, scale: f32) -> Array {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect();
        Array::new(shape.to_vec(), data)
    }

    /// A linear layer `z = x · Wᵀ + b` on `x` [1, 30, in] for `w` [out, in], with the weight
    /// stored as is (`transpose_y`) or transposed, `[in, out]`; with the indices of the weight
    /// and of the bias (0.1 everywhere).
    pub fn linear(w: &Array, stored_transposed: bool) -> (Graph, usize, usize) {
        use crate::ir::{Binary, Op, TensorType};
        use crate::tensor::{DType, Tensor};
        let &[out, inp] = w.shape.as_slice() else {
            panic!("a matrix")
        };
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::known(DType::F32, &[1, 30, inp]));
        let t = Tensor::f32(vec![out, inp], w.data.clone());
        let t = match stored_transposed {
            true => t.transposed().unwrap(),
            false => t,
        };
        let wv = g.constant("w", t);
        let b = g.constant("b", Tensor::f32(vec![out], vec![0.1; out]));
        let op = Op::MatMul {
            transpose_x: false,
            transpose_y: !stored_transposed,
        };
        let y = g.add(op, &[x, wv], "matmul").unwrap();
        let z = g.add(Op::Binary(Binary::Add), &[y, b], "linear").unwrap();
        g.set_output("z", z);
        (g, wv.index(), b.index())
    }

    /// 30 tokens of 40 correlated, off-centre features: inputs on which an output-aware fit
    /// differs from a data-free one.
    pub fn tokens(seed: u64) -> Array {
        let r = random(&[1, 30, 40], seed, 1.0);
        let data = r
            .data
            .chunks(40)
            .flat_map(|row| {
                (0..40).map(move |j| row[j] + 0.8 * row[(j + 1) % 40] + 0.3 * (j % 3) as f32)
            })
            .collect();
        Array::new(vec![1, 30, 40], data)
    }

    /// `n` samples of [`tokens`] as the calibration set of input `x`.
    pub fn token_calibration(n: u64) -> crate::calibrate::Calibration {
        crate::calibrate::Calibration::from_samples(
            BTreeMap::from([("x".to_string(), (1..=n).map(tokens).collect())]),
            (1..=n).map(|i| format!("s{i}")).collect(),
        )
        .unwrap()
    }

    /// Sum of squared differences between output `z` of `g` and of `reference` on one
    /// sample of [`tokens`] (the linear-layer fits' error measure).
    pub fn linear_error(reference: &Graph, g: &Graph) -> f64 {
        let x = BTreeMap::from([("x".to_string(), tokens(9))]);
        let want = &evaluate(reference, &x).unwrap()["z"];
        let got = &evaluate(g, &x).unwrap()["z"];
        got.data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum()
    }

    /// Largest absolute difference between the outputs of two graphs on the same inputs.
    pub fn max_diff(a: &Graph, b: &Graph, inputs: &BTreeMap<String, Array>) -> f32 {
        let (ra, rb) = (evaluate(a, inputs).unwrap(), evaluate(b, inputs).unwrap());
        assert_eq!(ra.keys().collect::<Vec<_>>(), rb.keys().collect::<Vec<_>>());
        ra.iter()
            .map(|(k, x)| {
                let y = &rb[k];
                assert_eq!(x.shape, y.shape, "output {k}");
                x.data
                    .iter()
                    .zip(&y.data)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f32::max)
            })
            .fold(0.0, f32::max)
    }
}
