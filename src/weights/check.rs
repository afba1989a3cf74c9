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
/// fp16 build finite values beyond fp16's range (they would be stored as infinities). The first
/// such tensor in key order is named, spilled or not. A deferred tensor ([`super::deferred`])
/// not read back yet is left to [`super::Digest::check`].
pub fn check_weights(weights: &Weights, fp16: bool) -> Result<(), WeightCheckError> {
    let path = weights.path.display().to_string();
    for (key, entry) in weights.entries() {
        let values = match entry {
            super::Entry::Memory(t) => Values::of(t),
            super::Entry::Spilled(s) => match s.summary() {
                Some((_, values)) => values,
                None => continue,
            },
        };
        values.check(&path, key, fp16)?;
    }
    Ok(())
}

/// What [`check_weights`] needs to know of one tensor's values: counted as it is read, so a
/// spilled tensor is checked without reading it back.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Values {
    len: usize,
    nan: usize,
    inf: usize,
    /// Finite values beyond fp16's range, and the largest of them.
    over: usize,
    peak: f32,
}

impl Values {
    pub fn of(t: &crate::tensor::Tensor) -> Values {
        let mut s = Values {
            len: t.len(),
            ..Values::default()
        };
        // Every finite f16 is within fp16's range: most checkpoints pass here, at memory speed.
        if let crate::tensor::TensorData::F16(v) = &t.data {
            if super::f16_all_finite(v) {
                return s;
            }
        }
        // A batch at a time: an f16 tensor is never widened whole.
        super::for_each_f32_batch(t, |values| {
            for &v in values {
                if v.is_nan() {
                    s.nan += 1;
                } else if v.is_infinite() {
                    s.inf += 1;
                } else if v.abs() > FP16_MAX {
                    s.over += 1;
                    s.peak = s.peak.max(v.abs());
                }
            }
        });
        s
    }

    /// Whether any value is NaN.
    pub fn has_nan(&self) -> bool {
        self.nan > 0
    }

    pub(crate) fn check(&self, path: &str, key: &str, fp16: bool) -> Result<(), WeightCheckError> {
        let Values {
            len,
            nan,
            inf,
            over,
            peak,
        } = *self;
        if nan + inf > 0 {
            return Err(WeightCheckError::NonFinite {
                path: path.to_string(),
                tensor: key.to_string(),
                reason: format!(
                    "holds {nan} NaN and {inf} infinite value(s) of {len}; weights must be finite"
                ),
            });
        }
        if fp16 && over > 0 {
            return Err(WeightCheckError::Fp16Range {
                path: path.to_string(),
                tensor: key.to_string(),
                peak,
                over,
            });
        }
        Ok(())
    }
}
