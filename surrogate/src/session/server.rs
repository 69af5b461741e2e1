//! The server end of a session: one HTTP/2 connection over any byte stream, serving a
//! [`Store`] as a [`Registry`] (and, with a spool, durable pushes), and the store itself for
//! a distribution API served over the session (the `/v1/store/*` routes).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{Instrument, debug, info_span, warn};

use super::wire::*;
use super::{CONNECTION_WINDOW, MAX_FRAME, PROTOCOL_VERSIONS, SEND_BUFFER, STREAM_WINDOW};
use crate::spool::Spool;
use reposure_registry::ByteStream;
use reposure_registry::digest::Digest;
use reposure_registry::error::{RegistryError, Result};
use reposure_registry::formats::manifest::{MAX_MANIFEST_SIZE, StoredManifest};
use reposure_registry::names::check_repository;
use reposure_registry::operations::{FileUpload, Registry, StoreRegistry};
use reposure_registry::store::Store;

/// A response body: bytes, possibly followed by trailers.
pub type Body = UnsyncBoxBody<Bytes, RegistryError>;

/// Largest JSON request accepted; requests are small documents.
const MAX_REQUEST_JSON: usize = 1024 * 1024;

/// Serves one session.
pub struct SessionServer {
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    spool: Option<Arc<Spool>>,
}

impl SessionServer {
    /// A server for `store`; pushes go through `spool` when one is given.
    pub fn new(store: Arc<dyn Store>, spool: Option<Arc<Spool>>) -> Arc<Self> {
        let registry = Arc::new(StoreRegistry::new(store.clone()));
        Arc::new(Self {
            store,
            registry,
            spool,
        })
    }

    /// Serves HTTP/2 on `io` until the client goes away.
    pub async fn serve<IO>(self: Arc<Self>, io: IO) -> std::result::Result<(), hyper::Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |request| {
            let server = self.clone();
            async move { Ok::<_, Infallible>(server.handle(request).await) }
        });
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_send_buf_size(SEND_BUFFER)
            .serve_connection(TokioIo::new(io), service)
            .await
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let span = info_span!("session_request", method = %request.method(), path = %path);
        let result = async {
            match (request.method().clone(), path.as_str()) {
                (Method::GET, route::HELLO) => json(&Hello {
                    protocols: PROTOCOL_VERSIONS.to_vec(),
                    server: concat!("reposure-surrogate ", env!("CARGO_PKG_VERSION")).to_owned(),
                }),
                (Method::GET, route::CHECK) => self.registry.check().await.and_then(|()| json(&())),
                (Method::GET, route::REPOSITORIES) => {
                    json(&self.registry.list_repositories().await?)
                }
                (Method::POST, route::TAGS) => {
                    let repository: String = read_json(request).await?;
                    json(&self.registry.list_tags(&repository).await?)
                }
                (Method::POST, route::RESOLVE) => {
                    let r: ResolveRequest = read_json(request).await?;
                    json(
                        &self
                            .registry
                            .resolve(&r.repository, &r.reference.into(), r.platform.as_ref())
                            .await?,
                    )
                }
                (Method::POST, route::READ) => {
                    let r: ReadRequest = read_json(request).await?;
                    let stream = self
                        .registry
                        .read(&r.repository, &r.content, r.offset, r.length)
                        .await?;
                    Ok(stream_response(stream))
                }
                (Method::POST, route::PUSH) => self.push(request).await,
                (Method::POST, route::MANIFEST_GET) => {
                    let r: ManifestGetRequest = read_json(request).await?;
                    let manifest = self
                        .registry
                        .get_manifest(&r.repository, &r.reference.into())
                        .await?;
                    Ok(Response::builder()
                        .header(
                            HEADER_MEDIA_TYPE,
                            HeaderValue::from_str(&manifest.media_type).map_err(|_| {
                                RegistryError::Corrupt(format!(
                                    "media type {:?}",
                                    manifest.media_type
                                ))
                            })?,
                        )
                        .body(full(manifest.bytes))
                        .expect("valid response"))
                }
                (Method::POST, route::MANIFEST_PUT) => {
                    let r: ManifestPutRequest = header_json(&request, HEADER_MANIFEST)?;
                    let limited =
                        http_body_util::Limited::new(request.into_body(), MAX_MANIFEST_SIZE);
                    let bytes = limited
                        .collect()
                        .await
                        .map_err(|e| RegistryError::Rejected(format!("reading the manifest: {e}")))?
                        .to_bytes();
                    let manifest = StoredManifest {
                        digest: Digest::of(&bytes),
                        bytes,
                        media_type: r.media_type,
                    };
                    self.registry
                        .put_manifest(&r.repository, &r.reference.into(), &manifest)
                        .await?;
                    json(&())
                }
                (Method::POST, route::BLOB_PUT) => {
                    let r: BlobPutRequest = header_json(&request, HEADER_BLOB)?;
                    let body = verified_content(request.into_body(), Some(r.descriptor.size));
                    self.registry
                        .put_blob(&r.repository, &r.descriptor, body)
                        .await?;
                    json(&())
                }
                (Method::POST, route::TAG) => {
                    let r: TagRequest = read_json(request).await?;
                    let digest = self
                        .registry
                        .tag(
                            &r.from_repository,
                            &r.from.into(),
                            &r.to_repository,
                            &r.to_tag,
                        )
                        .await?;
                    json(&PushResponse { digest })
                }
                (Method::POST, route::DELETE) => {
                    let r: DeleteRequest = read_json(request).await?;
                    self.registry.delete_tag(&r.repository, &r.tag).await?;
                    json(&())
                }
                (Method::POST, route::STORE_TAGS) => {
                    let repository: String = read_json(request).await?;
                    check_repository(&repository)?;
                    json(&self.store.list_tags(&repository).await?)
                }
                (Method::POST, route::STORE_BLOB_SIZE) => {
                    let r: BlobRequest = read_json(request).await?;
                    check_repository(&r.repository)?;
                    json(&self.store.blob_size(&r.repository, &r.digest).await?)
                }
                (Method::POST, route::STORE_BLOB_GET) => {
                    let r: BlobGetRequest = read_json(request).await?;
                    check_repository(&r.repository)?;
                    let stream = self
                        .store
                        .get_blob(&r.repository, &r.digest, r.offset, r.length)
                        .await?;
                    Ok(stream_response(stream))
                }
                (Method::POST, route::STORE_BLOB_UPLOAD) => {
                    let repository: String = header_json(&request, HEADER_UPLOAD)?;
                    check_repository(&repository)?;
                    let body = verified_content(request.into_body(), None);
                    let (digest, size) = self.store.put_blob(&repository, body).await?;
                    json(&UploadResponse { digest, size })
                }
                (Method::POST, route::STORE_BLOB_MOUNT) => {
                    let r: MountRequest = read_json(request).await?;
                    check_repository(&r.repository)?;
                    check_repository(&r.from)?;
                    json(
                        &self
                            .store
                            .mount_blob(&r.repository, &r.from, &r.digest)
                            .await?,
                    )
                }
                (Method::POST, route::STORE_MANIFEST_DELETE) => {
                    let r: BlobRequest = read_json(request).await?;
                    check_repository(&r.repository)?;
                    self.store.delete_manifest(&r.repository, &r.digest).await?;
                    json(&())
                }
                _ => Err(RegistryError::Rejected(format!(
                    "the surrogate does not know {path}; it may be older than this client"
                ))),
            }
        }
        .instrument(span)
        .await;
        result.unwrap_or_else(|e| {
            match e {
                // Lookups of names that do not exist are routine (every create asks first).
                RegistryError::NotFound(_) => debug!(path, error = %e, "request failed"),
                _ => warn!(path, error = %e, "request failed"),
            }
            error_response(&e)
        })
    }

    async fn push(&self, request: Request<Incoming>) -> Result<Response<Body>> {
        let push: PushRequest = header_json(&request, HEADER_PUSH)?;
        reposure_registry::names::check_repository(&push.repository)?;
        reposure_registry::names::check_tag(&push.tag)?;
        let body = verified_content(request.into_body(), Some(push.size));
        let digest = match &self.spool {
            Some(spool) => spool.push(self.registry.as_ref(), &push, body).await?,
            None => {
                let upload = FileUpload {
                    created: None,
                    file_name: push.file_name.clone(),
                    size: push.size,
                    format: push.format,
                    attributes: push.attributes,
                    body,
                };
                self.registry
                    .push_file(&push.repository, &push.tag, upload)
                    .await?
            }
        };
        json(&PushResponse { digest })
    }
}

/// A request document carried in a header (when the body is content).
fn header_json<T: DeserializeOwned>(request: &Request<Incoming>, name: &str) -> Result<T> {
    let header = request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RegistryError::Rejected(format!("request without its {name} header")))?;
    serde_json::from_str(header)
        .map_err(|e| RegistryError::Rejected(format!("bad {name} header: {e}")))
}

fn json<T: Serialize>(value: &T) -> Result<Response<Body>> {
    let bytes = serde_json::to_vec(value).expect("responses serialise");
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(full(bytes))
        .expect("valid response"))
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An error as a response: the status says the class, the body the details.
pub fn error_response(error: &RegistryError) -> Response<Body> {
    let wire = WireError::from(error);
    let status = wire.kind.status();
    let bytes = serde_json::to_vec(&wire).expect("errors serialise");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(bytes))
        .expect("valid response")
}

async fn read_json<T: DeserializeOwned>(request: Request<Incoming>) -> Result<T> {
    let limited = http_body_util::Limited::new(request.into_body(), MAX_REQUEST_JSON);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| RegistryError::Rejected(format!("reading the request: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::Rejected(format!("bad request document: {e}")))
}

/// A streamed response whose end is confirmed by a trailer, so the client can tell a
/// complete transfer from one cut short.
fn stream_response(stream: ByteStream) -> Response<Body> {
    let stream = coalesce(stream);
    let frames = futures::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        let frame = match stream.next().await {
            Some(Ok(chunk)) => return Some((Ok(Frame::data(chunk)), Some(stream))),
            Some(Err(e)) => Frame::trailers(error_trailers(&e)),
            None => Frame::trailers(ok_trailers()),
        };
        Some((Ok::<_, RegistryError>(frame), None))
    });
    Response::builder()
        .header("content-type", "application/octet-stream")
        .body(BodyExt::boxed_unsync(StreamBody::new(frames)))
        .expect("valid response")
}

/// Most chunks merged into one frame.
const COALESCE_CHUNKS: usize = 64;

/// Chunks at least this large go out as they are: copying them would cost more than the
/// frame header and wake-up it saves.
const COALESCE_BELOW: usize = 64 * 1024;

/// Merges the small chunks that are ready at once into one (network reads come in pieces
/// of a few KiB; one HTTP/2 frame per piece would cost a frame header and a wake-up each).
/// Nothing waits for more data, so small or slow transfers are not delayed.
fn coalesce(stream: ByteStream) -> ByteStream {
    stream
        .ready_chunks(COALESCE_CHUNKS)
        .flat_map(|items| {
            let mut merged: Vec<reposure_registry::Result<Bytes>> = Vec::new();
            let mut buffer = bytes::BytesMut::new();
            for item in items {
                match item {
                    Ok(chunk) if chunk.len() < COALESCE_BELOW => buffer.extend_from_slice(&chunk),
                    other => {
                        if !buffer.is_empty() {
                            merged.push(Ok(buffer.split().freeze()));
                        }
                        merged.push(other);
                    }
                }
            }
            if !buffer.is_empty() {
                merged.push(Ok(buffer.freeze()));
            }
            futures::stream::iter(merged)
        })
        .boxed()
}

fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(TRAILER_STATUS, HeaderValue::from_static("ok"));
    trailers
}

fn error_trailers(error: &RegistryError) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(TRAILER_STATUS, HeaderValue::from_static("error"));
    let json = serde_json::to_string(&WireError::from(error)).expect("errors serialise");
    let value = HeaderValue::from_str(&json).unwrap_or_else(|_| HeaderValue::from_static("{}"));
    trailers.insert(TRAILER_ERROR, value);
    trailers
}

/// The content of a push, checked against the length the client declared (if it did) and
/// the digest it sends in a trailer: the last chunk is held back until both match, so a cut
/// session or corrupted transfer fails the push instead of publishing what arrived.
fn verified_content(body: Incoming, size: Option<u64>) -> ByteStream {
    struct State {
        body: Incoming,
        hasher: Sha256,
        received: u64,
        declared: Option<Digest>,
        pending: Option<Bytes>,
        done: bool,
    }
    let state = State {
        body,
        hasher: Sha256::new(),
        received: 0,
        declared: None,
        pending: None,
        done: false,
    };
    futures::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match st.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        st.hasher.update(&chunk);
                        st.received += chunk.len() as u64;
                        if let Some(previous) = st.pending.replace(chunk) {
                            return Some((Ok(previous), st));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            st.declared = trailers
                                .get(TRAILER_CONTENT_DIGEST)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| Digest::parse(v).ok());
                        }
                    }
                },
                Some(Err(e)) => {
                    st.done = true;
                    let error = RegistryError::Unavailable(format!("the push was cut off: {e}"));
                    return Some((Err(error), st));
                }
                None => {
                    st.done = true;
                    let actual = Digest::from_hasher(std::mem::take(&mut st.hasher));
                    let failure = if let Some(size) = size.filter(|s| *s != st.received) {
                        Some(RegistryError::SizeMismatch {
                            declared: size,
                            received: st.received,
                        })
                    } else {
                        match &st.declared {
                            None => Some(RegistryError::Rejected(
                                "the push ended without its content digest (the session was cut)"
                                    .into(),
                            )),
                            Some(declared) if *declared != actual => {
                                Some(RegistryError::Corrupt(format!(
                                    "pushed content has digest {actual}, the client sent {declared}"
                                )))
                            }
                            Some(_) => None,
                        }
                    };
                    return match failure {
                        Some(error) => Some((Err(error), st)),
                        None => st.pending.take().map(|last| (Ok(last), st)),
                    };
                }
            }
        }
    })
    .boxed()
}
