//! The filesystem core: every operation as an `async fn`, independent of FUSE.
//!
//! Names resolve through [`Metadata`] (cached for `metadata_ttl`); each resolution is an
//! inode of its own ([`crate::inode`]), so an open file keeps its content when the tag moves
//! and the kernel may keep its pages across opens of the same version. Reads and writes go
//! to per-file actors ([`ReadHandle`], [`WriteHandle`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reposure_registry::RegistryError;
use reposure_registry::digest::Digest;
use reposure_registry::formats::manifest::Platform;
use reposure_registry::formats::single_file::PushFormat;
use reposure_registry::names::{self, DEFAULT_TAG, Reference};
use reposure_registry::operations::{ImageInfo, Registry};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::cache::DiskCache;
use crate::errno::{FsError, FsResult};
use crate::inode::{ImageName, Inode, InodeTable};
use crate::listing::{self, Listing};
use crate::metadata::Metadata;
use crate::namespace;
use crate::process::Caller;
use crate::reader::{ReadBudget, ReadContext, ReadHandle};
use crate::writer::{FlushKind, OnPublished, Target, WriteHandle};

/// How many tag lists (or tag resolutions) run at once when a directory is listed: enough
/// to hide round-trip latency, few enough not to flood a registry.
pub const LIST_PARALLELISM: usize = 16;

/// How long after a directory was listed a lookup in it counts as `ls -l` looking at each
/// entry in turn.
const LISTING_FOLLOW_UP: Duration = Duration::from_secs(10);

/// How many entries past the one looked up are resolved ahead: far enough to hide round
/// trips, near enough that what was resolved is still fresh when the lookups get there.
const PREFETCH_AHEAD: usize = 64;

/// Read-ahead all open files share by default: room for a few files streaming at full
/// speed while keeping the mount's memory small (the 128 MiB goal covers everything).
pub const DEFAULT_READ_AHEAD_BUDGET: u64 = 32 * 1024 * 1024;

/// How long the kernel may keep the attributes of an image version: they never change (a
/// new version is a new inode), so as long as it likes.
const IMMUTABLE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Extended attributes every image has.
pub const XATTR_DIGEST: &str = "user.reposure.digest";
pub const XATTR_MEDIA_TYPE: &str = "user.reposure.mediatype";
pub const XATTR_REFERENCE: &str = "user.reposure.reference";

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
    /// Whether single-file images read as their file (true) or as their archive.
    pub unpack: bool,
    /// The bytes all open files may buffer ahead of their readers together.
    pub read_ahead_budget: u64,
    /// A directory for verified file contents, and its size limit.
    pub cache: Option<(PathBuf, u64)>,
    /// Repositories listed even when the registry has no catalog (`repositories=`).
    pub known_repositories: Vec<String>,
    /// Multi-platform images read as their image for this platform (`platform=`).
    pub platform: Option<Platform>,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            read_only: false,
            format: PushFormat::Image,
            metadata_ttl: Duration::from_secs(1),
            spool_dir: std::env::temp_dir(),
            unpack: true,
            read_ahead_budget: DEFAULT_READ_AHEAD_BUDGET,
            cache: None,
            known_repositories: Vec::new(),
            platform: None,
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
    /// How long the kernel may keep the name pointing at this inode without asking again.
    pub entry_ttl: Duration,
    /// How long the kernel may keep these attributes.
    pub attr_ttl: Duration,
}

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub name: String,
    pub kind: NodeKind,
}

fn tag_of(name: &ImageName) -> &str {
    name.tag().unwrap_or(DEFAULT_TAG)
}

/// What a name in a directory stands for, before resolving it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Named {
    Dir(String),
    Image(ImageName),
}

enum Handle {
    Read(ReadHandle),
    Write {
        name: ImageName,
        writer: Arc<WriteHandle>,
        /// The process that opened the file: only its `close()` pushes.
        opener: Caller,
    },
}

/// A directory listed recently, whose entries a following `ls -l` will look up.
struct RecentListing {
    /// When the directory was listed or last looked into.
    at: std::time::Instant,
    listing: Arc<Listing>,
    /// When each entry was last prefetched.
    prefetched: Vec<Option<std::time::Instant>>,
}

/// A file being written, as lookups see it.
struct Writing {
    writer: Arc<WriteHandle>,
    ino: u64,
}

/// Tells the kernel that names in a directory changed (their cached entries must go): called
/// with the directory's inode and the file names, after the mount itself changed what the
/// names point at. The answer completes once the kernel has dropped them; it must only be
/// awaited where the kernel holds no lock of that directory (a `flush` holds none, an
/// `unlink` does), since the kernel takes that lock to drop an entry.
pub type Invalidator = Box<dyn Fn(u64, Vec<String>) -> oneshot::Receiver<()> + Send + Sync>;

/// The filesystem.
pub struct Filesystem {
    registry: Arc<dyn Registry>,
    config: FsConfig,
    inodes: InodeTable,
    metadata: Arc<Metadata>,
    /// Files open for writing, by name.
    writing: Mutex<HashMap<ImageName, Writing>>,
    handles: Mutex<HashMap<u64, Handle>>,
    listings: Mutex<HashMap<u64, Arc<Listing>>>,
    recent_listings: Mutex<HashMap<String, RecentListing>>,
    next_handle: AtomicU64,
    mounted_at: SystemTime,
    invalidator: Arc<std::sync::OnceLock<Invalidator>>,
    read_context: ReadContext,
    /// Each writer holds a copy until its last push is made; [`Filesystem::finish_writes`]
    /// drops this one and waits for the rest.
    writers_running: Mutex<Option<mpsc::Sender<()>>>,
    writers_finished: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl Filesystem {
    /// A filesystem over `registry`.
    pub fn new(registry: Arc<dyn Registry>, config: FsConfig) -> std::io::Result<Self> {
        let metadata = Arc::new(Metadata::new(
            registry.clone(),
            config.metadata_ttl,
            &config.known_repositories,
            config.platform.clone(),
        ));
        let cache = match &config.cache {
            Some((dir, limit)) => Some(DiskCache::open(dir.clone(), *limit)?),
            None => None,
        };
        let (running, finished) = mpsc::channel(1);
        let read_context = ReadContext {
            registry: registry.clone(),
            budget: ReadBudget::new(config.read_ahead_budget),
            cache,
        };
        Ok(Self {
            registry,
            config,
            inodes: InodeTable::default(),
            metadata,
            writing: Mutex::default(),
            handles: Mutex::default(),
            listings: Mutex::default(),
            recent_listings: Mutex::default(),
            next_handle: AtomicU64::new(1),
            mounted_at: SystemTime::now(),
            invalidator: Arc::default(),
            read_context,
            writers_running: Mutex::new(Some(running)),
            writers_finished: tokio::sync::Mutex::new(finished),
        })
    }

    /// Sets how the kernel is told about names this mount changed (set once, when the
    /// mount is up; before that nothing is cached to invalidate).
    pub fn set_invalidator(&self, invalidator: Invalidator) {
        let _ = self.invalidator.set(invalidator);
    }

    /// Has the kernel drop every name of `image` (`NAME` and `NAME:latest` are one tag)
    /// after an operation that holds the directory's lock, so without waiting for it.
    fn forget_names(&self, image: &ImageName) {
        let (Some(invalidate), Some(tag)) = (self.invalidator.get(), image.tag()) else {
            return;
        };
        let (parent, _) = names::parent_and_base(&image.repository);
        // Nobody waits: the kernel drops the names once this operation lets go of the lock.
        drop(invalidate(
            self.inodes.dir(parent),
            namespace::file_names(&image.repository, tag),
        ));
    }

    /// The mount's settings.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    fn dir_path(&self, ino: u64) -> FsResult<String> {
        match self.inodes.get(ino) {
            Some(Inode::Dir(path)) => Ok(path),
            Some(_) => Err(FsError::NotDirectory),
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
            entry_ttl: self.config.metadata_ttl,
            attr_ttl: self.config.metadata_ttl,
        }
    }

    fn file_perm(&self, name: &ImageName) -> u16 {
        if self.config.read_only || name.tag().is_none() {
            0o444
        } else {
            0o644
        }
    }

    /// The attributes of an image version, whose name may be trusted to point at it for
    /// `fresh_for` (what is left of the resolution's `metadata_ttl`).
    fn image_attr(
        &self,
        ino: u64,
        name: &ImageName,
        info: &ImageInfo,
        fresh_for: Duration,
    ) -> Attr {
        Attr {
            ino,
            kind: NodeKind::File,
            size: info.content(self.config.unpack).length(),
            mtime: info.created.unwrap_or(self.mounted_at),
            perm: self.file_perm(name),
            entry_ttl: fresh_for,
            attr_ttl: IMMUTABLE_TTL,
        }
    }

    fn writing_attr(&self, ino: u64, name: &ImageName, size: u64) -> Attr {
        Attr {
            ino,
            kind: NodeKind::File,
            size,
            mtime: SystemTime::now(),
            perm: self.file_perm(name),
            entry_ttl: Duration::ZERO,
            attr_ttl: Duration::ZERO,
        }
    }

    /// The attributes of an image name now, for an entry handed to the kernel: the file
    /// being written, or the version the name resolves to.
    async fn image_now(&self, name: &ImageName) -> FsResult<Attr> {
        if let Some(writing) = self.writing.lock().expect("lock").get(name)
            && writing.writer.is_replacing()
        {
            self.inodes.reference(writing.ino);
            return Ok(self.writing_attr(writing.ino, name, writing.writer.size()));
        }
        let (info, fresh_for) = self.metadata.resolve_fresh(name).await?;
        let ino = self.inodes.version(name, &info);
        Ok(self.image_attr(ino, name, &info, fresh_for))
    }

    /// What `name` in `dir` stands for.
    async fn named(&self, dir: &str, name: &str) -> FsResult<Named> {
        if let Some((base, digest)) = name.split_once('@') {
            let digest = Digest::parse(digest).map_err(|e| FsError::InvalidName(e.to_string()))?;
            return Ok(Named::Image(ImageName {
                repository: namespace::join(dir, base),
                reference: Reference::Digest(digest),
            }));
        }
        let (path, tag) = namespace::split_file_name(dir, name);
        match tag {
            Some(tag) => Ok(Named::Image(ImageName {
                repository: path,
                reference: Reference::Tag(tag),
            })),
            None if self.metadata.is_dir(&path).await? => Ok(Named::Dir(path)),
            None => Ok(Named::Image(ImageName {
                repository: path,
                reference: Reference::Tag(DEFAULT_TAG.to_owned()),
            })),
        }
    }

    /// A name that may exist: registry names, or `NAME@sha256:...`.
    fn plausible(dir: &str, name: &str) -> bool {
        match name.split_once('@') {
            Some((base, digest)) => {
                namespace::image_for_create(dir, base).is_ok() && Digest::parse(digest).is_ok()
            }
            None => namespace::image_for_create(dir, name).is_ok(),
        }
    }

    /// `lookup`: the attributes of `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let dir = self.dir_path(parent)?;
        let name = name.to_str().ok_or(FsError::NotFound)?;
        // Names that cannot be registry names do not exist; no request is made for them
        // (shells and desktops probe for `.git`, `.Trash` and the like).
        if !Self::plausible(&dir, name) {
            return Err(FsError::NotFound);
        }
        self.prefetch_listed(&dir, name);
        match self.named(&dir, name).await? {
            Named::Dir(path) => Ok(self.dir_attr(self.inodes.dir_entry(&path))),
            Named::Image(image) => match self.image_now(&image).await {
                // Without a catalog a path the user names may be a namespace no listing
                // shows: a bare name that is no image (nor a repository this mount knows)
                // is taken for a directory.
                Err(e)
                    if !name.contains([':', '@'])
                        && e.means_absent()
                        && self.metadata.may_be_namespace(&image.repository) =>
                {
                    Ok(self.dir_attr(self.inodes.dir_entry(&image.repository)))
                }
                other => other,
            },
        }
    }

    /// `forget`: the kernel dropped `count` references to `ino`.
    pub fn forget(&self, ino: u64, count: u64) {
        self.inodes.forget(ino, count);
    }

    /// How many inodes the mount holds (what the kernel holds, and directories).
    pub fn inode_count(&self) -> usize {
        self.inodes.count()
    }

    /// `getattr`.
    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        match self.inodes.get(ino).ok_or(FsError::NotFound)? {
            Inode::Dir(_) => Ok(self.dir_attr(ino)),
            Inode::Image { name, info } => Ok(self.image_attr(ino, &name, &info, Duration::ZERO)),
            Inode::Writing { name, size } => {
                Ok(self.writing_attr(ino, &name, size.load(Ordering::Relaxed)))
            }
        }
    }

    /// The entries of a directory, sorted, without `.` and `..`.
    async fn entries(&self, ino: u64) -> FsResult<Listing> {
        let dir = self.dir_path(ino)?;
        let catalog = self.metadata.catalog().await?;
        let (mut sub_dirs, images) = namespace::children(&dir, &catalog);
        self.metadata.adjust_sub_dirs(&dir, &mut sub_dirs);
        let tags: Vec<(String, Arc<Vec<String>>)> = futures::stream::iter(images)
            .map(|repository| async move {
                let tags = self.metadata.tags(&repository).await?;
                Ok::<_, FsError>((repository, tags))
            })
            .buffer_unordered(LIST_PARALLELISM)
            .try_collect()
            .await?;
        // Directories first: where a name is both, the directory is listed.
        let mut entries: Vec<(String, u64, NodeKind)> = sub_dirs
            .iter()
            .map(|name| {
                let path = namespace::join(&dir, name);
                (name.clone(), self.inodes.dir(&path), NodeKind::Directory)
            })
            .collect();
        let mut file = |name: String| {
            let ino = listing::listed_ino(&dir, &name);
            entries.push((name, ino, NodeKind::File));
        };
        for (repository, tags) in &tags {
            let shadowed = sub_dirs.contains(names::base_name(repository));
            for tag in tags.iter() {
                file(namespace::listed_name(repository, tag, shadowed));
            }
        }
        // Files being written show while they are open.
        for name in self.writing.lock().expect("lock").keys() {
            let (parent, base) = names::parent_and_base(&name.repository);
            if parent == dir
                && let Some(tag) = name.tag()
            {
                file(namespace::listed_name(
                    &name.repository,
                    tag,
                    sub_dirs.contains(base),
                ));
            }
        }
        Ok(Listing::from_entries(entries))
    }

    /// The entries of a directory, sorted, without `.` and `..`.
    pub async fn list(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        Ok(self
            .entries(ino)
            .await?
            .from(0)
            .map(|(name, ino, kind)| DirEntry {
                ino,
                name: name.to_owned(),
                kind,
            })
            .collect())
    }

    /// A lookup in a directory listed moments ago is `ls -l` (or a file manager) looking
    /// at each entry in turn: the next [`PREFETCH_AHEAD`] entries are resolved now,
    /// [`LIST_PARALLELISM`] at a time, so the lookups that follow find fresh answers instead
    /// of making one round trip each. A plain `ls` makes no lookups and costs nothing.
    fn prefetch_listed(&self, dir: &str, name: &str) {
        let now = std::time::Instant::now();
        // Half the metadata lifetime: what was resolved earlier than that expires before
        // the lookups reach it.
        let stale_after = self.config.metadata_ttl / 2;
        let names = {
            let mut recent = self.recent_listings.lock().expect("lock");
            let Some(recent) = recent
                .get_mut(dir)
                .filter(|l| l.at.elapsed() < LISTING_FOLLOW_UP)
            else {
                return;
            };
            recent.at = now;
            let start = recent.listing.position(name).unwrap_or(0);
            let mut names = Vec::new();
            for (index, (file, _, kind)) in
                recent.listing.from(start).enumerate().take(PREFETCH_AHEAD)
            {
                let prefetched = &mut recent.prefetched[start + index];
                if kind == NodeKind::File
                    && !file.contains('@')
                    && prefetched.is_none_or(|at| at.elapsed() > stale_after)
                {
                    *prefetched = Some(now);
                    let (repository, tag) = namespace::split_file_name(dir, file);
                    names.push(ImageName {
                        repository,
                        reference: Reference::Tag(tag.unwrap_or_else(|| DEFAULT_TAG.to_owned())),
                    });
                }
            }
            names
        };
        if names.is_empty() {
            return;
        }
        let metadata = self.metadata.clone();
        tokio::spawn(async move {
            futures::stream::iter(names)
                .for_each_concurrent(LIST_PARALLELISM, |name| {
                    let metadata = metadata.clone();
                    async move {
                        let _ = metadata.resolve(&name).await;
                    }
                })
                .await;
        });
    }

    /// `opendir`: takes a snapshot of the listing for consistent `readdir` offsets.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let listing = Arc::new(self.entries(ino).await?);
        if let Some(Inode::Dir(path)) = self.inodes.get(ino) {
            let mut recent = self.recent_listings.lock().expect("lock");
            recent.retain(|_, listing| listing.at.elapsed() < LISTING_FOLLOW_UP);
            recent.insert(
                path,
                RecentListing {
                    at: std::time::Instant::now(),
                    prefetched: vec![None; listing.len()],
                    listing: listing.clone(),
                },
            );
        }
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.listings.lock().expect("lock").insert(fh, listing);
        Ok(fh)
    }

    /// The snapshot taken by `opendir`.
    pub fn listing(&self, fh: u64) -> FsResult<Arc<Listing>> {
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
        match self.inodes.get(ino) {
            Some(Inode::Dir(path)) => self.inodes.dir(names::parent_and_base(&path).0),
            _ => crate::inode::ROOT,
        }
    }

    fn new_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().expect("lock").insert(fh, handle);
        fh
    }

    /// Starts writing `name`; returns the writer and the inode lookups show for it.
    fn start_writer(
        &self,
        name: &ImageName,
        new_content: bool,
    ) -> FsResult<(Arc<WriteHandle>, u64)> {
        let Some(tag) = name.tag() else {
            return Err(FsError::NotPermitted(
                "NAME@DIGEST names are read-only".into(),
            ));
        };
        // One writer per name: the check and the registration happen under one lock, so
        // two opens racing for a name cannot both pass.
        let mut writing = self.writing.lock().expect("lock");
        if writing.contains_key(name) {
            return Err(FsError::NotPermitted(
                "the file is already open for writing".into(),
            ));
        }
        let metadata = self.metadata.clone();
        let published_name = name.clone();
        let invalidator = self.invalidator.clone();
        let parent_ino = self
            .inodes
            .dir(names::parent_and_base(&published_name.repository).0);
        let on_published: OnPublished = Box::new(move |_: &Digest| {
            metadata.invalidate(&published_name);
            metadata.published(&published_name.repository);
            let dropped = invalidator.get().map(|invalidate| {
                invalidate(
                    parent_ino,
                    namespace::file_names(&published_name.repository, tag_of(&published_name)),
                )
            });
            Box::pin(async move {
                if let Some(dropped) = dropped {
                    let _ = dropped.await;
                }
            })
        });
        let target = Target {
            repository: name.repository.clone(),
            tag: tag.to_owned(),
            format: self.config.format,
        };
        let running = self.writers_running.lock().expect("lock").clone();
        let writer = Arc::new(WriteHandle::spawn(
            self.registry.clone(),
            target,
            &self.config.spool_dir,
            new_content,
            on_published,
            running,
        )?);
        let ino = self.inodes.writing(name, &writer);
        writing.insert(
            name.clone(),
            Writing {
                writer: writer.clone(),
                ino,
            },
        );
        Ok((writer, ino))
    }

    /// `open` by `caller`: returns the handle and whether the kernel may keep its cached
    /// pages.
    pub async fn open(&self, ino: u64, flags: i32, caller: Caller) -> FsResult<(u64, bool)> {
        let inode = self.inodes.get(ino).ok_or(FsError::NotFound)?;
        let (name, info) = match inode {
            Inode::Dir(_) => return Err(FsError::IsDirectory),
            Inode::Image { name, info } => (name, Some(info)),
            Inode::Writing { name, .. } => (name, None),
        };
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            if self.config.read_only {
                return Err(FsError::ReadOnly);
            }
            let (writer, _) = self.start_writer(&name, flags & libc::O_TRUNC != 0)?;
            let handle = Handle::Write {
                name,
                writer,
                opener: caller,
            };
            return Ok((self.new_handle(handle), false));
        }
        // An image version is immutable: it reads the content it resolved to, even if the
        // tag moves while it is open, and the kernel may keep its pages across opens.
        let (info, keep_cache) = match info {
            Some(info) => (info, true),
            None => (Arc::new(self.metadata.resolve(&name).await?), false),
        };
        let content = match (&info.file, self.config.unpack) {
            (Ok(file), true) => file.clone(),
            _ => info.archive.clone(),
        };
        let reader = ReadHandle::spawn(self.read_context.clone(), name.repository.clone(), content);
        Ok((self.new_handle(Handle::Read(reader)), keep_cache))
    }

    /// `create`: a new file in `parent`, open for writing.
    ///
    /// The kernel also sends `create` for `open(O_CREAT)` of a name it has not looked up, so
    /// an existing image is opened rather than replaced unless `O_TRUNC` is given, and
    /// `O_EXCL` fails with EEXIST.
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Attr, u64)> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let dir = self.dir_path(parent)?;
        let name = name
            .to_str()
            .ok_or_else(|| FsError::InvalidName("file names must be UTF-8".into()))?;
        if name.contains('@') {
            return Err(FsError::NotPermitted(
                "NAME@DIGEST names are read-only".into(),
            ));
        }
        let (repository, tag) = namespace::image_for_create(&dir, name).inspect_err(|e| {
            warn!(name, error = %e, "create refused");
        })?;
        if !name.contains(':') && self.metadata.is_dir(&repository).await? {
            return Err(FsError::IsDirectory);
        }
        let image = ImageName {
            repository,
            reference: Reference::Tag(tag),
        };
        let exists = match self.metadata.resolve(&image).await {
            Ok(_) => true,
            Err(FsError::Registry(RegistryError::NotFound(_))) => false,
            Err(e) => return Err(e),
        };
        if exists && flags & libc::O_EXCL != 0 {
            return Err(FsError::Exists);
        }
        let new_content = !exists || flags & libc::O_TRUNC != 0;
        let (writer, _) = self.start_writer(&image, new_content)?;
        let fh = self.new_handle(Handle::Write {
            name: image.clone(),
            writer,
            opener: caller,
        });
        Ok((self.image_now(&image).await?, fh))
    }

    fn read_handle_future(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> FsResult<impl Future<Output = FsResult<Bytes>> + Send + 'static + use<>> {
        match self.handles.lock().expect("lock").get(&fh) {
            Some(Handle::Read(reader)) => Ok(reader.read(offset, size)),
            _ => Err(FsError::BadHandle),
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

    /// `flush`: a `close()` of a descriptor by `caller`. The opener's pushes what was
    /// written, and the push's error is the answer; another process's (one that inherited
    /// the descriptor) pushes nothing: see [`crate::process`].
    pub fn flush(
        &self,
        fh: u64,
        caller: Caller,
    ) -> impl Future<Output = FsResult<()>> + Send + 'static + use<> {
        self.push(fh, Some(caller))
    }

    /// `fsync`: pushes what was written, whoever asks; the push's error is the answer.
    pub fn fsync(&self, fh: u64) -> impl Future<Output = FsResult<()>> + Send + 'static + use<> {
        self.push(fh, None)
    }

    /// The push of a close by `closer`, or of an fsync (`None`).
    fn push(
        &self,
        fh: u64,
        closer: Option<Caller>,
    ) -> impl Future<Output = FsResult<()>> + Send + 'static + use<> {
        let queued = match self.handles.lock().expect("lock").get(&fh) {
            Some(Handle::Write { writer, opener, .. }) => match closer {
                None => Ok(Some(writer.flush(FlushKind::Fsync))),
                Some(closer) if opener.same_process(&closer) => {
                    Ok(Some(writer.flush(FlushKind::Close)))
                }
                Some(closer) => {
                    debug!(
                        pid = closer.pid(),
                        opener = opener.pid(),
                        "close by a process that did not open the file: not pushed"
                    );
                    Ok(None)
                }
            },
            Some(Handle::Read(_)) => Ok(None),
            None => Err(FsError::BadHandle),
        };
        async move {
            match queued? {
                Some(push) => push.await,
                None => Ok(()),
            }
        }
    }

    /// Once the kernel has unmounted: releases every file still open for writing (the
    /// kernel drops releases it had not sent yet) and waits up to `limit` for every writer
    /// to make its last push, so that a file closed just before the unmount is not lost.
    /// Returns whether they all finished.
    pub async fn finish_writes(&self, limit: Duration) -> bool {
        self.handles.lock().expect("lock").clear();
        self.writing.lock().expect("lock").clear();
        drop(self.writers_running.lock().expect("lock").take());
        let mut finished = self.writers_finished.lock().await;
        // Nothing is ever sent: the channel closes when the last writer is done.
        if matches!(finished.try_recv(), Err(mpsc::error::TryRecvError::Empty)) {
            info!("waiting for the files being pushed");
        }
        tokio::time::timeout(limit, finished.recv()).await.is_ok()
    }

    /// `release`: the last close of an open file.
    pub fn release(&self, fh: u64) {
        let handle = self.handles.lock().expect("lock").remove(&fh);
        if let Some(Handle::Write { name, writer, .. }) = handle {
            let mut writing = self.writing.lock().expect("lock");
            if writing
                .get(&name)
                .is_some_and(|w| Arc::ptr_eq(&w.writer, &writer))
                && let Some(released) = writing.remove(&name)
            {
                self.inodes.unpin(released.ino);
            }
        }
    }

    fn name_of(&self, ino: u64) -> FsResult<ImageName> {
        match self.inodes.get(ino).ok_or(FsError::NotFound)? {
            Inode::Dir(_) => Err(FsError::IsDirectory),
            Inode::Image { name, .. } | Inode::Writing { name, .. } => Ok(name),
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
        if let Some(Inode::Dir(_)) = self.inodes.get(ino) {
            // Directories exist only as names here: copy tools (`cp -a`) set their mode
            // and owner after making them, which is accepted and changes nothing.
            return match size {
                Some(_) => Err(FsError::IsDirectory),
                None => Ok(self.dir_attr(ino)),
            };
        }
        let name = self.name_of(ino)?;
        let writer = match fh.map(|fh| self.writer(fh)) {
            Some(Ok(writer)) => Some(writer),
            _ => self
                .writing
                .lock()
                .expect("lock")
                .get(&name)
                .map(|w| w.writer.clone()),
        };
        if mode_or_owner && writer.is_none() {
            return Err(FsError::NotPermitted(
                "images have no mode or owner to change".into(),
            ));
        }
        if let Some(size) = size {
            if self.config.read_only {
                return Err(FsError::ReadOnly);
            }
            let writer = writer.ok_or_else(|| {
                FsError::NotPermitted("truncate an image by opening it for writing".into())
            })?;
            writer.truncate(size).await?;
        }
        self.getattr(ino).await
    }

    /// An image name in `dir` that must be a tag this mount can change.
    async fn tag_name(&self, dir: &str, name: &str) -> FsResult<ImageName> {
        if !Self::plausible(dir, name) {
            return Err(FsError::NotFound);
        }
        match self.named(dir, name).await? {
            Named::Dir(_) => Err(FsError::IsDirectory),
            Named::Image(image) if image.tag().is_none() => Err(FsError::NotPermitted(
                "NAME@DIGEST names are read-only".into(),
            )),
            Named::Image(image) => Ok(image),
        }
    }

    /// `unlink`: deletes one tag.
    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let dir = self.dir_path(parent)?;
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let image = self.tag_name(&dir, name).await?;
        if self.writing.lock().expect("lock").contains_key(&image) {
            return Err(FsError::NotPermitted("the file is open for writing".into()));
        }
        let tag = image.tag().expect("a tag name");
        let result = self.registry.delete_tag(&image.repository, tag).await;
        self.metadata.invalidate(&image);
        self.forget_names(&image);
        match result {
            Ok(()) => {
                info!(image = %image, "deleted tag");
                Ok(())
            }
            Err(e) => {
                warn!(image = %image, error = %e, "delete failed");
                Err(e.into())
            }
        }
    }

    /// `rename`: retags. The target gets the source's manifest in one write (readers of
    /// the target see the old or the new image, never a mix), then the source tag goes.
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> FsResult<()> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let (dir, new_dir) = (self.dir_path(parent)?, self.dir_path(new_parent)?);
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let new_name = new_name
            .to_str()
            .ok_or_else(|| FsError::InvalidName("file names must be UTF-8".into()))?;
        if Self::plausible(&dir, name) && matches!(self.named(&dir, name).await?, Named::Dir(_)) {
            return Err(FsError::NotPermitted(
                "repositories cannot be renamed; move the files in them instead".into(),
            ));
        }
        let source = self.tag_name(&dir, name).await?;
        let target = self.new_tag_name(&new_dir, new_name).await?;
        if source == target {
            // Renaming a name onto itself changes nothing, if the name exists.
            return self.metadata.resolve(&source).await.map(|_| ());
        }
        if self.writing.lock().expect("lock").contains_key(&source) {
            return Err(FsError::NotPermitted("the file is open for writing".into()));
        }
        if no_replace && self.metadata.resolve(&target).await.is_ok() {
            return Err(FsError::Exists);
        }
        let from = Reference::Tag(source.tag().expect("a tag").to_owned());
        let digest = self
            .registry
            .tag(
                &source.repository,
                &from,
                &target.repository,
                target.tag().expect("a tag"),
            )
            .await?;
        self.metadata.invalidate(&target);
        self.metadata.published(&target.repository);
        self.forget_names(&target);
        let deleted = self
            .registry
            .delete_tag(&source.repository, source.tag().expect("a tag"))
            .await;
        self.metadata.invalidate(&source);
        self.forget_names(&source);
        info!(from = %source, to = %target, %digest, "retagged");
        deleted.map_err(|e| {
            warn!(from = %source, error = %e, "the new tag is in place, but the old one could not be removed");
            e.into()
        })
    }

    /// A new name for an image in `dir`, validated as for create.
    async fn new_tag_name(&self, dir: &str, name: &str) -> FsResult<ImageName> {
        if name.contains('@') {
            return Err(FsError::NotPermitted(
                "NAME@DIGEST names are read-only".into(),
            ));
        }
        let (repository, tag) = namespace::image_for_create(dir, name).inspect_err(|e| {
            warn!(name, error = %e, "new name refused");
        })?;
        if !name.contains(':') && self.metadata.is_dir(&repository).await? {
            return Err(FsError::IsDirectory);
        }
        Ok(ImageName {
            repository,
            reference: Reference::Tag(tag),
        })
    }

    /// `link`: adds a tag for the very version `ino` is.
    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) -> FsResult<Attr> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let (source, info) = match self.inodes.get(ino).ok_or(FsError::NotFound)? {
            Inode::Image { name, info } => (name, info),
            Inode::Dir(_) => {
                return Err(FsError::NotPermitted("directories cannot be linked".into()));
            }
            Inode::Writing { .. } => {
                return Err(FsError::NotPermitted(
                    "the file is still being written".into(),
                ));
            }
        };
        let new_dir = self.dir_path(new_parent)?;
        let new_name = new_name
            .to_str()
            .ok_or_else(|| FsError::InvalidName("file names must be UTF-8".into()))?;
        let target = self.new_tag_name(&new_dir, new_name).await?;
        if self.metadata.resolve(&target).await.is_ok() {
            return Err(FsError::Exists);
        }
        self.registry
            .tag(
                &source.repository,
                &Reference::Digest(info.digest.clone()),
                &target.repository,
                target.tag().expect("a tag"),
            )
            .await?;
        self.metadata.invalidate(&target);
        self.metadata.published(&target.repository);
        self.forget_names(&target);
        info!(from = %source, to = %target, digest = %info.digest, "linked");
        self.image_now(&target).await
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
        let path = namespace::join(&dir, name);
        namespace::check_new_dir(&path, name)
            .inspect_err(|e| warn!(name, error = %e, "mkdir refused"))?;
        if self.metadata.is_dir(&path).await? {
            return Err(FsError::Exists);
        }
        self.metadata.make_dir(&path);
        Ok(self.dir_attr(self.inodes.dir_entry(&path)))
    }

    /// `rmdir`: only of an empty directory.
    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        if self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let dir = self.dir_path(parent)?;
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let path = namespace::join(&dir, name);
        if !self.metadata.is_dir(&path).await? {
            return Err(FsError::NotFound);
        }
        if !self.entries(self.inodes.dir(&path)).await?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.metadata.remove_dir(&path);
        Ok(())
    }

    /// The extended attributes of `ino`: what an image is in the registry.
    pub async fn xattrs(&self, ino: u64) -> FsResult<Vec<(&'static str, String)>> {
        let (name, info) = match self.inodes.get(ino).ok_or(FsError::NotFound)? {
            Inode::Image { name, info } => (name, info),
            Inode::Dir(_) | Inode::Writing { .. } => return Ok(Vec::new()),
        };
        Ok(vec![
            (XATTR_DIGEST, info.digest.to_string()),
            (XATTR_MEDIA_TYPE, info.media_type.clone()),
            (XATTR_REFERENCE, name.to_string()),
        ])
    }
}
