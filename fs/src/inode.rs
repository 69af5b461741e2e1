//! Inode numbers and what each stands for.
//!
//! An image inode is one *version* of a name: the content the name resolved to when the
//! kernel looked it up. Its attributes never change, so the kernel may cache them and its
//! pages for as long as it likes, and a file opened before the tag moved keeps reading the
//! content it opened, to the end. A new lookup after the tag moved gives a new inode.
//! Directories and files being written have inodes of their own.
//!
//! Numbers are never reused. The table grows with the number of versions looked up in the
//! mount's life (kernel `forget` messages are not needed to keep it correct), which is
//! bounded by what users touch.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use reposure_surrogate::names::Reference;
use reposure_surrogate::registry::ImageInfo;

use crate::writer::WriteHandle;

/// The root directory's inode (FUSE's fixed number).
pub const ROOT: u64 = 1;

/// An image's name: a repository and a tag or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageName {
    pub repository: String,
    pub reference: Reference,
}

impl ImageName {
    /// The tag, for names that can be written.
    pub fn tag(&self) -> Option<&str> {
        match &self.reference {
            Reference::Tag(tag) => Some(tag),
            Reference::Digest(_) => None,
        }
    }
}

impl std::fmt::Display for ImageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            Reference::Tag(tag) => write!(f, "{}:{tag}", self.repository),
            Reference::Digest(digest) => write!(f, "{}@{digest}", self.repository),
        }
    }
}

/// What an inode stands for.
#[derive(Clone)]
pub enum Inode {
    /// A directory: a repository path prefix ("" is the root).
    Dir(String),
    /// One version of an image.
    Image {
        name: ImageName,
        info: Arc<ImageInfo>,
    },
    /// A name as listed by `readdir`, before anything resolved it.
    Listed(ImageName),
    /// A file this mount is (or was) writing, and its size so far. It does not hold the
    /// writer, whose end (the release) publishes what was written.
    Writing {
        name: ImageName,
        size: Arc<AtomicU64>,
    },
}

/// What makes two inodes the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Dir(String),
    Version(ImageName, reposure_surrogate::digest::Digest),
    Listed(ImageName),
    Writing(u64),
}

/// Two-way map between inode numbers and what they stand for.
pub struct InodeTable {
    inner: Mutex<Inner>,
}

struct Inner {
    by_key: HashMap<Key, u64>,
    by_ino: HashMap<u64, Inode>,
    next: u64,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                by_key: HashMap::from([(Key::Dir(String::new()), ROOT)]),
                by_ino: HashMap::from([(ROOT, Inode::Dir(String::new()))]),
                next: ROOT + 1,
            }),
        }
    }
}

impl InodeTable {
    fn ino_for(&self, key: Key, inode: impl FnOnce() -> Inode) -> u64 {
        let mut inner = self.inner.lock().expect("inode lock");
        if let Some(&ino) = inner.by_key.get(&key) {
            return ino;
        }
        let ino = inner.next;
        inner.next += 1;
        inner.by_key.insert(key, ino);
        inner.by_ino.insert(ino, inode());
        ino
    }

    /// The inode of a directory.
    pub fn dir(&self, path: &str) -> u64 {
        self.ino_for(Key::Dir(path.to_owned()), || Inode::Dir(path.to_owned()))
    }

    /// The inode of one version of an image.
    pub fn version(&self, name: &ImageName, info: &ImageInfo) -> u64 {
        let key = Key::Version(name.clone(), info.digest.clone());
        self.ino_for(key, || Inode::Image {
            name: name.clone(),
            info: Arc::new(info.clone()),
        })
    }

    /// The inode `readdir` shows for a name it has not resolved.
    pub fn listed(&self, name: &ImageName) -> u64 {
        self.ino_for(Key::Listed(name.clone()), || Inode::Listed(name.clone()))
    }

    /// A new inode for a file being written.
    pub fn writing(&self, name: &ImageName, writer: &Arc<WriteHandle>) -> u64 {
        let mut inner = self.inner.lock().expect("inode lock");
        let ino = inner.next;
        inner.next += 1;
        inner.by_key.insert(Key::Writing(ino), ino);
        inner.by_ino.insert(
            ino,
            Inode::Writing {
                name: name.clone(),
                size: writer.size_handle(),
            },
        );
        ino
    }

    /// What an inode stands for.
    pub fn get(&self, ino: u64) -> Option<Inode> {
        self.inner
            .lock()
            .expect("inode lock")
            .by_ino
            .get(&ino)
            .cloned()
    }
}
