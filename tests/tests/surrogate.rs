//! The surrogate: its session under faults and load, its spool, and its one-shot
//! commands, against the real registry and through real mounts.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reposure_registry::names::Reference;
use reposure_registry::operations::{FileUpload, Registry as _};
use reposure_surrogate::session::client::SessionClient;
use reposure_surrogate::session::transport::ChildProcess;
use reposure_tests::mount::{Mount, exec_source};
use reposure_tests::posix::close;
use reposure_tests::process::{Process, kill_9, pids_of, start_spooler};
use reposure_tests::proxy::{Class, Fault, FaultProxy};
use reposure_tests::registry::{Registry, RegistryConfig};
use reposure_tests::reliability::{Category, Row, Tally};
use reposure_tests::tools::{registry_tags, skopeo_copy};
use reposure_tests::{binary, random_bytes, sha256_hex, wait_until};

fn spooler(registry: &Registry, dir: &Path) -> Process {
    start_spooler(&registry.url(), dir)
}

/// `kill -9` of the session process during a push: close() fails in bounded time, no tag
/// is created, and the next push through the same mount opens a new session and works.
#[test]
fn session_killed_mid_push() {
    let registry = Registry::start();
    // The surrogate reaches the registry through a proxy that holds the upload, so the
    // session is killed while the push is certainly in progress.
    let proxy = FaultProxy::start(registry.port);
    let mount = Mount::new(&exec_source(&proxy.url(), &[]), &[]);
    let tally = Tally::default();
    tally
        .operation(|| fs::write(mount.path("warmup"), b"session is up"))
        .unwrap();
    let mut file = tally
        .operation(|| fs::File::create(mount.path("interrupted")))
        .unwrap();
    tally
        .operation(|| file.write_all(&random_bytes(4 * 1024 * 1024)))
        .unwrap();
    let stall = proxy.inject(Class::UploadPatch, Fault::Stall);
    let port = proxy.port.to_string();
    let started = Instant::now();
    let closed = std::thread::scope(|scope| {
        scope.spawn(|| {
            assert!(
                wait_until(Duration::from_secs(20), || proxy.seen(Class::UploadPatch)
                    > 0),
                "the upload never started"
            );
            let pids = pids_of("reposure-surrogate", &["serve", &port]);
            assert!(!pids.is_empty(), "no session process found");
            for pid in pids {
                tally.fault(|| kill_9(pid));
            }
        });
        tally.operation(|| close(file))
    });
    stall.clear();
    assert_eq!(closed, Err(libc::EIO));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "close took {:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        registry_tags(&registry.url(), "interrupted").is_empty(),
        "a tag after a cut push: {}",
        mount.log()
    );
    tally
        .operation(|| fs::write(mount.path("after"), b"new session"))
        .unwrap();
    assert_eq!(
        tally.operation(|| fs::read(mount.path("after"))).unwrap(),
        b"new session"
    );
    assert_eq!(
        tally.operation(|| fs::read(mount.path("warmup"))).unwrap(),
        b"session is up"
    );
    tally.add_faults(proxy.faults_injected());
    Row::new(
        "fault.session-killed",
        Category::Fault,
        "kill -9 of the surrogate session process (exec:) while a 4 MiB push is held mid-upload",
        "close() EIO within 30 s, no tag; the next push opens a new session and works",
        "session_killed_mid_push",
    )
    .tally(&tally)
    .record();
}

/// `kill -9` of the spooler after a push was accepted and before it was published (the
/// session's own upload to the registry failed, so the entry is the spooler's): the
/// waiting client gets an error (not a false success), and after a restart the image
/// appears, published once.
#[test]
fn spooler_killed_after_accepting() {
    let registry = Registry::start();
    // The session reaches the registry through a proxy that fails its uploads; the spooler
    // reaches it directly.
    let proxy = FaultProxy::start(registry.port);
    let spool = tempfile::tempdir().unwrap();
    let spool_arg = format!("--spool {}", spool.path().display());
    let mount = Mount::new(
        &exec_source(&proxy.url(), &[&spool_arg]),
        &["metadata_ttl=0"],
    );
    let first = spooler(&registry, spool.path());
    let tally = Tally::default();
    let _uploads_fail = tally.fault(|| proxy.inject(Class::UploadPut, Fault::Status(500)));
    // Freeze the spooler so the push is accepted but not published, then kill it.
    // SAFETY: signals to our own child.
    tally.fault(|| unsafe { libc::kill(first.0.id() as i32, libc::SIGSTOP) });
    let content = random_bytes(100_000);
    let closed = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut file = tally
                .operation(|| fs::File::create(mount.path("durable:v1.2.3")))
                .unwrap();
            tally.operation(|| file.write_all(&content)).unwrap();
            tally.operation(|| close(file))
        });
        assert!(wait_until(Duration::from_secs(10), || {
            fs::read_dir(spool.path())
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".push"))
        }));
        tally.fault(|| kill_9(first.0.id() as i32));
        drop(first);
        writer.join().unwrap()
    });
    assert_eq!(closed, Err(libc::EIO), "the client must not see success");
    assert!(registry_tags(&registry.url(), "durable").is_empty());
    let _second = spooler(&registry, spool.path());
    assert!(wait_until(Duration::from_secs(15), || registry_tags(
        &registry.url(),
        "durable"
    ) == ["v1.2.3"]));
    assert_eq!(
        sha256_hex(
            &tally
                .operation(|| fs::read(mount.path("durable:v1.2.3")))
                .unwrap()
        ),
        sha256_hex(&content)
    );
    assert!(wait_until(Duration::from_secs(5), || {
        fs::read_dir(spool.path())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains(".push"))
    }));
    Row::new(
        "fault.spooler-killed",
        Category::Fault,
        "kill -9 of the spooler after the spool accepted a push whose direct upload failed, before it was published",
        "the client gets an error, not a false success; the entry stays in the spool and is published once when a spooler runs again",
        "spooler_killed_after_accepting",
    )
    .tally(&tally)
    .record();
}

/// A spooled push whose publication fails stays in the spool with its error, and the
/// client got the registry's reason.
#[test]
fn failed_publication_is_kept_with_its_error() {
    let mut registry = Registry::start();
    let spool = tempfile::tempdir().unwrap();
    let spool_arg = format!("--spool {}", spool.path().display());
    let mount = Mount::new(&exec_source(&registry.url(), &[&spool_arg]), &[]);
    let _spooler = spooler(&registry, spool.path());
    let tally = Tally::default();
    tally
        .operation(|| fs::write(mount.path("ok"), b"fine"))
        .unwrap();
    let mut file = tally
        .operation(|| fs::File::create(mount.path("kept")))
        .unwrap();
    tally
        .operation(|| file.write_all(b"must not be lost"))
        .unwrap();
    // The registry goes away after the data was written, before close() publishes it.
    tally.fault(|| registry.stop());
    assert_eq!(tally.operation(|| close(file)), Err(libc::EIO));
    assert!(
        mount.log().contains("registry unavailable"),
        "{}",
        mount.log()
    );
    let names: Vec<String> = fs::read_dir(spool.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let failed = names
        .iter()
        .find(|n| n.ends_with(".failed"))
        .expect("a .failed entry");
    let id = failed.trim_end_matches(".failed");
    assert_eq!(
        fs::read(spool.path().join(failed)).unwrap(),
        b"must not be lost"
    );
    let verdict = fs::read_to_string(spool.path().join(format!("{id}.verdict"))).unwrap();
    assert!(verdict.contains("unavailable"), "{verdict}");
    assert!(names.contains(&format!("{id}.push.json")));
    Row::new(
        "fault.publication-failed",
        Category::Fault,
        "a spooled push the registry refuses to publish",
        "the client gets the registry's error; the content stays in the spool as .failed beside its request and verdict",
        "failed_publication_is_kept_with_its_error",
    )
    .tally(&tally)
    .record();
}

fn session_client(registry: &Registry) -> SessionClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let command = exec_source(&registry.url(), &[]);
    let connector = ChildProcess::from_command_line(command.trim_start_matches("exec:")).unwrap();
    SessionClient::new(Box::new(connector))
}

fn upload(name: &str, content: Vec<u8>) -> FileUpload {
    use futures::StreamExt;
    FileUpload {
        file_name: name.to_owned(),
        size: content.len() as u64,
        format: Default::default(),
        created: None,
        attributes: Default::default(),
        body: futures::stream::once(async move { Ok(bytes::Bytes::from(content)) }).boxed(),
    }
}

async fn read_all(client: &SessionClient, repository: &str, tag: &str) -> Vec<u8> {
    use futures::TryStreamExt;
    let info = client
        .resolve(repository, &Reference::Tag(tag.to_owned()), None)
        .await
        .unwrap();
    let content = info.file.expect("a single file");
    let chunks: Vec<bytes::Bytes> = client
        .read(repository, &content, 0, content.length())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

/// 16 concurrent reads and pushes over one session.
#[test]
fn concurrent_reads_and_pushes_share_one_session() {
    let registry = Registry::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = Arc::new(session_client(&registry));
    let contents: Vec<Vec<u8>> = (0..8).map(|i| random_bytes(200_000 + i * 1000)).collect();
    runtime.block_on(async {
        for (i, content) in contents.iter().enumerate() {
            client
                .push_file(
                    "load/seed",
                    &format!("t{i}"),
                    upload("seed", content.clone()),
                )
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for (i, expected) in contents.iter().cloned().enumerate() {
            let reader = client.clone();
            tasks.push(tokio::spawn(async move {
                let got = read_all(&reader, "load/seed", &format!("t{i}")).await;
                assert_eq!(sha256_hex(&got), sha256_hex(&expected));
            }));
            let writer = client.clone();
            let content = random_bytes(150_000);
            tasks.push(tokio::spawn(async move {
                writer
                    .push_file("load/new", &format!("n{i}"), upload("new", content.clone()))
                    .await
                    .unwrap();
                assert_eq!(
                    read_all(&writer, "load/new", &format!("n{i}")).await,
                    content
                );
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    assert_eq!(client.sessions_opened(), 1);
    assert_eq!(registry_tags(&registry.url(), "load/new").len(), 8);
}

/// 1,000 small pushes in one session.
#[test]
fn thousand_small_pushes_in_one_session() {
    use futures::StreamExt;
    let registry = Registry::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = Arc::new(session_client(&registry));
    let started = Instant::now();
    runtime.block_on(async {
        futures::stream::iter(0..1000)
            .map(|i| {
                let client = client.clone();
                async move {
                    client
                        .push_file(
                            "many",
                            &format!("v{i}"),
                            upload("many", format!("file {i}").into_bytes()),
                        )
                        .await
                        .unwrap()
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
    });
    assert!(started.elapsed() < Duration::from_secs(240));
    assert_eq!(registry_tags(&registry.url(), "many").len(), 1000);
    assert_eq!(client.sessions_opened(), 1);
    let body = runtime.block_on(read_all(&client, "many", "v777"));
    assert_eq!(body, b"file 777");
}

fn surrogate(registry: &Registry, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut child = Command::new(binary("reposure-surrogate"))
        .args(args)
        .env("REPOSURE_REGISTRY", registry.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// The one-shot commands: push from stdin, list, pull (file and archive), delete, with
/// dots in names and tags, and clear failures.
#[test]
fn one_shot_commands() {
    let registry = Registry::start();
    let content = random_bytes(123_456);
    let pushed = surrogate(&registry, &["push", "my.app/tool:v1.2.3"], Some(&content));
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    assert_eq!(registry_tags(&registry.url(), "my.app/tool"), ["v1.2.3"]);

    let listed = surrogate(&registry, &["list"], None);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "my.app/tool:v1.2.3\n"
    );

    let unpacked = surrogate(&registry, &["pull", "my.app/tool:v1.2.3", "--unpack"], None);
    assert!(unpacked.status.success());
    assert_eq!(sha256_hex(&unpacked.stdout), sha256_hex(&content));

    // The archive is read by skopeo as both docker-archive and oci-archive.
    let archive = surrogate(&registry, &["pull", "my.app/tool:v1.2.3"], None);
    assert!(
        archive.status.success(),
        "{}",
        String::from_utf8_lossy(&archive.stderr)
    );
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("image.tar");
    fs::write(&tar, &archive.stdout).unwrap();
    let layer = reposure_tests::tools::manifest(&registry.host(), "my.app/tool:v1.2.3")["layers"]
        [0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    for transport in ["docker-archive", "oci-archive"] {
        let out = work.path().join(transport);
        skopeo_copy(
            &format!("{transport}:{}", tar.display()),
            &format!("dir:{}", out.display()),
        );
        let (_, data) = reposure_tests::tools::file_from_skopeo_dir(&out);
        assert_eq!(sha256_hex(&data), sha256_hex(&content), "{transport}");
        let manifest = fs::read_to_string(out.join("manifest.json")).unwrap();
        assert!(
            manifest.contains(&layer),
            "{transport} kept the layer digest"
        );
    }

    let deleted = surrogate(&registry, &["delete", "my.app/tool:v1.2.3"], None);
    assert!(deleted.status.success());
    assert!(registry_tags(&registry.url(), "my.app/tool").is_empty());

    let missing = surrogate(&registry, &["pull", "my.app/tool:v1.2.3", "--unpack"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    let bad = surrogate(&registry, &["push", "Bad/Name"], Some(b"x"));
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lower case"));
    let no_registry = Command::new(binary("reposure-surrogate"))
        .arg("list")
        .env_remove("REPOSURE_REGISTRY")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&no_registry.stderr).contains("REPOSURE_REGISTRY"));
}

/// Files dropped into the spool the original way are published; dots survive; temps are
/// never published; deletes delete; what cannot be published stays with its reason.
#[test]
fn original_spool_names() {
    let registry = Registry::start();
    let spool = tempfile::tempdir().unwrap();
    let _spooler = spooler(&registry, spool.path());
    let write = |name: &str, bytes: &[u8]| {
        let temp = spool.path().join(format!("{name}~"));
        fs::write(&temp, bytes).unwrap();
        fs::rename(&temp, spool.path().join(name)).unwrap();
    };
    write("apps\\tool:1.2", b"tool one point two");
    fs::write(spool.path().join("partial~"), b"still copying").unwrap();
    assert!(wait_until(Duration::from_secs(10), || registry_tags(
        &registry.url(),
        "apps/tool"
    ) == ["1.2"]));
    write("apps\\tool:1.2!", b"");
    assert!(wait_until(Duration::from_secs(10), || registry_tags(
        &registry.url(),
        "apps/tool"
    )
    .is_empty()));
    write("image.tar", b"not an archive this version reads");
    assert!(wait_until(Duration::from_secs(10), || spool
        .path()
        .join("image.tar.failed")
        .exists()));
    let verdict = fs::read_to_string(spool.path().join("image.tar.verdict")).unwrap();
    assert!(verdict.contains("not one"), "{verdict}");
    assert!(spool.path().join("partial~").exists());
    assert!(registry_tags(&registry.url(), "partial").is_empty());
}

/// Runs the surrogate configured the way the operator's pod spec configures it: by
/// `REPOSURE_*` environment variables only.
fn surrogate_in_pod(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    Command::new(binary("reposure-surrogate"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The pod's probes: readiness (`check`: the registry answers with the configured
/// credentials) and liveness (`check --spooler-only`: the spooler holds its lock).
#[test]
fn check_is_the_pods_readiness_and_liveness() {
    let registry = Registry::start();
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_str().unwrap();
    let url = registry.url();
    let env = [
        ("REPOSURE_REGISTRY", url.as_str()),
        ("REPOSURE_SPOOL", spool_dir),
    ];
    // No spooler yet: neither live nor ready (a session could not publish a push), and
    // each says why.
    for probe in [&["check", "--spooler-only"][..], &["check"][..]] {
        let dead = surrogate_in_pod(&env, probe);
        assert!(!dead.status.success());
        assert!(String::from_utf8_lossy(&dead.stderr).contains("no spooler is running"));
    }
    let _spooler = spooler(&registry, spool.path());
    for probe in [&["check", "--spooler-only"][..], &["check"][..]] {
        let ok = surrogate_in_pod(&env, probe);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }
    // An unreachable registry: unready, within the probe's time, while liveness holds.
    let unreachable = format!("http://127.0.0.1:{}", reposure_tests::free_port());
    let env = [
        ("REPOSURE_REGISTRY", unreachable.as_str()),
        ("REPOSURE_SPOOL", spool_dir),
    ];
    let started = Instant::now();
    assert!(!surrogate_in_pod(&env, &["check"]).status.success());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(
        surrogate_in_pod(&env, &["check", "--spooler-only"])
            .status
            .success()
    );
}

/// The credentials of a `kubernetes.io/dockerconfigjson` Secret, mounted as a file.
#[test]
fn docker_config_credentials_from_a_file() {
    let registry = Registry::start_with(RegistryConfig {
        credentials: Some(("alice".into(), "s3cr3t-pw".into())),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.json");
    let auth = |user_password: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(user_password)
    };
    let url = registry.url();
    let write_config = |user_password: &str| {
        fs::write(
            &config,
            format!(
                r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
                registry.host(),
                auth(user_password)
            ),
        )
        .unwrap();
    };
    let config_path = config.to_str().unwrap();
    let env = [
        ("REPOSURE_REGISTRY", url.as_str()),
        ("REPOSURE_DOCKER_CONFIG_FILE", config_path),
    ];

    write_config("alice:s3cr3t-pw");
    let ready = surrogate_in_pod(&env, &["check"]);
    assert!(
        ready.status.success(),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );
    let pushed = Command::new(binary("reposure-surrogate"))
        .args(["push", "team/app:v1"])
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"payload")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    write_config("alice:wrong");
    let refused = surrogate_in_pod(&env, &["check"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("refused the credentials") && !message.contains("wrong"),
        "{message}"
    );

    fs::write(
        &config,
        r#"{"auths": {"elsewhere:5000": {"auth": "eDp5"}}}"#,
    )
    .unwrap();
    let missing = surrogate_in_pod(&env, &["check"]);
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(message.contains("has no entry for 127.0.0.1:"), "{message}");
}
