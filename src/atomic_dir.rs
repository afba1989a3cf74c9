//! Putting a finished directory in place of another, so that a reader sees the old one or the
//! new one and never a mix: the package writer (`.mlpackage`) and the bundle writer
//! (`.mlmodelc`) both fill a hidden sibling and call [`replace_dir`].

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// How often [`replace_dir`] retries when other writers keep putting their directory at `out`.
const REPLACE_ATTEMPTS: usize = 20;

/// A hidden name `.NAME.KIND-PID-N` in `parent` that no other write (in this or another
/// process) is using. Writers that remove the leftovers of killed processes parse this form.
pub(crate) fn hidden_sibling(parent: &Path, name: &str, kind: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    parent.join(format!(".{name}.{kind}-{}-{n}", std::process::id()))
}

/// Why [`replace_dir`] failed. In every case `tmp` is left for the caller to remove, and
/// whatever was at `out` is still there (or a complete directory of another writer is).
#[derive(Debug)]
pub(crate) enum ReplaceError<E> {
    /// The caller's check refused what is at `out`.
    Refused(E),
    /// A rename failed; the error concerns `out`.
    Io(io::Error),
    /// Other writers kept putting their directory at `out` for every attempt.
    Busy,
}

/// Whether a rename failed because something (another writer's directory) is at the target.
fn occupied(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::DirectoryNotEmpty | ErrorKind::AlreadyExists
    )
}

/// Moves the finished directory `tmp` to `out` (`name` in `parent`, the directory holding
/// `tmp`). A directory cannot be renamed over a non-empty one, so an existing `out` is first
/// passed to `check` (which refuses what must not be deleted: user data under a mistyped path),
/// moved aside to a hidden sibling, and deleted once `tmp` is in place, or put back if the final
/// rename fails for another reason. Other writers may do the same concurrently: when one of
/// them takes `out` in between, this checks and retries; every directory that reaches `out` is
/// complete, so whichever rename is last wins.
pub(crate) fn replace_dir<E>(
    tmp: &Path,
    out: &Path,
    parent: &Path,
    name: &str,
    check: impl FnMut(&Path) -> Result<(), E>,
) -> Result<(), ReplaceError<E>> {
    replace_with(tmp, out, parent, name, check, &|from, to| {
        fs::rename(from, to)
    })
}

/// [`replace_dir`] with the rename given, so tests can make any one of them fail.
fn replace_with<E>(
    tmp: &Path,
    out: &Path,
    parent: &Path,
    name: &str,
    mut check: impl FnMut(&Path) -> Result<(), E>,
    rename: &dyn Fn(&Path, &Path) -> io::Result<()>,
) -> Result<(), ReplaceError<E>> {
    for _ in 0..REPLACE_ATTEMPTS {
        match rename(tmp, out) {
            Ok(()) => return Ok(()),
            Err(e) if occupied(&e) => {}
            Err(e) => return Err(ReplaceError::Io(e)),
        }
        // Whatever is there now may have arrived after the caller's first check.
        check(out).map_err(ReplaceError::Refused)?;
        let old = hidden_sibling(parent, name, "old");
        match rename(out, &old) {
            Ok(()) => {}
            // Another writer moved it aside first.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(ReplaceError::Io(e)),
        }
        match rename(tmp, out) {
            Ok(()) => {
                // The new directory is in place, so the write has succeeded; failing to delete
                // the old copy only wastes space in a hidden sibling.
                let _ = fs::remove_dir_all(&old);
                return Ok(());
            }
            Err(e) if occupied(&e) => {
                // Another writer's complete directory arrived in between; the one moved aside
                // is older than both.
                let _ = fs::remove_dir_all(&old);
            }
            Err(e) => {
                if let Err(back) = rename(&old, out) {
                    // Only if a newer directory took its place; otherwise it stays for the user.
                    if occupied(&back) {
                        let _ = fs::remove_dir_all(&old);
                    }
                }
                return Err(ReplaceError::Io(e));
            }
        }
    }
    Err(ReplaceError::Busy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// `parent/name` holding one file `f` with `text`.
    fn dir_with(parent: &Path, name: &str, text: &str) -> PathBuf {
        let d = parent.join(name);
        fs::create_dir(&d).unwrap();
        fs::write(d.join("f"), text).unwrap();
        d
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn accept(_: &Path) -> Result<(), ()> {
        Ok(())
    }

    #[test]
    fn puts_the_new_directory_where_none_was() {
        let t = tempfile::tempdir().unwrap();
        let tmp = dir_with(t.path(), ".m.tmp", "new");
        let out = t.path().join("m");
        replace_dir(&tmp, &out, t.path(), "m", accept).unwrap();
        assert_eq!(fs::read_to_string(out.join("f")).unwrap(), "new");
        assert_eq!(names(t.path()), ["m"]);
    }

    #[test]
    fn replaces_an_existing_directory_and_leaves_no_sibling() {
        let t = tempfile::tempdir().unwrap();
        let out = dir_with(t.path(), "m", "old");
        fs::write(out.join("only-in-old"), "x").unwrap();
        let tmp = dir_with(t.path(), ".m.tmp", "new");
        let mut checked = Vec::new();
        replace_dir(&tmp, &out, t.path(), "m", |p| {
            checked.push(p.to_path_buf());
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(checked.len(), 1);
        assert_eq!(checked[0], out);
        assert_eq!(names(&out), ["f"]);
        assert_eq!(fs::read_to_string(out.join("f")).unwrap(), "new");
        assert_eq!(names(t.path()), ["m"]);
    }

    #[test]
    fn a_refused_directory_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let out = dir_with(t.path(), "m", "user data");
        let tmp = dir_with(t.path(), ".m.tmp", "new");
        let err = replace_dir(&tmp, &out, t.path(), "m", |_| Err("not mine")).unwrap_err();
        assert!(matches!(err, ReplaceError::Refused("not mine")), "{err:?}");
        assert_eq!(fs::read_to_string(out.join("f")).unwrap(), "user data");
        assert_eq!(names(t.path()), [".m.tmp", "m"]);
    }

    #[test]
    fn a_failed_final_rename_puts_the_old_directory_back() {
        let t = tempfile::tempdir().unwrap();
        let out = dir_with(t.path(), "m", "old");
        let tmp = dir_with(t.path(), ".m.tmp", "new");
        // The second move of `tmp` (after `out` was moved aside) fails as a full disk would.
        let tmp_moves = Cell::new(0);
        let rename = |from: &Path, to: &Path| {
            if from == tmp {
                tmp_moves.set(tmp_moves.get() + 1);
                if tmp_moves.get() == 2 {
                    return Err(io::Error::other("no space left"));
                }
            }
            fs::rename(from, to)
        };
        let err = replace_with(&tmp, &out, t.path(), "m", accept, &rename).unwrap_err();
        assert!(
            matches!(&err, ReplaceError::Io(e) if e.to_string() == "no space left"),
            "{err:?}"
        );
        assert_eq!(tmp_moves.get(), 2);
        assert_eq!(fs::read_to_string(out.join("f")).unwrap(), "old");
        // The caller still owns `tmp`; nothing else is left beside `out`.
        assert_eq!(names(t.path()), [".m.tmp", "m"]);
    }

    #[test]
    fn a_failed_first_rename_touches_nothing() {
        let t = tempfile::tempdir().unwrap();
        let out = dir_with(t.path(), "m", "old");
        let missing = t.path().join(".m.tmp");
        let err = replace_dir(&missing, &out, t.path(), "m", accept).unwrap_err();
        assert!(
            matches!(&err, ReplaceError::Io(e) if e.kind() == ErrorKind::NotFound),
            "{err:?}"
        );
        assert_eq!(fs::read_to_string(out.join("f")).unwrap(), "old");
        assert_eq!(names(t.path()), ["m"]);
    }

    #[test]
    fn sibling_names_are_hidden_and_distinct() {
        let p = Path::new("/d");
        let (a, b) = (
            hidden_sibling(p, "m.mlpackage", "tmp"),
            hidden_sibling(p, "m.mlpackage", "tmp"),
        );
        assert_ne!(a, b);
        let prefix = format!(".m.mlpackage.tmp-{}-", std::process::id());
        for s in [&a, &b] {
            let n = s.file_name().unwrap().to_str().unwrap();
            assert!(n.starts_with(&prefix), "{n}");
        }
    }
}
