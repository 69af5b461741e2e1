#![no_main]
//! One request to the surrogate's session server, as anyone who can exec into its pod
//! may send it, over one long-lived session (as a real client keeps one).
//!
//! The input is the request as text: `METHOD PATH` on the first line, then `Name: value`
//! header lines (a name starting with `~` is sent as a trailer), a blank line, and the
//! body. The server serves an in-memory registry holding one image, its `Registry` routes
//! and its `/v1/store/*` routes alike.
//!
//! Property: every request is answered within seconds and the session survives it; the
//! server never panics; every error answer is an error document whose HTTP status is the
//! one its kind maps to.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use libfuzzer_sys::fuzz_target;
use reposure_fuzz::{memory_registry, runtime};
use reposure_registry::formats::single_file::PushFormat;
use reposure_registry::operations::{FileUpload, Registry};
use reposure_surrogate::session::server::SessionServer;
use reposure_surrogate::session::wire::WireError;
use tokio::sync::Mutex;

type Body = UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// Longest a request may take: the registry is in memory, so anything slower is a hang.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The one session all inputs go through.
fn session() -> &'static Mutex<SendRequest<Body>> {
    static SESSION: OnceLock<Mutex<SendRequest<Body>>> = OnceLock::new();
    SESSION.get_or_init(|| {
        runtime().block_on(async {
            let (store, registry) = memory_registry();
            let content = Bytes::from_static(b"the file's content\n");
            let upload = FileUpload {
                file_name: "file".into(),
                size: content.len() as u64,
                format: PushFormat::Image,
                created: None,
                attributes: Default::default(),
                body: futures::stream::once(async move { Ok(content) }).boxed(),
            };
            registry
                .push_file("repo/file", "latest", upload)
                .await
                .expect("push the fixture");
            let (client, server) = tokio::io::duplex(1 << 20);
            tokio::spawn(SessionServer::new(store, None).serve(server));
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                    .await
                    .expect("an HTTP/2 session");
            tokio::spawn(connection);
            Mutex::new(sender)
        })
    })
}

/// The request an input describes; `None` if it is not a request HTTP can carry.
fn request(data: &[u8]) -> Option<Request<Body>> {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let (method, path) = lines.next()?.split_once(' ')?;
    let mut builder = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).ok()?)
        .uri(format!("http://surrogate{path}"));
    let mut trailers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = HeaderValue::from_str(value.trim()).ok()?;
        match name.strip_prefix('~') {
            Some(trailer) => {
                trailers.insert(HeaderName::from_bytes(trailer.as_bytes()).ok()?, value);
            }
            None => builder = builder.header(HeaderName::from_bytes(name.as_bytes()).ok()?, value),
        }
    }
    let mut frames = vec![Ok(Frame::data(Bytes::from(body.to_owned())))];
    if !trailers.is_empty() {
        frames.push(Ok(Frame::trailers(trailers)));
    }
    let body = StreamBody::new(futures::stream::iter(frames)).boxed_unsync();
    builder.body(body).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(request) = request(data) else {
        return;
    };
    let session = session();
    runtime().block_on(async {
        let mut sender = session.lock().await;
        sender.ready().await.expect("the session survived the last request");
        let exchange = async {
            let Ok(response) = sender.send_request(request).await else {
                // HTTP/2 refused the request itself (a malformed header, say).
                return;
            };
            let status = response.status();
            let Ok(body) = response.into_body().collect().await else {
                return;
            };
            if !status.is_success() {
                let bytes = body.to_bytes();
                let error: WireError = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    panic!("a {status} answer that is not an error document ({e}): {bytes:?}")
                });
                assert_eq!(error.kind.status(), status, "{error:?}");
            }
        };
        tokio::time::timeout(ANSWER_WITHIN, exchange)
            .await
            .expect("the request was answered");
    });
});
