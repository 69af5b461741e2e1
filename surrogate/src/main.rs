//! `reposure-surrogate`: runs next to a registry and serves it to Reposure clients.
//!
//! * `serve --stdio`: one long-lived session over stdin/stdout (see `PROTOCOL.md`).
//! * `spooler --directory DIR`: publishes pushes accepted into a spool directory.
//! * `check [--spooler]`: exits 0 when the registry answers with the configured credentials
//!   (and, with `--spooler`, a spooler holds the spool): a pod's readiness and liveness probes.
//! * `list`, `pull`, `push`, `delete`: one-shot commands for people who only have
//!   `kubectl exec`; each exits 0 on success and non-zero with a message otherwise.
//!
//! The registry connection comes from flags or, so that a pod can set them once, from
//! `REPOSURE_REGISTRY`, `REPOSURE_CA_FILE`, `REPOSURE_USERNAME`, `REPOSURE_PASSWORD_FILE`,
//! `REPOSURE_TOKEN_FILE` and `REPOSURE_DOCKER_CONFIG_FILE`; the spool directory from
//! `REPOSURE_SPOOL`. Secrets are read from files, never from arguments.

use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use reposure_registry::credentials::{OptionNames, UserOptions};
use reposure_registry::direct::DirectSource;
use reposure_registry::formats::manifest::Platform;
use reposure_registry::formats::single_file::PushFormat;
use reposure_registry::logging;
use reposure_registry::names::{self, Reference};
use reposure_registry::operations::FileAttributes;
use reposure_registry::operations::StoreRegistry;
use reposure_registry::pull::{list_images, pull};
use reposure_registry::push::{Content, LocalFile, push_path};
use reposure_registry::scratch::Scratch;
use reposure_registry::store::Store;
use reposure_registry::{Registry, RegistryError};
use reposure_surrogate::session::server::SessionServer;
use reposure_surrogate::session::transport;
use reposure_surrogate::spool::{self, Spool, kubectl_cp};
use tokio::io::AsyncWriteExt;

/// Called `tar` or `test` (the image links both names to this binary), answers as
/// `kubectl cp` into the spool needs ([`spool::kubectl_cp`]) and exits.
fn answer_as_tar_or_test() {
    let mut args = std::env::args_os();
    let program = args
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .unwrap_or_default();
    if program != "tar" && program != "test" {
        return;
    }
    let spool = std::env::var_os("REPOSURE_SPOOL")
        .map_or_else(|| PathBuf::from(kubectl_cp::ORIGINAL_SPOOL), PathBuf::from);
    let args: Vec<std::ffi::OsString> = args.collect();
    let code = if program == "tar" {
        logging::init("info", logging::Destination::StderrPlain).expect("stderr needs no opening");
        kubectl_cp::tar(&args, &spool, std::io::stdin().lock())
    } else {
        kubectl_cp::test(&args, &spool)
    };
    std::process::exit(code);
}

/// How long `check` waits for the registry: below a probe's usual timeout.
const CHECK_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Parser)]
#[command(
    name = "reposure-surrogate",
    version,
    about = "Serves a registry to Reposure clients"
)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Connection {
    /// The registry: http(s)://HOST[:PORT] or oci:PATH.
    #[arg(long, env = "REPOSURE_REGISTRY", global = true)]
    registry: Option<String>,
    /// PEM CA that verifies the registry's TLS certificate.
    #[arg(long, env = "REPOSURE_CA_FILE", global = true)]
    ca: Option<PathBuf>,
    /// Registry user name (the password comes from --password-file).
    #[arg(long, env = "REPOSURE_USERNAME", global = true)]
    username: Option<String>,
    /// File holding the registry password.
    #[arg(long, env = "REPOSURE_PASSWORD_FILE", global = true)]
    password_file: Option<PathBuf>,
    /// File holding a bearer token (a service-account token, say).
    #[arg(long, env = "REPOSURE_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// A Docker config (`.dockerconfigjson`) holding credentials for the registry's host.
    #[arg(long, env = "REPOSURE_DOCKER_CONFIG_FILE", global = true)]
    docker_config_file: Option<PathBuf>,
    /// Seconds the registry may stay silent before an operation fails (default 30).
    #[arg(long, env = "REPOSURE_TIMEOUT", global = true, value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// Upload in chunks of at most this size (K, M, G), for registries with a limit.
    #[arg(long, env = "REPOSURE_MAX_CHUNK", global = true, value_parser = parse_chunk)]
    max_chunk: Option<u64>,
}

fn parse_chunk(text: &str) -> std::result::Result<u64, String> {
    reposure_registry::units::parse_size(text).map_err(|e| e.to_string())
}

fn parse_timeout(text: &str) -> std::result::Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.1..=3600.0).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "{text:?}: give the seconds the registry may stay silent, 0.1 to 3600"
        )),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve one session over stdin and stdout.
    Serve {
        /// Use stdin/stdout (the only transport).
        #[arg(long)]
        stdio: bool,
        /// Accept pushes into this spool directory (a spooler must run on it).
        #[arg(long, env = "REPOSURE_SPOOL")]
        spool: Option<PathBuf>,
        /// How long a spooled push waits for the spooler's verdict.
        #[arg(long, default_value_t = 600)]
        verdict_timeout: u64,
    },
    /// Publish pushes accepted into a spool directory.
    Spooler {
        #[arg(long, env = "REPOSURE_SPOOL")]
        directory: PathBuf,
    },
    /// Exit 0 if the registry answers with the configured credentials.
    Check {
        /// Also require a running spooler on this spool directory.
        #[arg(long, env = "REPOSURE_SPOOL")]
        spooler: Option<PathBuf>,
        /// Only check the spooler (a liveness probe must not fail when the registry does).
        #[arg(long, requires = "spooler")]
        spooler_only: bool,
    },
    /// List every image as REPOSITORY:TAG.
    List,
    /// Write an image to stdout: its archive, or with --unpack the file it holds.
    Pull {
        name: String,
        #[arg(long)]
        unpack: bool,
        /// Of a multi-platform image, only this platform (OS/ARCH[/VARIANT]).
        #[arg(long)]
        platform: Option<Platform>,
    },
    /// Push stdin: an image archive as its image, anything else as a single-file image.
    Push {
        name: String,
        #[arg(long, default_value = "image")]
        format: PushFormat,
    },
    /// Delete one tag.
    Delete { name: String },
}

impl Connection {
    /// The store these options name.
    fn open(&self) -> Result<std::sync::Arc<dyn Store>> {
        let registry = self
            .registry
            .as_deref()
            .context("no registry: pass --registry URL or set REPOSURE_REGISTRY")?;
        let options = UserOptions {
            ca: self.ca.clone(),
            username: self.username.clone(),
            password_file: self.password_file.clone(),
            token_file: self.token_file.clone(),
            docker_config: self.docker_config_file.clone(),
            timeout: self.timeout,
            max_chunk: self.max_chunk,
        };
        Ok(registry
            .parse::<DirectSource>()?
            .open_store(&options, &OptionNames::FLAGS)?)
    }
}

/// What the session's stdin and stdout pipes are grown to: the session's HTTP/2 frames are
/// up to 1 MiB, which a default 64 KiB pipe splits into sixteen reads and wake-ups on each
/// side (1 MiB is also Linux's default limit for an unprivileged process).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// stdin and stdout as one async stream; pipes are driven by epoll directly, and grown to
/// [`PIPE_SIZE`] where the system allows it.
fn stdio() -> Result<Pin<Box<dyn transport::Stream>>> {
    use tokio::net::unix::pipe;
    // SAFETY: dup(2) of the standard descriptors; the duplicates are owned by the Files.
    let (input, output) = unsafe { (libc::dup(0), libc::dup(1)) };
    if input < 0 || output < 0 {
        bail!(
            "cannot use stdin/stdout: {}",
            std::io::Error::last_os_error()
        );
    }
    for fd in [input, output] {
        // SAFETY: fcntl on a descriptor we own; on anything but a pipe, or above the
        // system's limit, it fails and the pipe keeps its size.
        unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE) };
    }
    // SAFETY: the descriptors were just duplicated and are owned here only.
    let (input, output) = unsafe {
        (
            std::fs::File::from_raw_fd(input),
            std::fs::File::from_raw_fd(output),
        )
    };
    match (
        pipe::Receiver::from_file(input),
        pipe::Sender::from_file(output),
    ) {
        (Ok(receiver), Ok(sender)) => Ok(Box::pin(tokio::io::join(receiver, sender))),
        // Not pipes (a terminal, a file): tokio's blocking stdio works everywhere.
        _ => Ok(Box::pin(tokio::io::join(
            tokio::io::stdin(),
            tokio::io::stdout(),
        ))),
    }
}

async fn run(cli: Cli) -> Result<()> {
    let store = cli.connection.open()?;
    let registry: std::sync::Arc<dyn Registry> =
        std::sync::Arc::new(StoreRegistry::new(store.clone()));
    match cli.command {
        Command::Serve {
            stdio: use_stdio,
            spool,
            verdict_timeout,
        } => {
            if !use_stdio {
                bail!("serve needs --stdio (the session runs over stdin and stdout)");
            }
            let spool = match spool {
                Some(dir) => Some(Spool::open(dir, Duration::from_secs(verdict_timeout))?),
                None => None,
            };
            SessionServer::new(store, spool)
                .serve(stdio()?)
                .await
                .context("session failed")?;
        }
        Command::Spooler { directory } => spool::spooler::run(directory, registry).await?,
        Command::Check {
            spooler,
            spooler_only,
        } => {
            if let Some(dir) = &spooler
                && !spool::spooler_running(dir)
            {
                bail!("no spooler is running on {}", dir.display());
            }
            if !spooler_only {
                tokio::time::timeout(CHECK_TIMEOUT, registry.check())
                    .await
                    .with_context(|| {
                        format!(
                            "{} did not answer within {CHECK_TIMEOUT:?}",
                            registry.describe()
                        )
                    })??;
            }
        }
        Command::List => {
            let mut out = String::new();
            for (repository, tag) in list_images(registry.as_ref()).await? {
                out.push_str(&format!("{repository}:{tag}\n"));
            }
            tokio::io::stdout().write_all(out.as_bytes()).await?;
        }
        Command::Pull {
            name,
            unpack,
            platform,
        } => {
            let mut pulled = pull(registry.as_ref(), &name, unpack, platform.as_ref()).await?;
            let mut stdout = tokio::io::stdout();
            while let Some(chunk) = pulled.stream.next().await {
                stdout.write_all(&chunk?).await?;
            }
            stdout.flush().await?;
        }
        Command::Push { name, format } => {
            let (repository, reference) = names::parse_image(&name)?;
            let Reference::Tag(tag) = reference else {
                bail!("push to a tag, not a digest");
            };
            // The image needs the length before the content, and an image archive must be
            // recognised before it is pushed: take stdin into a file first.
            // It has no name, so a push killed half-way leaves nothing behind.
            let scratch_dir = std::env::temp_dir();
            let spooled =
                Scratch::new_in(&scratch_dir).context("cannot create a temporary file")?;
            std::io::copy(&mut std::io::stdin().lock(), &mut spooled.file())
                .context("reading stdin")?;
            let file = LocalFile {
                path: &spooled.path(),
                file_name: names::base_name(&repository).to_owned(),
                format,
                created: None,
                attributes: FileAttributes::default(),
                content: Content::Detect,
                scratch_dir: &scratch_dir,
                progress: None,
            };
            let digest = push_path(registry.as_ref(), &repository, &tag, file).await?;
            println!("{repository}:{tag} {digest}");
        }
        Command::Delete { name } => {
            let (repository, reference) = names::parse_image(&name)?;
            let Reference::Tag(tag) = reference else {
                bail!("delete a tag, not a digest");
            };
            registry.delete_tag(&repository, &tag).await?;
        }
    }
    Ok(())
}

fn main() {
    answer_as_tar_or_test();
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // stdout may carry a session: logs go to stderr only.
    logging::init("warn", logging::Destination::StderrPlain).expect("stderr needs no opening");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        let mut message = e
            .chain()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(": ");
        if let Some(hint) = e
            .chain()
            .find_map(|c| c.downcast_ref::<RegistryError>())
            .and_then(|registry| OptionNames::FLAGS.hint(registry))
        {
            message.push_str(&format!(
                "; {hint} (in a pod: the Registry's authenticationSecret and authorizationSecret)"
            ));
        }
        eprintln!("reposure-surrogate: {message}");
        std::process::exit(1);
    }
}
