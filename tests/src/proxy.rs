//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1, put between a client (the mount, a
//! surrogate) and the real registry.
//!
//! It reads each request head to classify it ([`Class`]: a blob download, an upload's
//! PATCH or PUT, a manifest PUT, ...) and applies the first armed rule for that class:
//!
//! * [`Fault::Stall`]: holds the request, unanswered, while the rule is armed (a registry
//!   that accepted the connection and went silent);
//! * [`Fault::Status`]: reads the request to its end and answers with that status, as a
//!   failing registry does;
//! * [`Fault::CutRequest`] / [`Fault::CutResponse`]: forwards that many bytes of the request
//!   (head and body) or of the response, then cuts both connections mid-transfer.
//!
//! * [`Fault::RateLimited`]: reads the request and answers `429 Too Many Requests` with
//!   `Retry-After: N` (seconds), keeping the connection, as Docker Hub does; armed for
//!   the first K requests of a class ([`FaultProxy::inject_times`]) or every Nth
//!   ([`FaultProxy::inject_every`]); [`FaultProxy::rate_limited`] counts the 429s.
//!
//! [`FaultProxy::throttle`] limits every connection's bandwidth both ways (a slow link).
//! Request bodies are followed exactly (`Content-Length` or chunked encoding), so the
//! requests after a streamed upload on a kept-alive connection are classified too.
//!
//! Two more behaviours of hosted registries, each switched on by the test (rules above
//! come first):
//!
//! * [`FaultProxy::catalog_unsupported`]: `GET /v2/_catalog` answers `404` with
//!   `{"errors":[{"code":"UNSUPPORTED",...}]}`, as registries without a catalog do.
//! * [`FaultProxy::redirect_blobs`]: a blob `GET` (not `HEAD`) answers a redirect (307 by
//!   default; 301, 302, 303, 308 on request) to a second listener, another origin (another
//!   port; the `Location` host can be made another name too, [`BlobRedirect::host`]), at a
//!   presigned-looking URL `/storage/NAME/blobs/DIGEST?X-Amz-Expires=..&X-Amz-Signature=..`.
//!   That listener is object storage: it **refuses with 400** (S3's `InvalidArgument`) any
//!   request carrying an `Authorization` header, and otherwise fetches the blob from the
//!   registry itself, directly (no fault rules; the throttle applies), forwarding the
//!   client's headers, `Range` included, so a 206 comes back for a range. The registry
//!   still wants its own authorisation for that fetch when it has auth on: the listener
//!   sends the `Authorization` value [`BlobRedirect::upstream_auth`] gives for the
//!   repository (the storage's own credential;
//!   [`crate::token_server::TokenServer::pull_authorization`] mints pull tokens for a
//!   token registry). What the client must do to pass is what it must do with a hosted
//!   registry: follow the redirect, drop its `Authorization` for the other origin, and
//!   keep `Range`. Redirects sent, blob requests served and refused are counted.
//!
//! Another port is another origin: curl (7.88), reqwest and skopeo 1.9.3 (Go compares
//! host and port) all drop `Authorization` when following a redirect to it (skopeo:
//! checked by `tests/registries.rs`), so `127.0.0.1` serves as the storage host.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Longest a request is held, so a forgotten stall cannot hang a test run.
const MAX_STALL: Duration = Duration::from_secs(60);

/// Buffer of each forwarding loop.
const CHUNK: usize = 64 * 1024;

/// What a request is, from its request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// `GET` or `HEAD` of a blob.
    BlobGet,
    /// `POST .../blobs/uploads/`: an upload session opens.
    UploadStart,
    /// `PATCH` of an upload: the streamed content.
    UploadPatch,
    /// `PUT` of an upload: its commit (or a monolithic upload).
    UploadPut,
    /// `GET` or `HEAD` of a manifest.
    ManifestGet,
    /// `PUT` of a manifest: the tag moves.
    ManifestPut,
    /// Anything else (catalog, tag lists, `/v2/`, deletes).
    Other,
}

impl Class {
    fn of(request_line: &str) -> Self {
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let uploads = path.contains("/blobs/uploads/");
        match method {
            "GET" | "HEAD" if path.contains("/blobs/") && !uploads => Class::BlobGet,
            "POST" if uploads => Class::UploadStart,
            "PATCH" if uploads => Class::UploadPatch,
            "PUT" if uploads => Class::UploadPut,
            "GET" | "HEAD" if path.contains("/manifests/") => Class::ManifestGet,
            "PUT" if path.contains("/manifests/") => Class::ManifestPut,
            _ => Class::Other,
        }
    }
}

/// What to do to a request of a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Hold it unanswered while the rule is armed (at most [`MAX_STALL`]).
    Stall,
    /// Read it whole, then answer with this HTTP status and close the connection.
    Status(u16),
    /// Forward this many bytes of the request, then cut the connection.
    CutRequest(u64),
    /// Forward the request and this many bytes of its response, then cut the connection.
    CutResponse(u64),
    /// Read it whole, then answer `429 Too Many Requests` with `Retry-After:` this many
    /// seconds; the connection stays open.
    RateLimited(u64),
}

/// The `Authorization` header value (if any) the storage listener sends to the registry
/// when it fetches a blob of the repository given.
pub type UpstreamAuth = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How blob GETs are redirected ([`FaultProxy::redirect_blobs`]).
#[derive(Clone)]
pub struct BlobRedirect {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// The host name in `Location` (the storage listener listens on 127.0.0.1 only).
    pub host: String,
    /// How the storage listener authorises its own fetch from the registry; `None` for a
    /// registry without auth.
    pub upstream_auth: Option<UpstreamAuth>,
}

impl Default for BlobRedirect {
    fn default() -> Self {
        Self::new(307)
    }
}

impl BlobRedirect {
    /// Redirects with this status to `127.0.0.1`, fetching upstream without credentials.
    pub fn new(status: u16) -> Self {
        assert!(
            matches!(status, 301 | 302 | 303 | 307 | 308),
            "{status} is not a redirect"
        );
        Self {
            status,
            host: "127.0.0.1".into(),
            upstream_auth: None,
        }
    }

    /// The same, naming `host` in `Location`.
    pub fn with_host(self, host: &str) -> Self {
        Self {
            host: host.into(),
            ..self
        }
    }

    /// The same, authorising the storage listener's fetches with `auth`.
    pub fn with_upstream_auth(self, auth: UpstreamAuth) -> Self {
        Self {
            upstream_auth: Some(auth),
            ..self
        }
    }
}

/// An armed rule.
#[derive(Debug, Clone)]
struct Rule {
    class: Option<Class>,
    fault: Fault,
    /// How many more requests it applies to; `None` while armed.
    remaining: Option<usize>,
    /// Applies only to every Nth request of its class (counted in `matched`).
    every: Option<usize>,
    matched: usize,
    id: u64,
}

#[derive(Default)]
struct State {
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<HashMap<Class, usize>>,
    injected: AtomicUsize,
    /// Bytes a second each connection may move each way; 0 for no limit.
    rate: AtomicU64,
    next_rule: AtomicU64,
    /// The registry's port.
    upstream: u16,
    rate_limited: AtomicUsize,
    catalog_unsupported: AtomicBool,
    catalog_refused: AtomicUsize,
    redirect: Mutex<Option<BlobRedirect>>,
    redirects: AtomicUsize,
    /// The storage listener's port, once started.
    storage_port: OnceLock<u16>,
    /// The storage listener's upstream credential (kept when redirects are switched off,
    /// so URLs already handed out still work).
    storage_auth: Mutex<Option<UpstreamAuth>>,
    storage_served: AtomicUsize,
    storage_refused: AtomicUsize,
}

impl State {
    /// The fault for a request of `class`, counting it.
    fn fault_for(&self, class: Class) -> Option<(u64, Fault)> {
        *self.seen.lock().unwrap().entry(class).or_default() += 1;
        let mut rules = self.rules.lock().unwrap();
        let index = rules.iter_mut().position(|r| {
            if !r.class.is_none_or(|c| c == class) {
                return false;
            }
            let Some(every) = r.every else {
                return true;
            };
            r.matched += 1;
            r.matched % every == 0
        })?;
        let rule = &mut rules[index];
        let found = (rule.id, rule.fault);
        match &mut rule.remaining {
            Some(1) => {
                rules.remove(index);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        Some(found)
    }

    fn armed(&self, id: u64) -> bool {
        self.rules.lock().unwrap().iter().any(|r| r.id == id)
    }
}

/// A running proxy; its threads end with the process.
pub struct FaultProxy {
    pub port: u16,
    state: Arc<State>,
}

/// A rule that applies until [`FaultProxy::clear`], or for a number of requests.
pub struct Armed {
    state: Arc<State>,
    id: u64,
}

impl Armed {
    /// Disarms this rule (a stalled request then goes on to the registry).
    pub fn clear(&self) {
        self.state.rules.lock().unwrap().retain(|r| r.id != self.id);
    }
}

impl FaultProxy {
    /// Proxies 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            upstream,
            ..State::default()
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) {
                        Connection::new(client, server, state).serve();
                    }
                });
            }
        });
        Self { port, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn arm(
        &self,
        class: Option<Class>,
        fault: Fault,
        times: Option<usize>,
        every: Option<usize>,
    ) -> Armed {
        let id = self.state.next_rule.fetch_add(1, Ordering::SeqCst);
        self.state.rules.lock().unwrap().push(Rule {
            class,
            fault,
            remaining: times,
            every,
            matched: 0,
            id,
        });
        Armed {
            state: self.state.clone(),
            id,
        }
    }

    /// Applies `fault` to every request of `class` until the rule is cleared.
    pub fn inject(&self, class: Class, fault: Fault) -> Armed {
        self.arm(Some(class), fault, None, None)
    }

    /// Applies `fault` to every `nth` request of `class` (the nth, the 2nth, ...) until
    /// the rule is cleared.
    pub fn inject_every(&self, class: Class, fault: Fault, nth: usize) -> Armed {
        assert!(nth > 0, "every 0th request");
        self.arm(Some(class), fault, None, Some(nth))
    }

    /// Applies `fault` to the next `times` requests of `class`.
    pub fn inject_times(&self, class: Class, fault: Fault, times: usize) -> Armed {
        self.arm(Some(class), fault, Some(times), None)
    }

    /// Applies `fault` to every request until the rule is cleared.
    pub fn inject_all(&self, fault: Fault) -> Armed {
        self.arm(None, fault, None, None)
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// Limits each connection to `bytes_per_second` each way (`None`: no limit).
    pub fn throttle(&self, bytes_per_second: Option<u64>) {
        self.state
            .rate
            .store(bytes_per_second.unwrap_or(0), Ordering::SeqCst);
    }

    /// How many requests of `class` arrived.
    pub fn seen(&self, class: Class) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .get(&class)
            .copied()
            .unwrap_or(0)
    }

    /// How many requests a rule applied to.
    pub fn faults_injected(&self) -> usize {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// How many 429s [`Fault::RateLimited`] sent.
    pub fn rate_limited(&self) -> usize {
        self.state.rate_limited.load(Ordering::SeqCst)
    }

    /// Answers `GET /v2/_catalog` with 404 `UNSUPPORTED` (true) or forwards it (false).
    pub fn catalog_unsupported(&self, unsupported: bool) {
        self.state
            .catalog_unsupported
            .store(unsupported, Ordering::SeqCst);
    }

    /// How many catalog requests got the 404.
    pub fn catalog_refusals(&self) -> usize {
        self.state.catalog_refused.load(Ordering::SeqCst)
    }

    /// Redirects blob GETs to the storage listener (`Some`), starting it the first time,
    /// or forwards them again (`None`).
    pub fn redirect_blobs(&self, redirect: Option<BlobRedirect>) {
        if let Some(redirect) = &redirect {
            self.state
                .storage_port
                .get_or_init(|| start_storage(self.state.clone()));
            *self.state.storage_auth.lock().unwrap() = redirect.upstream_auth.clone();
        }
        *self.state.redirect.lock().unwrap() = redirect;
    }

    /// The storage listener's port, once [`FaultProxy::redirect_blobs`] started it.
    pub fn storage_port(&self) -> Option<u16> {
        self.state.storage_port.get().copied()
    }

    /// How many blob GETs were answered with a redirect.
    pub fn redirects(&self) -> usize {
        self.state.redirects.load(Ordering::SeqCst)
    }

    /// How many requests the storage listener forwarded to the registry.
    pub fn storage_served(&self) -> usize {
        self.state.storage_served.load(Ordering::SeqCst)
    }

    /// How many requests the storage listener refused for carrying `Authorization`.
    pub fn storage_refused(&self) -> usize {
        self.state.storage_refused.load(Ordering::SeqCst)
    }
}

/// Sleeps as long as moving `bytes` takes at the configured rate.
fn pace(state: &State, bytes: usize) {
    let rate = state.rate.load(Ordering::SeqCst);
    if rate > 0 {
        std::thread::sleep(Duration::from_secs_f64(bytes as f64 / rate as f64));
    }
}

/// Cuts a connection mid-transfer: no lingering, both directions shut.
fn cut(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we hold, with a value of the type it expects.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// One client connection and its upstream connection.
struct Connection {
    client: BufReader<TcpStream>,
    client_out: TcpStream,
    server: TcpStream,
    state: Arc<State>,
    /// Response bytes still to forward before cutting (set by [`Fault::CutResponse`]).
    response_budget: Arc<Mutex<Option<u64>>>,
}

impl Connection {
    fn new(client: TcpStream, server: TcpStream, state: Arc<State>) -> Self {
        let client_out = client.try_clone().expect("clone");
        let response_budget: Arc<Mutex<Option<u64>>> = Arc::default();
        // Responses flow back on a thread of their own.
        let (mut from_server, mut to_client) = (
            server.try_clone().expect("clone"),
            client.try_clone().expect("clone"),
        );
        let (budget, pacing) = (response_budget.clone(), state.clone());
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; CHUNK];
            loop {
                let n = match from_server.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut budget = budget.lock().unwrap();
                let allowed = budget.map_or(n, |left| n.min(left as usize));
                if to_client.write_all(&buffer[..allowed]).is_err() {
                    break;
                }
                if let Some(left) = budget.as_mut() {
                    *left -= allowed as u64;
                    if *left == 0 {
                        cut(&to_client);
                        cut(&from_server);
                        return;
                    }
                }
                drop(budget);
                pace(&pacing, allowed);
            }
            let _ = to_client.shutdown(Shutdown::Write);
        });
        Self {
            client: BufReader::with_capacity(CHUNK, client),
            client_out,
            server,
            state,
            response_budget,
        }
    }

    fn end(&self) {
        cut(&self.client_out);
        cut(&self.server);
    }

    /// Forwards requests until either side closes or a fault ends the connection.
    fn serve(mut self) {
        while let Some(head) = self.read_head() {
            let request_line = head.lines().next().unwrap_or_default().to_owned();
            let class = Class::of(&request_line);
            let mut request_budget = None;
            match self.state.fault_for(class) {
                None => {}
                Some((id, Fault::Stall)) => {
                    let started = Instant::now();
                    while self.state.armed(id) && started.elapsed() < MAX_STALL {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Some((_, Fault::Status(status))) => {
                    let _ = self.forward_body(&head, &mut None, false);
                    self.answer(status);
                    return;
                }
                Some((_, Fault::CutRequest(bytes))) => request_budget = Some(bytes),
                Some((_, Fault::CutResponse(bytes))) => {
                    *self.response_budget.lock().unwrap() = Some(bytes);
                }
                Some((_, Fault::RateLimited(seconds))) => {
                    self.state.rate_limited.fetch_add(1, Ordering::SeqCst);
                    let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"rate limit exceeded (test proxy)"}]}"#;
                    let retry_after = [("Retry-After", seconds.to_string())];
                    if !self.forward_body(&head, &mut None, false)
                        || !self.reply(&head, 429, "Too Many Requests", &retry_after, body)
                    {
                        self.end();
                        return;
                    }
                    continue;
                }
            }
            if let Some((status, headers, body)) = self.hosted_answer(&request_line, class) {
                let reason = if status == 404 {
                    "Not Found"
                } else {
                    "Redirect"
                };
                if !self.forward_body(&head, &mut None, false)
                    || !self.reply(&head, status, reason, &headers, &body)
                {
                    self.end();
                    return;
                }
                continue;
            }
            if !self.send(head.as_bytes(), &mut request_budget)
                || !self.forward_body(&head, &mut request_budget, true)
            {
                self.end();
                return;
            }
        }
        let _ = self.server.shutdown(Shutdown::Write);
    }

    /// The catalog's 404 or a blob redirect, when switched on and the request is one:
    /// (status, headers, body).
    #[allow(clippy::type_complexity)]
    fn hosted_answer(
        &self,
        request_line: &str,
        class: Class,
    ) -> Option<(u16, Vec<(&'static str, String)>, String)> {
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default();
        if matches!(method, "GET" | "HEAD")
            && path == "/v2/_catalog"
            && self.state.catalog_unsupported.load(Ordering::SeqCst)
        {
            self.state.catalog_refused.fetch_add(1, Ordering::SeqCst);
            let body = r#"{"errors":[{"code":"UNSUPPORTED","message":"catalog not available"}]}"#;
            let headers = vec![("Content-Type", "application/json".to_owned())];
            return Some((404, headers, body.to_owned()));
        }
        if method != "GET" || class != Class::BlobGet {
            return None;
        }
        let redirect = self.state.redirect.lock().unwrap().clone()?;
        let (name, digest) = path.strip_prefix("/v2/")?.rsplit_once("/blobs/")?;
        let port = *self.state.storage_port.get()?;
        self.state.redirects.fetch_add(1, Ordering::SeqCst);
        let location = format!(
            "http://{}:{port}/storage/{name}/blobs/{digest}?X-Amz-Expires=300&X-Amz-Signature={}",
            redirect.host,
            hex::encode(crate::random_bytes(16))
        );
        Some((redirect.status, vec![("Location", location)], String::new()))
    }

    /// Answers the client without the registry and keeps the connection (no body for a
    /// `HEAD`); false if the client is gone.
    fn reply(
        &mut self,
        head: &str,
        status: u16,
        reason: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> bool {
        let mut response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            response.push_str("Content-Type: application/json\r\n");
        }
        response.push_str("\r\n");
        if !head.starts_with("HEAD ") {
            response.push_str(body);
        }
        self.client_out.write_all(response.as_bytes()).is_ok()
    }

    /// The next request head (up to its blank line), or `None` at the end.
    fn read_head(&mut self) -> Option<String> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match self.client.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" || line == "\n" {
                return Some(head);
            }
        }
    }

    /// Sends bytes upstream within the request budget; false once the budget is spent
    /// (the connection is then cut) or upstream is gone.
    fn send(&mut self, bytes: &[u8], budget: &mut Option<u64>) -> bool {
        let allowed = budget.map_or(bytes.len(), |left| bytes.len().min(left as usize));
        if self.server.write_all(&bytes[..allowed]).is_err() {
            return false;
        }
        pace(&self.state, allowed);
        if let Some(left) = budget {
            *left -= allowed as u64;
            if *left == 0 {
                return false;
            }
        }
        true
    }

    /// Forwards (or with `forward` false, reads and drops) the body the head announces.
    fn forward_body(&mut self, head: &str, budget: &mut Option<u64>, forward: bool) -> bool {
        let lower = head.to_ascii_lowercase();
        if lower.contains("transfer-encoding: chunked") {
            return self.forward_chunked(budget, forward);
        }
        let length: usize = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        self.forward_exactly(length, budget, forward)
    }

    /// Forwards (or reads and drops) the next `length` bytes of the request.
    fn forward_exactly(&mut self, length: usize, budget: &mut Option<u64>, forward: bool) -> bool {
        let mut buffer = vec![0u8; CHUNK];
        let mut remaining = length;
        while remaining > 0 {
            let want = remaining.min(CHUNK);
            match self.client.read(&mut buffer[..want]) {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    remaining -= n;
                    if forward && !self.send(&buffer[..n], budget) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// A chunked body: size lines, data, and the trailer section up to its blank line.
    fn forward_chunked(&mut self, budget: &mut Option<u64>, forward: bool) -> bool {
        loop {
            let mut size_line = String::new();
            if matches!(self.client.read_line(&mut size_line), Ok(0) | Err(_)) {
                return false;
            }
            if forward && !self.send(size_line.as_bytes(), budget) {
                return false;
            }
            let size_text = size_line.trim().split(';').next().unwrap_or_default();
            let Ok(size) = usize::from_str_radix(size_text, 16) else {
                return false;
            };
            if size == 0 {
                // Trailers, then the blank line that ends the body.
                loop {
                    let mut line = String::new();
                    if matches!(self.client.read_line(&mut line), Ok(0) | Err(_)) {
                        return false;
                    }
                    if forward && !self.send(line.as_bytes(), budget) {
                        return false;
                    }
                    if line == "\r\n" || line == "\n" {
                        return true;
                    }
                }
            }
            // The data and its CRLF.
            if !self.forward_exactly(size + 2, budget, forward) {
                return false;
            }
        }
    }

    /// Answers the client with an error status in the registry's own format, and closes.
    fn answer(&mut self, status: u16) {
        let body = format!(
            r#"{{"errors":[{{"code":"UNAVAILABLE","message":"status {status} injected by the test's fault proxy"}}]}}"#
        );
        let response = format!(
            "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = self.client_out.write_all(response.as_bytes());
        let _ = self.client_out.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

/// S3's answer to a presigned URL that also carries an `Authorization` header.
const S3_INVALID_ARGUMENT: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified</Message><ArgumentName>Authorization</ArgumentName></Error>";

/// Starts the storage listener (the redirect target); returns its port.
fn start_storage(state: Arc<State>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("storage bind");
    let port = listener.local_addr().expect("storage address").port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let state = state.clone();
            std::thread::spawn(move || serve_storage(client, &state));
        }
    });
    port
}

/// One request to the storage listener, then the connection closes.
fn serve_storage(client: TcpStream, state: &State) {
    let _ = client.set_read_timeout(Some(MAX_STALL));
    let Ok(reader) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader);
    let mut out = client;
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => lines.push(line.trim_end().to_owned()),
        }
    }
    let request_line = lines.first().cloned().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let headers: Vec<(&str, &str)> = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim(), v.trim()))
        .collect();
    let respond = |out: &mut TcpStream, status: &str, body: &str| {
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = out.write_all(response.as_bytes());
        let _ = out.shutdown(Shutdown::Both);
    };
    if headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
    {
        state.storage_refused.fetch_add(1, Ordering::SeqCst);
        return respond(&mut out, "400 Bad Request", S3_INVALID_ARGUMENT);
    }
    let path = target.split('?').next().unwrap_or_default();
    let Some((name, digest)) = path
        .strip_prefix("/storage/")
        .and_then(|p| p.rsplit_once("/blobs/"))
    else {
        return respond(
            &mut out,
            "404 Not Found",
            "<Error><Code>NoSuchKey</Code></Error>",
        );
    };
    if !matches!(method, "GET" | "HEAD") {
        return respond(
            &mut out,
            "405 Method Not Allowed",
            "<Error><Code>MethodNotAllowed</Code></Error>",
        );
    }
    state.storage_served.fetch_add(1, Ordering::SeqCst);
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", state.upstream)) else {
        return respond(
            &mut out,
            "503 Service Unavailable",
            "<Error><Code>SlowDown</Code></Error>",
        );
    };
    let mut request = format!(
        "{method} /v2/{name}/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
        state.upstream
    );
    for (name, value) in &headers {
        let hop = [
            "host",
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
        ];
        if !hop.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    let auth = state.storage_auth.lock().unwrap().clone();
    if let Some(value) = auth.and_then(|auth| auth(name)) {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    if upstream.write_all(request.as_bytes()).is_err() {
        return;
    }
    // The registry closes after its answer (Connection: close): copy it through.
    let mut buffer = vec![0u8; CHUNK];
    loop {
        match upstream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buffer[..n]).is_err() {
                    break;
                }
                pace(state, n);
            }
        }
    }
    let _ = out.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_their_line() {
        for (line, class) in [
            ("GET /v2/a/blobs/sha256:00 HTTP/1.1", Class::BlobGet),
            (
                "PATCH /v2/a/blobs/uploads/x?_state=y HTTP/1.1",
                Class::UploadPatch,
            ),
            (
                "PUT /v2/a/blobs/uploads/x?digest=z HTTP/1.1",
                Class::UploadPut,
            ),
            ("POST /v2/a/blobs/uploads/ HTTP/1.1", Class::UploadStart),
            ("PUT /v2/a/manifests/latest HTTP/1.1", Class::ManifestPut),
            ("GET /v2/a/manifests/latest HTTP/1.1", Class::ManifestGet),
            ("GET /v2/_catalog HTTP/1.1", Class::Other),
        ] {
            assert_eq!(Class::of(line), class, "{line}");
        }
    }
}
