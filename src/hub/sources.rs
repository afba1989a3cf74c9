//! Where each model's published decoder weights live on the Hugging Face hub.

use super::HubError;

/// One published weights file: a file at a revision of a hub model repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The model name mlc uses for it (`taef2`, `taesd`, ...).
    pub model: &'static str,
    /// `org/name` on the hub.
    pub repo: &'static str,
    /// Path of the file inside the repo.
    pub file: &'static str,
    /// A 40-hex commit, or a branch name such as `main`.
    pub revision: &'static str,
    /// Lower-case hex sha256 of the file at `revision`, when known. `None` means whatever
    /// the branch holds today is accepted, so the caller should record the digest it got.
    pub sha256: Option<&'static str>,
    /// The file's size in bytes, when pinned with its sha256: a download announcing another
    /// length, or sending more, is refused at once instead of after the whole body.
    pub size: Option<u64>,
    /// The most bytes this model's weights can take, pinned or not: a body longer than this
    /// is refused as it streams in, so a server that never stops sending an unpinned file
    /// (taesd, taesdxl) is cut after megabytes, not gigabytes.
    pub max_bytes: u64,
}

/// A TAESD-family file (decoder, or decoder and encoder) is under 20 MB; 64 MiB leaves room
/// for a republished file in another dtype without letting an endless body run on.
const TAESD_FAMILY_CAP: u64 = 64 << 20;

/// The published decoder weights mlc knows how to fetch.
///
/// | model | repo | file | revision | sha256 | bytes | cap |
/// | --- | --- | --- | --- | --- | --- | --- |
/// | taef2 | `madebyollin/taef2` | `taef2.safetensors` | `bd244eb…` | `701d31c…` | not known | 64 MiB |
/// | taef1 | `madebyollin/taef1` | `diffusion_pytorch_model.safetensors` | `b1b2d00…` | `47a6c2b…` | 9848636 | 64 MiB |
/// | taesd | `madebyollin/taesd` | `taesd_decoder.safetensors` | `main` | not pinned | not pinned | 64 MiB |
/// | taesdxl | `madebyollin/taesdxl` | `taesdxl_decoder.safetensors` | `main` | not pinned | not pinned | 64 MiB |
///
/// taef2's file holds encoder and decoder with diffusers-style keys; the weights loader picks
/// out the decoder. taesd3 has no single-file decoder published there, so it is absent.
pub static SOURCES: &[Source] = &[
    Source {
        model: "taef2",
        repo: "madebyollin/taef2",
        file: "taef2.safetensors",
        revision: "bd244ebfe4398c84fbf312a2f1c868c676b500e3",
        sha256: Some("701d31c0ecbef3b609fe236e2e3a65ffb17f3a94237acdd771e8ea3194df557a"),
        // Not established (no copy of the file at hand); the digest still guards it.
        size: None,
        max_bytes: TAESD_FAMILY_CAP,
    },
    Source {
        model: "taef1",
        repo: "madebyollin/taef1",
        file: "diffusion_pytorch_model.safetensors",
        revision: "b1b2d00e9e440cfbf3dedb34266864da86016ceb",
        sha256: Some("47a6c2bff850da04b267cab70fe3553fef57255eb9a8e76852baa0a87850e54d"),
        size: Some(9_848_636),
        max_bytes: TAESD_FAMILY_CAP,
    },
    Source {
        model: "taesd",
        repo: "madebyollin/taesd",
        file: "taesd_decoder.safetensors",
        revision: "main",
        sha256: None,
        size: None,
        max_bytes: TAESD_FAMILY_CAP,
    },
    Source {
        model: "taesdxl",
        repo: "madebyollin/taesdxl",
        file: "taesdxl_decoder.safetensors",
        revision: "main",
        sha256: None,
        size: None,
        max_bytes: TAESD_FAMILY_CAP,
    },
];

/// Models mlc can build but whose weights must come from `--weights`.
const UNPUBLISHED: &[&str] = &["taesd3"];

/// The published source for a model's canonical name (`taef2`, `taef1`, `taesd`, `taesdxl`;
/// aliases such as `flux2` are the model registry's to resolve), or `None` when nothing is
/// published (taesd3) or the name is unknown.
pub fn source(model_name: &str) -> Option<&'static Source> {
    SOURCES.iter().find(|s| s.model == model_name)
}

/// Like [`source`], but says why there is none, in words fit for the user.
pub fn require_source(model_name: &str) -> Result<&'static Source, HubError> {
    if let Some(src) = source(model_name) {
        return Ok(src);
    }
    if UNPUBLISHED.contains(&model_name) {
        Err(HubError::NotPublished {
            model: model_name.to_string(),
        })
    } else {
        Err(HubError::UnknownModel {
            model: model_name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_map_to_the_table() {
        assert_eq!(source("taef2").unwrap().repo, "madebyollin/taef2");
        // Aliases belong to the model registry, which resolves them before asking.
        assert!(source("flux2").is_none());
        assert_eq!(
            source("taef1").unwrap().file,
            "diffusion_pytorch_model.safetensors"
        );
        assert_eq!(source("taesd").unwrap().file, "taesd_decoder.safetensors");
        assert_eq!(
            source("taesdxl").unwrap().file,
            "taesdxl_decoder.safetensors"
        );
        assert!(source("taesd3").is_none());
        assert!(source("nope").is_none());
    }

    #[test]
    fn pins_are_well_formed() {
        for s in SOURCES {
            match s.sha256 {
                Some(h) => {
                    assert!(super::super::cache::is_commit(s.revision), "{}", s.model);
                    assert_eq!(h.len(), 64, "{}", s.model);
                    assert!(h
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
                }
                None => assert_eq!(s.revision, "main", "{}", s.model),
            }
            // A size means something only next to the digest it was measured with.
            assert!(s.size.is_none() || s.sha256.is_some(), "{}", s.model);
            assert_ne!(s.size, Some(0), "{}", s.model);
            assert!(s.size.is_none_or(|n| n <= s.max_bytes), "{}", s.model);
            assert!(
                s.max_bytes <= super::super::DEFAULT_MAX_DOWNLOAD_BYTES,
                "{}",
                s.model
            );
        }
    }

    #[test]
    fn unpublished_and_unknown_models_say_so() {
        let e = require_source("taesd3").unwrap_err().to_string();
        assert!(
            e.contains("taesd3") && e.contains("local weights file"),
            "{e}"
        );
        let e = require_source("bogus").unwrap_err().to_string();
        assert!(e.contains("bogus") && e.contains("taef2"), "{e}");
    }
}
