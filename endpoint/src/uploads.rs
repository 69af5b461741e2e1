//! Blob uploads under way: each one a blob being put to the store while its bytes arrive.
//!
//! docker, podman and skopeo upload a layer as `POST` (start), one or more `PATCH`es (the
//! bytes, often the whole layer in one streamed request of unknown length) and `PUT
//! ?digest=` (the end). The store's `put_blob` takes a stream and computes the digest as
//! it goes, so the first byte of an upload starts a `put_blob` fed through a small bounded
//! channel: nothing is buffered beyond [`CHANNEL_CHUNKS`] chunks, and a slow registry slows
//! the client through TCP.
//!
//! The digest the client names at the end is checked against the bytes received *before*
//! the stream to the store ends: on a mismatch, or a client that goes away, the stream ends
//! in an error, and the store leaves no blob behind. So an upload cut by a lost session or
//! a dropped connection fails, and the client's retry starts a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use reposure_registry::digest::Digest;
use reposure_registry::error::{RegistryError, Result};
use reposure_registry::store::Store;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks in flight between the client's request and the store's upload.
const CHANNEL_CHUNKS: usize = 8;

/// An upload nobody touched for this long is dropped (its blob is never made).
pub const IDLE_LIMIT: Duration = Duration::from_secs(15 * 60);

/// The uploads under way, by id.
#[derive(Default)]
pub struct Uploads {
    uploads: Mutex<HashMap<String, Arc<Upload>>>,
}

/// One upload.
pub struct Upload {
    pub repository: String,
    state: tokio::sync::Mutex<State>,
    last_used: Mutex<Instant>,
}

/// Where an upload stands. Dropping it (an upload forgotten, the endpoint stopped) aborts
/// the store's upload, so nothing unfinished is ever stored.
#[derive(Default)]
struct State {
    received: u64,
    hasher: Sha256,
    sender: Option<mpsc::Sender<Result<Bytes>>>,
    task: Option<JoinHandle<Result<(Digest, u64)>>>,
    /// Set when the upload ended, finished or failed: every later request to it is refused.
    ended: Option<String>,
}

impl Uploads {
    /// Starts an upload to `repository`; returns its id. Uploads idle for [`IDLE_LIMIT`]
    /// (none of their requests under way) are forgotten.
    pub fn start(&self, repository: &str) -> (String, Arc<Upload>) {
        use rand::Rng;
        let id: String = (0..32)
            .map(|_| char::from_digit(rand::rng().random_range(0..16), 16).expect("hex"))
            .collect();
        let upload = Arc::new(Upload {
            repository: repository.to_owned(),
            state: tokio::sync::Mutex::new(State::default()),
            last_used: Mutex::new(Instant::now()),
        });
        let mut uploads = self.uploads.lock().expect("uploads lock");
        uploads.retain(|_, u| u.in_use() || u.idle() < IDLE_LIMIT);
        uploads.insert(id.clone(), upload.clone());
        (id, upload)
    }

    /// The upload `id` of `repository`.
    pub fn get(&self, repository: &str, id: &str) -> Option<Arc<Upload>> {
        let uploads = self.uploads.lock().expect("uploads lock");
        let upload = uploads
            .get(id)
            .filter(|u| u.repository == repository)?
            .clone();
        upload.touch();
        Some(upload)
    }

    /// Forgets upload `id` (finished, failed or cancelled).
    pub fn remove(&self, id: &str) {
        self.uploads.lock().expect("uploads lock").remove(id);
    }
}

impl Upload {
    fn touch(&self) {
        *self.last_used.lock().expect("lock") = Instant::now();
    }

    fn idle(&self) -> Duration {
        self.last_used.lock().expect("lock").elapsed()
    }

    /// Whether a request is working on it now.
    fn in_use(&self) -> bool {
        self.state.try_lock().is_err()
    }

    /// Bytes received so far.
    pub async fn received(&self) -> u64 {
        self.state.lock().await.received
    }

    /// Appends the chunks of `body` (a request body); returns the bytes received in all.
    pub async fn append(
        &self,
        store: &Arc<dyn Store>,
        mut body: impl futures::Stream<Item = Result<Bytes>> + Unpin,
    ) -> Result<u64> {
        let mut state = self.state.lock().await;
        state.refuse_if_ended()?;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let message = format!("the upload was cut off: {e}");
                    state.fail(message.clone()).await;
                    return Err(RegistryError::Unavailable(message));
                }
            };
            if chunk.is_empty() {
                continue;
            }
            self.touch();
            let sender = state.sender(store, &self.repository);
            let length = chunk.len() as u64;
            state.hasher.update(&chunk);
            if sender.send(Ok(chunk)).await.is_err() {
                // The store's upload ended early: its error says why.
                let error =
                    state.outcome().await.err().unwrap_or_else(|| {
                        RegistryError::Unavailable("the upload ended early".into())
                    });
                state.ended = Some(error.to_string());
                return Err(error);
            }
            state.received += length;
        }
        Ok(state.received)
    }

    /// Ends the upload as the blob `expected`: the store's upload completes only if the
    /// bytes received have that digest. The upload takes no request after this.
    pub async fn finish(&self, store: &Arc<dyn Store>, expected: &Digest) -> Result<u64> {
        let mut state = self.state.lock().await;
        state.refuse_if_ended()?;
        // An empty blob: the store's upload starts only now.
        state.sender(store, &self.repository);
        let actual = Digest::from_hasher(std::mem::take(&mut state.hasher));
        if actual != *expected {
            let message = format!("the bytes uploaded have digest {actual}, not {expected}");
            state.fail(message.clone()).await;
            return Err(RegistryError::Corrupt(message));
        }
        let outcome = state.outcome().await;
        state.ended = Some("this upload has ended".into());
        let (digest, size) = outcome?;
        if digest != *expected {
            return Err(RegistryError::Corrupt(format!(
                "the store computed {digest} for an upload of {expected}"
            )));
        }
        Ok(size)
    }

    /// Cancels the upload: nothing is stored.
    pub async fn cancel(&self) {
        self.state.lock().await.fail("cancelled".into()).await;
    }
}

impl State {
    fn refuse_if_ended(&self) -> Result<()> {
        match &self.ended {
            Some(why) => Err(RegistryError::Rejected(why.clone())),
            None => Ok(()),
        }
    }

    /// The channel to the store's upload, starting it on first use.
    fn sender(&mut self, store: &Arc<dyn Store>, repository: &str) -> mpsc::Sender<Result<Bytes>> {
        if let Some(sender) = &self.sender {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
        let (store, repository) = (store.clone(), repository.to_owned());
        self.task = Some(tokio::spawn(async move {
            let body = tokio_stream_of(receiver);
            store.put_blob(&repository, body).await
        }));
        self.sender = Some(sender.clone());
        sender
    }

    /// The store's upload's result, once its stream ended.
    async fn outcome(&mut self) -> Result<(Digest, u64)> {
        self.sender = None;
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| RegistryError::Unavailable(format!("the upload task failed: {e}")))?,
            None => Err(RegistryError::Rejected("no upload under way".into())),
        }
    }

    /// Stops the store's upload without completing it, and marks the upload ended.
    async fn fail(&mut self, message: String) {
        if let Some(task) = self.abort() {
            // Returns at once: the task was aborted.
            let _ = task.await;
        }
        self.sender = None;
        self.ended = Some(message);
    }

    /// Ends the store's stream in an error and aborts its task, whose stream then never
    /// ends cleanly; the sender is dropped only after.
    fn abort(&mut self) -> Option<JoinHandle<Result<(Digest, u64)>>> {
        if let Some(sender) = &self.sender {
            let _ = sender.try_send(Err(RegistryError::Rejected("upload abandoned".into())));
        }
        let task = self.task.take()?;
        task.abort();
        Some(task)
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.abort();
    }
}

/// The receiving end of the channel as the store's body stream.
fn tokio_stream_of(mut receiver: mpsc::Receiver<Result<Bytes>>) -> reposure_registry::ByteStream {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reposure_registry::store::memory::MemoryStore;

    fn chunks(parts: &[&'static [u8]]) -> impl futures::Stream<Item = Result<Bytes>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn an_upload_in_pieces_stores_the_blob_it_names() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let uploads = Uploads::default();
        let (id, upload) = uploads.start("a");
        assert_eq!(
            upload
                .append(&store, chunks(&[b"hello ", b"wor"]))
                .await
                .unwrap(),
            9
        );
        assert_eq!(upload.append(&store, chunks(&[b"ld"])).await.unwrap(), 11);
        let digest = Digest::of(b"hello world");
        assert_eq!(upload.finish(&store, &digest).await.unwrap(), 11);
        assert!(
            upload.append(&store, chunks(&[b"more"])).await.is_err(),
            "a finished upload takes nothing more"
        );
        assert_eq!(store.blob_size("a", &digest).await.unwrap(), 11);
        assert!(uploads.get("a", &id).is_some());
        assert!(
            uploads.get("b", &id).is_none(),
            "an upload belongs to its repository"
        );
    }

    #[tokio::test]
    async fn a_wrong_digest_or_a_cut_body_stores_nothing() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let uploads = Uploads::default();
        let (_, upload) = uploads.start("a");
        upload.append(&store, chunks(&[b"hello"])).await.unwrap();
        let wrong = Digest::of(b"other");
        assert!(matches!(
            upload.finish(&store, &wrong).await,
            Err(RegistryError::Corrupt(_))
        ));
        assert!(store.blob_size("a", &Digest::of(b"hello")).await.is_err());
        assert!(
            upload.finish(&store, &Digest::of(b"hello")).await.is_err(),
            "it stays failed"
        );

        let (_, cut) = uploads.start("a");
        let body = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"part")),
            Err(RegistryError::Unavailable("connection reset".into())),
        ]);
        assert!(cut.append(&store, body).await.is_err());
        assert!(store.blob_size("a", &Digest::of(b"part")).await.is_err());

        // An upload forgotten before it finished stores nothing either.
        let (id, forgotten) = uploads.start("a");
        forgotten
            .append(&store, chunks(&[b"never finished"]))
            .await
            .unwrap();
        uploads.remove(&id);
        drop(forgotten);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let never = Digest::of(b"never finished");
        assert!(store.blob_size("a", &never).await.is_err());
    }
}
