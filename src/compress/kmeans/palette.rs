//! The result of palettization: a LUT, an index per value, and the error.

use half::f16;

/// A palettized tensor: `values[e] ≈ lut[indices[e]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Palette {
    /// Centroids, sorted ascending; as many as there are clusters (`<= k`).
    pub lut: Vec<f32>,
    /// LUT index of every input value, in input order.
    pub indices: Vec<u16>,
    /// Sum of squared differences between the input values and `lut[indices]`, each multiplied
    /// by its element's weight for the weighted functions (computed in f64 with the f32 LUT
    /// actually stored).
    pub sse: f64,
}

impl Palette {
    /// The values the palette represents (what `constexpr_lut_to_dense` reconstructs).
    pub fn dequantize(&self) -> Vec<f32> {
        self.indices
            .iter()
            .map(|&i| self.lut[usize::from(i)])
            .collect()
    }

    /// The same palette with every LUT entry rounded to fp16 (as Core ML stores LUTs of fp16
    /// models) and each value re-assigned to its nearest rounded entry, which can only lower the
    /// error with that LUT. `values` must be the tensor this palette was computed from.
    pub fn with_f16_lut(&self, values: &[f32]) -> Palette {
        self.rounded_lut(values, |_| 1.0)
    }

    /// [`Palette::with_f16_lut`] for a palette from
    /// [`kmeans_1d_weighted`](super::kmeans_1d_weighted): nearest is still the right
    /// re-assignment (each element's term of the weighted error is independent), and
    /// `sse` stays the weighted error.
    ///
    /// # Panics
    /// If `values` or `weights` do not match the palette in length.
    pub fn with_f16_lut_weighted(&self, values: &[f32], weights: &[f32]) -> Palette {
        assert_eq!(
            weights.len(),
            self.indices.len(),
            "weights do not match the palette"
        );
        self.rounded_lut(values, |e| f64::from(weights[e]))
    }

    /// The fp16-rounded palette, with `sse` summing `weight(e)` times element `e`'s squared
    /// error.
    fn rounded_lut(&self, values: &[f32], weight: impl Fn(usize) -> f64) -> Palette {
        assert_eq!(
            values.len(),
            self.indices.len(),
            "values do not match the palette"
        );
        // Rounding is monotone, so the LUT stays sorted (ties are possible only for values that
        // are not themselves fp16-exact).
        let lut: Vec<f32> = self
            .lut
            .iter()
            .map(|&c| f16::from_f32(c).to_f32())
            .collect();
        let mut indices = Vec::with_capacity(values.len());
        let mut sse = 0.0;
        for (e, &v) in values.iter().enumerate() {
            let i = nearest(&lut, v);
            indices.push(i as u16);
            let d = f64::from(v) - f64::from(lut[i]);
            sse += weight(e) * (d * d);
        }
        Palette { lut, indices, sse }
    }
}

/// Index of the LUT entry nearest to `v` (the lower one on a tie) in a sorted LUT.
///
/// `v` is f64 so that error feedback, whose running values are f64, shares it; an f32 value
/// widens exactly and compares as before.
pub(crate) fn nearest(lut: &[f32], v: impl Into<f64>) -> usize {
    let v: f64 = v.into();
    let hi = lut.partition_point(|&c| f64::from(c) < v);
    if hi == 0 {
        return 0;
    }
    if hi == lut.len() {
        return hi - 1;
    }
    let below = v - f64::from(lut[hi - 1]);
    let above = f64::from(lut[hi]) - v;
    if above < below {
        hi
    } else {
        hi - 1
    }
}
