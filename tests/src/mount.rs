//! A real `reposure-mount` process and its mountpoint.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::apiserver::ApiServer;
use crate::registry::Registry;
use crate::{binary, wait_until};

/// How the tests reach a registry, from `REPOSURE_TEST_VIA`: `direct` (the default),
/// `session` (an in-process surrogate session), `exec` (a `reposure-surrogate` child) or
/// `kubernetes` (a Registry by name, through the emulated API server's exec endpoint and
/// the surrogate's spool).
pub fn via() -> String {
    std::env::var("REPOSURE_TEST_VIA").unwrap_or_else(|_| "direct".into())
}

/// The `exec:` source that serves `url` through the surrogate binary.
pub fn exec_source(url: &str, extra: &[&str]) -> String {
    let mut command = format!(
        "exec:{} serve --stdio --registry {url}",
        binary("reposure-surrogate").display()
    );
    for arg in extra {
        command.push(' ');
        command.push_str(arg);
    }
    command
}

/// A mounted filesystem, unmounted on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
    log: PathBuf,
    /// The daemon's $TMPDIR, held until the mount is dropped.
    _scratch: tempfile::TempDir,
    mounted: bool,
    /// The emulated cluster a `kubernetes` mount goes through.
    cluster: Option<ApiServer>,
}

/// What `reposure-mount` said when it failed.
#[derive(Debug)]
pub struct MountFailure {
    pub code: Option<i32>,
    pub stderr: String,
}

impl Mount {
    /// Mounts `source` with `-o` options (a log file is added).
    pub fn new(source: &str, options: &[&str]) -> Self {
        Self::try_new(source, options, &[])
            .unwrap_or_else(|f| panic!("mount {source} failed: {f:?}"))
    }

    /// Mounts `registry` the way [`via`] says.
    pub fn of(registry: &Registry, options: &[&str]) -> Self {
        let mut options = options.to_vec();
        let source = match via().as_str() {
            "direct" => registry.url(),
            "session" => {
                options.push("transport=session");
                registry.url()
            }
            "exec" => exec_source(&registry.url(), &[]),
            "kubernetes" => {
                let mut cluster = ApiServer::start("default");
                cluster.add_ready_registry("default", "registry", &registry.url());
                let kubeconfig = format!("kubeconfig={}", cluster.kubeconfig().display());
                options.push(&kubeconfig);
                let mut mount = Self::new("registry", &options);
                mount.cluster = Some(cluster);
                return mount;
            }
            other => panic!("REPOSURE_TEST_VIA={other}: use direct, session, exec or kubernetes"),
        };
        Self::new(&source, &options)
    }

    /// Mounts, returning the failure instead of panicking.
    pub fn try_new(
        source: &str,
        options: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, MountFailure> {
        let dir = tempfile::Builder::new()
            .prefix("reposure-mnt-")
            .tempdir()
            .expect("mountpoint");
        let log = dir.path().with_extension("log");
        // The daemon's $TMPDIR (its default spool_dir=, where local files never renamed
        // are kept at unmount) is the mount's own, removed with it.
        let scratch = tempfile::Builder::new()
            .prefix("reposure-scratch-")
            .tempdir()
            .expect("scratch directory");
        let mut all_options: Vec<String> = options.iter().map(|s| s.to_string()).collect();
        all_options.push(format!("log={}", log.display()));
        let output = Command::new(binary("reposure-mount"))
            .arg(source)
            .arg(dir.path())
            .arg("-o")
            .arg(all_options.join(","))
            .env("REPOSURE_LOG", "debug")
            .env("TMPDIR", scratch.path())
            .envs(env.iter().copied())
            .output()
            .expect("run reposure-mount");
        if !output.status.success() {
            return Err(MountFailure {
                code: output.status.code(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(Self {
            dir,
            log,
            _scratch: scratch,
            mounted: true,
            cluster: None,
        })
    }

    /// A path inside the mount.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The mountpoint.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The mount daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts and waits until the mountpoint is gone from /proc/mounts.
    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        let dir = self.dir.path().to_path_buf();
        let ok = Command::new("fusermount3")
            .arg("-u")
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("fusermount3").arg("-uz").arg(&dir).status();
        }
        wait_until(Duration::from_secs(10), || !is_mounted(&dir));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Whether `dir` appears in /proc/mounts, and with which type.
pub fn mount_entry(dir: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let dir = dir.to_str()?;
    mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(dir))
        .map(str::to_owned)
}

/// Whether `dir` is a mountpoint now.
pub fn is_mounted(dir: &Path) -> bool {
    mount_entry(dir).is_some()
}
