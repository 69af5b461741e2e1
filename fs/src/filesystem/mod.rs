//! The filesystem core: every operation as an `async fn`, independent of FUSE.
//!
//! Names resolve through [`Metadata`] (cached for `metadata_ttl`); each resolution is an
//! inode of its own ([`crate::inode`]), so an open file keeps its content when the tag moves
//! and the kernel may keep its pages across opens of the same version. Reads and writes go
//! to per-file actors ([`ReadHandle`], [`WriteHandle`]); every push goes through one
//! [`Publisher`]. Files whose names cannot be registry names are local files
//! ([`crate::local`]).
//!
//! * [`changes`]: `setattr`: sizes, modes and times, and publishing an image again.
//! * [`moves`]: `unlink`, `rename` (of images, local files and directories) and `link`.

mod changes;
mod moves;

pub use changes::AttrChanges;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{FutureExt, StreamExt, TryStreamExt};
use reposure_registry::RegistryError;
use reposure_registry::digest::Digest;
use reposure_registry::formats::manifest::Platform;
use reposure_registry::formats::single_file::PushFormat;
use reposure_registry::names::{self, DEFAULT_TAG, Reference};
use reposure_registry::operations::{DEFAULT_FILE_MODE, ImageInfo, Registry};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::cache::DiskCache;
use crate::errno::{FsError, FsResult};
use crate::inode::{ImageName, Inode, InodeTable};
use crate::listing::{self, Listing};
use crate::local::{LOCAL_MARK, LocalFile, LocalFiles};
use crate::metadata::Metadata;
use crate::namespace;
use crate::process::Caller;
use crate::publish::Publisher;
use crate::reader::{ReadBudget, ReadContext, ReadHandle};
use crate::staged::Staged;
use crate::writer::{CopyUp, Destination, FlushKind, OnPublished, WriteHandle, WriterSetup};

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
/// The extended attribute of a local file, saying it is not published.
pub const XATTR_LOCAL: &str = "user.reposure.local";

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
    /// A local file open for reading only.
    Local(Arc<Staged>),
    Write {
        /// The image being written; `None` for a local file.
        name: Option<ImageName>,
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
    publisher: Arc<Publisher>,
    locals: LocalFiles,
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
        let publisher = Arc::new(Publisher::new(
            registry.clone(),
            config.format,
            config.spool_dir.clone(),
        ));
        Ok(Self {
            registry,
            config,
            inodes: InodeTable::default(),
            metadata,
            publisher,
            locals: LocalFiles::default(),
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

    /// The permission bits shown for an image with `mode`: the write bits go where the
    /// name cannot be written.
    fn file_perm(&self, name: &ImageName, mode: Option<u32>) -> u16 {
        let mode = (mode.unwrap_or(DEFAULT_FILE_MODE) & 0o7777) as u16;
        if self.config.read_only || name.tag().is_none() {
            mode & !0o222
        } else {
            mode
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
            mtime: info
                .attributes
                .modified
                .or(info.created)
                .unwrap_or(self.mounted_at),
            perm: self.file_perm(name, info.attributes.mode),
            entry_ttl: fresh_for,
            attr_ttl: IMMUTABLE_TTL,
        }
    }

    fn writing_attr(&self, ino: u64, name: &ImageName, staged: &Staged) -> Attr {
        Attr {
            ino,
            kind: NodeKind::File,
            size: staged.size(),
            mtime: staged.modified(),
            perm: self.file_perm(name, Some(staged.mode())),
            entry_ttl: Duration::ZERO,
            attr_ttl: Duration::ZERO,
        }
    }

    /// A local file shows its mode with the sticky bit, so it never looks published.
    fn local_attr(&self, ino: u64, staged: &Staged) -> Attr {
        Attr {
            ino,
            kind: NodeKind::File,
            size: staged.size(),
            mtime: staged.modified(),
            perm: (staged.mode() & 0o777) as u16 | LOCAL_MARK,
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
            return Ok(self.writing_attr(writing.ino, name, writing.writer.staged()));
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

    /// Whether a file created as `name` in `dir` is a local file ([`crate::local`]): a name
    /// no registry takes, or one a tool gives its temporary files.
    fn local_name(dir: &str, name: &str) -> bool {
        !name.contains('@')
            && (matches!(
                namespace::image_for_create(dir, name),
                Err(FsError::InvalidName(_))
            ) || crate::local::is_temporary_name(name))
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
        if let Some(local) = self.locals.get(&dir, name) {
            self.inodes.reference(local.ino);
            return Ok(self.local_attr(local.ino, &local.staged));
        }
        // Other names that cannot be registry names do not exist; no request is made for
        // them (shells and desktops probe for `.git`, `.Trash` and the like).
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
            Inode::Writing { name, staged } => match staged.upgrade() {
                Some(staged) => Ok(self.writing_attr(ino, &name, &staged)),
                // Written and released: what the name is now (which can change again).
                None => {
                    let info = self.metadata.resolve(&name).await?;
                    Ok(Attr {
                        attr_ttl: Duration::ZERO,
                        ..self.image_attr(ino, &name, &info, Duration::ZERO)
                    })
                }
            },
            Inode::Local(staged) => Ok(self.local_attr(ino, &staged)),
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
        let file = |name: String| {
            let ino = listing::listed_ino(&dir, &name);
            (name, ino, NodeKind::File)
        };
        for (repository, tags) in &tags {
            let shadowed = sub_dirs.contains(names::base_name(repository));
            for tag in tags.iter() {
                entries.push(file(namespace::listed_name(repository, tag, shadowed)));
            }
        }
        for (name, ino) in self.locals.in_dir(&dir) {
            entries.push((name, ino, NodeKind::File));
        }
        // Files being written show while they are open.
        for name in self.writing.lock().expect("lock").keys() {
            let (parent, base) = names::parent_and_base(&name.repository);
            if parent == dir
                && let Some(tag) = name.tag()
            {
                entries.push(file(namespace::listed_name(
                    &name.repository,
                    tag,
                    sub_dirs.contains(base),
                )));
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

    /// What to do once `name` was pushed: forget what the change made stale, here and in
    /// the kernel; the answer completes when the kernel has dropped its entries.
    fn on_published(&self, name: &ImageName) -> OnPublished {
        let metadata = self.metadata.clone();
        let published = name.clone();
        let invalidator = self.invalidator.clone();
        let parent_ino = self
            .inodes
            .dir(names::parent_and_base(&published.repository).0);
        Box::new(move |_: &Digest| {
            metadata.invalidate(&published);
            metadata.published(&published.repository);
            let dropped = invalidator.get().map(|invalidate| {
                invalidate(
                    parent_ino,
                    namespace::file_names(&published.repository, tag_of(&published)),
                )
            });
            Box::pin(async move {
                if let Some(dropped) = dropped {
                    let _ = dropped.await;
                }
            })
        })
    }

    /// New staged content in the spool, with `mode`.
    fn new_staged(&self, mode: u32) -> FsResult<Arc<Staged>> {
        Staged::new_in(&self.config.spool_dir, mode)
            .map(Arc::new)
            .map_err(FsError::Spool)
    }

    /// A writer of `staged` content to `destination`.
    fn spawn_writer(
        &self,
        destination: Destination,
        staged: Arc<Staged>,
        copy_up: Option<CopyUp>,
        new_content: bool,
    ) -> Arc<WriteHandle> {
        let on_published = match &destination {
            Destination::Image(name) => self.on_published(name),
            Destination::Local => Box::new(|_: &Digest| Box::pin(async {}) as _),
        };
        Arc::new(WriteHandle::spawn(WriterSetup {
            registry: self.registry.clone(),
            publisher: self.publisher.clone(),
            destination,
            staged,
            copy_up,
            new_content,
            on_published,
            running: self.writers_running.lock().expect("lock").clone(),
        }))
    }

    /// Starts writing `name`, from `copy_up` if the file is not new; returns the writer and
    /// the inode lookups show for it.
    fn start_writer(
        &self,
        name: &ImageName,
        new_content: bool,
        copy_up: Option<CopyUp>,
        mode: u32,
    ) -> FsResult<(Arc<WriteHandle>, u64)> {
        if name.tag().is_none() {
            return Err(FsError::NotPermitted(
                "NAME@DIGEST names are read-only".into(),
            ));
        }
        // One writer per name: the check and the registration happen under one lock, so
        // two opens racing for a name cannot both pass.
        let mut writing = self.writing.lock().expect("lock");
        if writing.contains_key(name) {
            return Err(FsError::NotPermitted(
                "the file is already open for writing".into(),
            ));
        }
        let staged = self.new_staged(mode)?;
        if let Some(from) = &copy_up {
            staged.adopt(from.attributes);
        }
        let writer = self.spawn_writer(
            Destination::Image(name.clone()),
            staged,
            copy_up,
            new_content,
        );
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

    /// A new local file `name` in `dir` with `mode`.
    fn new_local(&self, dir: &str, name: &str, mode: u32) -> FsResult<LocalFile> {
        let staged = self.new_staged(mode)?;
        let ino = self.inodes.local(&staged);
        let file = LocalFile { staged, ino };
        self.locals.insert(dir, name, file.clone());
        debug!(dir, name, "local file: the name cannot be a registry name");
        Ok(file)
    }

    /// `open` by `caller`: returns the handle and whether the kernel may keep its cached
    /// pages.
    pub async fn open(&self, ino: u64, flags: i32, caller: Caller) -> FsResult<(u64, bool)> {
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if writes && self.config.read_only {
            return Err(FsError::ReadOnly);
        }
        let truncates = flags & libc::O_TRUNC != 0;
        let (name, info) = match self.inodes.get(ino).ok_or(FsError::NotFound)? {
            Inode::Dir(_) => return Err(FsError::IsDirectory),
            Inode::Local(staged) if writes => {
                if truncates {
                    staged.truncate(0).map_err(FsError::Spool)?;
                }
                let writer = self.spawn_writer(Destination::Local, staged, None, truncates);
                return Ok((
                    self.new_handle(self.write_handle(None, writer, caller)),
                    false,
                ));
            }
            Inode::Local(staged) => return Ok((self.new_handle(Handle::Local(staged)), false)),
            Inode::Image { name, info } => (name, Some(info)),
            Inode::Writing { name, .. } => (name, None),
        };
        if writes {
            // Without O_TRUNC the file goes on from the image's content, fetched when first
            // needed (copy-up).
            let copy_up = match (&info, truncates) {
                (Some(info), false) => Some(CopyUp {
                    repository: name.repository.clone(),
                    digest: info.digest.clone(),
                    content: info.content(self.config.unpack).clone(),
                    attributes: info.attributes,
                }),
                _ => None,
            };
            let (writer, _) = self.start_writer(&name, truncates, copy_up, DEFAULT_FILE_MODE)?;
            return Ok((
                self.new_handle(self.write_handle(Some(name), writer, caller)),
                false,
            ));
        }
        // An image version is immutable: it reads the content it resolved to, even if the
        // tag moves while it is open, and the kernel may keep its pages across opens.
        let (info, keep_cache) = match info {
            Some(info) => (info, true),
            None => (Arc::new(self.metadata.resolve(&name).await?), false),
        };
        let content = info.content(self.config.unpack).clone();
        let reader = ReadHandle::spawn(self.read_context.clone(), name.repository.clone(), content);
        Ok((self.new_handle(Handle::Read(reader)), keep_cache))
    }

    fn write_handle(
        &self,
        name: Option<ImageName>,
        writer: Arc<WriteHandle>,
        opener: Caller,
    ) -> Handle {
        Handle::Write {
            name,
            writer,
            opener,
        }
    }

    /// `create`: a new file in `parent` with `mode`, open for writing.
    ///
    /// The kernel also sends `create` for `open(O_CREAT)` of a name it has not looked up, so
    /// an existing file is opened rather than replaced unless `O_TRUNC` is given, and
    /// `O_EXCL` fails with EEXIST. A name that cannot be an image name makes a local file.
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        flags: i32,
        mode: u32,
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
        if Self::local_name(&dir, name) {
            debug!(
                name,
                "not a registry name, or a tool's temporary file: a local file"
            );
            return self.create_local(&dir, name, flags, mode, caller);
        }
        let (repository, tag) = match namespace::image_for_create(&dir, name) {
            Ok(image) => image,
            Err(e) => {
                warn!(name, error = %e, "create refused");
                return Err(e);
            }
        };
        if !name.contains(':') && self.metadata.is_dir(&repository).await? {
            return Err(FsError::IsDirectory);
        }
        let image = ImageName {
            repository,
            reference: Reference::Tag(tag),
        };
        let existing = match self.metadata.resolve(&image).await {
            Ok(info) => Some(info),
            Err(FsError::Registry(RegistryError::NotFound(_))) => None,
            Err(e) => return Err(e),
        };
        if existing.is_some() && flags & libc::O_EXCL != 0 {
            return Err(FsError::Exists);
        }
        let truncates = flags & libc::O_TRUNC != 0;
        let copy_up = existing.filter(|_| !truncates).map(|info| CopyUp {
            repository: image.repository.clone(),
            digest: info.digest.clone(),
            content: info.content(self.config.unpack).clone(),
            attributes: info.attributes,
        });
        let new_content = copy_up.is_none();
        let (writer, _) = self.start_writer(&image, new_content, copy_up, mode)?;
        let fh = self.new_handle(self.write_handle(Some(image.clone()), writer, caller));
        Ok((self.image_now(&image).await?, fh))
    }

    /// `create` of a name that cannot be an image name: a local file.
    fn create_local(
        &self,
        dir: &str,
        name: &str,
        flags: i32,
        mode: u32,
        caller: Caller,
    ) -> FsResult<(Attr, u64)> {
        let truncates = flags & libc::O_TRUNC != 0;
        let file = match self.locals.get(dir, name) {
            Some(_) if flags & libc::O_EXCL != 0 => return Err(FsError::Exists),
            Some(file) => {
                if truncates {
                    file.staged.truncate(0).map_err(FsError::Spool)?;
                }
                self.inodes.reference(file.ino);
                file
            }
            None => {
                let file = self.new_local(dir, name, mode)?;
                self.inodes.reference(file.ino);
                file
            }
        };
        let writer = self.spawn_writer(Destination::Local, file.staged.clone(), None, true);
        let fh = self.new_handle(self.write_handle(None, writer, caller));
        Ok((self.local_attr(file.ino, &file.staged), fh))
    }

    fn read_handle_future(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> FsResult<futures::future::BoxFuture<'static, FsResult<Bytes>>> {
        match self.handles.lock().expect("lock").get(&fh) {
            Some(Handle::Read(reader)) => Ok(reader.read(offset, size).boxed()),
            Some(Handle::Write { writer, .. }) => Ok(writer.read(offset, size).boxed()),
            Some(Handle::Local(staged)) => {
                let read = staged.read_at(offset, size).map_err(FsError::Spool);
                Ok(futures::future::ready(read).boxed())
            }
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
            Some(Handle::Read(_) | Handle::Local(_)) => Ok(None),
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
        let all_pushed = tokio::time::timeout(limit, finished.recv()).await.is_ok();
        self.keep_local_files();
        all_pushed
    }

    /// Local files never renamed onto an image are not lost at the end of the mount: they
    /// are kept as named files under `spool_dir=/reposure-kept-TIME/`, and the log says
    /// where.
    fn keep_local_files(&self) {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let root = self.config.spool_dir.join(format!("reposure-kept-{stamp}"));
        for kept in self.locals.keep_all(&root) {
            match kept {
                Ok(path) => warn!(
                    path = %path.display(),
                    "a local file was never renamed onto an image name: kept (not pushed)"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "a local file was never renamed onto an image name and could not be kept"
                ),
            }
        }
    }

    /// `release`: the last close of an open file.
    pub fn release(&self, fh: u64) {
        let handle = self.handles.lock().expect("lock").remove(&fh);
        if let Some(Handle::Write {
            name: Some(name),
            writer,
            ..
        }) = handle
        {
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
            Inode::Local(_) => {
                let local = "not pushed: the name cannot be a registry name; rename the file onto one to push it";
                return Ok(vec![(XATTR_LOCAL, local.to_owned())]);
            }
            Inode::Dir(_) | Inode::Writing { .. } => return Ok(Vec::new()),
        };
        Ok(vec![
            (XATTR_DIGEST, info.digest.to_string()),
            (XATTR_MEDIA_TYPE, info.media_type.clone()),
            (XATTR_REFERENCE, name.to_string()),
        ])
    }
}
