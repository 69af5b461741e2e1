//! A cache of verified file contents on local disk (`cache_dir=`, `cache_size=`).
//!
//! Blobs never change, so a file's content is cached by what it is (its blob digest and
//! where it sits in the blob, or its manifest for an archive) and never revalidated. Only
//! content that was read whole from its start and passed its digest check is written here,
//! so the cache holds verified bytes only; a read served from it needs no network at all.
//! Entries are whole files: a file streams into a file with no name and is named once
//! verified, so a mount killed mid-read leaves nothing partial behind. When the total passes `cache_size` the least recently used
//! entries (oldest modification time; a hit touches it) are removed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use reposure_registry::operations::FileContent;
use reposure_registry::scratch::Scratch;
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

/// A cache directory and its size limit.
pub struct DiskCache {
    dir: PathBuf,
    limit: u64,
    eviction: Mutex<()>,
}

/// The cache key of a file's content.
pub fn key(content: &FileContent) -> String {
    let described = serde_json::to_vec(content).expect("contents serialise");
    hex::encode(Sha256::digest(described))
}

impl DiskCache {
    /// A cache in `dir` (created if missing) holding at most `limit` bytes.
    pub fn open(dir: PathBuf, limit: u64) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(Self {
            dir,
            limit,
            eviction: Mutex::new(()),
        }))
    }

    /// The cached content for `key`, if any (and marks it recently used).
    pub fn get(&self, key: &str) -> Option<std::fs::File> {
        let path = self.dir.join(key);
        let file = std::fs::File::open(&path).ok()?;
        let _ = file.set_modified(SystemTime::now());
        debug!(key, "disk cache hit");
        Some(file)
    }

    /// Starts writing an entry; it exists only once [`Fill::commit`] is called.
    pub fn fill(self: &Arc<Self>, key: &str) -> Option<Fill> {
        let file = Scratch::new_in(&self.dir).ok()?;
        Some(Fill {
            cache: self.clone(),
            key: key.to_owned(),
            file,
            failed: false,
        })
    }

    /// Removes the least recently used entries until the total fits the limit.
    fn evict(&self) {
        let _guard = self.eviction.lock().expect("eviction lock");
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .flatten()
            // Entries being named (`Scratch::persist`) are dot files.
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                meta.is_file().then(|| {
                    (
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        meta.len(),
                        e.path(),
                    )
                })
            })
            .collect();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.limit {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                debug!(path = %path.display(), "evicted from the disk cache");
            }
        }
    }
}

/// An entry being written.
pub struct Fill {
    cache: Arc<DiskCache>,
    key: String,
    file: Scratch,
    failed: bool,
}

impl Fill {
    /// Appends the next bytes of the content (a local disk write of the page cache).
    pub fn write(&mut self, chunk: &[u8]) {
        if !self.failed && self.file.file().write_all(chunk).is_err() {
            // A full cache disk only costs the caching, never the read.
            self.failed = true;
        }
    }

    /// Makes the entry visible: call only once the whole content was verified.
    pub fn commit(self) {
        if self.failed {
            return;
        }
        let path = self.cache.dir.join(&self.key);
        if let Err(e) = self.file.persist(&path) {
            warn!(error = %e, "cannot keep a verified file in the disk cache");
            return;
        }
        self.cache.evict();
    }
}
