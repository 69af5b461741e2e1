//! Faults, bad input, load and security: under each, nothing accepted is lost, no partial
//! image becomes visible, every failure says why, and nobody is let in.
//!
//! Faults are injected by the fault proxy between the mount (or the surrogate) and the real
//! registry, and by killing processes; every case records a row of RELIABILITY.md
//! (`reposure_tests::reliability`) once its assertions hold. Timeouts are short
//! (`timeout=`) so that "no operation hangs past its configured timeout" is measured.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reposure_tests::archives::{
    gzip, gzip_bomb, image_config, image_manifest, layout_archive, tar_of,
};
use reposure_tests::cli::{failed, ok, reposure, reposure_with};
use reposure_tests::contract;
use reposure_tests::mount::{Mount, exec_source};
use reposure_tests::posix::{close, errno_of, write_and_close};
use reposure_tests::process::{
    Process, all_command_lines, kill_9, peak_rss_kib, pids_of, start_spooler,
};
use reposure_tests::proxy::{Class, Fault, FaultProxy};
use reposure_tests::registry::{Registry, RegistryConfig};
use reposure_tests::reliability::{Category, Row, Tally};
use reposure_tests::tools::{registry_catalog, registry_tags, tag_digest};
use reposure_tests::{binary, random_bytes, sha256_hex, wait_until};

const MIB: usize = 1024 * 1024;

/// The mounts' `timeout=`: how long the registry may stay silent.
const TIMEOUT_SECS: u64 = 2;

/// The longest any failing operation may take: the timeout for the request in flight, and
/// as long again for one retry of a connection, with room for a loaded machine.
const BOUND: Duration = Duration::from_secs(4 * TIMEOUT_SECS + 8);

fn timeout_option() -> String {
    format!("timeout={TIMEOUT_SECS}")
}

/// Runs `operation`, asserting it ends within [`BOUND`]; returns its result.
fn bounded<T>(what: &str, operation: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = operation();
    assert!(
        started.elapsed() < BOUND,
        "{what} took {:?}, past {BOUND:?}",
        started.elapsed()
    );
    result
}

/// A mount of `registry` whose spool is a directory of its own, to look into.
fn mount_with_spool(registry: &Registry) -> (tempfile::TempDir, Mount) {
    let spool = tempfile::tempdir().unwrap();
    let option = format!("spool_dir={}", spool.path().display());
    let mount = Mount::new(&registry.url(), &[&option]);
    (spool, mount)
}

/// The content `repository:latest` holds, read through a fresh mount of the registry.
fn content_in_registry(tally: &Tally, registry: &Registry, repository: &str) -> Vec<u8> {
    let mount = Mount::new(&registry.url(), &[]);
    tally
        .operation(|| fs::read(mount.path(repository)))
        .unwrap()
}

/// A connection cut in the middle of a blob upload fails close() with EIO in bounded time;
/// the tag keeps its old image; the same push works once the link does.
#[test]
fn upload_cut_mid_transfer_keeps_the_old_tag() {
    let registry = Registry::start();
    let proxy = FaultProxy::start(registry.port);
    let mount = Mount::new(&proxy.url(), &[&timeout_option()]);
    let tally = Tally::default();
    let old = random_bytes(100_000);
    tally
        .operation(|| fs::write(mount.path("cut"), &old))
        .unwrap();
    let before = tag_digest(&registry.url(), "cut", "latest").unwrap();

    let new = random_bytes(8 * MIB);
    let cut = proxy.inject(Class::UploadPatch, Fault::CutRequest(MIB as u64));
    let closed = bounded("the cut push", || {
        tally.operation(|| write_and_close(&mount.path("cut"), &new))
    });
    assert_eq!(closed, Err(libc::EIO));
    assert!(mount.log().contains("push failed"), "{}", mount.log());
    assert_eq!(tag_digest(&registry.url(), "cut", "latest"), Some(before));
    assert_eq!(content_in_registry(&tally, &registry, "cut"), old);

    cut.clear();
    tally
        .operation(|| write_and_close(&mount.path("cut"), &new))
        .unwrap();
    assert_eq!(
        sha256_hex(&content_in_registry(&tally, &registry, "cut")),
        sha256_hex(&new)
    );
    tally.add_faults(proxy.faults_injected());
    Row::new(
        "fault.upload-cut",
        Category::Fault,
        "connection cut after 1 MiB of an 8 MiB blob upload (overwriting an image)",
        "close() EIO within the bound, log says the push failed, the tag still points at the old image; the push works after",
        "upload_cut_mid_transfer_keeps_the_old_tag",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["push.failure"]);
}

/// A download cut mid-transfer never returns wrong bytes: a read either fails with EIO, or
/// delivers exactly the content (recovering through Range requests).
#[test]
fn download_cut_mid_transfer_never_returns_wrong_bytes() {
    let registry = Registry::start();
    let content = random_bytes(8 * MIB);
    {
        let writer = Mount::new(&registry.url(), &[]);
        fs::write(writer.path("big"), &content).unwrap();
    }
    let proxy = FaultProxy::start(registry.port);
    let tally = Tally::default();
    // Downloads cut after 2 MiB, or after 100 KiB: the whole-file stream fails, and the
    // reads that follow resume with Range requests, which the registry answers again (and
    // which small windows get through). A registry that fails every download gives EIO.
    let faults = [
        (Fault::CutResponse(2 * MIB as u64), false),
        (Fault::CutResponse(100 * 1024), false),
        (Fault::Status(500), true),
    ];
    for (fault, must_fail) in faults {
        let mount = Mount::new(&proxy.url(), &[&timeout_option()]);
        let armed = proxy.inject(Class::BlobGet, fault);
        let mut read = Vec::new();
        // Opening a name resolves it, which reads the layer's first bytes: with every
        // download failing, the open is what fails.
        let result = bounded("the failing read", || {
            tally.operation(|| fs::File::open(mount.path("big"))?.read_to_end(&mut read))
        });
        assert_eq!(
            &content[..read.len()],
            &read[..],
            "a wrong byte was returned"
        );
        match result {
            Ok(_) => {
                assert!(
                    !must_fail,
                    "{fault:?}: every download failed, yet the read ended well"
                );
                assert_eq!(read.len(), content.len());
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO)),
        }
        armed.clear();
        let fresh = Mount::new(&proxy.url(), &[]);
        assert_eq!(
            sha256_hex(&tally.operation(|| fs::read(fresh.path("big"))).unwrap()),
            sha256_hex(&content)
        );
    }
    tally.add_faults(proxy.faults_injected());
    Row::new(
        "fault.download-cut",
        Category::Fault,
        "every blob download of an 8 MiB file cut after 2 MiB, then after 100 KiB; then every one answered 500",
        "no wrong byte returned: cut reads recover through Range requests or fail with EIO, and with every download failing the read is EIO; a new open reads the whole file",
        "download_cut_mid_transfer_never_returns_wrong_bytes",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["read.verified"]);
}

/// A 5xx on each step of a push (the streamed PATCH, the blob PUT that commits it, a small
/// file's one-request PUT, the manifest PUT) fails close() with EIO and a log line naming
/// the status, and leaves the tag where it was.
#[test]
fn server_errors_on_each_upload_step_keep_the_old_tag() {
    let registry = Registry::start();
    let proxy = FaultProxy::start(registry.port);
    let mount = Mount::new(&proxy.url(), &[&timeout_option()]);
    let tally = Tally::default();
    let old = random_bytes(1000);
    tally
        .operation(|| fs::write(mount.path("steps"), &old))
        .unwrap();
    let before = tag_digest(&registry.url(), "steps", "latest").unwrap();
    let cases = [
        (Class::UploadPatch, 500, 8 * MIB),
        (Class::UploadPut, 503, 8 * MIB),
        (Class::UploadPut, 502, 4096),
        (Class::ManifestPut, 500, 4096),
    ];
    for (class, status, size) in cases {
        let failing = proxy.inject(class, Fault::Status(status));
        let closed = bounded("the failing push", || {
            tally.operation(|| write_and_close(&mount.path("steps"), &random_bytes(size)))
        });
        failing.clear();
        assert_eq!(closed, Err(libc::EIO), "{class:?} {status}");
        assert!(
            mount.log().contains(&format!("status {status} injected")),
            "the log does not name the {status}: {}",
            mount.log()
        );
        assert_eq!(
            tag_digest(&registry.url(), "steps", "latest").as_ref(),
            Some(&before),
            "{class:?} {status} moved the tag"
        );
    }
    assert_eq!(content_in_registry(&tally, &registry, "steps"), old);
    tally.add_faults(proxy.faults_injected());
    Row::new(
        "fault.upload-5xx",
        Category::Fault,
        "HTTP 500 on the PATCH of an 8 MiB upload, 503 on its committing PUT, 502 on a small file's PUT, 500 on the manifest PUT",
        "each close() EIO within the bound, the log names the status, the tag keeps its old image",
        "server_errors_on_each_upload_step_keep_the_old_tag",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["push.failure"]);
}

/// A filesystem operation to run against a failing registry.
type Operation<'a> = Box<dyn Fn() -> std::io::Result<()> + 'a>;

/// A registry that accepts connections and answers nothing makes every operation fail with
/// EIO within the mount's `timeout=`, not hang; an upload whose registry stops reading
/// fails the same way; all works again once it answers.
#[test]
fn stalled_registry_fails_operations_within_the_timeout() {
    let registry = Registry::start();
    let proxy = FaultProxy::start(registry.port);
    let mount = Mount::new(&proxy.url(), &[&timeout_option(), "metadata_ttl=0"]);
    let tally = Tally::default();
    tally
        .operation(|| fs::write(mount.path("present"), b"here"))
        .unwrap();

    let stall = proxy.inject_all(Fault::Stall);
    let operations: [(&str, Operation); 4] = [
        (
            "stat",
            Box::new(|| fs::metadata(mount.path("present")).map(drop)),
        ),
        (
            "cat",
            Box::new(|| fs::read(mount.path("present")).map(drop)),
        ),
        (
            "ls",
            Box::new(|| {
                fs::read_dir(mount.root()).map(|d| {
                    d.count();
                })
            }),
        ),
        ("cp", Box::new(|| fs::write(mount.path("new"), b"x"))),
    ];
    for (what, operation) in &operations {
        let result = bounded(what, || tally.operation(operation));
        assert_eq!(errno_of(result), libc::EIO, "{what}");
    }
    stall.clear();

    // Only uploads stall: the registry stops taking the body of a push.
    let uploads = proxy.inject(Class::UploadPatch, Fault::Stall);
    let closed = bounded("the stalled upload", || {
        tally.operation(|| write_and_close(&mount.path("stuck"), &random_bytes(8 * MIB)))
    });
    uploads.clear();
    assert_eq!(closed, Err(libc::EIO));
    assert!(mount.log().contains("no progress"), "{}", mount.log());
    assert!(registry_tags(&registry.url(), "stuck").is_empty());

    assert_eq!(
        tally.operation(|| fs::read(mount.path("present"))).unwrap(),
        b"here"
    );
    tally
        .operation(|| fs::write(mount.path("after"), b"works"))
        .unwrap();
    tally.add_faults(proxy.faults_injected());
    Row::new(
        "fault.stalled-registry",
        Category::Fault,
        "a registry that accepts connections and never answers (every request held), then one that stops reading an upload; timeout=2",
        "stat, cat, ls and cp fail with EIO within the bound; the stalled upload fails close() saying it made no progress; no tag; all works after",
        "stalled_registry_fails_operations_within_the_timeout",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["errors.unavailable"]);
}

/// A slow link is not a stalled one: an upload and a download that take longer than the
/// timeout complete, because the timeout bounds silence, not duration.
#[test]
fn slow_link_completes_past_the_timeout() {
    let registry = Registry::start();
    let proxy = FaultProxy::start(registry.port);
    let tally = Tally::default();
    tally.fault(|| proxy.throttle(Some(2 * MIB as u64)));
    let mount = Mount::new(&proxy.url(), &[&timeout_option()]);
    let content = random_bytes(8 * MIB);
    let started = Instant::now();
    tally
        .operation(|| write_and_close(&mount.path("slow"), &content))
        .unwrap_or_else(|errno| panic!("the slow push failed with errno {errno}: {}", mount.log()));
    let took = started.elapsed();
    assert!(
        took > Duration::from_secs(TIMEOUT_SECS),
        "the push did not outlast the timeout: {took:?}"
    );
    let fresh = Mount::new(&proxy.url(), &[&timeout_option()]);
    let read = tally
        .operation(|| fs::read(fresh.path("slow")))
        .unwrap_or_else(|e| panic!("{e}: {}", fresh.log()));
    assert_eq!(sha256_hex(&read), sha256_hex(&content));
    Row::new(
        "fault.slow-link",
        Category::Fault,
        "every connection limited to 2 MiB/s each way; 8 MiB pushed and read back with timeout=2",
        &format!(
            "the push took {:.1} s (past the timeout) and completed; the read returned the same digest",
            took.as_secs_f32()
        ),
        "slow_link_completes_past_the_timeout",
    )
    .tally(&tally)
    .record();
}

/// The registry restarted while a read and a push are in flight: both fail with EIO (the
/// push tags nothing), and the same mount works once it is back.
#[test]
fn registry_restarted_mid_read_and_mid_push() {
    let mut registry = Registry::start();
    let content = random_bytes(8 * MIB);
    {
        let writer = Mount::new(&registry.url(), &[]);
        fs::write(writer.path("kept"), &content).unwrap();
    }
    let proxy = FaultProxy::start(registry.port);
    let mount = Mount::new(&proxy.url(), &[&timeout_option()]);
    let tally = Tally::default();
    for class in [Class::BlobGet, Class::UploadPatch] {
        // The request is held at the proxy, so the restart certainly comes mid-operation.
        let held = proxy.inject(class, Fault::Stall);
        let path = mount.path(if class == Class::BlobGet {
            "kept"
        } else {
            "pushed"
        });
        let payload = random_bytes(4 * MIB);
        let result = std::thread::scope(|scope| {
            let operation = scope.spawn(|| {
                tally.operation(|| {
                    if class == Class::BlobGet {
                        fs::read(&path).map(drop).map_err(|e| e.raw_os_error())
                    } else {
                        write_and_close(&path, &payload).map_err(Some)
                    }
                })
            });
            assert!(wait_until(Duration::from_secs(20), || proxy.seen(class) > 0));
            tally.fault(|| registry.stop());
            held.clear();
            bounded("the interrupted operation", || operation.join().unwrap())
        });
        assert_eq!(result, Err(Some(libc::EIO)), "{class:?}");
        registry.resume();
    }
    assert!(registry_tags(&registry.url(), "pushed").is_empty());
    assert_eq!(
        sha256_hex(&tally.operation(|| fs::read(mount.path("kept"))).unwrap()),
        sha256_hex(&content)
    );
    tally
        .operation(|| fs::write(mount.path("pushed"), b"after the restart"))
        .unwrap();
    assert_eq!(
        tally.operation(|| fs::read(mount.path("pushed"))).unwrap(),
        b"after the restart"
    );
    tally.add_faults(proxy.faults_injected());
    Row::new(
        "fault.registry-restart",
        Category::Fault,
        "the registry stopped while a read and (separately) a push were in flight, then started again",
        "both fail with EIO within the bound, the push tags nothing; the same mount reads and pushes again afterwards",
        "registry_restarted_mid_read_and_mid_push",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["errors.unavailable"]);
}

/// `kill -9` of the mount daemon while a file is being written: the writer gets an error,
/// nothing is tagged, nothing is left in the spool, and mounting again on the same
/// mountpoint works (the dead mount is detached) and shows what was pushed before.
#[test]
fn mount_daemon_killed_mid_write() {
    let registry = Registry::start();
    let (spool, mount) = mount_with_spool(&registry);
    let tally = Tally::default();
    tally
        .operation(|| fs::write(mount.path("earlier"), b"pushed before"))
        .unwrap();
    let mut file = tally
        .operation(|| fs::File::create(mount.path("interrupted")))
        .unwrap();
    tally
        .operation(|| file.write_all(&random_bytes(4 * MIB)))
        .unwrap();
    let root = mount.root().to_str().unwrap().to_owned();
    let pids = pids_of("reposure-mount", &[&root]);
    assert_eq!(pids.len(), 1, "one daemon for {root}");
    tally.fault(|| kill_9(pids[0]));
    let closed = tally.operation(|| close(file));
    assert!(closed.is_err(), "close() succeeded on a killed mount");
    assert_eq!(
        errno_of(tally.operation(|| fs::metadata(mount.root()))),
        libc::ENOTCONN,
        "the mountpoint should be dead"
    );
    assert!(registry_tags(&registry.url(), "interrupted").is_empty());
    assert_eq!(
        fs::read_dir(spool.path()).unwrap().count(),
        0,
        "the spool kept a file"
    );

    let log = mount.root().with_extension("remount.log");
    // Named as a user would from its parent directory, with a trailing slash.
    let parent = mount.root().parent().unwrap();
    let relative = format!("{}/", mount.root().file_name().unwrap().to_str().unwrap());
    let remounted = tally
        .operation(|| {
            Command::new(binary("reposure-mount"))
                .current_dir(parent)
                .arg(registry.url())
                .arg(&relative)
                .arg("-o")
                .arg(format!("log={}", log.display()))
                .output()
        })
        .unwrap();
    let stderr = String::from_utf8_lossy(&remounted.stderr);
    assert!(remounted.status.success(), "{stderr}");
    assert!(stderr.contains("detached the dead mount"), "{stderr}");
    assert_eq!(
        tally.operation(|| fs::read(mount.path("earlier"))).unwrap(),
        b"pushed before"
    );
    assert!(
        tally
            .operation(|| fs::metadata(mount.path("interrupted")))
            .is_err()
    );
    tally
        .operation(|| fs::write(mount.path("after"), b"works"))
        .unwrap();
    let _ = fs::remove_file(log);
    Row::new(
        "fault.mount-killed",
        Category::Fault,
        "kill -9 of the mount daemon with a 4 MiB file open for writing",
        "close() fails, no tag, the spool directory is empty; reposure-mount on the same mountpoint (named relative to the working directory) detaches the dead mount and works",
        "mount_daemon_killed_mid_write",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["source.dead-mount", "push.bounded-memory"]);
}

/// A tmpfs of a few MiB, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs (the tests run as root)");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn used(&self) -> u64 {
        let output = Command::new("df")
            .args(["--output=used", "-B1"])
            .arg(self.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A full spool disk: the write that does not fit fails with ENOSPC, nothing is tagged, the
/// space comes back when the file is closed, and smaller files still go through.
#[test]
fn full_spool_disk_is_enospc() {
    let registry = Registry::start();
    let tally = Tally::default();
    let disk = tally.fault(|| SmallDisk::new("4m"));
    let spool_option = format!("spool_dir={}", disk.path().display());
    let mount = Mount::new(&registry.url(), &[&spool_option]);
    let written =
        tally.operation(|| write_and_close(&mount.path("too-big"), &random_bytes(8 * MIB)));
    assert_eq!(written, Err(libc::ENOSPC));
    assert!(mount.log().contains("spool_dir="), "{}", mount.log());
    assert!(registry_tags(&registry.url(), "too-big").is_empty());
    assert!(
        wait_until(Duration::from_secs(5), || disk.used() == 0),
        "the spool still holds {} bytes",
        disk.used()
    );
    let small = random_bytes(100_000);
    tally
        .operation(|| fs::write(mount.path("fits"), &small))
        .unwrap();
    assert_eq!(
        tally.operation(|| fs::read(mount.path("fits"))).unwrap(),
        small
    );

    // Once the spool has failed a write, the file stays failed: more writes and close()
    // fail, and nothing is pushed.
    let mut file = tally
        .operation(|| fs::File::create(mount.path("poisoned")))
        .unwrap();
    assert_eq!(
        errno_of(tally.operation(|| file.write_all(&random_bytes(8 * MIB)))),
        libc::ENOSPC
    );
    assert_eq!(
        errno_of(tally.operation(|| file.write_all(b"more"))),
        libc::ENOSPC
    );
    // With the disk still full, a file whose very first write fails fails its close too.
    let mut nothing_written = tally
        .operation(|| fs::File::create(mount.path("never")))
        .unwrap();
    assert_eq!(
        errno_of(tally.operation(|| nothing_written.write_all(b"x"))),
        libc::ENOSPC
    );
    assert_eq!(
        tally.operation(|| close(nothing_written)),
        Err(libc::ENOSPC)
    );
    assert_eq!(tally.operation(|| close(file)), Err(libc::ENOSPC));
    assert!(registry_tags(&registry.url(), "poisoned").is_empty());
    assert!(registry_tags(&registry.url(), "never").is_empty());
    // ... unless it is truncated to nothing and written again.
    let mut file = tally
        .operation(|| fs::File::create(mount.path("rewritten")))
        .unwrap();
    assert_eq!(
        errno_of(tally.operation(|| file.write_all(&random_bytes(8 * MIB)))),
        libc::ENOSPC
    );
    tally.operation(|| file.set_len(0)).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    tally.operation(|| file.write_all(&small)).unwrap();
    assert_eq!(tally.operation(|| close(file)), Ok(()));
    assert_eq!(
        tally
            .operation(|| fs::read(mount.path("rewritten")))
            .unwrap(),
        small
    );
    Row::new(
        "fault.spool-full",
        Category::Fault,
        "the mount's spool_dir on a 4 MiB tmpfs; 8 MiB files written",
        "write() fails with ENOSPC and the log names spool_dir=; later writes and close() of that file fail too, also when its first write failed; no tag; the space is freed; a 100 KB file then works, and so does a failed file truncated to 0 and written again",
        "full_spool_disk_is_enospc",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["push.spool-full"]);
}

/// A surrogate whose `--spool` disk is full refuses the push with the reason, tags nothing
/// and keeps nothing half-written; smaller pushes still go through.
#[test]
fn full_surrogate_spool_refuses_the_push() {
    let registry = Registry::start();
    let tally = Tally::default();
    let disk = tally.fault(|| SmallDisk::new("4m"));
    let spooler = Process(
        Command::new(binary("reposure-surrogate"))
            .args(["--registry", &registry.url(), "spooler", "--directory"])
            .arg(disk.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(10), || {
        reposure_surrogate::spool::spooler_running(disk.path())
    }));
    let spool_arg = format!("--spool {}", disk.path().display());
    let mount = Mount::new(&exec_source(&registry.url(), &[&spool_arg]), &[]);
    assert_eq!(
        tally.operation(|| write_and_close(&mount.path("too-big"), &random_bytes(8 * MIB))),
        Err(libc::EIO)
    );
    assert!(
        mount.log().contains("No space left"),
        "the log does not say the spool is full: {}",
        mount.log()
    );
    assert!(registry_tags(&registry.url(), "too-big").is_empty());
    let left: Vec<_> = fs::read_dir(disk.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".spooler.lock")
        .collect();
    assert!(left.is_empty(), "the spool kept {left:?}");
    tally
        .operation(|| fs::write(mount.path("fits"), b"small"))
        .unwrap();
    assert_eq!(
        tally.operation(|| fs::read(mount.path("fits"))).unwrap(),
        b"small"
    );
    drop(spooler);
    Row::new(
        "fault.surrogate-spool-full",
        Category::Fault,
        "a surrogate's --spool on a 4 MiB tmpfs; an 8 MiB file pushed through the session",
        "close() EIO with \"No space left\" in the log; no tag; nothing left in the spool; a small push then works",
        "full_surrogate_spool_refuses_the_push",
    )
    .tally(&tally)
    .record();
}

/// Writes `bytes` to a file in `dir` for the CLI to push.
fn input_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

/// A single-file image as an OCI-layout archive: `entry` in one uncompressed tar layer.
fn single_file_archive(entry: &str, content: &[u8], padding: usize) -> Vec<u8> {
    let layer = tar_of(&[(entry, content)]);
    let config = image_config(&[&layer]);
    let manifest = image_manifest(&config, &[&layer], padding);
    layout_archive(&manifest, &[&config, &layer])
}

/// Damaged archives (truncated, corrupt gzip, naming blobs they lack, a gzip bomb) fail
/// close() with EIO and `image push` with exit 1, each saying why, and tag nothing; the
/// bomb is stopped at its expansion limit and the spool is left empty.
#[test]
fn damaged_archives_are_refused_by_cp_and_image_push() {
    let registry = Registry::start();
    let (spool, mount) = mount_with_spool(&registry);
    let tally = Tally::default();
    let work = tempfile::tempdir().unwrap();
    let good = single_file_archive("a", &random_bytes(200_000), 0);
    tally
        .operation(|| write_and_close(&mount.path("good"), &good))
        .unwrap();
    assert_eq!(registry_tags(&registry.url(), "good"), ["latest"]);

    let mut corrupt = gzip(&good);
    let middle = corrupt.len() / 2;
    corrupt[middle..middle + 64].fill(0x55);
    let layer = tar_of(&[("a", b"content".as_slice())]);
    let config = image_config(&[&layer]);
    let missing = layout_archive(&image_manifest(&config, &[&layer], 0), &[&config]);
    // 768 MiB of zeros in under a MiB: far past the 64x expansion limit.
    let bomb = gzip_bomb(768);
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "truncated",
            &good[..good.len() * 2 / 3],
            "archive is truncated",
        ),
        ("corrupt-gzip", &corrupt, "gzip archive is corrupt"),
        ("missing-blobs", &missing, "does not contain"),
        ("bomb", &bomb, "gzip bomb"),
    ];
    for (name, bytes, says) in cases {
        let target = format!("bad-{name}");
        assert_eq!(
            tally.input(|| write_and_close(&mount.path(&target), bytes)),
            Err(libc::EIO),
            "{name}"
        );
        assert!(mount.log().contains(says), "{name}: {}", mount.log());
        let file = input_file(work.path(), name, bytes);
        let pushed = tally.input(|| {
            reposure(&[
                "image",
                "push",
                &registry.url(),
                &format!("cli-{name}"),
                file.to_str().unwrap(),
            ])
        });
        failed(&pushed, 1, says);
        for repository in [target, format!("cli-{name}")] {
            assert!(
                registry_tags(&registry.url(), &repository).is_empty(),
                "{repository}"
            );
        }
    }
    assert_eq!(
        fs::read_dir(spool.path()).unwrap().count(),
        0,
        "the spool kept a file"
    );
    Row::new(
        "input.damaged-archives",
        Category::BadInput,
        "a truncated archive, a corrupt gzip, an archive naming a blob it lacks, a 768 MiB gzip bomb (under 1 MiB), each through cp and image push",
        "cp: close() EIO and the log says why; image push: exit 1 with the reason; nothing tagged; the bomb stopped at 64x; the spool empty",
        "damaged_archives_are_refused_by_cp_and_image_push",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["push.archive"]);
}

/// Tar entries named `../..` or with absolute paths never write outside their place: such
/// a layer reads as its file through the mount and `image pull --unpack` writes only the
/// file it was told to; an archive full of such names is taken apart in the spool only.
#[test]
fn path_traversal_in_layers_and_archives_writes_nothing_outside() {
    let registry = Registry::start();
    let (spool, mount) = mount_with_spool(&registry);
    let tally = Tally::default();
    let work = tempfile::tempdir().unwrap();
    let pulls = work.path().join("a/b");
    fs::create_dir_all(&pulls).unwrap();
    let absolute = work.path().join("absolute-escape");
    let content = random_bytes(10_000);
    let entries = [
        ("dotdot", "../../dotdot-escape"),
        ("absolute", absolute.to_str().unwrap()),
    ];
    for (name, entry) in entries {
        let target = format!("evil-{name}");
        let archive = single_file_archive(entry, &content, 0);
        tally
            .input(|| write_and_close(&mount.path(&target), &archive))
            .unwrap();
        assert_eq!(
            tally.input(|| fs::read(mount.path(&target))).unwrap(),
            content,
            "{name}"
        );
        let pulled = tally
            .input(|| {
                Command::new(binary("reposure"))
                    .args([
                        "image",
                        "pull",
                        &registry.url(),
                        &target,
                        "--unpack",
                        "-o",
                        "out",
                    ])
                    .current_dir(&pulls)
                    .output()
            })
            .unwrap();
        ok(&pulled);
        assert_eq!(fs::read(pulls.join("out")).unwrap(), content);
        fs::remove_file(pulls.join("out")).unwrap();
    }
    // An image archive whose own entries climb out: nothing of it lands anywhere.
    let escaping = tar_of(&[
        (
            "../oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#.as_slice(),
        ),
        (
            "../../index.json",
            br#"{"schemaVersion":2,"manifests":[]}"#.as_slice(),
        ),
        ("/tmp/reposure-escaping-entry", b"x".as_slice()),
    ]);
    let closed = tally.input(|| write_and_close(&mount.path("evil-archive"), &escaping));
    assert!(matches!(closed, Ok(()) | Err(libc::EIO)), "{closed:?}");
    assert!(!Path::new("/tmp/reposure-escaping-entry").exists());
    assert!(!Path::new("/oci-layout").exists() && !Path::new("/index.json").exists());
    assert!(!absolute.exists(), "an absolute entry was written");
    let mut found = Vec::new();
    for dir in [
        work.path(),
        work.path().join("a").as_path(),
        &pulls,
        spool.path(),
    ] {
        found.extend(fs::read_dir(dir).unwrap().flatten().map(|e| e.path()));
    }
    found.retain(|p| p.to_string_lossy().contains("escape"));
    assert!(found.is_empty(), "written outside: {found:?}");
    assert_eq!(fs::read_dir(spool.path()).unwrap().count(), 0);
    Row::new(
        "input.path-traversal",
        Category::BadInput,
        "layers whose one file is named ../../x or /abs/path, read by cat and by image pull --unpack -o; an image archive whose entries are ../ and absolute paths pushed by cp",
        "the files read back whole; pull writes only -o's file; nothing is created outside; the spool is empty",
        "path_traversal_in_layers_and_archives_writes_nothing_outside",
    )
    .tally(&tally)
    .record();
}

/// A manifest over 4 MiB (registries refuse them) in an archive is refused by cp and by
/// `image push`, saying so, and tags nothing.
#[test]
fn manifests_over_four_mib_are_refused() {
    let registry = Registry::start();
    let mount = Mount::new(&registry.url(), &[]);
    let tally = Tally::default();
    let work = tempfile::tempdir().unwrap();
    let archive = single_file_archive("big", b"content", 4 * MIB + MIB / 2);
    assert_eq!(
        tally.input(|| write_and_close(&mount.path("huge"), &archive)),
        Err(libc::EIO)
    );
    assert!(mount.log().contains("too large"), "{}", mount.log());
    let file = input_file(work.path(), "huge.tar", &archive);
    let pushed = tally.input(|| {
        reposure(&[
            "image",
            "push",
            &registry.url(),
            "cli-huge",
            file.to_str().unwrap(),
        ])
    });
    failed(&pushed, 1, "too large");
    assert!(registry_catalog(&registry.url()).is_empty());
    Row::new(
        "input.large-manifest",
        Category::BadInput,
        "an image archive whose manifest is 4.5 MiB, through cp and image push",
        "close() EIO and exit 1, both saying the manifest is too large; nothing pushed",
        "manifests_over_four_mib_are_refused",
    )
    .tally(&tally)
    .record();
}

/// Names that are invalid, too long or not UTF-8 are refused before anything reaches the
/// registry: through the mount, EINVAL for such a directory (a file by such a name is a
/// local file, never pushed) or ENAMETOOLONG; exit 2 with the rule from `image push`.
#[test]
fn invalid_names_are_refused_by_cp_and_image_push() {
    use std::os::unix::ffi::OsStrExt;
    let registry = Registry::start();
    let mount = Mount::new(&registry.url(), &[]);
    let tally = Tally::default();
    let work = tempfile::tempdir().unwrap();
    let file = input_file(work.path(), "content", b"content");
    let long_tag = format!("ok:{}", "t".repeat(129));
    let long_path = format!("{}x", "r/".repeat(128));
    for (name, rule) in [
        ("Upper", "lower case"),
        ("with space", "may contain only"),
        (".hidden", "must start"),
    ] {
        assert_eq!(
            errno_of(tally.input(|| fs::create_dir(mount.path(name)))),
            libc::EINVAL,
            "{name}"
        );
        tally
            .input(|| fs::write(mount.path(name), b"x"))
            .unwrap_or_else(|e| panic!("{name} as a local file: {e}"));
        let pushed = tally.input(|| {
            reposure(&[
                "image",
                "push",
                &registry.url(),
                name,
                file.to_str().unwrap(),
            ])
        });
        failed(&pushed, 2, rule);
    }
    assert_eq!(
        errno_of(tally.input(|| fs::write(mount.path(&long_tag), b"x"))),
        libc::ENAMETOOLONG
    );
    let pushed = tally.input(|| {
        reposure(&[
            "image",
            "push",
            &registry.url(),
            &long_tag,
            file.to_str().unwrap(),
        ])
    });
    failed(&pushed, 2, "at most 128");
    let pushed = tally.input(|| {
        reposure(&[
            "image",
            "push",
            &registry.url(),
            &long_path,
            file.to_str().unwrap(),
        ])
    });
    failed(&pushed, 2, "at most 255");
    let non_utf8 = std::ffi::OsStr::from_bytes(b"bad\xff");
    assert_eq!(
        errno_of(tally.input(|| fs::write(mount.root().join(non_utf8), b"x"))),
        libc::EINVAL
    );
    let pushed = tally
        .input(|| {
            Command::new(binary("reposure"))
                .args(["image", "push", &registry.url()])
                .arg(non_utf8)
                .arg(&file)
                .output()
        })
        .unwrap();
    assert_eq!(pushed.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&pushed.stderr).contains("UTF-8"),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    // The deepest directory whose path is 255 characters can be made, but nothing in it.
    let deepest = mount.path(&long_path[..255]);
    tally.operation(|| fs::create_dir_all(&deepest)).unwrap();
    assert_eq!(
        errno_of(tally.input(|| fs::write(deepest.join("x"), b"x"))),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of(tally.input(|| fs::create_dir(deepest.join("x")))),
        libc::ENAMETOOLONG
    );
    // reposure-mount takes a source as text only.
    let mountpoint = tempfile::tempdir().unwrap();
    let refused = tally
        .input(|| {
            Command::new(binary("reposure-mount"))
                .arg(non_utf8)
                .arg(mountpoint.path())
                .output()
        })
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is not UTF-8"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(registry_catalog(&registry.url()).is_empty());
    Row::new(
        "input.invalid-names",
        Category::BadInput,
        "names with upper case, a space, a leading dot, a 129-character tag and non-UTF-8 bytes through cp, mkdir and image push; a 257-character repository path through cp, mkdir and image push; a non-UTF-8 source given to reposure-mount",
        "EINVAL (a directory, a non-UTF-8 name) or ENAMETOOLONG through the mount, files by the other names kept as local files; exit 2 naming the rule from the CLI and from reposure-mount; nothing reaches the registry",
        "invalid_names_are_refused_by_cp_and_image_push",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["names.invalid"]);
}

/// A directory of 10,000 entries lists completely and in order, `ls -l` of it finishes in
/// bounded time and memory.
#[test]
fn a_directory_of_ten_thousand_entries() {
    const TAGS: usize = 10_000;
    let registry = Registry::start();
    let tally = Tally::default();
    {
        let writer = Mount::new(&registry.url(), &[]);
        tally
            .operation(|| fs::create_dir(writer.path("big")))
            .unwrap();
        tally
            .operation(|| fs::write(writer.path("big/dir"), b"one image, many tags"))
            .unwrap();
    }
    // The other tags, as the registry itself stores a tag: copies of the first tag's link
    // files (10,000 manifest PUTs take the registry minutes on two cores).
    let tags = registry
        .dir
        .path()
        .join("data/docker/registry/v2/repositories/big/dir/_manifests/tags");
    let link = fs::read_to_string(tags.join("latest/current/link")).unwrap();
    let hex = link.trim().trim_start_matches("sha256:").to_owned();
    for i in 1..TAGS {
        let tag = tags.join(format!("t{i:05}"));
        fs::create_dir_all(tag.join("current")).unwrap();
        fs::create_dir_all(tag.join(format!("index/sha256/{hex}"))).unwrap();
        fs::write(tag.join("current/link"), &link).unwrap();
        fs::write(tag.join(format!("index/sha256/{hex}/link")), &link).unwrap();
    }
    assert_eq!(registry_tags(&registry.url(), "big/dir").len(), TAGS);

    let mount = Mount::new(&registry.url(), &["metadata_ttl=300"]);
    let started = Instant::now();
    let listed: Vec<String> = tally
        .operation(|| fs::read_dir(mount.path("big")))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let ls = started.elapsed();
    assert_eq!(listed.len(), TAGS);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "the listing is not in order");
    assert_eq!(listed[0], "dir");
    let started = Instant::now();
    for name in &listed {
        let meta = tally
            .operation(|| fs::metadata(mount.path("big").join(name)))
            .unwrap();
        assert_eq!(meta.len(), 20, "{name}");
    }
    let ls_l = started.elapsed();
    assert!(ls_l < Duration::from_secs(180), "ls -l took {ls_l:?}");
    let root = mount.root().to_str().unwrap().to_owned();
    let pid = pids_of("reposure-mount", &[&root])[0];
    let rss = peak_rss_kib(pid);
    assert!(rss < 128 * 1024, "peak RSS {rss} KiB");
    Row::new(
        "input.ten-thousand-entries",
        Category::BadInput,
        "a repository with 10,000 tags: ls, then stat of every entry (ls -l), cold",
        &format!(
            "all 10,000 listed, in order; ls {:.2} s, ls -l {:.1} s; the mount's peak RSS {} MiB",
            ls.as_secs_f32(),
            ls_l.as_secs_f32(),
            rss / 1024
        ),
        "a_directory_of_ten_thousand_entries",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["tree.sorted"]);
}

/// How long the load case runs: 30 s in CI, `REPOSURE_LOAD_SECONDS` for longer runs.
fn load_duration() -> Duration {
    let seconds = std::env::var("REPOSURE_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(seconds)
}

/// What the load case's writers did, for its readers and the final check.
#[derive(Default)]
struct Ledger {
    /// Names written once, with the digest and size of what was accepted.
    distinct: Mutex<Vec<(String, String, u64)>>,
    /// For each shared name, the digest of every content any writer began to write.
    shared: Mutex<Vec<HashSet<String>>>,
    writes: AtomicU64,
    /// Writes refused with EPERM: another writer of the same mount had the name open.
    refused: AtomicU64,
    reads: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Ledger {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// Sixteen writers on two mounts and sixteen readers on a third, for a bounded time, on
/// names written once and on names all writers keep overwriting: every accepted write reads
/// back with its digest, every read of a shared name is one whole write (never torn), and
/// the only refusals are EPERM for a name another writer of the same mount has open.
#[test]
fn sixteen_writers_and_sixteen_readers() {
    use rand::Rng;
    const WRITERS: usize = 16;
    const READERS: usize = 16;
    const SHARED: usize = 4;
    let registry = Registry::start();
    let options = ["timeout=10"];
    let writers = [
        Mount::new(&registry.url(), &options),
        Mount::new(&registry.url(), &options),
    ];
    let readers = Mount::new(&registry.url(), &["ro", "metadata_ttl=0", "timeout=10"]);
    let tally = Tally::default();
    for mount in &writers {
        tally
            .operation(|| fs::create_dir(mount.path("load")))
            .unwrap();
        tally
            .operation(|| fs::create_dir(mount.path("shared")))
            .unwrap();
    }
    let ledger = Ledger {
        shared: Mutex::new(vec![HashSet::new(); SHARED]),
        ..Default::default()
    };
    let deadline = Instant::now() + load_duration();
    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let (mount, ledger) = (&writers[w % writers.len()], &ledger);
            scope.spawn(move || {
                let mut rng = rand::rng();
                let mut n = 0;
                while Instant::now() < deadline {
                    let content = random_bytes(rng.random_range(1024..=512 * 1024));
                    let name = format!("load/w{w}-{n}");
                    match write_and_close(&mount.path(&name), &content) {
                        Ok(()) => ledger.distinct.lock().unwrap().push((
                            name,
                            sha256_hex(&content),
                            content.len() as u64,
                        )),
                        Err(errno) => ledger.fail(format!("write {name}: errno {errno}")),
                    }
                    ledger.writes.fetch_add(1, Ordering::Relaxed);
                    if n % 2 == 0 {
                        let k = rng.random_range(0..SHARED);
                        let content = random_bytes(64 * 1024);
                        ledger.shared.lock().unwrap()[k].insert(sha256_hex(&content));
                        let name = format!("shared/s{k}");
                        match write_and_close(&mount.path(&name), &content) {
                            Ok(()) => {}
                            Err(libc::EPERM) => {
                                ledger.refused.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(errno) => ledger.fail(format!("write {name}: errno {errno}")),
                        }
                        ledger.writes.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
            });
        }
        // The kernel drops its cached names and inodes five times a second, so its
        // `forget`s race with the lookups and opens of the load.
        let tally = &tally;
        scope.spawn(move || {
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                tally
                    .fault(|| fs::write("/proc/sys/vm/drop_caches", "2"))
                    .expect("drop_caches (as root)");
            }
        });
        for r in 0..READERS {
            let (mount, ledger) = (&readers, &ledger);
            scope.spawn(move || {
                let mut rng = rand::rng();
                while Instant::now() < deadline {
                    if r % 2 == 0 {
                        let picked = {
                            let distinct = ledger.distinct.lock().unwrap();
                            (!distinct.is_empty())
                                .then(|| distinct[rng.random_range(0..distinct.len())].clone())
                        };
                        let Some((name, digest, _)) = picked else {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        };
                        match fs::read(mount.path(&name)) {
                            Ok(bytes) if sha256_hex(&bytes) == digest => {}
                            Ok(_) => ledger.fail(format!("read {name}: wrong content")),
                            Err(e) => ledger.fail(format!("read {name}: {e}")),
                        }
                    } else {
                        let k = rng.random_range(0..SHARED);
                        let name = format!("shared/s{k}");
                        match fs::read(mount.path(&name)) {
                            Ok(bytes) => {
                                if !ledger.shared.lock().unwrap()[k].contains(&sha256_hex(&bytes)) {
                                    ledger.fail(format!("read {name}: torn or unknown content"));
                                }
                            }
                            // Not written yet.
                            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                            Err(e) => ledger.fail(format!("read {name}: {e}")),
                        }
                    }
                    ledger.reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });

    // Everything accepted is there, whole.
    let check = Mount::new(&registry.url(), &[]);
    let mut lost = 0;
    let distinct = ledger.distinct.lock().unwrap().clone();
    for (name, digest, size) in &distinct {
        match tally.operation(|| fs::read(check.path(name))) {
            Ok(bytes) if sha256_hex(&bytes) == *digest => {}
            _ => lost += size,
        }
    }
    for k in 0..SHARED {
        if let Ok(bytes) = tally.operation(|| fs::read(check.path(&format!("shared/s{k}"))))
            && !ledger.shared.lock().unwrap()[k].contains(&sha256_hex(&bytes))
        {
            ledger.fail(format!("shared/s{k} ended with content nobody wrote"));
        }
    }
    let failures = ledger.failures.lock().unwrap().clone();
    let (writes, refused, reads) = (
        ledger.writes.load(Ordering::Relaxed),
        ledger.refused.load(Ordering::Relaxed),
        ledger.reads.load(Ordering::Relaxed),
    );
    tally.add_operations(writes + reads);
    tally.add_bytes_lost(lost);
    let mut row = Row::new(
        "load.writers-readers",
        Category::Load,
        &format!(
            "{WRITERS} writers on two mounts and {READERS} readers on a read-only mount (metadata_ttl=0) for {} s, on names written once and on {SHARED} names every writer overwrites; the kernel made to drop its cached names and inodes 5 times a second (FUSE forget)",
            load_duration().as_secs()
        ),
        &format!(
            "{writes} writes ({refused} refused with EPERM: the same mount had the shared name open), {reads} reads each checked against its digest, {} failures; every accepted write read back whole at the end",
            failures.len()
        ),
        "sixteen_writers_and_sixteen_readers",
    )
    .tally(&tally);
    row.passed &= failures.is_empty();
    row.record();
    let errors: Vec<String> = writers
        .iter()
        .chain([&readers])
        .flat_map(|m| {
            m.log()
                .lines()
                .filter(|l| {
                    l.contains(" ERROR ") || (l.contains(" WARN ") && !l.contains("errno=1"))
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures: {:#?}\nthe mounts logged: {:#?}",
        failures.len(),
        &failures[..failures.len().min(20)],
        &errors[..errors.len().min(40)]
    );
    assert_eq!(lost, 0, "bytes of accepted writes lost");
    assert!(
        writes > WRITERS as u64 && reads > READERS as u64,
        "the load did not run"
    );
}

/// Two writers racing on one name, on two mounts and on one: the name ends with exactly
/// one writer's content, never a mix; a writer whose close() failed does not win; on one
/// mount the second opener is refused with EPERM.
#[test]
fn writers_racing_on_one_name_leave_one_writers_content() {
    const ROUNDS: usize = 20;
    let registry = Registry::start();
    let mounts = [
        Mount::new(&registry.url(), &[]),
        Mount::new(&registry.url(), &[]),
    ];
    let observer = Mount::new(&registry.url(), &["ro", "metadata_ttl=0"]);
    let tally = Tally::default();
    let mut refused = 0;
    for round in 0..ROUNDS {
        // Even rounds race across two mounts, odd rounds within one.
        let pair = if round % 2 == 0 { [0, 1] } else { [0, 0] };
        let name = format!("race{round}");
        let contents = [random_bytes(256 * 1024), random_bytes(256 * 1024)];
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<Result<(), i32>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|i| {
                    let (mount, content, barrier, name, tally) =
                        (&mounts[pair[i]], &contents[i], &barrier, &name, &tally);
                    scope.spawn(move || {
                        barrier.wait();
                        tally.operation(|| write_and_close(&mount.path(name), content))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for result in &results {
            match result {
                Ok(()) => {}
                Err(libc::EPERM) if pair[0] == pair[1] => refused += 1,
                Err(errno) => panic!("round {round}: a writer failed with errno {errno}"),
            }
        }
        let landed = tally.operation(|| fs::read(observer.path(&name))).unwrap();
        let winner = contents.iter().position(|c| *c == landed);
        let Some(winner) = winner else {
            panic!("round {round}: the name holds neither writer's content");
        };
        assert!(
            results[winner].is_ok(),
            "round {round}: a failed writer won"
        );
    }
    Row::new(
        "load.racing-writers",
        Category::Load,
        &format!("two writers start writing 256 KiB to the same name at once, {ROUNDS} rounds, alternately on two mounts and on one"),
        &format!("every round ends with exactly one successful writer's content; on one mount the second opener got EPERM {refused} times"),
        "writers_racing_on_one_name_leave_one_writers_content",
    )
    .tally(&tally)
    .record();
}

/// Credentials never appear in any process's argv, in logs at any level (trace included),
/// or in error messages: for the mount (`password_file=` and `REPOSURE_PASSWORD`), a
/// surrogate child (`--password-file`) and the CLI, with good and with wrong passwords.
#[test]
fn credentials_appear_in_no_argv_log_or_error() {
    use base64::Engine as _;
    let password = format!("secret-{}", hex::encode(random_bytes(12)));
    let wrong = format!("wrong-{}", hex::encode(random_bytes(12)));
    let registry = Registry::start_with(RegistryConfig {
        credentials: Some(("reposure".into(), password.clone())),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let password_file = input_file(work.path(), "password", password.as_bytes());
    let wrong_file = input_file(work.path(), "wrong", wrong.as_bytes());
    let password_file = password_file.to_str().unwrap();
    let trace = [("REPOSURE_LOG", "trace")];
    let mut seen: Vec<String> = Vec::new();
    let tally = Tally::default();

    let password_option = format!("password_file={password_file}");
    let mount = Mount::try_new(
        &registry.url(),
        &["username=reposure", &password_option],
        &trace,
    )
    .unwrap();
    let surrogate_args = format!("--username reposure --password-file {password_file}");
    let exec = Mount::try_new(
        &exec_source(&registry.url(), &[&surrogate_args]),
        &[],
        &trace,
    )
    .unwrap();
    for m in [&mount, &exec] {
        tally
            .operation(|| fs::write(m.path("file"), b"content"))
            .unwrap();
        assert_eq!(
            tally.operation(|| fs::read(m.path("file"))).unwrap(),
            b"content"
        );
        assert!(tally.operation(|| fs::read(m.path("missing"))).is_err());
        tally.operation(|| fs::remove_file(m.path("file"))).unwrap();
    }
    seen.extend(all_command_lines());
    let env_password = tally.input(|| {
        Mount::try_new(
            &registry.url(),
            &["username=reposure"],
            &[
                ("REPOSURE_PASSWORD", wrong.as_str()),
                ("REPOSURE_LOG", "trace"),
            ],
        )
    });
    let refused = env_password.err().expect("a wrong password must not mount");
    seen.push(refused.stderr.clone());
    seen.push(mount.log());
    seen.push(exec.log());

    let file = input_file(work.path(), "content", b"content");
    let cli_args = |password_file: &Path| {
        vec![
            "image".to_owned(),
            "push".to_owned(),
            registry.url(),
            "cli".to_owned(),
            file.to_str().unwrap().to_owned(),
            "--username".to_owned(),
            "reposure".to_owned(),
            "--password-file".to_owned(),
            password_file.to_str().unwrap().to_owned(),
        ]
    };
    let args = cli_args(Path::new(password_file));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pushed = tally.operation(|| reposure_with(&args, &trace));
    ok(&pushed);
    let args = cli_args(&wrong_file);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = tally.input(|| reposure_with(&args, &trace));
    assert_eq!(refused.status.code(), Some(4), "access refused is exit 4");
    for output in [&pushed, &refused] {
        seen.push(String::from_utf8_lossy(&output.stdout).into_owned());
        seen.push(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    assert!(
        seen.iter()
            .any(|text| text.contains("refused the credentials")),
        "the refusals should say the credentials were refused"
    );

    let base64 = base64::engine::general_purpose::STANDARD;
    let secrets = [
        password.clone(),
        wrong.clone(),
        base64.encode(format!("reposure:{password}")),
        base64.encode(format!("reposure:{wrong}")),
    ];
    let scanned: usize = seen.iter().map(String::len).sum();
    for secret in &secrets {
        for text in &seen {
            assert!(
                !text.contains(secret.as_str()),
                "a credential leaked into: {}",
                &text[..text.len().min(2000)]
            );
        }
    }
    Row::new(
        "security.credentials",
        Category::Security,
        "a registry with htpasswd; mounts with password_file= and REPOSURE_PASSWORD (right and wrong), a surrogate child with --password-file, image push with --password-file (right and wrong); every log at trace level",
        &format!(
            "neither password nor its Basic encoding in any process's argv, the logs or the error messages ({} KiB scanned); refusals say the credentials were refused",
            scanned / 1024
        ),
        "credentials_appear_in_no_argv_log_or_error",
    )
    .tally(&tally)
    .record();
}

/// The names in a spool directory but its lock.
fn spool_entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".spooler.lock")
        .collect()
}

/// A mount whose `exec:` surrogate has a spool, with its spooler; both reach the registry
/// through a fault proxy.
struct SpoolBehindProxy {
    registry: Registry,
    proxy: FaultProxy,
    spool: tempfile::TempDir,
    _spooler: Process,
    mount: Mount,
}

impl SpoolBehindProxy {
    fn start() -> Self {
        let registry = Registry::start();
        let proxy = FaultProxy::start(registry.port);
        let spool = tempfile::tempdir().unwrap();
        let spooler = start_spooler(&proxy.url(), spool.path());
        let spool_arg = format!("--spool {}", spool.path().display());
        let mount = Mount::new(&exec_source(&proxy.url(), &[&spool_arg]), &[]);
        Self {
            registry,
            proxy,
            spool,
            _spooler: spooler,
            mount,
        }
    }
}

/// A push through a surrogate with a spool goes to the registry while it is spooled; when
/// that direct upload fails (its PATCH cut by the registry's side), the spooler publishes
/// the accepted entry from the spool and close() succeeds once it has; nothing stays in
/// the spool.
#[test]
fn a_failed_direct_upload_is_published_from_the_spool() {
    let SpoolBehindProxy {
        registry,
        proxy,
        spool,
        _spooler,
        mount,
    } = SpoolBehindProxy::start();
    let tally = Tally::default();
    let content = random_bytes(6 * MIB);
    let _cut =
        tally.fault(|| proxy.inject_times(Class::UploadPatch, Fault::CutRequest(MIB as u64), 1));
    tally
        .operation(|| write_and_close(&mount.path("fallback"), &content))
        .unwrap();
    assert_eq!(proxy.faults_injected(), 1, "the direct upload was not cut");
    assert!(
        mount.log().contains("the spooler publishes the entry"),
        "the fallback is not in the log: {}",
        mount.log()
    );
    assert_eq!(registry_tags(&registry.url(), "fallback"), ["latest"]);
    assert_eq!(
        tally
            .operation(|| fs::read(mount.path("fallback")))
            .unwrap(),
        content
    );
    assert!(
        spool_entries(spool.path()).is_empty(),
        "{:?}",
        spool_entries(spool.path())
    );
    Row::new(
        "fault.direct-upload-fails",
        Category::Fault,
        "a surrogate with a spool: the registry cuts the PATCH of the upload it streams while spooling (6 MiB file)",
        "close() succeeds once the spooler has published the spooled entry; the tag has the content; the spool is empty",
        "a_failed_direct_upload_is_published_from_the_spool",
    )
    .tally(&tally)
    .record();
}

/// A session that dies after its push was accepted into the spool, before the registry
/// committed the manifest: close() fails, and the spooler publishes the accepted entry
/// (the session's claim on it ends with the process), exactly as it was written.
#[test]
fn an_accepted_push_outlives_its_session() {
    let SpoolBehindProxy {
        registry,
        proxy,
        spool,
        _spooler,
        mount,
    } = SpoolBehindProxy::start();
    let tally = Tally::default();
    let content = random_bytes(3 * MIB);
    // The direct upload stops at the manifest: the push is accepted, not yet published.
    let stalled = tally.fault(|| proxy.inject(Class::ManifestPut, Fault::Stall));
    let path = mount.path("outlived");
    let written = content.clone();
    let writer = std::thread::spawn(move || write_and_close(&path, &written));
    assert!(
        wait_until(Duration::from_secs(20), || proxy.seen(Class::ManifestPut)
            > 0),
        "the direct upload never reached its manifest"
    );
    assert!(
        spool_entries(spool.path())
            .iter()
            .any(|n| n.ends_with(".push")),
        "the push is not in the spool: {:?}",
        spool_entries(spool.path())
    );
    let sessions = pids_of(
        "reposure-surrogate",
        &["serve", &spool.path().display().to_string()],
    );
    assert!(!sessions.is_empty(), "no session surrogate on this spool");
    for pid in sessions {
        kill_9(pid);
    }
    let outcome = writer.join().unwrap();
    assert!(
        outcome.is_err(),
        "close() succeeded though its session died"
    );
    // The spooler takes the entry over: its own manifest PUT arrives (held too, until the
    // registry lets them through).
    assert!(
        wait_until(Duration::from_secs(20), || proxy.seen(Class::ManifestPut)
            >= 2),
        "the spooler did not take the accepted entry over"
    );
    stalled.clear();
    assert!(
        wait_until(Duration::from_secs(20), || {
            registry_tags(&registry.url(), "outlived") == ["latest"]
                && !spool_entries(spool.path())
                    .iter()
                    .any(|n| n.contains(".push"))
        }),
        "the accepted push was not published: the spool keeps {:?}",
        spool_entries(spool.path())
    );
    // Read back at the registry itself, by another mount.
    let reader = Mount::new(&registry.url(), &[]);
    assert_eq!(fs::read(reader.path("outlived")).unwrap(), content);
    // What stays is the verdict nobody was left to read: the record that it was published.
    let left = spool_entries(spool.path());
    assert!(
        left.iter().all(|n| n.ends_with(".verdict")),
        "the spool keeps {left:?}"
    );
    for verdict in left {
        let said = fs::read_to_string(spool.path().join(verdict)).unwrap();
        assert!(said.contains("published"), "{said}");
    }
    Row::new(
        "fault.session-dies-after-acceptance",
        Category::Fault,
        "a surrogate with a spool: the registry holds the manifest PUT of the streamed upload, and the session is killed (SIGKILL) with the push accepted into the spool",
        "close() fails; the spooler publishes the accepted entry (the tag appears; only its verdict stays in the spool, saying published): accepted data is never dropped",
        "an_accepted_push_outlives_its_session",
    )
    .tally(&tally)
    .record();
}
