//! Who publishes a spool entry: the session that accepted it, while it uploads the same
//! bytes straight to the registry, or the spooler. The rule is an exclusive `flock(2)` on
//! the entry's content file: the session takes it on the unnamed file before the entry
//! gets its name, so the spooler never sees an unclaimed moment; the spooler skips an
//! entry it cannot lock. The kernel drops the lock with the last descriptor, so an entry
//! whose session died is the spooler's on its next scan, and one whose direct upload
//! failed is handed over by dropping the claim.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A held claim on an entry's content; released on drop.
#[derive(Debug)]
pub struct Claim {
    _file: File,
}

impl Claim {
    /// Claims the file behind `file` (another descriptor of it is kept, so the claim
    /// outlives `file`).
    pub fn hold(file: &File) -> io::Result<Self> {
        let file = file.try_clone()?;
        if lock(&file)? {
            Ok(Self { _file: file })
        } else {
            Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the spool entry is claimed already",
            ))
        }
    }

    /// Claims the entry content at `path`, if nobody holds it and it still has that name
    /// once claimed (a session removes a published entry's name before letting go).
    /// `None`: claimed by another, or gone.
    pub fn try_take(path: &Path) -> io::Result<Option<Self>> {
        // Open for writing: where flock is emulated with byte-range locks (NFS), an
        // exclusive lock needs it.
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !lock(&file)? {
            return Ok(None);
        }
        use std::os::unix::fs::MetadataExt;
        let held = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(named) if named.ino() == held.ino() && named.dev() == held.dev() => {
                Ok(Some(Self { _file: file }))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// An exclusive lock without waiting: `false` if another holds one.
fn lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own; LOCK_NB never blocks.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.push");
        std::fs::write(&path, b"content").unwrap();
        let file = File::open(&path).unwrap();
        let claim = Claim::hold(&file).unwrap();
        drop(file);
        assert!(
            Claim::try_take(&path).unwrap().is_none(),
            "taken while held"
        );
        assert!(Claim::hold(&File::open(&path).unwrap()).is_err());
        drop(claim);
        let taken = Claim::try_take(&path).unwrap();
        assert!(taken.is_some(), "not free once released");
    }

    #[test]
    fn an_entry_removed_before_release_is_nobodys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.push");
        std::fs::write(&path, b"content").unwrap();
        let claim = Claim::hold(&File::open(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        drop(claim);
        assert!(Claim::try_take(&path).unwrap().is_none());
        // A new entry under the old name is not the old claim's.
        std::fs::write(&path, b"other").unwrap();
        assert!(Claim::try_take(&path).unwrap().is_some());
    }
}
