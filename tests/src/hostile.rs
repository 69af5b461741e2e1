//! A registry that answers as a broken or hostile server could, on 127.0.0.1.
//!
//! It speaks just enough of the distribution API for a mount (`/v2/`, the catalog, tag
//! lists with `Link` pages, manifests, blobs) over a fixed world of repositories, each a
//! class of misbehaviour:
//!
//! | repository | what it does |
//! |---|---|
//! | `good/a` | tags `v1`, `v2`: ORAS-style artifacts that read fine |
//! | (catalog, `good/a`'s tags) | bad names beside the good ones: with `/`, empty, `.`, `..`, longer than a file name may be, with a newline or NUL, upper case, and a duplicate |
//! | `endless` | a 10 KiB layer whose blob ignores `Range` and never ends |
//! | `longer` | a 10 KiB layer whose blob is 256 MiB (`200`, `Content-Length` true) |
//! | `trickle` | a manifest sent one byte every 200 ms, with an honest `Content-Length` |
//! | `giant-manifest` | a 64 MiB manifest |
//! | `loop` | a layer whose blob redirects to itself |
//! | `mismatch` | a layer whose blob is not what its digest says |
//! | `big/giant` | [`GIANT_TAGS`] tags, in pages of at most 1000 with `Link` headers |
//!
//! It counts the body bytes it sent, so a test can show that a client stopped reading.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

/// Tags of the `giant` repository.
pub const GIANT_TAGS: usize = 200_000;

/// The size every hostile layer declares.
pub const DECLARED: usize = 10 * 1024;

/// Names that are neither repository names nor tags, as a registry might list them.
pub const BAD_NAMES: &[&str] = &[
    "has/../dots",
    "",
    ".",
    "..",
    "new\nline",
    "nul\u{0}byte",
    "-leading",
];

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A running hostile registry; stops on drop.
pub struct HostileRegistry {
    pub port: u16,
    sent: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl HostileRegistry {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("hostile registry runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let sent: Arc<AtomicU64> = Arc::default();
        let counter = sent.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let counter = counter.clone();
                        async move { Ok::<_, Infallible>(answer(request, port, &counter)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            port,
            sent,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Body bytes sent so far (bytes handed to the connection).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::sha256_hex(bytes))
}

/// The content each hostile layer declares: `DECLARED` bytes of its repository's letter.
fn declared_content(repository: &str) -> Vec<u8> {
    vec![repository.as_bytes()[0]; DECLARED]
}

/// The artifact manifest of `repository:tag` whose one layer is `layer`.
fn artifact(layer: &[u8], title: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.reposure.file.v1",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": sha256(b"{}"),
            "size": 2
        },
        "layers": [{
            "mediaType": "application/octet-stream",
            "digest": sha256(layer),
            "size": layer.len(),
            "annotations": {"org.opencontainers.image.title": title}
        }]
    }))
    .expect("manifest JSON")
}

fn full(status: StatusCode, headers: &[(&str, String)], body: Vec<u8>) -> Response<Body> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, value);
    }
    response
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("response")
}

fn json_answer(value: serde_json::Value, headers: &[(&str, String)]) -> Response<Body> {
    let mut headers = headers.to_vec();
    headers.push(("Content-Type", "application/json".into()));
    full(
        StatusCode::OK,
        &headers,
        serde_json::to_vec(&value).expect("JSON"),
    )
}

/// A streamed body of `chunks`, counting what is sent.
fn streamed(
    chunks: impl futures::Stream<Item = Bytes> + Send + Sync + 'static,
    counter: &Arc<AtomicU64>,
    headers: &[(&str, String)],
) -> Response<Body> {
    let counter = counter.clone();
    let frames = chunks.map(move |chunk| {
        counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        Ok::<_, Infallible>(Frame::data(chunk))
    });
    let mut response = Response::builder().status(StatusCode::OK);
    for (name, value) in headers {
        response = response.header(*name, value);
    }
    response
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("response")
}

fn not_found() -> Response<Body> {
    full(
        StatusCode::NOT_FOUND,
        &[],
        br#"{"errors":[{"code":"NAME_UNKNOWN","message":"no such thing"}]}"#.to_vec(),
    )
}

fn answer(request: Request<Incoming>, port: u16, sent: &Arc<AtomicU64>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    if path == "/v2/" {
        return full(StatusCode::OK, &[], b"{}".to_vec());
    }
    if path == "/v2/_catalog" {
        let mut repositories: Vec<String> = [
            "good/a",
            "endless",
            "longer",
            "trickle",
            "giant-manifest",
            "loop",
            "mismatch",
            "big/giant",
            "good/a",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        repositories.extend(BAD_NAMES.iter().map(|s| (*s).to_owned()));
        // Upper case is no repository name; 300 characters are past a path's limit.
        repositories.push("UPPER".into());
        repositories.push("x".repeat(300));
        return json_answer(json!({ "repositories": repositories }), &[]);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return not_found();
    };
    if let Some(repository) = rest.strip_suffix("/tags/list") {
        return tags(repository, &query);
    }
    if let Some((repository, reference)) = rest.split_once("/manifests/") {
        return manifest(repository, reference, sent);
    }
    if let Some((repository, digest)) = rest.split_once("/blobs/") {
        return blob(repository, digest, port, sent);
    }
    not_found()
}

fn tags(repository: &str, query: &str) -> Response<Body> {
    match repository {
        "good/a" => {
            let mut tags: Vec<String> =
                ["v1", "v2", "v1"].iter().map(|s| (*s).to_owned()).collect();
            tags.extend(BAD_NAMES.iter().map(|s| (*s).to_owned()));
            tags.push("t".repeat(200));
            json_answer(json!({"name": repository, "tags": tags}), &[])
        }
        "big/giant" => {
            let last: Option<usize> = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("last=t"))
                .and_then(|n| n.parse().ok());
            let start = last.map_or(0, |n| n + 1);
            let end = (start + 1000).min(GIANT_TAGS);
            let tags: Vec<String> = (start..end).map(|n| format!("t{n:06}")).collect();
            let link = (end < GIANT_TAGS).then(|| {
                (
                    "Link",
                    format!(
                        "</v2/big/giant/tags/list?n=1000&last=t{:06}>; rel=\"next\"",
                        end - 1
                    ),
                )
            });
            json_answer(json!({"name": repository, "tags": tags}), link.as_slice())
        }
        "endless" | "longer" | "trickle" | "giant-manifest" | "loop" | "mismatch" => {
            json_answer(json!({"name": repository, "tags": ["latest"]}), &[])
        }
        _ => not_found(),
    }
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn manifest(repository: &str, reference: &str, sent: &Arc<AtomicU64>) -> Response<Body> {
    let content_type = ("Content-Type", MANIFEST.to_owned());
    match (repository, reference) {
        ("good/a", "v1" | "v2") => full(
            StatusCode::OK,
            &[content_type],
            artifact(format!("good {reference}").as_bytes(), "a"),
        ),
        ("big/giant", _) => full(StatusCode::OK, &[content_type], artifact(b"giant", "giant")),
        ("endless" | "longer" | "loop" | "mismatch", "latest") => full(
            StatusCode::OK,
            &[content_type],
            artifact(&declared_content(repository), repository),
        ),
        ("trickle", "latest") => {
            let body = artifact(&declared_content(repository), repository);
            let length = ("Content-Length", body.len().to_string());
            let bytes = futures::stream::iter(body).then(|byte| async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Bytes::from(vec![byte])
            });
            streamed(bytes, sent, &[content_type, length])
        }
        ("giant-manifest", "latest") => {
            let pad = "p".repeat(64 << 20);
            full(
                StatusCode::OK,
                &[content_type],
                format!("{{\"schemaVersion\":2,\"mediaType\":\"{MANIFEST}\",\"pad\":\"{pad}\"}}")
                    .into_bytes(),
            )
        }
        _ => not_found(),
    }
}

fn blob(repository: &str, digest: &str, port: u16, sent: &Arc<AtomicU64>) -> Response<Body> {
    if digest == sha256(b"{}") {
        return full(StatusCode::OK, &[], b"{}".to_vec());
    }
    let chunk = Bytes::from(vec![repository.as_bytes()[0]; 64 * 1024]);
    match repository {
        "good/a" => {
            for tag in ["v1", "v2"] {
                let content = format!("good {tag}").into_bytes();
                if digest == sha256(&content) {
                    return full(StatusCode::OK, &[], content);
                }
            }
            not_found()
        }
        "big/giant" => full(StatusCode::OK, &[], b"giant".to_vec()),
        // Ignores Range, and never ends.
        "endless" => streamed(futures::stream::repeat(chunk), sent, &[]),
        // Ignores Range, and is far longer than declared.
        "longer" => {
            let total = 256u64 << 20;
            let length = ("Content-Length", total.to_string());
            let pieces = (total / chunk.len() as u64) as usize;
            streamed(
                futures::stream::iter(std::iter::repeat_n(chunk, pieces)),
                sent,
                &[length],
            )
        }
        "loop" => full(
            StatusCode::TEMPORARY_REDIRECT,
            &[(
                "Location",
                format!("http://127.0.0.1:{port}/v2/loop/blobs/{digest}"),
            )],
            Vec::new(),
        ),
        // The declared size, other bytes.
        "mismatch" => full(StatusCode::OK, &[], vec![b'?'; DECLARED]),
        _ => not_found(),
    }
}
