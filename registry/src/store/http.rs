//! A registry reached over HTTP(S), speaking the OCI distribution API.
//!
//! Manifests go through `oci-client` (it negotiates Basic and Bearer auth). The calls it
//! lacks or does in a way that costs throughput are made here with the same `reqwest`
//! stack and the same credentials:
//!
//! * catalog and tag listing, following `Link: <...>; rel="next"` pages;
//! * blob reads with `Range`, streamed;
//! * blob uploads as one streamed `PATCH` between the `POST` and the `PUT ?digest=`, with
//!   the digest computed while the bytes flow, so a file of any size is uploaded with
//!   bounded memory and one request for its data;
//! * `DELETE` of tags and manifests.
//!
//! TLS is always verified: against the system roots plus the CA given with `ca=`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue, LINK, LOCATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use tokio::sync::OnceCell;
use tracing::debug;

use super::Store;
use super::watchdog::Watchdog;
use crate::ByteStream;
use crate::credentials::Credentials;
use crate::digest::{Digest, RunningDigest};
use crate::error::{RegistryError, Result};
use crate::formats::manifest::{MAX_MANIFEST_SIZE, StoredManifest, media_type_of};
use crate::formats::media_types::ACCEPTED_MANIFESTS;
use crate::names::Reference;

/// How long to wait for a TCP (and TLS) connection. Long enough for a slow link, short
/// enough that a registry that went away turns into EIO before a shell user gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a response may stay silent (between two reads) before the request fails. A
/// registry that stalls mid-transfer is reported rather than waited on forever.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Page size asked of catalog and tag listings by default. Distribution honours up to 1000;
/// smaller registries return fewer and a `Link` header, which is followed either way.
pub const LIST_PAGE_SIZE: usize = 1000;

/// Pauses before each retry of a failed GET ([`HttpStore::get`]): two more tries within a
/// third of a second, enough to ride out a registry's momentary error, short enough that a
/// registry that is really down is reported at once.
const GET_RETRY_PAUSES: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(250)];

/// Upper bound on pages followed in one listing, so a registry that loops its `Link`
/// headers cannot hang a listing.
const MAX_LIST_PAGES: usize = 100_000;

/// How to reach and authenticate to an HTTP registry.
#[derive(Clone, Default)]
pub struct HttpOptions {
    /// PEM certificates of a CA to trust in addition to the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Credentials, if any.
    pub credentials: Option<Credentials>,
    /// Page size for catalog and tag listings (default [`LIST_PAGE_SIZE`]).
    pub page_size: Option<usize>,
    /// How long the registry may stay silent (default [`READ_TIMEOUT`]); a connection
    /// may take as long, up to [`CONNECT_TIMEOUT`].
    pub read_timeout: Option<Duration>,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// Which authentication the registry asked for in its `/v2/` challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Challenge {
    None,
    Basic,
    Bearer,
}

/// A registry reached over HTTP(S).
pub struct HttpStore {
    base: Url,
    host: String,
    oci: oci_client::Client,
    http: reqwest::Client,
    /// For streamed uploads: without a read timeout, which would count the time spent
    /// sending the body (the response is not due until it is all sent) and so fail every
    /// upload longer than the timeout. A [`Watchdog`] bounds silence instead.
    upload_http: reqwest::Client,
    auth: RegistryAuth,
    challenge: OnceCell<Challenge>,
    page_size: usize,
    read_timeout: Duration,
}

impl HttpStore {
    /// Creates a store for `base` (`http://HOST[:PORT]` or `https://HOST[:PORT]`).
    pub fn new(base: &Url, options: HttpOptions) -> Result<Arc<Self>> {
        let host = match base.port() {
            Some(port) => format!("{}:{port}", base.host_str().unwrap_or_default()),
            None => base.host_str().unwrap_or_default().to_owned(),
        };
        if host.is_empty() || !matches!(base.scheme(), "http" | "https") {
            return Err(RegistryError::Usage(format!(
                "{base} is not an http:// or https:// registry address"
            )));
        }
        let mut certificates = Vec::new();
        let mut extra_roots = Vec::new();
        if let Some(pem) = &options.ca_pem {
            extra_roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| RegistryError::Usage(format!("the CA file is not PEM: {e}")))?;
            if extra_roots.is_empty() {
                return Err(RegistryError::Usage(
                    "the CA file holds no certificate".into(),
                ));
            }
            certificates.push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem.clone(),
            });
        }
        let read_timeout = options.read_timeout.unwrap_or(READ_TIMEOUT);
        let connect_timeout = CONNECT_TIMEOUT.min(read_timeout);
        let client = |read_timeout: Option<Duration>| {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                .user_agent(concat!("reposure/", env!("CARGO_PKG_VERSION")));
            if let Some(timeout) = read_timeout {
                builder = builder.read_timeout(timeout);
            }
            if !extra_roots.is_empty() {
                builder = builder.tls_certs_merge(extra_roots.clone());
            }
            builder
                .build()
                .map_err(|e| RegistryError::Rejected(format!("cannot set up HTTP: {e}")))
        };
        let http = client(Some(read_timeout))?;
        let upload_http = client(None)?;
        let config = ClientConfig {
            protocol: if base.scheme() == "http" {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: certificates,
            connect_timeout: Some(connect_timeout),
            read_timeout: Some(read_timeout),
            ..Default::default()
        };
        // `Client::new` would silently fall back to a default config on error (dropping the
        // CA); `try_from` reports it.
        let oci = oci_client::Client::try_from(config).map_err(|e| map_oci(e, "client setup"))?;
        let auth = match options.credentials {
            Some(Credentials::Bearer(token)) => RegistryAuth::Bearer(token),
            Some(Credentials::Basic { username, password }) => {
                RegistryAuth::Basic(username, password)
            }
            None => RegistryAuth::Anonymous,
        };
        let mut base = base.clone();
        base.set_path("/");
        base.set_query(None);
        Ok(Arc::new(Self {
            base,
            host,
            oci,
            http,
            upload_http,
            auth,
            challenge: OnceCell::new(),
            page_size: options.page_size.unwrap_or(LIST_PAGE_SIZE).max(1),
            read_timeout,
        }))
    }

    fn reference(&self, repository: &str, reference: &Reference) -> oci_client::Reference {
        match reference {
            Reference::Tag(tag) => oci_client::Reference::with_tag(
                self.host.clone(),
                repository.to_owned(),
                tag.clone(),
            ),
            Reference::Digest(d) => oci_client::Reference::with_digest(
                self.host.clone(),
                repository.to_owned(),
                d.as_str().to_owned(),
            ),
        }
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("registry paths are valid URLs")
    }

    /// The challenge from `GET /v2/`, asked once.
    async fn challenge(&self) -> Result<Challenge> {
        self.challenge
            .get_or_try_init(|| async {
                let response = self
                    .http
                    .get(self.url("v2/"))
                    .send()
                    .await
                    .map_err(map_reqwest)?;
                let header = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                Ok(if header.starts_with("bearer") {
                    Challenge::Bearer
                } else if header.starts_with("basic") {
                    Challenge::Basic
                } else {
                    Challenge::None
                })
            })
            .await
            .copied()
    }

    /// Opens an upload session; returns where to send the content.
    async fn start_upload(&self, repository: &str) -> Result<Url> {
        let start = self.url(&format!("v2/{repository}/blobs/uploads/"));
        let response = self
            .send(
                self.http.post(start.clone()).header("Content-Length", "0"),
                Some(repository),
                RegistryOperation::Push,
            )
            .await?;
        let response = check_status(response, &start).await?;
        location(&start, &response)
    }

    /// Adds the right `Authorization` to a request this module makes itself.
    async fn authorize(
        &self,
        request: RequestBuilder,
        repository: Option<&str>,
        operation: RegistryOperation,
    ) -> Result<RequestBuilder> {
        match (&self.auth, self.challenge().await?) {
            (RegistryAuth::Bearer(token), _) => Ok(request.bearer_auth(token)),
            (RegistryAuth::Basic(user, password), Challenge::Basic | Challenge::None) => {
                Ok(request.basic_auth(user, Some(password)))
            }
            (_, Challenge::Bearer) => {
                let Some(repository) = repository else {
                    return Ok(request);
                };
                let reference = self.reference(repository, &Reference::Tag("latest".into()));
                match self.oci.auth(&reference, &self.auth, operation).await {
                    Ok(Some(token)) => Ok(request.bearer_auth(token)),
                    Ok(None) => Ok(request),
                    Err(e) => Err(map_oci(e, "authentication")),
                }
            }
            (RegistryAuth::Anonymous, _) => Ok(request),
        }
    }

    async fn send(
        &self,
        request: RequestBuilder,
        repository: Option<&str>,
        operation: RegistryOperation,
    ) -> Result<Response> {
        self.authorize(request, repository, operation)
            .await?
            .send()
            .await
            .map_err(map_reqwest)
    }

    /// Sends a GET (safe to repeat), trying again after an answer worth retrying: a 5xx,
    /// or a connection refused or cut before the answer. The reference registry answers
    /// 500 for a moment when a tag is read while another client rewrites it, and a
    /// registry restarting refuses connections for a moment. A timeout is not retried, so
    /// the bound on silence holds.
    async fn get(
        &self,
        request: RequestBuilder,
        repository: Option<&str>,
        operation: RegistryOperation,
    ) -> Result<Response> {
        let mut pauses = GET_RETRY_PAUSES.iter();
        loop {
            let attempt = request
                .try_clone()
                .expect("a GET has no streamed body to prevent a retry");
            let outcome = self
                .authorize(attempt, repository, operation)
                .await?
                .send()
                .await;
            let worth_retrying = match &outcome {
                Ok(response) => response.status().is_server_error(),
                Err(e) => !e.is_timeout() && (e.is_connect() || e.is_request()),
            };
            match (worth_retrying, pauses.next()) {
                (true, Some(pause)) => {
                    debug!(repository, status = ?outcome.as_ref().map(Response::status).ok(), "retrying a GET");
                    tokio::time::sleep(*pause).await;
                }
                _ => return outcome.map_err(map_reqwest),
            }
        }
    }

    /// Follows a paginated listing, collecting `field` from every page.
    async fn list_pages(
        &self,
        first: Url,
        field: &str,
        repository: Option<&str>,
    ) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_LIST_PAGES {
                return Err(RegistryError::Rejected(format!(
                    "listing did not end after {MAX_LIST_PAGES} pages"
                )));
            }
            let response = self
                .get(
                    self.http.get(url.clone()),
                    repository,
                    RegistryOperation::Pull,
                )
                .await?;
            let response = check_status(response, &url).await?;
            next = next_page(&url, response.headers().get(LINK));
            let body = response.bytes().await.map_err(map_reqwest)?;
            let page: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                RegistryError::Corrupt(format!("listing at {url} is not JSON: {e}"))
            })?;
            if let Some(items) = page.get(field).and_then(|v| v.as_array()) {
                let before = names.len();
                names.extend(items.iter().filter_map(|v| v.as_str().map(str::to_owned)));
                if names.len() == before {
                    // An empty page ends the listing whatever the Link header says.
                    break;
                }
            }
        }
        Ok(names)
    }
}

#[async_trait]
impl Store for HttpStore {
    fn describe(&self) -> String {
        format!("{}://{}", self.base.scheme(), self.host)
    }

    async fn check(&self) -> Result<()> {
        let url = self.url("v2/");
        let response = self
            .get(self.http.get(url.clone()), None, RegistryOperation::Pull)
            .await?;
        if response.status() == StatusCode::UNAUTHORIZED
            && self.challenge().await? == Challenge::Bearer
            && !matches!(self.auth, RegistryAuth::Anonymous)
        {
            // Token registries answer 401 at /v2/ until a scoped token is fetched; the
            // catalog is the cheapest call that proves the credentials work.
            self.list_repositories().await.map(|_| ())
        } else {
            check_status(response, &url).await.map(|_| ())
        }
    }

    async fn list_repositories(&self) -> Result<Vec<String>> {
        let mut url = self.url("v2/_catalog");
        url.query_pairs_mut()
            .append_pair("n", &self.page_size.to_string());
        self.list_pages(url, "repositories", None).await
    }

    async fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        let mut url = self.url(&format!("v2/{repository}/tags/list"));
        url.query_pairs_mut()
            .append_pair("n", &self.page_size.to_string());
        match self.list_pages(url, "tags", Some(repository)).await {
            Err(RegistryError::NotFound(_)) => Ok(Vec::new()),
            other => other,
        }
    }

    async fn get_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        // Asked directly rather than through oci-client, whose every call first probes
        // `/v2/` for a token an anonymous registry never gives: one round trip fewer per
        // lookup and per push.
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let request = self
            .http
            .get(url.clone())
            .header(ACCEPT, ACCEPTED_MANIFESTS.join(", "));
        let response = self
            .get(request, Some(repository), RegistryOperation::Pull)
            .await?;
        let response = check_status(response, &url).await?;
        let what = format!("{repository}:{reference}");
        let mut body = response.bytes_stream();
        let mut bytes = bytes::BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(map_reqwest)?;
            if bytes.len() + chunk.len() > MAX_MANIFEST_SIZE {
                return Err(RegistryError::Rejected(format!(
                    "manifest {what} is larger than {} MiB, the most registries accept; it is not read",
                    MAX_MANIFEST_SIZE >> 20
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let bytes = bytes.freeze();
        let digest = Digest::of(&bytes);
        if let Reference::Digest(expected) = reference
            && &digest != expected
        {
            return Err(RegistryError::Corrupt(format!(
                "manifest {what} has digest {digest}"
            )));
        }
        let media_type = media_type_of(&bytes)?;
        Ok(StoredManifest {
            bytes,
            digest,
            media_type,
        })
    }

    async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
        length: Option<u64>,
    ) -> Result<ByteStream> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        let range = match length {
            Some(0) => return Ok(futures::stream::empty().boxed()),
            Some(length) => format!("bytes={offset}-{}", offset + length - 1),
            None => format!("bytes={offset}-"),
        };
        let request = self.http.get(url.clone()).header(RANGE, range);
        let response = self
            .get(request, Some(repository), RegistryOperation::Pull)
            .await?;
        if response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            return Ok(futures::stream::empty().boxed());
        }
        let response = check_status(response, &url).await?;
        let full_body = response.status() == StatusCode::OK;
        let stream = response.bytes_stream().map_err(map_reqwest).boxed();
        if full_body && offset > 0 {
            // The registry ignored the Range header: skip to the offset ourselves.
            return Ok(skip_and_take(stream, offset, length));
        }
        Ok(match length {
            Some(length) if full_body => skip_and_take(stream, 0, Some(length)),
            _ => stream,
        })
    }

    async fn put_blob(&self, repository: &str, body: ByteStream) -> Result<(Digest, u64)> {
        let location = self.start_upload(repository).await?;

        // Errors from the body (the client's side) are kept apart from transport errors so
        // that a failed upload reports its real cause.
        let body_error: Arc<std::sync::Mutex<Option<RegistryError>>> = Arc::default();
        let digest = RunningDigest::default();
        let watchdog = Watchdog::default();
        let stream = {
            let body_error = body_error.clone();
            watchdog.watch(digest.wrap(body)).map(move |item| {
                item.map_err(|e| {
                    let message = e.to_string();
                    body_error.lock().expect("body error lock").get_or_insert(e);
                    std::io::Error::other(message)
                })
            })
        };
        let request = self
            .upload_http
            .patch(location.clone())
            .header("Content-Type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream));
        let sent = tokio::select! {
            sent = self.send(request, Some(repository), RegistryOperation::Push) => sent,
            () = watchdog.stalled(self.read_timeout) => Err(RegistryError::Unavailable(format!(
                "the upload made no progress and the registry sent no answer for {}s",
                self.read_timeout.as_secs_f32()
            ))),
        };
        if let Some(e) = body_error.lock().expect("body error lock").take() {
            return Err(e);
        }
        let response = check_status(sent?, &location).await?;
        let location = self::location(&location, &response)?;
        let (digest, size) = digest.finish();
        let mut commit = location.clone();
        commit
            .query_pairs_mut()
            .append_pair("digest", digest.as_str());
        let response = self
            .send(
                self.http.put(commit.clone()).header("Content-Length", "0"),
                Some(repository),
                RegistryOperation::Push,
            )
            .await?;
        check_status(response, &commit).await?;
        Ok((digest, size))
    }

    /// One request fewer than a stream: POST for an upload session, then the content with
    /// the commit (the "monolithic" PUT every registry version accepts).
    async fn put_blob_bytes(&self, repository: &str, bytes: Bytes) -> Result<(Digest, u64)> {
        let digest = Digest::of(&bytes);
        let size = bytes.len() as u64;
        let mut commit = self.start_upload(repository).await?;
        commit
            .query_pairs_mut()
            .append_pair("digest", digest.as_str());
        let request = self
            .http
            .put(commit.clone())
            .header("Content-Type", "application/octet-stream")
            .body(bytes);
        let response = self
            .send(request, Some(repository), RegistryOperation::Push)
            .await?;
        check_status(response, &commit).await?;
        Ok((digest, size))
    }

    async fn put_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        manifest: &StoredManifest,
    ) -> Result<()> {
        let content_type = HeaderValue::from_str(&manifest.media_type)
            .map_err(|_| RegistryError::Corrupt(format!("media type {:?}", manifest.media_type)))?;
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let request = self
            .http
            .put(url.clone())
            .header(CONTENT_TYPE, content_type)
            .body(manifest.bytes.clone());
        let response = self
            .send(request, Some(repository), RegistryOperation::Push)
            .await?;
        check_status(response, &url).await?;
        Ok(())
    }

    async fn mount_blob(&self, repository: &str, from: &str, digest: &Digest) -> Result<bool> {
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"));
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", from);
        let request = self.http.post(url.clone()).header("Content-Length", "0");
        let response = self
            .send(request, Some(repository), RegistryOperation::Push)
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // The registry opened an upload instead of mounting: cancel it, and let the
                // caller copy the blob.
                if let Ok(location) = location(&url, &response) {
                    let cancel = self.http.delete(location);
                    let _ = self
                        .send(cancel, Some(repository), RegistryOperation::Push)
                        .await;
                }
                Ok(false)
            }
            _ => check_status(response, &url).await.map(|_| false),
        }
    }

    async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()> {
        let url = self.url(&format!("v2/{repository}/manifests/{tag}"));
        let response = self
            .send(
                self.http.delete(url.clone()),
                Some(repository),
                RegistryOperation::Push,
            )
            .await?;
        match response.status() {
            // Distribution 2.x refuses tag deletion with 400 (or UNSUPPORTED).
            StatusCode::BAD_REQUEST => Err(RegistryError::TagDeleteUnsupported),
            _ => check_status(response, &url).await.map(|_| ()),
        }
    }

    async fn delete_manifest(&self, repository: &str, digest: &Digest) -> Result<()> {
        let url = self.url(&format!("v2/{repository}/manifests/{digest}"));
        let response = self
            .send(
                self.http.delete(url.clone()),
                Some(repository),
                RegistryOperation::Push,
            )
            .await?;
        check_status(response, &url).await.map(|_| ())
    }
}

/// Turns a non-success response into the matching error.
async fn check_status(response: Response, url: &Url) -> Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(status_error(status, url.path(), &body))
}

/// The error for an HTTP status, with the registry's own message when it sent one.
fn status_error(status: StatusCode, path: &str, body: &str) -> RegistryError {
    let message = registry_message(body).unwrap_or_else(|| status.to_string());
    let what = format!("{path}: {message}");
    match status {
        StatusCode::UNAUTHORIZED => RegistryError::Unauthorized(what),
        StatusCode::FORBIDDEN => RegistryError::Denied(what),
        StatusCode::NOT_FOUND => RegistryError::NotFound(what),
        StatusCode::METHOD_NOT_ALLOWED => RegistryError::DeleteDisabled,
        s if s.is_server_error() => RegistryError::Unavailable(what),
        _ => RegistryError::Rejected(what),
    }
}

/// The first `errors[].message` (and code) of a registry error body.
fn registry_message(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let first = value.get("errors")?.get(0)?;
    let code = first
        .get("code")
        .and_then(|c| c.as_str())
        .unwrap_or_default();
    let message = first
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default();
    Some(format!("{code} {message}").trim().to_owned())
}

/// The upload location a response names, resolved against the request URL.
fn location(request: &Url, response: &Response) -> Result<Url> {
    let header = response
        .headers()
        .get(LOCATION)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| RegistryError::Rejected("upload response has no Location header".into()))?;
    request
        .join(header)
        .map_err(|e| RegistryError::Rejected(format!("bad Location {header:?}: {e}")))
}

/// The `rel="next"` URL of a `Link` header.
fn next_page(current: &Url, link: Option<&HeaderValue>) -> Option<Url> {
    let link = link?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        current.join(target).ok()
    })
}

/// Skips `skip` bytes of a stream and then yields at most `take` bytes.
fn skip_and_take(stream: ByteStream, skip: u64, take: Option<u64>) -> ByteStream {
    let mut to_skip = skip;
    let mut remaining = take.unwrap_or(u64::MAX);
    stream
        .try_filter_map(move |mut chunk: Bytes| {
            let drop_now = to_skip.min(chunk.len() as u64);
            to_skip -= drop_now;
            let _ = chunk.split_to(drop_now as usize);
            let keep = remaining.min(chunk.len() as u64);
            remaining -= keep;
            chunk.truncate(keep as usize);
            futures::future::ready(Ok((!chunk.is_empty()).then_some(chunk)))
        })
        .boxed()
}

/// Maps a transport error, telling certificate problems apart so the message can say `ca=`.
fn map_reqwest(error: reqwest::Error) -> RegistryError {
    let chain = error_chain(&error);
    let lower = chain.to_ascii_lowercase();
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("invalid peer")
    {
        RegistryError::UntrustedCertificate(chain)
    } else if error.is_timeout() {
        RegistryError::Unavailable(format!("timed out: {chain}"))
    } else {
        RegistryError::Unavailable(chain)
    }
}

/// An error and its sources on one line (reqwest's top-level message omits the cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Maps an `oci-client` error.
fn map_oci(error: OciDistributionError, what: &str) -> RegistryError {
    match error {
        OciDistributionError::RequestError(e) => map_reqwest(e),
        OciDistributionError::ImageManifestNotFoundError(_) => {
            RegistryError::NotFound(what.to_owned())
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => {
            RegistryError::Unauthorized(what.to_owned())
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let message = envelope
                .errors
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            let text = format!("{what}: {message}");
            match envelope.errors.first().map(|e| &e.code) {
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound,
                ) => RegistryError::NotFound(text),
                Some(OciErrorCode::Unauthorized) => RegistryError::Unauthorized(text),
                Some(OciErrorCode::Denied) => RegistryError::Denied(text),
                _ => RegistryError::Rejected(text),
            }
        }
        OciDistributionError::ServerError { code, message, .. } => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            status_error(status, what, &message)
        }
        other => RegistryError::Rejected(format!("{what}: {}", error_chain(&other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_next_page() {
        let current = Url::parse("http://127.0.0.1:5000/v2/_catalog?n=2").unwrap();
        let link = HeaderValue::from_static("</v2/_catalog?last=b&n=2>; rel=\"next\"");
        assert_eq!(
            next_page(&current, Some(&link)).unwrap().as_str(),
            "http://127.0.0.1:5000/v2/_catalog?last=b&n=2"
        );
        assert!(next_page(&current, None).is_none());
        let prev = HeaderValue::from_static("</v2/_catalog?last=a>; rel=\"prev\"");
        assert!(next_page(&current, Some(&prev)).is_none());
    }

    #[test]
    fn registry_error_bodies_are_summarised() {
        let body =
            r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#;
        let e = status_error(StatusCode::BAD_REQUEST, "/v2/x/manifests/y", body);
        assert!(
            e.to_string().contains("MANIFEST_BLOB_UNKNOWN blob unknown"),
            "{e}"
        );
        assert!(matches!(
            status_error(StatusCode::METHOD_NOT_ALLOWED, "/", ""),
            RegistryError::DeleteDisabled
        ));
        assert!(matches!(
            status_error(StatusCode::SERVICE_UNAVAILABLE, "/", ""),
            RegistryError::Unavailable(_)
        ));
    }

    /// A registry that answers every request with one canned response.
    async fn canned_registry(response: Vec<u8>) -> Url {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let _ = socket.write_all(&response).await;
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn manifests_over_four_mib_are_refused_unread() {
        let body = format!(
            "{{\"schemaVersion\":2,\"pad\":\"{}\"}}",
            "p".repeat(5 << 20)
        );
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let url = canned_registry(response.into_bytes()).await;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = HttpStore::new(&url, HttpOptions::default()).unwrap();
        let refused = store
            .get_manifest("big", &Reference::Tag("latest".into()))
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, RegistryError::Rejected(m) if m.contains("larger than 4 MiB")),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn skip_and_take_crosses_chunks() {
        let chunks: ByteStream = futures::stream::iter(
            [&b"abc"[..], b"defg", b"hi"]
                .into_iter()
                .map(|c| Ok(Bytes::from_static(c))),
        )
        .boxed();
        let out: Vec<Bytes> = skip_and_take(chunks, 2, Some(5))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(out.concat(), b"cdefg");
    }
}
