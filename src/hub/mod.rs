//! Finding, or fetching, a model's published decoder weights the way Hugging Face tools do.
//!
//! `mlc build flux2` without `--weights` resolves [`source`]`("flux2")` with
//! [`HubConfig::from_env`]: a file already in the Hugging Face cache is used as is (after
//! checking its pinned sha256); otherwise it is downloaded into that cache, in the layout
//! `huggingface_hub` uses (see [`cache`]), so Python tools and mlc share one copy. A download
//! either lands whole and verified or leaves nothing behind. Nothing here prints: callers get
//! a [`Resolved`] and may watch [`Progress`].

pub mod cache;
mod config;
mod download;
mod sources;

use std::path::{Path, PathBuf};

pub use config::{
    HubConfig, DEFAULT_DOWNLOAD_TIMEOUT, DEFAULT_ENDPOINT, DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MIN_RATE, DEFAULT_RATE_WINDOW, DOWNLOAD_TIMEOUT_ENV, MIN_RATE_ENV, RATE_WINDOW_ENV,
};
pub use download::resolve_url;
pub use sources::{require_source, source, Source, SOURCES};

/// What [`resolve`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The weights file, inside the cache's `snapshots/`.
    pub path: PathBuf,
    /// Lower-case hex sha256 of the file as found or fetched.
    pub sha256: String,
    /// Whether `sha256` was checked against a pin. When false the source named a branch with
    /// no known digest, and the caller should record `sha256` to make the build reproducible.
    pub pinned: bool,
    /// The snapshot directory's name: the commit, or the branch name when the server did not
    /// say which commit it served.
    pub commit: String,
    /// True if this call downloaded the file, false on a cache hit.
    pub downloaded: bool,
}

/// Download progress: bytes received so far, and the total if the server announced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub received: u64,
    pub total: Option<u64>,
}

/// Messages that end in "give a local weights file" are the ones [`HubError::local_file_helps`]
/// marks, so that a front end can name its own way of giving one (the CLI's `--weights FILE`).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("no published single-file weights for {model}; give a local weights file")]
    NotPublished { model: String },
    #[error(
        "unknown model {model}: published weights are known for taef2 (flux2), taef1 (flux1), \
         taesd and taesdxl; otherwise give a local weights file"
    )]
    UnknownModel { model: String },
    #[error(
        "weights for {model} are not in the Hugging Face cache ({}) and HF_HUB_OFFLINE=1 \
         forbids downloading; give a local weights file",
        path.display()
    )]
    Offline { model: String, path: PathBuf },
    #[error("download {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("download {url}: {cause}")]
    Transport { url: String, cause: String },
    #[error(
        "download {url}: body ended after {got} of {expected} bytes{}",
        cause.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
    )]
    ShortBody {
        url: String,
        got: u64,
        expected: u64,
        cause: Option<String>,
    },
    #[error("download {url}: body is longer than the {limit}-byte limit; refused")]
    TooLarge { url: String, limit: u64 },
    #[error(
        "download {url}: body is longer than {cap} bytes ({} MiB), more than a {model} weights \
         file can hold; refused",
        cap >> 20
    )]
    OverModelCap {
        url: String,
        model: String,
        cap: u64,
    },
    #[error(
        "download {url}: slower than {min_rate} bytes/s over {secs} s ({received} bytes \
         received); cut. Set MLC_DOWNLOAD_MIN_RATE (bytes/s, 0 for no floor) or \
         MLC_DOWNLOAD_RATE_WINDOW_SECS to allow a slower link"
    )]
    TooSlow {
        url: String,
        min_rate: u64,
        secs: f64,
        received: u64,
    },
    #[error(
        "download {url}: the server announces {announced} bytes, but the pinned file is \
         {pinned} bytes; refused"
    )]
    SizeMismatch {
        url: String,
        announced: u64,
        pinned: u64,
    },
    #[error("download {url}: body is longer than the pinned file's {pinned} bytes; refused")]
    LongerThanPinned { url: String, pinned: u64 },
    #[error(
        "download {url}: not finished after {secs} s ({received} bytes received); set \
         MLC_DOWNLOAD_TIMEOUT_SECS to allow longer"
    )]
    Deadline {
        url: String,
        secs: u64,
        received: u64,
    },
    #[error("download {url}: not a safetensors file ({reason}); not cached")]
    NotSafetensors { url: String, reason: String },
    #[error(
        "{}: cached download is not a valid safetensors file ({reason}); delete that file to \
         download it again, or give a local weights file",
        path.display()
    )]
    CachedInvalid { path: PathBuf, reason: String },
    #[error("download {url}: sha256 is {got}, expected {expected}")]
    DownloadDigest {
        url: String,
        got: String,
        expected: String,
    },
    #[error(
        "{}: sha256 is {got}, expected {expected}; this cached file does not match the pinned \
         revision; it is left in place: remove it to download again, or give a local weights file",
        path.display()
    )]
    CachedDigest {
        path: PathBuf,
        got: String,
        expected: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl HubError {
    /// Whether a weights file on disk gets past this error (the message says so in words).
    pub fn local_file_helps(&self) -> bool {
        matches!(
            self,
            HubError::NotPublished { .. }
                | HubError::UnknownModel { .. }
                | HubError::Offline { .. }
                | HubError::CachedInvalid { .. }
                | HubError::CachedDigest { .. }
        )
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> HubError {
        HubError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn hit(src: &Source, path: PathBuf, commit: String, sha256: String) -> Resolved {
    Resolved {
        path,
        sha256,
        pinned: src.sha256.is_some(),
        commit,
        downloaded: false,
    }
}

/// The cached file for `src`, if present (verified against its pin); never uses the network.
pub fn cached(src: &Source, cfg: &HubConfig) -> Result<Option<Resolved>, HubError> {
    Ok(match cache::lookup(src, &cfg.cache_dir)? {
        cache::Lookup::Hit {
            path,
            commit,
            sha256,
        } => Some(hit(src, path, commit, sha256)),
        cache::Lookup::Miss { .. } => None,
    })
}

/// The local path of `src`: a cache hit, else a fresh download into the cache (refused when
/// `cfg.offline`).
pub fn resolve(src: &Source, cfg: &HubConfig) -> Result<Resolved, HubError> {
    resolve_with_progress(src, cfg, &mut |_| {})
}

/// [`resolve`], reporting download progress to `progress` (not called on a cache hit).
pub fn resolve_with_progress(
    src: &Source,
    cfg: &HubConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<Resolved, HubError> {
    match cache::lookup(src, &cfg.cache_dir)? {
        cache::Lookup::Hit {
            path,
            commit,
            sha256,
        } => Ok(hit(src, path, commit, sha256)),
        cache::Lookup::Miss { path } if cfg.offline => Err(HubError::Offline {
            model: src.model.to_string(),
            path,
        }),
        cache::Lookup::Miss { .. } => download::download(src, cfg, progress),
    }
}
