//! Reading an open image: one actor per open file.
//!
//! The kernel sends reads of one file concurrently (asynchronous read-ahead), but a
//! registry blob is best read as one stream. Each open file therefore gets a task that
//! takes its reads in the order the kernel sent them (they are queued synchronously from
//! the FUSE dispatch thread) and serves them from a cursor:
//!
//! * A read at offset 0 opens a stream of the **whole blob**, verified against its digest:
//!   the read that reaches the end of the file fails with EIO if the content was corrupt.
//! * A read elsewhere opens a Range request for a small window ([`FIRST_WINDOW`]); while
//!   reads stay sequential the next window doubles up to [`MAX_WINDOW`], so a random 4 KiB
//!   read costs one small request and a long scan costs few requests.
//! * A background task pulls each stream ahead of the reader into a bounded queue
//!   ([`PREFETCH_CHUNKS`]), which is the read-ahead.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reposure_surrogate::registry::{FileContent, Registry};
use reposure_surrogate::{ByteStream, RegistryError};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, warn};

use crate::actor::ask;
use crate::errno::{FsError, FsResult};

/// The first Range window after a seek: small enough that a random 4 KiB read fetches well
/// under 1 MiB, large enough to cover a kernel read-ahead burst.
pub const FIRST_WINDOW: u64 = 256 * 1024;

/// The largest Range window: big enough that the per-request cost vanishes next to the
/// transfer on a fast link.
pub const MAX_WINDOW: u64 = 64 * 1024 * 1024;

/// Chunks queued ahead of the reader per open file. Network chunks are at most a few tens
/// of KiB and layout chunks 256 KiB, so this bounds read-ahead memory per file to a few MiB
/// (16 MiB at worst).
pub const PREFETCH_CHUNKS: usize = 64;

struct ReadRequest {
    offset: u64,
    size: u32,
    reply: oneshot::Sender<FsResult<Bytes>>,
}

/// An open file being read.
pub struct ReadHandle {
    requests: mpsc::UnboundedSender<ReadRequest>,
}

impl ReadHandle {
    /// Starts the actor for one open file.
    pub fn spawn(registry: Arc<dyn Registry>, repository: String, content: FileContent) -> Self {
        let (requests, mut queue) = mpsc::unbounded_channel::<ReadRequest>();
        let span = tracing::info_span!("read_handle", repository = %repository);
        let mut reader = Reader {
            registry,
            repository,
            content,
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
    /// Whether the stream covers the whole blob and is verified.
    verified: bool,
    /// Size of the next window when this one runs out.
    next_window: u64,
    leftover: Bytes,
    chunks: mpsc::Receiver<Result<Bytes, RegistryError>>,
}

struct Reader {
    registry: Arc<dyn Registry>,
    repository: String,
    content: FileContent,
    cursor: Option<Cursor>,
    /// Set once the content failed verification: every later read of this handle fails
    /// too, so a retry at another offset (the kernel retries failed read-ahead page by
    /// page) cannot return unverified bytes of a blob known to be bad.
    corrupt: Option<String>,
}

/// Pulls a stream into a bounded queue from a task of its own.
fn prefetch(mut stream: ByteStream) -> mpsc::Receiver<Result<Bytes, RegistryError>> {
    let (tx, rx) = mpsc::channel(PREFETCH_CHUNKS);
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
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
            .registry
            .read(&self.repository, &self.content, offset, end - offset)
            .await?;
        Ok(Cursor {
            pos: offset,
            end,
            verified,
            next_window: (window * 2).min(MAX_WINDOW),
            leftover: Bytes::new(),
            chunks: prefetch(stream),
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
                continue;
            }
            match cursor.chunks.recv().await {
                Some(Ok(chunk)) => cursor.leftover = chunk,
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
        }
        Ok(out.freeze())
    }
}
