//! Reading an open image: one actor per open file.
//!
//! The kernel sends reads of one file concurrently (asynchronous read-ahead), but a
//! registry blob is best read as one stream. Each open file therefore gets a task that
//! takes its reads in the order the kernel sent them (they are queued synchronously from
//! the FUSE dispatch thread) and serves them from a cursor:
//!
//! * A read at offset 0 opens a stream of the **whole content**, verified against its
//!   digest: the read that reaches the end of the file fails with EIO if the content was
//!   corrupt. With a disk cache, that verified stream is also kept there.
//! * A read elsewhere opens a Range request for a small window ([`FIRST_WINDOW`]); while
//!   reads stay sequential the next window doubles up to [`MAX_WINDOW`], so a random 4 KiB
//!   read costs one small request and a long scan costs few requests.
//! * A background task pulls each stream ahead of the reader into a queue, which is the
//!   read-ahead. The bytes queued by all open files together are bounded by one budget
//!   ([`ReadBudget`]).
//! * Content found in the disk cache is read from there, with no request at all.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reposure_registry::operations::{FileContent, Registry};
use reposure_registry::{ByteStream, RegistryError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{Instrument, warn};

use crate::actor::ask;
use crate::cache::{self, DiskCache, Fill};
use crate::errno::{FsError, FsResult};

/// The first Range window after a seek: small enough that a random 4 KiB read fetches well
/// under 1 MiB, large enough to cover a kernel read-ahead burst.
pub const FIRST_WINDOW: u64 = 256 * 1024;

/// The largest Range window: big enough that the per-request cost vanishes next to the
/// transfer on a fast link.
pub const MAX_WINDOW: u64 = 64 * 1024 * 1024;

/// Most chunks queued ahead of one reader (the byte budget usually binds first).
const PREFETCH_CHUNKS: usize = 128;

/// How often a read-ahead task waiting for budget looks again.
const BUDGET_RETRY: Duration = Duration::from_millis(5);

/// The bytes all open files may hold in their read-ahead queues together. A reader whose
/// queue is empty may always take one chunk more, so no reader ever waits on another's
/// idle buffer: the total stays under the budget plus one chunk per reader.
#[derive(Clone)]
pub struct ReadBudget {
    kib: Arc<Semaphore>,
}

impl ReadBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        Self {
            kib: Arc::new(Semaphore::new((bytes / 1024).max(1) as usize)),
        }
    }

    fn try_take(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let kib = len.div_ceil(1024).max(1) as u32;
        self.kib.clone().try_acquire_many_owned(kib).ok()
    }
}

/// A queued chunk and the budget it holds until consumed.
type Queued = Result<(Bytes, Option<OwnedSemaphorePermit>), RegistryError>;

struct ReadRequest {
    offset: u64,
    size: u32,
    reply: oneshot::Sender<FsResult<Bytes>>,
}

/// An open file being read.
pub struct ReadHandle {
    requests: mpsc::UnboundedSender<ReadRequest>,
}

/// What a reader needs besides its file.
#[derive(Clone)]
pub struct ReadContext {
    pub registry: Arc<dyn Registry>,
    pub budget: ReadBudget,
    pub cache: Option<Arc<DiskCache>>,
}

impl ReadHandle {
    /// Starts the actor for one open file.
    pub fn spawn(context: ReadContext, repository: String, content: FileContent) -> Self {
        let (requests, mut queue) = mpsc::unbounded_channel::<ReadRequest>();
        let span = tracing::info_span!("read_handle", repository = %repository);
        let key = cache::key(&content);
        let cached = context.cache.as_ref().and_then(|c| c.get(&key));
        let mut reader = Reader {
            context,
            repository,
            content,
            key,
            cached,
            cursor: None,
            corrupt: None,
        };
        tokio::spawn(
            async move {
                while let Some(request) = queue.recv().await {
                    let result = reader.read(request.offset, request.size).await;
                    let _ = request.reply.send(result);
                }
            }
            .instrument(span),
        );
        Self { requests }
    }

    /// Queues a read now (so order is kept) and returns its answer.
    pub fn read(
        &self,
        offset: u64,
        size: u32,
    ) -> impl Future<Output = FsResult<Bytes>> + Send + 'static + use<> {
        ask(&self.requests, move |reply| ReadRequest {
            offset,
            size,
            reply,
        })
    }
}

struct Cursor {
    /// File offset of the next byte the cursor yields.
    pos: u64,
    /// File offset where this cursor's stream ends.
    end: u64,
    /// Whether the stream covers the whole content and is verified.
    verified: bool,
    /// Size of the next window when this one runs out.
    next_window: u64,
    leftover: Bytes,
    /// The budget the leftover chunk holds.
    _leftover_permit: Option<OwnedSemaphorePermit>,
    chunks: mpsc::Receiver<Queued>,
    /// The disk cache entry this verified stream fills.
    fill: Option<Fill>,
}

struct Reader {
    context: ReadContext,
    repository: String,
    content: FileContent,
    key: String,
    /// The content from the disk cache, when it is there.
    cached: Option<std::fs::File>,
    cursor: Option<Cursor>,
    /// Set once the content failed verification: every later read of this handle fails
    /// too, so a retry at another offset (the kernel retries failed read-ahead page by
    /// page) cannot return unverified bytes of a blob known to be bad.
    corrupt: Option<String>,
}

/// Pulls a stream into a queue from a task of its own, within the shared budget.
fn prefetch(mut stream: ByteStream, budget: ReadBudget) -> mpsc::Receiver<Queued> {
    let (tx, rx) = mpsc::channel(PREFETCH_CHUNKS);
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let queued = match item {
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
                Ok(chunk) => loop {
                    if let Some(permit) = budget.try_take(chunk.len()) {
                        break Ok((chunk, Some(permit)));
                    }
                    if tx.capacity() == tx.max_capacity() {
                        // The reader has nothing queued: give it this chunk anyway.
                        break Ok((chunk, None));
                    }
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(BUDGET_RETRY).await;
                },
            };
            if tx.send(queued).await.is_err() {
                break;
            }
        }
    });
    rx
}

impl Reader {
    async fn open_cursor(&self, offset: u64, window: u64) -> FsResult<Cursor> {
        let length = self.content.length();
        let (end, verified) = if offset == 0 {
            (length, true)
        } else {
            ((offset + window).min(length), false)
        };
        let stream = self
            .context
            .registry
            .read(&self.repository, &self.content, offset, end - offset)
            .await?;
        let fill = match (&self.context.cache, verified) {
            (Some(cache), true) => cache.fill(&self.key),
            _ => None,
        };
        Ok(Cursor {
            pos: offset,
            end,
            verified,
            next_window: (window * 2).min(MAX_WINDOW),
            leftover: Bytes::new(),
            _leftover_permit: None,
            chunks: prefetch(stream, self.context.budget.clone()),
            fill,
        })
    }

    async fn read(&mut self, offset: u64, size: u32) -> FsResult<Bytes> {
        let length = self.content.length();
        if offset >= length || size == 0 {
            return Ok(Bytes::new());
        }
        if let Some(reason) = &self.corrupt {
            return Err(RegistryError::Corrupt(reason.clone()).into());
        }
        let want = u64::from(size).min(length - offset) as usize;
        if let Some(file) = &self.cached {
            let mut buffer = vec![0u8; want];
            tokio::task::block_in_place(|| file.read_exact_at(&mut buffer, offset))
                .map_err(|e| FsError::Registry(e.into()))?;
            return Ok(Bytes::from(buffer));
        }
        let result = self.read_at(offset, want).await;
        if let Err(error) = &result {
            self.cursor = None;
            if let FsError::Registry(RegistryError::Corrupt(reason)) = error {
                self.corrupt = Some(reason.clone());
            }
        }
        result
    }

    async fn read_at(&mut self, offset: u64, want: usize) -> FsResult<Bytes> {
        if self.cursor.as_ref().is_none_or(|c| c.pos != offset) {
            self.cursor = Some(self.open_cursor(offset, FIRST_WINDOW).await?);
        }
        let mut out = BytesMut::with_capacity(want);
        while out.len() < want {
            let cursor = self.cursor.as_mut().expect("cursor");
            if !cursor.leftover.is_empty() {
                let take = (want - out.len()).min(cursor.leftover.len());
                out.extend_from_slice(&cursor.leftover.split_to(take));
                cursor.pos += take as u64;
                if cursor.leftover.is_empty() {
                    cursor._leftover_permit = None;
                }
                continue;
            }
            match cursor.chunks.recv().await {
                Some(Ok((chunk, permit))) => {
                    if let Some(fill) = cursor.fill.as_mut() {
                        tokio::task::block_in_place(|| fill.write(&chunk));
                    }
                    cursor.leftover = chunk;
                    cursor._leftover_permit = permit;
                }
                Some(Err(e)) => return Err(e.into()),
                None if cursor.pos < cursor.end => {
                    return Err(RegistryError::Corrupt(format!(
                        "stream ended at {} of {} bytes",
                        cursor.pos, cursor.end
                    ))
                    .into());
                }
                None => {
                    // This window is used up and reads are still sequential: open the next,
                    // larger one.
                    let (pos, window) = (cursor.pos, cursor.next_window);
                    self.cursor = Some(self.open_cursor(pos, window).await?);
                }
            }
        }
        let cursor = self.cursor.as_mut().expect("cursor");
        if cursor.verified && cursor.pos == self.content.length() {
            // The last bytes of the file: hear the end of the verified stream before
            // answering, so corruption fails this read instead of passing silently.
            while let Some(item) = cursor.chunks.recv().await {
                if let Err(e) = item {
                    warn!(error = %e, "content failed verification");
                    return Err(e.into());
                }
            }
            if let Some(fill) = cursor.fill.take() {
                tokio::task::block_in_place(|| fill.commit());
            }
        }
        Ok(out.freeze())
    }
}
