//! mlc::hub against a throwaway HTTP server on 127.0.0.1 standing in for the hub.

mod server;
mod setup;

use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mlc::hub::{self, HubConfig, HubError, Source};
use server::{Reply, Server};
use setup::*;

#[test]
fn downloads_into_hf_layout_then_hits_cache_without_requests() {
    let (server, tmp, cfg) = served(PINNED_PATH, Reply::File(WEIGHTS, vec![]));

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
            UNPINNED_PATH,
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
    let (server, tmp, cfg) = served(UNPINNED_PATH, Reply::File(WEIGHTS, vec![]));
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
    let (server, tmp, cfg) = served(PINNED_PATH, Reply::File(OTHER, vec![]));
    // Without a pinned size, only the digest can tell the files apart.
    let src = Source {
        size: None,
        ..PINNED
    };
    let err = hub::resolve(&src, &cfg).unwrap_err();
    assert!(matches!(err, HubError::DownloadDigest { .. }), "{err:?}");
    let msg = err.to_string();
    let url = url(&server, &PINNED);
    assert_eq!(
        msg,
        format!("download {url}: sha256 is {OTHER_SHA}, expected {WEIGHTS_SHA}")
    );
    assert_cache_empty(tmp.path());
}

#[test]
fn http_500_leaves_nothing() {
    let (server, tmp, cfg) = served(PINNED_PATH, Reply::Status(500));
    let err = hub::resolve(&PINNED, &cfg).unwrap_err();
    let url = url(&server, &PINNED);
    assert_eq!(err.to_string(), format!("download {url}: HTTP 500"));
    assert_cache_empty(tmp.path());
}

#[test]
fn error_after_redirect_names_both_urls() {
    let (server, tmp, cfg) = served(PINNED_PATH, Reply::Redirect("/cdn/missing", vec![]));
    let msg = hub::resolve(&PINNED, &cfg).unwrap_err().to_string();
    let url = url(&server, &PINNED);
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
    let (server, tmp, cfg) = served(PINNED_PATH, Reply::Truncated(WEIGHTS));
    let err = hub::resolve(&PINNED, &cfg).unwrap_err();
    let url = url(&server, &PINNED);
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
    let (server, _tmp, cfg) = served(PINNED_PATH, Reply::File(WEIGHTS, vec![]));
    hub::resolve(&PINNED, &cfg).unwrap();
    let offline = HubConfig {
        offline: true,
        ..cfg
    };
    let got = hub::resolve(&PINNED, &offline).unwrap();
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

#[test]
fn endless_body_stops_at_the_size_cap() {
    let (server, tmp, mut cfg) = served(UNPINNED_PATH, Reply::Endless);
    cfg.max_download_bytes = 1 << 20;
    let start = Instant::now();
    let err = hub::resolve(&UNPINNED, &cfg).unwrap_err();
    assert!(matches!(err, HubError::TooLarge { .. }), "{err:?}");
    let url = url(&server, &UNPINNED);
    assert_eq!(
        err.to_string(),
        format!("download {url}: body is longer than the 1048576-byte limit; refused")
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_nothing_cached(tmp.path());
}

#[test]
fn endless_body_stops_at_the_models_own_cap() {
    let (server, tmp, cfg) = served(UNPINNED_PATH, Reply::Endless);
    let src = Source {
        max_bytes: 3 << 20,
        ..UNPINNED
    };
    let mut received = 0;
    let start = Instant::now();
    let err = hub::resolve_with_progress(&src, &cfg, &mut |p| received = p.received).unwrap_err();
    let url = url(&server, &src);
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
    let (_server, tmp, cfg) = served(PINNED_PATH, Reply::File(WEIGHTS, vec![]));
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
    let (err, addr) = cli_download_fails(Reply::Endless, &[], Duration::from_secs(20));
    let url = format!("{addr}{TAESD_PATH}");
    assert_eq!(
        err.trim_end(),
        format!(
            "error: download {url}: body is longer than 67108864 bytes (64 MiB), more than a \
             taesd weights file can hold; refused"
        )
    );
}

#[test]
fn trickle_is_cut_by_the_rate_floor() {
    let (_server, tmp, mut cfg) = served(UNPINNED_PATH, Reply::Trickle(Duration::from_millis(200)));
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
    let (_server, tmp, mut cfg) = served(UNPINNED_PATH, Reply::Trickle(Duration::from_secs(2)));
    cfg.rate_window = Duration::from_secs(1);
    let start = Instant::now();
    let err = hub::resolve(&UNPINNED, &cfg).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, HubError::TooSlow { .. }), "{err:?}");
    assert!(took < Duration::from_millis(1900), "{took:?}");
    assert_nothing_cached(tmp.path());
}

/// The floor's window and rate from the environment: a trickle stops the binary in about a
/// window, with a one-line error and nothing left behind.
#[test]
fn cli_rate_floor_from_the_environment() {
    let (err, _) = cli_download_fails(
        Reply::Trickle(Duration::from_millis(100)),
        &[
            ("MLC_DOWNLOAD_RATE_WINDOW_SECS", "1"),
            ("MLC_DOWNLOAD_MIN_RATE", "50"),
        ],
        Duration::from_secs(10),
    );
    assert!(
        err.starts_with("error: download ")
            && err.trim_end().lines().count() == 1
            && err.contains("slower than 50 bytes/s over 1 s"),
        "{err}"
    );
}

#[test]
fn announced_length_over_the_cap_is_refused_before_the_body() {
    let (_server, tmp, mut cfg) = served(PINNED_PATH, Reply::File(WEIGHTS, vec![]));
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
    let (server, tmp, cfg) = served(PINNED_PATH, Reply::File(OTHER, vec![]));
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
    let (_server, tmp, cfg) = served(UNPINNED_PATH, Reply::Endless);
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
    let (_server, tmp, mut cfg) = served(PINNED_PATH, Reply::Slow);
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
    let (err, _) = cli_download_fails(
        Reply::Slow,
        &[("MLC_DOWNLOAD_TIMEOUT_SECS", "1")],
        Duration::from_secs(10),
    );
    assert!(
        err.starts_with("error: download ")
            && err.trim_end().lines().count() == 1
            && err.contains("not finished after 1 s"),
        "{err}"
    );
}

#[test]
fn html_page_for_an_unpinned_model_is_not_cached() {
    const HTML: &[u8] = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>";
    let (server, tmp, cfg) = served(UNPINNED_PATH, Reply::Body(HTML));
    let err = hub::resolve(&UNPINNED, &cfg).unwrap_err();
    assert!(matches!(err, HubError::NotSafetensors { .. }), "{err:?}");
    let url = url(&server, &UNPINNED);
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
    let (_server, tmp, cfg) = served(PINNED_PATH, Reply::File(WEIGHTS, vec![]));
    let blobs = tmp.path().join("models--test-org--taef2/blobs");
    fs::create_dir_all(&blobs).unwrap();
    let dead = blobs.join(".mlc-999999-AbC123.incomplete");
    let alive = blobs.join(".mlc-1-AbC123.incomplete");
    let theirs = blobs.join("0123abcd.incomplete");
    for f in [&dead, &alive, &theirs] {
        fs::write(f, b"partial").unwrap();
    }
    hub::resolve(&PINNED, &cfg).unwrap();
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
