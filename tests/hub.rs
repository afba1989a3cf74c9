//! mlc::hub against a throwaway HTTP server on 127.0.0.1 standing in for the hub.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mlc::hub::{self, HubConfig, HubError, Source};

const WEIGHTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/weights/taef2_decoder.safetensors"
);
const WEIGHTS_SHA: &str = "6f9d7bfb4929acbbb78ef115858f21b55bfd09bb43d4c4f5032fdf5dce19e49b";
const WEIGHTS_LEN: u64 = 5_360_684;
const OTHER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/weights/taef2_diffusers_style.safetensors"
);
const OTHER_SHA: &str = "43060e4121bc22bb93d3a48142444fd9bec7089ad2dba8bf49a0a0b474a04e1d";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

const PINNED: Source = Source {
    model: "taef2",
    repo: "test-org/taef2",
    file: "taef2_decoder.safetensors",
    revision: COMMIT,
    sha256: Some(WEIGHTS_SHA),
    size: Some(WEIGHTS_LEN),
    max_bytes: 64 << 20,
};

const UNPINNED: Source = Source {
    model: "taesd",
    repo: "test-org/taesd",
    file: "taef2_decoder.safetensors",
    revision: "main",
    sha256: None,
    size: None,
    max_bytes: 64 << 20,
};

#[derive(Clone)]
enum Reply {
    /// 200 with the file's bytes and extra headers.
    File(&'static str, Vec<(&'static str, String)>),
    /// 302 to a path on this server, with extra headers.
    Redirect(&'static str, Vec<(&'static str, String)>),
    Status(u16),
    /// Announces the whole file's length, sends half of it, then closes.
    Truncated(&'static str),
    /// 200 with these bytes (an HTML error page, say).
    Body(&'static [u8]),
    /// 200 without a length, then zeros until the client hangs up.
    Endless,
    /// 200 announcing a megabyte, then one byte every 50 ms.
    Slow,
    /// 200 without a length, then one byte per interval until the client hangs up.
    Trickle(Duration),
}

/// Serves fixed replies by path, one request per connection, and counts requests. It stops
/// when dropped, and by itself after a deadline so a failing test cannot leave it running.
struct Server {
    addr: String,
    hits: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(routes: Vec<(&'static str, Reply)>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let routes: HashMap<String, Reply> = routes
            .into_iter()
            .map(|(p, r)| (p.to_string(), r))
            .collect();
        let hits = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, p, s) = (hits.clone(), paths.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        h.fetch_add(1, Ordering::SeqCst);
                        let _ = serve(stream, &routes, &p);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        Server {
            addr,
            hits,
            paths,
            stop,
            thread: Some(thread),
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    stream: TcpStream,
    routes: &HashMap<String, Reply>,
    paths: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    paths.lock().unwrap().push(path.clone());
    let mut out = stream;
    let head = |status: &str, len: usize, extra: &[(&str, String)]| {
        let mut s = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n");
        for (k, v) in extra {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s + "\r\n"
    };
    match routes.get(&path) {
        Some(Reply::File(file, extra)) => {
            let body = fs::read(file)?;
            out.write_all(head("200 OK", body.len(), extra).as_bytes())?;
            out.write_all(&body)?;
        }
        Some(Reply::Redirect(to, extra)) => {
            let mut extra = extra.clone();
            extra.push(("Location", to.to_string()));
            out.write_all(head("302 Found", 0, &extra).as_bytes())?;
        }
        Some(Reply::Status(code)) => {
            let body = b"boom";
            out.write_all(head(&format!("{code} Oops"), body.len(), &[]).as_bytes())?;
            out.write_all(body)?;
        }
        Some(Reply::Truncated(file)) => {
            let body = fs::read(file)?;
            out.write_all(head("200 OK", body.len(), &[]).as_bytes())?;
            out.write_all(&body[..body.len() / 2])?;
        }
        Some(Reply::Body(body)) => {
            out.write_all(head("200 OK", body.len(), &[]).as_bytes())?;
            out.write_all(body)?;
        }
        Some(Reply::Endless) => {
            out.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let chunk = vec![0u8; 1 << 16];
            // Bounded so that a client that never stops reading still ends the test.
            for _ in 0..(1 << 14) {
                out.write_all(&chunk)?;
            }
        }
        Some(Reply::Slow) => {
            out.write_all(head("200 OK", 1 << 20, &[]).as_bytes())?;
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                out.write_all(b"x")?;
                out.flush()?;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(Reply::Trickle(every)) => {
            out.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                out.write_all(b"x")?;
                out.flush()?;
                std::thread::sleep(*every);
            }
        }
        None => {
            out.write_all(head("404 Not Found", 0, &[]).as_bytes())?;
        }
    }
    out.flush()?;
    out.shutdown(std::net::Shutdown::Both)
}

fn config(cache: &Path, server: &Server, offline: bool) -> HubConfig {
    config_at(cache, &server.addr, offline)
}

fn config_at(cache: &Path, endpoint: &str, offline: bool) -> HubConfig {
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

fn resolve_path(src: &Source) -> String {
    format!("/{}/resolve/{}/{}", src.repo, src.revision, src.file)
}

/// Every file and symlink under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
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

fn assert_cache_empty(cache: &Path) {
    assert_eq!(files_under(cache), Vec::<PathBuf>::new());
    // Directories the failed download made are gone too.
    assert!(!cache.join("models--test-org--taef2").exists());
}

#[test]
fn downloads_into_hf_layout_then_hits_cache_without_requests() {
    let server = Server::start(vec![(
        "/test-org/taef2/resolve/0123456789abcdef0123456789abcdef01234567/taef2_decoder.safetensors",
        Reply::File(WEIGHTS, vec![]),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, false);

    let mut seen = Vec::new();
    let got = hub::resolve_with_progress(&PINNED, &cfg, &mut |p| seen.push(p)).unwrap();
    let repo = tmp.path().join("models--test-org--taef2");
    let snap = repo
        .join("snapshots")
        .join(COMMIT)
        .join("taef2_decoder.safetensors");
    assert_eq!(got.path, snap);
    assert_eq!(got.sha256, WEIGHTS_SHA);
    assert!(got.pinned && got.downloaded);
    assert_eq!(got.commit, COMMIT);
    assert_eq!(fs::read(&snap).unwrap(), fs::read(WEIGHTS).unwrap());
    #[cfg(unix)]
    assert_eq!(
        fs::read_link(&snap).unwrap(),
        Path::new("../../blobs").join(WEIGHTS_SHA)
    );
    assert_eq!(
        files_under(tmp.path()),
        vec![
            PathBuf::from("models--test-org--taef2/blobs").join(WEIGHTS_SHA),
            PathBuf::from("models--test-org--taef2/snapshots")
                .join(COMMIT)
                .join("taef2_decoder.safetensors"),
        ],
        "a pinned commit needs no refs/ entry"
    );
    let len = fs::metadata(WEIGHTS).unwrap().len();
    let last = seen.last().unwrap();
    assert_eq!((last.received, last.total), (len, Some(len)));
    assert_eq!(server.hits(), 1);

    let again = hub::resolve(&PINNED, &cfg).unwrap();
    assert_eq!(again.path, snap);
    assert!(!again.downloaded);
    assert_eq!(again.sha256, WEIGHTS_SHA);
    assert_eq!(server.hits(), 1, "cache hit must not touch the network");
    assert!(hub::cached(&PINNED, &cfg).unwrap().is_some());
}

#[test]
fn follows_redirect_and_records_repo_commit_for_a_branch() {
    let server = Server::start(vec![
        (
            "/test-org/taesd/resolve/main/taef2_decoder.safetensors",
            Reply::Redirect("/cdn/blob", vec![("X-Repo-Commit", COMMIT.to_string())]),
        ),
        ("/cdn/blob", Reply::File(WEIGHTS, vec![])),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, false);

    let got = hub::resolve(&UNPINNED, &cfg).unwrap();
    assert_eq!(
        server.paths(),
        vec![resolve_path(&UNPINNED), "/cdn/blob".to_string()]
    );
    let repo = tmp.path().join("models--test-org--taesd");
    assert_eq!(
        got.path,
        repo.join("snapshots")
            .join(COMMIT)
            .join("taef2_decoder.safetensors")
    );
    assert_eq!(got.commit, COMMIT);
    assert_eq!(
        got.sha256, WEIGHTS_SHA,
        "unpinned still reports what it got"
    );
    assert!(!got.pinned);
    assert_eq!(
        fs::read_to_string(repo.join("refs").join("main")).unwrap(),
        COMMIT
    );
    assert!(repo.join("blobs").join(WEIGHTS_SHA).is_file());

    // refs/main now leads to the snapshot: no second request.
    let again = hub::resolve(&UNPINNED, &cfg).unwrap();
    assert_eq!(again.path, got.path);
    assert!(!again.downloaded);
    assert_eq!(server.hits(), 2);
}

#[test]
fn branch_without_commit_header_uses_branch_name_as_snapshot() {
    let server = Server::start(vec![(
        "/test-org/taesd/resolve/main/taef2_decoder.safetensors",
        Reply::File(WEIGHTS, vec![]),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, false);
    let got = hub::resolve(&UNPINNED, &cfg).unwrap();
    let repo = tmp.path().join("models--test-org--taesd");
    assert_eq!(
        got.path,
        repo.join("snapshots/main/taef2_decoder.safetensors")
    );
    assert!(!repo.join("refs").exists());
    assert!(!hub::resolve(&UNPINNED, &cfg).unwrap().downloaded);
    assert_eq!(server.hits(), 1);
}

#[test]
fn hash_mismatch_leaves_nothing() {
    let server = Server::start(vec![(
        "/test-org/taef2/resolve/0123456789abcdef0123456789abcdef01234567/taef2_decoder.safetensors",
        Reply::File(OTHER, vec![]),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, false);
    // Without a pinned size, only the digest can tell the files apart.
    let src = Source {
        size: None,
        ..PINNED
    };
    let err = hub::resolve(&src, &cfg).unwrap_err();
    assert!(matches!(err, HubError::DownloadDigest { .. }), "{err:?}");
    let msg = err.to_string();
    let url = format!("{}{}", server.addr, resolve_path(&PINNED));
    assert_eq!(
        msg,
        format!("download {url}: sha256 is {OTHER_SHA}, expected {WEIGHTS_SHA}")
    );
    assert_cache_empty(tmp.path());
}

#[test]
fn http_500_leaves_nothing() {
    let server = Server::start(vec![(
        "/test-org/taef2/resolve/0123456789abcdef0123456789abcdef01234567/taef2_decoder.safetensors",
        Reply::Status(500),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, false);
    let err = hub::resolve(&PINNED, &cfg).unwrap_err();
    let url = format!("{}{}", server.addr, resolve_path(&PINNED));
    assert_eq!(err.to_string(), format!("download {url}: HTTP 500"));
    assert_cache_empty(tmp.path());
}

#[test]
fn error_after_redirect_names_both_urls() {
    let server = Server::start(vec![(
        "/test-org/taef2/resolve/0123456789abcdef0123456789abcdef01234567/taef2_decoder.safetensors",
        Reply::Redirect("/cdn/missing", vec![]),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, false);
    let msg = hub::resolve(&PINNED, &cfg).unwrap_err().to_string();
    let url = format!("{}{}", server.addr, resolve_path(&PINNED));
    assert_eq!(
        msg,
        format!(
            "download {url} (redirected to {}/cdn/missing): HTTP 404",
            server.addr
        )
    );
    assert_cache_empty(tmp.path());
}

#[test]
fn truncated_body_leaves_nothing() {
    let server = Server::start(vec![(
        "/test-org/taef2/resolve/0123456789abcdef0123456789abcdef01234567/taef2_decoder.safetensors",
        Reply::Truncated(WEIGHTS),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, false);
    let err = hub::resolve(&PINNED, &cfg).unwrap_err();
    let url = format!("{}{}", server.addr, resolve_path(&PINNED));
    let msg = err.to_string();
    assert!(matches!(err, HubError::ShortBody { .. }), "{err:?}");
    let len = fs::metadata(WEIGHTS).unwrap().len();
    assert!(
        msg.starts_with(&format!("download {url}: body ended after "))
            && msg.contains(&format!("of {len} bytes")),
        "{msg}"
    );
    assert_cache_empty(tmp.path());
}

#[test]
fn connection_refused_is_a_clear_error() {
    // Bind then drop, so the port is (almost certainly) closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_at(tmp.path(), &format!("http://127.0.0.1:{port}"), false);
    let err = hub::resolve(&PINNED, &cfg).unwrap_err();
    assert!(matches!(err, HubError::Transport { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "download http://127.0.0.1:{port}/test-org/taef2/resolve/"
        )),
        "{err}"
    );
    assert_cache_empty(tmp.path());
}

#[test]
fn offline_with_empty_cache_refuses_without_requests() {
    let server = Server::start(vec![]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, true);
    let err = hub::resolve(&PINNED, &cfg).unwrap_err();
    let snap = tmp
        .path()
        .join("models--test-org--taef2/snapshots")
        .join(COMMIT)
        .join("taef2_decoder.safetensors");
    assert_eq!(
        err.to_string(),
        format!(
            "weights for taef2 are not in the Hugging Face cache ({}) and HF_HUB_OFFLINE=1 \
             forbids downloading; give a local weights file",
            snap.display()
        )
    );
    // The library names no flag; a front end adds its own (the CLI's --weights FILE).
    assert!(err.local_file_helps());
    assert_eq!(server.hits(), 0);
    assert_cache_empty(tmp.path());
}

#[test]
fn offline_with_populated_cache_hits() {
    let server = Server::start(vec![(
        "/test-org/taef2/resolve/0123456789abcdef0123456789abcdef01234567/taef2_decoder.safetensors",
        Reply::File(WEIGHTS, vec![]),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    hub::resolve(&PINNED, &config(tmp.path(), &server, false)).unwrap();
    let got = hub::resolve(&PINNED, &config(tmp.path(), &server, true)).unwrap();
    assert!(!got.downloaded);
    assert_eq!(got.sha256, WEIGHTS_SHA);
    assert_eq!(server.hits(), 1);
}

#[test]
fn offline_hit_through_refs_written_by_another_tool() {
    // The layout huggingface_hub writes for a branch, built by hand: plain file, no symlink.
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("models--test-org--taesd");
    let snap = repo.join("snapshots").join(COMMIT);
    fs::create_dir_all(&snap).unwrap();
    fs::copy(WEIGHTS, snap.join("taef2_decoder.safetensors")).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), format!("{COMMIT}\n")).unwrap();
    let cfg = config_at(tmp.path(), "http://127.0.0.1:9", true);
    let got = hub::resolve(&UNPINNED, &cfg).unwrap();
    assert_eq!(got.path, snap.join("taef2_decoder.safetensors"));
    assert_eq!(got.commit, COMMIT);
    assert_eq!(got.sha256, WEIGHTS_SHA);
    assert!(!got.pinned);
}

#[test]
fn cached_file_with_wrong_hash_is_an_error_and_kept() {
    let server = Server::start(vec![]);
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp
        .path()
        .join("models--test-org--taef2/snapshots")
        .join(COMMIT);
    fs::create_dir_all(&snap).unwrap();
    let file = snap.join("taef2_decoder.safetensors");
    fs::copy(OTHER, &file).unwrap();
    let err = hub::resolve(&PINNED, &config(tmp.path(), &server, false)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "{}: sha256 is {OTHER_SHA}, expected {WEIGHTS_SHA}",
            file.display()
        )),
        "{msg}"
    );
    assert!(file.is_file(), "the user's file must not be deleted");
    assert_eq!(server.hits(), 0);
}

#[test]
fn config_from_lookup_reads_hf_vars() {
    let vars: HashMap<&str, &str> = [
        ("HF_HOME", "/srv/hf"),
        ("HF_ENDPOINT", "http://127.0.0.1:8080/"),
        ("HF_HUB_OFFLINE", "true"),
        ("HOME", "/home/u"),
    ]
    .into();
    let cfg = HubConfig::from_lookup(|k| vars.get(k).map(|v| v.to_string()));
    assert_eq!(cfg.cache_dir, PathBuf::from("/srv/hf/hub"));
    assert_eq!(cfg.endpoint, "http://127.0.0.1:8080");
    assert!(cfg.offline);

    let cfg = HubConfig::from_lookup(|k| (k == "HOME").then(|| "/home/u".to_string()));
    assert_eq!(
        cfg.cache_dir,
        PathBuf::from("/home/u/.cache/huggingface/hub")
    );
    assert_eq!(cfg.endpoint, hub::DEFAULT_ENDPOINT);
    assert!(!cfg.offline);
    assert_eq!(cfg.download_timeout, Duration::from_secs(600));

    for (v, want) in [
        ("2.5", 2500),
        ("30", 30_000),
        ("0", 600_000),
        ("soon", 600_000),
    ] {
        let cfg = HubConfig::from_lookup(|k| (k == hub::DOWNLOAD_TIMEOUT_ENV).then(|| v.into()));
        assert_eq!(cfg.download_timeout, Duration::from_millis(want), "{v}");
    }
}

#[test]
fn real_sources_and_unpublished_model() {
    let taef2 = hub::source(mlc::models::lookup("flux2").unwrap().name()).unwrap();
    assert_eq!(
        hub::resolve_url(taef2, hub::DEFAULT_ENDPOINT),
        "https://huggingface.co/madebyollin/taef2/resolve/bd244ebfe4398c84fbf312a2f1c868c676b500e3/taef2.safetensors"
    );
    assert!(hub::source("taesd").unwrap().sha256.is_none());
    let err = hub::require_source("taesd3").unwrap_err();
    assert!(err.local_file_helps());
    assert!(
        err.to_string().ends_with("; give a local weights file"),
        "{err}"
    );
}

/// Nothing at all under the cache: no file, and no directory a failed download made.
fn assert_nothing_cached(cache: &Path) {
    assert_eq!(files_under(cache), Vec::<PathBuf>::new());
    let dirs: Vec<_> = fs::read_dir(cache).unwrap().collect();
    assert!(dirs.is_empty(), "{dirs:?}");
}

#[test]
fn endless_body_stops_at_the_size_cap() {
    let server = Server::start(vec![(
        "/test-org/taesd/resolve/main/taef2_decoder.safetensors",
        Reply::Endless,
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), &server, false);
    cfg.max_download_bytes = 1 << 20;
    let start = Instant::now();
    let err = hub::resolve(&UNPINNED, &cfg).unwrap_err();
    assert!(matches!(err, HubError::TooLarge { .. }), "{err:?}");
    let url = format!("{}{}", server.addr, resolve_path(&UNPINNED));
    assert_eq!(
        err.to_string(),
        format!("download {url}: body is longer than the 1048576-byte limit; refused")
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_nothing_cached(tmp.path());
}

#[test]
fn endless_body_stops_at_the_models_own_cap() {
    let server = Server::start(vec![(
        "/test-org/taesd/resolve/main/taef2_decoder.safetensors",
        Reply::Endless,
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, false);
    let src = Source {
        max_bytes: 3 << 20,
        ..UNPINNED
    };
    let mut received = 0;
    let start = Instant::now();
    let err = hub::resolve_with_progress(&src, &cfg, &mut |p| received = p.received).unwrap_err();
    let url = format!("{}{}", server.addr, resolve_path(&src));
    assert_eq!(
        err.to_string(),
        format!(
            "download {url}: body is longer than 3145728 bytes (3 MiB), more than a taesd \
             weights file can hold; refused"
        )
    );
    assert!(received <= 3 << 20, "{received} bytes taken");
    assert!(start.elapsed() < Duration::from_secs(10));
    // The temporary file the body streamed into is gone with everything else.
    assert_nothing_cached(tmp.path());

    // A lower general cap still names itself.
    let mut cfg = cfg;
    cfg.max_download_bytes = 1 << 20;
    let err = hub::resolve(&src, &cfg).unwrap_err();
    assert!(
        matches!(err, HubError::TooLarge { limit: 1048576, .. }),
        "{err:?}"
    );
    assert_nothing_cached(tmp.path());
}

#[test]
fn announced_length_over_the_models_cap_is_refused_before_the_body() {
    let server = Server::start(vec![(
        "/test-org/taef2/resolve/0123456789abcdef0123456789abcdef01234567/taef2_decoder.safetensors",
        Reply::File(WEIGHTS, vec![]),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, false);
    let src = Source {
        size: None,
        max_bytes: 1 << 20,
        ..PINNED
    };
    let mut seen = 0;
    let err = hub::resolve_with_progress(&src, &cfg, &mut |_| seen += 1).unwrap_err();
    assert!(
        matches!(err, HubError::OverModelCap { cap: 1048576, .. }),
        "{err:?}"
    );
    assert_eq!(seen, 0, "no body was read");
    assert_nothing_cached(tmp.path());
}

/// The real taesd source through the binary: an endless body stops at taesd's 64 MiB.
#[test]
fn cli_endless_taesd_body_stops_at_its_cap() {
    let server = Server::start(vec![(
        "/madebyollin/taesd/resolve/main/taesd_decoder.safetensors",
        Reply::Endless,
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let (home, work) = (tmp.path().join("hf"), tmp.path().join("work"));
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&work).unwrap();
    let start = Instant::now();
    let o = mlc_against(&server, &home, &work, &[]);
    assert!(start.elapsed() < Duration::from_secs(20));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let url = format!(
        "{}/madebyollin/taesd/resolve/main/taesd_decoder.safetensors",
        server.addr
    );
    assert_eq!(
        err.trim_end(),
        format!(
            "error: download {url}: body is longer than 67108864 bytes (64 MiB), more than a \
             taesd weights file can hold; refused"
        )
    );
    assert_nothing_cached(&home.join("hub"));
    assert_eq!(fs::read_dir(&work).unwrap().count(), 0);
}

#[test]
fn trickle_is_cut_by_the_rate_floor() {
    let server = Server::start(vec![(
        "/test-org/taesd/resolve/main/taef2_decoder.safetensors",
        Reply::Trickle(Duration::from_millis(200)),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), &server, false);
    cfg.rate_window = Duration::from_secs(1);
    let start = Instant::now();
    let err = hub::resolve(&UNPINNED, &cfg).unwrap_err();
    let took = start.elapsed();
    let HubError::TooSlow {
        min_rate: 1000,
        received,
        ..
    } = err
    else {
        panic!("{err:?}")
    };
    assert!((1..=20).contains(&received), "{received}");
    // Cut after the first whole window, long before the 600 s deadline.
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("slower than 1000 bytes/s over 1 s")
            && msg.contains("MLC_DOWNLOAD_MIN_RATE")
            && msg.contains("MLC_DOWNLOAD_RATE_WINDOW_SECS"),
        "{msg}"
    );
    assert_nothing_cached(tmp.path());

    // With the floor off, only the overall deadline stops it.
    cfg.min_rate = 0;
    cfg.download_timeout = Duration::from_millis(1500);
    let err = hub::resolve(&UNPINNED, &cfg).unwrap_err();
    assert!(matches!(err, HubError::Deadline { .. }), "{err:?}");
    assert_nothing_cached(tmp.path());
}

#[test]
fn a_read_idle_for_a_whole_window_is_cut_by_the_rate_floor() {
    // One byte, then nothing for longer than the window: the read itself times out.
    let server = Server::start(vec![(
        "/test-org/taesd/resolve/main/taef2_decoder.safetensors",
        Reply::Trickle(Duration::from_secs(2)),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), &server, false);
    cfg.rate_window = Duration::from_secs(1);
    let start = Instant::now();
    let err = hub::resolve(&UNPINNED, &cfg).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, HubError::TooSlow { .. }), "{err:?}");
    assert!(took < Duration::from_millis(1900), "{took:?}");
    assert_nothing_cached(tmp.path());
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

/// The floor's window and rate from the environment: a trickle stops the binary in about a
/// window, with a one-line error and nothing left behind.
#[test]
fn cli_rate_floor_from_the_environment() {
    let server = Server::start(vec![(
        "/madebyollin/taesd/resolve/main/taesd_decoder.safetensors",
        Reply::Trickle(Duration::from_millis(100)),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let (home, work) = (tmp.path().join("hf"), tmp.path().join("work"));
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&work).unwrap();
    let start = Instant::now();
    let o = mlc_against(
        &server,
        &home,
        &work,
        &[
            ("MLC_DOWNLOAD_RATE_WINDOW_SECS", "1"),
            ("MLC_DOWNLOAD_MIN_RATE", "50"),
        ],
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: download ")
            && err.trim_end().lines().count() == 1
            && err.contains("slower than 50 bytes/s over 1 s"),
        "{err}"
    );
    assert_nothing_cached(&home.join("hub"));
    assert_eq!(fs::read_dir(&work).unwrap().count(), 0);
}

#[test]
fn announced_length_over_the_cap_is_refused_before_the_body() {
    let server = Server::start(vec![(
        "/test-org/taef2/resolve/0123456789abcdef0123456789abcdef01234567/taef2_decoder.safetensors",
        Reply::File(WEIGHTS, vec![]),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), &server, false);
    cfg.max_download_bytes = 1000;
    let mut seen = 0;
    let err = hub::resolve_with_progress(&PINNED, &cfg, &mut |_| seen += 1).unwrap_err();
    assert!(
        matches!(err, HubError::TooLarge { limit: 1000, .. }),
        "{err:?}"
    );
    assert_eq!(seen, 0, "no body was read");
    assert_nothing_cached(tmp.path());
}

#[test]
fn announced_length_other_than_the_pinned_size_is_refused_before_the_body() {
    let path = resolve_path(&PINNED);
    let server = Server::start(vec![(
        "/test-org/taef2/resolve/0123456789abcdef0123456789abcdef01234567/taef2_decoder.safetensors",
        Reply::File(OTHER, vec![]),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, false);
    let mut seen = 0;
    let err = hub::resolve_with_progress(&PINNED, &cfg, &mut |_| seen += 1).unwrap_err();
    let other_len = fs::metadata(OTHER).unwrap().len();
    assert_eq!(
        err.to_string(),
        format!(
            "download {}{path}: the server announces {other_len} bytes, but the pinned file is \
             {WEIGHTS_LEN} bytes; refused",
            server.addr
        )
    );
    assert_eq!(seen, 0, "no body was read");
    assert_nothing_cached(tmp.path());
}

#[test]
fn body_without_a_length_stops_at_the_pinned_size() {
    // Pinned to a megabyte; the server sends zeros without a length until the client hangs up.
    let src = Source {
        sha256: Some(WEIGHTS_SHA),
        size: Some(1 << 20),
        ..UNPINNED
    };
    let server = Server::start(vec![(
        "/test-org/taesd/resolve/main/taef2_decoder.safetensors",
        Reply::Endless,
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, false);
    assert!(
        cfg.max_download_bytes > 1 << 30,
        "the general cap is not what stops it"
    );
    let mut received = 0;
    let start = Instant::now();
    let err = hub::resolve_with_progress(&src, &cfg, &mut |p| received = p.received).unwrap_err();
    assert!(
        matches!(
            err,
            HubError::LongerThanPinned {
                pinned: 1048576,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with("body is longer than the pinned file's 1048576 bytes; refused"),
        "{err}"
    );
    assert!(received <= 1 << 20, "{received} bytes taken");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_nothing_cached(tmp.path());
}

#[test]
fn slow_body_stops_at_the_deadline() {
    let server = Server::start(vec![(
        "/test-org/taef2/resolve/0123456789abcdef0123456789abcdef01234567/taef2_decoder.safetensors",
        Reply::Slow,
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), &server, false);
    cfg.download_timeout = Duration::from_secs(1);
    // The slow reply announces a megabyte, which a pinned size would refuse before the body.
    let src = Source {
        size: None,
        ..PINNED
    };
    let start = Instant::now();
    let err = hub::resolve(&src, &cfg).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, HubError::Deadline { secs: 1, .. }), "{err:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("not finished after 1 s") && msg.contains("MLC_DOWNLOAD_TIMEOUT_SECS"),
        "{msg}"
    );
    assert_nothing_cached(tmp.path());
}

/// The binary, through the environment: `MLC_DOWNLOAD_TIMEOUT_SECS` bounds a download that
/// trickles in, with a one-line error and nothing left in the cache or the working directory.
#[test]
fn cli_download_deadline_from_the_environment() {
    let server = Server::start(vec![(
        "/madebyollin/taesd/resolve/main/taesd_decoder.safetensors",
        Reply::Slow,
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let (home, work) = (tmp.path().join("hf"), tmp.path().join("work"));
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&work).unwrap();
    let start = Instant::now();
    let o = mlc_against(&server, &home, &work, &[("MLC_DOWNLOAD_TIMEOUT_SECS", "1")]);
    assert!(start.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: download ")
            && err.trim_end().lines().count() == 1
            && err.contains("not finished after 1 s"),
        "{err}"
    );
    assert_nothing_cached(&home.join("hub"));
    assert_eq!(fs::read_dir(&work).unwrap().count(), 0);
}

#[test]
fn html_page_for_an_unpinned_model_is_not_cached() {
    const HTML: &[u8] = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>";
    let server = Server::start(vec![(
        "/test-org/taesd/resolve/main/taef2_decoder.safetensors",
        Reply::Body(HTML),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &server, false);
    let err = hub::resolve(&UNPINNED, &cfg).unwrap_err();
    assert!(matches!(err, HubError::NotSafetensors { .. }), "{err:?}");
    let url = format!("{}{}", server.addr, resolve_path(&UNPINNED));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "download {url}: not a safetensors file (header length "
        )) && msg.ends_with("; not cached"),
        "{msg}"
    );
    assert_nothing_cached(tmp.path());

    // Such a page already in the cache (from another tool, or an older mlc) is named, with
    // what to do about it, and left for the user.
    let snap = tmp
        .path()
        .join("models--test-org--taesd/snapshots/main/taef2_decoder.safetensors");
    fs::create_dir_all(snap.parent().unwrap()).unwrap();
    fs::write(&snap, HTML).unwrap();
    let err = hub::resolve(&UNPINNED, &cfg).unwrap_err();
    assert!(matches!(err, HubError::CachedInvalid { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "{}: cached download is not a valid",
            snap.display()
        )) && msg.contains("delete that file to download it again"),
        "{msg}"
    );
    assert!(snap.is_file());
    // A cut-off copy of a real file too (its header promises more data than there is).
    let real = fs::read(WEIGHTS).unwrap();
    fs::write(&snap, &real[..real.len() - 10]).unwrap();
    let msg = hub::resolve(&UNPINNED, &cfg).unwrap_err().to_string();
    assert!(msg.contains("tensor data, the file holds"), "{msg}");
    assert_eq!(server.hits(), 1);
}

#[test]
fn incomplete_files_of_dead_downloads_are_removed() {
    let server = Server::start(vec![(
        "/test-org/taef2/resolve/0123456789abcdef0123456789abcdef01234567/taef2_decoder.safetensors",
        Reply::File(WEIGHTS, vec![]),
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let blobs = tmp.path().join("models--test-org--taef2/blobs");
    fs::create_dir_all(&blobs).unwrap();
    let dead = blobs.join(".mlc-999999-AbC123.incomplete");
    let alive = blobs.join(".mlc-1-AbC123.incomplete");
    let theirs = blobs.join("0123abcd.incomplete");
    for f in [&dead, &alive, &theirs] {
        fs::write(f, b"partial").unwrap();
    }
    hub::resolve(&PINNED, &config(tmp.path(), &server, false)).unwrap();
    if cfg!(target_os = "linux") {
        assert!(!dead.exists());
    }
    assert!(alive.exists() && theirs.exists());
    let names: Vec<String> = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".mlc-") && n != ".mlc-1-AbC123.incomplete")
        .collect();
    assert!(names.is_empty(), "{names:?}");
}
