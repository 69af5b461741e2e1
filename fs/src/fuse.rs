//! The thin adapter from `fuser` to the async core.
//!
//! Each callback does only what must happen on the dispatch thread (queueing reads and
//! writes in the kernel's order) and hands the rest, with its reply, to a tokio task. A
//! span named after the FUSE operation wraps each task, so logs can be grepped by
//! operation (`lookup`, `read`, `write`, `flush`, `unlink`, ...).

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::{Instrument, debug_span, warn};

use crate::errno::FsError;
use crate::filesystem::{Attr, AttrChanges, Filesystem, NodeKind};
use crate::process::Caller;

/// Block size reported by `stat`: the unit tools like `cp` use for their buffers, large so
/// that they write in big, cheap chunks.
const BLOCK_SIZE: u32 = 1024 * 1024;

/// Largest write the kernel may send in one request (FUSE allows up to 1 MiB with
/// max_pages); bigger writes mean fewer round trips through the dispatch loop.
const MAX_WRITE: u32 = 1024 * 1024;

/// Kernel read-ahead, matched to the reader's streaming so sequential reads arrive in large
/// requests.
const MAX_READAHEAD: u32 = 1024 * 1024;

/// Owner and mode settings of the mount.
#[derive(Debug, Clone, Copy)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
}

/// The FUSE face of a [`Filesystem`].
pub struct FuseAdapter {
    core: Arc<Filesystem>,
    runtime: Handle,
    ownership: Ownership,
}

impl FuseAdapter {
    /// An adapter that runs the core's futures on `runtime`.
    pub fn new(core: Arc<Filesystem>, runtime: Handle, ownership: Ownership) -> Self {
        Self {
            core,
            runtime,
            ownership,
        }
    }

    /// Answers an operation that returns nothing once `future` completes.
    fn answer_empty<F>(&self, span: tracing::Span, future: F, reply: ReplyEmpty)
    where
        F: Future<Output = Result<(), FsError>> + Send + 'static,
    {
        self.spawn(span, async move {
            match future.await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn spawn<F>(&self, span: tracing::Span, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(future.instrument(span));
    }

    /// Like [`Self::spawn`], but answers at once when the answer needs no waiting (the
    /// core's caches have it): one poll here, on the dispatch thread, saves the hand-off to
    /// a runtime thread that dominates a cached lookup (`ls -l` makes a few per entry). A
    /// future that is not ready goes on in a task as usual; nothing blocks.
    fn answer_now_or_spawn<F>(&self, span: tracing::Span, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let _runtime = self.runtime.enter();
        let mut future = Box::pin(future.instrument(span));
        let waker = futures::task::noop_waker();
        let mut context = std::task::Context::from_waker(&waker);
        if future.as_mut().poll(&mut context).is_pending() {
            self.runtime.spawn(future);
        }
    }
}

/// Converts the core's attributes.
pub fn to_file_attr(attr: &Attr, ownership: Ownership) -> FileAttr {
    let (kind, nlink) = match attr.kind {
        NodeKind::Directory => (FileType::Directory, 2),
        NodeKind::File => (FileType::RegularFile, 1),
    };
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind,
        perm: attr.perm,
        nlink,
        uid: ownership.uid,
        gid: ownership.gid,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// Logs an error at the level it deserves and converts it.
fn errno(error: &FsError) -> Errno {
    match error {
        FsError::NotFound => {}
        FsError::Registry(reposure_registry::RegistryError::NotFound(_)) => {}
        other => warn!(error = %other, errno = other.errno(), "operation failed"),
    }
    Errno::from_i32(error.errno())
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_READAHEAD);
        // Without this the kernel asks for `security.capability` before every write (to
        // drop set-uid capabilities), one extra round trip per write. The mount is nosuid
        // and files have no privileges to drop, so the server "handles" it by doing nothing.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (core, name, ownership) = (self.core.clone(), name.to_owned(), self.ownership);
        let span = debug_span!("lookup", parent = parent.0, name = %name.to_string_lossy());
        self.answer_now_or_spawn(span, async move {
            match core.lookup(parent.0, &name).await {
                Ok(attr) => {
                    // fuser takes the attribute lifetime first.
                    reply.entry_with_ttls(
                        &attr.attr_ttl,
                        &attr.entry_ttl,
                        &to_file_attr(&attr, ownership),
                        Generation(0),
                    )
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (core, ownership) = (self.core.clone(), self.ownership);
        self.spawn(debug_span!("getattr", ino = ino.0), async move {
            match core.getattr(ino.0).await {
                Ok(attr) => reply.attr(&attr.attr_ttl, &to_file_attr(&attr, ownership)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (core, ownership) = (self.core.clone(), self.ownership);
        // The owner shown is the mount's: setting it again changes nothing, any other is
        // refused. The atime is not kept.
        let changes = AttrChanges {
            size,
            mode: mode.map(|m| m & 0o7777),
            modified: mtime.map(|t| match t {
                TimeOrNow::SpecificTime(time) => time,
                TimeOrNow::Now => SystemTime::now(),
            }),
            foreign_owner: uid.is_some_and(|u| u != ownership.uid)
                || gid.is_some_and(|g| g != ownership.gid),
        };
        let span = debug_span!("setattr", ino = ino.0, ?size, ?mode);
        self.spawn(span, async move {
            match core.setattr(ino.0, changes, fh.map(|f| f.0)).await {
                Ok(attr) => reply.attr(&attr.attr_ttl, &to_file_attr(&attr, ownership)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (core, name, ownership) = (self.core.clone(), name.to_owned(), self.ownership);
        let span = debug_span!("mkdir", parent = parent.0, name = %name.to_string_lossy());
        self.spawn(span, async move {
            match core.mkdir(parent.0, &name).await {
                Ok(attr) => reply.entry_with_ttls(
                    &attr.attr_ttl,
                    &attr.entry_ttl,
                    &to_file_attr(&attr, ownership),
                    Generation(0),
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (core, name) = (self.core.clone(), name.to_owned());
        let span = debug_span!("unlink", parent = parent.0, name = %name.to_string_lossy());
        self.answer_empty(
            span,
            async move { core.unlink(parent.0, &name).await },
            reply,
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (core, name) = (self.core.clone(), name.to_owned());
        let span = debug_span!("rmdir", parent = parent.0, name = %name.to_string_lossy());
        self.answer_empty(
            span,
            async move { core.rmdir(parent.0, &name).await },
            reply,
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (core, caller) = (self.core.clone(), Caller::new(req.pid()));
        self.spawn(
            debug_span!("open", ino = ino.0, flags = flags.0),
            async move {
                match core.open(ino.0, flags.0, caller).await {
                    Ok((fh, keep_cache)) => {
                        let flags = if keep_cache {
                            FopenFlags::FOPEN_KEEP_CACHE
                        } else {
                            FopenFlags::empty()
                        };
                        reply.opened(FileHandle(fh), flags)
                    }
                    Err(e) => reply.error(errno(&e)),
                }
            },
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (core, name, ownership) = (self.core.clone(), name.to_owned(), self.ownership);
        let caller = Caller::new(req.pid());
        let span = debug_span!("create", parent = parent.0, name = %name.to_string_lossy());
        let mode = mode & !umask & 0o7777;
        self.spawn(span, async move {
            match core.create(parent.0, &name, flags, mode, caller).await {
                Ok((attr, fh)) => reply.created(
                    // `reply.created` takes one lifetime for the entry and its attributes:
                    // the entry's (zero for a file being written, so it is looked up again
                    // every time; what is left of metadata_ttl= for an existing version).
                    &attr.entry_ttl,
                    &to_file_attr(&attr, ownership),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let read = self.core.read(fh.0, offset, size);
        self.spawn(debug_span!("read", ino = ino.0, offset, size), async move {
            match read.await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let write = self.core.write(fh.0, offset, data.to_vec());
        self.spawn(
            debug_span!("write", ino = ino.0, offset, size = data.len()),
            async move {
                match write.await {
                    Ok(written) => reply.written(written),
                    Err(e) => reply.error(errno(&e)),
                }
            },
        );
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.answer_empty(
            debug_span!("flush", ino = ino.0, pid = req.pid()),
            self.core.flush(fh.0, Caller::new(req.pid())),
            reply,
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.answer_empty(
            debug_span!("fsync", ino = ino.0),
            self.core.fsync(fh.0),
            reply,
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let core = self.core.clone();
        self.spawn(debug_span!("opendir", ino = ino.0), async move {
            match core.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match self.core.listing(fh.0) {
            Ok(listing) => listing,
            Err(e) => return reply.error(errno(&e)),
        };
        // Offsets: 1 is ".", 2 is "..", 3.. are the snapshot's entries; an offset is the
        // number of entries already returned, so a call starts right at its entry.
        let file_type = |kind| match kind {
            NodeKind::Directory => FileType::Directory,
            NodeKind::File => FileType::RegularFile,
        };
        let dots = [(ino.0, "."), (self.core.parent_of(ino.0), "..")];
        for (index, (dot_ino, name)) in dots.into_iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(dot_ino),
                index as u64 + 1,
                FileType::Directory,
                name,
            ) {
                return reply.ok();
            }
        }
        let first = (offset as usize).saturating_sub(dots.len());
        for (index, (name, entry_ino, kind)) in listing.from(first).enumerate() {
            let next_offset = (dots.len() + first + index) as u64 + 1;
            if reply.add(INodeNo(entry_ino), next_offset, file_type(kind), name) {
                break;
            }
        }
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(fuser::RenameFlags::RENAME_EXCHANGE)
            || flags.contains(fuser::RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let no_replace = flags.contains(fuser::RenameFlags::RENAME_NOREPLACE);
        let (core, name, newname) = (self.core.clone(), name.to_owned(), newname.to_owned());
        let span = debug_span!("rename", name = %name.to_string_lossy(), newname = %newname.to_string_lossy());
        self.answer_empty(
            span,
            async move {
                core.rename(parent.0, &name, newparent.0, &newname, no_replace)
                    .await
            },
            reply,
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (core, newname, ownership) = (self.core.clone(), newname.to_owned(), self.ownership);
        let span = debug_span!("link", ino = ino.0, newname = %newname.to_string_lossy());
        self.spawn(span, async move {
            match core.link(ino.0, newparent.0, &newname).await {
                Ok(attr) => {
                    // fuser takes the attribute lifetime first.
                    reply.entry_with_ttls(
                        &attr.attr_ttl,
                        &attr.entry_ttl,
                        &to_file_attr(&attr, ownership),
                        Generation(0),
                    )
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn getxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // Tools ask every file for `security.*` and `system.*` attributes (`ls -l` does):
        // only Reposure's own names need the image, the rest are answered at once.
        if !name.as_encoded_bytes().starts_with(b"user.reposure.") {
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let (core, name) = (self.core.clone(), name.to_owned());
        self.spawn(
            debug_span!("getxattr", ino = ino.0, name = %name.to_string_lossy()),
            async move {
                let value = match core.xattrs(ino.0).await {
                    Ok(xattrs) => xattrs
                        .into_iter()
                        .find(|(n, _)| OsStr::new(n) == name)
                        .map(|(_, v)| v),
                    Err(e) => return reply.error(errno(&e)),
                };
                match value {
                    None => reply.error(Errno::from_i32(libc::ENODATA)),
                    Some(value) if size == 0 => reply.size(value.len() as u32),
                    Some(value) if value.len() > size as usize => {
                        reply.error(Errno::from_i32(libc::ERANGE))
                    }
                    Some(value) => reply.data(value.as_bytes()),
                }
            },
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        let core = self.core.clone();
        self.spawn(debug_span!("listxattr", ino = ino.0), async move {
            let names: Vec<u8> = match core.xattrs(ino.0).await {
                Ok(xattrs) => xattrs
                    .iter()
                    .flat_map(|(n, _)| n.bytes().chain([0]))
                    .collect(),
                Err(e) => return reply.error(errno(&e)),
            };
            if size == 0 {
                reply.size(names.len() as u32)
            } else if names.len() > size as usize {
                reply.error(Errno::from_i32(libc::ERANGE))
            } else {
                reply.data(&names)
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        // The attributes describe the registry's content; copy tools that try to preserve
        // theirs (`cp -a`) treat ENOTSUP as "not supported here" and carry on.
        reply.error(Errno::from_i32(libc::EOPNOTSUPP));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::from_i32(libc::EOPNOTSUPP));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        // A registry has no fixed capacity; report a large, constant one so tools that
        // check free space before copying go ahead.
        let blocks = u64::MAX / u64::from(BLOCK_SIZE) / 2;
        reply.statfs(blocks, blocks, blocks, 0, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }
}
