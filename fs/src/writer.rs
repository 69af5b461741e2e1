//! Writing a file into the registry: one actor per open file.
//!
//! Writes must be sequential (EINVAL otherwise). They are appended to a file with no name in
//! the spool directory, so memory stays bounded whatever the size and a dead mount leaves
//! nothing behind; the image layer needs the file's length in its tar header before the
//! content, which is only known at the end. `flush` (every `close()`) and `fsync` push the
//! file and answer only once the registry has committed the manifest, so `close()` returns
//! the push's error. A push that fails leaves the tag as it was: the manifest is the last
//! thing written. A write the spool cannot take (a full disk) poisons the file: the spool
//! no longer holds what the program wrote, so nothing of it is ever pushed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use reposure_registry::Registry;
use reposure_registry::digest::Digest;
use reposure_registry::formats::single_file::PushFormat;
use reposure_registry::names;
use reposure_registry::push::{Content, LocalFile, push_path};
use reposure_registry::scratch::Scratch;
use std::os::unix::fs::FileExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, error, info, warn};

use crate::actor::ask;
use crate::errno::{FsError, FsResult};

/// How long a `close()` waits, after its push, for the kernel to drop the name's cached
/// entry (so that the next `open` finds the new image). Dropping an entry takes
/// microseconds, but the kernel first takes the directory's lock, which a slow `lookup` may
/// hold for as long as the registry's timeout; past this wait the close returns anyway and
/// the old entry lasts at most its lifetime (what was left of `metadata_ttl=`).
const INVALIDATION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What asks for a push of an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushKind {
    /// A `close()` by the process that opened the file.
    Close,
    /// An `fsync`.
    Fsync,
}

/// Why a push is attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// `close()` of one descriptor by the opener: the caller waits for the outcome and,
    /// for a while, for the kernel to drop the old entry.
    Close,
    /// `fsync`: the caller waits for the outcome, but not for the kernel's entry: the
    /// kernel holds the file's lock during `fsync`, and an `rm` of it holding the
    /// directory's lock would keep the entry from being dropped until the `fsync` returned.
    Fsync,
    /// The last descriptor went away: nobody is waiting, errors can only be logged.
    Release,
}

/// What a writer reports after publishing, so the filesystem can refresh its metadata and
/// the kernel's entries. The returned future completes once the kernel has dropped its
/// entries for the name; a `close()` waits for it (up to [`INVALIDATION_WAIT`]) so that the
/// next `open` of the name finds the new image.
pub type OnPublished =
    Box<dyn Fn(&Digest) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

enum WriteRequest {
    Write {
        offset: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<FsResult<u32>>,
    },
    Truncate {
        size: u64,
        reply: oneshot::Sender<FsResult<()>>,
    },
    Flush {
        trigger: Trigger,
        reply: oneshot::Sender<FsResult<()>>,
    },
}

/// An open file being written.
pub struct WriteHandle {
    requests: mpsc::UnboundedSender<WriteRequest>,
    size: Arc<AtomicU64>,
    replacing: Arc<AtomicBool>,
}

/// Where and how to push.
pub struct Target {
    pub repository: String,
    pub tag: String,
    pub format: PushFormat,
}

impl WriteHandle {
    /// Starts the actor; the spool file is created in `spool_dir`. `new_content` says
    /// whether closing without writing still publishes (an empty) content: true for a
    /// created or truncated file, false for a plain open for writing (as `touch` does).
    ///
    /// The actor holds `running` until it has made its last push, so that whoever holds the
    /// receiving end can wait for every writer to finish.
    pub fn spawn(
        registry: Arc<dyn Registry>,
        target: Target,
        spool_dir: &Path,
        new_content: bool,
        on_published: OnPublished,
        running: Option<mpsc::Sender<()>>,
    ) -> FsResult<Self> {
        let spool = Scratch::new_in(spool_dir).map_err(FsError::Spool)?;
        let size = Arc::new(AtomicU64::new(0));
        let replacing = Arc::new(AtomicBool::new(new_content));
        let (requests, mut queue) = mpsc::unbounded_channel();
        let span =
            tracing::info_span!("write_handle", repository = %target.repository, tag = %target.tag);
        let mut writer = Writer {
            registry,
            target,
            spool,
            spool_dir: spool_dir.to_owned(),
            size: size.clone(),
            replacing: replacing.clone(),
            dirty: new_content,
            failed: false,
            spool_failure: None,
            on_published,
        };
        tokio::spawn(
            async move {
                while let Some(request) = queue.recv().await {
                    match request {
                        WriteRequest::Write {
                            offset,
                            data,
                            reply,
                        } => {
                            let _ = reply.send(writer.write(offset, &data).await);
                        }
                        WriteRequest::Truncate { size, reply } => {
                            let _ = reply.send(writer.truncate(size).await);
                        }
                        WriteRequest::Flush { trigger, reply } => {
                            let _ = reply.send(writer.publish(trigger).await);
                        }
                    }
                }
                // All handles are gone (release). Anything written but never flushed is
                // pushed now rather than dropped, unless part of it never reached the spool.
                if writer.dirty
                    && !writer.failed
                    && writer.spool_failure.is_none()
                    && let Err(e) = writer.publish(Trigger::Release).await
                {
                    error!(error = %e, "push at release failed");
                }
                drop(running);
            }
            .instrument(span),
        );
        Ok(Self {
            requests,
            size,
            replacing,
        })
    }

    /// Whether this handle's content replaces the image's (it was created or truncated, or
    /// written to); until then the file shows the image's own attributes.
    pub fn is_replacing(&self) -> bool {
        self.replacing.load(Ordering::Relaxed)
    }

    /// The byte count as it grows, for inodes that outlive the handle.
    pub fn size_handle(&self) -> Arc<AtomicU64> {
        self.size.clone()
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Queues a write now (so order is kept) and returns its answer.
    pub fn write(
        &self,
        offset: u64,
        data: Vec<u8>,
    ) -> impl Future<Output = FsResult<u32>> + Send + 'static + use<> {
        ask(&self.requests, move |reply| WriteRequest::Write {
            offset,
            data,
            reply,
        })
    }

    /// Queues a truncation (only to 0 or the current size).
    pub fn truncate(
        &self,
        size: u64,
    ) -> impl Future<Output = FsResult<()>> + Send + 'static + use<> {
        ask(&self.requests, move |reply| WriteRequest::Truncate {
            size,
            reply,
        })
    }

    /// Queues the push a `close()` by the opener or an `fsync` makes, and returns its
    /// outcome.
    pub fn flush(
        &self,
        kind: FlushKind,
    ) -> impl Future<Output = FsResult<()>> + Send + 'static + use<> {
        let trigger = match kind {
            FlushKind::Close => Trigger::Close,
            FlushKind::Fsync => Trigger::Fsync,
        };
        ask(&self.requests, move |reply| WriteRequest::Flush {
            trigger,
            reply,
        })
    }
}

struct Writer {
    registry: Arc<dyn Registry>,
    target: Target,
    /// The spool file, which has no name (nothing is left behind if the mount dies). It
    /// is written with positioned writes, so reading it back for the upload never moves
    /// the write position.
    spool: Scratch,
    /// Where the spool is, for the scratch files of an archive push.
    spool_dir: PathBuf,
    size: Arc<AtomicU64>,
    replacing: Arc<AtomicBool>,
    /// The content differs from what was last published.
    dirty: bool,
    /// The last publish failed and nothing was written since: close() reported it, and
    /// release does not try again.
    failed: bool,
    /// A write could not be spooled (a full disk): the spool no longer holds what the
    /// program wrote, so every later write and flush fails with this errno and nothing is
    /// published, until the file is truncated to nothing.
    spool_failure: Option<i32>,
    on_published: OnPublished,
}

impl Writer {
    /// Records that the spool could not take a write; the error to answer with.
    fn spool_failed(&mut self, error: std::io::Error) -> FsError {
        self.spool_failure = Some(error.raw_os_error().unwrap_or(libc::EIO));
        error!(error = %error, "the spool could not take a write; this file will not be pushed");
        FsError::Spool(error)
    }

    /// Fails once the spool has lost part of what was written.
    fn check_spool(&self) -> FsResult<()> {
        match self.spool_failure {
            Some(errno) => Err(FsError::Spool(std::io::Error::from_raw_os_error(errno))),
            None => Ok(()),
        }
    }

    fn mark_dirty(&mut self) {
        // New content since a failed push: the release pushes it (or fails it) again.
        self.failed = false;
        self.dirty = true;
        self.replacing.store(true, Ordering::Relaxed);
    }

    async fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<u32> {
        let expected = self.size.load(Ordering::Relaxed);
        if offset != expected {
            return Err(FsError::NonSequentialWrite {
                expected,
                got: offset,
            });
        }
        self.check_spool()?;
        // A write to the local spool lands in the page cache; it is done in place rather
        // than on the blocking pool, which would cost a thread hand-off per FUSE write.
        tokio::task::block_in_place(|| self.spool.file().write_all_at(data, offset))
            .map_err(|e| self.spool_failed(e))?;
        self.size.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.mark_dirty();
        Ok(data.len() as u32)
    }

    async fn truncate(&mut self, size: u64) -> FsResult<()> {
        let current = self.size.load(Ordering::Relaxed);
        if size == current {
            // An explicit truncation to the current size (say, `: > file`) still means
            // "this is the new content".
            self.mark_dirty();
            return Ok(());
        }
        if size != 0 {
            return Err(FsError::NotPermitted(format!(
                "can only truncate a file being written to 0 bytes, not {size}"
            )));
        }
        self.spool
            .file()
            .set_len(0)
            .map_err(|e| self.spool_failed(e))?;
        // Empty again, the spool holds exactly what was written: nothing.
        self.spool_failure = None;
        self.size.store(0, Ordering::Relaxed);
        self.mark_dirty();
        Ok(())
    }

    /// Pushes the spooled content if it changed since the last push; fails at once if the
    /// spool lost part of it.
    ///
    /// A `close()` while the file is empty publishes nothing: programs that `dup` a
    /// descriptor (`dd of=`, a shell's `>`) close one copy before writing, and an empty image
    /// pushed then would briefly replace the tag. An empty file (created, or truncated,
    /// and never written) is published when its last descriptor is released instead. A
    /// release does not retry a publish that failed: close() already reported that failure.
    async fn publish(&mut self, trigger: Trigger) -> FsResult<()> {
        self.check_spool()?;
        let size = self.size.load(Ordering::Relaxed);
        if !self.dirty || (trigger != Trigger::Release && size == 0) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let file = LocalFile {
            path: &self.spool.path(),
            file_name: names::base_name(&self.target.repository).to_owned(),
            format: self.target.format,
            created: None,
            content: Content::Detect,
            scratch_dir: &self.spool_dir,
            progress: None,
        };
        let result = push_path(
            self.registry.as_ref(),
            &self.target.repository,
            &self.target.tag,
            file,
        )
        .await;
        match result {
            Ok(digest) => {
                info!(%digest, size, elapsed_ms = started.elapsed().as_millis() as u64, "pushed");
                self.dirty = false;
                self.failed = false;
                let dropped = (self.on_published)(&digest);
                if trigger == Trigger::Close
                    && tokio::time::timeout(INVALIDATION_WAIT, dropped)
                        .await
                        .is_err()
                {
                    warn!(
                        wait_s = INVALIDATION_WAIT.as_secs(),
                        "the kernel did not drop the old entry in time; it lasts at most metadata_ttl"
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                error!(error = %e, size, "push failed; the tag was not changed");
                Err(FsError::PushFailed(e))
            }
        }
    }
}
