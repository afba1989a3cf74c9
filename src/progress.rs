//! How a long build says where it is: the library reports stages and counts to an observer the
//! caller gives ([`crate::build::BuildOptions::progress`]) and never prints by itself; the command
//! line turns the reports into a bar on a terminal (`src/cli/progress.rs`), a build script or a
//! test records them or gives none.
//!
//! A build reports, in this order: [`Stage::ReadWeights`] (bytes of tensors read; not when
//! given weights in memory),
//! [`Stage::HashWeights`], [`Stage::Declare`], one [`Stage::Pass`] per pass (the compression
//! passes count tensors), [`Stage::WriteWeights`] (bytes of `weight.bin` written as the graph is
//! lowered) and [`Stage::Package`]; with a calibration set, [`Stage::Calibrate`] where it is
//! loaded and where it is evaluated (before compression, after the passes for activations).

use crate::tensor::Tensor;
use crate::weights::{StoredDtype, TensorInfo, TensorSource, WeightError, WeightFormat};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A step of a build, as an observer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The model's tensors read from the weights file; counts bytes as the file stores them,
    /// out of every float tensor in the file (a part read from a full checkpoint ends short).
    ReadWeights,
    /// The weights' content hash, for the package's metadata.
    HashWeights,
    /// The model's graph declared from its weights.
    Declare,
    /// The calibration set loaded, or the model evaluated on it; the weights' statistics count
    /// samples.
    Calibrate,
    /// A pass of the pipeline, by name ([`crate::passes::Pass::name`]); `palettize` and
    /// `quantize` count the tensors they compress.
    Pass(&'static str),
    /// The graph lowered to MIL while `weight.bin` is written; counts bytes written (the total
    /// is not known before: identical blobs are stored once).
    WriteWeights,
    /// The model description and manifest written, the package moved into place.
    Package,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::ReadWeights => f.write_str("reading weights"),
            Stage::HashWeights => f.write_str("hashing weights"),
            Stage::Declare => f.write_str("declaring the graph"),
            Stage::Calibrate => f.write_str("calibrating"),
            Stage::Pass(name) => write!(f, "pass {name}"),
            Stage::WriteWeights => f.write_str("writing weight.bin"),
            Stage::Package => f.write_str("writing the package"),
        }
    }
}

/// What a stage counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Tensors,
    Samples,
}

impl Stage {
    /// What [`Progress::advance`] counts in this stage (a stage that reports no counts says
    /// tensors, which it never advances).
    pub fn unit(self) -> Unit {
        match self {
            Stage::ReadWeights | Stage::WriteWeights => Unit::Bytes,
            Stage::Calibrate => Unit::Samples,
            _ => Unit::Tensors,
        }
    }
}

/// An observer of a build. Called from the building thread, in order; must be cheap (it is
/// called for every tensor read and every blob written).
pub trait Progress: Send + Sync {
    /// `stage` begins; the stage before it, if any, is over.
    fn begin(&self, stage: Stage);
    /// The current stage will count `total` units ([`Stage::unit`]), when known (a pass learns
    /// it once it has looked at the graph).
    fn total(&self, _total: u64) {}
    /// `done` units of the current stage are finished: never less than the last call's in the
    /// same stage, never more than its total.
    fn advance(&self, _done: u64) {}
}

/// An optional observer, as build options hold it: cloning shares the observer, and two
/// options that differ only here are equal (observing a build does not change what it builds).
#[derive(Clone, Default)]
pub struct Observer(Option<Arc<dyn Progress>>);

impl Observer {
    pub fn new(progress: Arc<dyn Progress>) -> Observer {
        Observer(Some(progress))
    }

    /// No observer: every report is dropped.
    pub fn none() -> Observer {
        Observer(None)
    }

    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    pub fn begin(&self, stage: Stage) {
        if let Some(p) = &self.0 {
            p.begin(stage);
        }
    }

    pub fn total(&self, total: u64) {
        if let Some(p) = &self.0 {
            p.total(total);
        }
    }

    pub fn advance(&self, done: u64) {
        if let Some(p) = &self.0 {
            p.advance(done);
        }
    }
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Some(_) => "Observer(..)",
            None => "Observer(none)",
        })
    }
}

impl PartialEq for Observer {
    fn eq(&self, _: &Observer) -> bool {
        true
    }
}

/// A tensor source whose reads are reported as [`Stage::ReadWeights`] bytes; it begins the
/// stage and states its total when made.
pub struct Observed<'s> {
    inner: &'s dyn TensorSource,
    progress: Observer,
    total: u64,
    done: AtomicU64,
}

impl<'s> Observed<'s> {
    pub fn new(inner: &'s dyn TensorSource, progress: Observer) -> Observed<'s> {
        let total = inner
            .tensors()
            .values()
            .map(stored_bytes)
            .fold(0u64, u64::saturating_add);
        progress.begin(Stage::ReadWeights);
        progress.total(total);
        Observed {
            inner,
            progress,
            total,
            done: AtomicU64::new(0),
        }
    }
}

/// A float tensor's size in the file (0 for what is never read); saturating, since the sizes
/// come from the file and only move a bar.
fn stored_bytes(info: &TensorInfo) -> u64 {
    let width = match info.dtype {
        StoredDtype::F32 => 4,
        StoredDtype::F16 | StoredDtype::BF16 => 2,
        StoredDtype::Int(_) | StoredDtype::Unsupported(_) => 0,
    };
    info.shape
        .iter()
        .fold(width, |n: u64, &d| n.saturating_mul(d as u64))
}

impl TensorSource for Observed<'_> {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn format(&self) -> WeightFormat {
        self.inner.format()
    }

    fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        self.inner.tensors()
    }

    /// A deferred handle counts as read: its tensor is read as the package is written.
    fn in_place(&self, key: &str) -> Option<crate::weights::Spilled> {
        let h = self.inner.in_place(key)?;
        if h.is_deferred() {
            self.count(key);
        }
        Some(h)
    }

    fn read(&self, key: &str) -> Result<Tensor, WeightError> {
        let t = self.inner.read(key)?;
        self.count(key);
        Ok(t)
    }
}

impl Observed<'_> {
    fn count(&self, key: &str) {
        if self.progress.is_some() {
            let bytes = self.inner.tensors().get(key).map_or(0, stored_bytes);
            // A tensor read twice counts twice: held at the total, so the count stays in range.
            let done = self
                .done
                .fetch_add(bytes, Ordering::Relaxed)
                .saturating_add(bytes)
                .min(self.total);
            self.progress.advance(done);
        }
    }
}
