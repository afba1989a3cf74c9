//! Dense tensors that own their data: what weights load into, what IR constants hold and what the
//! evaluators compute on.
//!
//! Storage keeps the element type it was given (f32 or f16) so that an fp16 cast changes the
//! representation once, and writers emit exactly the stored bits. Evaluation always happens in
//! f32 (`to_f32`), which is exact for f16 and bf16 values.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    I32,
    /// Only as a MIL `cast` target or a loaded value; the IR computes in F32/F16.
    Bool,
}

impl DType {
    /// Name as MIL text prints it (`fp32`, `fp16`, `int32`, `bool`).
    pub fn mil_name(self) -> &'static str {
        match self {
            DType::F32 => "fp32",
            DType::F16 => "fp16",
            DType::I32 => "int32",
            DType::Bool => "bool",
        }
    }

    pub fn byte_size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 => 2,
            DType::Bool => 1,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mil_name())
    }
}

/// The elements of a tensor in their stored type.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
}

/// A dense, row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// Panics if `data` does not hold the product of `shape` elements (a programming error).
    fn checked(shape: Vec<usize>, data: TensorData) -> Tensor {
        let t = Tensor { shape, data };
        assert_eq!(
            t.shape.iter().product::<usize>(),
            t.len(),
            "shape {:?}",
            t.shape
        );
        t
    }

    /// An f32 tensor; panics if `data.len()` is not the product of `shape` (a programming error).
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor::checked(shape, TensorData::F32(data))
    }

    pub fn f16(shape: Vec<usize>, data: Vec<f16>) -> Tensor {
        Tensor::checked(shape, TensorData::F16(data))
    }

    pub fn i32(shape: Vec<usize>, data: Vec<i32>) -> Tensor {
        Tensor::checked(shape, TensorData::I32(data))
    }

    /// A rank-0 f32 tensor.
    pub fn scalar(v: f32) -> Tensor {
        Tensor::f32(vec![], vec![v])
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::I32(_) => DType::I32,
            TensorData::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values widened to f32 (exact for f16; i32 and bool converted by value).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| x as u8 as f32).collect(),
        }
    }

    /// The same values stored in `dtype` (f16 rounds to nearest even).
    pub fn cast(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let shape = self.shape.clone();
        match dtype {
            DType::F32 => Tensor::f32(shape, self.to_f32()),
            DType::F16 => {
                // The slice conversion uses the CPU's f16 instructions where it has them.
                let mut out = vec![f16::ZERO; self.len()];
                match &self.data {
                    TensorData::F32(v) => out.convert_from_f32_slice(v),
                    _ => out.convert_from_f32_slice(&self.to_f32()),
                }
                Tensor::f16(shape, out)
            }
            DType::I32 => Tensor::i32(shape, self.to_f32().into_iter().map(|x| x as i32).collect()),
            DType::Bool => Tensor {
                shape,
                data: TensorData::Bool(self.to_f32().into_iter().map(|x| x != 0.0).collect()),
            },
        }
    }

    /// Little-endian bytes of the stored elements, as weight files and blobs hold them.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        // Into fixed-size chunks of a zeroed buffer: a loop the compiler turns into wide copies,
        // where pushing two or four bytes at a time checks the capacity per element.
        let mut out = vec![0u8; self.len() * self.dtype().byte_size()];
        match &self.data {
            TensorData::F32(v) => out
                .chunks_exact_mut(4)
                .zip(v)
                .for_each(|(o, x)| o.copy_from_slice(&x.to_le_bytes())),
            TensorData::F16(v) => out
                .chunks_exact_mut(2)
                .zip(v)
                .for_each(|(o, x)| o.copy_from_slice(&x.to_le_bytes())),
            _ => return self.other_le_bytes(),
        }
        out
    }

    /// [`Tensor::to_le_bytes`] without the copy where the memory already holds those bytes
    /// (f32 and f16 on little-endian machines): a model's weights go to `weight.bin` from
    /// where they lie, not through a second copy of each tensor.
    pub fn le_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        #[cfg(target_endian = "little")]
        {
            // SAFETY: f32 and f16 (a `repr(transparent)` u16) have no padding and every byte
            // is initialized; u8 has alignment 1, the length covers exactly the same memory,
            // and the borrow of `self` keeps it alive and unchanged for the slice's lifetime.
            // On a little-endian machine these bytes are the values' little-endian encoding.
            match &self.data {
                TensorData::F32(v) => {
                    return std::borrow::Cow::Borrowed(unsafe {
                        std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), 4 * v.len())
                    })
                }
                TensorData::F16(v) => {
                    return std::borrow::Cow::Borrowed(unsafe {
                        std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), 2 * v.len())
                    })
                }
                TensorData::I32(_) | TensorData::Bool(_) => {}
            }
        }
        std::borrow::Cow::Owned(self.to_le_bytes())
    }

    fn other_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            TensorData::F32(_) | TensorData::F16(_) => unreachable!("handled by to_le_bytes"),
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| x as u8).collect(),
        }
    }

    /// [`Tensor::reshaped`] without copying the data.
    pub fn into_reshaped(self, shape: Vec<usize>) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.len(),
            "reshape {:?} -> {shape:?}",
            self.shape
        );
        Tensor {
            shape,
            data: self.data,
        }
    }

    /// The transpose of a matrix, in its stored type; None unless the tensor has rank 2.
    pub fn transposed(&self) -> Option<Tensor> {
        let &[rows, cols] = &self.shape[..] else {
            return None;
        };
        let data = match &self.data {
            TensorData::F32(v) => TensorData::F32(transpose(v, rows, cols)),
            TensorData::F16(v) => TensorData::F16(transpose(v, rows, cols)),
            TensorData::I32(v) => TensorData::I32(transpose(v, rows, cols)),
            TensorData::Bool(v) => TensorData::Bool(transpose(v, rows, cols)),
        };
        Some(Tensor {
            shape: vec![cols, rows],
            data,
        })
    }

    /// Same data, new shape with the same element count.
    pub fn reshaped(&self, shape: Vec<usize>) -> Tensor {
        self.clone().into_reshaped(shape)
    }
}

/// The transpose of the row-major `rows × cols` matrix `v` (`cols × rows`).
pub fn transpose<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    // In square tiles, so both the reads and the writes stay within a few cache lines per
    // row: a column-at-a-time walk of a 126 MB embedding table misses the cache per element.
    const TILE: usize = 32;
    let Some(&first) = v.first() else {
        return Vec::new();
    };
    let mut out = vec![first; v.len()];
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                for r in r0..r1 {
                    out[c * rows + r] = v[r * cols + c];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_moves_rows_to_columns_in_the_stored_type() {
        let m = Tensor::f16(
            vec![2, 3],
            [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
                .map(f16::from_f32)
                .to_vec(),
        );
        let t = m.transposed().expect("a matrix");
        assert_eq!(t.shape, vec![3, 2]);
        assert_eq!(t.dtype(), DType::F16);
        assert_eq!(t.to_f32(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert!(Tensor::scalar(1.0).transposed().is_none());
    }

    /// The borrowed view is the same bytes as the copy, for every dtype.
    #[test]
    fn le_bytes_are_to_le_bytes() {
        let values = [1.5f32, -0.0, 65504.0, f32::MIN_POSITIVE];
        for t in [
            Tensor::f32(vec![4], values.to_vec()),
            Tensor::f16(vec![2, 2], values.map(f16::from_f32).to_vec()),
            Tensor::f32(vec![0], vec![]),
            Tensor::i32(vec![2], vec![-1, 7]),
        ] {
            assert_eq!(t.le_bytes().as_ref(), t.to_le_bytes().as_slice(), "{t:?}");
        }
        let t = Tensor::f16(vec![1], vec![f16::from_f32(1.0)]);
        assert_eq!(t.le_bytes().as_ref(), [0x00, 0x3c]);
    }

    /// Sizes that are not multiples of the tile, so partial tiles on both edges are covered.
    #[test]
    fn transposed_matches_the_definition_across_tile_edges() {
        let (rows, cols) = (37, 70);
        let m = Tensor::f32(
            vec![rows, cols],
            (0..rows * cols).map(|i| i as f32).collect(),
        );
        let t = m.transposed().expect("a matrix").to_f32();
        let v = m.to_f32();
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(t[c * rows + r], v[r * cols + c], "({r}, {c})");
            }
        }
        let empty = Tensor::f16(vec![0, 5], vec![])
            .transposed()
            .expect("a matrix");
        assert_eq!((empty.len(), empty.shape), (0, vec![5, 0]));
    }
}
