//! The exec endpoint: a pod's command as a local child process, its stdin, stdout, stderr
//! and status carried over a WebSocket in the channel protocol (`v5.channel.k8s.io`, or
//! `v4`). The two directions are pumped independently, as the kubelet does: a client that
//! sends while the command writes never waits for one behind the other.
//!
//! Every stdin and stdout message is counted ([`ExecTraffic`]), so a test or the benchmark
//! can say how many WebSocket messages a GiB costs: on a real cluster each one crosses the
//! API server and the kubelet.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{Body, State, full, json_response, status, url_pairs};

/// WebSocket messages and payload bytes of the exec streams so far, each way.
#[derive(Debug, Default)]
pub struct ExecTraffic {
    stdin_messages: AtomicU64,
    stdin_bytes: AtomicU64,
    stdout_messages: AtomicU64,
    stdout_bytes: AtomicU64,
}

/// A reading of [`ExecTraffic`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficCount {
    pub stdin_messages: u64,
    pub stdin_bytes: u64,
    pub stdout_messages: u64,
    pub stdout_bytes: u64,
}

impl ExecTraffic {
    pub fn read(&self) -> TrafficCount {
        TrafficCount {
            stdin_messages: self.stdin_messages.load(Ordering::Relaxed),
            stdin_bytes: self.stdin_bytes.load(Ordering::Relaxed),
            stdout_messages: self.stdout_messages.load(Ordering::Relaxed),
            stdout_bytes: self.stdout_bytes.load(Ordering::Relaxed),
        }
    }
}

impl TrafficCount {
    /// What passed between `earlier` and this reading.
    pub fn since(&self, earlier: &TrafficCount) -> TrafficCount {
        TrafficCount {
            stdin_messages: self.stdin_messages - earlier.stdin_messages,
            stdin_bytes: self.stdin_bytes - earlier.stdin_bytes,
            stdout_messages: self.stdout_messages - earlier.stdout_messages,
            stdout_bytes: self.stdout_bytes - earlier.stdout_bytes,
        }
    }

    /// Messages per GiB of payload: `(stdin, stdout)`.
    pub fn messages_per_gib(&self) -> (f64, f64) {
        let per_gib =
            |messages: u64, bytes: u64| messages as f64 * (1u64 << 30) as f64 / bytes.max(1) as f64;
        (
            per_gib(self.stdin_messages, self.stdin_bytes),
            per_gib(self.stdout_messages, self.stdout_bytes),
        )
    }
}

/// The exec endpoint: checks, negotiates the subprotocol, and hands the upgraded
/// connection to [`run_exec`].
pub(super) async fn exec(
    state: Arc<State>,
    mut request: Request<Incoming>,
    pod_path: String,
) -> Response<Body> {
    if state.objects.lock().unwrap().get(&pod_path).is_none() {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", "pod not found"),
        );
    }
    if state.faults.forbid_exec.load(Ordering::SeqCst) {
        return json_response(
            StatusCode::FORBIDDEN,
            &status(
                403,
                "Forbidden",
                "pods \"x\" is forbidden: User \"tester\" cannot create resource \"pods/exec\"",
            ),
        );
    }
    let query: Vec<(String, String)> = url_pairs(request.uri().query().unwrap_or_default());
    let command: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let offered = request
        .headers()
        .get(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
    let v4_only = state.faults.v4_only.load(Ordering::SeqCst);
    let protocol = if offered.contains(&"v5.channel.k8s.io") && !v4_only {
        "v5.channel.k8s.io"
    } else if offered.contains(&"v4.channel.k8s.io") {
        "v4.channel.k8s.io"
    } else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", "no supported subprotocol"),
        );
    };
    let Some(key) = request
        .headers()
        .get(hyper::header::SEC_WEBSOCKET_KEY)
        .cloned()
    else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", "not a WebSocket upgrade"),
        );
    };
    state
        .requests
        .lock()
        .unwrap()
        .push(format!("EXEC {protocol} {}", command.join(" ")));
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let socket =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            run_exec(
                state,
                socket,
                &pod_path,
                command,
                protocol == "v5.channel.k8s.io",
            )
            .await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "websocket")
        .header(
            hyper::header::SEC_WEBSOCKET_ACCEPT,
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .header(hyper::header::SEC_WEBSOCKET_PROTOCOL, protocol)
        .body(full(Bytes::new()))
        .unwrap()
}

/// Bytes read from the child's stdout per message. A real cluster's are at most 32 KiB:
/// the kubelet and the API server copy each stream with Go's `io.Copy`, whose buffer is
/// 32 KiB, and write one message per copy. A larger buffer here would make the emulation
/// faster than a cluster and hide what the client cannot change.
const FRAME: usize = 32 * 1024;

/// Counts `bytes` down from an armed fault; true (and disarmed) when it reaches zero.
fn countdown(armed: &AtomicU64, bytes: u64) -> bool {
    let left = armed.load(Ordering::SeqCst);
    if left == 0 {
        return false;
    }
    if bytes >= left {
        armed.store(0, Ordering::SeqCst);
        return true;
    }
    armed.store(left - bytes, Ordering::SeqCst);
    false
}

/// Runs the command and pumps the channels until it exits or the client goes away.
async fn run_exec(
    state: Arc<State>,
    socket: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    pod_path: &str,
    command: Vec<String>,
    v5: bool,
) {
    // A program of the image, by name or by its path in the image.
    let program: PathBuf = match command.first().and_then(|c| Path::new(c).file_name()) {
        Some(name) => state.image.join(name),
        None => return,
    };
    let env = state
        .pod_env
        .lock()
        .unwrap()
        .get(pod_path)
        .cloned()
        .unwrap_or_default();
    let spawned = tokio::process::Command::new(program)
        .args(&command[1..])
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let (mut sink, source) = socket.split();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let failure = status(
                500,
                "InternalError",
                &format!("cannot run {command:?}: {e}"),
            );
            let mut frame = vec![3u8];
            frame.extend_from_slice(failure.to_string().as_bytes());
            let _ = sink.send(Message::binary(frame)).await;
            close_normally(&mut sink).await;
            return;
        }
    };
    if let Some(pid) = child.id() {
        state.exec_pids.lock().unwrap().push(pid);
    }
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (frames, mut outgoing) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let stdout_task = tokio::spawn(forward_output(stdout, 1, frames.clone()));
    let stderr_task = tokio::spawn(forward_output(stderr, 2, frames));
    let mut input = tokio::spawn(forward_input(state.clone(), source, stdin, v5));
    loop {
        tokio::select! {
            frame = outgoing.recv() => {
                // All of stdout and stderr sent: the command has ended.
                let Some(frame) = frame else {
                    break;
                };
                if frame[0] == 1 {
                    if countdown(&state.faults.drop_after_stdout_bytes, frame.len() as u64 - 1) {
                        // The connection breaks: no close frame, no status; the process
                        // loses its session as it would in a pod.
                        let _ = child.start_kill();
                        input.abort();
                        return;
                    }
                    state.exec_traffic.stdout_messages.fetch_add(1, Ordering::Relaxed);
                    state.exec_traffic.stdout_bytes.fetch_add(frame.len() as u64 - 1, Ordering::Relaxed);
                }
                if sink.send(Message::binary(frame)).await.is_err() {
                    let _ = child.start_kill();
                    input.abort();
                    return;
                }
            }
            // The client went away (or a fault cut it off): the command loses its streams.
            _ = &mut input => {
                let _ = child.start_kill();
                return;
            }
        }
    }
    input.abort();
    let _ = stdout_task.await;
    let _ = stderr_task.await;
    let exit = child.wait().await;
    // Without a status the socket is dropped: the client sees the connection end.
    if !state.faults.no_status.load(Ordering::SeqCst) {
        let status = match exit.ok().and_then(|s| s.code()) {
            Some(0) => {
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
            }
            code => {
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": format!("command terminated with non-zero exit code: {code:?}"),
                           "reason": "NonZeroExitCode",
                           "details": {"causes": [{"reason": "ExitCode", "message": code.unwrap_or(137).to_string()}]}})
            }
        };
        let mut frame = vec![3u8];
        frame.extend_from_slice(status.to_string().as_bytes());
        let _ = sink.send(Message::binary(frame)).await;
        close_normally(&mut sink).await;
    }
}

/// Sends what the command writes to one of its outputs as messages on `channel`, until it
/// closes that output.
async fn forward_output(
    mut output: impl tokio::io::AsyncRead + Unpin,
    channel: u8,
    frames: tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    let mut buffer = vec![0u8; FRAME + 1];
    loop {
        match output.read(&mut buffer[1..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buffer[0] = channel;
                if frames.send(buffer[..=n].to_vec()).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Writes the client's stdin messages to the command; returns when the client is gone
/// (closed, lost, or cut off by a fault). A v5 close of stdin (channel 255, stream 0)
/// closes the command's stdin.
async fn forward_input(
    state: Arc<State>,
    mut source: futures::stream::SplitStream<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>,
    mut stdin: Option<tokio::process::ChildStdin>,
    v5: bool,
) {
    loop {
        match source.next().await {
            Some(Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                0 => {
                    let bytes = data.len() as u64 - 1;
                    if countdown(&state.faults.drop_after_stdin_bytes, bytes) {
                        return;
                    }
                    state
                        .exec_traffic
                        .stdin_messages
                        .fetch_add(1, Ordering::Relaxed);
                    state
                        .exec_traffic
                        .stdin_bytes
                        .fetch_add(bytes, Ordering::Relaxed);
                    if let Some(input) = stdin.as_mut()
                        && input.write_all(&data[1..]).await.is_err()
                    {
                        stdin = None;
                    }
                }
                255 if v5 && data.get(1) == Some(&0) => stdin = None,
                _ => {}
            },
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
            Some(Ok(_)) => {}
        }
    }
}

/// Closes as the API server does once the status is sent: with code 1000, which clients
/// (kubectl's gorilla reader) take as the end of the streams; a close with no code is an
/// error to them.
async fn close_normally<S>(sink: &mut S)
where
    S: futures::Sink<Message> + Unpin,
{
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(normal))).await;
    let _ = sink.close().await;
}
