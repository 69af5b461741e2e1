//! The spool: a directory where accepted pushes wait, durably, until they are published.
//!
//! Guarantees (documented for users in `surrogate/PROTOCOL.md`):
//!
//! * A push is *accepted* only once its content is complete, fsynced, and matches the
//!   digest the client declared: it arrives in a file with no name ([`Scratch`]), so an
//!   upload cut short leaves nothing behind; its request is written as `ID.push.json`, and
//!   only then is the content named `ID.push` (and the directory fsynced).
//! * While it arrives, the session also uploads the content to the registry (the direct
//!   upload, so a push costs one pass instead of spool, read back, upload). That upload's
//!   body ends only once the entry is accepted, so the registry commits nothing the spool
//!   refused; the session [claims](claim) the entry meanwhile, and once the manifest is
//!   committed records it as published and removes it. A failed direct upload, or a session
//!   that dies, leaves the entry to the spooler.
//! * The spooler publishes every `ID.push` nobody claims and records a verdict in
//!   `ID.verdict`: the manifest digest, or the registry's error. On success the entry is
//!   removed; on failure the content stays as `ID.failed` beside its request and verdict,
//!   never deleted.
//! * Entries present after a crash are published after restart, exactly once: an entry
//!   whose verdict already says "published" is only cleaned up, and republishing an entry
//!   whose verdict was lost makes the same manifest (its creation time is fixed at
//!   acceptance), so the registry ends in the same state either way.
//! * The session's push answers only once the manifest is committed: by its direct upload,
//!   or by the spooler (the verdict).
//!
//! Files dropped the original way (`kubectl cp`, the Go client) are published too: see
//! [`legacy`], and [`kubectl_cp`] for the `tar` that `kubectl cp` needs.

pub mod claim;
pub mod kubectl_cp;
pub mod legacy;
pub mod spooler;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use claim::Claim;

use crate::session::wire::{PushRequest, WireError};
use bytes::Bytes;
use reposure_registry::ByteStream;
use reposure_registry::digest::Digest;
use reposure_registry::error::{RegistryError, Result};
use reposure_registry::operations::{FileUpload, Registry};
use reposure_registry::scratch::Scratch;

/// Lock file the spooler holds while it runs.
pub const LOCK_FILE: &str = ".spooler.lock";

/// How long a waiting push tolerates the spooler being gone before it answers with an
/// error (the entry stays and is published when a spooler runs again).
const SPOOLER_GONE_GRACE: Duration = Duration::from_secs(5);

/// Pieces of content queued between the spool and the direct upload: the upload may lag
/// the spool by this many pieces (each up to the session's 1 MiB frame) before the
/// spool waits for it.
const DIRECT_UPLOAD_QUEUE: usize = 8;

/// Bytes received between two starts of the spool file's writeback. The final fsync then
/// has little left to write, so the direct upload, whose body waits for it, is not silent
/// for long (a registry or its proxy may give up on a silent upload).
const WRITEBACK_EVERY: u64 = 64 * 1024 * 1024;

/// Starts writing `length` bytes of `file` from `offset` to disk, without waiting.
fn start_writeback(file: &std::fs::File, offset: u64, length: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on a descriptor we own, with SYNC_FILE_RANGE_WRITE only: it
    // starts writeback of that range and returns; it changes no data. A failure (another
    // kernel, another filesystem) only leaves the work to the final fsync.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            length as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// A waiting push looks for its verdict first after this long, then twice as long each
/// time up to [`VERDICT_POLL_MAX`]: small pushes are answered within milliseconds of their
/// publication, long ones cost a check every quarter second.
const VERDICT_POLL_MIN: Duration = Duration::from_millis(2);
const VERDICT_POLL_MAX: Duration = Duration::from_millis(250);

/// A push as recorded in `ID.push.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpooledPush {
    pub request: PushRequest,
    /// Fixed at acceptance so that a republish makes the same manifest.
    pub created: DateTime<Utc>,
    /// sha256 of the content.
    pub content_digest: Digest,
}

/// The outcome of publishing an entry, as recorded in `ID.verdict`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Published {
        digest: Digest,
    },
    /// A delete of the original's file protocol (`NAME!`) was done.
    Deleted,
    Failed {
        error: WireError,
    },
}

/// Paths of one entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub id: String,
}

impl Entry {
    pub fn data(&self) -> PathBuf {
        self.dir.join(format!("{}.push", self.id))
    }
    pub fn request(&self) -> PathBuf {
        self.dir.join(format!("{}.push.json", self.id))
    }
    pub fn verdict(&self) -> PathBuf {
        self.dir.join(format!("{}.verdict", self.id))
    }
    pub fn failed(&self) -> PathBuf {
        self.dir.join(format!("{}.failed", self.id))
    }
}

/// Writes a small file atomically: temp, fsync, rename, fsync the directory.
pub async fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("spool paths have a parent");
    let temp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry")
    ));
    let mut file = tokio::fs::File::create(&temp).await?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    tokio::fs::rename(&temp, path).await?;
    sync_dir(dir).await
}

/// fsync of a directory, so renames in it survive a crash.
pub async fn sync_dir(dir: &Path) -> Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(|e| RegistryError::Io(std::io::Error::other(e)))??;
    Ok(())
}

fn lock_file(dir: &Path) -> Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?)
}

/// Whether a spooler holds the lock on `dir`.
pub fn spooler_running(dir: &Path) -> bool {
    let Ok(file) = lock_file(dir) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; LOCK_NB never blocks. The shared lock, if
    // taken, goes away when `file` is closed at the end of this function.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
}

/// Takes the spooler lock on `dir`, failing if another spooler holds it. The lock lasts as
/// long as the returned file is open.
pub fn take_spooler_lock(dir: &Path) -> Result<std::fs::File> {
    let file = lock_file(dir)?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; LOCK_NB never blocks.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(RegistryError::Rejected(format!(
            "another spooler is already running on {}",
            dir.display()
        )));
    }
    Ok(file)
}

/// The session side of a spool: accepts pushes into the directory and waits for their
/// verdicts.
pub struct Spool {
    dir: PathBuf,
    verdict_timeout: Duration,
}

impl Spool {
    /// A spool on `dir` (created if missing). `verdict_timeout` bounds how long a push waits
    /// for the spooler.
    pub fn open(dir: impl Into<PathBuf>, verdict_timeout: Duration) -> Result<Arc<Self>> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(Self {
            dir,
            verdict_timeout,
        }))
    }

    /// Accepts a push and answers once it is published.
    ///
    /// The content goes to the spool and, as it arrives, to `registry` too: the spool
    /// accepts it durably, and the direct upload commits it only after that (its body
    /// ends when the entry is named). The entry is [claimed](claim) meanwhile; once the
    /// registry has the manifest the entry is removed. If the direct upload fails, the
    /// claim is let go and the spooler publishes the entry as any other, from the spool.
    pub async fn push(
        &self,
        registry: &dyn Registry,
        request: &PushRequest,
        body: ByteStream,
    ) -> Result<Digest> {
        if !spooler_running(&self.dir) {
            return Err(RegistryError::Unavailable(format!(
                "no spooler is running on {}; start `reposure-surrogate spooler --directory {}`",
                self.dir.display(),
                self.dir.display()
            )));
        }
        let id = format!(
            "{}-{:08x}",
            Utc::now().format("%Y%m%dT%H%M%S%.6f"),
            rand::random::<u32>()
        );
        let entry = Entry {
            dir: self.dir.clone(),
            id,
        };
        // Fixed now, so that the spooler, publishing the entry after a failed or
        // interrupted direct upload, makes the very same manifest.
        let created = Utc::now();
        let (tee, upload_body) = tokio::sync::mpsc::channel(DIRECT_UPLOAD_QUEUE);
        let direct = registry.push_file(
            &request.repository,
            &request.tag,
            FileUpload {
                file_name: request.file_name.clone(),
                size: request.size,
                format: request.format,
                created: Some(created),
                attributes: request.attributes,
                body: received(upload_body),
            },
        );
        let (accepted, published) =
            tokio::join!(self.receive(&entry, request, created, body, tee), direct);
        let claim = match accepted {
            Ok(claim) => claim,
            Err(e) => {
                let _ = tokio::fs::remove_file(entry.request()).await;
                return Err(e);
            }
        };
        info!(entry = %entry.id, repository = %request.repository, tag = %request.tag, "push accepted into the spool");
        match published {
            Ok(digest) => {
                // The verdict first: an entry left behind (a failed removal, a session that
                // dies now) is then only cleaned up by the spooler, never published again
                // over a newer push to the same tag.
                let verdict = Verdict::Published {
                    digest: digest.clone(),
                };
                write_durably(
                    &entry.verdict(),
                    &serde_json::to_vec(&verdict).expect("serialises"),
                )
                .await?;
                for done in [entry.data(), entry.request(), entry.verdict()] {
                    if let Err(e) = tokio::fs::remove_file(&done).await {
                        warn!(entry = %entry.id, error = %e, "cannot remove a published entry's file; the spooler cleans it up");
                        break;
                    }
                }
                drop(claim);
                Ok(digest)
            }
            Err(e) => {
                warn!(entry = %entry.id, error = %e, "the direct upload failed; the spooler publishes the entry");
                drop(claim);
                self.wait_for_verdict(&entry).await
            }
        }
    }

    /// Receives the content into the spool, passing each piece on to `tee` (while the
    /// direct upload takes them); returns the claim on the named entry. `tee` gets an
    /// error if the content is refused, and its end only once the entry is accepted.
    async fn receive(
        &self,
        entry: &Entry,
        request: &PushRequest,
        created: DateTime<Utc>,
        mut body: ByteStream,
        tee: tokio::sync::mpsc::Sender<Result<Bytes>>,
    ) -> Result<Claim> {
        let accepted = async {
            // The content has no name until it is complete and synced: a session killed
            // while receiving leaves nothing in the spool.
            let scratch = Scratch::new_in(&self.dir)?;
            let claim = Claim::hold(scratch.file())?;
            let mut file = tokio::fs::File::from_std(scratch.file().try_clone()?);
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            let mut tee = Some(&tee);
            let mut received = 0u64;
            let mut flushed = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                sha2::Digest::update(&mut hasher, &chunk);
                file.write_all(&chunk).await?;
                received += chunk.len() as u64;
                if received - flushed >= WRITEBACK_EVERY {
                    start_writeback(scratch.file(), flushed, received - flushed);
                    flushed = received;
                }
                // A direct upload that gave up takes no more; the spool still does.
                if let Some(sender) = tee
                    && sender.send(Ok(chunk)).await.is_err()
                {
                    tee = None;
                }
            }
            file.sync_all().await?;
            drop(file);
            let spooled = SpooledPush {
                request: request.clone(),
                created,
                content_digest: Digest::from_hasher(hasher),
            };
            write_durably(
                &entry.request(),
                &serde_json::to_vec(&spooled).expect("serialises"),
            )
            .await?;
            let data = entry.data();
            tokio::task::spawn_blocking(move || scratch.persist(&data))
                .await
                .map_err(|e| RegistryError::Io(std::io::Error::other(e)))??;
            sync_dir(&self.dir).await?;
            Ok(claim)
        }
        .await;
        if let Err(e) = &accepted {
            // The direct upload must not commit what the spool refused.
            let _ = tee
                .send(Err(RegistryError::Rejected(format!(
                    "the content was not accepted: {e}"
                ))))
                .await;
        }
        accepted
    }

    async fn wait_for_verdict(&self, entry: &Entry) -> Result<Digest> {
        let started = Instant::now();
        let mut spooler_gone_since: Option<Instant> = None;
        let mut poll = VERDICT_POLL_MIN;
        loop {
            match tokio::fs::read(entry.verdict()).await {
                Ok(bytes) => {
                    let verdict: Verdict = serde_json::from_slice(&bytes).map_err(|e| {
                        RegistryError::Corrupt(format!("verdict of {}: {e}", entry.id))
                    })?;
                    if matches!(verdict, Verdict::Published { .. }) {
                        let _ = tokio::fs::remove_file(entry.verdict()).await;
                    }
                    return match verdict {
                        Verdict::Published { digest } => Ok(digest),
                        Verdict::Failed { error } => Err(error.into()),
                        Verdict::Deleted => Err(RegistryError::Corrupt(format!(
                            "the verdict of push {} says deleted",
                            entry.id
                        ))),
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            if spooler_running(&self.dir) {
                spooler_gone_since = None;
            } else if spooler_gone_since
                .get_or_insert_with(Instant::now)
                .elapsed()
                > SPOOLER_GONE_GRACE
            {
                return Err(RegistryError::Unavailable(format!(
                    "the spooler stopped before publishing; the upload is kept as {} and is published when a spooler runs again",
                    entry.data().display()
                )));
            }
            if started.elapsed() > self.verdict_timeout {
                return Err(RegistryError::Unavailable(format!(
                    "no verdict for {} after {}s; it stays in the spool",
                    entry.id,
                    self.verdict_timeout.as_secs()
                )));
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(VERDICT_POLL_MAX);
        }
    }
}

/// The pieces a direct upload takes, as its body.
fn received(pieces: tokio::sync::mpsc::Receiver<Result<Bytes>>) -> ByteStream {
    futures::stream::unfold(pieces, |mut pieces| async move {
        pieces.recv().await.map(|piece| (piece, pieces))
    })
    .boxed()
}
