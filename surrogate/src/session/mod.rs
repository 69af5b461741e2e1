//! The surrogate session: every [`reposure_registry::operations::Registry`] operation carried over one
//! byte stream (a child's stdin/stdout, a Kubernetes exec channel, or an in-memory pipe).
//!
//! The stream carries HTTP/2 with prior knowledge (hyper on both ends), so many requests
//! are in flight at once and each has its own flow control; nothing here frames or
//! multiplexes bytes by hand. The protocol is documented in `surrogate/PROTOCOL.md`.
//!
//! * [`wire`]: the request and error documents both ends share.
//! * [`server`]: serves a registry (and optionally a spool) over one stream.
//! * [`client`]: [`client::SessionClient`], a `Registry` that talks to a server, and
//!   reconnects through a [`transport::Connector`] when the session is lost.
//! * [`store`]: [`store::SessionStore`], the server's store reached through a client, for
//!   a distribution API served over the session.
//! * [`transport`]: ways to reach a server: a child process, or in-process.

pub mod client;
pub mod server;
pub mod store;
pub mod transport;
pub mod wire;

/// Protocol versions this build speaks, oldest first. A client picks the newest version
/// both ends speak from the server's `/hello`. Version 2 adds the store routes
/// (`/v1/store/*`, for `registry serve`); version 1's paths are unchanged.
pub const PROTOCOL_VERSIONS: &[u32] = &[1, 2];

/// The first version with the store routes.
pub const STORE_PROTOCOL: u32 = 2;

/// HTTP/2 flow-control window per stream. The default 64 KiB would cap a transfer at one
/// window per round trip; 8 MiB keeps a pipe or exec channel busy while bounding what one
/// stream can buffer.
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;

/// HTTP/2 flow-control window of the whole connection: room for a few streams at full
/// speed at once.
pub const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Largest HTTP/2 frame: big frames mean fewer frame headers and wake-ups per byte.
pub const MAX_FRAME: u32 = 1024 * 1024 - 1;

/// Bytes a sender may queue per stream ahead of the peer's flow control: with the default
/// 400 KiB a fast stream stalls on its own buffer before the window is used.
pub const SEND_BUFFER: usize = 4 * 1024 * 1024;

/// Capacity asked for the pipes of a child session (Linux allows up to 1 MiB without
/// privileges): the 64 KiB default means a context switch every 64 KiB.
pub const PIPE_CAPACITY: i32 = 1024 * 1024;

/// Grows a pipe's buffer to [`PIPE_CAPACITY`]; a pipe that cannot grow keeps working.
pub fn grow_pipe(fd: std::os::fd::RawFd) {
    // SAFETY: F_SETPIPE_SZ on a descriptor the caller owns; failure is harmless.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_CAPACITY);
    }
}
