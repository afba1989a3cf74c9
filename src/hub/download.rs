//! Fetching one hub file into the cache, all-or-nothing.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::cache::{self, hex, is_commit, repo_dir};
use super::{HubConfig, HubError, Progress, Resolved, Source};

/// A read that brings nothing for this long fails, whatever the rate floor.
const STALLED_READ: Duration = Duration::from_secs(60);

/// The hub sends one redirect (to its CDN) today; a few more allow for renamed repos.
const MAX_REDIRECTS: usize = 10;

/// `{endpoint}/{repo}/resolve/{revision}/{file}`.
pub fn resolve_url(src: &Source, endpoint: &str) -> String {
    format!(
        "{}/{}/resolve/{}/{}",
        endpoint.trim_end_matches('/'),
        src.repo,
        src.revision,
        src.file
    )
}

pub(crate) fn download(
    src: &Source,
    cfg: &HubConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<Resolved, HubError> {
    let repo = repo_dir(&cfg.cache_dir, src.repo);
    let result = fetch(src, cfg, &repo, progress);
    if result.is_err() {
        cache::prune_empty(&repo);
    }
    result
}

fn agent(env_proxy: bool, per_read: Duration) -> ureq::Agent {
    let mut builder = ureq::Agent::config_builder();
    if !env_proxy {
        builder = builder.proxy(None);
    }
    builder
        // Redirects are followed by hand: the hub's own response carries X-Repo-Commit, the
        // CDN's final one does not.
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        // An idle limit, not a total one: a slow link may take long but must keep moving.
        .timeout_per_read(Some(per_read))
        .user_agent(concat!("mlc/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// Names the request in errors: the published URL, plus the hop that failed if it was
/// reached by redirect.
fn place(url: &str, hop: &str) -> String {
    if url == hop {
        url.to_string()
    } else {
        format!("{url} (redirected to {hop})")
    }
}

fn fetch(
    src: &Source,
    cfg: &HubConfig,
    repo: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Resolved, HubError> {
    let url = resolve_url(src, &cfg.endpoint);
    // A read idle for a whole rate window has brought nothing in it: below any floor.
    let floor = (cfg.min_rate > 0).then_some(cfg.rate_window);
    let per_read = floor.map_or(STALLED_READ, |w| w.min(STALLED_READ));
    let (proxied, direct) = (agent(true, per_read), agent(false, per_read));
    let start = Instant::now();
    let limit = cfg.download_timeout;
    let late = |url: String, received: u64| HubError::Deadline {
        url,
        secs: limit.as_secs_f64().ceil() as u64,
        received,
    };
    let mut hop = url.clone();
    let mut repo_commit: Option<String> = None;
    let mut redirects = 0;
    let mut resp = loop {
        // A loopback host (a local mirror) is never reachable through a proxy.
        let agent = if is_loopback(&hop) { &direct } else { &proxied };
        // What is left of the overall limit bounds this request, body included.
        let left = limit.saturating_sub(start.elapsed());
        let resp = agent
            .get(&hop)
            .config()
            .timeout_global(Some(left))
            .build()
            .call()
            .map_err(|e| {
                if start.elapsed() >= limit {
                    late(place(&url, &hop), 0)
                } else {
                    HubError::Transport {
                        url: place(&url, &hop),
                        cause: e.to_string(),
                    }
                }
            })?;
        if repo_commit.is_none() {
            repo_commit = header(&resp, "x-repo-commit").filter(|c| is_commit(c));
        }
        let status = resp.status().as_u16();
        if (300..400).contains(&status) {
            let Some(loc) = header(&resp, "location") else {
                return Err(HubError::Status {
                    url: place(&url, &hop),
                    status,
                });
            };
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                return Err(HubError::Transport {
                    url,
                    cause: format!("more than {MAX_REDIRECTS} redirects"),
                });
            }
            hop = join_location(&hop, &loc);
            continue;
        }
        if !(200..300).contains(&status) {
            return Err(HubError::Status {
                url: place(&url, &hop),
                status,
            });
        }
        break resp;
    };
    let here = place(&url, &hop);
    let total = header(&resp, "content-length").and_then(|v| v.parse::<u64>().ok());
    // The lower of the two caps decides, and names itself in the error.
    let cap = cfg.max_download_bytes.min(src.max_bytes);
    let too_large = |url: String| {
        if cap == cfg.max_download_bytes {
            HubError::TooLarge { url, limit: cap }
        } else {
            HubError::OverModelCap {
                url,
                model: src.model.to_string(),
                cap,
            }
        }
    };
    if total.is_some_and(|t| t > cap) {
        return Err(too_large(here));
    }
    // A length other than the pinned file's cannot end in the pinned digest: no need to wait
    // for the body to find out.
    if let (Some(announced), Some(pinned)) = (total, src.size) {
        if announced != pinned {
            return Err(HubError::SizeMismatch {
                url: here,
                announced,
                pinned,
            });
        }
    }

    let blobs = repo.join("blobs");
    fs::create_dir_all(&blobs).map_err(|e| HubError::io(&blobs, e))?;
    remove_stale_incomplete(&blobs);
    // Inside blobs/ so the final rename cannot cross filesystems; dropped (deleted) on any
    // early return. The pid in the name lets a later run remove it if this one is killed.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!("{INCOMPLETE_PREFIX}{}-", std::process::id()))
        .suffix(INCOMPLETE_SUFFIX)
        .tempfile_in(&blobs)
        .map_err(|e| HubError::io(&blobs, e))?;
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut buf = vec![0u8; 1 << 16];
    let mut reader = resp.body_mut().as_reader();
    let slow = |url: String, received: u64| HubError::TooSlow {
        url,
        min_rate: cfg.min_rate,
        secs: cfg.rate_window.as_secs_f64(),
        received,
    };
    // The rate is measured over consecutive windows: each must bring `min_rate` bytes per
    // second of its length, so a trickle is cut within two windows of starting.
    let (mut window_start, mut window_bytes) = (Instant::now(), 0u64);
    progress(Progress { received, total });
    loop {
        if start.elapsed() >= limit {
            return Err(late(here, received));
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) if start.elapsed() >= limit => return Err(late(here, received)),
            Err(_) if floor.is_some_and(|w| window_start.elapsed() >= w) => {
                return Err(slow(here, received))
            }
            Err(e) => {
                return Err(match total {
                    Some(expected) if received < expected => HubError::ShortBody {
                        url: here,
                        got: received,
                        expected,
                        cause: Some(e.to_string()),
                    },
                    _ => HubError::Transport {
                        url: here,
                        cause: e.to_string(),
                    },
                })
            }
        };
        let so_far = received.checked_add(n as u64);
        if let Some(pinned) = src.size.filter(|&p| so_far.is_none_or(|r| r > p)) {
            return Err(HubError::LongerThanPinned { url: here, pinned });
        }
        if so_far.is_none_or(|r| r > cap) {
            return Err(too_large(here));
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| HubError::io(tmp.path(), e))?;
        received += n as u64;
        progress(Progress { received, total });
        if let Some(window) = floor {
            let took = window_start.elapsed();
            if took >= window {
                let want = cfg.min_rate as f64 * took.as_secs_f64();
                if ((received - window_bytes) as f64) < want {
                    return Err(slow(here, received));
                }
                (window_start, window_bytes) = (Instant::now(), received);
            }
        }
    }
    // ureq already refuses a body cut short of Content-Length; checked again here because a
    // weights file must never be taken short.
    if let Some(expected) = total {
        if received != expected {
            return Err(HubError::ShortBody {
                url: here,
                got: received,
                expected,
                cause: None,
            });
        }
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| HubError::io(tmp.path(), e))?;
    let sha256 = hex(&hasher.finalize());
    if let Some(expected) = src.sha256 {
        if !sha256.eq_ignore_ascii_case(expected) {
            return Err(HubError::DownloadDigest {
                url: here,
                got: sha256,
                expected: expected.to_string(),
            });
        }
    } else if let Some(reason) = cache::safetensors_problem(tmp.path()) {
        // Nothing vouches for an unpinned file: at least an error page or a cut-off copy
        // must not enter the cache, where later runs would take it as the weights.
        return Err(HubError::NotSafetensors { url: here, reason });
    }

    let blob = blobs.join(&sha256);
    tmp.persist(&blob)
        .map_err(|e| HubError::io(&blob, e.error))?;
    let commit = if is_commit(src.revision) {
        src.revision.to_string()
    } else {
        // Without the header there is no commit to name the snapshot by; huggingface_hub's
        // own lookup falls back to the revision name the same way.
        repo_commit.unwrap_or_else(|| src.revision.to_string())
    };
    let path = cache::install_snapshot(repo, &blob, &sha256, &commit, src)?;
    Ok(Resolved {
        path,
        sha256,
        pinned: src.sha256.is_some(),
        commit,
        downloaded: true,
    })
}

const INCOMPLETE_PREFIX: &str = ".mlc-";
const INCOMPLETE_SUFFIX: &str = ".incomplete";

/// Removes `.mlc-PID-*.incomplete` files of downloads whose process is gone (killed mid-way).
/// Other tools' `.incomplete` files (huggingface_hub resumes its own) are left alone.
fn remove_stale_incomplete(blobs: &Path) {
    let Ok(listing) = fs::read_dir(blobs) else {
        return;
    };
    for entry in listing.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.ends_with(INCOMPLETE_SUFFIX))
            .and_then(|n| n.strip_prefix(INCOMPLETE_PREFIX))
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if !crate::limits::writer_may_be_alive(pid, &path) {
            let _ = fs::remove_file(&path);
        }
    }
}

fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Resolves a `Location` header against the URL that sent it (RFC 3986 §5.2, for the forms
/// servers send: absolute, scheme-relative, absolute-path and relative-path).
pub(crate) fn join_location(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    if let Some(r) = loc.strip_prefix("//") {
        return format!("{scheme}://{r}");
    }
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if loc.starts_with('/') {
        return format!("{scheme}://{authority}{loc}");
    }
    let path = &rest[authority_end..];
    let path = path.split(['?', '#']).next().unwrap_or("");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    format!("{scheme}://{authority}{dir}{loc}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_forms() {
        let base = "https://hf.co/org/m/resolve/main/f.safetensors?x=1";
        assert_eq!(
            join_location(base, "https://cdn.example/a?b=c"),
            "https://cdn.example/a?b=c"
        );
        assert_eq!(
            join_location(base, "//cdn.example/a"),
            "https://cdn.example/a"
        );
        assert_eq!(
            join_location(base, "/api/resolve-cache/x"),
            "https://hf.co/api/resolve-cache/x"
        );
        assert_eq!(
            join_location(base, "g.safetensors"),
            "https://hf.co/org/m/resolve/main/g.safetensors"
        );
        assert_eq!(join_location("http://h:1", "a"), "http://h:1/a");
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("http://127.0.0.1:8080/a"));
        assert!(is_loopback("http://127.3.4.5/a"));
        assert!(is_loopback("http://localhost/a"));
        assert!(is_loopback("http://[::1]:99/a"));
        assert!(!is_loopback("https://huggingface.co/a"));
        assert!(!is_loopback("https://127.0.0.1.example/a"));
    }

    #[test]
    fn url_shape() {
        let src = Source {
            model: "m",
            repo: "org/name",
            file: "f.safetensors",
            revision: "main",
            sha256: None,
            size: None,
            max_bytes: 1,
        };
        assert_eq!(
            resolve_url(&src, "https://huggingface.co/"),
            "https://huggingface.co/org/name/resolve/main/f.safetensors"
        );
    }
}
