//! Local files: files whose names cannot be registry names.
//!
//! `rsync` writes `.NAME.XXXXXX`, `sed -i` writes `sedXXXXXX`, editors and `mkstemp` write
//! names of their own, then rename the finished file over the real one. Such a file lives
//! here, on the mount's disk, listed in its directory (by this mount only), until it is
//! renamed onto an image name (which publishes it), unlinked (which discards it), or the
//! mount ends (which keeps it as a named file under `spool_dir=/reposure-kept-TIME/`, and
//! says so). It never looks published: the filesystem shows it with the sticky bit and the
//! `user.reposure.local` attribute.
//!
//! A few tools name their temporary files in ways a registry would accept; those names
//! ([`is_temporary_name`]) are local too, or the file would be pushed under its temporary
//! name, and the image retagged by the rename would hold a file by that name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::staged::Staged;

/// Whether `name` is one that a tool gives a temporary file it renames or removes later,
/// though a registry would take it as an image name: GNU `sed -i`'s `sedXXXXXX` (six
/// letters or digits), Python `tempfile`'s default `tmpXXXXXXXX` (eight of lower case
/// letters, digits and `_`), and vim's `4913` (the file it makes to learn whether it may
/// write in a directory).
pub fn is_temporary_name(name: &str) -> bool {
    let random = |prefix: &str, length: usize, allowed: fn(char) -> bool| {
        name.strip_prefix(prefix)
            .is_some_and(|rest| rest.len() == length && rest.chars().all(allowed))
    };
    random("sed", 6, |c| c.is_ascii_alphanumeric())
        || random("tmp", 8, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
        })
        || name == "4913"
}

/// The mode bit that marks a local file in `ls -l` (the sticky bit: `T` or `t`).
pub const LOCAL_MARK: u16 = 0o1000;

/// A local file.
#[derive(Clone)]
pub struct LocalFile {
    pub staged: Arc<Staged>,
    /// Its inode, pinned while the file exists.
    pub ino: u64,
}

/// Every local file, by directory and name.
#[derive(Default)]
pub struct LocalFiles {
    files: Mutex<BTreeMap<(String, String), LocalFile>>,
}

impl LocalFiles {
    pub fn get(&self, dir: &str, name: &str) -> Option<LocalFile> {
        self.files
            .lock()
            .expect("lock")
            .get(&(dir.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn insert(&self, dir: &str, name: &str, file: LocalFile) {
        self.files
            .lock()
            .expect("lock")
            .insert((dir.to_owned(), name.to_owned()), file);
    }

    pub fn remove(&self, dir: &str, name: &str) -> Option<LocalFile> {
        self.files
            .lock()
            .expect("lock")
            .remove(&(dir.to_owned(), name.to_owned()))
    }

    /// The local files of `dir`: names and inodes.
    pub fn in_dir(&self, dir: &str) -> Vec<(String, u64)> {
        self.files
            .lock()
            .expect("lock")
            .iter()
            .filter(|((d, _), _)| d == dir)
            .map(|((_, name), file)| (name.clone(), file.ino))
            .collect()
    }

    /// Whether any local file lives at or below `dir`.
    pub fn any_under(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.files
            .lock()
            .expect("lock")
            .keys()
            .any(|(d, _)| d == dir || d.starts_with(&prefix))
    }

    /// Moves the local files at or below directory `from` to `to`.
    pub fn move_dir(&self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        let mut files = self.files.lock().expect("lock");
        let moved: Vec<(String, String)> = files
            .keys()
            .filter(|(d, _)| d == from || d.starts_with(&prefix))
            .cloned()
            .collect();
        for (dir, name) in moved {
            if let Some(file) = files.remove(&(dir.clone(), name.clone())) {
                let new_dir = format!("{to}{}", &dir[from.len()..]);
                files.insert((new_dir, name), file);
            }
        }
    }

    /// Gives every local file a name under `root` (its directory below that), empties the
    /// table, and answers where each went, or why one could not be kept.
    pub fn keep_all(&self, root: &Path) -> Vec<Result<PathBuf, String>> {
        let files = std::mem::take(&mut *self.files.lock().expect("lock"));
        files
            .into_iter()
            .map(|((dir, name), file)| {
                let dir_path = root.join(&dir);
                let path = dir_path.join(&name);
                std::fs::create_dir_all(&dir_path)
                    .and_then(|()| file.staged.keep_as(&path))
                    .map(|()| path.clone())
                    .map_err(|e| format!("{}: {e}", path.display()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_temporary_names_are_recognised() {
        for name in ["sed4jlkg7", "sedAb12Zz", "tmpk2_9x0ab", "4913"] {
            assert!(is_temporary_name(name), "{name}");
        }
        for name in [
            "sed",
            "sedimentary",
            "sed4jlkg",
            "tmpfile",
            "tmpk2_9x0abc",
            "4914",
        ] {
            assert!(!is_temporary_name(name), "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn files_move_with_their_directory_and_are_kept_at_the_end() {
        let spool = tempfile::tempdir().unwrap();
        let files = LocalFiles::default();
        let staged = Arc::new(Staged::new_in(spool.path(), 0o600).unwrap());
        staged.write_at(0, b"draft").unwrap();
        let file = LocalFile { staged, ino: 7 };
        files.insert("a/b", ".draft", file.clone());
        files.insert("c", "Other", file);
        assert!(files.any_under("a"));
        files.move_dir("a", "z");
        assert!(files.get("z/b", ".draft").is_some() && files.get("a/b", ".draft").is_none());
        assert_eq!(files.in_dir("c"), [("Other".to_owned(), 7)]);
        let kept = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = files
            .keep_all(kept.path())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(paths.len(), 2);
        assert_eq!(
            std::fs::read(kept.path().join("z/b/.draft")).unwrap(),
            b"draft"
        );
        assert!(files.in_dir("c").is_empty());
    }
}
