//! Resource limits for untrusted input: the memory budget of the weight readers, and reading
//! only regular files with a bound on how many bytes are taken.
//!
//! One budget covers everything a weight file may make the readers allocate (the decoded f32
//! tensors, the storages read out of a `.pth` archive, the pickle and the objects its VM
//! builds): `min(max(16 x file size, 64 MiB), max(4 GiB, 2 x file size))` bytes (a large file
//! needs at most twice its size: bf16 widened to f32), or exactly the value of the
//! environment variable `MLC_MAX_WEIGHT_BYTES` when it is set (a number of bytes, optionally
//! with a `K`, `M` or `G` suffix, binary multiples). A small file therefore cannot expand into
//! gigabytes, and a legitimately huge checkpoint can still be read by raising the limit.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Environment variable that sets the weight-reader budget in bytes.
pub const MAX_WEIGHT_BYTES_ENV: &str = "MLC_MAX_WEIGHT_BYTES";
/// Every file may use at least this much, however small it is.
const MIN_BUDGET: u64 = 64 << 20;
/// Decoded tensors may take this many times the file's size (f16 → f32 is only 2x).
const EXPANSION: u64 = 16;
/// Default cap of a file's budget, unless the file itself is larger (then twice its size).
const MAX_BUDGET: u64 = 4 << 30;
/// Default largest weight file read at all: an SDXL UNet in fp32 is 10 GB, a FLUX checkpoint
/// 24 GB.
const MAX_FILE: u64 = 64 << 30;

/// Most elements of any one tensor the evaluator (`mlc run`) allocates, whether a package
/// declares it (a const) or an op derives it from its inputs and attributes: 2^30 (4 GiB of
/// f32). Past it an op fails, naming itself, instead of aborting on allocation.
pub const MAX_EVAL_ELEMENTS: usize = 1 << 30;

/// The element count of a tensor of `shape` the evaluator is about to allocate, computed
/// without overflow; an error past [`MAX_EVAL_ELEMENTS`].
pub fn eval_elements(shape: &[usize]) -> Result<usize, String> {
    eval_elements_within(shape, MAX_EVAL_ELEMENTS)
}

/// [`eval_elements`] with a limit of `max` elements instead (see
/// [`crate::mil::eval::EvalOptions::max_elements`]).
pub fn eval_elements_within(shape: &[usize], max: usize) -> Result<usize, String> {
    if shape.contains(&0) {
        return Ok(0);
    }
    match shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) {
        Some(n) if n <= max => Ok(n),
        _ => Err(format!(
            "a result of shape {shape:?} would exceed the evaluator's limit of {max} elements"
        )),
    }
}

/// Bytes the readers of a weight file of `file_len` bytes may allocate (see the module docs).
/// `env` looks up an environment variable (so tests need not touch the process environment).
pub fn weight_budget_with(
    file_len: u64,
    env: impl Fn(&str) -> Option<String>,
) -> Result<u64, String> {
    if let Some(v) = env(MAX_WEIGHT_BYTES_ENV).filter(|v| !v.trim().is_empty()) {
        return parse_bytes(&v).ok_or_else(|| {
            format!("{MAX_WEIGHT_BYTES_ENV}={v:?} is not a number of bytes (like 8589934592 or 8G)")
        });
    }
    let cap = MAX_BUDGET.max(file_len.saturating_mul(2));
    Ok(file_len.saturating_mul(EXPANSION).clamp(MIN_BUDGET, cap))
}

/// Largest weight file (`--weights`, or a package's `weight.bin`) read into memory at all: the
/// value of `MLC_MAX_WEIGHT_BYTES` when set, else 64 GiB.
pub fn max_weight_file_bytes() -> Result<u64, String> {
    let env = |k: &str| std::env::var(k).ok();
    match env(MAX_WEIGHT_BYTES_ENV).filter(|v| !v.trim().is_empty()) {
        Some(_) => weight_budget_with(0, env),
        None => Ok(MAX_FILE),
    }
}

/// [`weight_budget_with`] on the process environment.
pub fn weight_budget(file_len: u64) -> Result<u64, String> {
    weight_budget_with(file_len, |k| std::env::var(k).ok())
}

/// `123`, `64K`, `512M`, `8G` (also `KiB`/`MiB`/`GiB`, `KB`/`MB`/`GB`; all binary multiples).
fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// A running account of bytes allocated against a fixed limit.
#[derive(Debug, Clone)]
pub struct Budget {
    limit: u64,
    used: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget { limit, used: 0 }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn remaining(&self) -> u64 {
        self.limit - self.used
    }

    /// Takes `bytes` from the budget; the error says what `what` needed and how to allow more.
    pub fn charge(&mut self, what: &str, bytes: u64) -> Result<(), String> {
        match self.used.checked_add(bytes).filter(|&u| u <= self.limit) {
            Some(u) => {
                self.used = u;
                Ok(())
            }
            None => Err(format!(
                "{what} needs {bytes} more bytes, over the memory budget of {} bytes for this \
                 file ({} already used; set {MAX_WEIGHT_BYTES_ENV} to allow more)",
                self.limit, self.used
            )),
        }
    }
}

/// Error for something that exists but is not a regular file (a FIFO, device, socket or
/// directory): reading it could block forever or never end.
fn not_regular(meta: &std::fs::Metadata) -> io::Error {
    let ft = meta.file_type();
    let what = if ft.is_dir() {
        "a directory"
    } else {
        special_kind(&ft)
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("is {what}, not a regular file"),
    )
}

#[cfg(unix)]
fn special_kind(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_ft: &std::fs::FileType) -> &'static str {
    "a special file"
}

/// Opens `path` (following symlinks) only if it is a regular file; the type is checked before
/// opening, so a FIFO never blocks the open, and again on the open handle.
pub fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let f = File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok((f, meta.len()))
}

/// The whole of a regular file, refusing files larger than `max` bytes; never reads more than
/// the size the file had when opened (plus one byte, to notice a file that grows).
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let (f, len) = open_regular(path)?;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is {len} bytes, more than the {max} allowed"),
        ));
    }
    read_to_vec(f, len)
}

/// Like [`read_regular`] for weight files: the limit is [`max_weight_file_bytes`], and the
/// error says how to raise it.
pub fn read_weight_file(path: &Path) -> io::Result<Vec<u8>> {
    let (f, len) = open_weight_file(path)?;
    read_to_vec(f, len)
}

/// [`open_regular`] with the weight-file size limit, for readers that read parts of the file.
pub fn open_weight_file(path: &Path) -> io::Result<(File, u64)> {
    let max =
        max_weight_file_bytes().map_err(|r| io::Error::new(io::ErrorKind::InvalidInput, r))?;
    let (f, len) = open_regular(path)?;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "file is {len} bytes, more than the {max} allowed (set {MAX_WEIGHT_BYTES_ENV} to \
                 allow more)"
            ),
        ));
    }
    Ok((f, len))
}

/// All of `f`, which is `len` bytes long; the buffer is reserved up front, and a file that
/// turns out longer is an error.
fn read_to_vec(f: File, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    usize::try_from(len)
        .ok()
        .and_then(|n| buf.try_reserve_exact(n).ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("cannot allocate {len} bytes to read the file"),
            )
        })?;
    f.take(len + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file grew past its size of {len} bytes while being read"),
        ));
    }
    Ok(buf)
}

/// Whether the process `pid`, which left the temporary `path` behind, may still be using it.
/// On Linux `/proc` says; elsewhere only temporaries older than an hour are taken to be
/// abandoned. This process always counts as alive.
pub fn writer_may_be_alive(pid: u32, path: &Path) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") && Path::new("/proc/self").exists() {
        return Path::new("/proc").join(pid.to_string()).exists();
    }
    let age = std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    age.is_none_or(|a| a < std::time::Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_formula_and_override() {
        let none = |_: &str| None;
        assert_eq!(weight_budget_with(1000, none).unwrap(), 64 << 20);
        assert_eq!(weight_budget_with(10 << 20, none).unwrap(), 160 << 20);
        assert_eq!(weight_budget_with(1 << 30, none).unwrap(), 4 << 30);
        // A file larger than the cap may hold twice its size (bf16 widened), no more.
        assert_eq!(weight_budget_with(5 << 30, none).unwrap(), 10 << 30);
        assert_eq!(weight_budget_with(1 << 40, none).unwrap(), 2 << 40);
        assert_eq!(weight_budget_with(u64::MAX, none).unwrap(), u64::MAX);
        let set = |v: &'static str| move |_: &str| Some(v.to_string());
        assert_eq!(weight_budget_with(1 << 40, set("8G")).unwrap(), 8 << 30);
        assert_eq!(weight_budget_with(1, set("1000")).unwrap(), 1000);
        assert_eq!(weight_budget_with(1, set("2 MiB")).unwrap(), 2 << 20);
        assert_eq!(weight_budget_with(1, set("")).unwrap(), 64 << 20);
        let e = weight_budget_with(1, set("lots")).unwrap_err();
        assert!(e.contains("MLC_MAX_WEIGHT_BYTES=\"lots\""), "{e}");
        assert!(weight_budget_with(1, set("99999999999T")).is_err());
    }

    #[test]
    fn charges_until_the_limit() {
        let mut b = Budget::new(100);
        b.charge("a", 60).unwrap();
        b.charge("b", 40).unwrap();
        assert_eq!(b.remaining(), 0);
        let e = b.charge("tensor \"x\"", 1).unwrap_err();
        assert!(e.starts_with("tensor \"x\" needs 1 more bytes"), "{e}");
        assert!(e.contains("MLC_MAX_WEIGHT_BYTES"), "{e}");
        assert!(b.charge("huge", u64::MAX).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let e = read_regular(tmp.path(), 10).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let e = read_regular(Path::new("/dev/zero"), 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a device"), "{e}");
        let f = tmp.path().join("f");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(read_regular(&f, 5).unwrap(), b"12345");
        let e = read_regular(&f, 4).unwrap_err().to_string();
        assert!(e.contains("5 bytes, more than the 4"), "{e}");
    }
}
