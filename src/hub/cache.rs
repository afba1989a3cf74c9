//! The on-disk layout `huggingface_hub` uses, so files fetched by mlc and by Python tools are
//! shared:
//!
//! ```text
//! <cache>/models--{org}--{name}/blobs/<sha256>
//! <cache>/models--{org}--{name}/snapshots/<commit>/<file>  -> ../../blobs/<sha256>
//! <cache>/models--{org}--{name}/refs/<branch>              (holds <commit>)
//! ```
//!
//! huggingface_hub names blobs by ETag, which for LFS files (all weights files) is the sha256
//! of the content; mlc names them by the sha256 it computed, which is the same name.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{HubError, Source};

/// `<cache>/models--{org}--{name}`.
pub fn repo_dir(cache_dir: &Path, repo: &str) -> PathBuf {
    cache_dir.join(format!("models--{}", repo.replace('/', "--")))
}

/// A full git commit id: only these name snapshot directories.
pub fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit a revision stands for in this cache: itself if it is a commit, else what
/// `refs/<rev>` says, else the revision name itself (huggingface_hub's fallback too).
pub(crate) fn commit_for(repo_dir: &Path, revision: &str) -> Result<String, HubError> {
    if is_commit(revision) {
        return Ok(revision.to_string());
    }
    let refs = repo_dir.join("refs").join(revision);
    match fs::read_to_string(&refs) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(revision.to_string()),
        Err(e) => Err(HubError::io(&refs, e)),
    }
}

/// `snapshots/<commit>/<file>` for `src`, whether or not it exists.
pub(crate) fn snapshot_path(repo_dir: &Path, commit: &str, file: &str) -> PathBuf {
    let mut p = repo_dir.join("snapshots").join(commit);
    for part in file.split('/') {
        p.push(part);
    }
    p
}

/// Lower-case hex sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String, HubError> {
    let mut f = fs::File::open(path).map_err(|e| HubError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| HubError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The safetensors crate's limit on the JSON header.
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Why the file at `path` is not a structurally valid safetensors file (header length, JSON
/// header, tensor offsets covering exactly the rest of the file), or `None` if it is. Reads
/// only the header, so a large file costs no more than a small one.
pub(crate) fn safetensors_problem(path: &Path) -> Option<String> {
    let check = || -> Result<(), String> {
        let (f, len) = crate::limits::open_regular(path).map_err(|e| e.to_string())?;
        let mut f = f.take(len);
        let mut n = [0u8; 8];
        f.read_exact(&mut n)
            .map_err(|_| format!("{len} bytes, shorter than a header"))?;
        let n = u64::from_le_bytes(n);
        let header_end = n
            .checked_add(8)
            .filter(|&e| e <= len && n <= MAX_SAFETENSORS_HEADER);
        let Some(header_end) = header_end else {
            return Err(format!(
                "header length {n} does not fit the {len}-byte file (not safetensors, or cut off)"
            ));
        };
        let mut header = Vec::with_capacity(n as usize);
        (&mut f)
            .take(n)
            .read_to_end(&mut header)
            .map_err(|e| e.to_string())?;
        let meta: safetensors::tensor::Metadata =
            serde_json::from_slice(&header).map_err(|e| format!("bad header: {e}"))?;
        let data = len - header_end;
        if meta.data_len() as u64 != data {
            return Err(format!(
                "header describes {} bytes of tensor data, the file holds {data}",
                meta.data_len()
            ));
        }
        Ok(())
    };
    check().err()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) enum Lookup {
    /// Cached, and matching the pin if there is one.
    Hit {
        path: PathBuf,
        commit: String,
        sha256: String,
    },
    /// Not cached; `path` is where it was looked for.
    Miss { path: PathBuf },
}

/// Looks for `src` in the cache, verifying a hit against its pin.
pub(crate) fn lookup(src: &Source, cache_dir: &Path) -> Result<Lookup, HubError> {
    let repo = repo_dir(cache_dir, src.repo);
    let commit = commit_for(&repo, src.revision)?;
    let path = snapshot_path(&repo, &commit, src.file);
    // `is_file` follows the symlink, so a link whose blob was removed counts as a miss.
    if !path.is_file() {
        return Ok(Lookup::Miss { path });
    }
    let sha256 = sha256_file(&path)?;
    if let Some(expected) = src.sha256 {
        if !sha256.eq_ignore_ascii_case(expected) {
            // Not deleted: it may be the user's own file, and they should decide.
            return Err(HubError::CachedDigest {
                path,
                got: sha256,
                expected: expected.to_string(),
            });
        }
    } else if let Some(reason) = safetensors_problem(&path) {
        // Unpinned, so only its structure can be checked (an older mlc, or another tool, may
        // have cached an error page); left in place for the user, like a digest mismatch.
        return Err(HubError::CachedInvalid { path, reason });
    }
    Ok(Lookup::Hit {
        path,
        commit,
        sha256,
    })
}

/// Puts a finished blob under `snapshots/<commit>/<file>` (symlink where possible) and, for a
/// branch revision, points `refs/<branch>` at `commit`.
pub(crate) fn install_snapshot(
    repo: &Path,
    blob: &Path,
    blob_name: &str,
    commit: &str,
    src: &Source,
) -> Result<PathBuf, HubError> {
    let snap = snapshot_path(repo, commit, src.file);
    let parent = snap.parent().expect("snapshot path has a parent");
    fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    // Only a dangling link can be here (a real file would have been a cache hit); it is ours
    // to replace.
    if fs::symlink_metadata(&snap).is_ok() {
        fs::remove_file(&snap).map_err(|e| HubError::io(&snap, e))?;
    }
    let depth = src.file.split('/').count() + 1;
    let target: PathBuf = std::iter::repeat_n("..", depth)
        .chain(["blobs", blob_name])
        .collect();
    if link(&target, &snap).is_err() {
        // No symlinks (Windows without developer mode, some network filesystems): a copy
        // is what huggingface_hub falls back to as well.
        fs::copy(blob, &snap).map_err(|e| HubError::io(&snap, e))?;
    }
    if commit != src.revision && !is_commit(src.revision) {
        let refs = repo.join("refs");
        fs::create_dir_all(&refs).map_err(|e| HubError::io(&refs, e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&refs).map_err(|e| HubError::io(&refs, e))?;
        tmp.write_all(commit.as_bytes())
            .map_err(|e| HubError::io(tmp.path(), e))?;
        let dest = refs.join(src.revision);
        tmp.persist(&dest)
            .map_err(|e| HubError::io(&dest, e.error))?;
    }
    Ok(snap)
}

#[cfg(unix)]
fn link(target: &Path, at: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, at)
}

#[cfg(not(unix))]
fn link(_target: &Path, _at: &Path) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no symlinks"))
}

/// Removes directories a failed download created, if they are empty, so a failure leaves the
/// cache as it found it. `remove_dir` refuses non-empty directories, so this never removes
/// anything that holds files.
pub(crate) fn prune_empty(repo: &Path) {
    for d in [repo.join("blobs"), repo.to_path_buf()] {
        let _ = fs::remove_dir(d);
    }
}
