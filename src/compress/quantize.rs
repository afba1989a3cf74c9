//! Linear 8-bit quantization of weights, in the forms Core ML can decompress at load time.
//!
//! Everything is expressed as Core ML iOS18 `constexpr_blockwise_shift_scale` sees it
//! (coremltools `converters/mil/mil/ops/defs/iOS18/compression.py`): `scale` (and the zero
//! point, there called `offset`) has the same rank as the data, each of its dimensions divides
//! the data's, and element `[i, j, …]` uses entry `[i / block[0], j / block[1], …]`:
//!
//! `value = scale · (q − zero_point)` (zero point 0 for the symmetric forms).
//!
//! Per-output-channel scales (`scale_shape = [O, 1, 1, …]`) are also exactly iOS16
//! `constexpr_affine_dequantize` with `axis = 0` (`iOS16/constexpr_ops.py`:
//! `scale * (quantized_data - zero_point)` broadcast along `axis`); see [`Quantized::axis`].
//!
//! Scale choice matches coremltools' `optimize._utils.quantize_weight_by_dtype`, the reference
//! the quality targets come from: symmetric int8 uses the restricted range `[-127, 127]` with
//! `scale = max|w| / 127` (so `-x` quantizes like `x`), affine uint8 widens the range to include
//! 0 and uses `scale = (max − min) / 255`, `zero_point = round(−min / scale)`. Rounding is to
//! nearest, ties to even, like numpy's `round`.

use half::f16;

/// Precision in which the scales are stored. Core ML requires the scale type to be the output
/// type, so fp16 models need fp16 scales; quantizing against the rounded scale (rather than
/// rounding afterwards) keeps every element's code optimal for the scale actually stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleType {
    F32,
    F16,
}

/// The quantized codes.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantData {
    /// Symmetric: `value = scale · q`, `q ∈ [-127, 127]`.
    Symmetric(Vec<i8>),
    /// Affine: `value = scale · (q − zero_point)`, one zero point per scale entry.
    Affine { data: Vec<u8>, zero_point: Vec<u8> },
}

/// A linearly quantized tensor (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub shape: Vec<usize>,
    /// Same rank as `shape`; `shape[d] / scale_shape[d]` is the block size along `d`.
    pub scale_shape: Vec<usize>,
    /// Row-major over `scale_shape`; exactly representable in the requested [`ScaleType`].
    pub scale: Vec<f32>,
    pub data: QuantData,
}

impl Quantized {
    /// Block size along every dimension (`shape[d] / scale_shape[d]`).
    pub fn block_sizes(&self) -> Vec<usize> {
        self.shape
            .iter()
            .zip(&self.scale_shape)
            .map(|(&s, &c)| s / c)
            .collect()
    }

    /// The axis for iOS16 `constexpr_affine_dequantize` (whose scale is a vector along one
    /// axis), or `None` if the scales vary along several axes and need iOS18 blockwise ops.
    pub fn axis(&self) -> Option<usize> {
        let varying: Vec<usize> = (0..self.shape.len())
            .filter(|&d| self.scale_shape[d] > 1)
            .collect();
        match varying[..] {
            [] => Some(0),
            [d] if self.scale_shape[d] == self.shape[d] => Some(d),
            _ => None,
        }
    }

    /// The quantization of a matrix's transpose: codes, scales and zero points transposed
    /// alike; `None` unless it has rank 2.
    pub fn transposed(&self) -> Option<Quantized> {
        let (&[r, c], &[sr, sc]) = (self.shape.as_slice(), self.scale_shape.as_slice()) else {
            return None;
        };
        use crate::tensor::transpose as t;
        let data = match &self.data {
            QuantData::Symmetric(q) => QuantData::Symmetric(t(q, r, c)),
            QuantData::Affine { data, zero_point } => QuantData::Affine {
                data: t(data, r, c),
                zero_point: t(zero_point, sr, sc),
            },
        };
        Some(Quantized {
            shape: vec![c, r],
            scale_shape: vec![sc, sr],
            scale: t(&self.scale, sr, sc),
            data,
        })
    }

    /// Reconstructs the values as Core ML does (f32 arithmetic).
    pub fn dequantize(&self) -> Vec<f32> {
        let block = self.block_sizes();
        let cells = scale_cells(&self.shape, &block);
        match &self.data {
            QuantData::Symmetric(q) => q
                .iter()
                .zip(cells)
                .map(|(&q, c)| self.scale[c] * f32::from(q))
                .collect(),
            QuantData::Affine { data, zero_point } => data
                .iter()
                .zip(cells)
                .map(|(&q, c)| self.scale[c] * (f32::from(q) - f32::from(zero_point[c])))
                .collect(),
        }
    }
}

/// Symmetric int8 with one scale per output channel (axis 0).
pub fn quantize_per_channel_i8(
    values: &[f32],
    shape: &[usize],
    scale_type: ScaleType,
) -> Quantized {
    quantize(values, shape, &per_output_channel(shape), false, scale_type)
}

/// Blocks spanning everything but the output-channel axis (axis 0).
fn per_output_channel(shape: &[usize]) -> Vec<usize> {
    let mut block = shape.to_vec();
    block[0] = 1;
    block
}

/// Affine uint8 with one scale and zero point per output channel (axis 0).
pub fn quantize_per_channel_u8(
    values: &[f32],
    shape: &[usize],
    scale_type: ScaleType,
) -> Quantized {
    quantize(values, shape, &per_output_channel(shape), true, scale_type)
}

/// Symmetric int8 with one scale per output channel and per `block_size` input channels
/// (axis 1), the layout of iOS18 `constexpr_blockwise_shift_scale` per-block quantization:
/// `scale_shape = [O, I / block_size, 1, …]`.
///
/// # Panics
/// If the tensor has rank < 2 or `block_size` does not divide `shape[1]`.
pub fn quantize_blockwise_i8(
    values: &[f32],
    shape: &[usize],
    block_size: usize,
    scale_type: ScaleType,
) -> Quantized {
    assert!(
        shape.len() >= 2,
        "blockwise quantization needs rank >= 2, got {shape:?}"
    );
    assert!(
        block_size > 0 && shape[1] % block_size == 0,
        "block size {block_size} must divide the {} input channels",
        shape[1]
    );
    let mut block = shape.to_vec();
    block[0] = 1;
    block[1] = block_size;
    quantize(values, shape, &block, false, scale_type)
}

/// Shared implementation: `block[d]` elements along dimension `d` share a scale.
fn quantize(
    values: &[f32],
    shape: &[usize],
    block: &[usize],
    affine: bool,
    scale_type: ScaleType,
) -> Quantized {
    assert!(!shape.is_empty(), "cannot quantize a scalar");
    assert_eq!(
        shape.iter().product::<usize>(),
        values.len(),
        "shape does not match values"
    );
    assert!(
        values.iter().all(|v| v.is_finite()),
        "quantization input must be finite"
    );
    let scale_shape: Vec<usize> = shape.iter().zip(block).map(|(&s, &b)| s / b).collect();
    let n_cells: usize = scale_shape.iter().product();

    let mut lo = vec![0.0f32; n_cells];
    let mut hi = vec![0.0f32; n_cells];
    // Starting from 0 includes 0 in every range, which both forms need (see module doc).
    for (&v, c) in values.iter().zip(scale_cells(shape, block)) {
        lo[c] = lo[c].min(v);
        hi[c] = hi[c].max(v);
    }

    let round_scale = |s: f32| match scale_type {
        ScaleType::F32 => s,
        ScaleType::F16 => f16::from_f32(s).to_f32(),
    };
    // An all-zero block gets scale 1 (any positive scale reconstructs zeros exactly, and Core ML
    // divides by nothing but a zero scale is an invalid-looking constant).
    let scale: Vec<f32> = lo
        .iter()
        .zip(&hi)
        .map(|(&l, &h)| {
            let s = if affine {
                (h - l) / 255.0
            } else {
                l.abs().max(h) / 127.0
            };
            let s = round_scale(s);
            if s > 0.0 && s.is_finite() {
                s
            } else {
                1.0
            }
        })
        .collect();

    let code = |v: f32, s: f32| (f64::from(v) / f64::from(s)).round_ties_even();
    let data = if affine {
        let zero_point: Vec<u8> = lo
            .iter()
            .zip(&scale)
            .map(|(&l, &s)| code(-l, s).clamp(0.0, 255.0) as u8)
            .collect();
        let data = values
            .iter()
            .zip(scale_cells(shape, block))
            .map(|(&v, c)| (code(v, scale[c]) + f64::from(zero_point[c])).clamp(0.0, 255.0) as u8)
            .collect();
        QuantData::Affine { data, zero_point }
    } else {
        let data = values
            .iter()
            .zip(scale_cells(shape, block))
            .map(|(&v, c)| code(v, scale[c]).clamp(-127.0, 127.0) as i8)
            .collect();
        QuantData::Symmetric(data)
    };
    Quantized {
        shape: shape.to_vec(),
        scale_shape,
        scale,
        data,
    }
}

/// For every element of a row-major tensor of `shape`, in order, the row-major index of its
/// scale entry when `block[d]` consecutive indices along `d` share one.
pub(crate) fn scale_cells<'a>(
    shape: &'a [usize],
    block: &'a [usize],
) -> impl Iterator<Item = usize> + 'a {
    let rank = shape.len();
    let cells: Vec<usize> = shape.iter().zip(block).map(|(&s, &b)| s / b).collect();
    // Stride of each dimension in the scale tensor.
    let mut stride = vec![1usize; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        stride[d] = stride[d + 1] * cells[d + 1];
    }
    let total: usize = shape.iter().product();
    let mut coord = vec![0usize; rank];
    let mut cell = 0usize;
    (0..total).map(move |_| {
        let out = cell;
        // Odometer increment; the cell index changes only when a coordinate crosses a block.
        for d in (0..rank).rev() {
            coord[d] += 1;
            if coord[d] < shape[d] {
                if coord[d] % block[d] == 0 {
                    cell += stride[d];
                }
                break;
            }
            coord[d] = 0;
            cell -= (shape[d] / block[d] - 1) * stride[d];
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(shape: &[usize], seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..shape.iter().product::<usize>())
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // Per-row scale variety: a few large outliers among small values.
                let u = (s % 20001) as f32 / 10000.0 - 1.0;
                if s % 97 == 0 {
                    u * 3.0
                } else {
                    u * 0.1
                }
            })
            .collect()
    }

    fn rows(v: &[f32], o: usize) -> Vec<&[f32]> {
        v.chunks(v.len() / o).collect()
    }

    #[test]
    fn symmetric_round_trip_within_half_step() {
        let shape = [16usize, 8, 3, 3];
        let v = sample(&shape, 1);
        for st in [ScaleType::F32, ScaleType::F16] {
            let q = quantize_per_channel_i8(&v, &shape, st);
            assert_eq!(q.scale_shape, vec![16, 1, 1, 1]);
            assert_eq!(q.axis(), Some(0));
            let d = q.dequantize();
            for (o, (row, drow)) in rows(&v, 16).iter().zip(rows(&d, 16)).enumerate() {
                let s = q.scale[o];
                let max = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                for (&a, &b) in row.iter().zip(drow) {
                    // Half a step, plus the fp16 scale's shortfall at the range edge.
                    let slack = if st == ScaleType::F16 {
                        (max - 127.0 * s).max(0.0)
                    } else {
                        0.0
                    };
                    assert!(
                        (a - b).abs() <= 0.5 * s * 1.0001 + slack,
                        "{a} vs {b}, scale {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn max_abs_maps_to_the_end_of_the_range() {
        let shape = [4usize, 5];
        let v = vec![
            0.3, -0.7, 0.1, 0.0, 0.2, //
            2.0, 1.0, -0.5, 0.25, 1.5, //
            -1e-3, 1e-4, 0.0, 5e-4, 0.0, //
            0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        let q = quantize_per_channel_i8(&v, &shape, ScaleType::F32);
        let QuantData::Symmetric(codes) = &q.data else {
            panic!("symmetric expected")
        };
        assert_eq!(codes[1], -127);
        assert_eq!(codes[5], 127);
        assert_eq!(codes[10], -127);
        assert!(codes[15..].iter().all(|&c| c == 0));
        assert_eq!(q.scale[3], 1.0, "all-zero channel gets a neutral scale");
        let d = q.dequantize();
        // scale = max/127 rounded to f32, so 127 · scale is within an ulp of max.
        for &i in &[1usize, 5, 10] {
            assert!(
                (d[i] - v[i]).abs() <= v[i].abs() * f32::EPSILON,
                "{} vs {}",
                d[i],
                v[i]
            );
        }
        assert!(d[15..].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn affine_zero_points_in_range_and_zero_exact() {
        let shape = [6usize, 4];
        let v = vec![
            0.1, 0.2, 0.3, 0.4, // all positive: range widened to include 0
            -0.4, -0.3, -0.2, -0.1, // all negative
            -1.0, 0.0, 0.5, 3.0, // mixed
            0.0, 0.0, 0.0, 0.0, // all zero
            -2.0, -2.0, 1.0, 1.0, //
            7.0, 7.0, 7.0, 7.0,
        ];
        for st in [ScaleType::F32, ScaleType::F16] {
            let q = quantize_per_channel_u8(&v, &shape, st);
            let QuantData::Affine { data, zero_point } = &q.data else {
                panic!("affine expected")
            };
            assert_eq!(zero_point.len(), 6);
            assert_eq!(zero_point[0], 0);
            assert_eq!(zero_point[1], 255);
            assert_eq!(zero_point[3], 0);
            // Min and max of a channel land on the ends of the code range.
            assert_eq!(data[8], 0);
            assert_eq!(data[11], 255);
            let d = q.dequantize();
            // Zero is exactly representable (it is the zero point), so padding stays exact.
            assert_eq!(d[9], 0.0);
            assert!(d[12..16].iter().all(|&x| x == 0.0));
            for (o, (row, drow)) in rows(&v, 6).iter().zip(rows(&d, 6)).enumerate() {
                for (&a, &b) in row.iter().zip(drow) {
                    assert!(
                        (a - b).abs() <= 0.5 * q.scale[o] * 1.01 + 1e-6,
                        "{a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn blockwise_shapes_and_independent_blocks() {
        let shape = [4usize, 8, 3, 3];
        let mut v = sample(&shape, 2);
        // One huge value in block (o=1, block 1) must not coarsen the other blocks of row 1.
        v[(8 + 4) * 9] = 50.0;
        let q = quantize_blockwise_i8(&v, &shape, 4, ScaleType::F32);
        assert_eq!(q.scale_shape, vec![4, 2, 1, 1]);
        assert_eq!(q.block_sizes(), vec![1, 4, 3, 3]);
        assert_eq!(q.axis(), None);
        assert_eq!(q.scale.len(), 8);
        assert!((q.scale[3] - 50.0 / 127.0).abs() < 1e-6);
        let block0_max = v[8 * 9..12 * 9].iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(block0_max < 5.0);
        assert_eq!(
            q.scale[2],
            block0_max / 127.0,
            "block 0 of row 1 keeps its own scale"
        );
        let d = q.dequantize();
        for o in 0..4 {
            for i in 0..8 {
                let s = q.scale[o * 2 + i / 4];
                for e in 0..9 {
                    let idx = (o * 8 + i) * 9 + e;
                    assert!((v[idx] - d[idx]).abs() <= 0.5 * s * 1.0001);
                }
            }
        }
        // A single block spanning all input channels is per-channel quantization.
        let full = quantize_blockwise_i8(&v, &shape, 8, ScaleType::F32);
        assert_eq!(full, quantize_per_channel_i8(&v, &shape, ScaleType::F32));
        assert_eq!(full.axis(), Some(0));
    }

    #[test]
    fn f16_scales_are_fp16_exact() {
        let shape = [32usize, 16];
        let v = sample(&shape, 3);
        for q in [
            quantize_per_channel_i8(&v, &shape, ScaleType::F16),
            quantize_per_channel_u8(&v, &shape, ScaleType::F16),
            quantize_blockwise_i8(&v, &shape, 4, ScaleType::F16),
        ] {
            assert!(q
                .scale
                .iter()
                .all(|&s| f16::from_f32(s).to_f32() == s && s > 0.0));
        }
    }

    #[test]
    fn scale_cells_walks_blocks() {
        let cells: Vec<usize> = scale_cells(&[2, 4, 2], &[1, 2, 2]).collect();
        assert_eq!(cells, vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
        let cells: Vec<usize> = scale_cells(&[2, 3], &[2, 1]).collect();
        assert_eq!(cells, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    #[should_panic(expected = "must divide")]
    fn blockwise_rejects_uneven_blocks() {
        quantize_blockwise_i8(&[0.0; 12], &[2, 6], 4, ScaleType::F32);
    }

    /// Transposing the quantization (codes, scales, zero points) transposes the values it
    /// stands for, per channel and per block, symmetric and affine.
    #[test]
    fn transposed_quantization_dequantizes_to_the_transpose() {
        let shape = [6, 8];
        let v = sample(&shape, 7);
        for q in [
            quantize_per_channel_i8(&v, &shape, ScaleType::F32),
            quantize_per_channel_u8(&v, &shape, ScaleType::F16),
            quantize_blockwise_i8(&v, &shape, 4, ScaleType::F32),
        ] {
            let t = q.transposed().unwrap();
            assert_eq!(
                (t.shape.clone(), t.scale_shape[0]),
                (vec![8, 6], q.scale_shape[1])
            );
            assert_eq!(
                t.dequantize(),
                crate::tensor::transpose(&q.dequantize(), 6, 8)
            );
            assert_eq!(t.transposed().unwrap(), q);
        }
        let mut q = quantize_per_channel_i8(&v, &shape, ScaleType::F32);
        q.shape = vec![2, 3, 8];
        assert_eq!(q.transposed(), None);
    }
}
