//! End-to-end test harness: real processes, real mounts, real peers.
//!
//! * [`registry`] starts Debian's `docker-registry` (the reference distribution registry)
//!   on 127.0.0.1, plain, with TLS from a CA made for the test, with htpasswd auth, with
//!   token auth against a [`token_server`] (users, anonymous pull, the catalog scope), or
//!   with deletion disabled.
//! * [`mount`] runs the real `reposure-mount` binary and unmounts on drop.
//! * [`apiserver`] emulates the few Kubernetes API endpoints the client uses, with the
//!   real surrogate behind its exec endpoint.
//! * [`tools`] wraps the peers: skopeo, umoci, curl.
//! * [`proxy`] injects faults between a client and the registry, and behaves like a hosted
//!   registry on request (blob redirects to another origin, no catalog, 429 with
//!   `Retry-After`); [`reliability`] records what the fault, bad-input, load and security
//!   cases did, for RELIABILITY.md.
//! * [`archives`] builds image archives, good and damaged; [`cli`] runs `reposure`.
//! * [`posix`] and [`process`]: errno values, `close()` errors, and processes to kill.
//!
//! Binaries are taken from the cargo target directory of the running test (so one
//! `cargo build` serves every test binary); `REPOSURE_BIN_DIR` overrides it.

pub mod apiserver;
pub mod archives;
pub mod cli;
pub mod contract;
pub mod endpoint;
pub mod hostile;
pub mod mount;
pub mod posix;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod reliability;
pub mod token_server;
pub mod tools;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Directory holding the project's binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("REPOSURE_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> or target/<profile>/<tool> -> target/<profile>
    let dir = exe.parent().expect("target dir");
    match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().expect("target dir").to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// A project binary, which must have been built (`cargo build --workspace`).
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Random bytes of a given length, and their sha256.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::fill(&mut bytes[..]);
    bytes
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
