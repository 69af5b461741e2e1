//! A TCP proxy on 127.0.0.1 that can hold back blob requests, to make a registry "slow"
//! on demand. It reads each request head to decide; once a request with a chunked body
//! passes, the rest of that connection is forwarded without inspection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest a request is held, so a forgotten stall cannot hang a test run.
const MAX_STALL: Duration = Duration::from_secs(60);

/// A running proxy; its threads end when the listener is dropped with the process.
pub struct StallProxy {
    pub port: u16,
    stall_blobs: Arc<AtomicBool>,
    stall_uploads: Arc<AtomicBool>,
    uploads_seen: Arc<std::sync::atomic::AtomicUsize>,
}

impl StallProxy {
    /// Proxies 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().unwrap().port();
        let stall_blobs = Arc::new(AtomicBool::new(false));
        let stall_uploads = Arc::new(AtomicBool::new(false));
        let uploads_seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let rules = Rules {
            blobs: stall_blobs.clone(),
            uploads: stall_uploads.clone(),
            uploads_seen: uploads_seen.clone(),
        };
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let rules = rules.clone();
                std::thread::spawn(move || {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) {
                        serve(client, server, rules);
                    }
                });
            }
        });
        Self {
            port,
            stall_blobs,
            stall_uploads,
            uploads_seen,
        }
    }

    /// Holds (or releases) every GET of a blob.
    pub fn stall_blobs(&self, stall: bool) {
        self.stall_blobs.store(stall, Ordering::SeqCst);
    }

    /// Holds (or releases) every blob upload request (PATCH, and PUT of an upload).
    pub fn stall_uploads(&self, stall: bool) {
        self.stall_uploads.store(stall, Ordering::SeqCst);
    }

    /// How many blob upload requests (PATCH) have arrived.
    pub fn uploads_seen(&self) -> usize {
        self.uploads_seen.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Which requests to hold.
#[derive(Clone)]
struct Rules {
    blobs: Arc<AtomicBool>,
    uploads: Arc<AtomicBool>,
    uploads_seen: Arc<std::sync::atomic::AtomicUsize>,
}

fn hold_while(flag: &AtomicBool) {
    let started = Instant::now();
    while flag.load(Ordering::SeqCst) && started.elapsed() < MAX_STALL {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn serve(mut client: TcpStream, server: TcpStream, rules: Rules) {
    let mut server_write = server.try_clone().expect("clone");
    let mut server_read = server;
    let mut client_write = client.try_clone().expect("clone");
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_read, &mut client_write);
        let _ = client_write.shutdown(Shutdown::Write);
    });
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(end) = find(&buffer, b"\r\n\r\n") {
                break end + 4;
            }
            match client.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let request_line = head.lines().next().unwrap_or_default().to_owned();
        if request_line.starts_with("get ") && request_line.contains("/blobs/") {
            hold_while(&rules.blobs);
        }
        if request_line.contains("/blobs/uploads/")
            && (request_line.starts_with("patch ") || request_line.starts_with("put "))
        {
            if request_line.starts_with("patch ") {
                rules.uploads_seen.fetch_add(1, Ordering::SeqCst);
            }
            hold_while(&rules.uploads);
        }
        let content_length: usize = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let chunked = head.contains("transfer-encoding: chunked");
        if server_write.write_all(&buffer[..head_end]).is_err() {
            return;
        }
        buffer.drain(..head_end);
        if chunked {
            // Pass the rest of the connection through untouched.
            let _ = server_write.write_all(&buffer);
            let _ = std::io::copy(&mut client, &mut server_write);
            return;
        }
        let mut remaining = content_length;
        let take = remaining.min(buffer.len());
        if server_write.write_all(&buffer[..take]).is_err() {
            return;
        }
        buffer.drain(..take);
        remaining -= take;
        while remaining > 0 {
            match client.read(&mut chunk[..remaining.min(64 * 1024)]) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if server_write.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    remaining -= n;
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
