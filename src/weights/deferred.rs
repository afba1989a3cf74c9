//! A change applied to a tensor of a weight file each time its handle is read back, instead of
//! once at load time with the result stored: a LoRA fused into the UNet weight it adapts as the
//! package writer reads that weight.
//!
//! Fusing a rank-32 LoRA into SDXL changes 2.2 G of its 2.6 G values. Fused at load time, they
//! had to be kept somewhere until `weight.bin` was written: 4.4 GB in memory, or written to a
//! temporary file and read back (the LoRA then added 11.9 s to a 9 s build here, where writes
//! beyond the kernel's dirty limit go at the disk's speed; fused as written, 1.3 s). They are
//! computed once and stored nowhere but in the package. What the build needs of them before that
//! (the weights hash, the value check) waits for the first read ([`super::Spilled::summary`]);
//! [`super::Digest`] reads those nobody read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use super::check::Values;
use crate::tensor::{DType, Tensor};

/// How a tensor as its file stores it becomes the tensor its source reads.
pub trait Change: Send + Sync {
    /// `stored` changed; a failure is one line naming the file and the key.
    fn apply(&self, stored: Tensor) -> Result<Tensor, String>;
}

/// A tensor's hash leaf (of [`super::Weights::content_sha256`]) and its value summary.
pub type Summary = ([u8; 32], Values);

/// The change of one handle, with what its first read learnt of the changed values.
pub(super) struct Deferred {
    pub change: Arc<dyn Change>,
    /// The values' dtype in the file (the handle's is the changed tensor's).
    pub stored: DType,
    /// The tensor's own shape: a reshaped view reads the whole tensor, then takes its shape.
    pub shape: Vec<usize>,
    /// The model's key of the tensor, which its hash leaf starts with.
    pub key: String,
    pub summary: OnceLock<Summary>,
    /// Values a [`Prefetch`] computed ahead of the reader, and the reader's wait for them.
    slot: Mutex<Slot>,
    filled: Condvar,
}

/// Where a [`Prefetch`] is with one handle.
enum Slot {
    /// Not started: the first to come computes the values.
    Idle,
    /// The prefetcher is computing them: a reader waits.
    Computing,
    /// Computed (in the handle's own shape), not yet read.
    Ready(std::io::Result<Tensor>),
    /// Read, or computed by the reader itself: the prefetcher leaves it.
    Done,
}

impl Deferred {
    pub fn new(change: Arc<dyn Change>, stored: DType, shape: Vec<usize>, key: &str) -> Deferred {
        Deferred {
            change,
            stored,
            shape,
            key: key.to_string(),
            summary: OnceLock::new(),
            slot: Mutex::new(Slot::Idle),
            filled: Condvar::new(),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        // A slot holds no invariant a panicking holder could break.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The values a prefetcher computed (waiting while it computes them); None when the reader
    /// is to compute them itself (and the prefetcher is then told to skip them).
    pub fn take_prefetched(&self) -> Option<std::io::Result<Tensor>> {
        let mut slot = self.slot();
        loop {
            match std::mem::replace(&mut *slot, Slot::Done) {
                Slot::Ready(t) => {
                    self.filled.notify_all();
                    return Some(t);
                }
                Slot::Computing => {
                    *slot = Slot::Computing;
                    slot = self.filled.wait(slot).unwrap_or_else(|e| e.into_inner());
                }
                Slot::Idle | Slot::Done => return None,
            }
        }
    }

    /// Changes `stored` and keeps the summary of the result if it is the first.
    pub fn apply(&self, stored: Tensor) -> std::io::Result<Tensor> {
        let t = self
            .change
            .apply(stored)
            .map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidData, ChangeFailed(m)))?;
        self.summary
            .get_or_init(|| super::SpilledTensor::summarize(&self.key, &t));
        Ok(t)
    }
}

/// A [`Change`] that failed (a fused value out of range): its message is whole, not an I/O
/// failure of the file the values are in.
#[derive(Debug)]
pub struct ChangeFailed(pub String);

impl std::fmt::Display for ChangeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ChangeFailed {}

/// Whether `e`, from reading a handle back, is its change's failure (whose message is whole).
pub fn is_change_failure(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<ChangeFailed>())
}

/// A thread that computes deferred handles ahead of a reader that reads them in a known order
/// (the package writer, weight after weight), at most `ahead` computed and unread at a time:
/// the fusion and hashing of the next weights go on beside the writing of this one. Dropping it
/// stops the thread; handles it has not reached are computed by their reader.
pub struct Prefetch {
    stop: Arc<AtomicBool>,
    handles: Arc<Vec<(super::Spilled, Arc<Deferred>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prefetch {
    /// Starts computing `handles` (deferred ones; others are ignored), in order.
    pub fn start(handles: Vec<super::Spilled>, ahead: usize) -> Prefetch {
        let mut seen = std::collections::HashSet::new();
        let handles: Vec<_> = handles
            .into_iter()
            .filter_map(|h| {
                let d = h.deferred_part()?;
                seen.insert(Arc::as_ptr(&d) as *const () as usize)
                    .then_some((h, d))
            })
            .collect();
        let handles = Arc::new(handles);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = (!handles.is_empty()).then(|| {
            let (handles, stop) = (handles.clone(), stop.clone());
            std::thread::spawn(move || prefetch(&handles, ahead.max(1), &stop))
        });
        Prefetch {
            stop,
            handles,
            thread,
        }
    }
}

fn prefetch(handles: &[(super::Spilled, Arc<Deferred>)], ahead: usize, stop: &AtomicBool) {
    for (i, (handle, d)) in handles.iter().enumerate() {
        // No more than `ahead` computed and unread: wait for the reader to take the one
        // `ahead` places back.
        if let Some((_, back)) = i.checked_sub(ahead).map(|j| &handles[j]) {
            let mut slot = back.slot();
            while matches!(*slot, Slot::Ready(_)) && !stop.load(Ordering::Relaxed) {
                slot = back.filled.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut slot = d.slot();
            if !matches!(*slot, Slot::Idle) {
                continue;
            }
            *slot = Slot::Computing;
        }
        // A panic must not leave a reader waiting on a slot that is never filled.
        let values =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle.compute_whole()))
                .unwrap_or_else(|_| {
                    Err(std::io::Error::other("the fusion of this weight panicked"))
                });
        *d.slot() = Slot::Ready(values);
        d.filled.notify_all();
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, d) in self.handles.iter() {
            // Under the lock: the prefetcher is either waiting (and is woken) or will see
            // the flag before it waits again.
            let _slot = d.slot();
            d.filled.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Values computed and never read are dropped with the slots.
        for (_, d) in self.handles.iter() {
            let mut slot = d.slot();
            if matches!(*slot, Slot::Ready(_)) {
                *slot = Slot::Done;
            }
        }
    }
}
