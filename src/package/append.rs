//! Appending a large file (a model's `weight.bin`) without copying it through the page cache.
//!
//! Buffered writes copy every byte into freshly allocated page-cache pages; for a 1.4 GB
//! `weight.bin` that copy was most of a build's time (perf: half the samples, kernel side, on a
//! VM whose fresh pages are slow to touch). On Linux the bytes are instead staged in an aligned
//! chunk and written with `O_DIRECT`, which leaves the disk to copy them (DMA) while the build
//! goes on. Where `O_DIRECT` is refused (tmpfs, other systems), the same chunks are written
//! through the ordinary handle, so the file's bytes never depend on which path was taken.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

/// Direct I/O wants buffers, offsets and lengths aligned to the device's block; 4096 covers the
/// usual 512- and 4096-byte blocks.
const ALIGN: usize = 4096;
/// Bytes staged before a write: large writes keep the disk streaming.
const CHUNK: usize = 8 << 20;

#[derive(Debug)]
pub(crate) struct Appender {
    /// The ordinary handle: reads back, the final length, and writes when direct I/O is off.
    file: File,
    /// The same file opened for direct I/O, while the filesystem accepts it.
    direct: Option<File>,
    /// `CHUNK + ALIGN` bytes; the staged chunk is `staging[skew..skew + CHUNK]`, which starts
    /// on an `ALIGN` boundary in memory.
    staging: Vec<u8>,
    skew: usize,
    /// Bytes staged, not yet written.
    fill: usize,
    /// Bytes already in the file (whole chunks).
    written: u64,
}

impl Appender {
    /// Appends to `file`, which must be empty, readable and writable; `path` is the same file,
    /// reopened for direct I/O where that is possible.
    pub(crate) fn new(file: File, path: &std::path::Path) -> Appender {
        let staging = vec![0u8; CHUNK + ALIGN];
        let skew = (ALIGN - staging.as_ptr() as usize % ALIGN) % ALIGN;
        Appender {
            file,
            direct: open_direct(path),
            staging,
            skew,
            fill: 0,
            written: 0,
        }
    }

    pub(crate) fn append(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(CHUNK - self.fill);
            let at = self.skew + self.fill;
            self.staging[at..at + n].copy_from_slice(&bytes[..n]);
            self.fill += n;
            bytes = &bytes[n..];
            if self.fill == CHUNK {
                self.write_staged()?;
            }
        }
        Ok(())
    }

    /// Writes the staged bytes at `written`, padded with zeros to a whole block for direct I/O
    /// (the padding is cut off by [`Appender::finish`]).
    fn write_staged(&mut self) -> std::io::Result<()> {
        let padded = self.fill.next_multiple_of(ALIGN);
        self.staging[self.skew + self.fill..self.skew + padded].fill(0);
        if let Some(direct) = &mut self.direct {
            let chunk = &self.staging[self.skew..self.skew + padded];
            let done = direct
                .seek(SeekFrom::Start(self.written))
                .and_then(|_| direct.write_all(chunk));
            if done.is_err() {
                // Some filesystems accept the flag and refuse the writes: from here on, the
                // ordinary handle writes (the same bytes at the same offset).
                self.direct = None;
            }
        }
        if self.direct.is_none() {
            let chunk = &self.staging[self.skew..self.skew + self.fill];
            self.file.seek(SeekFrom::Start(self.written))?;
            self.file.write_all(chunk)?;
        }
        self.written += self.fill as u64;
        self.fill = 0;
        Ok(())
    }

    /// The `len` bytes appended at `start` (which must all have been appended).
    pub(crate) fn read_at(&mut self, start: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        let end = start + len as u64;
        let from_file = end.min(self.written).saturating_sub(start) as usize;
        if from_file > 0 {
            self.file.seek(SeekFrom::Start(start))?;
            self.file.read_exact(&mut out[..from_file])?;
        }
        let staged_start = start.max(self.written) - self.written;
        let at = self.skew + staged_start as usize;
        out[from_file..].copy_from_slice(&self.staging[at..at + (len - from_file)]);
        Ok(out)
    }

    /// Writes what is staged and gives back the file, `len` bytes long.
    pub(crate) fn finish(mut self) -> std::io::Result<File> {
        if self.fill > 0 {
            let len = self.written + self.fill as u64;
            self.write_staged()?;
            // Direct I/O wrote whole blocks: cut the zero padding after the last byte.
            self.file.set_len(len)?;
        }
        Ok(self.file)
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &std::path::Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &std::path::Path) -> Option<File> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the sizes of the appends, across chunk boundaries and with reads of staged,
    /// written and straddling ranges in between, the file holds exactly what was appended,
    /// with direct I/O and without.
    #[test]
    fn file_holds_exactly_the_appended_bytes() {
        let dir = tempfile::tempdir().unwrap();
        for direct in [true, false] {
            let path = dir.path().join(format!("blob{direct}"));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            let mut a = Appender::new(file, &path);
            if !direct {
                a.direct = None;
            }
            let mut expected = Vec::new();
            let mut x = 1u32;
            for size in [64, 100, CHUNK - 200, 3 * CHUNK + 17, 5, ALIGN, 1] {
                let bytes: Vec<u8> = (0..size)
                    .map(|_| {
                        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (x >> 24) as u8
                    })
                    .collect();
                a.append(&bytes).unwrap();
                expected.extend_from_slice(&bytes);
                for (start, len) in [(0, 64), (expected.len() - 3, 3), (CHUNK - 10, 20)] {
                    if start + len <= expected.len() {
                        let got = a.read_at(start as u64, len).unwrap();
                        assert_eq!(got, &expected[start..start + len], "{start}+{len}");
                    }
                }
            }
            a.finish().unwrap();
            assert!(
                std::fs::read(&path).unwrap() == expected,
                "direct: {direct}"
            );
        }
    }
}
