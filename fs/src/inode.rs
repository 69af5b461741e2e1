//! Inode numbers and what each stands for.
//!
//! An image inode is one *version* of a name: the content the name resolved to when the
//! kernel looked it up. Its attributes never change, so the kernel may cache them and its
//! pages for as long as it likes, and a file opened before the tag moved keeps reading the
//! content it opened, to the end. A new lookup after the tag moved gives a new inode.
//! Directories and files being written have inodes of their own.
//!
//! Numbers are never reused. The kernel's references are counted: each time an inode is
//! handed to the kernel in an entry (`lookup`, `create`, `mkdir`, `link`) its count goes up,
//! and the kernel's `forget` brings it down; at zero the inode leaves the table, unless the
//! mount itself still hands it out (a file being written is pinned until released), so the
//! table holds what the kernel holds (plus the directories the mount itself keeps), not
//! every version ever looked up. A name looked up again after that gets a new number for
//! the same thing. Files in a listing have no inode here at all
//! ([`crate::listing::listed_ino`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use reposure_registry::names::Reference;
use reposure_registry::operations::ImageInfo;

use crate::staged::Staged;
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
    /// A file this mount is (or was) writing, and its content while it is open. It holds
    /// neither the writer, whose end (the release) publishes what was written, nor the
    /// content, whose space on the mount's disk comes back at that end however long the
    /// kernel keeps the inode.
    Writing {
        name: ImageName,
        staged: Weak<Staged>,
    },
    /// A local file: a name that cannot be a registry name, its content on the mount's
    /// disk ([`crate::local`]).
    Local(Arc<Staged>),
}

/// What makes two inodes the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Dir(String),
    Version(ImageName, reposure_registry::digest::Digest),
    Writing(u64),
    Local(u64),
}

/// Two-way map between inode numbers and what they stand for.
pub struct InodeTable {
    inner: Mutex<Inner>,
}

struct Inner {
    by_key: HashMap<Key, u64>,
    by_ino: HashMap<u64, (Key, Inode)>,
    /// References the kernel holds: entries it was given and has not forgotten.
    kernel_references: HashMap<u64, u64>,
    /// Inodes the mount itself hands out again (files being written): they stay until
    /// unpinned, whatever the kernel forgot.
    pinned: HashSet<u64>,
    next: u64,
}

impl Default for InodeTable {
    fn default() -> Self {
        let root = Key::Dir(String::new());
        Self {
            inner: Mutex::new(Inner {
                by_key: HashMap::from([(root.clone(), ROOT)]),
                by_ino: HashMap::from([(ROOT, (root, Inode::Dir(String::new())))]),
                kernel_references: HashMap::new(),
                pinned: HashSet::new(),
                next: ROOT + 1,
            }),
        }
    }
}

impl Inner {
    fn remove(&mut self, ino: u64) {
        if let Some((key, _)) = self.by_ino.remove(&ino) {
            self.by_key.remove(&key);
        }
    }
}

impl InodeTable {
    /// The inode for `key`, made if new; with `for_kernel`, counted as handed to the kernel
    /// in the same step, so a `forget` cannot remove it in between.
    fn ino_for(&self, key: Key, inode: impl FnOnce() -> Inode, for_kernel: bool) -> u64 {
        let mut inner = self.inner.lock().expect("inode lock");
        let ino = match inner.by_key.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = inner.next;
                inner.next += 1;
                inner.by_key.insert(key.clone(), ino);
                inner.by_ino.insert(ino, (key, inode()));
                ino
            }
        };
        if for_kernel {
            *inner.kernel_references.entry(ino).or_default() += 1;
        }
        ino
    }

    /// The inode of a directory, for the mount's own use.
    pub fn dir(&self, path: &str) -> u64 {
        self.ino_for(
            Key::Dir(path.to_owned()),
            || Inode::Dir(path.to_owned()),
            false,
        )
    }

    /// The inode of a directory, handed to the kernel in an entry.
    pub fn dir_entry(&self, path: &str) -> u64 {
        self.ino_for(
            Key::Dir(path.to_owned()),
            || Inode::Dir(path.to_owned()),
            true,
        )
    }

    /// The inode of one version of an image, handed to the kernel in an entry.
    pub fn version(&self, name: &ImageName, info: &ImageInfo) -> u64 {
        let key = Key::Version(name.clone(), info.digest.clone());
        let inode = || Inode::Image {
            name: name.clone(),
            info: Arc::new(info.clone()),
        };
        self.ino_for(key, inode, true)
    }

    /// A new inode for a file being written, pinned until [`Self::unpin`] (lookups hand it
    /// out while the file is open; each is counted with [`Self::reference`]).
    pub fn writing(&self, name: &ImageName, writer: &Arc<WriteHandle>) -> u64 {
        self.pinned(
            Key::Writing,
            Inode::Writing {
                name: name.clone(),
                staged: Arc::downgrade(writer.staged()),
            },
        )
    }

    /// A new inode for a local file, pinned until [`Self::unpin`] (when it is unlinked or
    /// renamed onto an image).
    pub fn local(&self, staged: &Arc<Staged>) -> u64 {
        self.pinned(Key::Local, Inode::Local(staged.clone()))
    }

    fn pinned(&self, key: fn(u64) -> Key, inode: Inode) -> u64 {
        let mut inner = self.inner.lock().expect("inode lock");
        let ino = inner.next;
        inner.next += 1;
        inner.by_key.insert(key(ino), ino);
        inner.by_ino.insert(ino, (key(ino), inode));
        inner.pinned.insert(ino);
        ino
    }

    /// A directory moved from `from` to `to`: its inode, and those of the directories
    /// below it, now stand for the new paths (the kernel keeps them across a rename).
    pub fn move_dir(&self, from: &str, to: &str) {
        let mut inner = self.inner.lock().expect("inode lock");
        let prefix = format!("{from}/");
        let moved: Vec<(u64, String)> = inner
            .by_ino
            .iter()
            .filter_map(|(&ino, (_, inode))| match inode {
                Inode::Dir(path) if path == from => Some((ino, to.to_owned())),
                Inode::Dir(path) => path
                    .strip_prefix(&prefix)
                    .map(|rest| (ino, format!("{to}/{rest}"))),
                _ => None,
            })
            .collect();
        for (ino, path) in moved {
            if let Some((old_key, _)) = inner.by_ino.remove(&ino) {
                inner.by_key.remove(&old_key);
            }
            if let Some(&displaced) = inner.by_key.get(&Key::Dir(path.clone())) {
                inner.remove(displaced);
            }
            inner.by_key.insert(Key::Dir(path.clone()), ino);
            inner
                .by_ino
                .insert(ino, (Key::Dir(path.clone()), Inode::Dir(path)));
        }
    }

    /// The mount no longer hands out `ino`: it leaves once the kernel holds it no more.
    pub fn unpin(&self, ino: u64) {
        let mut inner = self.inner.lock().expect("inode lock");
        inner.pinned.remove(&ino);
        if !inner.kernel_references.contains_key(&ino) {
            inner.remove(ino);
        }
    }

    /// Counts an existing inode as handed to the kernel in an entry once more.
    pub fn reference(&self, ino: u64) {
        let mut inner = self.inner.lock().expect("inode lock");
        if inner.by_ino.contains_key(&ino) {
            *inner.kernel_references.entry(ino).or_default() += 1;
        }
    }

    /// The kernel's `forget`: it dropped `count` of its references to `ino`. An inode it no
    /// longer holds leaves the table (the root never does).
    pub fn forget(&self, ino: u64, count: u64) {
        let mut inner = self.inner.lock().expect("inode lock");
        let Some(references) = inner.kernel_references.get_mut(&ino) else {
            return;
        };
        *references = references.saturating_sub(count);
        if *references > 0 || ino == ROOT {
            return;
        }
        inner.kernel_references.remove(&ino);
        if !inner.pinned.contains(&ino) {
            inner.remove(ino);
        }
    }

    /// How many inodes the table holds.
    pub fn count(&self) -> usize {
        self.inner.lock().expect("inode lock").by_ino.len()
    }

    /// What an inode stands for.
    pub fn get(&self, ino: u64) -> Option<Inode> {
        self.inner
            .lock()
            .expect("inode lock")
            .by_ino
            .get(&ino)
            .map(|(_, inode)| inode.clone())
    }
}
