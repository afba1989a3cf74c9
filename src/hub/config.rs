//! Where the cache is and whether the network may be used, read the way `huggingface_hub`
//! reads them so both tools agree on one cache.

use std::path::PathBuf;
use std::time::Duration;

/// The hub's public endpoint, used when `HF_ENDPOINT` is unset.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Environment variable for [`HubConfig::download_timeout`], in seconds.
pub const DOWNLOAD_TIMEOUT_ENV: &str = "MLC_DOWNLOAD_TIMEOUT_SECS";
/// A whole download may take this long by default (TAESD-family files are a few MB).
pub const DEFAULT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// No weights file mlc fetches comes near this; a body longer than it is refused. Each
/// [`Source`](super::Source) also states a cap of its own, usually far lower.
pub const DEFAULT_MAX_DOWNLOAD_BYTES: u64 = 2 << 30;
/// Environment variable for [`HubConfig::min_rate`], in bytes per second (0 turns the floor off).
pub const MIN_RATE_ENV: &str = "MLC_DOWNLOAD_MIN_RATE";
/// Environment variable for [`HubConfig::rate_window`], in seconds.
pub const RATE_WINDOW_ENV: &str = "MLC_DOWNLOAD_RATE_WINDOW_SECS";
/// A transfer slower than this many bytes per second over a [`DEFAULT_RATE_WINDOW`] is cut:
/// a few-MB file at that rate already takes longer than the overall deadline.
pub const DEFAULT_MIN_RATE: u64 = 1000;
/// The window over which [`DEFAULT_MIN_RATE`] is measured.
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(30);

/// Settings for finding and fetching hub files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub cache_dir: PathBuf,
    /// `$HF_ENDPOINT` (without trailing `/`), else [`DEFAULT_ENDPOINT`].
    pub endpoint: String,
    /// `HF_HUB_OFFLINE` set to 1/true/yes/on: use the cache only.
    pub offline: bool,
    /// Overall limit on one download, redirects and body included (besides the rate floor
    /// and a 60 s limit on a stalled read): `$MLC_DOWNLOAD_TIMEOUT_SECS` (a positive number; anything else is
    /// ignored), else [`DEFAULT_DOWNLOAD_TIMEOUT`].
    pub download_timeout: Duration,
    /// A body longer than this is refused, as it streams in: [`DEFAULT_MAX_DOWNLOAD_BYTES`].
    pub max_download_bytes: u64,
    /// A transfer that brings fewer than this many bytes per second over a [`rate_window`]
    /// is cut, so a server that trickles stops mlc long before the overall limit:
    /// `$MLC_DOWNLOAD_MIN_RATE` (a whole number; 0 turns the floor off), else
    /// [`DEFAULT_MIN_RATE`].
    ///
    /// [`rate_window`]: HubConfig::rate_window
    pub min_rate: u64,
    /// `$MLC_DOWNLOAD_RATE_WINDOW_SECS` (a positive number), else [`DEFAULT_RATE_WINDOW`].
    pub rate_window: Duration,
}

impl HubConfig {
    /// Reads the process environment.
    pub fn from_env() -> HubConfig {
        HubConfig::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup` (variable name → value), so callers and tests need not
    /// touch the process environment. Empty values count as unset, as in `huggingface_hub`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> HubConfig {
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let cache_dir = get("HF_HUB_CACHE")
            // The pre-2023 name; huggingface_hub still honours it.
            .or_else(|| get("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .or_else(|| get("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .or_else(|| {
                get("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("huggingface").join("hub"))
            })
            .unwrap_or_else(|| {
                let home = get("HOME")
                    .or_else(|| get("USERPROFILE"))
                    .map(PathBuf::from)
                    // No home at all (some CI sandboxes): a relative path beats refusing to run.
                    .unwrap_or_default();
                home.join(".cache").join("huggingface").join("hub")
            });
        let endpoint = get("HF_ENDPOINT")
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let offline = get("HF_HUB_OFFLINE").is_some_and(|v| is_truthy(&v));
        let seconds = |k: &str| {
            get(k)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
        };
        let download_timeout = seconds(DOWNLOAD_TIMEOUT_ENV).unwrap_or(DEFAULT_DOWNLOAD_TIMEOUT);
        let rate_window = seconds(RATE_WINDOW_ENV).unwrap_or(DEFAULT_RATE_WINDOW);
        let min_rate = get(MIN_RATE_ENV)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_MIN_RATE);
        HubConfig {
            cache_dir,
            endpoint,
            offline,
            download_timeout,
            max_download_bytes: DEFAULT_MAX_DOWNLOAD_BYTES,
            min_rate,
            rate_window,
        }
    }
}

/// huggingface_hub's ENV_VARS_TRUE_VALUES.
fn is_truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> HubConfig {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn cache_dir_precedence() {
        let all = [
            ("HF_HUB_CACHE", "/a"),
            ("HF_HOME", "/b"),
            ("XDG_CACHE_HOME", "/c"),
            ("HOME", "/d"),
        ];
        assert_eq!(cfg(&all).cache_dir, PathBuf::from("/a"));
        assert_eq!(cfg(&all[1..]).cache_dir, PathBuf::from("/b/hub"));
        assert_eq!(
            cfg(&all[2..]).cache_dir,
            PathBuf::from("/c/huggingface/hub")
        );
        assert_eq!(
            cfg(&all[3..]).cache_dir,
            PathBuf::from("/d/.cache/huggingface/hub")
        );
        assert_eq!(
            cfg(&[("HF_HUB_CACHE", ""), ("HF_HOME", "/b")]).cache_dir,
            PathBuf::from("/b/hub")
        );
        assert_eq!(
            cfg(&[("HUGGINGFACE_HUB_CACHE", "/legacy"), ("HF_HOME", "/b")]).cache_dir,
            PathBuf::from("/legacy")
        );
    }

    #[test]
    fn endpoint_and_offline() {
        let c = cfg(&[]);
        assert_eq!(c.endpoint, "https://huggingface.co");
        assert!(!c.offline);
        assert_eq!(
            cfg(&[("HF_ENDPOINT", "http://127.0.0.1:9/")]).endpoint,
            "http://127.0.0.1:9"
        );
        for yes in ["1", "true", "TRUE", "yes", "On"] {
            assert!(cfg(&[("HF_HUB_OFFLINE", yes)]).offline, "{yes}");
        }
        for no in ["0", "false", "", "no", "2"] {
            assert!(!cfg(&[("HF_HUB_OFFLINE", no)]).offline, "{no}");
        }
    }

    #[test]
    fn rate_floor_defaults_and_overrides() {
        let c = cfg(&[]);
        assert_eq!((c.min_rate, c.rate_window), (1000, Duration::from_secs(30)));
        let c = cfg(&[(MIN_RATE_ENV, " 5000 "), (RATE_WINDOW_ENV, "1.5")]);
        assert_eq!(
            (c.min_rate, c.rate_window),
            (5000, Duration::from_millis(1500))
        );
        assert_eq!(cfg(&[(MIN_RATE_ENV, "0")]).min_rate, 0);
        // Nonsense is ignored, as for the overall limit.
        let c = cfg(&[(MIN_RATE_ENV, "-1"), (RATE_WINDOW_ENV, "0")]);
        assert_eq!((c.min_rate, c.rate_window), (1000, Duration::from_secs(30)));
        let c = cfg(&[(MIN_RATE_ENV, "fast"), (RATE_WINDOW_ENV, "inf")]);
        assert_eq!((c.min_rate, c.rate_window), (1000, Duration::from_secs(30)));
    }
}
