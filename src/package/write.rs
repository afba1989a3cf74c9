//! Writing a `.mlpackage` atomically.
//!
//! The package is assembled in a hidden sibling directory and renamed into place only once every
//! file is written, so a reader (or Xcode) never sees a half-written package and a failed write
//! leaves whatever was at the destination as it was.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Component, Path, PathBuf};

use prost::Message;

use super::manifest::{
    Manifest, DATA_DIR, MANIFEST_FILE, MODEL_PATH, WEIGHTS_DIR_PATH, WEIGHTS_FILE,
};
use super::PackageError;
use crate::atomic_dir::{hidden_sibling, replace_dir, ReplaceError};
use crate::proto::specification::Model;

/// Writes `out` (a directory ending in .mlpackage) atomically: everything goes to a temporary
/// sibling directory, which is renamed over `out` only when complete (an existing package at
/// `out` is replaced). Deterministic: same inputs, same bytes (fixed item identifiers, sorted
/// JSON).
///
/// `weight_bin` is the whole `weight.bin` (see [`BlobWriter`](super::BlobWriter)); with `None`
/// the package has no weights entry. Missing parent directories are created (and removed again
/// if the write fails), but never through a `..` (`-o new/../m.mlpackage` is refused rather
/// than leaving an empty `new/`). Something at `out` that is not a package (a file, or a
/// non-empty directory without `Manifest.json`) is refused rather than deleted.
///
/// Temporaries are hidden siblings `.NAME.tmp-PID-N` (the package being filled) and
/// `.NAME.old-PID-N` (the previous package, moved aside); leftovers of a process that no longer
/// runs (one killed mid-write) are removed by the next write of the same output. Several
/// processes may write the same output at once: each either succeeds (the last rename wins,
/// and `out` is always one complete package) or fails saying that another process is writing
/// it.
pub fn write_package(
    out: &Path,
    model: &Model,
    weight_bin: Option<&[u8]>,
) -> Result<(), PackageError> {
    write_package_with(out, model, weight_bin, &mut |_| Ok(()))
}

/// [`write_package`] with a hook called after each file is written, so tests can make a write
/// fail midway.
pub(crate) fn write_package_with(
    out: &Path,
    model: &Model,
    weight_bin: Option<&[u8]>,
    after_file: &mut dyn FnMut(&Path) -> Result<(), PackageError>,
) -> Result<(), PackageError> {
    let w = PackageWriter::begin(out)?;
    if let Some(bytes) = weight_bin {
        write_file(&w.weights_path(), bytes, after_file)?;
    }
    w.finish_with(model, weight_bin.is_some(), after_file)
}

/// A package being written: its temporary directory exists from [`PackageWriter::begin`] on, so
/// the weights can be streamed into [`PackageWriter::weights_path`] while the model is still
/// being lowered; [`PackageWriter::finish`] adds the model and manifest and renames it into
/// place. Dropped unfinished (an error on the way), it removes everything it made.
pub struct PackageWriter {
    out: PathBuf,
    parent: PathBuf,
    name: String,
    tmp: PathBuf,
    /// Parent directories this write created, outermost first.
    created: Vec<PathBuf>,
    done: bool,
}

impl PackageWriter {
    /// Checks `out` (see [`write_package`]) and creates the temporary package beside it.
    pub fn begin(out: &Path) -> Result<PackageWriter, PackageError> {
        let invalid = |reason: &str| PackageError::InvalidOutput {
            path: out.to_path_buf(),
            reason: reason.to_owned(),
        };
        let name = out
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.ends_with(".mlpackage") && n.len() > ".mlpackage".len())
            .ok_or_else(|| invalid("a package path must end in a name like model.mlpackage"))?
            .to_string();
        check_replaceable(out)?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let created = create_parents(&parent, out)?;
        remove_stale(&parent, &name);
        let tmp = hidden_sibling(&parent, &name, "tmp");
        let w = PackageWriter {
            out: out.to_path_buf(),
            parent,
            name,
            tmp,
            created,
            done: false,
        };
        let weights_dir = w.weights_path();
        let weights_dir = weights_dir.parent().expect("weight.bin has a directory");
        fs::create_dir_all(weights_dir).map_err(PackageError::io(weights_dir))?;
        Ok(w)
    }

    /// Where `weight.bin` goes (in the temporary package).
    pub fn weights_path(&self) -> PathBuf {
        self.tmp
            .join(DATA_DIR)
            .join(WEIGHTS_DIR_PATH)
            .join(WEIGHTS_FILE)
    }

    /// Writes the model and the manifest and puts the package at its path. With `has_weights`,
    /// `weight.bin` must have been written at [`PackageWriter::weights_path`].
    pub fn finish(self, model: &Model, has_weights: bool) -> Result<(), PackageError> {
        self.finish_with(model, has_weights, &mut |_| Ok(()))
    }

    fn finish_with(
        mut self,
        model: &Model,
        has_weights: bool,
        after_file: &mut dyn FnMut(&Path) -> Result<(), PackageError>,
    ) -> Result<(), PackageError> {
        let data = self.tmp.join(DATA_DIR);
        if !has_weights {
            let dir = data.join(WEIGHTS_DIR_PATH);
            // An empty weights directory is not part of a package without weights.
            let _ = fs::remove_file(dir.join(WEIGHTS_FILE));
            fs::remove_dir(&dir).map_err(PackageError::io(&dir))?;
        }
        write_file(&data.join(MODEL_PATH), &model.encode_to_vec(), after_file)?;
        let manifest = Manifest::for_model(has_weights).to_json();
        write_file(&self.tmp.join(MANIFEST_FILE), &manifest, after_file)?;
        replace(&self.tmp, &self.out, &self.parent, &self.name)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for PackageWriter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Best effort: the error that stopped the write is the one worth reporting.
        let _ = fs::remove_dir_all(&self.tmp);
        for dir in self.created.iter().rev() {
            // Only empty ones: another writer may have put something there meanwhile.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Creates the missing directories of `parent`, returning them outermost first. A missing part
/// that contains `..` is refused: creating `new/` only to leave it again with `new/..` would
/// leave an empty directory nobody asked for.
fn create_parents(parent: &Path, out: &Path) -> Result<Vec<PathBuf>, PackageError> {
    let mut existing = parent;
    while fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new("");
                break;
            }
        }
    }
    let missing = parent.strip_prefix(existing).unwrap_or(parent);
    if missing
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(PackageError::InvalidOutput {
            path: out.to_path_buf(),
            reason: format!(
                "directory {} does not exist (not created, as the path leaves it again with \"..\")",
                parent.display()
            ),
        });
    }
    let mut created = Vec::new();
    let mut dir = existing.to_path_buf();
    for c in missing.components() {
        dir.push(c);
        match fs::create_dir(&dir) {
            Ok(()) => created.push(dir.clone()),
            // A concurrent writer made it first.
            Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => {
                for d in created.iter().rev() {
                    let _ = fs::remove_dir(d);
                }
                return Err(PackageError::Io {
                    path: dir,
                    source: e,
                });
            }
        }
    }
    Ok(created)
}

/// Refuses to replace anything that does not look like a package, so a mistyped `-o` cannot
/// delete unrelated data. Another writer may move `out` aside at any moment, so a vanished
/// `out` is fine, and the directory is judged by one listing of it.
fn check_replaceable(out: &Path) -> Result<(), PackageError> {
    let meta = match fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PackageError::Io {
                path: out.to_path_buf(),
                source,
            })
        }
    };
    let refuse = |reason: &str| {
        Err(PackageError::InvalidOutput {
            path: out.to_path_buf(),
            reason: reason.to_owned(),
        })
    };
    if !meta.is_dir() {
        return refuse("exists and is not a directory; refusing to replace it");
    }
    let listing = match fs::read_dir(out) {
        Ok(l) => l,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PackageError::Io {
                path: out.to_path_buf(),
                source,
            })
        }
    };
    let mut empty = true;
    for entry in listing {
        let entry = entry.map_err(PackageError::io(out))?;
        if entry.file_name() == MANIFEST_FILE {
            return Ok(());
        }
        empty = false;
    }
    // A package another writer has just moved aside is deleted file by file, and a listing
    // begun before the move can see it without its manifest: only a directory still at `out`
    // counts.
    let still_there = fs::symlink_metadata(out).is_ok_and(|now| same_file(&meta, &now));
    if !empty && still_there {
        return refuse("exists and is not a .mlpackage (no Manifest.json); refusing to replace it");
    }
    Ok(())
}

#[cfg(unix)]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_file(_a: &fs::Metadata, _b: &fs::Metadata) -> bool {
    true
}

/// The writer's PID in a temporary's name `.NAME.tmp-PID-N` or `.NAME.old-PID-N`.
fn leftover_pid(entry: &str, name: &str) -> Option<u32> {
    let rest = entry.strip_prefix('.')?.strip_prefix(name)?;
    let rest = rest
        .strip_prefix(".tmp-")
        .or_else(|| rest.strip_prefix(".old-"))?;
    let (pid, n) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

/// Removes the temporaries of earlier writes of `name` whose process is gone (killed
/// mid-write). Best effort: a leftover that cannot be removed only wastes space.
fn remove_stale(parent: &Path, name: &str) {
    let Ok(listing) = fs::read_dir(parent) else {
        return;
    };
    for entry in listing.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|n| leftover_pid(n, name)) else {
            continue;
        };
        let path = entry.path();
        if !crate::limits::writer_may_be_alive(pid, &path) {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

fn write_file(
    path: &Path,
    bytes: &[u8],
    after_file: &mut dyn FnMut(&Path) -> Result<(), PackageError>,
) -> Result<(), PackageError> {
    let mut f = fs::File::create(path).map_err(PackageError::io(path))?;
    f.write_all(bytes).map_err(PackageError::io(path))?;
    // No fsync: the rename makes a failed or interrupted build invisible, which is the promise;
    // surviving power loss is not, and three fsyncs would triple the time of a whole build.
    after_file(path)
}

/// Moves the finished `tmp` to `out`, replacing a package there (see
/// [`replace_dir`](crate::atomic_dir::replace_dir)); what is at `out` is checked again before
/// it is moved aside, as another writer may have put something there since [`check_replaceable`].
fn replace(tmp: &Path, out: &Path, parent: &Path, name: &str) -> Result<(), PackageError> {
    replace_dir(tmp, out, parent, name, check_replaceable).map_err(|e| match e {
        ReplaceError::Refused(e) => e,
        ReplaceError::Io(source) => PackageError::Io {
            path: out.to_path_buf(),
            source,
        },
        ReplaceError::Busy => PackageError::InvalidOutput {
            path: out.to_path_buf(),
            reason: "is being written by another mlc process; try again".to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::{read_package, BlobDType, BlobWriter, WEIGHTS_FILE_REF};
    use crate::proto::specification::{model, ModelDescription};

    const CT_PACKAGE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ct_conv_relu.mlpackage"
    );

    fn ct() -> (Model, Vec<u8>) {
        let p = read_package(Path::new(CT_PACKAGE)).unwrap();
        (p.model, p.weights.unwrap())
    }

    /// Every file under `dir`, relative path → bytes.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            let mut entries: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for p in entries {
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    out.push((
                        p.strip_prefix(root).unwrap().to_path_buf(),
                        fs::read(&p).unwrap(),
                    ));
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn round_trips_coremltools_package() {
        let (model, weights) = ct();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("m.mlpackage");
        write_package(&out, &model, Some(&weights)).unwrap();
        assert_eq!(
            dir_names(tmp.path()),
            ["m.mlpackage"],
            "temporary directory left behind"
        );

        let files: Vec<PathBuf> = snapshot(&out).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            files,
            [
                Path::new("Data/com.apple.CoreML/model.mlmodel"),
                Path::new("Data/com.apple.CoreML/weights/weight.bin"),
                Path::new("Manifest.json"),
            ]
        );
        let back = read_package(&out).unwrap();
        assert_eq!(back.path, out);
        assert_eq!(back.model, model);
        assert_eq!(back.weights.as_deref(), Some(weights.as_slice()));
        let blobs = back.blobs().unwrap().unwrap();
        assert_eq!(blobs.get(64).unwrap().0, BlobDType::F16);
    }

    #[test]
    fn output_is_deterministic() {
        let (model, weights) = ct();
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a.mlpackage");
        let b = tmp.path().join("sub/b.mlpackage");
        write_package(&a, &model, Some(&weights)).unwrap();
        write_package(&b, &model, Some(&weights)).unwrap();
        assert_eq!(snapshot(&a), snapshot(&b));
        let manifest = fs::read_to_string(a.join("Manifest.json")).unwrap();
        assert!(manifest.contains(&format!(
            "\"rootModelIdentifier\": \"{}\"",
            super::super::MODEL_ITEM_ID
        )));
    }

    #[test]
    fn writes_model_without_weights() {
        let model = Model {
            specification_version: 7,
            description: Some(ModelDescription::default()),
            r#type: Some(model::Type::MlProgram(Default::default())),
            ..Default::default()
        };
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("w.mlpackage");
        write_package(&out, &model, None).unwrap();
        let back = read_package(&out).unwrap();
        assert_eq!(back.model, model);
        assert!(back.weights.is_none());
        assert!(back.blobs().unwrap().is_none());
        let manifest = fs::read_to_string(out.join("Manifest.json")).unwrap();
        assert!(!manifest.contains("weights"), "{manifest}");
    }

    #[test]
    fn replaces_existing_package() {
        let (model, weights) = ct();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("m.mlpackage");
        write_package(&out, &model, Some(&weights)).unwrap();
        let mut w = BlobWriter::new();
        w.add(BlobDType::F32, &[0; 16]);
        let new_weights = w.finish();
        write_package(&out, &model, Some(&new_weights)).unwrap();
        assert_eq!(read_package(&out).unwrap().weights.unwrap(), new_weights);
        assert_eq!(dir_names(tmp.path()), ["m.mlpackage"]);
        // An empty directory is fair game too (e.g. one a user pre-created).
        let empty = tmp.path().join("e.mlpackage");
        fs::create_dir(&empty).unwrap();
        write_package(&empty, &model, None).unwrap();
        assert!(empty.join("Manifest.json").is_file());
    }

    #[test]
    fn failed_write_leaves_existing_package_untouched() {
        let (model, weights) = ct();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("m.mlpackage");
        write_package(&out, &model, Some(&weights)).unwrap();
        let before = snapshot(&out);

        // Fail after each file in turn: the package must never be half-replaced.
        for fail_at in 0..3 {
            let mut n = 0;
            let mut hook = |p: &Path| {
                n += 1;
                if n > fail_at {
                    Err(PackageError::Io {
                        path: p.to_path_buf(),
                        source: std::io::Error::other("injected failure"),
                    })
                } else {
                    Ok(())
                }
            };
            let mut other = model.clone();
            other.specification_version = 8;
            let e = write_package_with(&out, &other, Some(&[0; 64]), &mut hook).unwrap_err();
            assert!(e.to_string().contains("injected failure"), "{e}");
            assert_eq!(
                snapshot(&out),
                before,
                "failing at file {fail_at} changed the package"
            );
            assert_eq!(
                dir_names(tmp.path()),
                ["m.mlpackage"],
                "temporary directory left behind"
            );
        }
    }

    #[test]
    fn unwritable_output_names_the_path_and_leaves_nothing() {
        let (model, weights) = ct();
        let tmp = tempfile::tempdir().unwrap();
        // A regular file where a parent directory should be: fails even when running as root.
        let blocker = tmp.path().join("blocker");
        fs::write(&blocker, b"not a directory").unwrap();
        let out = blocker.join("m.mlpackage");
        let e = write_package(&out, &model, Some(&weights)).unwrap_err();
        assert!(matches!(e, PackageError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains(&*blocker.to_string_lossy()), "{e}");
        assert_eq!(dir_names(tmp.path()), ["blocker"]);
        assert_eq!(fs::read(&blocker).unwrap(), b"not a directory");
    }

    #[test]
    fn refuses_to_replace_non_packages() {
        let (model, _) = ct();
        let tmp = tempfile::tempdir().unwrap();

        let e = write_package(&tmp.path().join("model.bin"), &model, None).unwrap_err();
        assert!(matches!(e, PackageError::InvalidOutput { .. }), "{e}");
        assert!(e.to_string().contains("model.bin"), "{e}");

        let file = tmp.path().join("f.mlpackage");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            write_package(&file, &model, None),
            Err(PackageError::InvalidOutput { .. })
        ));
        assert_eq!(fs::read(&file).unwrap(), b"x");

        let dir = tmp.path().join("d.mlpackage");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("precious.txt"), b"keep").unwrap();
        let e = write_package(&dir, &model, None).unwrap_err();
        assert!(e.to_string().contains("Manifest.json"), "{e}");
        assert_eq!(fs::read(dir.join("precious.txt")).unwrap(), b"keep");
        assert_eq!(dir_names(tmp.path()), ["d.mlpackage", "f.mlpackage"]);
    }

    #[test]
    fn leftovers_of_dead_writers_are_removed() {
        let (model, weights) = ct();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("m.mlpackage");
        let own = std::process::id();
        let names = [
            // A SIGKILLed writer (no such pid), before and after moving the old package aside.
            ".m.mlpackage.tmp-999999-0".to_string(),
            ".m.mlpackage.old-999999-3".to_string(),
            // A live writer (pid 1 always runs), this process, another output, a user's file.
            ".m.mlpackage.tmp-1-0".to_string(),
            format!(".m.mlpackage.tmp-{own}-999"),
            ".n.mlpackage.tmp-999999-0".to_string(),
            ".m.mlpackage.tmp-999999-x".to_string(),
        ];
        for n in &names {
            fs::create_dir(tmp.path().join(n)).unwrap();
            fs::write(tmp.path().join(n).join("Manifest.json"), b"{}").unwrap();
        }
        write_package(&out, &model, Some(&weights)).unwrap();
        let mut want: Vec<String> = names[2..].to_vec();
        want.push("m.mlpackage".into());
        want.sort();
        if cfg!(target_os = "linux") {
            assert_eq!(dir_names(tmp.path()), want);
        }
        assert_eq!(
            leftover_pid(".m.mlpackage.old-12-3", "m.mlpackage"),
            Some(12)
        );
        assert_eq!(leftover_pid(".m.mlpackage.tmp--3", "m.mlpackage"), None);
        assert_eq!(leftover_pid(".mm.mlpackage.tmp-1-3", "m.mlpackage"), None);
    }

    #[test]
    fn parents_are_created_only_when_asked_and_removed_on_failure() {
        let (model, weights) = ct();
        let tmp = tempfile::tempdir().unwrap();
        // `x/..` would need an `x/` nobody asked for.
        let out = tmp.path().join("x/../y.mlpackage");
        let e = write_package(&out, &model, None).unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains(".."), "{e}");
        assert_eq!(dir_names(tmp.path()), Vec::<String>::new());

        // Created for a write that then fails: removed again.
        let out = tmp.path().join("a/b/m.mlpackage");
        let mut hook = |p: &Path| {
            Err(PackageError::Io {
                path: p.to_path_buf(),
                source: std::io::Error::other("injected failure"),
            })
        };
        assert!(write_package_with(&out, &model, Some(&weights), &mut hook).is_err());
        assert_eq!(dir_names(tmp.path()), Vec::<String>::new());

        // And kept when it succeeds; `..` through directories that exist is fine.
        write_package(&out, &model, Some(&weights)).unwrap();
        let again = tmp.path().join("a/../a/b/m.mlpackage");
        write_package(&again, &model, None).unwrap();
        assert_eq!(dir_names(&tmp.path().join("a/b")), ["m.mlpackage"]);
    }

    #[test]
    fn concurrent_writers_of_one_output_all_succeed() {
        let (model, weights) = ct();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("m.mlpackage");
        let start = std::sync::Barrier::new(6);
        let (mut ok, mut busy) = (0, 0);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|i| {
                    let (model, weights, out, start) = (&model, &weights, &out, &start);
                    s.spawn(move || {
                        let w = (i % 2 == 0).then_some(weights.as_slice());
                        start.wait();
                        (0..40)
                            .map(|_| write_package(out, model, w))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                for r in h.join().unwrap() {
                    match r {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            let e = e.to_string();
                            assert!(e.contains("is being written by another mlc process"), "{e}");
                            busy += 1;
                        }
                    }
                }
            }
        });
        eprintln!("{ok} writes succeeded, {busy} found the output busy");
        assert!(ok > 0);
        read_package(&out).unwrap();
        assert_eq!(dir_names(tmp.path()), ["m.mlpackage"]);
    }

    #[test]
    fn blob_reference_constant_matches_coremltools() {
        // The constant must be what coremltools puts in BlobFileValue.fileName, or Core ML will
        // not find the weights.
        let bytes =
            fs::read(Path::new(CT_PACKAGE).join("Data/com.apple.CoreML/model.mlmodel")).unwrap();
        let needle = WEIGHTS_FILE_REF.as_bytes();
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
    }
}
