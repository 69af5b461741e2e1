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

#[derive(Default)]
struct State {
    received: u64,
    hasher: Sha256,
    sender: Option<mpsc::Sender<Result<Bytes>>>,
    task: Option<JoinHandle<Result<(Digest, u64)>>>,
    /// Set when the upload failed: every later request to it fails the same way.
    failed: Option<String>,
}

impl Uploads {
    /// Starts an upload to `repository`; returns its id.
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
        uploads.retain(|_, u| u.last_used.lock().expect("lock").elapsed() < IDLE_LIMIT);
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
        *upload.last_used.lock().expect("lock") = Instant::now();
        Some(upload)
    }

    /// Forgets upload `id` (finished, failed or cancelled).
    pub fn remove(&self, id: &str) {
        self.uploads.lock().expect("uploads lock").remove(id);
    }
}

impl Upload {
    /// Bytes received so far.
    pub async fn received(&self) -> u64 {
        self.state.lock().await.received
    }

    /// Appends the chunks of `body` (a request body) at `offset` (the client's
    /// `Content-Range` start, if it sent one); returns the bytes received in all.
    pub async fn append(
        &self,
        store: &Arc<dyn Store>,
        offset: Option<u64>,
        mut body: impl futures::Stream<Item = Result<Bytes>> + Unpin,
    ) -> Result<u64> {
        let mut state = self.state.lock().await;
        if let Some(failed) = &state.failed {
            return Err(RegistryError::Rejected(failed.clone()));
        }
        if let Some(offset) = offset
            && offset != state.received
        {
            return Err(RegistryError::Rejected(format!(
                "chunk at {offset}, but {} bytes were received",
                state.received
            )));
        }
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
            let sender = state.sender(store, &self.repository);
            state.hasher.update(&chunk);
            state.received += chunk.len() as u64;
            if sender.send(Ok(chunk)).await.is_err() {
                // The store's upload ended early: its error says why.
                let error =
                    state.outcome().await.err().unwrap_or_else(|| {
                        RegistryError::Unavailable("the upload ended early".into())
                    });
                state.failed = Some(error.to_string());
                return Err(error);
            }
        }
        Ok(state.received)
    }

    /// Ends the upload as the blob `expected`: the store's upload completes only if the
    /// bytes received have that digest.
    pub async fn finish(&self, store: &Arc<dyn Store>, expected: &Digest) -> Result<u64> {
        let mut state = self.state.lock().await;
        if let Some(failed) = &state.failed {
            return Err(RegistryError::Rejected(failed.clone()));
        }
        // An empty blob: the store's upload starts only now.
        state.sender(store, &self.repository);
        let actual = Digest::from_hasher(std::mem::take(&mut state.hasher));
        if actual != *expected {
            let message = format!("the bytes uploaded have digest {actual}, not {expected}");
            state.fail(message.clone()).await;
            return Err(RegistryError::Corrupt(message));
        }
        state.sender = None;
        let (digest, size) = state.outcome().await?;
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

    /// Ends the store's stream in an error (so no blob is made) and marks the upload failed.
    async fn fail(&mut self, message: String) {
        if let Some(sender) = self.sender.take() {
            let _ = sender
                .send(Err(RegistryError::Rejected(message.clone())))
                .await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.failed = Some(message);
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
                .append(&store, None, chunks(&[b"hello ", b"wor"]))
                .await
                .unwrap(),
            9
        );
        assert_eq!(
            upload
                .append(&store, Some(9), chunks(&[b"ld"]))
                .await
                .unwrap(),
            11
        );
        let digest = Digest::of(b"hello world");
        assert_eq!(upload.finish(&store, &digest).await.unwrap(), 11);
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
        upload
            .append(&store, None, chunks(&[b"hello"]))
            .await
            .unwrap();
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
        assert!(cut.append(&store, None, body).await.is_err());
        assert!(store.blob_size("a", &Digest::of(b"part")).await.is_err());

        let (_, misplaced) = uploads.start("a");
        assert!(
            misplaced
                .append(&store, Some(5), chunks(&[b"x"]))
                .await
                .is_err()
        );
    }
}
