//! The benchmarks' synthetic tensor files (included with `#[path]` beside
//! `safetensors_header.rs`; values from `mlc::rng`): what each tensor holds ([`Spec`], [`Fill`])
//! and the writer that streams a file of them a chunk at a time, so a file of gigabytes is never
//! in memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use super::safetensors_header;
use mlc::rng::SplitMix64;

/// A tensor of the file: shape and how to fill it.
#[derive(Debug)]
pub struct Spec {
    pub shape: Vec<usize>,
    pub fill: Fill,
}

/// A checkpoint's tensors by key, as the generators list them: a layer's parameters at a time.
#[derive(Debug, Default)]
pub struct Specs(pub BTreeMap<String, Spec>);

impl Specs {
    pub fn add(&mut self, key: String, shape: Vec<usize>, fill: Fill) {
        self.0.insert(key, Spec { shape, fill });
    }

    pub fn conv(&mut self, p: &str, cout: usize, cin: usize, k: usize) {
        self.add(format!("{p}.weight"), vec![cout, cin, k, k], Fill::Weight);
        self.add(format!("{p}.bias"), vec![cout], Fill::Bias);
    }

    pub fn linear(&mut self, p: &str, cout: usize, cin: usize) {
        self.add(format!("{p}.weight"), vec![cout, cin], Fill::Weight);
        self.add(format!("{p}.bias"), vec![cout], Fill::Bias);
    }

    pub fn norm(&mut self, p: &str, c: usize) {
        self.add(format!("{p}.weight"), vec![c], Fill::Scale);
        self.add(format!("{p}.bias"), vec![c], Fill::Bias);
    }
}

/// What a tensor holds: the fp16 fills draw pseudo-random values at a trained model's scales;
/// the others are the few non-fp16 buffers real checkpoints carry, which readers skip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fill {
    /// Uniform in ±1/√fan_in (PyTorch's default conv/linear init scale).
    Weight,
    /// Uniform in ±0.02.
    Bias,
    /// 1 ± 0.1 (norm scales).
    Scale,
    /// Exactly this value (a LoRA's alpha).
    Const(f32),
    /// fp32, every element this value (DDPM schedule buffers, `model_ema.decay`).
    F32(f32),
    /// int32, every element this value (`model_ema.num_updates`).
    I32(i32),
    /// int64 0, 1, 2, … (CLIP's `position_ids`).
    Positions,
}

impl Fill {
    /// The safetensors dtype and its bytes per element.
    pub fn dtype(self) -> (&'static str, usize) {
        match self {
            Fill::F32(_) => ("F32", 4),
            Fill::I32(_) => ("I32", 4),
            Fill::Positions => ("I64", 8),
            Fill::Weight | Fill::Bias | Fill::Scale | Fill::Const(_) => ("F16", 2),
        }
    }
}

pub fn parameters(tensors: &BTreeMap<String, Spec>) -> usize {
    tensors
        .values()
        .map(|s| s.shape.iter().product::<usize>())
        .sum()
}

/// The data bytes of the tensors' file (after the header).
fn data_bytes(tensors: &BTreeMap<String, Spec>) -> u64 {
    tensors
        .values()
        .map(|s| (s.shape.iter().product::<usize>() * s.fill.dtype().1) as u64)
        .sum()
}

/// Values per chunk: what is in memory at once while writing.
const CHUNK: usize = 1 << 20;

/// Writes the tensors as a safetensors file at `path`, streaming the data a chunk at a time;
/// four values per random draw keeps the generator well below the disk's speed.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Spec>,
    seed: u64,
) -> std::io::Result<()> {
    let header = tensors.iter().map(|(k, s)| {
        let (dtype, size) = s.fill.dtype();
        (k.as_str(), dtype, &s.shape[..], size)
    });
    let mut out = safetensors_header::create(path, header);
    let mut rng = SplitMix64(seed);
    let mut buf = Vec::with_capacity(2 * CHUNK);
    for s in tensors.values() {
        let fan_in = s.shape.iter().skip(1).product::<usize>().max(1);
        let count: usize = s.shape.iter().product();
        let (offset, scale) = match s.fill {
            Fill::Weight => (0.0, 1.0 / (fan_in as f32).sqrt()),
            Fill::Bias => (0.0, 0.02),
            Fill::Scale => (1.0, 0.1),
            Fill::Const(c) => (c, 0.0),
            // The buffers are small: written whole.
            Fill::F32(v) => {
                out.write_all(&v.to_le_bytes().repeat(count))?;
                continue;
            }
            Fill::I32(v) => {
                out.write_all(&v.to_le_bytes().repeat(count))?;
                continue;
            }
            Fill::Positions => {
                for i in 0..count as i64 {
                    out.write_all(&i.to_le_bytes())?;
                }
                continue;
            }
        };
        let mut left = count;
        while left > 0 {
            let n = left.min(CHUNK);
            buf.clear();
            let mut bits = 0u64;
            for i in 0..n {
                if i % 4 == 0 {
                    bits = rng.next_u64();
                }
                // 16 bits at a time, uniform in [-1, 1).
                let u = ((bits >> (16 * (i % 4))) & 0xffff) as f32 / 32768.0 - 1.0;
                let v = half::f16::from_f32(offset + scale * u);
                buf.extend_from_slice(&v.to_le_bytes());
            }
            out.write_all(&buf)?;
            left -= n;
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}
/// Key → shape of a safetensors file's header, reading only the header; with the file's data
/// length (all of the file after the header).
pub fn header_shapes(path: &Path) -> Result<(BTreeMap<String, Vec<usize>>, u64), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut f = File::open(path).map_err(|e| err(&e))?;
    let len = f.metadata().map_err(|e| err(&e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|e| err(&e))?;
    let n = u64::from_le_bytes(n);
    if n > (100 << 20) || n > len.saturating_sub(8) {
        return Err(err(&format!(
            "header length {n} does not fit the file ({len} bytes)"
        )));
    }
    let mut h = vec![0u8; n as usize];
    f.read_exact(&mut h).map_err(|e| err(&e))?;
    let h: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&h).map_err(|e| err(&e))?;
    let mut shapes = BTreeMap::new();
    for (k, v) in h.into_iter().filter(|(k, _)| k != "__metadata__") {
        let shape = serde_json::from_value(v["shape"].clone())
            .map_err(|e| err(&format!("tensor \"{k}\": shape: {e}")))?;
        shapes.insert(k, shape);
    }
    Ok((shapes, len - 8 - n))
}

/// Whether `path` already holds these tensors' header and exactly their data's length.
pub fn is_complete(path: &Path, tensors: &BTreeMap<String, Spec>) -> bool {
    let Ok((shapes, data)) = header_shapes(path) else {
        return false;
    };
    shapes.len() == tensors.len()
        && tensors.iter().all(|(k, s)| shapes.get(k) == Some(&s.shape))
        && data == data_bytes(tensors)
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Writes `tensors` to `path` unless a complete file is there, through a `.partial` file so an
/// interrupted run is never kept; prints what it did.
pub fn write_file(
    path: &Path,
    tensors: &BTreeMap<String, Spec>,
    seed: u64,
    name: &str,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let what = format!(
        "{name}: {} parameters in {} tensors",
        parameters(tensors),
        tensors.len()
    );
    if is_complete(path, tensors) {
        let size = std::fs::metadata(path).map_err(|e| err(&e))?.len();
        println!("{what}: kept {} ({})", path.display(), size_text(size));
        return Ok(());
    }
    let partial = path.with_extension("partial");
    let t = std::time::Instant::now();
    write_safetensors(&partial, tensors, seed).map_err(|e| err(&e))?;
    std::fs::rename(&partial, path).map_err(|e| err(&e))?;
    let secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(path).map_err(|e| err(&e))?.len();
    println!(
        "{what}: wrote {} ({}) in {secs:.1} s, {:.0} MB/s",
        path.display(),
        size_text(size),
        size as f64 / 1e6 / secs
    );
    Ok(())
}

pub fn size_text(bytes: u64) -> String {
    format!("{:.1} MB, {}", bytes as f64 / 1e6, gib(bytes))
}
