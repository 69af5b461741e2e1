//! `reposure-mount SOURCE MOUNTPOINT [-f] [-o OPT[,OPT...]]`: mounts a registry.
//!
//! A library so that `reposure mount` and `mount.fuse.reposure` (the `reposure` binary under
//! other names) run exactly this; the `reposure-mount` binary only calls [`main`].
//!
//! Also usable as a mount(8) helper (`mount.fuse.reposure SOURCE DIR -o OPTS`). Without
//! `-f` it forks before starting any thread, mounts in the child, and exits 0 only once the
//! mount is ready, or non-zero with a one-line reason. With `-f` it stays in the foreground
//! and unmounts on SIGINT or SIGTERM.

mod daemon;
mod options;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reposure_client::kubernetes::KubeOptions;
use reposure_client::source::{OpenOptions, Source};
use reposure_fs::fuse::Ownership;
use reposure_fs::mount::{MountSettings, serve};
use reposure_fs::{Filesystem, FsConfig};
use reposure_registry::credentials::OptionNames;
use reposure_registry::{Registry, logging};
use reposure_surrogate::session::client::SessionClient;
use reposure_surrogate::session::transport::InProcess;

use crate::daemon::Reporter;
use crate::options::MountOptions;

/// How long the mount waits for the registry to answer its first request before failing
/// (or `timeout=` and the time connecting may take, if longer).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_ALLOWANCE: Duration = Duration::from_secs(10);

pub const USAGE: &str = "usage: reposure-mount SOURCE MOUNTPOINT [-f] [-o OPT[,OPT...]]

SOURCE is [NAMESPACE/]NAME (a Registry of the Kubernetes cluster, reached through its
surrogate pod with your kubeconfig), oci:PATH (a local OCI image layout),
http://HOST[:PORT], https://HOST[:PORT], or exec:COMMAND (a surrogate session over the
command's stdin/stdout).
Options: kubeconfig=FILE, context=NAME (Kubernetes; else as kubectl: $KUBECONFIG,
~/.kube/config), ro, format=image|artifact, ca=FILE, username=NAME, password_file=FILE,
uid=N, gid=N, allow_other, log=FILE, metadata_ttl=SECONDS, spool_dir=DIR,
timeout=SECONDS (how long the registry may stay silent; default 30),
unpack=true|false (false: single-file images read as image archives too),
cache_dir=DIR, cache_size=SIZE (verified file contents kept on disk; default 4G),
transport=direct|session (session: through an in-process surrogate session).
The password may also come from the REPOSURE_PASSWORD environment variable.
Unmount with: fusermount3 -u MOUNTPOINT";

struct Args {
    source: Source,
    mountpoint: PathBuf,
    foreground: bool,
    options: MountOptions,
}

fn parse_args(args: Vec<OsString>) -> Result<Args> {
    // The mountpoint may be any path; everything else is text.
    let text = |arg: OsString| {
        arg.into_string().map_err(|arg| {
            anyhow::anyhow!(
                "{} is not UTF-8; only the mountpoint may be",
                arg.to_string_lossy()
            )
        })
    };
    let mut positional = Vec::new();
    let mut option_lists = Vec::new();
    let mut foreground = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-f" | "--foreground") => foreground = true,
            Some("-o") => option_lists.push(text(args.next().context("-o needs options")?)?),
            Some("-h" | "--help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Some("-V" | "--version") => {
                println!("reposure-mount {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            Some(s) if s.starts_with("-o") => option_lists.push(s[2..].to_owned()),
            Some(s) if s.starts_with('-') && s.len() > 1 => bail!("unknown flag {s}\n{USAGE}"),
            _ => positional.push(arg),
        }
    }
    let [source, mountpoint] = <[OsString; 2]>::try_from(positional)
        .map_err(|_| anyhow::anyhow!("expected SOURCE and MOUNTPOINT\n{USAGE}"))?;
    Ok(Args {
        source: text(source)?.parse()?,
        mountpoint: mountpoint.into(),
        foreground,
        options: MountOptions::parse(option_lists.iter().map(String::as_str))?,
    })
}

fn init_logging(options: &MountOptions, foreground: bool) -> Result<()> {
    let destination = match (&options.log, foreground) {
        (Some(path), _) => logging::Destination::File(path),
        (None, true) => logging::Destination::Stderr,
        (None, false) => logging::Destination::Discard,
    };
    logging::init("info", destination).with_context(|| {
        format!(
            "cannot open log={}",
            options.log.as_deref().unwrap_or(Path::new("")).display()
        )
    })
}

fn check_mountpoint(path: &Path) -> Result<()> {
    if let Err(e) = std::fs::metadata(path)
        && e.raw_os_error() == Some(libc::ENOTCONN)
    {
        detach_dead_mount(path)?;
    }
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "mountpoint {} does not exist; create it with mkdir",
            path.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", path.display());
    }
    Ok(())
}

/// A Reposure mount whose daemon died (killed, or crashed) leaves its mountpoint
/// answering ENOTCONN until it is unmounted: detach it, so mounting again just works.
/// Another filesystem's dead mount is left alone.
fn detach_dead_mount(path: &Path) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let wanted = as_mounted(path);
    let ours = mounts.lines().any(|line| {
        let mut fields = line.split(' ');
        let (_, dir, kind) = (fields.next(), fields.next(), fields.next());
        dir.is_some_and(|dir| Path::new(&unescape_mount_path(dir)) == wanted)
            && kind == Some("fuse.reposure")
    });
    if !ours {
        bail!(
            "{} is a dead mount of another filesystem; unmount it with fusermount3 -u",
            path.display()
        );
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(path)
        .status()
        .context("cannot run fusermount3 to detach the dead mount")?;
    if !status.success() {
        bail!(
            "{} is a dead Reposure mount and fusermount3 -uz failed; unmount it by hand",
            path.display()
        );
    }
    eprintln!(
        "reposure-mount: detached the dead mount on {} (its daemon had exited)",
        path.display()
    );
    Ok(())
}

/// A mountpoint as /proc/mounts names it: absolute, with its parent's `..` and symlinks
/// resolved (the mountpoint itself cannot be resolved while its mount is dead).
fn as_mounted(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map_or(absolute.clone(), |parent| parent.join(name)),
        _ => absolute,
    }
}

/// A path as /proc/mounts writes it: space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// The registry behind SOURCE.
fn open_registry(
    source: &Source,
    options: &MountOptions,
    runtime: &tokio::runtime::Runtime,
) -> Result<Arc<dyn Registry>> {
    let open = OpenOptions {
        http: options.http.clone(),
        kube: KubeOptions {
            kubeconfig: options.kubeconfig.clone(),
            context: options.context.clone(),
            namespace: None,
        },
        names: OptionNames::MOUNT,
    };
    if options.in_process_session {
        // The whole session protocol, served by a task of this process over a pipe in
        // memory: measures what a surrogate costs apart from the process boundary.
        let store = runtime.block_on(source.open_store(&open))?;
        let connector = InProcess::new(store);
        return Ok(Arc::new(SessionClient::new(Box::new(connector))));
    }
    Ok(runtime.block_on(source.open(&open))?)
}

/// Everything after the fork: connect, mount, serve until unmounted.
fn run(args: Args, reporter: &mut Reporter) -> Result<()> {
    let options = &args.options;
    // glibc gives each thread its own malloc arena and keeps what is freed there; with the
    // I/O threads below that alone can hold tens of MiB. Two arenas keep the daemon's
    // resident memory close to what it actually uses.
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("reposure-io")
        // Blocking work here is local file I/O (spools, caches): a few threads suffice.
        .max_blocking_threads(16)
        .build()
        .context("cannot start the I/O runtime")?;
    let registry = open_registry(&args.source, options, &runtime)?;
    let description = registry.describe();
    // A longer timeout= than the check's own is the user saying the registry is slow.
    let check_timeout = options
        .http
        .timeout
        .map_or(CHECK_TIMEOUT, |t| CHECK_TIMEOUT.max(t + CONNECT_ALLOWANCE));
    let checked = runtime
        .block_on(async { tokio::time::timeout(check_timeout, registry.check()).await })
        .map_err(|_| {
            anyhow::anyhow!(
                "{description} did not answer within {}s",
                check_timeout.as_secs()
            )
        })?;
    if let Err(e) = checked {
        let hint = OptionNames::MOUNT
            .hint(&e)
            .map(|hint| format!("; {hint}"))
            .unwrap_or_default();
        bail!("cannot use {description}: {e}{hint}");
    }

    let spool_dir = options.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
    let config = FsConfig {
        read_only: options.read_only,
        format: options.format,
        metadata_ttl: options.metadata_ttl,
        spool_dir,
        unpack: options.unpack,
        cache: options
            .cache_dir
            .clone()
            .map(|dir| (dir, options.cache_size)),
        known_repositories: options.repositories.clone(),
        platform: options.platform.clone(),
        ..Default::default()
    };
    let core = Arc::new(Filesystem::new(registry, config).context("cannot use cache_dir=")?);
    // SAFETY: getuid/getgid cannot fail and have no preconditions.
    let ownership = Ownership {
        uid: options.uid.unwrap_or_else(|| unsafe { libc::getuid() }),
        gid: options.gid.unwrap_or_else(|| unsafe { libc::getgid() }),
    };
    let settings = MountSettings {
        mountpoint: args.mountpoint.clone(),
        fs_name: description,
        read_only: options.read_only,
        allow_other: options.allow_other,
        ownership,
    };
    serve(core, &runtime, &settings, || reporter.ready())?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// Runs `reposure-mount` with these arguments (without the program name); never returns.
/// Call it before any thread is started: it forks to daemonize.
pub fn main(args: Vec<OsString>) -> ! {
    let args = match parse_args(args).and_then(|a| check_mountpoint(&a.mountpoint).map(|_| a)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("reposure-mount: {}", daemon::one_line(&e));
            std::process::exit(2);
        }
    };
    let mut reporter = if args.foreground {
        Reporter::foreground()
    } else {
        match daemon::daemonize() {
            Ok(reporter) => reporter,
            Err(e) => {
                eprintln!("reposure-mount: {}", daemon::one_line(&e));
                std::process::exit(1);
            }
        }
    };
    // One TLS crypto provider for every client in the process (rustls needs exactly one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(e) = init_logging(&args.options, args.foreground) {
        reporter.failed(&e);
        std::process::exit(1);
    }
    if let Err(e) = run(args, &mut reporter) {
        tracing::error!(error = %daemon::one_line(&e), "mount failed");
        reporter.failed(&e);
        std::process::exit(1);
    }
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped_as_proc_mounts_writes_them() {
        assert_eq!(unescape_mount_path("/mnt/a\\040b\\134c"), "/mnt/a b\\c");
        assert_eq!(unescape_mount_path("/mnt/plain"), "/mnt/plain");
        assert_eq!(unescape_mount_path("/mnt/end\\04"), "/mnt/end\\04");
    }
}
