//! A mounted filesystem: the kernel session around a [`Filesystem`], for as long as it is
//! mounted.
//!
//! [`serve`] mounts, tells the core how to reach the kernel's caches, unmounts on SIGINT
//! and SIGTERM, and once the kernel has let go waits for the pushes of files closed just
//! before: everything the contract needs from the session, apart from the adapter's
//! callbacks ([`crate::fuse`]).
//!
//! The kernel handles an invalidation under the directory's lock, which a request it is
//! waiting on may hold: sent from the thread that would answer that request, it would wait
//! forever. Invalidations therefore go out from a thread of their own (`reposure-inval`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::filesystem::Filesystem;
use crate::fuse::{FuseAdapter, Ownership};

/// How often, and how far apart, a signal's unmount is tried before a lazy detach: the
/// kernel can refuse for a moment (EBUSY) while it finishes requests of files just closed.
const UNMOUNT_ATTEMPTS: u32 = 20;
const UNMOUNT_RETRY: Duration = Duration::from_millis(100);

/// How long an unmount waits for the pushes of files closed just before it (a push at the
/// last release is not waited for by anyone else): long enough for a large file on a
/// normal link, short of a service manager's usual stop timeout (90 s).
pub const FINISH_PUSHES: Duration = Duration::from_secs(60);

/// Names of a directory the kernel must drop, and who waits for that.
type Invalidation = (u64, Vec<String>, tokio::sync::oneshot::Sender<()>);

/// How the mount looks to the kernel and to other users.
#[derive(Debug, Clone)]
pub struct MountSettings {
    pub mountpoint: PathBuf,
    /// What `/proc/mounts` shows as the source (the registry, no credentials).
    pub fs_name: String,
    pub read_only: bool,
    /// Other users may use the mount (needs `user_allow_other` for non-root).
    pub allow_other: bool,
    /// The owner every node shows.
    pub ownership: Ownership,
}

/// Why a mount could not be made or served.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount on {}: {source}", mountpoint.display())]
    Mount {
        mountpoint: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the invalidation thread: {0}")]
    Thread(std::io::Error),
    #[error("the FUSE session failed: {0}")]
    Session(std::io::Error),
}

/// Mounts `core`, calls `ready` once the kernel serves the mount, and serves it until it is
/// unmounted (by `fusermount3 -u`, `umount`, or a signal). Then waits up to
/// [`FINISH_PUSHES`] for the last pushes; returns whether they all finished.
pub fn serve(
    core: Arc<Filesystem>,
    runtime: &tokio::runtime::Runtime,
    settings: &MountSettings,
    ready: impl FnOnce(),
) -> Result<bool, MountError> {
    let adapter = FuseAdapter::new(core.clone(), runtime.handle().clone(), settings.ownership);
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = vec![
        fuser::MountOption::FSName(settings.fs_name.clone()),
        fuser::MountOption::CUSTOM("subtype=reposure".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        // The kernel checks permission bits against uid=/gid=, so `access` never reaches us.
        fuser::MountOption::DefaultPermissions,
    ];
    if settings.read_only {
        fuse_config.mount_options.push(fuser::MountOption::RO);
    }
    if settings.allow_other {
        fuse_config.acl = fuser::SessionACL::All;
    }
    let mut session =
        fuser::Session::new(adapter, &settings.mountpoint, &fuse_config).map_err(|source| {
            MountError::Mount {
                mountpoint: settings.mountpoint.clone(),
                source,
            }
        })?;
    start_invalidations(&core, session.notifier())?;
    let mut unmounter = session.unmount_callable();
    let mountpoint = settings.mountpoint.clone();
    runtime.spawn(async move {
        wait_for_stop_signal().await;
        info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
        for attempt in 1..=UNMOUNT_ATTEMPTS {
            match unmounter.unmount() {
                Ok(()) => return,
                Err(e) => warn!(error = %e, attempt, "unmount refused"),
            }
            tokio::time::sleep(UNMOUNT_RETRY).await;
        }
        // A signal always ends the mount, rather than leaving it up with nobody listening.
        detach(&mountpoint);
    });

    info!(source = %settings.fs_name, mountpoint = %settings.mountpoint.display(), "mounted");
    ready();
    session.run().map_err(MountError::Session)?;
    info!("unmounted");
    let finished = runtime.block_on(core.finish_writes(FINISH_PUSHES));
    if !finished {
        error!(
            wait_s = FINISH_PUSHES.as_secs(),
            "files closed just before the unmount were still being pushed; they may not be in the registry"
        );
    }
    Ok(finished)
}

/// Sends the core's invalidations to the kernel from a thread of their own.
fn start_invalidations(core: &Filesystem, notifier: fuser::Notifier) -> Result<(), MountError> {
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
        .map_err(MountError::Thread)?;
    core.set_invalidator(Box::new(move |parent, names| {
        let (done, dropped) = tokio::sync::oneshot::channel();
        let _ = invalidations.send((parent, names, done));
        dropped
    }));
    Ok(())
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handling the mount still ends by fusermount3 -u.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Detaches the mount lazily (`umount2(MNT_DETACH)`).
fn detach(mountpoint: &Path) {
    let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: umount2(2) with a NUL-terminated path we own.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
        error!(error = %std::io::Error::last_os_error(), "lazy unmount failed");
    }
}
