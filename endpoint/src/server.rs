//! The HTTP server: authentication, routing, and one handler per distribution API request,
//! each a call or two on the [`Store`].

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK, LOCATION, RANGE,
    WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use reposure_registry::digest::Digest;
use reposure_registry::error::{RegistryError, Result};
use reposure_registry::formats::manifest::{MAX_MANIFEST_SIZE, StoredManifest};
use reposure_registry::names::Reference;
use reposure_registry::store::Store;
use tracing::{Instrument, debug, info_span, warn};

use crate::Credentials;
use crate::error::{ApiError, Codes};
use crate::route::{BadRoute, Route};
use crate::uploads::Uploads;

/// A response body.
pub type Body = UnsyncBoxBody<Bytes, RegistryError>;

/// Header every answer carries, as registries do: clients check it on `/v2/`.
const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");
const DIGEST_HEADER: &str = "docker-content-digest";
const UPLOAD_UUID: &str = "docker-upload-uuid";

/// Entries a catalog or tags page holds when the client names no `n`.
const DEFAULT_PAGE: usize = 1000;

/// The endpoint: a store served over the distribution API to whoever holds the
/// credentials.
pub struct Endpoint {
    store: Arc<dyn Store>,
    authorization: HeaderValue,
    uploads: Uploads,
}

impl Endpoint {
    pub fn new(store: Arc<dyn Store>, credentials: &Credentials) -> Arc<Self> {
        Arc::new(Self {
            store,
            authorization: credentials.authorization(),
            uploads: Uploads::default(),
        })
    }

    /// Answers one request.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let span = info_span!(
            "endpoint_request",
            method = %request.method(),
            path = %request.uri().path()
        );
        let answer = async {
            if !self.authorized(request.headers()) {
                return unauthorized();
            }
            let route = match Route::parse(request.uri().path()) {
                Ok(route) => route,
                Err(BadRoute::Unknown) => {
                    return error(&ApiError::new(
                        StatusCode::NOT_FOUND,
                        "UNSUPPORTED",
                        "not a path of the OCI distribution API",
                    ));
                }
                Err(BadRoute::Name(why)) => {
                    return error(&ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", why));
                }
                Err(BadRoute::Reference(why)) => {
                    return error(&ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "DIGEST_INVALID",
                        why,
                    ));
                }
            };
            match self.route(route, request).await {
                Ok(response) => response,
                Err(e) => {
                    match e.status {
                        StatusCode::NOT_FOUND => debug!(error = %e.message, "not found"),
                        _ => warn!(status = %e.status, error = %e.message, "request failed"),
                    }
                    error(&e)
                }
            }
        }
        .instrument(span)
        .await;
        Ok(answer)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(AUTHORIZATION)
            .is_some_and(|given| constant_time_eq(given.as_bytes(), self.authorization.as_bytes()))
    }

    async fn route(
        &self,
        route: Route,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let method = request.method().clone();
        let head = method == Method::HEAD;
        match (method, route) {
            (Method::GET | Method::HEAD, Route::Base) => {
                Ok(json_response(StatusCode::OK, b"{}".to_vec(), head))
            }
            (Method::GET, Route::Catalog) => self.catalog(request.uri().query()).await,
            (Method::GET, Route::Tags { repository }) => {
                self.tags(&repository, request.uri().query()).await
            }
            (
                Method::GET | Method::HEAD,
                Route::Manifest {
                    repository,
                    reference,
                },
            ) => self.get_manifest(&repository, &reference, head).await,
            (
                Method::PUT,
                Route::Manifest {
                    repository,
                    reference,
                },
            ) => self.put_manifest(&repository, &reference, request).await,
            (
                Method::DELETE,
                Route::Manifest {
                    repository,
                    reference,
                },
            ) => self.delete_manifest(&repository, &reference).await,
            (Method::GET | Method::HEAD, Route::Blob { repository, digest }) => {
                self.get_blob(&repository, &digest, request.headers(), head)
                    .await
            }
            (Method::POST, Route::Uploads { repository }) => {
                self.start_upload(&repository, request).await
            }
            (Method::GET, Route::Upload { repository, id }) => {
                let upload = self.upload(&repository, &id)?;
                Ok(upload_status(
                    &repository,
                    &id,
                    upload.received().await,
                    StatusCode::NO_CONTENT,
                ))
            }
            (Method::PATCH, Route::Upload { repository, id }) => {
                self.patch_upload(&repository, &id, request).await
            }
            (Method::PUT, Route::Upload { repository, id }) => {
                self.finish_upload(&repository, &id, request).await
            }
            (Method::DELETE, Route::Upload { repository, id }) => {
                let upload = self.upload(&repository, &id)?;
                upload.cancel().await;
                self.uploads.remove(&id);
                Ok(empty_response(StatusCode::NO_CONTENT))
            }
            (Method::GET, Route::Referrers { .. }) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "UNSUPPORTED",
                "the referrers API is not served here: clients fall back to referrer tags",
            )),
            (method, route) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                format!("{method} is not served for {route:?}"),
            )),
        }
    }

    async fn catalog(&self, query: Option<&str>) -> Result<Response<Body>, ApiError> {
        let names = self
            .store
            .list_repositories()
            .await
            .map_err(|e| ApiError::from_registry(&e, Codes::NAME))?;
        Ok(listing(
            names,
            query,
            "/v2/_catalog",
            |page| serde_json::json!({ "repositories": page }),
        ))
    }

    async fn tags(
        &self,
        repository: &str,
        query: Option<&str>,
    ) -> Result<Response<Body>, ApiError> {
        let tags = self
            .store
            .list_tags(repository)
            .await
            .map_err(|e| ApiError::from_registry(&e, Codes::NAME))?;
        let path = format!("/v2/{repository}/tags/list");
        Ok(listing(
            tags,
            query,
            &path,
            |page| serde_json::json!({ "name": repository, "tags": page }),
        ))
    }

    async fn get_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        head: bool,
    ) -> Result<Response<Body>, ApiError> {
        let manifest = self
            .store
            .get_manifest(repository, reference)
            .await
            .map_err(|e| ApiError::from_registry(&e, Codes::MANIFEST))?;
        let length = manifest.bytes.len();
        let response = Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, header_value(&manifest.media_type)?)
            .header(DIGEST_HEADER, header_value(manifest.digest.as_str())?)
            .header(CONTENT_LENGTH, length)
            .header(API_VERSION.0, API_VERSION.1);
        if head {
            return Ok(response.body(empty()).expect("valid response"));
        }
        Ok(response.body(full(manifest.bytes)).expect("valid response"))
    }

    async fn put_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let media_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = http_body_util::Limited::new(request.into_body(), MAX_MANIFEST_SIZE)
            .collect()
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_INVALID",
                    format!("reading the manifest: {e}"),
                )
            })?
            .to_bytes();
        let digest = Digest::of(&bytes);
        if let Reference::Digest(named) = reference
            && *named != digest
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("the manifest has digest {digest}, not {named}"),
            ));
        }
        // Without a Content-Type, the manifest's own mediaType field says what it is.
        let media_type = match media_type {
            Some(media_type) => media_type,
            None => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "MANIFEST_INVALID",
                        "no Content-Type and no mediaType",
                    )
                })?,
        };
        let manifest = StoredManifest {
            bytes,
            digest: digest.clone(),
            media_type,
        };
        self.store
            .put_manifest(repository, reference, &manifest)
            .await
            .map_err(|e| ApiError::from_registry(&e, Codes::MANIFEST))?;
        Ok(Response::builder()
            .status(StatusCode::CREATED)
            .header(LOCATION, format!("/v2/{repository}/manifests/{digest}"))
            .header(DIGEST_HEADER, header_value(digest.as_str())?)
            .header(CONTENT_LENGTH, 0)
            .body(empty())
            .expect("valid response"))
    }

    async fn delete_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<Response<Body>, ApiError> {
        let deleted = match reference {
            Reference::Tag(tag) => self.store.delete_tag(repository, tag).await,
            Reference::Digest(digest) => self.store.delete_manifest(repository, digest).await,
        };
        deleted.map_err(|e| ApiError::from_registry(&e, Codes::MANIFEST))?;
        Ok(empty_response(StatusCode::ACCEPTED))
    }

    async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Response<Body>, ApiError> {
        let size = self
            .store
            .blob_size(repository, digest)
            .await
            .map_err(|e| ApiError::from_registry(&e, Codes::BLOB))?;
        let range = headers
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .map(|v| parse_range(v, size))
            .transpose()?;
        let (status, offset, length) = match range {
            Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
            None => (StatusCode::OK, 0, size),
        };
        let mut response = Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(DIGEST_HEADER, header_value(digest.as_str())?)
            .header(CONTENT_LENGTH, length)
            .header("accept-ranges", "bytes");
        if status == StatusCode::PARTIAL_CONTENT {
            response = response.header(
                CONTENT_RANGE,
                format!("bytes {offset}-{}/{size}", offset + length - 1),
            );
        }
        if head || length == 0 {
            return Ok(response.body(empty()).expect("valid response"));
        }
        let stream = self
            .store
            .get_blob(repository, digest, offset, length)
            .await
            .map_err(|e| ApiError::from_registry(&e, Codes::BLOB))?;
        let frames = stream.map_ok(Frame::data);
        Ok(response
            .body(BodyExt::boxed_unsync(StreamBody::new(frames)))
            .expect("valid response"))
    }

    fn upload(&self, repository: &str, id: &str) -> Result<Arc<crate::uploads::Upload>, ApiError> {
        self.uploads.get(repository, id).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "BLOB_UPLOAD_UNKNOWN",
                format!(
                    "no upload {id} under way (it finished, failed, or the endpoint restarted)"
                ),
            )
        })
    }

    async fn start_upload(
        &self,
        repository: &str,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let query = query_pairs(request.uri().query());
        let get = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let digest_of = |text: &str| {
            Digest::parse(text).map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string())
            })
        };
        // A mount that cannot be made (no such blob, no access to `from`) is an upload
        // instead, as the spec says.
        if let (Some(mounted), Some(from)) = (get("mount"), get("from")) {
            let digest = digest_of(&mounted)?;
            let mounted = reposure_registry::names::check_repository(&from).is_ok()
                && match self.store.mount_blob(repository, &from, &digest).await {
                    Ok(mounted) => mounted,
                    Err(e) => {
                        debug!(error = %e, "mount refused; uploading instead");
                        false
                    }
                };
            if mounted {
                return Ok(blob_created(repository, &digest));
            }
        }
        // A monolithic upload: the whole blob in this request.
        let monolithic = get("digest").map(|d| digest_of(&d)).transpose()?;
        let (id, upload) = self.uploads.start(repository);
        if let Some(digest) = monolithic {
            let body = body_stream(request.into_body());
            let finished = async {
                upload.append(&self.store, body).await?;
                upload.finish(&self.store, &digest).await
            }
            .await;
            self.uploads.remove(&id);
            finished.map_err(|e| ApiError::from_registry(&e, Codes::BLOB))?;
            return Ok(blob_created(repository, &digest));
        }
        Ok(upload_status(repository, &id, 0, StatusCode::ACCEPTED))
    }

    async fn patch_upload(
        &self,
        repository: &str,
        id: &str,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let upload = self.upload(repository, id)?;
        let offset: Option<u64> = request
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.trim_start_matches("bytes ")
                    .split(['-', '/'])
                    .next()?
                    .parse()
                    .ok()
            });
        // A chunk that does not start where the upload stands: 416, saying where it does.
        let received = upload.received().await;
        if offset.is_some_and(|offset| offset != received) {
            return Ok(upload_status(
                repository,
                id,
                received,
                StatusCode::RANGE_NOT_SATISFIABLE,
            ));
        }
        let body = body_stream(request.into_body());
        match upload.append(&self.store, body).await {
            Ok(received) => Ok(upload_status(
                repository,
                id,
                received,
                StatusCode::ACCEPTED,
            )),
            Err(e) => {
                self.uploads.remove(id);
                Err(ApiError::from_registry(&e, Codes::BLOB))
            }
        }
    }

    async fn finish_upload(
        &self,
        repository: &str,
        id: &str,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let upload = self.upload(repository, id)?;
        let query = query_pairs(request.uri().query());
        let digest = query
            .iter()
            .find(|(k, _)| k == "digest")
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "DIGEST_INVALID",
                    "PUT without ?digest=",
                )
            })?;
        let digest = Digest::parse(digest)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string()))?;
        let body = body_stream(request.into_body());
        let finished = async {
            upload.append(&self.store, body).await?;
            upload.finish(&self.store, &digest).await
        }
        .await;
        self.uploads.remove(id);
        finished.map_err(|e| ApiError::from_registry(&e, Codes::BLOB))?;
        Ok(blob_created(repository, &digest))
    }
}

/// A request body as a stream of chunks; a connection that breaks ends it in an error.
fn body_stream(body: Incoming) -> impl futures::Stream<Item = Result<Bytes>> + Unpin {
    body.into_data_stream()
        .map_err(|e| RegistryError::Unavailable(format!("the client's request broke off: {e}")))
}

fn blob_created(repository: &str, digest: &Digest) -> Response<Body> {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(LOCATION, format!("/v2/{repository}/blobs/{digest}"))
        .header(DIGEST_HEADER, digest.as_str())
        .header(CONTENT_LENGTH, 0)
        .body(empty())
        .expect("valid response")
}

/// The answer about an upload under way: where to send more, and what was received.
fn upload_status(repository: &str, id: &str, received: u64, status: StatusCode) -> Response<Body> {
    // "0-0" for nothing received, as registries answer.
    let range = format!("0-{}", received.saturating_sub(1));
    Response::builder()
        .status(status)
        .header(LOCATION, format!("/v2/{repository}/blobs/uploads/{id}"))
        .header(RANGE, range)
        .header(UPLOAD_UUID, id)
        .header(CONTENT_LENGTH, 0)
        .body(empty())
        .expect("valid response")
}

/// `bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX` within a blob of `size`.
fn parse_range(value: &str, size: u64) -> Result<(u64, u64), ApiError> {
    let unsatisfiable = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UNKNOWN",
            format!("range {value:?} of a blob of {size} bytes"),
        )
    };
    let spec = value.strip_prefix("bytes=").ok_or_else(unsatisfiable)?;
    let (start, end) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let last = size.checked_sub(1).ok_or_else(unsatisfiable)?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| unsatisfiable())?;
            (size.saturating_sub(n), last)
        }
        (start, "") => (start.parse().map_err(|_| unsatisfiable())?, last),
        (start, end) => (
            start.parse().map_err(|_| unsatisfiable())?,
            end.parse::<u64>().map_err(|_| unsatisfiable())?.min(last),
        ),
    };
    if start > end {
        return Err(unsatisfiable());
    }
    Ok((start, end))
}

/// One page of `items` (sorted here) as the JSON `document` makes of it, with a `Link` to
/// the next page of `path` when more follow.
fn listing(
    mut items: Vec<String>,
    query: Option<&str>,
    path: &str,
    document: impl FnOnce(&[String]) -> serde_json::Value,
) -> Response<Body> {
    items.sort();
    let (page, next) = paginate(items, query);
    let bytes = serde_json::to_vec(&document(&page)).expect("JSON serialises");
    let mut response = json_response(StatusCode::OK, bytes, false);
    if let Some(last) = next
        && let Ok(value) = HeaderValue::from_str(&format!(
            "<{path}?n={}&last={last}>; rel=\"next\"",
            page.len()
        ))
    {
        response.headers_mut().insert(LINK, value);
    }
    response
}

/// A page of a sorted list after `last`, at most `n` long, and the last entry if more follow.
fn paginate(items: Vec<String>, query: Option<&str>) -> (Vec<String>, Option<String>) {
    let query = query_pairs(query);
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let n = get("n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_PAGE);
    let after: Vec<String> = match get("last") {
        Some(last) => items.into_iter().filter(|i| *i > last).collect(),
        None => items,
    };
    let more = after.len() > n;
    let page: Vec<String> = after.into_iter().take(n).collect();
    let next = if more { page.last().cloned() } else { None };
    (page, next)
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url_pairs(query.unwrap_or_default())
}

/// `k=v&k=v`, percent-decoded.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, byte) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header_value(text: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(text).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "UNKNOWN",
            format!("{text:?} cannot be a header"),
        )
    })
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    full(Bytes::new())
}

fn empty_response(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_LENGTH, 0)
        .body(empty())
        .expect("valid response")
}

fn json_response(status: StatusCode, bytes: Vec<u8>, head: bool) -> Response<Body> {
    let length = bytes.len();
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, length)
        .header(API_VERSION.0, API_VERSION.1)
        .body(if head { empty() } else { full(bytes) })
        .expect("valid response")
}

fn error(error: &ApiError) -> Response<Body> {
    json_response(error.status, error.body(), false)
}

/// 401 with the challenge that makes clients send the credentials they were given.
fn unauthorized() -> Response<Body> {
    let mut response = error(&ApiError::new(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "this endpoint takes the credentials reposure registry serve wrote for it",
    ));
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"reposure\""),
    );
    response
}

/// Compares without leaking where two secrets first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_pages() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), (0, 9));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), (90, 99));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), (90, 99));
        assert_eq!(parse_range("bytes=50-500", 100).unwrap(), (50, 99));
        assert!(parse_range("bytes=100-", 100).is_err());
        assert!(parse_range("bytes=0-1", 0).is_err());
        let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            paginate(items.clone(), Some("n=2")),
            (vec!["a".into(), "b".into()], Some("b".into()))
        );
        assert_eq!(
            paginate(items.clone(), Some("n=2&last=b")),
            (vec!["c".into(), "d".into()], None)
        );
        assert_eq!(paginate(items, None).0.len(), 4);
        assert_eq!(
            url_pairs("from=a%2Fb&mount=sha256%3Ax"),
            [
                ("from".into(), "a/b".into()),
                ("mount".into(), "sha256:x".into())
            ]
        );
    }
}
