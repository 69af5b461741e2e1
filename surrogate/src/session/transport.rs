//! Ways to reach a session server.

use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

use super::server::SessionServer;
use reposure_registry::error::{RegistryError, Result};
use reposure_registry::store::Store;

/// A byte stream to a server.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// An open stream, and whatever must live as long as it (a child process).
pub struct Connection {
    pub stream: Pin<Box<dyn Stream>>,
    pub guard: Option<Box<dyn Send + Sync>>,
}

/// Opens streams to a server; asked again whenever a session is lost.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// Where this connects, for logs (no credentials).
    fn describe(&self) -> String;
    /// Opens a new stream.
    async fn connect(&self) -> Result<Connection>;
}

/// Runs a command and talks to it over its stdin and stdout (`exec:COMMAND ARGS...`).
pub struct ChildProcess {
    argv: Vec<String>,
}

impl ChildProcess {
    /// `argv[0]` is the program.
    pub fn new(argv: Vec<String>) -> Result<Self> {
        if argv.is_empty() {
            return Err(RegistryError::Rejected(
                "exec: needs a command, as in exec:reposure-surrogate serve --stdio".into(),
            ));
        }
        Ok(Self { argv })
    }

    /// Splits a command line on white space (no quoting: arguments with spaces are not
    /// supported in `exec:` sources).
    pub fn from_command_line(command: &str) -> Result<Self> {
        Self::new(command.split_whitespace().map(str::to_owned).collect())
    }
}

/// Kills the child when the session is dropped.
struct ChildGuard(#[allow(dead_code)] tokio::process::Child);

#[async_trait]
impl Connector for ChildProcess {
    fn describe(&self) -> String {
        format!("exec:{}", self.argv.join(" "))
    }

    async fn connect(&self) -> Result<Connection> {
        let mut child = tokio::process::Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RegistryError::Unavailable(format!("cannot run {}: {e}", self.argv[0])))?;
        info!(pid = child.id(), command = %self.describe(), "session process started");
        // The surrogate's own log lines become this process's log lines.
        let stderr = child.stderr.take().expect("piped stderr");
        let pid = child.id();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(target: "surrogate", pid, "{line}");
            }
        });
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        use std::os::fd::AsRawFd;
        super::grow_pipe(stdin.as_raw_fd());
        super::grow_pipe(stdout.as_raw_fd());
        Ok(Connection {
            stream: Box::pin(tokio::io::join(stdout, stdin)),
            guard: Some(Box::new(ChildGuard(child))),
        })
    }
}

/// Buffer of the in-process pipe in each direction.
const IN_PROCESS_BUFFER: usize = 4 * 1024 * 1024;

/// Serves a store on a task of this process, over an in-memory pipe: the whole session
/// protocol without spawning anything.
pub struct InProcess {
    store: Arc<dyn Store>,
}

impl InProcess {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Connector for InProcess {
    fn describe(&self) -> String {
        format!("session:{}", self.store.describe())
    }

    async fn connect(&self) -> Result<Connection> {
        let (client, server) = tokio::io::duplex(IN_PROCESS_BUFFER);
        let session = SessionServer::new(self.store.clone(), None);
        tokio::spawn(async move {
            let _ = session.serve(server).await;
        });
        Ok(Connection {
            stream: Box::pin(client),
            guard: None,
        })
    }
}
