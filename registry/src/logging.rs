//! The one logging setup of the binaries: `tracing` lines filtered by `REPOSURE_LOG`
//! (`info`, `debug`, `reposure_fs=debug`, ...), each binary with its own default level and
//! destination.

use std::path::Path;
use std::sync::Arc;

/// The variable that sets the filter, as `RUST_LOG` does for others.
pub const FILTER_VARIABLE: &str = "REPOSURE_LOG";

/// Where log lines go.
pub enum Destination<'a> {
    /// Standard error, with times (a terminal, a container's log).
    Stderr,
    /// Standard error without times or colours, for a process whose stderr is already
    /// stamped by what reads it (a surrogate under exec, a probe).
    StderrPlain,
    /// Appended to a file, without colours.
    File(&'a Path),
    /// Nowhere (a daemon with no log file).
    Discard,
}

/// Installs the global subscriber. Fails only when a log file cannot be opened.
pub fn init(default_level: &str, destination: Destination<'_>) -> std::io::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env(FILTER_VARIABLE)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match destination {
        Destination::Stderr => builder.with_writer(std::io::stderr).init(),
        Destination::StderrPlain => builder
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .without_time()
            .init(),
        Destination::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            builder.with_ansi(false).with_writer(Arc::new(file)).init();
        }
        Destination::Discard => builder.with_writer(std::io::sink).init(),
    }
    Ok(())
}
