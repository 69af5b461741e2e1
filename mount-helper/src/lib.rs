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
use reposure_fs::fuse::{FuseAdapter, Ownership};
use reposure_fs::{Filesystem, FsConfig};
use reposure_operator::cluster::{self, KubeExec, KubeOptions};
use reposure_surrogate::registry::Registry;
use reposure_surrogate::session::client::SessionClient;
use reposure_surrogate::source::Source;
use reposure_surrogate::store::http::HttpOptions;
use tracing::info;

use crate::daemon::Reporter;
use crate::options::MountOptions;

/// How often, and how far apart, a signal's unmount is tried before a lazy detach.
const UNMOUNT_ATTEMPTS: u32 = 20;
const UNMOUNT_RETRY: Duration = Duration::from_millis(100);

/// Names of a directory the kernel must drop, and who waits for that.
type Invalidation = (u64, Vec<String>, tokio::sync::oneshot::Sender<()>);

/// How long the mount waits for the registry to answer its first request before failing
/// (or `timeout=` and the time connecting may take, if longer).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_ALLOWANCE: Duration = Duration::from_secs(10);

/// How long an unmount waits for the pushes of files closed just before it (a push at the
/// last release is not waited for by anyone else): long enough for a large file on a
/// normal link, short of a service manager's usual stop timeout (90 s).
const FINISH_PUSHES: Duration = Duration::from_secs(60);

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
    source: String,
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
        source: text(source)?,
        mountpoint: mountpoint.into(),
        foreground,
        options: MountOptions::parse(option_lists.iter().map(String::as_str))?,
    })
}

/// Reads the registry credentials: never from argv.
fn http_options(options: &MountOptions) -> Result<HttpOptions> {
    let ca_pem = match &options.ca {
        Some(path) => Some(
            std::fs::read(path).with_context(|| format!("cannot read ca={}", path.display()))?,
        ),
        None => None,
    };
    let password = match &options.password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read password_file={}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        ),
        None => std::env::var("REPOSURE_PASSWORD").ok(),
    };
    let credentials = match (&options.username, password) {
        (Some(user), Some(password)) => Some((user.clone(), password)),
        (Some(_), None) => {
            bail!("username= needs a password: password_file=FILE or REPOSURE_PASSWORD")
        }
        (None, _) => None,
    };
    Ok(HttpOptions {
        ca_pem,
        credentials,
        read_timeout: options.timeout,
        ..Default::default()
    })
}

fn init_logging(options: &MountOptions, foreground: bool) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REPOSURE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match &options.log {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log={}", path.display()))?;
            builder.with_ansi(false).with_writer(Arc::new(file)).init();
        }
        None if foreground => builder.with_writer(std::io::stderr).init(),
        None => builder.with_writer(std::io::sink).init(),
    }
    Ok(())
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

/// The registry behind SOURCE: a Kubernetes Registry by name, or a direct source.
fn open_registry(
    source: &str,
    options: &MountOptions,
    http: HttpOptions,
    runtime: &tokio::runtime::Runtime,
) -> Result<Arc<dyn Registry>> {
    let parse_error = match source.parse::<Source>() {
        Ok(source) => return Ok(source.open(http)?),
        Err(e) => e,
    };
    let Some((namespace, name)) = cluster::parse_target(source) else {
        bail!("{parse_error}, or [NAMESPACE/]NAME for a Registry of the Kubernetes cluster");
    };
    if http.ca_pem.is_some() || http.credentials.is_some() {
        bail!(
            "ca=, username= and passwords do not apply to a Kubernetes Registry: its surrogate holds the registry's CA and credentials"
        );
    }
    if http.read_timeout.is_some() {
        bail!(
            "timeout= does not apply to a Kubernetes Registry: its surrogate reaches the registry, with a timeout of its own (30 s)"
        );
    }
    let kube = KubeOptions {
        kubeconfig: options.kubeconfig.clone(),
        context: options.context.clone(),
        namespace,
    };
    let (client, namespace) = runtime.block_on(cluster::client(&kube))?;
    let connector = KubeExec::new(client, namespace, name);
    Ok(Arc::new(SessionClient::new(Box::new(connector))))
}

/// Everything after the fork: connect, mount, serve until unmounted.
fn run(args: Args, reporter: &mut Reporter) -> Result<()> {
    let options = &args.options;
    let http = http_options(options)?;
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
    let mut registry = open_registry(&args.source, options, http, &runtime)?;
    if options.in_process_session {
        // The whole session protocol, served by a task of this process over a pipe in
        // memory: measures what a surrogate costs apart from the process boundary.
        let connector = reposure_surrogate::session::transport::InProcess::new(registry);
        registry = Arc::new(reposure_surrogate::session::client::SessionClient::new(
            Box::new(connector),
        ));
    }
    let description = registry.describe();
    // A longer timeout= than the check's own is the user saying the registry is slow.
    let check_timeout = options
        .timeout
        .map_or(CHECK_TIMEOUT, |t| CHECK_TIMEOUT.max(t + CONNECT_ALLOWANCE));
    runtime
        .block_on(async { tokio::time::timeout(check_timeout, registry.check()).await })
        .map_err(|_| {
            anyhow::anyhow!(
                "{description} did not answer within {}s",
                check_timeout.as_secs()
            )
        })?
        .with_context(|| format!("cannot use {description}"))?;

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
        ..Default::default()
    };
    let core = Arc::new(Filesystem::new(registry, config).context("cannot use cache_dir=")?);
    // SAFETY: getuid/getgid cannot fail and have no preconditions.
    let ownership = Ownership {
        uid: options.uid.unwrap_or_else(|| unsafe { libc::getuid() }),
        gid: options.gid.unwrap_or_else(|| unsafe { libc::getgid() }),
    };
    let adapter = FuseAdapter::new(core.clone(), runtime.handle().clone(), ownership);

    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = vec![
        fuser::MountOption::FSName(description.clone()),
        fuser::MountOption::CUSTOM("subtype=reposure".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        // The kernel checks permission bits against uid=/gid=, so `access` never reaches us.
        fuser::MountOption::DefaultPermissions,
    ];
    if options.read_only {
        fuse_config.mount_options.push(fuser::MountOption::RO);
    }
    if options.allow_other {
        fuse_config.acl = fuser::SessionACL::All;
    }
    let mut session = fuser::Session::new(adapter, &args.mountpoint, &fuse_config)
        .with_context(|| format!("cannot mount on {}", args.mountpoint.display()))?;

    // The kernel handles an invalidation under the directory's lock, which a request it
    // is waiting on may hold: sent from the thread that would answer that request, it would
    // wait forever. Invalidations therefore go out from a thread of their own.
    let notifier = session.notifier();
    let (invalidations, queued) = std::sync::mpsc::channel::<Invalidation>();
    std::thread::Builder::new()
        .name("reposure-inval".into())
        .spawn(move || {
            for (parent, names, done) in queued {
                for name in names {
                    // An entry the kernel never cached is "not found": nothing to do.
                    let _ =
                        notifier.inval_entry(fuser::INodeNo(parent), std::ffi::OsStr::new(&name));
                }
                let _ = done.send(());
            }
        })
        .context("cannot start the invalidation thread")?;
    core.set_invalidator(Box::new(move |parent, names| {
        let (done, dropped) = tokio::sync::oneshot::channel();
        let _ = invalidations.send((parent, names, done));
        dropped
    }));
    let mut unmounter = session.unmount_callable();
    let mountpoint = args.mountpoint.clone();
    runtime.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
        // The kernel can refuse for a moment while it finishes requests of files just
        // closed (EBUSY); then ask again, and in the end detach the mount lazily, so that a
        // signal always ends the mount rather than leaving it up with nobody listening.
        for attempt in 1..=UNMOUNT_ATTEMPTS {
            match unmounter.unmount() {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, attempt, "unmount refused"),
            }
            tokio::time::sleep(UNMOUNT_RETRY).await;
        }
        let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) else {
            return;
        };
        // SAFETY: umount2(2) with a NUL-terminated path we own.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
            tracing::error!(error = %std::io::Error::last_os_error(), "lazy unmount failed");
        }
    });

    info!(source = %description, mountpoint = %args.mountpoint.display(), "mounted");
    reporter.ready();
    session.run().context("the FUSE session failed")?;
    info!("unmounted");
    if !runtime.block_on(core.finish_writes(FINISH_PUSHES)) {
        tracing::error!(
            wait_s = FINISH_PUSHES.as_secs(),
            "files closed just before the unmount were still being pushed; they may not be in the registry"
        );
    }
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
