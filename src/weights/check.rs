//! The weights a package can hold: finite, and within fp16's range for an fp16 build.

use super::Weights;

/// A weight the package cannot hold.
#[derive(Debug, thiserror::Error)]
pub enum WeightCheckError {
    /// Non-finite values.
    #[error("{path}: weight {tensor:?} {reason}")]
    NonFinite {
        path: String,
        tensor: String,
        reason: String,
    },
    /// A finite weight beyond fp16's range in an fp16 build.
    #[error(
        "{path}: weight {tensor:?} holds {peak} ({over} value(s) beyond fp16's largest, \
         {FP16_MAX}); build with fp32 precision"
    )]
    Fp16Range {
        path: String,
        tensor: String,
        peak: f32,
        over: usize,
    },
}

/// Largest finite fp16 value.
pub const FP16_MAX: f32 = 65504.0;

/// Refuses weights a package cannot hold: NaN or infinite values at any precision, and in an
/// fp16 build finite values beyond fp16's range (they would be stored as infinities).
pub fn check_weights(weights: &Weights, fp16: bool) -> Result<(), WeightCheckError> {
    for (key, t) in &weights.tensors {
        let err = |reason: String| WeightCheckError::NonFinite {
            path: weights.path.display().to_string(),
            tensor: key.clone(),
            reason,
        };
        // Every finite f16 is within fp16's range: most checkpoints pass here, at memory speed.
        if let crate::tensor::TensorData::F16(v) = &t.data {
            if super::f16_all_finite(v) {
                continue;
            }
        }
        let (mut nan, mut inf, mut over, mut peak) = (0usize, 0usize, 0usize, 0f32);
        // A batch at a time: an f16 tensor is never widened whole.
        super::for_each_f32_batch(t, |values| {
            for &v in values {
                if v.is_nan() {
                    nan += 1;
                } else if v.is_infinite() {
                    inf += 1;
                } else if v.abs() > FP16_MAX {
                    over += 1;
                    peak = peak.max(v.abs());
                }
            }
        });
        if nan + inf > 0 {
            return Err(err(format!(
                "holds {nan} NaN and {inf} infinite value(s) of {}; weights must be finite",
                t.len()
            )));
        }
        if fp16 && over > 0 {
            return Err(WeightCheckError::Fp16Range {
                path: weights.path.display().to_string(),
                tensor: key.clone(),
                peak,
                over,
            });
        }
    }
    Ok(())
}
