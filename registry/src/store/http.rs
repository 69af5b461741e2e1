//! A registry reached over HTTP(S), speaking the OCI distribution API.
//!
//! Every request goes through one place ([`HttpStore::send`]), which
//!
//! * authenticates it for exactly what it needs ([`crate::auth`]: Basic, or a token for the
//!   request's scopes) and, after a `401` with a challenge, tries once more with a new token;
//! * waits out throttling (`429`, and `503` with `Retry-After`) within the timeout, saying
//!   so in the log;
//! * for a GET, tries again after a momentary failure (a 5xx, a refused or cut connection).
//!
//! Blob reads follow redirects to another origin (object storage, a CDN) with the `Range`
//! kept and the `Authorization` header dropped (reqwest removes it when a redirect leaves
//! the host); what arrives is still verified against its digest by the layer above.
//! Uploads stream the content in one `PATCH` between the `POST` and the `PUT ?digest=`, with
//! the digest computed while the bytes flow; a registry that asks for chunks
//! (`OCI-Chunk-Min-Length`), or a maximum chunk size given by the user, gets `PATCH`es with
//! `Content-Range` instead. Credentials never go to an upload `Location` on another host.
//!
//! TLS is always verified: against the system roots plus the CA given with `ca=`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LINK,
    LOCATION, RANGE, RETRY_AFTER,
};
use reqwest::{Method, Response, StatusCode, Url};
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use super::Store;
use super::watchdog::Watchdog;
use crate::ByteStream;
use crate::auth::challenge::{self, Challenge};
use crate::auth::{Access, Authenticator};
use crate::credentials::Found;
use crate::digest::{Digest, RunningDigest};
use crate::error::{RegistryError, Result};
use crate::formats::manifest::{MAX_MANIFEST_SIZE, StoredManifest, media_type_of};
use crate::formats::media_types::ACCEPTED_MANIFESTS;
use crate::names::Reference;

/// How long to wait for a TCP (and TLS) connection. Long enough for a slow link, short
/// enough that a registry that went away turns into EIO before a shell user gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a response may stay silent (between two reads) before the request fails. A
/// registry that stalls mid-transfer is reported rather than waited on forever. It also
/// bounds the time one request spends waiting out a registry's throttling.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Page size asked of catalog and tag listings by default. Distribution honours up to 1000;
/// smaller registries return fewer and a `Link` header, which is followed either way.
pub const LIST_PAGE_SIZE: usize = 1000;

/// Pauses before each retry of a failed GET: two more tries within a third of a second,
/// enough to ride out a registry's momentary error, short enough that a registry that is
/// really down is reported at once.
const GET_RETRY_PAUSES: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(250)];

/// How long a `429` without `Retry-After` is waited out.
const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(1);

/// Upper bound on pages followed in one listing, so a registry that loops its `Link`
/// headers cannot hang a listing.
const MAX_LIST_PAGES: usize = 100_000;

/// The slowest average rate a response may arrive at: a body that takes longer than the
/// silence timeout plus its size at this rate fails, so a registry that trickles bytes
/// cannot hold an operation forever (a 4 MiB manifest: 94 s; a 1 GiB blob: 4.6 h).
const MIN_TRANSFER_RATE: u64 = 64 * 1024;

/// The largest error body read, for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The largest listing page read: 1000 names of up to 255 characters, with room to spare.
const MAX_LIST_PAGE: usize = 4 * 1024 * 1024;

/// Chunk size of a chunked upload when the registry names only a minimum: large enough
/// that a GiB is a few dozen requests, small enough to hold one chunk in memory (a chunk is
/// buffered so that it can be sent again after throttling).
const DEFAULT_CHUNK: u64 = 16 * 1024 * 1024;

/// How to reach and authenticate to an HTTP registry.
#[derive(Clone, Default, Debug)]
pub struct HttpOptions {
    /// PEM certificates of a CA to trust in addition to the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Credentials, and where they came from.
    pub credentials: Option<Found>,
    /// Page size for catalog and tag listings (default [`LIST_PAGE_SIZE`]).
    pub page_size: Option<usize>,
    /// How long the registry may stay silent (default [`READ_TIMEOUT`]); a connection
    /// may take as long, up to [`CONNECT_TIMEOUT`].
    pub read_timeout: Option<Duration>,
    /// Upload in chunks of at most this many bytes (registries with a maximum request size).
    pub max_chunk: Option<u64>,
}

/// A request that can be sent again: its body is in memory.
struct Call<'a> {
    method: Method,
    url: Url,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Bytes>,
    access: Access<'a>,
}

impl<'a> Call<'a> {
    fn new(method: Method, url: Url, access: Access<'a>) -> Self {
        Self {
            method,
            url,
            headers: Vec::new(),
            body: None,
            access,
        }
    }

    fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    fn body(mut self, body: Bytes) -> Self {
        self.body = Some(body);
        self
    }
}

/// A registry reached over HTTP(S).
pub struct HttpStore {
    base: Url,
    host: String,
    http: reqwest::Client,
    /// For streamed uploads: without a read timeout, which would count the time spent
    /// sending the body (the response is not due until it is all sent) and so fail every
    /// upload longer than the timeout. A [`Watchdog`] bounds silence instead.
    upload_http: reqwest::Client,
    auth: Authenticator,
    /// Set once `/v2/` was asked what authentication it wants.
    probed: OnceCell<()>,
    page_size: usize,
    read_timeout: Duration,
    max_chunk: Option<u64>,
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
        let mut extra_roots = Vec::new();
        if let Some(pem) = &options.ca_pem {
            extra_roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| RegistryError::Usage(format!("the CA file is not PEM: {e}")))?;
            if extra_roots.is_empty() {
                return Err(RegistryError::Usage(
                    "the CA file holds no certificate".into(),
                ));
            }
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
                .map_err(|e| RegistryError::Usage(format!("cannot set up HTTP: {e}")))
        };
        let http = client(Some(read_timeout))?;
        let upload_http = client(None)?;
        let mut base = base.clone();
        base.set_path("/");
        base.set_query(None);
        let (credentials, from) = match options.credentials {
            Some(found) => (Some(found.credentials), Some(found.from)),
            None => (None, None),
        };
        let auth = Authenticator::new(&base, http.clone(), read_timeout, credentials, from);
        Ok(Arc::new(Self {
            base,
            host,
            http,
            upload_http,
            auth,
            probed: OnceCell::new(),
            page_size: options.page_size.unwrap_or(LIST_PAGE_SIZE).max(1),
            read_timeout,
            max_chunk: options.max_chunk,
        }))
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("registry paths are valid URLs")
    }

    /// When a response of `bytes` must have arrived: the silence timeout, plus the time the
    /// bytes take at [`MIN_TRANSFER_RATE`].
    fn deadline(&self, bytes: u64) -> tokio::time::Instant {
        let transfer = Duration::from_secs(bytes / MIN_TRANSFER_RATE);
        tokio::time::Instant::now() + self.read_timeout + transfer
    }

    /// Tokens fetched from the registry's token service so far.
    pub fn token_requests(&self) -> u64 {
        self.auth.token_requests()
    }

    /// Asks `/v2/` once what authentication the registry wants.
    async fn probe(&self) -> Result<()> {
        self.probed
            .get_or_try_init(|| async {
                let url = self.url("v2/");
                let response = self
                    .http
                    .get(url.clone())
                    .send()
                    .await
                    .map_err(map_reqwest)?;
                let challenge = match response.status() {
                    StatusCode::UNAUTHORIZED => {
                        challenge::parse(response.headers(), &url).unwrap_or(Challenge::Basic)
                    }
                    _ => Challenge::None,
                };
                self.auth.set_challenge(challenge);
                Ok(())
            })
            .await
            .copied()
    }

    /// Sends a call: authenticated, sent again once after a `401` with a challenge, after
    /// throttling within the timeout, and (GETs) after a momentary failure.
    async fn send(&self, call: Call<'_>) -> Result<Response> {
        self.probe().await?;
        let started = Instant::now();
        let mut retry_pauses = GET_RETRY_PAUSES.iter();
        let mut authenticated_again = false;
        loop {
            let mut request = self.http.request(call.method.clone(), call.url.clone());
            for (name, value) in &call.headers {
                request = request.header(name, value);
            }
            if let Some(body) = &call.body {
                request = request.body(body.clone());
            }
            if let Some(authorization) = self.auth.header(&call.url, call.access).await? {
                request = request.header(reqwest::header::AUTHORIZATION, authorization);
            }
            let outcome = request.send().await;
            let response = match outcome {
                Ok(response) => response,
                Err(e) => {
                    let momentary = !e.is_timeout() && (e.is_connect() || e.is_request());
                    match retry_pauses.next() {
                        Some(pause) if momentary && call.method == Method::GET => {
                            debug!(url = %call.url, error = %e, "retrying a GET");
                            tokio::time::sleep(*pause).await;
                            continue;
                        }
                        _ => return Err(map_reqwest(e)),
                    }
                }
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED
                && !authenticated_again
                && self
                    .auth
                    .refused(response.headers(), &call.url, call.access)
            {
                authenticated_again = true;
                continue;
            }
            if let Some(wait) = throttled(status, response.headers()) {
                let waited = started.elapsed();
                if waited + wait > self.read_timeout {
                    return Err(RegistryError::Unavailable(format!(
                        "{}: the registry throttled the request ({status}) and asked to wait {}s, beyond the timeout of {}s",
                        call.url.path(),
                        wait.as_secs(),
                        self.read_timeout.as_secs()
                    )));
                }
                warn!(path = call.url.path(), %status, wait_s = wait.as_secs_f32(), "the registry throttled the request; waiting");
                tokio::time::sleep(wait).await;
                continue;
            }
            if status.is_server_error()
                && call.method == Method::GET
                && let Some(pause) = retry_pauses.next()
            {
                debug!(url = %call.url, %status, "retrying a GET");
                tokio::time::sleep(*pause).await;
                continue;
            }
            return Ok(response);
        }
    }

    /// Turns a non-success response into the matching error.
    async fn check_status(&self, response: Response, url: &Url) -> Result<Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = read_limited(response, MAX_ERROR_BODY, "an error body", self.read_timeout)
            .await
            .unwrap_or_default();
        Err(status_error(
            status,
            url.path(),
            &String::from_utf8_lossy(&body),
        ))
    }

    /// Sends a call and fails unless the registry answers with success.
    async fn send_ok(&self, call: Call<'_>) -> Result<Response> {
        let url = call.url.clone();
        self.check_status(self.send(call).await?, &url).await
    }

    /// Opens an upload session; returns where to send the content, and the smallest chunk
    /// the registry takes if it says.
    async fn start_upload(&self, repository: &str) -> Result<(Url, Option<u64>)> {
        let start = self.url(&format!("v2/{repository}/blobs/uploads/"));
        let call = Call::new(Method::POST, start.clone(), Access::Push(repository))
            .header(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let response = self.send_ok(call).await?;
        let minimum = response
            .headers()
            .get("oci-chunk-min-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|m| *m > 0);
        Ok((location(&start, &response)?, minimum))
    }

    /// Commits an upload at `location` as `digest`.
    async fn commit_upload(&self, repository: &str, location: &Url, digest: &Digest) -> Result<()> {
        let mut commit = location.clone();
        commit
            .query_pairs_mut()
            .append_pair("digest", digest.as_str());
        let call = Call::new(Method::PUT, commit, Access::Push(repository))
            .header(CONTENT_LENGTH, HeaderValue::from_static("0"));
        self.send_ok(call).await.map(|_| ())
    }

    /// Streams `body` in one `PATCH` to `location`; answers where to commit.
    async fn upload_streamed(
        &self,
        repository: &str,
        location: Url,
        body: ByteStream,
        body_error: Arc<std::sync::Mutex<Option<RegistryError>>>,
    ) -> Result<Url> {
        let watchdog = Watchdog::default();
        let stream = watchdog.watch(body).map(move |item| {
            item.map_err(|e| {
                let message = e.to_string();
                body_error.lock().expect("body error lock").get_or_insert(e);
                std::io::Error::other(message)
            })
        });
        self.probe().await?;
        let mut request = self
            .upload_http
            .patch(location.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream));
        if let Some(authorization) = self
            .auth
            .header(&location, Access::Push(repository))
            .await?
        {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let sent = tokio::select! {
            sent = request.send() => sent.map_err(map_reqwest),
            () = watchdog.stalled(self.read_timeout) => Err(RegistryError::Unavailable(format!(
                "the upload made no progress and the registry sent no answer for {}s",
                self.read_timeout.as_secs_f32()
            ))),
        };
        let response = self.check_status(sent?, &location).await?;
        self::location(&location, &response)
    }

    /// Sends `body` in `PATCH`es of `chunk` bytes with `Content-Range`; answers where to
    /// commit. Each chunk is held in memory, so it can be sent again after throttling.
    async fn upload_chunked(
        &self,
        repository: &str,
        mut location: Url,
        mut body: ByteStream,
        chunk: u64,
    ) -> Result<Url> {
        let chunk = usize::try_from(chunk).unwrap_or(usize::MAX);
        let mut offset = 0u64;
        let mut pending = BytesMut::new();
        let mut ended = false;
        loop {
            while !ended && pending.len() < chunk {
                match body.next().await {
                    Some(piece) => pending.extend_from_slice(&piece?),
                    None => ended = true,
                }
            }
            if pending.is_empty() {
                break;
            }
            let part = pending.split_to(pending.len().min(chunk)).freeze();
            let end = offset + part.len() as u64 - 1;
            let call = Call::new(Method::PATCH, location.clone(), Access::Push(repository))
                .header(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                )
                .header(
                    CONTENT_RANGE,
                    HeaderValue::from_str(&format!("{offset}-{end}")).expect("digits"),
                )
                .body(part);
            let response = self.send(call).await?;
            if response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
                return Err(RegistryError::Rejected(format!(
                    "the registry refused the upload's chunk at bytes {offset}-{end} (416)"
                )));
            }
            let response = self.check_status(response, &location).await?;
            location = self::location(&location, &response)?;
            offset = end + 1;
        }
        Ok(location)
    }

    /// Follows a paginated listing, collecting `field` from every page.
    async fn list_pages(&self, first: Url, field: &str, access: Access<'_>) -> Result<Vec<String>> {
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
                .send_ok(Call::new(Method::GET, url.clone(), access))
                .await?;
            next = next_page(&url, response.headers().get(LINK));
            let body =
                read_limited(response, MAX_LIST_PAGE, "a listing page", self.read_timeout).await?;
            let page = listing_page(&body, field)
                .map_err(|e| RegistryError::Corrupt(format!("listing at {url}: {e}")))?;
            if page.is_empty() {
                // An empty page ends the listing whatever the Link header says.
                break;
            }
            names.extend(page);
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
        // `/v2/` proves the registry is there and, with a token (for no scope) or Basic,
        // that the credentials work; nothing here needs the catalog, which many registries
        // do not have.
        self.send_ok(Call::new(Method::GET, self.url("v2/"), Access::Registry))
            .await
            .map(|_| ())
    }

    async fn list_repositories(&self) -> Result<Vec<String>> {
        let mut url = self.url("v2/_catalog");
        url.query_pairs_mut()
            .append_pair("n", &self.page_size.to_string());
        let listed = self.list_pages(url, "repositories", Access::Catalog).await;
        let token_auth = matches!(self.auth.challenge(), Some(Challenge::Bearer(_)));
        match listed {
            // Docker Hub, GHCR, GitLab and Harbor (for most users) have no catalog: they
            // answer 404, 405, UNSUPPORTED, or refuse the catalog scope of a token that
            // works for everything else. (With Basic auth a 401 is about the credentials.)
            Err(e @ (RegistryError::NotFound(_) | RegistryError::DeleteDisabled)) => {
                Err(RegistryError::NoCatalog(e.to_string()))
            }
            Err(e @ (RegistryError::Unauthorized(_) | RegistryError::Denied(_))) if token_auth => {
                Err(RegistryError::NoCatalog(e.to_string()))
            }
            Err(RegistryError::Rejected(m)) if m.contains("UNSUPPORTED") => {
                Err(RegistryError::NoCatalog(m))
            }
            other => other,
        }
    }

    async fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        let mut url = self.url(&format!("v2/{repository}/tags/list"));
        url.query_pairs_mut()
            .append_pair("n", &self.page_size.to_string());
        match self.list_pages(url, "tags", Access::Pull(repository)).await {
            Err(RegistryError::NotFound(_)) => Ok(Vec::new()),
            other => other,
        }
    }

    async fn get_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let call = Call::new(Method::GET, url, Access::Pull(repository)).header(
            ACCEPT,
            HeaderValue::from_str(&ACCEPTED_MANIFESTS.join(", ")).expect("media types"),
        );
        let response = self.send_ok(call).await?;
        let what = format!("{repository}:{reference}");
        let bytes = read_limited(
            response,
            MAX_MANIFEST_SIZE,
            &format!("manifest {what}"),
            self.read_timeout,
        )
        .await
        .map_err(|e| match e {
            RegistryError::Rejected(_) => RegistryError::Rejected(format!(
                "manifest {what} is larger than {} MiB, the most registries accept; it is not read",
                MAX_MANIFEST_SIZE >> 20
            )),
            other => other,
        })?;
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

    async fn blob_size(&self, repository: &str, digest: &Digest) -> Result<u64> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        let response = self
            .send(Call::new(
                Method::HEAD,
                url.clone(),
                Access::Pull(repository),
            ))
            .await?;
        let response = self.check_status(response, &url).await?;
        response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| RegistryError::Corrupt(format!("no length for blob {digest}")))
    }

    async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream> {
        if length == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        let last = offset.saturating_add(length - 1);
        let range = format!("bytes={offset}-{last}");
        let call = Call::new(Method::GET, url.clone(), Access::Pull(repository))
            .header(RANGE, HeaderValue::from_str(&range).expect("digits"));
        let deadline = self.deadline(length);
        let response = self.send(call).await?;
        if response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            return Ok(futures::stream::empty().boxed());
        }
        let response = self.check_status(response, &url).await?;
        // A registry that ignores Range sends the blob from its start (200): the window is
        // cut out of it. Either way no byte past the window is read, however much the
        // registry would send, and the whole transfer has a deadline.
        let skip = if response.status() == StatusCode::OK {
            offset
        } else {
            0
        };
        let what = format!("blob {digest}");
        let stream = with_deadline(
            response.bytes_stream().map_err(map_reqwest).boxed(),
            deadline,
            what,
        );
        Ok(skip_and_take(stream, skip, length))
    }

    async fn put_blob(&self, repository: &str, body: ByteStream) -> Result<(Digest, u64)> {
        let (location, minimum) = self.start_upload(repository).await?;
        // Errors from the body (the client's side) are kept apart from transport errors so
        // that a failed upload reports its real cause.
        let body_error: Arc<std::sync::Mutex<Option<RegistryError>>> = Arc::default();
        let digest = RunningDigest::default();
        let counted = digest.wrap(body);
        let chunk = match (self.max_chunk, minimum) {
            (None, None) => None,
            (max, min) => Some(max.unwrap_or(DEFAULT_CHUNK).max(min.unwrap_or(0))),
        };
        let uploaded = match chunk {
            None => {
                self.upload_streamed(repository, location, counted, body_error.clone())
                    .await
            }
            Some(chunk) => {
                debug!(chunk, "uploading in chunks");
                self.upload_chunked(repository, location, counted, chunk)
                    .await
            }
        };
        if let Some(e) = body_error.lock().expect("body error lock").take() {
            return Err(e);
        }
        let location = uploaded?;
        let (digest, size) = digest.finish();
        self.commit_upload(repository, &location, &digest).await?;
        Ok((digest, size))
    }

    /// One request fewer than a stream: POST for an upload session, then the content with
    /// the commit (the "monolithic" PUT every registry version accepts).
    async fn put_blob_bytes(&self, repository: &str, bytes: Bytes) -> Result<(Digest, u64)> {
        let digest = Digest::of(&bytes);
        let size = bytes.len() as u64;
        let (mut commit, _) = self.start_upload(repository).await?;
        commit
            .query_pairs_mut()
            .append_pair("digest", digest.as_str());
        let call = Call::new(Method::PUT, commit, Access::Push(repository))
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )
            .body(bytes);
        self.send_ok(call).await?;
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
        let call = Call::new(Method::PUT, url, Access::Push(repository))
            .header(CONTENT_TYPE, content_type)
            .body(manifest.bytes.clone());
        self.send_ok(call).await.map(|_| ())
    }

    async fn mount_blob(&self, repository: &str, from: &str, digest: &Digest) -> Result<bool> {
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"));
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", from);
        let access = Access::Mount {
            from,
            to: repository,
        };
        let call = Call::new(Method::POST, url.clone(), access)
            .header(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let response = self.send(call).await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // The registry opened an upload instead of mounting: cancel it, and let the
                // caller copy the blob.
                if let Ok(location) = location(&url, &response) {
                    let _ = self
                        .send(Call::new(
                            Method::DELETE,
                            location,
                            Access::Push(repository),
                        ))
                        .await;
                }
                Ok(false)
            }
            _ => self.check_status(response, &url).await.map(|_| false),
        }
    }

    async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()> {
        let url = self.url(&format!("v2/{repository}/manifests/{tag}"));
        let response = self
            .send(Call::new(
                Method::DELETE,
                url.clone(),
                Access::Delete(repository),
            ))
            .await?;
        match response.status() {
            // Distribution 2.x refuses tag deletion with 400 (or UNSUPPORTED).
            StatusCode::BAD_REQUEST => Err(RegistryError::TagDeleteUnsupported),
            _ => self.check_status(response, &url).await.map(|_| ()),
        }
    }

    async fn delete_manifest(&self, repository: &str, digest: &Digest) -> Result<()> {
        let url = self.url(&format!("v2/{repository}/manifests/{digest}"));
        self.send_ok(Call::new(Method::DELETE, url, Access::Delete(repository)))
            .await
            .map(|_| ())
    }
}

/// How long a throttled answer asks to wait: `429` always (a second when it does not
/// say), `503` only with `Retry-After` (without it, a 503 is a failure like other 5xx).
fn throttled(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    let asked = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    match status {
        StatusCode::TOO_MANY_REQUESTS => Some(asked.unwrap_or(DEFAULT_THROTTLE_WAIT)),
        StatusCode::SERVICE_UNAVAILABLE => asked,
        _ => None,
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let wait = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Reads a whole response body, refusing one larger than `limit` without reading past it,
/// and one still arriving at its deadline: `timeout` plus the time its declared length (or
/// `limit`) takes at [`MIN_TRANSFER_RATE`].
pub(crate) async fn read_limited(
    response: Response,
    limit: usize,
    what: &str,
    timeout: Duration,
) -> Result<Bytes> {
    let expected = response
        .content_length()
        .unwrap_or(limit as u64)
        .min(limit as u64);
    let deadline = tokio::time::Instant::now()
        + timeout
        + Duration::from_secs_f64(expected as f64 / MIN_TRANSFER_RATE as f64);
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(RegistryError::Rejected(format!(
            "{what} is larger than {limit} bytes; it is not read"
        )));
    }
    let mut body = with_deadline(
        response.bytes_stream().map_err(map_reqwest).boxed(),
        deadline,
        what.to_owned(),
    );
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if bytes.len() + chunk.len() > limit {
            return Err(RegistryError::Rejected(format!(
                "{what} is larger than {limit} bytes; it is not read"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
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
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            RegistryError::Unavailable(what)
        }
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

/// The upload location a response names, resolved against the request URL: relative,
/// absolute, or on another host.
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

/// The names of one page of a catalog (`field` `repositories`) or tag list (`tags`), as a
/// registry sent it: every string in the array (anything else in it is ignored; a page
/// without the array is an empty page). Whether a name can be shown is for the filesystem.
pub fn listing_page(body: &[u8], field: &str) -> std::result::Result<Vec<String>, String> {
    let page: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    Ok(page
        .get(field)
        .and_then(|v| v.as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// The `rel="next"` URL of a `Link` header.
pub fn next_page(current: &Url, link: Option<&HeaderValue>) -> Option<Url> {
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

/// Skips `skip` bytes of a stream and then yields at most `take` bytes, ending as soon
/// as it has them (the rest of the source is never read).
fn skip_and_take(source: ByteStream, skip: u64, take: u64) -> ByteStream {
    futures::stream::unfold(
        (source, skip, take),
        |(mut source, mut skip, mut take)| async move {
            while take > 0 {
                let mut chunk = match source.next().await? {
                    Ok(chunk) => chunk,
                    Err(e) => return Some((Err(e), (source, 0, 0))),
                };
                let dropped = skip.min(chunk.len() as u64);
                skip -= dropped;
                let _ = chunk.split_to(dropped as usize);
                let kept = take.min(chunk.len() as u64);
                take -= kept;
                chunk.truncate(kept as usize);
                if !chunk.is_empty() {
                    return Some((Ok(chunk), (source, skip, take)));
                }
            }
            None
        },
    )
    .boxed()
}

/// Fails a response body that is still arriving at `deadline`: a registry that keeps
/// trickling bytes is not waited on past it, though it is never silent for long.
fn with_deadline(source: ByteStream, deadline: tokio::time::Instant, what: String) -> ByteStream {
    futures::stream::unfold(Some(source), move |source| {
        let what = what.clone();
        async move {
            let mut source = source?;
            match tokio::time::timeout_at(deadline, source.next()).await {
                Ok(item) => item.map(|item| (item, Some(source))),
                Err(_) => Some((
                    Err(RegistryError::Unavailable(format!(
                        "{what} was still arriving at its deadline (the registry sent it slower than {} KiB/s)",
                        MIN_TRANSFER_RATE >> 10
                    ))),
                    None,
                )),
            }
        }
    })
    .boxed()
}

/// Maps a transport error, telling certificate problems apart so the message can say how
/// to trust the registry.
pub(crate) fn map_reqwest(error: reqwest::Error) -> RegistryError {
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

    #[test]
    fn throttling_is_waited_out_as_asked() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            throttled(StatusCode::TOO_MANY_REQUESTS, &headers),
            Some(DEFAULT_THROTTLE_WAIT)
        );
        assert_eq!(throttled(StatusCode::SERVICE_UNAVAILABLE, &headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(
            throttled(StatusCode::SERVICE_UNAVAILABLE, &headers),
            Some(Duration::from_secs(3))
        );
        assert_eq!(throttled(StatusCode::OK, &headers), None);
        let past = retry_after("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(past, Duration::ZERO);
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
        let out: Vec<Bytes> = skip_and_take(chunks, 2, 5).try_collect().await.unwrap();
        assert_eq!(out.concat(), b"cdefg");
        // An endless source is not read past the window.
        let endless: ByteStream =
            futures::stream::repeat_with(|| Ok(Bytes::from_static(b"xyz"))).boxed();
        let out: Vec<Bytes> = skip_and_take(endless, 4, 7).try_collect().await.unwrap();
        assert_eq!(out.concat(), b"yzxyzxy");
    }
}
