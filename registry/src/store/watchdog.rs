//! When a streamed upload counts as stalled.
//!
//! The registry's answer to a streamed `PATCH` is not due until the whole body is sent, so
//! a read timeout cannot bound it (it would fail every upload that takes longer). What the
//! client can see instead is the connection taking the body: each piece taken is progress,
//! and an upload fails once it has been silent for the timeout. Two things blur that
//! signal, and this module allows for both:
//!
//! * A piece is taken only when the previous one was written out, so on a slow link a
//!   large piece looks like silence: the body is cut into [`PIECE`]-sized pieces.
//! * Socket buffers (the client's send buffer, the network, the registry's receive buffer)
//!   take the last [`IN_FLIGHT`] bytes at once, and the answer only comes once they have
//!   drained. After the last piece, the upload is therefore given the time those bytes take
//!   at the rate the link has shown, on top of the timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use crate::ByteStream;

/// Largest piece of the body handed to the connection at once: small enough that a piece
/// takes well under a second on a link of a few MiB/s, large enough to cost nothing at GiB/s.
pub const PIECE: usize = 256 * 1024;

/// Most bytes that can sit in socket buffers between the client and the registry: Linux's
/// default autotuning limits are 4 MiB to send and 6 MiB to receive; rounded up.
pub const IN_FLIGHT: u64 = 16 * 1024 * 1024;

/// The slowest rate assumed for draining [`IN_FLIGHT`], so the allowance stays bounded
/// (16 MiB at 64 KiB/s: about four minutes).
const SLOWEST_RATE: f64 = 64.0 * 1024.0;

struct State {
    started: Instant,
    last: Instant,
    bytes: u64,
    finished: bool,
}

/// Watches one upload's progress.
#[derive(Clone)]
pub struct Watchdog(Arc<Mutex<State>>);

impl Default for Watchdog {
    fn default() -> Self {
        let now = Instant::now();
        Self(Arc::new(Mutex::new(State {
            started: now,
            last: now,
            bytes: 0,
            finished: false,
        })))
    }
}

impl Watchdog {
    /// The body, in pieces of at most [`PIECE`], each recorded as progress when taken.
    pub fn watch(&self, body: ByteStream) -> ByteStream {
        let (taken, ended) = (self.0.clone(), self.0.clone());
        body.flat_map(|item| {
            let pieces: Vec<crate::Result<Bytes>> = match item {
                Ok(mut chunk) => {
                    let mut pieces = Vec::with_capacity(chunk.len().div_ceil(PIECE));
                    while chunk.len() > PIECE {
                        pieces.push(Ok(chunk.split_to(PIECE)));
                    }
                    pieces.push(Ok(chunk));
                    pieces
                }
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(pieces)
        })
        .inspect(move |item| {
            let mut state = taken.lock().expect("watchdog lock");
            state.last = Instant::now();
            if let Ok(piece) = item {
                state.bytes += piece.len() as u64;
            }
        })
        .chain(futures::stream::poll_fn(move |_| {
            let mut state = ended.lock().expect("watchdog lock");
            state.finished = true;
            state.last = Instant::now();
            std::task::Poll::Ready(None)
        }))
        .boxed()
    }

    /// When the upload counts as stalled if nothing happens before.
    fn deadline(&self, timeout: Duration) -> Instant {
        let state = self.0.lock().expect("watchdog lock");
        if !state.finished {
            return state.last + timeout;
        }
        let elapsed = (state.last - state.started).as_secs_f64();
        let rate = if elapsed > 0.0 {
            (state.bytes as f64 / elapsed).max(SLOWEST_RATE)
        } else {
            f64::INFINITY
        };
        let drain = IN_FLIGHT.min(state.bytes) as f64 / rate;
        state.last + timeout + Duration::from_secs_f64(drain)
    }

    /// Returns once the upload has been silent for `timeout`: no piece taken (the registry
    /// stopped reading, or the body stopped coming), or, after the last piece, no answer
    /// within the time its buffered bytes take to drain plus `timeout`. A slow link that
    /// keeps moving is never cut off, however long the upload takes.
    pub async fn stalled(&self, timeout: Duration) {
        loop {
            let deadline = self.deadline(timeout);
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: Vec<usize>) -> ByteStream {
        futures::stream::iter(chunks.into_iter().map(|n| Ok(Bytes::from(vec![0u8; n])))).boxed()
    }

    #[tokio::test]
    async fn the_body_is_taken_in_pieces() {
        let watchdog = Watchdog::default();
        let sizes: Vec<usize> = watchdog
            .watch(body(vec![PIECE * 2 + 5, 3]))
            .map(|piece| piece.unwrap().len())
            .collect()
            .await;
        assert_eq!(sizes, [PIECE, PIECE, 5, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_while_sending_is_a_stall_after_the_timeout() {
        let watchdog = Watchdog::default();
        let mut watched = watchdog.watch(body(vec![PIECE]));
        watched.next().await.unwrap().unwrap();
        let started = Instant::now();
        watchdog.stalled(Duration::from_secs(2)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_last_piece_the_buffered_bytes_get_time_to_drain() {
        let watchdog = Watchdog::default();
        let mut watched = watchdog.watch(body(vec![PIECE; 32]));
        // 8 MiB taken over 4 s: 2 MiB/s; the 8 MiB possibly buffered need 4 s more.
        for _ in 0..32 {
            tokio::time::advance(Duration::from_millis(125)).await;
            watched.next().await.unwrap().unwrap();
        }
        assert!(watched.next().await.is_none());
        let started = Instant::now();
        watchdog.stalled(Duration::from_secs(2)).await;
        let waited = started.elapsed().as_secs_f64();
        assert!((5.9..6.1).contains(&waited), "{waited}");
    }
}
