//! f32 compute kernels shared by both evaluators (the IR evaluator and the MIL evaluator).
//!
//! Everything works on [`Array`], a dense row-major f32 buffer with a shape. The kernels know
//! nothing about graphs or dtypes: callers convert to f32 first and check shape contracts before
//! calling, so the few panics documented on each function are bugs in the caller, not user errors.
//!
//! Layout: [`conv`] (im2col + `matrixmultiply::sgemm`), [`elementwise`] (numpy-broadcasting
//! binary ops and unary maps), [`reduce`] (means, argmax), [`layout`] (transpose, tile, nearest
//! upsample), [`linalg`] (batched matmul), [`norm`] (softmax, layer norm), [`slicing`] (slice, concat,
//! gather, pixel shuffle, constant pad), [`special`] (erf, GELU, SiLU, sigmoid).
//!
//! Large kernels split their output across the machine's cores with `std::thread::scope`;
//! the TAESD decoder's activations reach tens of millions of elements, where this matters.

pub mod conv;
pub mod elementwise;
pub mod layout;
pub mod linalg;
pub mod norm;
pub mod reduce;
pub mod slicing;
pub mod special;

pub use conv::{conv2d, Conv2d};
pub use elementwise::{
    binary, broadcast_shape, clip, dequantize, fake_quantize_i8, map, quantize_i8,
};
pub use layout::{tile, transpose, upsample_nearest};
pub use linalg::matmul;
pub use norm::{layer_norm, softmax};
pub use reduce::{argmax, reduce_mean};
pub use slicing::{concat, gather, pad_constant, pixel_shuffle, slice};
pub use special::{erf, gelu_erf, gelu_tanh, sigmoid, silu};

use std::sync::OnceLock;

/// A dense row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Array {
    /// Panics if `data.len()` is not the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Array {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "Array::new: shape {shape:?} does not match {} elements",
            data.len()
        );
        Array { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Array {
        let n = shape.iter().product();
        Array {
            shape,
            data: vec![0.0; n],
        }
    }

    /// A rank-0 array holding `v`.
    pub fn scalar(v: f32) -> Array {
        Array {
            shape: Vec::new(),
            data: vec![v],
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Reinterprets the data with a new shape. Panics if the element count differs.
    pub fn reshape(self, shape: Vec<usize>) -> Array {
        Array::new(shape, self.data)
    }
}

/// Row-major strides of `shape`.
pub(crate) fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Steps `idx` to the next row of `dims`: the index over every dim but the innermost, in
/// row-major order (back to all zeros after the last row).
pub(crate) fn next_row(idx: &mut [usize], dims: &[usize]) {
    let mut d = dims.len().saturating_sub(1);
    while d > 0 {
        d -= 1;
        idx[d] += 1;
        if idx[d] < dims[d] {
            break;
        }
        idx[d] = 0;
    }
}

/// Merges adjacent dims that every operand walks contiguously, and drops size-1 dims, so that the
/// innermost loop of a kernel runs as long as possible. `strides[i]` are operand i's element
/// strides over `dims`. The result always has at least one dim.
pub(crate) fn coalesce(dims: &[usize], strides: &[Vec<usize>]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_dims: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for d in 0..dims.len() {
        if dims[d] == 1 {
            continue;
        }
        let mergeable = !out_dims.is_empty()
            && strides
                .iter()
                .zip(&out_strides)
                .all(|(s, os)| *os.last().unwrap() == s[d] * dims[d]);
        if mergeable {
            *out_dims.last_mut().unwrap() *= dims[d];
            for (s, os) in strides.iter().zip(out_strides.iter_mut()) {
                *os.last_mut().unwrap() = s[d];
            }
        } else {
            out_dims.push(dims[d]);
            for (s, os) in strides.iter().zip(out_strides.iter_mut()) {
                os.push(s[d]);
            }
        }
    }
    if out_dims.is_empty() {
        out_dims.push(1);
        for os in out_strides.iter_mut() {
            os.push(0);
        }
    }
    (out_dims, out_strides)
}

pub(crate) fn num_threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Below this many output elements a memory-bound kernel is not worth a thread spawn (~10µs).
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 16;

/// Runs `f(offset, chunk)` over consecutive chunks of `out`, one per core, in parallel.
/// Chunk boundaries fall on multiples of `align` (so kernels can work on whole rows), and small
/// outputs run on the calling thread.
pub(crate) fn par_chunks<F>(out: &mut [f32], align: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let align = align.max(1);
    let units = out.len().div_ceil(align);
    let threads = num_threads()
        .min(out.len() / PAR_MIN_ELEMS)
        .min(units)
        .max(1);
    if threads == 1 {
        f(0, out);
        return;
    }
    let per = units.div_ceil(threads) * align;
    std::thread::scope(|s| {
        let f = &f;
        let mut chunks = out.chunks_mut(per).enumerate();
        let first = chunks.next();
        for (i, chunk) in chunks {
            s.spawn(move || f(i * per, chunk));
        }
        if let Some((_, chunk)) = first {
            f(0, chunk);
        }
    });
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::Array;

    /// `0, 1, 2, …` laid out in `shape`: every element names its own position.
    pub fn iota(shape: &[usize]) -> Array {
        let n = shape.iter().product::<usize>();
        Array::new(shape.to_vec(), (0..n).map(|v| v as f32).collect())
    }

    /// Deterministic data for tests: a 64-bit LCG mapped to [-1, 1).
    pub struct Lcg(pub u64);

    impl Lcg {
        pub fn next_f32(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }

        pub fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }

        pub fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next_f32()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_constructors() {
        let a = Array::new(vec![2, 3], (0..6).map(|v| v as f32).collect());
        assert_eq!(a.len(), 6);
        assert!(!a.is_empty());
        let r = a.clone().reshape(vec![3, 2]);
        assert_eq!(r.shape, vec![3, 2]);
        assert_eq!(r.data, a.data);
        assert_eq!(Array::scalar(2.5).shape, Vec::<usize>::new());
        assert_eq!(Array::scalar(2.5).data, vec![2.5]);
        assert!(Array::zeros(vec![0, 4]).is_empty());
        assert_eq!(Array::zeros(vec![2, 2]).data, vec![0.0; 4]);
    }

    #[test]
    #[should_panic]
    fn array_new_checks_len() {
        Array::new(vec![2, 2], vec![0.0; 3]);
    }

    #[test]
    #[should_panic]
    fn reshape_checks_len() {
        Array::zeros(vec![2, 2]).reshape(vec![5]);
    }

    #[test]
    fn coalesce_merges_contiguous_runs() {
        // [1,C,H,W] against a per-channel [1,C,1,1] operand: two runs, the inner one broadcast.
        let (d, s) = coalesce(&[1, 3, 4, 5], &[vec![60, 20, 5, 1], vec![3, 1, 0, 0]]);
        assert_eq!(d, vec![3, 20]);
        assert_eq!(s, vec![vec![20, 1], vec![1, 0]]);
        let (d, s) = coalesce(&[1, 1], &[vec![1, 1]]);
        assert_eq!(d, vec![1]);
        assert_eq!(s, vec![vec![0]]);
    }

    #[test]
    fn par_chunks_covers_everything_once() {
        let mut v = vec![0.0f32; 3 * PAR_MIN_ELEMS + 7];
        par_chunks(&mut v, 10, |off, c| {
            assert_eq!(off % 10, 0);
            for (i, x) in c.iter_mut().enumerate() {
                *x += (off + i) as f32;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32));
    }
}
