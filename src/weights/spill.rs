//! Tensors set aside in an unnamed temporary file between reading and writing: a large model's
//! weights pass through memory one tensor at a time instead of all at once.
//!
//! A UNet's weights are 1.7 GB (SD 1.5) to 5 GB (SDXL) in fp16, and every pass between reading
//! and `weight.bin` looks at their types, not their values. So the reader writes each large
//! tensor, as read (LoRAs fused, stored dtype), to a [`Spill`] and keeps a [`Spilled`] handle;
//! the graph carries the handle ([`crate::ir::ConstData::Spilled`]) and whatever needs the values
//! (the package writer, compression, evaluation) reads them back, one tensor at a time. The
//! file's pages belong to the page cache, not to the process, and the file has no name (the OS
//! removes it when the last handle goes, on any failure too). A handle into the weight file
//! itself may carry a change applied as it is read ([`super::deferred`]: a fused LoRA).

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use super::deferred::{Change, Deferred, Summary};
use super::{Decoded, FloatKind};
use crate::tensor::{DType, Tensor, TensorData};

/// Bytes read back per call: whole tensors are decoded from a buffer this size, not copied
/// twice.
const READ_CHUNK: usize = 1 << 20;

/// The write end: an unnamed temporary file and where the next tensor goes.
pub struct Spill {
    file: Arc<File>,
    end: u64,
}

/// One tensor in a [`Spill`]'s file: its place, stored dtype (f32 or f16) and shape. Cloning it
/// is cheap; the file lives as long as any handle does.
#[derive(Clone)]
pub struct Spilled {
    file: Arc<File>,
    offset: u64,
    /// What [`Spilled::read`] gives: the stored dtype, or the change's.
    dtype: DType,
    pub shape: Vec<usize>,
    /// A change applied to the stored values as they are read.
    deferred: Option<Arc<Deferred>>,
}

impl Spill {
    /// A new, empty spill file in the system's temporary folder.
    pub fn new() -> std::io::Result<Spill> {
        Ok(Spill {
            file: Arc::new(tempfile::tempfile()?),
            end: 0,
        })
    }

    /// Writes `t` (f32 or f16) to the file; its values are read back by [`Spilled::read`].
    pub fn put(&mut self, t: &Tensor) -> std::io::Result<Spilled> {
        let dtype = t.dtype();
        if !matches!(dtype, DType::F32 | DType::F16) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("only f32 and f16 tensors are spilled, not {dtype}"),
            ));
        }
        let bytes = t.le_bytes();
        (&*self.file).write_all(&bytes)?;
        let offset = self.end;
        self.end += bytes.len() as u64;
        Ok(Spilled {
            file: self.file.clone(),
            offset,
            dtype,
            shape: t.shape.clone(),
            deferred: None,
        })
    }
}

impl Spilled {
    /// A handle to `shape` values of `dtype` (f32 or f16, little-endian) at `offset` of a file
    /// that is not written any more (a weight file the tensor was read from).
    pub fn in_file(file: Arc<File>, offset: u64, dtype: DType, shape: Vec<usize>) -> Spilled {
        Spilled {
            file,
            offset,
            dtype,
            shape,
            deferred: None,
        }
    }

    /// This plain handle's values changed by `change` as they are read back, into a tensor of
    /// dtype `dtype` (`key`: the tensor's key, which [`Spilled::summary`] hashes); None for a
    /// handle that is already changed (changes do not stack).
    pub fn deferred(self, change: Arc<dyn Change>, dtype: DType, key: &str) -> Option<Spilled> {
        if self.deferred.is_some() {
            return None;
        }
        Some(Spilled {
            deferred: Some(Arc::new(Deferred::new(
                change,
                self.dtype,
                self.shape.clone(),
                key,
            ))),
            dtype,
            ..self
        })
    }

    /// The same handle with the tensor's key (of a model that names it otherwise than its
    /// file) in its hash leaf; a plain handle is returned as it is.
    pub fn keyed(self, key: &str) -> Spilled {
        match &self.deferred {
            Some(d) => Spilled {
                deferred: Some(Arc::new(Deferred::new(
                    d.change.clone(),
                    d.stored,
                    d.shape.clone(),
                    key,
                ))),
                ..self
            },
            None => self,
        }
    }

    /// The `t`-th of three equal parts of this plain handle along its first axis (OpenCLIP's
    /// stacked q, k, v projections): None for a changed handle, or one whose rows do not split
    /// in three.
    pub fn third(&self, t: usize) -> Option<Spilled> {
        let (&rows, rest) = self.shape.split_first()?;
        if self.deferred.is_some() || rows % 3 != 0 || t >= 3 {
            return None;
        }
        let part = (self.len() / 3).checked_mul(self.dtype.byte_size())?;
        let mut shape = vec![rows / 3];
        shape.extend_from_slice(rest);
        Some(Spilled {
            offset: self
                .offset
                .checked_add(u64::try_from(part.checked_mul(t)?).ok()?)?,
            shape,
            ..self.clone()
        })
    }

    /// Whether reading computes the values (from a span of the weight file) rather than
    /// copies them.
    pub fn is_deferred(&self) -> bool {
        self.deferred.is_some()
    }

    /// A deferred handle's hash leaf and value summary, taken by its first read (read now if
    /// none has been); None for a plain handle, whose reader took them.
    pub fn summary(&self) -> Option<std::io::Result<Summary>> {
        let d = self.deferred.as_ref()?;
        if let Some(s) = d.summary.get() {
            return Some(Ok(*s));
        }
        Some(self.read().map(|_| {
            *d.summary
                .get()
                .expect("a deferred handle's read keeps its summary")
        }))
    }

    /// The summary the first read took, if one has.
    pub fn summary_taken(&self) -> Option<Summary> {
        self.deferred.as_ref()?.summary.get().copied()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same values under another shape of as many elements (a `[cout, cin]` weight as the
    /// `[cout, cin, 1, 1]` of a 1x1 convolution); `None` when the counts differ.
    pub fn reshaped(&self, shape: Vec<usize>) -> Option<Spilled> {
        (shape.iter().product::<usize>() == self.len()).then(|| Spilled {
            shape,
            ..self.clone()
        })
    }

    /// The tensor's values, read back from the file (and changed, for a deferred handle, unless
    /// a [`super::deferred::Prefetch`] has).
    pub fn read(&self) -> std::io::Result<Tensor> {
        let Some(d) = &self.deferred else {
            return read_at(&self.file, self.offset, self.dtype, self.shape.clone());
        };
        let whole = match d.take_prefetched() {
            Some(t) => t,
            None => self.compute_whole(),
        };
        Ok(whole?.into_reshaped(self.shape.clone()))
    }

    /// A deferred handle's values in the tensor's own shape, computed now.
    pub(super) fn compute_whole(&self) -> std::io::Result<Tensor> {
        match &self.deferred {
            Some(d) => d.apply(read_at(&self.file, self.offset, d.stored, d.shape.clone())?),
            None => read_at(&self.file, self.offset, self.dtype, self.shape.clone()),
        }
    }

    pub(super) fn deferred_part(&self) -> Option<Arc<Deferred>> {
        self.deferred.clone()
    }
}

/// `shape` values of `dtype` (f32 or f16) at `offset` of `file`.
fn read_at(file: &File, offset: u64, dtype: DType, shape: Vec<usize>) -> std::io::Result<Tensor> {
    let kind = match dtype {
        DType::F16 => FloatKind::F16,
        _ => FloatKind::F32,
    };
    let n: usize = shape.iter().product();
    let mut out = Decoded::with_capacity(kind, n).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            format!("cannot allocate {n} elements to read a spilled tensor"),
        )
    })?;
    let size = kind.size();
    let mut buf = vec![0u8; READ_CHUNK.min(n * size)];
    let (mut at, mut left) = (offset, n * size);
    while left > 0 {
        let chunk = &mut buf[..left.min(READ_CHUNK)];
        read_exact_at(file, chunk, at)?;
        out.extend(chunk);
        at += chunk.len() as u64;
        left -= chunk.len();
    }
    let data = match out {
        Decoded::F16(v) => TensorData::F16(v),
        Decoded::F32(v) | Decoded::BF16(v) => TensorData::F32(v),
    };
    Ok(Tensor { shape, data })
}

/// Two handles are equal when they name the same bytes of the same file under the same shape,
/// changed by the same change (or neither changed).
impl PartialEq for Spilled {
    fn eq(&self, other: &Spilled) -> bool {
        Arc::ptr_eq(&self.file, &other.file)
            && self.offset == other.offset
            && self.dtype == other.dtype
            && self.shape == other.shape
            && match (&self.deferred, &other.deferred) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl std::fmt::Debug for Spilled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Spilled({} {:?} at {}{})",
            self.dtype,
            self.shape,
            self.offset,
            if self.is_deferred() { ", changed" } else { "" }
        )
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn tensors_read_back_as_written_in_their_dtype() {
        let mut spill = Spill::new().unwrap();
        let a = Tensor::f32(
            vec![2, 3],
            vec![1.0, -2.5, 3.25, 0.0, f32::MIN_POSITIVE, 7.0],
        );
        let big: Vec<f16> = (0..(READ_CHUNK + 3))
            .map(|i| f16::from_f32(i as f32))
            .collect();
        let b = Tensor::f16(vec![READ_CHUNK + 3], big.clone());
        let (sa, sb) = (spill.put(&a).unwrap(), spill.put(&b).unwrap());
        assert_eq!(sb.read().unwrap(), b, "a tensor longer than one read chunk");
        assert_eq!(sa.read().unwrap(), a);
        let r = sa.reshaped(vec![3, 2, 1]).unwrap();
        assert_eq!(r.read().unwrap(), a.clone().into_reshaped(vec![3, 2, 1]));
        assert!(sa.reshaped(vec![5]).is_none());
        assert_ne!(sa, sb);
        assert_eq!(sa, sa.clone());
        assert!(spill.put(&Tensor::i32(vec![1], vec![1])).is_err());
        // A third of the rows: the middle two of six.
        let mid = sa.reshaped(vec![3, 2]).unwrap().third(1).unwrap();
        assert_eq!(
            mid.read().unwrap(),
            Tensor::f32(vec![1, 2], vec![3.25, 0.0])
        );
        let stacked = Tensor::f16(vec![6], big[..6].to_vec());
        let thirds: Vec<Tensor> = (0..3)
            .map(|t| {
                spill
                    .put(&stacked)
                    .unwrap()
                    .third(t)
                    .unwrap()
                    .read()
                    .unwrap()
            })
            .collect();
        assert_eq!(thirds[2], Tensor::f16(vec![2], big[4..6].to_vec()));
        assert!(
            sa.third(0).is_none() && sa.third(3).is_none(),
            "2 rows, or a 4th third"
        );
    }
}
