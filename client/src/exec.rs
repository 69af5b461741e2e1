//! The exec API's WebSocket as one duplex byte stream: what the command writes to stdout
//! is read, what is written goes to its stdin.
//!
//! kube's own `AttachedProcess` pumps the WebSocket in a task of its own through two
//! in-memory pipes and reads stdin in 4 KiB pieces, one WebSocket message each: a quarter
//! of a million messages per GiB, each crossing the API server and the kubelet, plus two
//! copies and a task switch per piece. [`ExecStream`] speaks the channel protocol
//! (`v5.channel.k8s.io`, or `v4` where the server offers no more) directly on the socket:
//! stdin bytes collect in one buffer, sent as one message when the session flushes or the
//! buffer holds [`STDIN_MESSAGE`] bytes; stdout messages are read straight into the
//! caller's buffer. The server decides how large stdout messages are (a kubelet copies in
//! 32 KiB pieces).
//!
//! A stream ends in one of three ways, which [`ExecStream`] keeps apart: the command's
//! status says it succeeded (end of file after the last stdout byte), the status says it
//! failed (an error quoting the status), or the connection ends with no status at all (an
//! error of kind `ConnectionAborted`: the session client starts a new session on it).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{Sink, Stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, warn};

/// Stdin bytes sent in one WebSocket message at most. At least 64 KiB keeps a GiB under
/// 16,384 messages; 256 KiB makes it 4,096, while each hop (API server, kubelet) holds no
/// more than that per message and a message leaves within a millisecond at the speeds an
/// exec connection reaches.
pub const STDIN_MESSAGE: usize = 256 * 1024;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
/// v5: "this stream has ended", followed by the stream's channel.
const CLOSE: u8 = 255;

/// The socket kube's client upgrades an exec request to.
pub type ExecSocket = WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// How the command's side ended.
#[derive(Debug, Clone)]
enum Ended {
    Succeeded,
    Failed(String),
    Lost(String),
}

/// The command's stdin and stdout over an exec WebSocket; see the module documentation.
pub struct ExecStream<S = ExecSocket> {
    socket: S,
    /// Whether the server speaks v5, where stdin can be closed on its own.
    closes_stdin: bool,
    /// The stdin message being filled: the channel byte, then the bytes.
    outgoing: BytesMut,
    stdin_closed: bool,
    /// Stdout bytes received and not yet read.
    incoming: Bytes,
    /// Stderr bytes up to their next newline.
    stderr: Vec<u8>,
    on_stderr_line: Box<dyn FnMut(&str) + Send>,
    ended: Option<Ended>,
    /// What the logs call the other end (the pod).
    peer: String,
}

impl<S> ExecStream<S>
where
    S: Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + Unpin,
{
    /// A stream over an upgraded exec `socket` to `peer` (a pod, for the logs);
    /// `closes_stdin` if the server negotiated v5. Each line the command writes to stderr
    /// goes to `on_stderr_line`.
    pub fn new(
        socket: S,
        peer: &str,
        closes_stdin: bool,
        on_stderr_line: impl FnMut(&str) + Send + 'static,
    ) -> Self {
        Self {
            socket,
            closes_stdin,
            outgoing: new_message(),
            stdin_closed: false,
            incoming: Bytes::new(),
            stderr: Vec::new(),
            on_stderr_line: Box::new(on_stderr_line),
            ended: None,
            peer: peer.to_owned(),
        }
    }

    /// The error a write gets when the socket fails: the connection is lost, once.
    fn lost(&mut self, error: tokio_tungstenite::tungstenite::Error) -> io::Error {
        if self.ended.is_none() {
            self.end(Ended::Lost(lost_because(Some(&error))));
        }
        io::Error::new(io::ErrorKind::ConnectionAborted, lost_because(Some(&error)))
    }

    /// Records how the command's side ended, and says so in the log.
    fn end(&mut self, ended: Ended) {
        if !self.stderr.is_empty() {
            let last = std::mem::take(&mut self.stderr);
            (self.on_stderr_line)(String::from_utf8_lossy(&last).trim_end());
        }
        match &ended {
            Ended::Succeeded => info!(pod = %self.peer, "exec command ended"),
            Ended::Failed(why) => warn!(pod = %self.peer, "exec command ended: {why}"),
            Ended::Lost(why) => warn!(pod = %self.peer, "{why}"),
        }
        self.ended = Some(ended);
    }

    /// Sends the stdin message being filled.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = ready!(Pin::new(&mut self.socket).poll_ready(cx)) {
            return Poll::Ready(Err(self.lost(e)));
        }
        let message = std::mem::replace(&mut self.outgoing, new_message()).freeze();
        if let Err(e) = Pin::new(&mut self.socket).start_send(Message::Binary(message)) {
            return Poll::Ready(Err(self.lost(e)));
        }
        Poll::Ready(Ok(()))
    }

    fn stderr_received(&mut self, bytes: &[u8]) {
        self.stderr.extend_from_slice(bytes);
        while let Some(end) = self.stderr.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.stderr.drain(..=end).collect();
            (self.on_stderr_line)(String::from_utf8_lossy(&line).trim_end());
        }
    }
}

fn new_message() -> BytesMut {
    let mut message = BytesMut::with_capacity(STDIN_MESSAGE + 1);
    message.put_u8(STDIN);
    message
}

/// Why a connection ended with no status: `error`, if the socket said.
fn lost_because(error: Option<&tokio_tungstenite::tungstenite::Error>) -> String {
    match error {
        Some(e) => format!(
            "the exec connection ended without a status from the command (connection lost: {e})"
        ),
        None => {
            "the exec connection ended without a status from the command (connection lost)".into()
        }
    }
}

/// What a status message says of the command.
fn ended_by(status: &[u8]) -> Ended {
    match serde_json::from_slice::<Status>(status) {
        Ok(status) if status.status.as_deref() == Some("Success") => Ended::Succeeded,
        Ok(status) => Ended::Failed(format!(
            "the command in the pod failed: {} ({})",
            status.message.unwrap_or_default(),
            status.reason.unwrap_or_default()
        )),
        Err(e) => Ended::Failed(format!("the exec status is not a Status: {e}")),
    }
}

impl<S> AsyncRead for ExecStream<S>
where
    S: Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.incoming.is_empty() {
                let n = this.incoming.len().min(buf.remaining());
                buf.put_slice(&this.incoming.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match &this.ended {
                Some(Ended::Succeeded) => return Poll::Ready(Ok(())),
                Some(Ended::Failed(why)) => return Poll::Ready(Err(io::Error::other(why.clone()))),
                Some(Ended::Lost(why)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        why.clone(),
                    )));
                }
                None => {}
            }
            match ready!(Pin::new(&mut this.socket).poll_next(cx)) {
                Some(Ok(Message::Binary(mut data))) if !data.is_empty() => {
                    let channel = data[0];
                    let payload = data.split_off(1);
                    match channel {
                        STDOUT => this.incoming = payload,
                        STDERR => this.stderr_received(&payload),
                        STATUS => this.end(ended_by(&payload)),
                        _ => {}
                    }
                }
                // The server closes after the status; a close before it is a lost command.
                Some(Ok(Message::Close(_))) | None => this.end(Ended::Lost(lost_because(None))),
                Some(Ok(_)) => {}
                Some(Err(e)) => this.end(Ended::Lost(lost_because(Some(&e)))),
            }
        }
    }
}

impl<S> AsyncWrite for ExecStream<S>
where
    S: Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.stdin_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.outgoing.len() > STDIN_MESSAGE {
            ready!(this.poll_send(cx))?;
        }
        let n = buf.len().min(STDIN_MESSAGE + 1 - this.outgoing.len());
        this.outgoing.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.outgoing.len() > 1 {
            ready!(this.poll_send(cx))?;
        }
        Pin::new(&mut this.socket)
            .poll_flush(cx)
            .map_err(|e| this.lost(e))
    }

    /// Ends stdin: in v5 the command reads end of file and the stream stays readable; in
    /// v4, where stdin cannot end on its own, the whole connection closes.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        let this = self.get_mut();
        if this.stdin_closed {
            return Poll::Ready(Ok(()));
        }
        if this.closes_stdin {
            ready!(Pin::new(&mut this.socket).poll_ready(cx)).map_err(|e| this.lost(e))?;
            Pin::new(&mut this.socket)
                .start_send(Message::Binary(Bytes::from_static(&[CLOSE, STDIN])))
                .map_err(|e| this.lost(e))?;
            this.stdin_closed = true;
            Pin::new(&mut this.socket)
                .poll_flush(cx)
                .map_err(|e| this.lost(e))
        } else {
            ready!(Pin::new(&mut this.socket).poll_close(cx)).map_err(|e| this.lost(e))?;
            this.stdin_closed = true;
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// A client stream and the server's end of a WebSocket over an in-memory pipe.
    async fn pair(
        v5: bool,
    ) -> (
        ExecStream<WebSocketStream<tokio::io::DuplexStream>>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        (ExecStream::new(client, "pod", v5, |_| {}), server)
    }

    fn frame(channel: u8, payload: &[u8]) -> Message {
        let mut bytes = vec![channel];
        bytes.extend_from_slice(payload);
        Message::binary(bytes)
    }

    #[tokio::test]
    async fn stdin_goes_in_large_messages_and_only_when_flushed() {
        let (mut stream, mut server) = pair(true).await;
        let data: Vec<u8> = (0..STDIN_MESSAGE * 2 + 10).map(|i| i as u8).collect();
        // Written in small pieces, as a session's frames are.
        for piece in data.chunks(1000) {
            stream.write_all(piece).await.unwrap();
        }
        stream.flush().await.unwrap();
        let mut received = Vec::new();
        let mut sizes = Vec::new();
        while received.len() < data.len() {
            let Some(Ok(Message::Binary(message))) = server.next().await else {
                panic!("no stdin message");
            };
            assert_eq!(message[0], STDIN);
            sizes.push(message.len() - 1);
            received.extend_from_slice(&message[1..]);
        }
        assert_eq!(received, data);
        assert_eq!(sizes, [STDIN_MESSAGE, STDIN_MESSAGE, 10]);
        // v5: shutdown closes stdin alone.
        stream.shutdown().await.unwrap();
        let Some(Ok(Message::Binary(close))) = server.next().await else {
            panic!("no close message");
        };
        assert_eq!(&close[..], [CLOSE, STDIN]);
    }

    #[tokio::test]
    async fn stdout_stderr_and_a_successful_status_end_the_stream() {
        let (mut stream, mut server) = pair(true).await;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = lines.clone();
        stream.on_stderr_line = Box::new(move |line| seen.lock().unwrap().push(line.to_owned()));
        server.send(frame(STDOUT, b"hello ")).await.unwrap();
        server.send(frame(STDERR, b"a warn")).await.unwrap();
        server.send(frame(STDERR, b"ing\nnext\n")).await.unwrap();
        server.send(frame(STDOUT, b"world")).await.unwrap();
        server
            .send(frame(
                STATUS,
                br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success"}"#,
            ))
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
        assert_eq!(*lines.lock().unwrap(), ["a warning", "next"]);
    }

    #[tokio::test]
    async fn a_failed_status_and_a_lost_connection_are_errors_of_their_own() {
        let (mut stream, mut server) = pair(false).await;
        server.send(frame(STDOUT, b"partial")).await.unwrap();
        server
            .send(frame(STATUS, br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: 2","reason":"NonZeroExitCode"}"#))
            .await
            .unwrap();
        let mut out = Vec::new();
        let error = stream.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(out, b"partial");
        assert_ne!(error.kind(), io::ErrorKind::ConnectionAborted);
        assert!(
            error.to_string().contains("non-zero exit code: 2"),
            "{error}"
        );

        let (mut stream, server) = pair(true).await;
        drop(server);
        let error = stream.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn v4_shutdown_closes_the_connection() {
        let (mut stream, mut server) = pair(false).await;
        stream.write_all(b"last").await.unwrap();
        stream.shutdown().await.unwrap();
        let Some(Ok(Message::Binary(message))) = server.next().await else {
            panic!("no stdin message");
        };
        assert_eq!(&message[..], b"\0last");
        assert!(matches!(server.next().await, Some(Ok(Message::Close(_)))));
        assert!(stream.write(b"more").await.is_err());
    }
}
