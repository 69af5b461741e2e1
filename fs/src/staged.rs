//! A file's content held on the mount's own disk, with the mode and time it will be
//! published with.
//!
//! Every file the mount changes goes through one: a file being written, an image opened
//! for writing without truncating (its content is fetched first: copy-up), a local file
//! whose name cannot be a registry name (kept until it is renamed onto one), and an image
//! just pushed, kept a little while so that a `chmod` or `utime` right after the `close()`
//! (as `install` and `shutil.copy2` do) re-publishes from here instead of fetching the
//! bytes back. The content lives in a file with no name in `spool_dir=` (nothing is left
//! behind if the mount dies), read and written at any offset.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use reposure_registry::operations::{DEFAULT_FILE_MODE, FileAttributes};
use reposure_registry::scratch::Scratch;

/// Staged content and its attributes.
pub struct Staged {
    file: Scratch,
    size: AtomicU64,
    /// Permission bits (`0o7777` at most).
    mode: AtomicU32,
    /// When the content last changed, or the time a program set.
    modified: Mutex<SystemTime>,
}

impl Staged {
    /// An empty file in `dir` with `mode`.
    pub fn new_in(dir: &Path, mode: u32) -> std::io::Result<Self> {
        Ok(Self {
            file: Scratch::new_in(dir)?,
            size: AtomicU64::new(0),
            mode: AtomicU32::new(mode & 0o7777),
            modified: Mutex::new(SystemTime::now()),
        })
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// What publishing this content records about the file.
    pub fn attributes(&self) -> FileAttributes {
        FileAttributes {
            mode: Some(self.mode()),
            modified: Some(self.modified()),
        }
    }

    pub fn mode(&self) -> u32 {
        self.mode.load(Ordering::Relaxed)
    }

    pub fn modified(&self) -> SystemTime {
        *self.modified.lock().expect("lock")
    }

    pub fn set_mode(&self, mode: u32) {
        self.mode.store(mode & 0o7777, Ordering::Relaxed);
    }

    pub fn set_modified(&self, modified: SystemTime) {
        *self.modified.lock().expect("lock") = modified;
    }

    /// Takes on an image's attributes (a copy-up keeps the mode and time it had).
    pub fn adopt(&self, attributes: FileAttributes) {
        self.set_mode(attributes.mode.unwrap_or(DEFAULT_FILE_MODE));
        if let Some(modified) = attributes.modified {
            self.set_modified(modified);
        }
    }

    /// Writes `data` at `offset` (past the end, the gap reads as zeros).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        // A write to the local spool lands in the page cache; it is done in place rather
        // than on the blocking pool, which would cost a thread hand-off per FUSE write.
        tokio::task::block_in_place(|| self.file.file().write_all_at(data, offset))?;
        self.size
            .fetch_max(offset + data.len() as u64, Ordering::Relaxed);
        self.set_modified(SystemTime::now());
        Ok(())
    }

    /// Appends a piece of the content (a copy-up fetches it in pieces).
    pub fn append(&self, chunk: &[u8]) -> std::io::Result<()> {
        let offset = self.size();
        tokio::task::block_in_place(|| self.file.file().write_all_at(chunk, offset))?;
        self.size.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Takes `other`'s content, copied on the mount's disk (a copy-up from the content the
    /// mount pushed moments ago, rather than from the registry).
    pub fn copy_from(&self, other: &Staged) -> std::io::Result<()> {
        /// Bytes copied at a time.
        const PIECE: u64 = 1 << 20;
        self.truncate(0)?;
        let size = other.size();
        let mut buffer = vec![0u8; PIECE.min(size) as usize];
        let mut offset = 0;
        while offset < size {
            let piece = &mut buffer[..PIECE.min(size - offset) as usize];
            tokio::task::block_in_place(|| other.file.file().read_exact_at(piece, offset))?;
            self.append(piece)?;
            offset += piece.len() as u64;
        }
        Ok(())
    }

    /// Up to `length` bytes from `offset`.
    pub fn read_at(&self, offset: u64, length: u32) -> std::io::Result<Bytes> {
        let end = self.size().min(offset.saturating_add(u64::from(length)));
        let mut buffer = vec![0u8; end.saturating_sub(offset) as usize];
        tokio::task::block_in_place(|| self.file.file().read_exact_at(&mut buffer, offset))?;
        Ok(Bytes::from(buffer))
    }

    /// Cuts or extends the content to `size` bytes.
    pub fn truncate(&self, size: u64) -> std::io::Result<()> {
        self.file.file().set_len(size)?;
        self.size.store(size, Ordering::Relaxed);
        self.set_modified(SystemTime::now());
        Ok(())
    }

    /// A path that opens the content, for pushing it (valid while this value lives).
    pub fn path(&self) -> PathBuf {
        self.file.path()
    }

    /// Gives the content a name, leaving this value as it is (kept files at unmount).
    pub fn keep_as(&self, path: &Path) -> std::io::Result<()> {
        self.file.file().sync_all()?;
        self.file.link_to(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn writes_anywhere_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let staged = Staged::new_in(dir.path(), 0o600).unwrap();
        staged.write_at(0, b"hello").unwrap();
        staged.write_at(8, b"!").unwrap();
        assert_eq!(staged.size(), 9);
        assert_eq!(&staged.read_at(0, 100).unwrap()[..], b"hello\0\0\0!");
        staged.truncate(2).unwrap();
        assert_eq!(&staged.read_at(0, 100).unwrap()[..], b"he");
        assert_eq!(staged.attributes().mode, Some(0o600));
        let kept = dir.path().join("kept");
        staged.keep_as(&kept).unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), b"he");
    }
}
