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
//! [`FaultProxy::throttle`] limits every connection's bandwidth both ways (a slow link).
//! Request bodies are followed exactly (`Content-Length` or chunked encoding), so the
//! requests after a streamed upload on a kept-alive connection are classified too.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
}

/// An armed rule.
#[derive(Debug, Clone)]
struct Rule {
    class: Option<Class>,
    fault: Fault,
    /// How many more requests it applies to; `None` while armed.
    remaining: Option<usize>,
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
}

impl State {
    /// The fault for a request of `class`, counting it.
    fn fault_for(&self, class: Class) -> Option<(u64, Fault)> {
        *self.seen.lock().unwrap().entry(class).or_default() += 1;
        let mut rules = self.rules.lock().unwrap();
        let index = rules
            .iter()
            .position(|r| r.class.is_none_or(|c| c == class))?;
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
        let state = Arc::new(State::default());
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

    fn arm(&self, class: Option<Class>, fault: Fault, times: Option<usize>) -> Armed {
        let id = self.state.next_rule.fetch_add(1, Ordering::SeqCst);
        self.state.rules.lock().unwrap().push(Rule {
            class,
            fault,
            remaining: times,
            id,
        });
        Armed {
            state: self.state.clone(),
            id,
        }
    }

    /// Applies `fault` to every request of `class` until the rule is cleared.
    pub fn inject(&self, class: Class, fault: Fault) -> Armed {
        self.arm(Some(class), fault, None)
    }

    /// Applies `fault` to the next `times` requests of `class`.
    pub fn inject_times(&self, class: Class, fault: Fault, times: usize) -> Armed {
        self.arm(Some(class), fault, Some(times))
    }

    /// Applies `fault` to every request until the rule is cleared.
    pub fn inject_all(&self, fault: Fault) -> Armed {
        self.arm(None, fault, None)
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
