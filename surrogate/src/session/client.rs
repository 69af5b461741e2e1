//! The client end of a session: a [`Registry`] whose every operation is one HTTP/2
//! request to a surrogate.
//!
//! The session is opened on first use and again after it is lost: a request that was in
//! flight when the stream broke fails (the filesystem turns that into EIO), and the next
//! operation opens a new session through the [`Connector`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;
use tracing::{debug, info};

use super::server::Body;
use super::transport::Connector;
use super::wire::*;
use super::{CONNECTION_WINDOW, MAX_FRAME, PROTOCOL_VERSIONS, SEND_BUFFER, STREAM_WINDOW};
use reposure_registry::ByteStream;
use reposure_registry::digest::Digest;
use reposure_registry::error::{RegistryError, Result};
use reposure_registry::formats::manifest::Platform;
use reposure_registry::formats::manifest::{Descriptor, StoredManifest};
use reposure_registry::names::Reference;
use reposure_registry::operations::{FileContent, FileUpload, ImageInfo, Registry};

/// How often an idle session is pinged, and how long a ping may go unanswered before the
/// session counts as lost: a surrogate that hangs is noticed without waiting on TCP.
const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// How long opening a session (start, HTTP/2 handshake, version exchange) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

struct Session {
    sender: SendRequest<Body>,
    id: u64,
    /// The protocol version both ends speak.
    protocol: u32,
    _guard: Option<Box<dyn Send + Sync>>,
}

/// A registry reached through a surrogate session.
pub struct SessionClient {
    connector: Box<dyn Connector>,
    session: Mutex<Option<Session>>,
    sessions_opened: AtomicU64,
}

impl SessionClient {
    /// A client that opens sessions with `connector` (lazily, on first use).
    pub fn new(connector: Box<dyn Connector>) -> Self {
        Self {
            connector,
            session: Mutex::new(None),
            sessions_opened: AtomicU64::new(0),
        }
    }

    /// How many sessions have been opened so far (1 while the first one lives).
    pub fn sessions_opened(&self) -> u64 {
        self.sessions_opened.load(Ordering::Relaxed)
    }

    async fn open(&self) -> Result<Session> {
        let connection = self.connector.connect().await?;
        let (mut sender, driver) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_send_buf_size(SEND_BUFFER)
            .keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE)
            .keep_alive_while_idle(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(TokioIo::new(connection.stream))
            .await
            .map_err(|e| {
                RegistryError::Unavailable(format!(
                    "session handshake with {} failed: {e}",
                    self.connector.describe()
                ))
            })?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                debug!(error = %e, "session ended");
            }
        });
        let response = sender
            .send_request(request(Method::GET, route::HELLO, empty()))
            .await
            .map_err(|e| {
                RegistryError::Unavailable(format!(
                    "{} did not answer: {e}",
                    self.connector.describe()
                ))
            })?;
        let hello: Hello = json_body(response).await?;
        let version = PROTOCOL_VERSIONS
            .iter()
            .rev()
            .find(|v| hello.protocols.contains(v))
            .ok_or_else(|| {
                RegistryError::Unsupported(format!(
                    "{} speaks session protocol {:?}, this client {:?}; install matching versions",
                    hello.server, hello.protocols, PROTOCOL_VERSIONS
                ))
            })?;
        let id = self.sessions_opened.fetch_add(1, Ordering::Relaxed) + 1;
        info!(server = %hello.server, protocol = version, session = id, "session open");
        Ok(Session {
            sender,
            id,
            protocol: *version,
            _guard: connection.guard,
        })
    }

    /// A sender on a live session, opening one if needed.
    async fn sender(&self) -> Result<(SendRequest<Body>, u64)> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref()
            && !session.sender.is_closed()
        {
            return Ok((session.sender.clone(), session.id));
        }
        *current = None;
        let session = tokio::time::timeout(OPEN_TIMEOUT, self.open())
            .await
            .map_err(|_| {
                RegistryError::Unavailable(format!(
                    "{} did not open a session in time",
                    self.connector.describe()
                ))
            })??;
        let answer = (session.sender.clone(), session.id);
        *current = Some(session);
        Ok(answer)
    }

    /// The protocol version of the session (opening one if needed).
    pub async fn protocol(&self) -> Result<u32> {
        self.sender().await?;
        let current = self.session.lock().await;
        Ok(current
            .as_ref()
            .map_or(PROTOCOL_VERSIONS[0], |s| s.protocol))
    }

    async fn lost(&self, id: u64) {
        let mut current = self.session.lock().await;
        if current.as_ref().is_some_and(|s| s.id == id) {
            *current = None;
        }
    }

    pub(super) async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>> {
        let (mut sender, id) = self.sender().await?;
        match sender.send_request(request).await {
            Ok(response) => Ok(response),
            Err(e) => {
                self.lost(id).await;
                Err(RegistryError::Unavailable(format!(
                    "session with {} lost: {e}",
                    self.connector.describe()
                )))
            }
        }
    }

    /// A request whose answer is a stream confirmed by trailers ([`body_stream`]).
    pub(super) async fn stream<Req: Serialize>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<ByteStream> {
        let bytes = serde_json::to_vec(body).expect("requests serialise");
        let response = self.send(request(Method::POST, path, full(bytes))).await?;
        if response.status() != StatusCode::OK {
            return Err(json_body::<()>(response).await.err().unwrap_or_else(|| {
                RegistryError::Rejected(format!("the surrogate refused {path}"))
            }));
        }
        Ok(body_stream(response.into_body()))
    }

    pub(super) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp> {
        let bytes = serde_json::to_vec(body).expect("requests serialise");
        json_body(self.send(request(Method::POST, path, full(bytes))).await?).await
    }
}

pub(super) fn request(method: Method, path: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(format!("http://surrogate{path}"))
        .body(body)
        .expect("valid request")
}

pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    full(Bytes::new())
}

/// Reads a JSON answer, or the error the server sent instead.
pub(super) async fn json_body<T: DeserializeOwned>(response: Response<Incoming>) -> Result<T> {
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| {
            RegistryError::Unavailable(format!("session lost while reading an answer: {e}"))
        })?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(match serde_json::from_slice::<WireError>(&bytes) {
            Ok(wire) => wire.into(),
            Err(_) => RegistryError::Rejected(format!("surrogate answered {status}")),
        });
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::Corrupt(format!("surrogate answer does not parse: {e}")))
}

/// A streamed answer: data until trailers that confirm the end (or carry the error).
pub(super) fn body_stream(body: Incoming) -> ByteStream {
    futures::stream::unfold(Some(body), |state| async move {
        let mut body = state?;
        loop {
            match body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) if chunk.is_empty() => continue,
                    Ok(chunk) => return Some((Ok(chunk), Some(body))),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        return match trailers.get(TRAILER_STATUS).and_then(|v| v.to_str().ok()) {
                            Some("ok") => None,
                            _ => {
                                let error = trailers
                                    .get(TRAILER_ERROR)
                                    .and_then(|v| {
                                        serde_json::from_slice::<WireError>(v.as_bytes()).ok()
                                    })
                                    .map(RegistryError::from)
                                    .unwrap_or_else(|| {
                                        RegistryError::Unavailable(
                                            "transfer failed on the surrogate".into(),
                                        )
                                    });
                                Some((Err(error), None))
                            }
                        };
                    }
                },
                Some(Err(e)) => {
                    return Some((
                        Err(RegistryError::Unavailable(format!(
                            "session lost mid-transfer: {e}"
                        ))),
                        None,
                    ));
                }
                None => {
                    let error = RegistryError::Unavailable(
                        "the transfer ended without its end marker (session cut)".into(),
                    );
                    return Some((Err(error), None));
                }
            }
        }
    })
    .boxed()
}

/// The request body of a push: the content, then its sha256 as a trailer.
pub(super) fn push_body(content: ByteStream) -> Body {
    let frames = futures::stream::unfold(Some((content, Sha256::new())), |state| async move {
        let (mut content, mut hasher) = state?;
        match content.next().await {
            Some(Ok(chunk)) => {
                hasher.update(&chunk);
                Some((Ok(Frame::data(chunk)), Some((content, hasher))))
            }
            Some(Err(e)) => Some((Err(e), None)),
            None => {
                let digest = Digest::from_hasher(hasher);
                let mut trailers = HeaderMap::new();
                trailers.insert(
                    TRAILER_CONTENT_DIGEST,
                    HeaderValue::from_str(digest.as_str()).expect("digests are ASCII"),
                );
                Some((Ok(Frame::trailers(trailers)), None))
            }
        }
    });
    BodyExt::boxed_unsync(StreamBody::new(frames))
}

#[async_trait]
impl Registry for SessionClient {
    fn describe(&self) -> String {
        self.connector.describe()
    }

    async fn check(&self) -> Result<()> {
        json_body(
            self.send(request(Method::GET, route::CHECK, empty()))
                .await?,
        )
        .await
    }

    async fn list_repositories(&self) -> Result<Vec<String>> {
        json_body(
            self.send(request(Method::GET, route::REPOSITORIES, empty()))
                .await?,
        )
        .await
    }

    async fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        self.call(route::TAGS, &repository).await
    }

    async fn resolve(
        &self,
        repository: &str,
        reference: &Reference,
        platform: Option<&Platform>,
    ) -> Result<ImageInfo> {
        let body = ResolveRequest {
            repository: repository.to_owned(),
            reference: reference.into(),
            platform: platform.cloned(),
        };
        self.call(route::RESOLVE, &body).await
    }

    async fn read(
        &self,
        repository: &str,
        content: &FileContent,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream> {
        let body = ReadRequest {
            repository: repository.to_owned(),
            content: content.clone(),
            offset,
            length,
        };
        self.stream(route::READ, &body).await
    }

    async fn push_file(&self, repository: &str, tag: &str, upload: FileUpload) -> Result<Digest> {
        let push = PushRequest {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            file_name: upload.file_name,
            size: upload.size,
            format: upload.format,
            attributes: upload.attributes,
        };
        let header = serde_json::to_string(&push).expect("requests serialise");
        let mut request = request(Method::POST, route::PUSH, push_body(upload.body));
        request.headers_mut().insert(
            HEADER_PUSH,
            HeaderValue::from_str(&header)
                .map_err(|_| RegistryError::invalid_name(repository, "names must be ASCII"))?,
        );
        let response: PushResponse = json_body(self.send(request).await?).await?;
        Ok(response.digest)
    }

    async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()> {
        let body = DeleteRequest {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        };
        self.call(route::DELETE, &body).await
    }

    async fn get_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let body = ManifestGetRequest {
            repository: repository.to_owned(),
            reference: reference.into(),
        };
        let bytes = serde_json::to_vec(&body).expect("requests serialise");
        let response = self
            .send(request(Method::POST, route::MANIFEST_GET, full(bytes)))
            .await?;
        if response.status() != StatusCode::OK {
            return Err(json_body::<()>(response).await.err().unwrap_or_else(|| {
                RegistryError::Rejected("surrogate refused the manifest request".into())
            }));
        }
        let media_type = response
            .headers()
            .get(HEADER_MEDIA_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| {
                RegistryError::Unavailable(format!("session lost while reading a manifest: {e}"))
            })?
            .to_bytes();
        let digest = Digest::of(&bytes);
        if let Reference::Digest(expected) = reference
            && *expected != digest
        {
            return Err(RegistryError::Corrupt(format!(
                "manifest arrived as {digest}, expected {expected}"
            )));
        }
        Ok(StoredManifest {
            bytes,
            digest,
            media_type,
        })
    }

    async fn put_blob(
        &self,
        repository: &str,
        expected: &Descriptor,
        body: ByteStream,
    ) -> Result<()> {
        let header = serde_json::to_string(&BlobPutRequest {
            repository: repository.to_owned(),
            descriptor: expected.clone(),
        })
        .expect("requests serialise");
        let mut request = request(Method::POST, route::BLOB_PUT, push_body(body));
        request.headers_mut().insert(
            HEADER_BLOB,
            HeaderValue::from_str(&header)
                .map_err(|_| RegistryError::invalid_name(repository, "names must be ASCII"))?,
        );
        json_body(self.send(request).await?).await
    }

    async fn put_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        manifest: &StoredManifest,
    ) -> Result<()> {
        let header = serde_json::to_string(&ManifestPutRequest {
            repository: repository.to_owned(),
            reference: reference.into(),
            media_type: manifest.media_type.clone(),
        })
        .expect("requests serialise");
        let mut request = request(
            Method::POST,
            route::MANIFEST_PUT,
            full(manifest.bytes.clone()),
        );
        request.headers_mut().insert(
            HEADER_MANIFEST,
            HeaderValue::from_str(&header)
                .map_err(|_| RegistryError::invalid_name(repository, "names must be ASCII"))?,
        );
        json_body(self.send(request).await?).await
    }

    async fn tag(
        &self,
        from_repository: &str,
        from: &Reference,
        to_repository: &str,
        to_tag: &str,
    ) -> Result<Digest> {
        let body = TagRequest {
            from_repository: from_repository.to_owned(),
            from: from.into(),
            to_repository: to_repository.to_owned(),
            to_tag: to_tag.to_owned(),
        };
        let response: PushResponse = self.call(route::TAG, &body).await?;
        Ok(response.digest)
    }
}
