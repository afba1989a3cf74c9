//! What the hub tests share: the files and sources they serve, the library's configuration
//! for a server and a cache, the binary run against a server, and what a failed download must
//! leave behind (nothing).

use super::server::{Reply, Server};
use mlc::hub::{self, HubConfig, Source};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const WEIGHTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/weights/taef2_decoder.safetensors"
);
pub const WEIGHTS_SHA: &str = "6f9d7bfb4929acbbb78ef115858f21b55bfd09bb43d4c4f5032fdf5dce19e49b";
pub const WEIGHTS_LEN: u64 = 5_360_684;
pub const OTHER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/weights/taef2_diffusers_style.safetensors"
);
pub const OTHER_SHA: &str = "43060e4121bc22bb93d3a48142444fd9bec7089ad2dba8bf49a0a0b474a04e1d";
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

pub const PINNED: Source = Source {
    model: "taef2",
    repo: "test-org/taef2",
    file: "taef2_decoder.safetensors",
    revision: COMMIT,
    sha256: Some(WEIGHTS_SHA),
    size: Some(WEIGHTS_LEN),
    max_bytes: 64 << 20,
};

pub const UNPINNED: Source = Source {
    model: "taesd",
    repo: "test-org/taesd",
    file: "taef2_decoder.safetensors",
    revision: "main",
    sha256: None,
    size: None,
    max_bytes: 64 << 20,
};

/// Where the server is asked for [`PINNED`], [`UNPINNED`] and the real taesd decoder.
pub const PINNED_PATH: &str =
    "/test-org/taef2/resolve/0123456789abcdef0123456789abcdef01234567/taef2_decoder.safetensors";
pub const UNPINNED_PATH: &str = "/test-org/taesd/resolve/main/taef2_decoder.safetensors";
pub const TAESD_PATH: &str = "/madebyollin/taesd/resolve/main/taesd_decoder.safetensors";

pub fn config(cache: &Path, server: &Server, offline: bool) -> HubConfig {
    config_at(cache, &server.addr, offline)
}

pub fn config_at(cache: &Path, endpoint: &str, offline: bool) -> HubConfig {
    HubConfig {
        cache_dir: cache.to_path_buf(),
        endpoint: endpoint.to_string(),
        offline,
        download_timeout: hub::DEFAULT_DOWNLOAD_TIMEOUT,
        max_download_bytes: hub::DEFAULT_MAX_DOWNLOAD_BYTES,
        min_rate: hub::DEFAULT_MIN_RATE,
        rate_window: hub::DEFAULT_RATE_WINDOW,
    }
}

/// A server answering `path` with `reply`, an empty cache, and the library's online
/// configuration for both.
pub fn served(path: &'static str, reply: Reply) -> (Server, TempDir, HubConfig) {
    let server = Server::start(vec![(path, reply)]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, false);
    (server, tmp, cfg)
}

pub fn resolve_path(src: &Source) -> String {
    format!("/{}/resolve/{}/{}", src.repo, src.revision, src.file)
}

/// The URL `server` is asked for `src` at.
pub fn url(server: &Server, src: &Source) -> String {
    format!("{}{}", server.addr, resolve_path(src))
}

/// Every file and symlink under `dir`, relative to it.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

pub fn assert_cache_empty(cache: &Path) {
    assert_eq!(files_under(cache), Vec::<PathBuf>::new());
    // Directories the failed download made are gone too.
    assert!(!cache.join("models--test-org--taef2").exists());
}

/// Nothing at all under the cache: no file, and no directory a failed download made.
pub fn assert_nothing_cached(cache: &Path) {
    assert_eq!(files_under(cache), Vec::<PathBuf>::new());
    let dirs: Vec<_> = fs::read_dir(cache).unwrap().collect();
    assert!(dirs.is_empty(), "{dirs:?}");
}

/// `mlc build taesd --latent-size 4` against `server`, with its own HF_HOME and extra
/// environment variables.
fn mlc_against(
    server: &Server,
    home: &Path,
    work: &Path,
    env: &[(&str, &str)],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(["build", "taesd", "--latent-size", "4"])
        .current_dir(work)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("MLC_DOWNLOAD_TIMEOUT_SECS")
        .env_remove("MLC_DOWNLOAD_MIN_RATE")
        .env_remove("MLC_DOWNLOAD_RATE_WINDOW_SECS")
        .env("HF_ENDPOINT", &server.addr)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `mlc build taesd` ([`mlc_against`]) with the taesd download answered by `reply` and `env`
/// set: it must fail within `within` with exit code 1, leaving nothing in the cache or the
/// working directory. Returns its stderr and the server's address.
pub fn cli_download_fails(
    reply: Reply,
    env: &[(&str, &str)],
    within: Duration,
) -> (String, String) {
    let server = Server::start(vec![(TAESD_PATH, reply)]);
    let tmp = tempfile::tempdir().unwrap();
    let (home, work) = (tmp.path().join("hf"), tmp.path().join("work"));
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&work).unwrap();
    let start = Instant::now();
    let o: Output = mlc_against(&server, &home, &work, env);
    assert!(start.elapsed() < within, "{:?}", start.elapsed());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_nothing_cached(&home.join("hub"));
    assert_eq!(fs::read_dir(&work).unwrap().count(), 0);
    (err, server.addr.clone())
}
