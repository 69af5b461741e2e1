//! The filesystem core: every operation as an `async fn`, independent of FUSE.
//!
//! Metadata (the catalog, tag lists, resolved tags) is cached for `metadata_ttl` (1 s by
//! default), so a change made by another client shows within that time; changes made
//! through this mount update the caches at once. Blob content is never cached here: it is
//! immutable, and the kernel page cache keeps it across opens while the digest is the same.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reposure_surrogate::RegistryError;
use reposure_surrogate::digest::Digest;
use reposure_surrogate::formats::single_file::PushFormat;
use reposure_surrogate::names::{DEFAULT_TAG, Reference};
use reposure_surrogate::registry::{ImageInfo, ImageView, Registry};
use tracing::{info, warn};

use crate::errno::{FsError, FsResult};
use crate::inode::InodeTable;
use crate::namespace::{self, Node};
use crate::reader::ReadHandle;
use crate::ttl_cache::TtlCache;
use crate::writer::{Target, WriteHandle};

/// How many tag lists (or tag resolutions) run at once when a directory is listed: enough
/// to hide round-trip latency, few enough not to flood a registry.
pub const LIST_PARALLELISM: usize = 16;

/// Mount-wide settings.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Refuse every change with EROFS.
    pub read_only: bool,
    /// How pushed files are stored.
    pub format: PushFormat,
    /// How long metadata fetched from the registry is trusted.
    pub metadata_ttl: Duration,
    /// Where files being written are spooled until close().
    pub spool_dir: PathBuf,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            read_only: false,
            format: PushFormat::Image,
            metadata_ttl: Duration::from_secs(1),
            spool_dir: std::env::temp_dir(),
        }
    }
}

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Directory,
    File,
}

/// What `stat` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    pub size: u64,
    pub mtime: SystemTime,
    /// Permission bits.
    pub perm: u16,
}

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub name: String,
    pub kind: NodeKind,
}

enum Handle {
    Read(ReadHandle),
    Write {
        node: Node,
        writer: Arc<WriteHandle>,
    },
}

/// Metadata shared with writers, which refresh it once they publish.
struct Metadata {
    catalog: TtlCache<(), Arc<Vec<String>>>,
    tags: TtlCache<String, Arc<Vec<String>>>,
    resolved: TtlCache<(String, String), ImageInfo>,
    /// Directories made with mkdir that have no image yet.
    local_dirs: Mutex<BTreeSet<String>>,
    /// Registry directories removed with rmdir (the registry cannot delete repositories).
    hidden_dirs: Mutex<HashSet<String>>,
}

impl Metadata {
    /// Forgets what a push or delete of `repository:tag` changed.
    fn invalidate(&self, repository: &str, tag: &str) {
        self.catalog.remove(&());
        self.tags.remove(&repository.to_owned());
        self.resolved
            .remove(&(repository.to_owned(), tag.to_owned()));
    }

    /// Records that `repository` now has an image, so its directories are real.
    fn published(&self, repository: &str) {
        let mut local = self.local_dirs.lock().expect("lock");
        let mut hidden = self.hidden_dirs.lock().expect("lock");
        let mut path = repository;
        while let Some((parent, _)) = path.rsplit_once('/') {
            local.remove(parent);
            hidden.remove(parent);
            path = parent;
        }
    }
}

/// The filesystem.
pub struct Filesystem {
    registry: Arc<dyn Registry>,
    config: FsConfig,
    inodes: InodeTable,
    metadata: Arc<Metadata>,
    /// Files created or opened for writing and not yet released, by node.
    writing: Mutex<HashMap<Node, Arc<WriteHandle>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    listings: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_handle: AtomicU64,
    /// The digest each file had at its last open, to keep the page cache when unchanged.
    last_open: Mutex<HashMap<u64, Digest>>,
    mounted_at: SystemTime,
}

impl Filesystem {
    /// A filesystem over `registry`.
    pub fn new(registry: Arc<dyn Registry>, config: FsConfig) -> Self {
        let ttl = config.metadata_ttl;
        Self {
            registry,
            config,
            inodes: InodeTable::default(),
            metadata: Arc::new(Metadata {
                catalog: TtlCache::new(ttl),
                tags: TtlCache::new(ttl),
                resolved: TtlCache::new(ttl),
                local_dirs: Mutex::default(),
                hidden_dirs: Mutex::default(),
            }),
            writing: Mutex::default(),
            handles: Mutex::default(),
            listings: Mutex::default(),
            next_handle: AtomicU64::new(1),
            last_open: Mutex::default(),
            mounted_at: SystemTime::now(),
        }
    }

    /// The mount's settings.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    async fn catalog(&self) -> FsResult<Arc<Vec<String>>> {
        if let Some(catalog) = self.metadata.catalog.get(&()) {
            return Ok(catalog);
        }
        let catalog = Arc::new(self.registry.list_repositories().await?);
        self.metadata.catalog.insert((), catalog.clone());
        Ok(catalog)
    }

    async fn tags(&self, repository: &str) -> FsResult<Arc<Vec<String>>> {
        if let Some(tags) = self.metadata.tags.get(&repository.to_owned()) {
            return Ok(tags);
        }
        let tags = Arc::new(self.registry.list_tags(repository).await?);
        self.metadata
            .tags
            .insert(repository.to_owned(), tags.clone());
        Ok(tags)
    }

    async fn resolve(&self, repository: &str, tag: &str) -> FsResult<ImageInfo> {
        let key = (repository.to_owned(), tag.to_owned());
        if let Some(info) = self.metadata.resolved.get(&key) {
            return Ok(info);
        }
        let info = self
            .registry
            .resolve(repository, &Reference::Tag(tag.to_owned()))
            .await?;
        self.metadata.resolved.insert(key, info.clone());
        Ok(info)
    }

    fn is_local_dir(&self, path: &str) -> bool {
        self.metadata
            .local_dirs
            .lock()
            .expect("lock")
            .contains(path)
    }

    async fn is_dir(&self, path: &str) -> FsResult<bool> {
        if path.is_empty() || self.is_local_dir(path) {
            return Ok(true);
        }
        if self
            .metadata
            .hidden_dirs
            .lock()
            .expect("lock")
            .contains(path)
        {
            return Ok(false);
        }
        Ok(namespace::is_catalog_dir(path, &self.catalog().await?))
    }

    fn dir_path(&self, ino: u64) -> FsResult<String> {
        match self.inodes.node(ino) {
            Some(Node::Dir(path)) => Ok(path),
            Some(Node::Image { .. }) => Err(FsError::NotDirectory),
            None => Err(FsError::NotFound),
        }
    }

    fn dir_attr(&self, ino: u64) -> Attr {
        Attr {
            ino,
            kind: NodeKind::Directory,
            size: 0,
            mtime: self.mounted_at,
            perm: 0o755,
        }
    }

    fn file_perm(&self) -> u16 {
        if self.config.read_only { 0o444 } else { 0o644 }
    }

    fn image_attr(&self, ino: u64, info: &ImageInfo) -> Attr {
        Attr {
            ino,
            kind: NodeKind::File,
            size: info.size(),
            mtime: info.created.unwrap_or(self.mounted_at),
            perm: self.file_perm(),
        }
    }

    fn writing_attr(&self, ino: u64, writer: &WriteHandle) -> Attr {
        Attr {
            ino,
            kind: NodeKind::File,
            size: writer.size(),
            mtime: SystemTime::now(),
            perm: self.file_perm(),
        }
    }

    async fn attr_of(&self, node: &Node) -> FsResult<Attr> {
        let ino = self.inodes.ino(node);
        match node {
            Node::Dir(_) => Ok(self.dir_attr(ino)),
            Node::Image { repository, tag } => {
                if let Some(writer) = self.writing.lock().expect("lock").get(node)
                    && writer.is_replacing()
                {
                    return Ok(self.writing_attr(ino, writer));
                }
                let info = self.resolve(repository, tag).await?;
                Ok(self.image_attr(ino, &info))
            }
        }
    }

    /// Resolves a name in a directory to a node (without checking that an image exists).
    async fn node_for(&self, dir: &str, name: &str) -> FsResult<Node> {
        let (path, tag) = namespace::split_file_name(dir, name);
        match tag {
            Some(tag) => Ok(Node::Image {
                repository: path,
                tag,
            }),
            None if self.is_dir(&path).await? => Ok(Node::Dir(path)),
            None => Ok(Node::Image {
                repository: path,
                tag: DEFAULT_TAG.to_owned(),
            }),
        }
    }

    /// `lookup`: the attributes of `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let dir = self.dir_path(parent)?;
        let name = name.to_str().ok_or(FsError::NotFound)?;
        // Names that cannot be registry names do not exist; no request is made for them
        // (shells and desktops probe for `.git`, `.Trash` and the like).
        if namespace::image_for_create(&dir, name).is_err() {
            return Err(FsError::NotFound);
        }
        let node = self.node_for(&dir, name).await?;
        self.attr_of(&node).await
    }

    /// `getattr`.
    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let node = self.inodes.node(ino).ok_or(FsError::NotFound)?;
        self.attr_of(&node).await
    }

    /// The entries of a directory, sorted, without `.` and `..`.
    pub async fn list(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let dir = self.dir_path(ino)?;
        let catalog = self.catalog().await?;
        let (mut sub_dirs, images) = namespace::children(&dir, &catalog);
        {
            let hidden = self.metadata.hidden_dirs.lock().expect("lock");
            sub_dirs.retain(|d| !hidden.contains(&namespace::join(&dir, d)));
            let prefix = if dir.is_empty() {
                String::new()
            } else {
                format!("{dir}/")
            };
            for local in self.metadata.local_dirs.lock().expect("lock").iter() {
                if let Some(name) = local.strip_prefix(&prefix).filter(|n| !n.contains('/')) {
                    sub_dirs.insert(name.to_owned());
                }
            }
        }
        let tags: BTreeMap<String, Vec<String>> = futures::stream::iter(images)
            .map(|repository| async move {
                let tags = self.tags(&repository).await?;
                Ok::<_, FsError>((repository, tags.as_ref().clone()))
            })
            .buffer_unordered(LIST_PARALLELISM)
            .try_collect()
            .await?;
        let mut entries = namespace::listing(&dir, &sub_dirs, &tags);
        // Files being written show while they are open.
        for node in self.writing.lock().expect("lock").keys() {
            if let Node::Image { repository, tag } = node {
                let (parent, name) = repository.rsplit_once('/').unwrap_or(("", repository));
                if parent == dir {
                    let file = if tag == DEFAULT_TAG && !sub_dirs.contains(name) {
                        name.to_owned()
                    } else {
                        format!("{name}:{tag}")
                    };
                    entries.entry(file).or_insert_with(|| node.clone());
                }
            }
        }
        Ok(entries
            .into_iter()
            .map(|(name, node)| DirEntry {
                ino: self.inodes.ino(&node),
                kind: match node {
                    Node::Dir(_) => NodeKind::Directory,
                    Node::Image { .. } => NodeKind::File,
                },
                name,
            })
            .collect())
    }

    /// `opendir`: takes a snapshot of the listing for consistent `readdir` offsets.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let entries = self.list(ino).await?;
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.listings
            .lock()
            .expect("lock")
            .insert(fh, Arc::new(entries));
        Ok(fh)
    }

    /// The snapshot taken by `opendir`.
    pub fn listing(&self, fh: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        self.listings
            .lock()
            .expect("lock")
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// `releasedir`.
    pub fn releasedir(&self, fh: u64) {
        self.listings.lock().expect("lock").remove(&fh);
    }

    /// The parent of a directory inode (for `..`).
    pub fn parent_of(&self, ino: u64) -> u64 {
        match self.inodes.node(ino) {
            Some(Node::Dir(path)) => {
                let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                self.inodes.ino(&Node::Dir(parent.to_owned()))
            }
            _ => crate::inode::ROOT,
        }
    }

    fn new_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().expect("lock").insert(fh, handle);
        fh
    }

    fn start_writer(&self, node: &Node, new_content: bool) -> FsResult<Arc<WriteHandle>> {
        let Node::Image { repository, tag } = node else {
            return Err(FsError::IsDirectory);
        };
        let metadata = self.metadata.clone();
        let (repo, t) = (repository.clone(), tag.clone());
        let on_published = Box::new(move |_: &Digest| {
            metadata.invalidate(&repo, &t);
            metadata.published(&repo);
        });
        let target = Target {
            repository: repository.clone(),
            tag: tag.clone(),
            format: self.config.format,
        };
        let writer = Arc::new(WriteHandle::spawn(
            self.registry.clone(),
            target,
            &self.config.spool_dir,
            new_content,
            on_published,
        )?);
        self.writing
            .lock()
            .expect("lock")
            .insert(node.clone(), writer.clone());
        Ok(writer)
    }

    /// `open`: returns the handle and whether the kernel may keep its cached pages.
    pub async fn open(&self, ino: u64, flags: i32) -> FsResult<(u64, bool)> {
        let node = self.inodes.node(ino).ok_or(FsError::NotFound)?;
        let Node::Image { repository, tag } = &node else {
            return Err(FsError::IsDirectory);
        };
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            if self.config.read_only {
                return Err(FsError::ReadOnly);
            }
            if self.writing.lock().expect("lock").contains_key(&node) {
                return Err(FsError::NotPermitted(
                    "the file is already open for writing".into(),
                ));
            }
            let writer = self.start_writer(&node, flags & libc::O_TRUNC != 0)?;
            return Ok((self.new_handle(Handle::Write { node, writer }), false));
        }
        // Opening pins the manifest: this handle reads the content the tag had now, even if
        // the tag moves while it is open.
        let key = (repository.clone(), tag.clone());
        self.metadata.resolved.remove(&key);
        let info = self.resolve(repository, tag).await?;
        let content = match &info.view {
            ImageView::File(content) => content.clone(),
            ImageView::NotAFile(reason) => return Err(FsError::NotAFile(reason.clone())),
        };
        let keep_cache = {
            let mut last = self.last_open.lock().expect("lock");
            last.insert(ino, info.digest.clone()).as_ref() == Some(&info.digest)
        };
        let reader = ReadHandle::spawn(self.registry.clone(), repository.clone(), content);
        Ok((self.new_handle(Handle::Read(reader)), keep_cache))
    }

    /// `create`: a new file in `parent`, open for writing.
    ///
    /// The kernel also sends `create` for `open(O_CREAT)` of a name it has not looked up, so
    /// an existing image is opened rather than replaced unless `O_TRUNC` is given, and
    /// `O_EXCL` fails with EEXIST.
    pub async fn create(&self, parent: u64, name: &OsStr, flags: i32) -> FsResult<(Attr, u64)> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let dir = self.dir_path(parent)?;
        let name = name
            .to_str()
            .ok_or_else(|| FsError::InvalidName("file names must be UTF-8".into()))?;
        let (repository, tag) = namespace::image_for_create(&dir, name).inspect_err(|e| {
            warn!(name, error = %e, "create refused");
        })?;
        if !name.contains(':') && self.is_dir(&repository).await? {
            return Err(FsError::IsDirectory);
        }
        let node = Node::Image { repository, tag };
        if self.writing.lock().expect("lock").contains_key(&node) {
            return Err(FsError::NotPermitted(
                "the file is already open for writing".into(),
            ));
        }
        let Node::Image { repository, tag } = &node else {
            unreachable!("created nodes are images")
        };
        let exists = match self.resolve(repository, tag).await {
            Ok(_) => true,
            Err(FsError::Registry(RegistryError::NotFound(_))) => false,
            Err(e) => return Err(e),
        };
        if exists && flags & libc::O_EXCL != 0 {
            return Err(FsError::Exists);
        }
        let new_content = !exists || flags & libc::O_TRUNC != 0;
        let writer = self.start_writer(&node, new_content)?;
        let fh = self.new_handle(Handle::Write {
            node: node.clone(),
            writer,
        });
        Ok((self.attr_of(&node).await?, fh))
    }

    fn read_handle_future(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> FsResult<impl Future<Output = FsResult<Bytes>> + Send + 'static + use<>> {
        match self.handles.lock().expect("lock").get(&fh) {
            Some(Handle::Read(reader)) => Ok(reader.read(offset, size)),
            Some(Handle::Write { .. }) => Err(FsError::BadHandle),
            None => Err(FsError::BadHandle),
        }
    }

    /// `read`: queued at once (keeping the kernel's order), answered later.
    pub fn read(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> impl Future<Output = FsResult<Bytes>> + Send + 'static + use<> {
        let queued = self.read_handle_future(fh, offset, size);
        async move { queued?.await }
    }

    fn writer(&self, fh: u64) -> FsResult<Arc<WriteHandle>> {
        match self.handles.lock().expect("lock").get(&fh) {
            Some(Handle::Write { writer, .. }) => Ok(writer.clone()),
            _ => Err(FsError::BadHandle),
        }
    }

    /// `write`: queued at once (keeping the kernel's order), answered later.
    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> impl Future<Output = FsResult<u32>> + Send + 'static + use<> {
        let queued = self.writer(fh).map(|w| w.write(offset, data));
        async move { queued?.await }
    }

    /// `flush` (each `close()`) and `fsync`: pushes what was written; the push's error is
    /// the answer.
    pub fn flush(&self, fh: u64) -> impl Future<Output = FsResult<()>> + Send + 'static + use<> {
        let queued = match self.handles.lock().expect("lock").get(&fh) {
            Some(Handle::Write { writer, .. }) => Ok(Some(writer.flush())),
            Some(Handle::Read(_)) => Ok(None),
            None => Err(FsError::BadHandle),
        };
        async move {
            match queued? {
                Some(flush) => flush.await,
                None => Ok(()),
            }
        }
    }

    /// `release`: the last close of an open file.
    pub fn release(&self, fh: u64) {
        let handle = self.handles.lock().expect("lock").remove(&fh);
        if let Some(Handle::Write { node, .. }) = handle {
            self.writing.lock().expect("lock").remove(&node);
        }
    }

    /// `setattr`: size changes (truncation of a file being written) only. Times are
    /// accepted and ignored (an image's time is its creation time). Mode and owner changes
    /// are accepted and ignored on a file this mount is writing (copy tools set them after
    /// creating the file, and the content must still arrive), and refused otherwise.
    pub async fn setattr(
        &self,
        ino: u64,
        size: Option<u64>,
        fh: Option<u64>,
        mode_or_owner: bool,
    ) -> FsResult<Attr> {
        let node = self.inodes.node(ino).ok_or(FsError::NotFound)?;
        if mode_or_owner && !self.writing.lock().expect("lock").contains_key(&node) {
            return Err(FsError::NotPermitted(
                "images have no mode or owner to change".into(),
            ));
        }
        if let Some(size) = size {
            if self.config.read_only {
                return Err(FsError::ReadOnly);
            }
            let writer = match fh.map(|fh| self.writer(fh)) {
                Some(Ok(writer)) => writer,
                _ => self
                    .writing
                    .lock()
                    .expect("lock")
                    .get(&node)
                    .cloned()
                    .ok_or_else(|| {
                        FsError::NotPermitted("truncate an image by opening it for writing".into())
                    })?,
            };
            writer.truncate(size).await?;
        }
        self.attr_of(&node).await
    }

    /// `unlink`: deletes one tag.
    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let dir = self.dir_path(parent)?;
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let node = self.node_for(&dir, name).await?;
        let Node::Image { repository, tag } = &node else {
            return Err(FsError::IsDirectory);
        };
        if self.writing.lock().expect("lock").contains_key(&node) {
            return Err(FsError::NotPermitted("the file is open for writing".into()));
        }
        let result = self.registry.delete_tag(repository, tag).await;
        self.metadata.invalidate(repository, tag);
        match result {
            Ok(()) => {
                info!(repository, tag, "deleted tag");
                Ok(())
            }
            Err(e) => {
                warn!(repository, tag, error = %e, "delete failed");
                Err(e.into())
            }
        }
    }

    /// `mkdir`: a local directory until something is pushed into it.
    pub async fn mkdir(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let dir = self.dir_path(parent)?;
        let name = name
            .to_str()
            .ok_or_else(|| FsError::InvalidName("directory names must be UTF-8".into()))?;
        namespace::check_dir_name(name)
            .inspect_err(|e| warn!(name, error = %e, "mkdir refused"))?;
        let path = namespace::join(&dir, name);
        if self.is_dir(&path).await? {
            return Err(FsError::Exists);
        }
        self.metadata
            .hidden_dirs
            .lock()
            .expect("lock")
            .remove(&path);
        self.metadata
            .local_dirs
            .lock()
            .expect("lock")
            .insert(path.clone());
        Ok(self.dir_attr(self.inodes.ino(&Node::Dir(path))))
    }

    /// `rmdir`: only of an empty directory.
    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let dir = self.dir_path(parent)?;
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let path = namespace::join(&dir, name);
        if !self.is_dir(&path).await? {
            return Err(FsError::NotFound);
        }
        let ino = self.inodes.ino(&Node::Dir(path.clone()));
        if !self.list(ino).await?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.metadata.local_dirs.lock().expect("lock").remove(&path);
        self.metadata.hidden_dirs.lock().expect("lock").insert(path);
        Ok(())
    }
}
