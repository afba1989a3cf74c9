//! `weight.bin`: Core ML's blob storage, version 2 (all integers little-endian).
//!
//! ```text
//! 0    file header, 64 bytes: u32 blob count, u32 version (2), zeros
//! 64   metadata record, 64 bytes: u32 sentinel 0xDEADBEEF, u32 data type, u64 data size in
//!      bytes, u64 data offset (from the start of the file), u64 padding in bits, zeros
//! 128  data, then zeros up to the next multiple of 64, where the next record starts
//! ```
//!
//! MIL refers to a blob by the offset of its metadata record, not of its data. The file ends right
//! after the last blob's data (no trailing padding), as coremltools writes it.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::append::Appender;
use super::PackageError;
use crate::progress::Observer;

/// What a MIL `BlobFileValue.fileName` holds: `@model_path` is the directory of `model.mlmodel`.
pub const WEIGHTS_FILE_REF: &str = "@model_path/weights/weight.bin";

const ALIGN: usize = 64;
const HEADER_LEN: usize = 64;
const RECORD_LEN: usize = 64;
const VERSION: u32 = 2;
const SENTINEL: u32 = 0xDEAD_BEEF;

/// Element type of a blob, with the numbering blob storage uses (not MIL's `DataType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum BlobDType {
    F16 = 1,
    F32 = 2,
    U8 = 3,
    I8 = 4,
    BF16 = 5,
    I16 = 6,
    U16 = 7,
    I4 = 8,
    U1 = 9,
    U2 = 10,
    U4 = 11,
    U3 = 12,
    U6 = 13,
    I32 = 14,
    U32 = 15,
}

impl BlobDType {
    /// The type stored under `v` in a metadata record, if it is one.
    pub fn from_u32(v: u32) -> Option<Self> {
        use BlobDType::*;
        Some(match v {
            1 => F16,
            2 => F32,
            3 => U8,
            4 => I8,
            5 => BF16,
            6 => I16,
            7 => U16,
            8 => I4,
            9 => U1,
            10 => U2,
            11 => U4,
            12 => U3,
            13 => U6,
            14 => I32,
            15 => U32,
            _ => return None,
        })
    }

    /// Bits per element. Sub-byte types (fewer than 8) pack LSB-first across byte boundaries.
    pub fn bits(self) -> u32 {
        use BlobDType::*;
        match self {
            U1 => 1,
            U2 => 2,
            U3 => 3,
            I4 | U4 => 4,
            U6 => 6,
            U8 | I8 => 8,
            F16 | BF16 | I16 | U16 => 16,
            F32 | I32 | U32 => 32,
        }
    }

    /// Whether elements are narrower than a byte, so a blob may end in unused padding bits.
    pub fn is_sub_byte(self) -> bool {
        self.bits() < 8
    }
}

/// Builds a `weight.bin`, in memory or straight into a file.
///
/// The file form is what a full build uses: the weights are written as they are lowered, so a
/// model's weights are in memory once (in the graph), not twice (graph and file). Writes to the
/// file cannot fail at each [`BlobWriter::add`]: the first I/O error is kept and reported by
/// [`BlobWriter::finish_file`], and nothing is written after it.
#[derive(Debug)]
pub struct BlobWriter {
    sink: Sink,
    /// Length of the file so far (header included).
    len: u64,
    count: u32,
    /// Blobs written so far, by a cheap key; see [`BlobWriter::find`].
    seen: HashMap<QuickKey, Vec<Candidate>>,
    /// The checksum in the key: CRC-32, or a constant in tests that force collisions.
    quick: fn(&[u8]) -> u32,
    /// Told the file's length as it grows ([`BlobWriter::observe`]).
    progress: Observer,
}

/// Type, padding, length and CRC-32 of a blob: equal for identical blobs, and for different
/// ones only by chance (or by design of a hostile weight file), which [`Candidate`] handles.
type QuickKey = (BlobDType, u64, usize, u32);

/// A blob already written whose [`QuickKey`] another blob shared.
#[derive(Debug)]
struct Candidate {
    /// Offset of its metadata record.
    offset: u64,
    /// SHA-256 of its bytes, computed once a blob with the same key arrives: then each further
    /// blob is compared byte for byte only with the candidates of equal SHA-256, so blobs built
    /// to share a CRC cost one SHA-256 each, not a comparison with every earlier one.
    sha256: Option<[u8; 32]>,
}

#[derive(Debug)]
enum Sink {
    Memory(Vec<u8>),
    File {
        out: Appender,
        path: PathBuf,
        error: Option<std::io::Error>,
    },
}

impl Default for BlobWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BlobWriter {
    /// A writer that builds the file in memory ([`BlobWriter::finish`]).
    pub fn new() -> Self {
        BlobWriter {
            sink: Sink::Memory(vec![0; HEADER_LEN]),
            len: HEADER_LEN as u64,
            count: 0,
            seen: HashMap::new(),
            quick: crc32fast::hash,
            progress: Observer::none(),
        }
    }

    /// A writer that writes `path` (created or truncated) as blobs arrive
    /// ([`BlobWriter::finish_file`]).
    pub fn to_file(path: &Path) -> Result<Self, PackageError> {
        // Readable too: a deduplicated blob is compared with the bytes already written.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(PackageError::io(path))?;
        let mut out = Appender::new(file, path);
        out.append(&[0; HEADER_LEN])
            .map_err(PackageError::io(path))?;
        Ok(BlobWriter {
            sink: Sink::File {
                out,
                path: path.to_path_buf(),
                error: None,
            },
            len: HEADER_LEN as u64,
            count: 0,
            seen: HashMap::new(),
            quick: crc32fast::hash,
            progress: Observer::none(),
        })
    }

    /// Reports the file's length to `progress` as blobs are added (the caller begins the stage).
    pub fn observe(&mut self, progress: Observer) {
        self.progress = progress;
    }

    /// Appends a blob and returns the offset of its metadata record (what MIL references); an
    /// identical (dtype, bytes) blob already written is reused.
    ///
    /// Every bit of `data` counts as payload (padding 0). For sub-byte types whose element count
    /// does not fill the last byte, use [`BlobWriter::add_sub_byte`].
    pub fn add(&mut self, dtype: BlobDType, data: &[u8]) -> u64 {
        self.add_padded(dtype, data, 0)
    }

    /// Appends `count` packed sub-byte elements (LSB-first), recording how many bits of the last
    /// byte are unused, as coremltools does.
    ///
    /// # Panics
    /// If `data` is not exactly `ceil(count * dtype.bits() / 8)` bytes: that is a caller bug.
    pub fn add_sub_byte(&mut self, dtype: BlobDType, data: &[u8], count: u64) -> u64 {
        let bits = count * u64::from(dtype.bits());
        assert_eq!(
            data.len() as u64,
            bits.div_ceil(8),
            "{count} {dtype:?} elements do not fill {} bytes",
            data.len()
        );
        self.add_padded(dtype, data, data.len() as u64 * 8 - bits)
    }

    fn add_padded(&mut self, dtype: BlobDType, data: &[u8], padding_bits: u64) -> u64 {
        let key = (dtype, padding_bits, data.len(), (self.quick)(data));
        let sha256 = match self.find(&key, data) {
            Ok(offset) => return offset,
            Err(sha256) => sha256,
        };

        let offset = self.len.next_multiple_of(ALIGN as u64);
        let data_offset = offset + RECORD_LEN as u64;
        let mut record = vec![0u8; (offset - self.len) as usize + RECORD_LEN];
        let r = record.len() - RECORD_LEN;
        record[r..r + 4].copy_from_slice(&SENTINEL.to_le_bytes());
        record[r + 4..r + 8].copy_from_slice(&(dtype as u32).to_le_bytes());
        record[r + 8..r + 16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        record[r + 16..r + 24].copy_from_slice(&data_offset.to_le_bytes());
        record[r + 24..r + 32].copy_from_slice(&padding_bits.to_le_bytes());
        self.append(&record);
        self.append(data);
        self.count += 1;

        self.seen
            .entry(key)
            .or_default()
            .push(Candidate { offset, sha256 });
        offset
    }

    /// The record offset of a blob already written with `key` and bytes `data`, or else the
    /// SHA-256 of `data` if any blob shares the key (what the new blob's candidate keeps).
    ///
    /// Exact: offsets are returned only after a byte comparison. A CRC-32 match between honest
    /// blobs is almost always a duplicate, compared straight away; a candidate that turns out to
    /// differ gets its SHA-256 kept, and later blobs are compared only with the candidates of
    /// equal SHA-256.
    fn find(&mut self, key: &QuickKey, data: &[u8]) -> Result<u64, Option<[u8; 32]>> {
        let Some(candidates) = self.seen.get(key) else {
            return Err(None);
        };
        let mut checks: Vec<(usize, u64, Option<[u8; 32]>)> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.offset, c.sha256))
            .collect();
        let mut own: Option<[u8; 32]> = None;
        for (i, offset, sha256) in checks.drain(..) {
            let start = offset + RECORD_LEN as u64;
            match sha256 {
                Some(theirs) => {
                    let mine = *own.get_or_insert_with(|| Sha256::digest(data).into());
                    if theirs == mine && self.stored_equals(start, data) {
                        return Ok(offset);
                    }
                }
                None => {
                    let Some(stored) = self.stored(start, data.len()) else {
                        continue;
                    };
                    if stored.as_ref() == data {
                        return Ok(offset);
                    }
                    let theirs: [u8; 32] = Sha256::digest(&stored).into();
                    if let Some(c) = self.seen.get_mut(key).and_then(|c| c.get_mut(i)) {
                        c.sha256 = Some(theirs);
                    }
                }
            }
        }
        Err(Some(own.unwrap_or_else(|| Sha256::digest(data).into())))
    }

    fn append(&mut self, bytes: &[u8]) {
        match &mut self.sink {
            Sink::Memory(buf) => buf.extend_from_slice(bytes),
            Sink::File { out, error, .. } => {
                if error.is_none() {
                    if let Err(e) = out.append(bytes) {
                        *error = Some(e);
                    }
                }
            }
        }
        self.len += bytes.len() as u64;
        self.progress.advance(self.len);
    }

    /// Whether the bytes at `start` are `data` (a hash hit, checked).
    fn stored_equals(&mut self, start: u64, data: &[u8]) -> bool {
        self.stored(start, data.len())
            .is_some_and(|stored| stored.as_ref() == data)
    }

    /// The `len` bytes written at `start`; None once a write or this read has failed (the
    /// error is kept for [`BlobWriter::finish_file`]).
    fn stored(&mut self, start: u64, len: usize) -> Option<std::borrow::Cow<'_, [u8]>> {
        match &mut self.sink {
            Sink::Memory(buf) => Some(std::borrow::Cow::Borrowed(
                &buf[start as usize..start as usize + len],
            )),
            Sink::File { out, error, .. } => {
                if error.is_some() {
                    return None;
                }
                match out.read_at(start, len) {
                    Ok(stored) => Some(std::borrow::Cow::Owned(stored)),
                    Err(e) => {
                        *error = Some(e);
                        None
                    }
                }
            }
        }
    }

    /// Whether no blob was added (a package without weights needs no `weight.bin`).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the blobs go to a file.
    pub fn is_file(&self) -> bool {
        matches!(self.sink, Sink::File { .. })
    }

    fn header(&self) -> [u8; 8] {
        let mut h = [0; 8];
        h[0..4].copy_from_slice(&self.count.to_le_bytes());
        h[4..8].copy_from_slice(&VERSION.to_le_bytes());
        h
    }

    /// The whole `weight.bin` of an in-memory writer.
    ///
    /// # Panics
    /// For a writer made by [`BlobWriter::to_file`] (a caller bug).
    pub fn finish(self) -> Vec<u8> {
        let header = self.header();
        let Sink::Memory(mut buf) = self.sink else {
            panic!("finish() of a file-backed BlobWriter: use finish_file()");
        };
        buf[0..8].copy_from_slice(&header);
        buf
    }

    /// Completes the file of a writer made by [`BlobWriter::to_file`]: its length, or the first
    /// error any write met.
    ///
    /// # Panics
    /// For an in-memory writer (a caller bug).
    pub fn finish_file(self) -> Result<u64, PackageError> {
        let header = self.header();
        let Sink::File { out, path, error } = self.sink else {
            panic!("finish_file() of an in-memory BlobWriter: use finish()");
        };
        if let Some(e) = error {
            return Err(PackageError::io(&path)(e));
        }
        out.finish()
            .and_then(|mut file| {
                file.seek(SeekFrom::Start(0))?;
                file.write_all(&header)
            })
            .map_err(PackageError::io(&path))?;
        Ok(self.len)
    }
}

/// One blob as stored: its type, payload, and unused bits at the end of the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobRecord<'a> {
    pub dtype: BlobDType,
    pub data: &'a [u8],
    /// Unused high bits of the last byte (sub-byte types only); the element count is
    /// `(data.len() * 8 - padding_bits) / dtype.bits()`.
    pub padding_bits: u8,
}

impl BlobRecord<'_> {
    /// Number of elements the blob holds.
    pub fn element_count(&self) -> u64 {
        (self.data.len() as u64 * 8 - u64::from(self.padding_bits)) / u64::from(self.dtype.bits())
    }
}

/// Reads blobs out of a `weight.bin` held in memory.
#[derive(Clone, Copy, Debug)]
pub struct BlobReader<'a> {
    bytes: &'a [u8],
    count: u32,
}

fn err(offset: u64, reason: impl Into<String>) -> PackageError {
    PackageError::Blob {
        path: PathBuf::from("weight.bin"),
        offset,
        reason: reason.into(),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8-byte slice"))
}

impl<'a> BlobReader<'a> {
    /// Validates the file header: present, version 2, and a blob count the file can hold.
    pub fn new(bytes: &'a [u8]) -> Result<Self, PackageError> {
        if bytes.len() < HEADER_LEN {
            return Err(err(
                0,
                format!(
                    "file is {} bytes, shorter than the {HEADER_LEN}-byte header",
                    bytes.len()
                ),
            ));
        }
        let count = u32_at(bytes, 0);
        let version = u32_at(bytes, 4);
        if version != VERSION {
            return Err(err(
                4,
                format!("blob storage version {version}, expected {VERSION}"),
            ));
        }
        // Each blob needs at least its metadata record, so a larger count means truncation.
        let min_len = HEADER_LEN as u64 + u64::from(count) * RECORD_LEN as u64;
        if (bytes.len() as u64) < min_len {
            return Err(err(
                0,
                format!(
                    "header claims {count} blobs, which need at least {min_len} bytes, but the \
                     file is {} bytes",
                    bytes.len()
                ),
            ));
        }
        Ok(BlobReader { bytes, count })
    }

    /// The blob whose metadata record is at `offset`: checks alignment, sentinel, type, and that
    /// the data lies inside the file.
    pub fn get(&self, offset: u64) -> Result<(BlobDType, &'a [u8]), PackageError> {
        self.record(offset).map(|r| (r.dtype, r.data))
    }

    /// Like [`BlobReader::get`], with the padding needed to count sub-byte elements.
    pub fn record(&self, offset: u64) -> Result<BlobRecord<'a>, PackageError> {
        let len = self.bytes.len() as u64;
        if offset < HEADER_LEN as u64 || offset % ALIGN as u64 != 0 {
            return Err(err(
                offset,
                "not a metadata record offset (records start on 64-byte boundaries after the \
                 header)",
            ));
        }
        if offset
            .checked_add(RECORD_LEN as u64)
            .is_none_or(|end| end > len)
        {
            return Err(err(
                offset,
                format!("metadata record runs past the end of the {len}-byte file"),
            ));
        }
        let rec = &self.bytes[offset as usize..offset as usize + RECORD_LEN];
        let sentinel = u32_at(rec, 0);
        if sentinel != SENTINEL {
            return Err(err(
                offset,
                format!("bad sentinel {sentinel:#010x}, expected {SENTINEL:#010x}"),
            ));
        }
        let raw_dtype = u32_at(rec, 4);
        let dtype = BlobDType::from_u32(raw_dtype)
            .ok_or_else(|| err(offset, format!("unknown blob data type {raw_dtype}")))?;
        let size = u64_at(rec, 8);
        let data_offset = u64_at(rec, 16);
        let padding_bits = u64_at(rec, 24);
        let end = data_offset
            .checked_add(size)
            .filter(|&end| end <= len)
            .ok_or_else(|| {
                err(
                    offset,
                    format!(
                        "data of {size} bytes at offset {data_offset} runs past the end of the \
                         {len}-byte file"
                    ),
                )
            })?;
        let bits = u64::from(dtype.bits());
        if dtype.is_sub_byte() {
            if padding_bits >= 8 || padding_bits > size * 8 || (size * 8 - padding_bits) % bits != 0
            {
                return Err(err(
                    offset,
                    format!(
                        "{padding_bits} padding bits do not fit {size} bytes of {dtype:?} data"
                    ),
                ));
            }
        } else if padding_bits != 0 || size % (bits / 8) != 0 {
            return Err(err(
                offset,
                format!(
                    "{size} bytes with {padding_bits} padding bits is not a whole number of \
                     {dtype:?} elements"
                ),
            ));
        }
        Ok(BlobRecord {
            dtype,
            data: &self.bytes[data_offset as usize..end as usize],
            padding_bits: padding_bits as u8,
        })
    }

    /// Number of blobs, as the header states.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Offsets of all metadata records, found by walking the file in order the way writers lay
    /// it out (each record at the 64-byte boundary after the previous blob's data).
    pub fn offsets(&self) -> Result<Vec<u64>, PackageError> {
        let mut out = Vec::with_capacity(self.len());
        let mut at = HEADER_LEN as u64;
        for _ in 0..self.count {
            let rec = self.record(at)?;
            out.push(at);
            let data_start = rec.data.as_ptr() as usize - self.bytes.as_ptr() as usize;
            at = (data_start + rec.data.len()).next_multiple_of(ALIGN) as u64;
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Written by coremltools 9.0 (see tests/data/make_ct_conv_relu.py): one fp16 blob holding
    /// the 8x4x3x3 conv weight.
    const CT_WEIGHTS: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ct_conv_relu.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
    ));

    /// The file a file-backed writer leaves is byte for byte what the in-memory one builds,
    /// deduplication (read back from the file) included.
    #[test]
    fn file_backed_writer_writes_the_same_bytes() {
        let blobs: [(BlobDType, Vec<u8>); 4] = [
            (BlobDType::F16, vec![1; 100]),
            (BlobDType::U8, vec![2; 7]),
            (BlobDType::F16, vec![1; 100]),
            (BlobDType::F32, (0..=255).collect()),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weight.bin");
        let (mut mem, mut file) = (BlobWriter::new(), BlobWriter::to_file(&path).unwrap());
        for (dtype, data) in &blobs {
            assert_eq!(mem.add(*dtype, data), file.add(*dtype, data));
        }
        let len = file.finish_file().unwrap();
        let bytes = mem.finish();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!(len, bytes.len() as u64);
        assert_eq!(
            BlobReader::new(&bytes).unwrap().len(),
            3,
            "one duplicate stored once"
        );
        let missing = dir.path().join("no/such/dir/weight.bin");
        let e = BlobWriter::to_file(&missing).unwrap_err().to_string();
        assert!(e.contains("no/such/dir"), "{e}");
    }

    /// With every blob's CRC forced equal, dedup still shares exactly the identical blobs, in
    /// memory and in a file (where candidates are read back), and the files agree.
    #[test]
    fn forced_checksum_collisions_never_share_different_blobs() {
        let blobs: Vec<Vec<u8>> = vec![
            vec![1; 64],
            vec![2; 64],
            vec![1; 64],
            vec![3; 64],
            vec![2; 64],
            vec![3; 64],
            vec![4; 63],
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weight.bin");
        let mut mem = BlobWriter::new();
        let mut file = BlobWriter::to_file(&path).unwrap();
        for w in [&mut mem, &mut file] {
            w.quick = |_| 7;
        }
        let mut offsets = Vec::new();
        for b in &blobs {
            let at = mem.add(BlobDType::U8, b);
            assert_eq!(file.add(BlobDType::U8, b), at);
            offsets.push(at);
        }
        // Equal offsets exactly where the bytes are equal.
        for (i, a) in blobs.iter().enumerate() {
            for (j, b) in blobs.iter().enumerate() {
                assert_eq!(offsets[i] == offsets[j], a == b, "blobs {i} and {j}");
            }
        }
        file.finish_file().unwrap();
        let bytes = mem.finish();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let r = BlobReader::new(&bytes).unwrap();
        assert_eq!(r.len(), 4);
        for (b, &at) in blobs.iter().zip(&offsets) {
            assert_eq!(r.get(at).unwrap(), (BlobDType::U8, &b[..]));
        }
    }

    #[test]
    fn reads_coremltools_weights() {
        let r = BlobReader::new(CT_WEIGHTS).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r.offsets().unwrap(), [64]);
        let (dtype, data) = r.get(64).unwrap();
        assert_eq!(dtype, BlobDType::F16);
        assert_eq!(data.len(), 8 * 4 * 3 * 3 * 2);
        assert_eq!(r.record(64).unwrap().element_count(), 8 * 4 * 3 * 3);
        // Standard-normal weights: every value finite and within a plausible range.
        for pair in data.chunks_exact(2) {
            let v = half::f16::from_le_bytes([pair[0], pair[1]]).to_f32();
            assert!(v.is_finite() && v.abs() < 10.0, "implausible weight {v}");
        }
    }

    #[test]
    fn writer_reproduces_coremltools_layout() {
        let (dtype, data) = BlobReader::new(CT_WEIGHTS).unwrap().get(64).unwrap();
        let mut w = BlobWriter::new();
        assert!(w.is_empty());
        assert_eq!(w.add(dtype, data), 64);
        assert!(!w.is_empty());
        assert_eq!(w.finish(), CT_WEIGHTS);
    }

    #[test]
    fn records_are_aligned_and_identical_blobs_shared() {
        let mut w = BlobWriter::new();
        let a = w.add(BlobDType::F32, &[1, 2, 3, 4]);
        let b = w.add(BlobDType::U8, &[9; 100]);
        let a_again = w.add(BlobDType::F32, &[1, 2, 3, 4]);
        // Same bytes, different type: a different blob.
        let c = w.add(BlobDType::U8, &[1, 2, 3, 4]);
        assert_eq!((a, b, a_again, c), (64, 192, 64, 384));
        let bytes = w.finish();
        assert_eq!(bytes.len(), 384 + 64 + 4, "no padding after the last blob");
        assert_eq!(&bytes[..8], &[3, 0, 0, 0, 2, 0, 0, 0]);
        assert!(bytes[8..64].iter().all(|&b| b == 0));
        // Data after the 100-byte blob is zero-filled up to the next record.
        assert!(bytes[256 + 100..384].iter().all(|&b| b == 0));
        let r = BlobReader::new(&bytes).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r.offsets().unwrap(), [64, 192, 384]);
        assert_eq!(r.get(a).unwrap(), (BlobDType::F32, &[1, 2, 3, 4][..]));
        assert_eq!(r.get(b).unwrap(), (BlobDType::U8, &[9; 100][..]));
        assert_eq!(r.get(c).unwrap(), (BlobDType::U8, &[1, 2, 3, 4][..]));
    }

    /// coremltools' writer stores 5 uint3 values [1,2,3,4,5] as bytes d1 58 with 1 padding bit,
    /// and 3 int4 values [1,-2,3] as e1 03 with 4 (checked against libmilstoragepython).
    #[test]
    fn sub_byte_padding_matches_coremltools() {
        let mut w = BlobWriter::new();
        let u3 = w.add_sub_byte(BlobDType::U3, &[0xd1, 0x58], 5);
        let i4 = w.add_sub_byte(BlobDType::I4, &[0xe1, 0x03], 3);
        let bytes = w.finish();
        assert_eq!(
            &bytes[u3 as usize + 24..u3 as usize + 32],
            &1u64.to_le_bytes()
        );
        let r = BlobReader::new(&bytes).unwrap();
        let rec = r.record(u3).unwrap();
        assert_eq!((rec.padding_bits, rec.element_count()), (1, 5));
        let rec = r.record(i4).unwrap();
        assert_eq!(
            (rec.dtype, rec.padding_bits, rec.element_count()),
            (BlobDType::I4, 4, 3)
        );
    }

    #[test]
    fn dtype_numbers_round_trip() {
        for v in 0..20 {
            match BlobDType::from_u32(v) {
                Some(d) => assert_eq!(d as u32, v),
                None => assert!(v == 0 || v > 15),
            }
        }
    }

    #[test]
    fn rejects_corrupt_files_with_offsets() {
        let mut w = BlobWriter::new();
        w.add(BlobDType::F16, &[0; 32]);
        let good = w.finish();

        let short = BlobReader::new(&good[..10]).unwrap_err();
        assert!(short.to_string().contains("weight.bin"), "{short}");

        let mut bad_version = good.clone();
        bad_version[4] = 3;
        assert!(matches!(
            BlobReader::new(&bad_version),
            Err(PackageError::Blob { offset: 4, .. })
        ));

        let truncated = &good[..good.len() - 1];
        let r = BlobReader::new(truncated).unwrap();
        let e = r.get(64).unwrap_err();
        assert!(matches!(e, PackageError::Blob { offset: 64, .. }), "{e}");
        assert!(e.to_string().contains("runs past the end"), "{e}");

        let r = BlobReader::new(&good).unwrap();
        for off in [0, 65, 128, u64::MAX, u64::MAX - 63] {
            assert!(r.get(off).is_err(), "offset {off} accepted");
        }

        let mut bad_sentinel = good.clone();
        bad_sentinel[64] ^= 1;
        let e = BlobReader::new(&bad_sentinel).unwrap().get(64).unwrap_err();
        assert!(e.to_string().contains("sentinel"), "{e}");

        let mut odd_size = good.clone();
        odd_size[72] = 31;
        assert!(BlobReader::new(&odd_size).unwrap().get(64).is_err());

        let mut too_many = good.clone();
        too_many[0] = 2;
        assert!(BlobReader::new(&too_many).is_err());
    }

    /// xorshift64*: a fixed, dependency-free stream of pseudo-random numbers for the fuzz loops.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Reads everything a reader offers, which must never panic whatever the bytes. Returns
    /// the records walked from the header on, if the whole file was accepted.
    fn exercise(bytes: &[u8], rng: &mut Rng) -> Option<Vec<(u64, BlobDType, Vec<u8>)>> {
        let r = BlobReader::new(bytes).ok()?;
        let walked = r.offsets();
        for off in (0..bytes.len() as u64 + 128).step_by(64) {
            if let Ok(rec) = r.record(off) {
                let _ = rec.element_count();
            }
        }
        for _ in 0..4 {
            let _ = r.get(rng.next());
        }
        let records = walked
            .ok()?
            .into_iter()
            .map(|o| {
                let (dtype, data) = r.get(o).expect("offsets() checked every record");
                (o, dtype, data.to_vec())
            })
            .collect();
        Some(records)
    }

    #[test]
    fn corrupt_input_never_panics() {
        let mut w = BlobWriter::new();
        let offsets = [
            w.add(BlobDType::F16, &[7; 576]),
            w.add_sub_byte(BlobDType::U3, &[0xd1, 0x58], 5),
            w.add(BlobDType::I32, &[1; 12]),
        ];
        let good = w.finish();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

        // The pristine file is read whole, as written.
        let pristine = exercise(&good, &mut rng).expect("the pristine file is accepted");
        let walked: Vec<u64> = pristine.iter().map(|r| r.0).collect();
        assert_eq!(walked, offsets);
        assert_eq!(pristine[0].2, vec![7; 576]);

        // The file ends right after the last blob's data, so every strict prefix is refused.
        for len in 0..good.len() {
            assert!(
                exercise(&good[..len], &mut rng).is_none(),
                "a {len}-byte prefix was accepted"
            );
        }

        // Bytes nothing reads (the header's and records' zero tails, the gaps between blobs)
        // may be anything: each changed alone leaves the same blobs.
        let mut used = vec![false; good.len()];
        used[..8].fill(true);
        for (off, _, data) in &pristine {
            let o = *off as usize;
            used[o..o + 32].fill(true);
            used[o + RECORD_LEN..o + RECORD_LEN + data.len()].fill(true);
        }
        let padding: Vec<usize> = (0..good.len()).filter(|&i| !used[i]).collect();
        assert!(padding.len() > 100, "{}", padding.len());
        for &i in &padding {
            let mut b = good.clone();
            b[i] = 0xA5;
            assert_eq!(exercise(&b, &mut rng).as_ref(), Some(&pristine), "byte {i}");
        }

        // Random damage, aimed half the time at header and record fields: some of it is
        // accepted (payload and padding bytes), much is refused, none panics.
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                // Favour the header and record fields, where corruption matters most.
                let i = if rng.below(2) == 0 {
                    i % 32 + 64 * rng.below(4)
                } else {
                    i
                };
                let last = b.len() - 1;
                b[i.min(last)] = rng.next() as u8;
            }
            // Sizes and offsets near the u64 limit probe overflow in bounds checks.
            if rng.below(8) == 0 {
                let at = 64 + 8 * (1 + rng.below(3));
                b[at..at + 8].copy_from_slice(&(u64::MAX - rng.below(200) as u64).to_le_bytes());
            }
            match exercise(&b, &mut rng) {
                Some(_) => accepted += 1,
                None => refused += 1,
            }
        }
        assert!(
            accepted > 300 && refused > 300,
            "{accepted} accepted, {refused} refused"
        );
    }
}
