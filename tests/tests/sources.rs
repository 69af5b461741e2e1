//! Sources, credentials, TLS and failures of the registry; reads by Range and verified
//! reads; a dispatch loop that never waits on the network.

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use reposure_tests::contract;
use reposure_tests::mount::Mount;
use reposure_tests::posix::{close, errno_of};
use reposure_tests::proxy::{Class, Fault, FaultProxy};
use reposure_tests::registry::{Registry, RegistryConfig};
use reposure_tests::reliability::{Category, Row, Tally};
use reposure_tests::{free_port, random_bytes, sha256_hex};

/// An HTTPS registry needs its CA; without it the mount fails and says to use ca=; with it
/// everything works.
#[test]
fn tls_registry_needs_its_ca() {
    let registry = Registry::start_with(RegistryConfig {
        tls: true,
        ..Default::default()
    });
    let tally = Tally::default();
    let failure = tally
        .input(|| Mount::try_new(&registry.url(), &[], &[]))
        .err()
        .expect("mount without CA must fail");
    assert_ne!(failure.code, Some(0));
    assert!(failure.stderr.contains("ca="), "{}", failure.stderr);
    assert_eq!(
        failure.stderr.trim().lines().count(),
        1,
        "one line: {}",
        failure.stderr
    );

    let ca = format!("ca={}", registry.ca_path().display());
    let mount = Mount::new(&registry.url(), &[&ca]);
    tally
        .operation(|| fs::write(mount.path("secure"), b"over tls"))
        .unwrap();
    assert_eq!(
        tally.operation(|| fs::read(mount.path("secure"))).unwrap(),
        b"over tls"
    );
    Row::new(
        "security.tls-verified",
        Category::Security,
        "an HTTPS registry whose certificate is signed by a CA the machine does not trust",
        "the mount is refused with one line naming ca=; with ca= it works; there is no insecure mode",
        "tls_registry_needs_its_ca",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["source.http", "source.mount-errors"]);
}

/// `htpasswd` credentials from a file or the environment; wrong ones fail the mount; the
/// password never shows in argv or logs.
#[test]
fn basic_auth_from_file_or_environment() {
    let password = "s3cret-Pa55word-xyz";
    let registry = Registry::start_with(RegistryConfig {
        credentials: Some(("alice".into(), password.into())),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let password_file = work.path().join("password");
    fs::write(&password_file, format!("{password}\n")).unwrap();

    let anonymous = Mount::try_new(&registry.url(), &[], &[])
        .err()
        .expect("anonymous must fail");
    assert!(
        anonymous.stderr.contains("credentials"),
        "{}",
        anonymous.stderr
    );

    let wrong = work.path().join("wrong");
    fs::write(&wrong, "nope").unwrap();
    let failure = Mount::try_new(
        &registry.url(),
        &[
            "username=alice",
            &format!("password_file={}", wrong.display()),
        ],
        &[],
    )
    .err()
    .expect("wrong password must fail");
    assert!(failure.stderr.contains("credentials"), "{}", failure.stderr);

    let mount = Mount::new(
        &registry.url(),
        &[
            "username=alice",
            &format!("password_file={}", password_file.display()),
        ],
    );
    fs::write(mount.path("private"), b"for alice").unwrap();
    assert_eq!(fs::read(mount.path("private")).unwrap(), b"for alice");
    assert!(
        !mount.log().contains(password),
        "the password leaked into the log"
    );
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(password),
                "password in a process's argv"
            );
        }
    }

    let from_env = Mount::try_new(
        &registry.url(),
        &["username=alice"],
        &[("REPOSURE_PASSWORD", password)],
    )
    .expect("password from the environment");
    assert_eq!(fs::read(from_env.path("private")).unwrap(), b"for alice");

    let refused = Mount::try_new(&registry.url(), &["username=alice", "password=x"], &[])
        .err()
        .unwrap();
    assert!(
        refused.stderr.contains("password_file"),
        "{}",
        refused.stderr
    );
    contract::exercises(&["source.auth", "source.mount-errors"]);
}

/// Unreachable registry, missing mountpoint, unknown option.
#[test]
fn mount_refuses_bad_input_with_one_line() {
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let failure = Mount::try_new(&unreachable, &[], &[])
        .err()
        .expect("unreachable must fail");
    assert_eq!(failure.code, Some(1));
    assert!(
        failure.stderr.contains("cannot use") && failure.stderr.contains("127.0.0.1"),
        "{}",
        failure.stderr
    );
    assert_eq!(
        failure.stderr.trim().lines().count(),
        1,
        "{}",
        failure.stderr
    );

    let output = std::process::Command::new(reposure_tests::binary("reposure-mount"))
        .args(["oci:/tmp/x", "/nonexistent/mountpoint"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));

    let failure = Mount::try_new("oci:/tmp/reposure-x", &["colour=blue"], &[])
        .err()
        .unwrap();
    assert!(
        failure.stderr.contains("unknown option"),
        "{}",
        failure.stderr
    );

    // timeout= is for a registry the mount reaches itself: elsewhere it says where it goes.
    let layout = tempfile::tempdir().unwrap();
    let oci = format!("oci:{}", layout.path().display());
    for (source, says) in [
        (oci.as_str(), "not oci: directories"),
        (
            "exec:reposure-surrogate --registry http://127.0.0.1:9 session",
            "--timeout",
        ),
        ("some-registry", "Kubernetes Registry"),
    ] {
        let failure = Mount::try_new(source, &["timeout=5"], &[]).err().unwrap();
        assert!(
            failure.stderr.contains(says),
            "{source}: {}",
            failure.stderr
        );
        assert_eq!(
            failure.stderr.trim().lines().count(),
            1,
            "{}",
            failure.stderr
        );
    }
    contract::exercises(&["source.mount-errors"]);
}

/// The registry goes away and comes back.
#[test]
fn registry_outage_gives_eio_then_recovers() {
    let mut registry = Registry::start();
    let mount = Mount::new(&registry.url(), &["metadata_ttl=0"]);
    let tally = Tally::default();
    tally
        .operation(|| fs::write(mount.path("before"), b"kept"))
        .unwrap();
    tally.fault(|| registry.stop());
    let started = Instant::now();
    assert_eq!(
        errno_of(tally.operation(|| fs::read_dir(mount.root()).map(|d| d.count()))),
        libc::EIO
    );
    assert_eq!(
        errno_of(tally.operation(|| fs::write(mount.path("during"), b"x"))),
        libc::EIO
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    registry.resume();
    assert_eq!(
        tally.operation(|| fs::read(mount.path("before"))).unwrap(),
        b"kept"
    );
    tally
        .operation(|| fs::write(mount.path("after"), b"works"))
        .unwrap();
    assert_eq!(
        tally.operation(|| fs::read(mount.path("after"))).unwrap(),
        b"works"
    );
    Row::new(
        "fault.registry-down",
        Category::Fault,
        "the registry stopped while a mount is idle, then started again",
        "ls and cp fail with EIO within 15 s; after the restart the same mount reads and pushes",
        "registry_outage_gives_eio_then_recovers",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["errors.unavailable"]);
}

/// Corrupt stored content fails the read with EIO and a log line.
#[test]
fn corrupt_blob_is_eio() {
    let registry = Registry::start();
    let mount = Mount::new(&registry.url(), &[]);
    let tally = Tally::default();
    let content = random_bytes(200_000);
    tally
        .operation(|| fs::write(mount.path("victim"), &content))
        .unwrap();
    let manifest = reposure_tests::tools::manifest(&registry.host(), "victim:latest");
    let digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let blob = registry.dir.path().join(format!(
        "data/docker/registry/v2/blobs/sha256/{}/{digest}/data",
        &digest[..2]
    ));
    let mut stored = fs::read(&blob).unwrap();
    let middle = stored.len() / 2;
    stored[middle] ^= 0xff;
    tally.fault(|| fs::write(&blob, &stored)).unwrap();
    let fresh = Mount::new(&registry.url(), &[]);
    assert_eq!(
        errno_of(tally.operation(|| fs::read(fresh.path("victim")))),
        libc::EIO
    );
    assert!(fresh.log().contains("digest"), "{}", fresh.log());
    Row::new(
        "fault.corrupt-blob",
        Category::Fault,
        "one byte of a stored layer flipped in the registry's storage",
        "the read fails with EIO and the log names the digest mismatch",
        "corrupt_blob_is_eio",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["read.verified"]);
}

/// A read at an offset fetches a small window, not the blob.
#[test]
fn offset_read_uses_a_range_request() {
    let registry = Registry::start();
    let content = random_bytes(16 * 1024 * 1024);
    {
        let mount = Mount::new(&registry.url(), &[]);
        fs::write(mount.path("ranged"), &content).unwrap();
    }
    let mount = Mount::new(&registry.url(), &[]);
    let file = fs::File::open(mount.path("ranged")).unwrap();
    let mut buffer = vec![0u8; 4096];
    let offset = 11 * 1024 * 1024 + 123;
    file.read_exact_at(&mut buffer, offset).unwrap();
    assert_eq!(buffer, content[offset as usize..offset as usize + 4096]);
    drop(file);
    // The access log has the bytes sent for each blob GET: none may approach the blob.
    let log = registry.log();
    let blob_gets: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("\"GET /v2/ranged/blobs/"))
        .filter_map(|l| l.split('"').nth(2)?.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert!(!blob_gets.is_empty(), "no blob GET in the log");
    let total: u64 = blob_gets.iter().sum();
    assert!(
        total <= 1024 * 1024,
        "fetched {total} bytes for a 4 KiB read: {blob_gets:?}"
    );
    contract::exercises(&["read.range"]);
}

/// A read stalled on the registry does not delay `ls` elsewhere.
#[test]
fn stalled_read_does_not_block_listing() {
    let registry = Registry::start();
    let content = random_bytes(1024 * 1024);
    {
        // Uploads go around the proxy: it only needs to understand the reads.
        let writer = Mount::new(&registry.url(), &[]);
        fs::create_dir(writer.path("slow")).unwrap();
        fs::create_dir(writer.path("fast")).unwrap();
        fs::write(writer.path("slow/file"), &content).unwrap();
        fs::write(writer.path("fast/file"), b"quick").unwrap();
    }
    let proxy = FaultProxy::start(registry.port);
    let mount = Mount::new(&proxy.url(), &["metadata_ttl=0"]);

    let stall = proxy.inject(Class::BlobGet, Fault::Stall);
    let path = mount.path("slow/file");
    let reader = std::thread::spawn(move || {
        let mut data = Vec::new();
        fs::File::open(path)
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        data
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!reader.is_finished(), "the read should be stalled");
    let started = Instant::now();
    let listed: Vec<_> = fs::read_dir(mount.path("fast")).unwrap().collect();
    assert_eq!(listed.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "ls took {:?}",
        started.elapsed()
    );
    stall.clear();
    assert_eq!(sha256_hex(&reader.join().unwrap()), sha256_hex(&content));
    contract::exercises(&["concurrency.dispatch"]);
}

/// A push that fails at close() returns EIO from close, logs why, and leaves the tag as it
/// was.
#[test]
fn failed_push_fails_close_and_keeps_the_old_tag() {
    let mut registry = Registry::start();
    let mount = Mount::new(&registry.url(), &["metadata_ttl=0"]);
    let tally = Tally::default();
    tally
        .operation(|| fs::write(mount.path("precious"), b"version one"))
        .unwrap();
    let mut file = tally
        .operation(|| fs::File::create(mount.path("precious")))
        .unwrap();
    tally
        .operation(|| std::io::Write::write_all(&mut file, b"version two, never published"))
        .unwrap();
    tally.fault(|| registry.stop());
    // close() is where the push happens; std's File drop ignores errors, so close by hand.
    assert_eq!(tally.operation(|| close(file)), Err(libc::EIO));
    assert!(mount.log().contains("push failed"), "{}", mount.log());
    registry.resume();
    assert_eq!(
        tally
            .operation(|| fs::read(mount.path("precious")))
            .unwrap(),
        b"version one"
    );
    assert_eq!(
        reposure_tests::tools::registry_tags(&registry.url(), "precious"),
        ["latest"]
    );
    Row::new(
        "fault.registry-down-at-close",
        Category::Fault,
        "the registry stopped between the writes and the close() of an overwrite",
        "close() EIO, the log says the push failed, the tag keeps its old image",
        "failed_push_fails_close_and_keeps_the_old_tag",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["push.failure"]);
}

/// The HTTP store follows the catalog's `Link` pages of the real registry (forced small
/// here; the default asks for 1000 a page).
#[test]
fn catalog_pages_follow_link_headers() {
    use reposure_registry::store::Store;
    use reposure_registry::store::http::{HttpOptions, HttpStore};
    let registry = Registry::start();
    {
        let mount = Mount::new(&registry.url(), &[]);
        for name in ["e", "c", "a", "d", "b"] {
            fs::write(mount.path(name), name.as_bytes()).unwrap();
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = HttpStore::new(
        &registry.url().parse().unwrap(),
        HttpOptions {
            page_size: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let mut repositories = runtime.block_on(store.list_repositories()).unwrap();
    repositories.sort();
    assert_eq!(repositories, ["a", "b", "c", "d", "e"]);
    let pages = registry
        .log()
        .lines()
        .filter(|l| l.contains("GET /v2/_catalog"))
        .count();
    assert!(pages >= 3, "expected 3 catalog pages, saw {pages}");
    contract::exercises(&["tree.sorted"]);
}

/// `-f` stays in the foreground and unmounts on SIGTERM.
#[test]
fn foreground_mount_unmounts_on_sigterm() {
    let store = tempfile::tempdir().unwrap();
    let mountpoint = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(reposure_tests::binary("reposure-mount"))
        .arg(format!("oci:{}", store.path().display()))
        .arg(mountpoint.path())
        .arg("-f")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(reposure_tests::wait_until(Duration::from_secs(10), || {
        reposure_tests::mount::is_mounted(mountpoint.path())
    }));
    fs::write(mountpoint.path().join("fg"), b"foreground").unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!reposure_tests::mount::is_mounted(mountpoint.path()));
    contract::exercises(&["source.foreground"]);
}

/// `uid=`/`gid=` set the owner shown; without allow_other other users cannot even look,
/// with it they can read.
#[test]
fn ownership_and_allow_other() {
    let store = tempfile::tempdir().unwrap();
    let source = format!("oci:{}", store.path().display());
    let private = Mount::new(&source, &["uid=4242", "gid=4343"]);
    let tally = Tally::default();
    tally
        .operation(|| fs::write(private.path("owned"), b"x"))
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    let meta = tally
        .operation(|| fs::metadata(private.path("owned")))
        .unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
    let as_nobody = |path: &std::path::Path| {
        std::process::Command::new("runuser")
            .args(["-u", "nobody", "--", "cat"])
            .arg(path)
            .output()
            .unwrap()
    };
    let denied = tally.operation(|| as_nobody(&private.path("owned")));
    assert!(
        !denied.status.success(),
        "another user read a private mount"
    );
    let shared = Mount::new(&source, &["allow_other"]);
    let allowed = tally.operation(|| as_nobody(&shared.path("owned")));
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(allowed.stdout, b"x");
    Row::new(
        "security.private-mount",
        Category::Security,
        "another user (nobody) reads a mount made by root, without and with allow_other",
        "refused without allow_other; with it, the permission bits of uid=/gid= decide",
        "ownership_and_allow_other",
    )
    .tally(&tally)
    .record();
    contract::exercises(&["stat.attrs", "source.private"]);
}

/// An upload that takes longer than the read timeout completes as long as it moves (a slow
/// link, a large file: the 4 GiB benchmark once failed here at 30 s), and one that stops
/// moving fails within the timeout, leaving nothing behind.
#[test]
fn slow_uploads_complete_and_stalled_ones_fail() {
    use bytes::Bytes;
    use futures::StreamExt;
    use reposure_registry::RegistryError;
    use reposure_registry::store::Store;
    use reposure_registry::store::http::{HttpOptions, HttpStore};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::start();
    let url = reqwest::Url::parse(&registry.url()).unwrap();
    let timeout = Duration::from_secs(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = HttpStore::new(
            &url,
            HttpOptions {
                read_timeout: Some(timeout),
                ..Default::default()
            },
        )
        .unwrap();
        // Three times the timeout, 64 KiB every 100 ms.
        let slow = futures::stream::iter(0..30)
            .then(|_| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(Bytes::from(vec![7u8; 64 * 1024]))
            })
            .boxed();
        let started = Instant::now();
        let (_, size) = store.put_blob("slow/upload", slow).await.unwrap();
        assert_eq!(size, 30 * 64 * 1024);
        assert!(started.elapsed() > 2 * timeout, "{:?}", started.elapsed());

        let stalled = futures::stream::once(async { Ok(Bytes::from(vec![1u8; 1024])) })
            .chain(futures::stream::pending())
            .boxed();
        let started = Instant::now();
        let error = store.put_blob("slow/stalled", stalled).await.unwrap_err();
        assert!(matches!(error, RegistryError::Unavailable(_)), "{error}");
        assert!(error.to_string().contains("no progress"), "{error}");
        assert!(started.elapsed() < 5 * timeout, "{:?}", started.elapsed());
    });
}
