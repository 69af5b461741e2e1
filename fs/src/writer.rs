//! Writing a file: one actor per open file.
//!
//! Writes land at any offset in [`Staged`] content on the mount's disk, so memory stays
//! bounded whatever the size and a dead mount leaves nothing behind; the image layer needs
//! the file's length in its tar header before the content, which is only known at the end.
//! A file opened for writing without truncating starts from the image's content, fetched at
//! the first write, read or truncation that needs it (copy-up; `touch` fetches nothing).
//!
//! `flush` (every `close()` by the opener) and `fsync` publish the content
//! ([`Publisher`]) and answer only once the registry has committed the manifest, so
//! `close()` returns the push's error. A push that fails leaves the tag as it was: the
//! manifest is the last thing written. A write the spool cannot take (a full disk) poisons
//! the file: the spool no longer holds what the program wrote, so nothing of it is ever
//! pushed.
//!
//! A local file (a name that cannot be a registry name: a temporary file of `rsync`,
//! `sed -i`, an editor) is written the same way but never published by closing it: it waits
//! on the mount's disk until it is renamed onto an image name.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use reposure_registry::Registry;
use reposure_registry::digest::Digest;
use reposure_registry::operations::{FileAttributes, FileContent};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, error, info, warn};

use crate::actor::ask;
use crate::errno::{FsError, FsResult};
use crate::inode::ImageName;
use crate::publish::Publisher;
use crate::staged::Staged;

/// How long a `close()` waits, after its push, for the kernel to drop the name's cached
/// entry (so that the next `open` finds the new image). Dropping an entry takes
/// microseconds, but the kernel first takes the directory's lock, which a slow `lookup` may
/// hold for as long as the registry's timeout; past this wait the close returns anyway and
/// the old entry lasts at most its lifetime (what was left of `metadata_ttl=`).
pub const INVALIDATION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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

/// Where a file's content goes.
pub enum Destination {
    /// An image, pushed when the file is closed.
    Image(ImageName),
    /// A local file, kept on the mount's disk until it is renamed onto an image name.
    Local,
}

/// The image content a file opened without truncating starts from.
pub struct CopyUp {
    pub repository: String,
    /// The version: the mount's own copy of it is used when it pushed it moments ago.
    pub digest: Digest,
    pub content: FileContent,
    pub attributes: FileAttributes,
}

/// Everything a writer needs.
pub struct WriterSetup {
    pub registry: Arc<dyn Registry>,
    pub publisher: Arc<Publisher>,
    pub destination: Destination,
    pub staged: Arc<Staged>,
    /// Where the content starts from, if it is not new.
    pub copy_up: Option<CopyUp>,
    /// Whether closing without writing still publishes (an empty) content: true for a
    /// created or truncated file, false for a plain open for writing (as `touch` does).
    pub new_content: bool,
    pub on_published: OnPublished,
    /// Held until the writer has made its last push, so that whoever holds the receiving
    /// end can wait for every writer to finish.
    pub running: Option<mpsc::Sender<()>>,
}

enum WriteRequest {
    Write {
        offset: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<FsResult<u32>>,
    },
    Read {
        offset: u64,
        size: u32,
        reply: oneshot::Sender<FsResult<Bytes>>,
    },
    Truncate {
        size: u64,
        reply: oneshot::Sender<FsResult<()>>,
    },
    SetAttributes {
        mode: Option<u32>,
        modified: Option<std::time::SystemTime>,
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
    staged: Arc<Staged>,
    replacing: Arc<AtomicBool>,
}

impl WriteHandle {
    /// Starts the actor.
    pub fn spawn(setup: WriterSetup) -> Self {
        let replacing = Arc::new(AtomicBool::new(setup.new_content));
        let (requests, mut queue) = mpsc::unbounded_channel();
        let span = match &setup.destination {
            Destination::Image(name) => tracing::info_span!("write_handle", image = %name),
            Destination::Local => tracing::info_span!("write_handle", image = "(local)"),
        };
        let staged = setup.staged.clone();
        let running = setup.running;
        let mut writer = Writer {
            registry: setup.registry,
            publisher: setup.publisher,
            destination: setup.destination,
            staged: setup.staged,
            copy_up: setup.copy_up,
            replacing: replacing.clone(),
            dirty: setup.new_content,
            failed: false,
            spool_failure: None,
            on_published: setup.on_published,
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
                        WriteRequest::Read {
                            offset,
                            size,
                            reply,
                        } => {
                            let _ = reply.send(writer.read(offset, size).await);
                        }
                        WriteRequest::Truncate { size, reply } => {
                            let _ = reply.send(writer.truncate(size).await);
                        }
                        WriteRequest::SetAttributes {
                            mode,
                            modified,
                            reply,
                        } => {
                            let _ = reply.send(writer.set_attributes(mode, modified).await);
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
        Self {
            requests,
            staged,
            replacing,
        }
    }

    /// Whether this handle's content replaces the image's (it was created or truncated, or
    /// written to); until then the file shows the image's own attributes.
    pub fn is_replacing(&self) -> bool {
        self.replacing.load(Ordering::Relaxed)
    }

    /// The content and its attributes as they are now.
    pub fn staged(&self) -> &Arc<Staged> {
        &self.staged
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

    /// Queues a read of what the file holds now (a file opened for reading and writing).
    pub fn read(
        &self,
        offset: u64,
        size: u32,
    ) -> impl Future<Output = FsResult<Bytes>> + Send + 'static + use<> {
        ask(&self.requests, move |reply| WriteRequest::Read {
            offset,
            size,
            reply,
        })
    }

    /// Queues a truncation (or extension) to `size`.
    pub fn truncate(
        &self,
        size: u64,
    ) -> impl Future<Output = FsResult<()>> + Send + 'static + use<> {
        ask(&self.requests, move |reply| WriteRequest::Truncate {
            size,
            reply,
        })
    }

    /// Queues a change of the mode or time the content is pushed with.
    pub fn set_attributes(
        &self,
        mode: Option<u32>,
        modified: Option<std::time::SystemTime>,
    ) -> impl Future<Output = FsResult<()>> + Send + 'static + use<> {
        ask(&self.requests, move |reply| WriteRequest::SetAttributes {
            mode,
            modified,
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

/// Fetches `from` into `staged` (emptied first): what a copy-up does, and what a `chmod` of
/// an image the mount no longer holds does before publishing again.
pub async fn fetch_into(
    registry: &dyn Registry,
    from: &CopyUp,
    staged: &Staged,
) -> reposure_registry::Result<()> {
    staged.truncate(0)?;
    let length = from.content.length();
    let mut stream = registry
        .read(&from.repository, &from.content, 0, length)
        .await?;
    while let Some(chunk) = stream.next().await {
        staged.append(&chunk?)?;
    }
    staged.adopt(from.attributes);
    info!(
        repository = %from.repository,
        bytes = length,
        "fetched the content to change it in place"
    );
    Ok(())
}

struct Writer {
    registry: Arc<dyn Registry>,
    publisher: Arc<Publisher>,
    destination: Destination,
    staged: Arc<Staged>,
    /// The image content the file starts from, until it is fetched (or truncated away).
    copy_up: Option<CopyUp>,
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

    /// Fetches the content the file starts from, if it was not yet: from the content of
    /// the mount's own push of that version moments ago, or else from the registry.
    async fn copy_up(&mut self) -> FsResult<()> {
        let Some(from) = &self.copy_up else {
            return Ok(());
        };
        let recent = match &self.destination {
            Destination::Image(name) => self.publisher.recent(name, &from.digest),
            Destination::Local => None,
        };
        if let Some(recent) = recent {
            self.staged.copy_from(&recent).map_err(FsError::Spool)?;
            self.staged.adopt(from.attributes);
            self.copy_up = None;
            return Ok(());
        }
        if let Err(e) = fetch_into(self.registry.as_ref(), from, &self.staged).await {
            // Fetched in part: nothing of it may stand for the file; the next access tries
            // again from the start.
            let _ = self.staged.truncate(0);
            warn!(error = %e, "cannot fetch the content to change it in place");
            return Err(e.into());
        }
        self.copy_up = None;
        Ok(())
    }

    async fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.check_spool()?;
        self.copy_up().await?;
        self.staged
            .write_at(offset, data)
            .map_err(|e| self.spool_failed(e))?;
        self.mark_dirty();
        Ok(data.len() as u32)
    }

    async fn read(&mut self, offset: u64, size: u32) -> FsResult<Bytes> {
        self.check_spool()?;
        self.copy_up().await?;
        self.staged.read_at(offset, size).map_err(FsError::Spool)
    }

    async fn truncate(&mut self, size: u64) -> FsResult<()> {
        if size == 0 {
            // The old content is gone whatever it was: nothing to fetch, and the spool holds
            // exactly what was written again: nothing.
            self.copy_up = None;
            self.spool_failure = None;
        } else {
            self.check_spool()?;
            self.copy_up().await?;
        }
        self.staged
            .truncate(size)
            .map_err(|e| self.spool_failed(e))?;
        // A truncation to the current size (say, `: > file`) still means "this is the new
        // content".
        self.mark_dirty();
        Ok(())
    }

    /// Records the mode or time to push with: a change the next push carries (the content
    /// is fetched first if it was not yet, so the image pushed is whole).
    async fn set_attributes(
        &mut self,
        mode: Option<u32>,
        modified: Option<std::time::SystemTime>,
    ) -> FsResult<()> {
        // What the content already has changes nothing (`touch -d` of the time it has).
        if mode.is_none_or(|m| m & 0o7777 == self.staged.mode())
            && modified.is_none_or(|t| t == self.staged.modified())
        {
            return Ok(());
        }
        self.copy_up().await?;
        if let Some(mode) = mode {
            self.staged.set_mode(mode);
        }
        if let Some(modified) = modified {
            self.staged.set_modified(modified);
        }
        self.mark_dirty();
        Ok(())
    }

    /// Pushes the content if it changed since the last push; fails at once if the spool
    /// lost part of it.
    ///
    /// A `close()` while the file is empty publishes nothing: programs that `dup` a
    /// descriptor (`dd of=`, a shell's `>`) close one copy before writing, and an empty image
    /// pushed then would briefly replace the tag. An empty file (created, or truncated,
    /// and never written) is published when its last descriptor is released instead. A
    /// release does not retry a publish that failed: close() already reported that failure.
    async fn publish(&mut self, trigger: Trigger) -> FsResult<()> {
        self.check_spool()?;
        let size = self.staged.size();
        if !self.dirty || (trigger != Trigger::Release && size == 0) {
            return Ok(());
        }
        let Destination::Image(name) = &self.destination else {
            if trigger == Trigger::Close {
                info!(
                    size,
                    "kept on the mount's disk, not pushed: the name cannot be a registry name; rename the file onto one to push it"
                );
            }
            return Ok(());
        };
        let started = std::time::Instant::now();
        match self.publisher.publish(name, &self.staged).await {
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
