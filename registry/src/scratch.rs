//! Files that have no name until they are complete.
//!
//! Spooled pushes, downloads and cache entries are written into a file that has no name
//! (Linux `O_TMPFILE`): if the process is killed, the kernel frees it and nothing is left
//! behind for anyone to clean up. A file that must outlive the process gets its final name
//! only once it is complete ([`Scratch::persist`]), so nobody ever sees a partial one.
//! Where the filesystem cannot make unnamed files (some network filesystems), a hidden
//! named file stands in, removed on drop as before.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A file being written, nameless (or hidden) until persisted.
pub struct Scratch {
    file: File,
    /// The stand-in's name, where the filesystem has no unnamed files.
    named: Option<tempfile::TempPath>,
}

impl Scratch {
    /// A new empty file on the filesystem of `dir`.
    pub fn new_in(dir: &Path) -> io::Result<Self> {
        let unnamed = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir);
        match unnamed {
            Ok(file) => Ok(Self { file, named: None }),
            // Filesystems (or kernels) without O_TMPFILE answer one of these.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) =>
            {
                let (file, path) = tempfile::Builder::new()
                    .prefix(".reposure-")
                    .tempfile_in(dir)?
                    .into_parts();
                Ok(Self {
                    file,
                    named: Some(path),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// A path that opens this same file, for code that takes paths. It is valid while
    /// this value lives, in this process only.
    pub fn path(&self) -> PathBuf {
        match &self.named {
            Some(path) => path.to_path_buf(),
            None => PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd())),
        }
    }

    /// Another descriptor of the file, with its own position, for reading it back.
    pub fn reopen(&self) -> io::Result<File> {
        File::open(self.path())
    }

    /// Gives the file the new name `path` (which must not exist), keeping this value: a
    /// second name for the same file, that outlives the process.
    pub fn link_to(&self, path: &Path) -> io::Result<()> {
        match &self.named {
            Some(named) => std::fs::hard_link(named, path),
            None => link_unnamed(&self.file, path),
        }
    }

    /// Gives the file the name `path`, replacing what had it, in one step: readers see the
    /// old file or the complete new one. Call it after the content is synced.
    pub fn persist(self, path: &Path) -> io::Result<()> {
        if let Some(named) = self.named {
            return named.persist(path).map_err(|e| e.error);
        }
        // A new name is given in one step. linkat(2) cannot replace, so an existing file is
        // replaced by linking under a unique hidden name beside it and renaming over it (a
        // crash between the two leaves that hidden `.NAME.*.link` file behind).
        match link_unnamed(&self.file, path) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            done => return done,
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let staging = dir.join(format!(
            ".{}.{:016x}.link",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            rand::random::<u64>()
        ));
        link_unnamed(&self.file, &staging)?;
        std::fs::rename(&staging, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&staging);
        })
    }
}

/// Gives an `O_TMPFILE` file the name `path` (which must not exist).
fn link_unnamed(file: &File, path: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let source = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .expect("no NUL in a /proc path");
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
    // SAFETY: linkat(2) with two NUL-terminated paths owned here; following the /proc
    // magic link names the open file itself, which needs no privilege.
    let status = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            source.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_scratch_file_has_no_name_until_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::new_in(dir.path()).unwrap();
        scratch.file().write_all(b"content").unwrap();
        assert!(names_in(dir.path()).is_empty(), "nothing is named yet");
        let mut back = String::new();
        scratch.reopen().unwrap().read_to_string(&mut back).unwrap();
        assert_eq!(back, "content");
        std::fs::write(dir.path().join("target"), b"old").unwrap();
        scratch.persist(&dir.path().join("target")).unwrap();
        assert_eq!(names_in(dir.path()), ["target"]);
        assert_eq!(
            std::fs::read(dir.path().join("target")).unwrap(),
            b"content"
        );
    }

    #[test]
    fn a_scratch_file_takes_a_new_name() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::new_in(dir.path()).unwrap();
        scratch.file().write_all(b"new").unwrap();
        scratch.persist(&dir.path().join("fresh")).unwrap();
        assert_eq!(names_in(dir.path()), ["fresh"]);
        assert_eq!(std::fs::read(dir.path().join("fresh")).unwrap(), b"new");
    }

    #[test]
    fn a_dropped_scratch_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::new_in(dir.path()).unwrap();
        scratch.file().write_all(&[1u8; 4096]).unwrap();
        drop(scratch);
        assert!(names_in(dir.path()).is_empty());
    }
}
