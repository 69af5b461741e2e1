//! Content digests (`sha256:<hex>`) and streaming verification.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};

use crate::ByteStream;
use crate::error::{RegistryError, Result};

/// A validated `sha256:<64 lower-case hex>` digest.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses and validates a digest string. Only sha256 is supported: it is the only
    /// algorithm registries are required to accept.
    pub fn parse(s: &str) -> Result<Self> {
        match s.strip_prefix("sha256:") {
            Some(hex)
                if hex.len() == 64
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(Self(s.to_owned()))
            }
            _ => Err(RegistryError::invalid_name(
                s,
                "a digest must be sha256: followed by 64 lower-case hex digits",
            )),
        }
    }

    /// The digest of a byte slice.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// Finishes a hasher into a digest.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Self(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part alone (the file name of a blob in an image layout).
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = RegistryError;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

/// Chunks queued for the hashing task. Hashing runs on its own task so that, with two or
/// more cores, it overlaps with receiving the next chunks and handing them to the reader.
const HASH_QUEUE: usize = 64;

/// A SHA-256 computed on a task of its own from the chunks sent to it.
struct BackgroundHasher {
    chunks: tokio::sync::mpsc::Sender<Bytes>,
    result: tokio::sync::oneshot::Receiver<Digest>,
}

impl BackgroundHasher {
    fn spawn() -> Self {
        let (chunks, mut queue) = tokio::sync::mpsc::channel::<Bytes>(HASH_QUEUE);
        let (done, result) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut hasher = Sha256::new();
            while let Some(chunk) = queue.recv().await {
                hasher.update(&chunk);
            }
            let _ = done.send(Digest::from_hasher(hasher));
        });
        Self { chunks, result }
    }

    async fn update(&self, chunk: &Bytes) {
        // A send fails only if the hashing task is gone, which `finish` then reports.
        let _ = self.chunks.send(chunk.clone()).await;
    }

    async fn finish(self) -> Option<Digest> {
        drop(self.chunks);
        self.result.await.ok()
    }
}

/// Wraps a stream so that its content is checked against `expected` digest and size: the
/// stream ends with an error instead of its last chunk when the content does not match, so
/// a reader can never mistake corrupt or truncated data for the real thing.
pub fn verify_stream(stream: ByteStream, expected: Digest, expected_size: u64) -> ByteStream {
    struct State {
        inner: ByteStream,
        hasher: Option<BackgroundHasher>,
        received: u64,
        pending: Option<Bytes>,
        expected: Digest,
        expected_size: u64,
    }
    let state = State {
        inner: stream,
        hasher: Some(BackgroundHasher::spawn()),
        received: 0,
        pending: None,
        expected,
        expected_size,
    };
    // One chunk is held back so that the final chunk is only released after the digest of
    // the whole content has been checked.
    futures::stream::unfold(state, |mut st| async move {
        let hasher = st.hasher.as_ref()?;
        loop {
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    hasher.update(&chunk).await;
                    st.received += chunk.len() as u64;
                    if st.received > st.expected_size {
                        st.hasher = None;
                        let message = format!(
                            "blob {} is longer than its declared {} bytes",
                            st.expected, st.expected_size
                        );
                        return Some((Err(RegistryError::Corrupt(message)), st));
                    }
                    if let Some(previous) = st.pending.replace(chunk) {
                        return Some((Ok(previous), st));
                    }
                }
                Some(Err(e)) => {
                    st.hasher = None;
                    return Some((Err(e), st));
                }
                None => {
                    let actual = st.hasher.take()?.finish().await;
                    let failure = if st.received != st.expected_size {
                        Some(format!(
                            "blob {} ended after {} of {} bytes",
                            st.expected, st.received, st.expected_size
                        ))
                    } else if actual.as_ref() != Some(&st.expected) {
                        Some(format!(
                            "blob content has digest {}, expected {}",
                            actual.map_or_else(|| "unknown".into(), |d| d.to_string()),
                            st.expected
                        ))
                    } else {
                        None
                    };
                    return match failure {
                        Some(message) => Some((Err(RegistryError::Corrupt(message)), st)),
                        None => st.pending.take().map(|last| (Ok(last), st)),
                    };
                }
            }
        }
    })
    .boxed()
}

/// A digest computed while a stream passes through: the stream is returned unchanged and
/// the digest and byte count can be read once it has been consumed.
#[derive(Clone, Default)]
pub struct RunningDigest(Arc<Mutex<(Sha256, u64)>>);

impl RunningDigest {
    /// Returns a stream that feeds every chunk into this digest.
    pub fn wrap(&self, stream: ByteStream) -> ByteStream {
        let state = self.0.clone();
        stream
            .inspect(move |item| {
                if let Ok(chunk) = item {
                    let mut guard = state.lock().expect("digest lock");
                    guard.0.update(chunk);
                    guard.1 += chunk.len() as u64;
                }
            })
            .boxed()
    }

    /// The digest and size of everything seen so far.
    pub fn finish(&self) -> (Digest, u64) {
        let guard = self.0.lock().expect("digest lock");
        (Digest::from_hasher(guard.0.clone()), guard.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        let owned: Vec<Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        futures::stream::iter(owned).boxed()
    }

    #[tokio::test]
    async fn verified_stream_passes_good_content() {
        let digest = Digest::of(b"hello world");
        let out: Vec<Bytes> = verify_stream(chunks(&[b"hello", b" world"]), digest, 11)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(out.concat(), b"hello world");
    }

    #[tokio::test]
    async fn verified_stream_withholds_last_chunk_of_bad_content() {
        let digest = Digest::of(b"hello world");
        let mut s = verify_stream(chunks(&[b"hello", b" wOrld"]), digest, 11);
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            Bytes::from_static(b"hello")
        );
        assert!(matches!(
            s.next().await,
            Some(Err(RegistryError::Corrupt(_)))
        ));
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn verified_stream_rejects_truncation() {
        let digest = Digest::of(b"hello world");
        let r: Result<Vec<Bytes>> = verify_stream(chunks(&[b"hello"]), digest, 11)
            .try_collect()
            .await;
        assert!(r.unwrap_err().to_string().contains("ended after 5 of 11"));
    }

    #[test]
    fn parse_rejects_malformed() {
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }
}
