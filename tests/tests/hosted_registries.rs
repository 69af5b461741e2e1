//! Registries with token authentication, as Docker Hub, GHCR, Quay, Harbor and GitLab run
//! it: the reference registry with `auth: token` against the harness's token server
//! (ES256 tokens, users with passwords, anonymous pull only, the catalog for users only).
//! Every case has skopeo do the same operation against the same setup first, so a failure
//! is Reposure's and not the harness's.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use reposure_tests::apiserver::ApiServer;
use reposure_tests::cli::{failed, ok, reposure_with};
use reposure_tests::mount::{Mount, exec_source};
use reposure_tests::posix::{names, write_and_close};
use reposure_tests::proxy::{BlobRedirect, Class, Fault, FaultProxy};
use reposure_tests::registry::TokenRegistry;
use reposure_tests::token_server::scope_key;
use reposure_tests::tools::{run, umoci_single_file_image};
use reposure_tests::{binary, random_bytes};

/// The user Reposure authenticates as.
const USER: &str = "alice";
const PASSWORD: &str = "correct-horse-battery";
/// The user the peer (skopeo) authenticates as, so the token server tells their requests
/// apart.
const PEER: &str = "peer";
const PEER_PASSWORD: &str = "skopeo-checks";

/// A token registry with two users and anonymous pull.
fn token_registry() -> TokenRegistry {
    TokenRegistry::start(&[(USER, PASSWORD), (PEER, PEER_PASSWORD)], true)
}

/// Token requests Reposure made (as `account`, `None` for anonymous) for exactly `scopes`.
fn tokens_for(registry: &TokenRegistry, account: Option<&str>, scopes: &[&str]) -> usize {
    let key = scope_key(scopes.iter().copied());
    registry
        .tokens
        .log()
        .iter()
        .filter(|r| r.account.as_deref() == account && r.scopes.join(" ") == key)
        .count()
}

/// Writes a Docker config with the user's entry for `host`, as `docker login` leaves it.
fn docker_config(path: &Path, host: &str) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    fs::write(
        path,
        format!(r#"{{"auths": {{"{host}": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
}

fn password_file(dir: &Path) -> String {
    let path = dir.join("password");
    fs::write(&path, format!("{PASSWORD}\n")).unwrap();
    path.display().to_string()
}

/// skopeo pushes a single-file image (made by umoci) as `repository:tag` with the user's
/// credentials: the baseline that the registry and its token server work.
fn skopeo_push_file(registry: &TokenRegistry, repository: &str, tag: &str, content: &[u8]) {
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_single_file_image(work.path(), "v", "file", content);
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{PEER}:{PEER_PASSWORD}"),
            &format!("oci:{}:v", layout.display()),
            &format!("docker://{}/{repository}:{tag}", registry.host()),
        ],
    );
}

/// Whether skopeo, with the user's credentials, finds `repository:tag`.
fn skopeo_sees(registry: &TokenRegistry, repository: &str, tag: &str) -> bool {
    std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &format!("{PEER}:{PEER_PASSWORD}"),
            &format!("docker://{}/{repository}:{tag}", registry.host()),
        ])
        .output()
        .unwrap()
        .status
        .success()
}

/// An anonymous mount of a token registry reads what it may (anonymous pull tokens) and
/// refuses to push: `close()` fails with EACCES, the log says the registry refused, and
/// nothing is tagged. With no catalog for anonymous users, the root lists what the mount
/// has seen.
#[test]
fn anonymous_mount_reads_and_a_push_fails_with_eacces() {
    let registry = token_registry();
    let content = random_bytes(100_000);
    skopeo_push_file(&registry, "docs/readme", "latest", &content);
    // Baseline: skopeo reads it anonymously.
    let work = tempfile::tempdir().unwrap();
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{}/docs/readme", registry.host()),
            &format!("dir:{}", work.path().join("copy").display()),
        ],
    );

    let mount = Mount::new(&registry.url(), &[]);
    // umoci's image holds the file as `file` in a tar layer: it reads as that file.
    assert_eq!(fs::read(mount.path("docs/readme")).unwrap(), content);
    assert!(names(mount.root()).contains(&"docs".to_owned()));
    assert_eq!(
        write_and_close(&mount.path("docs/readme:v2"), b"refused"),
        Err(libc::EACCES)
    );
    assert!(!skopeo_sees(&registry, "docs/readme", "v2"));
    let log = mount.log();
    assert!(
        log.contains("push failed") && log.contains("refused"),
        "{log}"
    );
    assert!(log.contains("no catalog"), "{log}");
    reposure_tests::contract::exercises(&["registry.token-auth", "registry.no-catalog"]);
}

/// With credentials everything works through the mount, and tokens are asked for per
/// scope, once per lifetime, not once per operation. `mv` across repositories mounts the
/// blobs with one token holding both repositories' scopes: no blob bytes pass through.
#[test]
fn a_user_mount_does_everything_with_one_token_per_scope() {
    let registry = token_registry();
    let secret = tempfile::tempdir().unwrap();
    let options = [
        format!("username={USER}"),
        format!("password_file={}", password_file(secret.path())),
    ];
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let mount = Mount::new(&registry.url(), &options);
    let content = random_bytes(300_000);
    fs::create_dir(mount.path("team")).unwrap();
    for i in 0..5 {
        write_and_close(&mount.path(&format!("team/tool:v{i}")), &content).unwrap();
    }
    assert!(skopeo_sees(&registry, "team/tool", "v4"));
    assert_eq!(fs::read(mount.path("team/tool:v3")).unwrap(), content);
    assert_eq!(names(mount.root()), ["team"]);
    let listed = names(&mount.path("team"));
    assert_eq!(
        listed,
        ["tool:v0", "tool:v1", "tool:v2", "tool:v3", "tool:v4"]
    );
    for name in &listed {
        let meta = fs::metadata(mount.path(&format!("team/{name}"))).unwrap();
        assert_eq!(meta.len(), content.len() as u64);
    }
    assert_eq!(
        tokens_for(&registry, Some(USER), &["repository:team/tool:pull,push"]),
        1,
        "five pushes share one push token: {:?}",
        registry.tokens.log()
    );

    fs::create_dir(mount.path("prod")).unwrap();
    fs::rename(mount.path("team/tool:v1"), mount.path("prod/tool")).unwrap();
    assert_eq!(fs::read(mount.path("prod/tool")).unwrap(), content);
    assert!(!mount.path("team/tool:v1").exists());
    let mount_scope = [
        "repository:prod/tool:pull,push",
        "repository:team/tool:pull",
    ];
    assert_eq!(tokens_for(&registry, Some(USER), &mount_scope), 1);
    let registry_log = registry.registry.log();
    assert!(
        registry_log.contains("mount=") && registry_log.contains("from=team%2Ftool"),
        "the blobs were mounted"
    );
    assert!(
        !registry_log
            .lines()
            .any(|l| l.contains("PATCH /v2/prod/tool/blobs/uploads")),
        "no blob bytes were uploaded to prod/tool"
    );

    fs::hard_link(mount.path("prod/tool"), mount.path("prod/tool:stable")).unwrap();
    assert!(skopeo_sees(&registry, "prod/tool", "stable"));
    fs::remove_file(mount.path("prod/tool:stable")).unwrap();
    assert!(!skopeo_sees(&registry, "prod/tool", "stable"));
    assert!(skopeo_sees(&registry, "prod/tool", "latest"));
    for (scopes, what) in [
        (&["registry:catalog:*"][..], "the catalog"),
        (&["repository:team/tool:pull"][..], "reads of team/tool"),
        (&["repository:prod/tool:delete"][..], "deletes in prod/tool"),
    ] {
        assert_eq!(
            tokens_for(&registry, Some(USER), scopes),
            1,
            "one token for {what}: {:?}",
            registry.tokens.log()
        );
    }
    reposure_tests::contract::exercises(&["registry.token-auth", "registry.token-cache"]);
}

/// A token is renewed shortly before it expires (at most half its lifetime early): with
/// tokens of three seconds, a read after four asks for a new one, and reads within the
/// lifetime ask for none.
#[test]
fn expired_tokens_are_renewed() {
    let registry = token_registry();
    registry.tokens.set_lifetime(Duration::from_secs(3));
    skopeo_push_file(&registry, "app", "latest", b"one");
    let mount = Mount::new(&registry.url(), &["metadata_ttl=0"]);
    assert_eq!(fs::read(mount.path("app")).unwrap(), b"one");
    let scope = ["repository:app:pull"];
    assert_eq!(tokens_for(&registry, None, &scope), 1);
    assert_eq!(fs::read(mount.path("app")).unwrap(), b"one");
    assert_eq!(tokens_for(&registry, None, &scope), 1);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(fs::read(mount.path("app")).unwrap(), b"one");
    assert_eq!(tokens_for(&registry, None, &scope), 2);
    reposure_tests::contract::exercises(&["registry.token-cache"]);
}

/// With no credential option, the mount uses what `docker login`, `podman login` or a
/// credential helper left: a Docker config's `auths`, a helper named in `credHelpers`, and
/// the containers tools' auth.json. skopeo reads the same auth.json for the same push.
#[test]
fn credentials_come_from_docker_config_helpers_and_auth_json() {
    let registry = token_registry();
    let host = registry.host();

    // A Docker config with the entry `docker login` writes.
    let docker = tempfile::tempdir().unwrap();
    docker_config(&docker.path().join("config.json"), &host);
    let env = [("DOCKER_CONFIG", docker.path().to_str().unwrap())];
    let mount = Mount::try_new(&registry.url(), &[], &env).unwrap();
    write_and_close(&mount.path("from-docker"), b"docker config").unwrap();
    assert!(skopeo_sees(&registry, "from-docker", "latest"));
    let log = mount.log();
    assert!(
        log.contains(&docker.path().join("config.json").display().to_string())
            && !log.contains(PASSWORD),
        "{log}"
    );
    drop(mount);

    // A credential helper, as Docker Desktop, pass or a cloud CLI install.
    let helpers = tempfile::tempdir().unwrap();
    let helper = helpers.path().join("docker-credential-reposuretest");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r server\n[ \"$server\" = \"{host}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\necho '{{\"ServerURL\":\"{host}\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}'\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    let config = tempfile::tempdir().unwrap();
    fs::write(
        config.path().join("config.json"),
        format!(r#"{{"credHelpers": {{"{host}": "reposuretest"}}}}"#),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        helpers.path().display(),
        std::env::var("PATH").unwrap()
    );
    let env = [
        ("DOCKER_CONFIG", config.path().to_str().unwrap()),
        ("PATH", path.as_str()),
    ];
    let mount = Mount::try_new(&registry.url(), &[], &env).unwrap();
    write_and_close(&mount.path("from-helper"), b"helper").unwrap();
    assert!(skopeo_sees(&registry, "from-helper", "latest"));
    assert!(mount.log().contains("docker-credential-reposuretest"));
    drop(mount);

    // The containers tools' auth.json ($REGISTRY_AUTH_FILE), which skopeo reads too.
    let containers = tempfile::tempdir().unwrap();
    let auth_file = containers.path().join("auth.json");
    docker_config(&auth_file, &host);
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_single_file_image(work.path(), "v", "file", b"skopeo");
    let pushed = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:v", layout.display()),
            &format!("docker://{host}/from-skopeo:latest"),
        ])
        .env("REGISTRY_AUTH_FILE", &auth_file)
        .status()
        .unwrap();
    assert!(pushed.success(), "skopeo pushes with the auth.json");
    let env = [
        ("REGISTRY_AUTH_FILE", auth_file.to_str().unwrap()),
        ("DOCKER_CONFIG", "/nonexistent"),
    ];
    let mount = Mount::try_new(&registry.url(), &[], &env).unwrap();
    write_and_close(&mount.path("from-auth-json"), b"auth.json").unwrap();
    assert!(skopeo_sees(&registry, "from-auth-json", "latest"));
    assert_eq!(fs::read(mount.path("from-skopeo")).unwrap(), b"skopeo");
    reposure_tests::contract::exercises(&["registry.user-credentials"]);
}

/// Explicit options win over what a config holds: wrong credentials given explicitly
/// fail the mount with one line naming the options, though the Docker config is right.
#[test]
fn explicit_credentials_win_and_a_refusal_names_the_options() {
    let registry = token_registry();
    let docker = tempfile::tempdir().unwrap();
    docker_config(&docker.path().join("config.json"), &registry.host());
    let secret = tempfile::tempdir().unwrap();
    let wrong = secret.path().join("wrong");
    fs::write(&wrong, "not-the-password").unwrap();
    let failure = Mount::try_new(
        &registry.url(),
        &[
            &format!("username={USER}"),
            &format!("password_file={}", wrong.display()),
        ],
        &[("DOCKER_CONFIG", docker.path().to_str().unwrap())],
    )
    .err()
    .expect("wrong explicit credentials fail the mount");
    assert_eq!(
        failure.stderr.trim().lines().count(),
        1,
        "{}",
        failure.stderr
    );
    assert!(
        failure.stderr.contains("refused the credentials")
            && failure.stderr.contains("username=")
            && !failure.stderr.contains("not-the-password"),
        "{}",
        failure.stderr
    );
    reposure_tests::contract::exercises(&["registry.user-credentials"]);
}

/// The CLI's image commands against the token registry: push, pull, list and delete with
/// --username/--password-file; anonymously, pull works, and list says the registry has
/// no catalog for it.
#[test]
fn cli_image_commands_against_a_token_registry() {
    let registry = token_registry();
    let secret = tempfile::tempdir().unwrap();
    let password = password_file(secret.path());
    let file = secret.path().join("hello.txt");
    fs::write(&file, b"hello, tokens").unwrap();
    let url = registry.url();
    let as_user = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--username", USER, "--password-file", &password]);
        reposure_with(&all, &[("DOCKER_CONFIG", "/nonexistent")])
    };
    ok(&as_user(&[
        "image",
        "push",
        &url,
        "greet/hello",
        file.to_str().unwrap(),
    ]));
    assert!(skopeo_sees(&registry, "greet/hello", "latest"));
    let pulled = ok(&reposure_with(
        &["image", "pull", &url, "greet/hello", "--unpack"],
        &[("DOCKER_CONFIG", "/nonexistent")],
    ));
    assert_eq!(pulled, "hello, tokens");
    assert!(ok(&as_user(&["image", "list", &url])).contains("greet/hello:latest"));
    failed(
        &reposure_with(
            &["image", "list", &url],
            &[("DOCKER_CONFIG", "/nonexistent")],
        ),
        1,
        "no catalog",
    );
    failed(
        &reposure_with(
            &["image", "delete", &url, "greet/hello"],
            &[("DOCKER_CONFIG", "/nonexistent")],
        ),
        4,
        "--username and --password-file",
    );
    ok(&as_user(&["image", "delete", &url, "greet/hello"]));
    assert!(!skopeo_sees(&registry, "greet/hello", "latest"));
}

/// The surrogate against the token registry: its one-shots with a Docker config file (as
/// a pod's Secret gives it), and a mount through it (`exec:`).
#[test]
fn the_surrogate_and_exec_mounts_against_a_token_registry() {
    let registry = token_registry();
    let secret = tempfile::tempdir().unwrap();
    let config = secret.path().join("dockerconfigjson");
    docker_config(&config, &registry.host());
    let surrogate = |args: &[&str], stdin: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new(binary("reposure-surrogate"))
            .args(["--registry", &registry.url()])
            .arg("--docker-config-file")
            .arg(&config)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "surrogate {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    };
    surrogate(&["push", "oneshot/file"], b"pushed by the surrogate");
    assert!(skopeo_sees(&registry, "oneshot/file", "latest"));
    assert_eq!(
        surrogate(&["pull", "oneshot/file", "--unpack"], b""),
        b"pushed by the surrogate"
    );
    let listed = String::from_utf8(surrogate(&["list"], b"")).unwrap();
    assert!(listed.contains("oneshot/file:latest"), "{listed}");

    let source = exec_source(
        &registry.url(),
        &["--docker-config-file", config.to_str().unwrap()],
    );
    let mount = Mount::new(&source, &[]);
    write_and_close(&mount.path("oneshot/through-exec"), b"exec").unwrap();
    assert!(skopeo_sees(&registry, "oneshot/through-exec", "latest"));
    assert_eq!(
        fs::read(mount.path("oneshot/file")).unwrap(),
        b"pushed by the surrogate"
    );
}

/// The Kubernetes path: a Registry whose authorization Secret holds a dockerconfigjson
/// for the token registry; the surrogate pod reads it as the operator's pod spec says
/// (`REPOSURE_DOCKER_CONFIG_FILE`), and the mount pushes and reads through it.
#[test]
fn a_kubernetes_registry_with_a_dockerconfigjson_secret() {
    let registry = token_registry();
    let secret = tempfile::tempdir().unwrap();
    let config = secret.path().join(".dockerconfigjson");
    docker_config(&config, &registry.host());
    let mut cluster = ApiServer::start("default");
    cluster.add_ready_registry_with_env(
        "default",
        "hub",
        &registry.url(),
        &[("REPOSURE_DOCKER_CONFIG_FILE", config.to_str().unwrap())],
    );
    let kubeconfig = format!("kubeconfig={}", cluster.kubeconfig().display());
    let mount = Mount::new("hub", &[&kubeconfig]);
    fs::create_dir(mount.path("cluster")).unwrap();
    write_and_close(&mount.path("cluster/file"), b"through the cluster").unwrap();
    assert!(skopeo_sees(&registry, "cluster/file", "latest"));
    assert_eq!(
        fs::read(mount.path("cluster/file")).unwrap(),
        b"through the cluster"
    );
    assert!(names(mount.root()).contains(&"cluster".to_owned()));
}

/// Mount options for the test user.
fn user_options(secret: &Path) -> Vec<String> {
    vec![
        format!("username={USER}"),
        format!("password_file={}", password_file(secret)),
    ]
}

fn as_strs(options: &[String]) -> Vec<&str> {
    options.iter().map(String::as_str).collect()
}

/// A registry without a catalog (the proxy answers `_catalog` with 404 `UNSUPPORTED`, as
/// Docker Hub, GHCR and GitLab refuse it): the mount still mounts, the root lists the
/// repositories named in `repositories=` and those used since, and paths the user names
/// work: a read, a repository's tags, a push to a new repository.
#[test]
fn a_registry_without_a_catalog_mounts_and_named_paths_work() {
    let registry = token_registry();
    skopeo_push_file(&registry, "library/alpine", "3.20", b"alpine");
    skopeo_push_file(&registry, "org/app", "v1", b"app one");
    skopeo_push_file(&registry, "org/app", "v2", b"app two");
    let proxy = FaultProxy::start(registry.registry.port);
    proxy.catalog_unsupported(true);
    let secret = tempfile::tempdir().unwrap();
    let mut options = user_options(secret.path());
    options.push("repositories=org/app".into());
    let mount = Mount::new(&proxy.url(), &as_strs(&options));
    assert_eq!(names(mount.root()), ["org"]);
    assert_eq!(names(&mount.path("org")), ["app:v1", "app:v2"]);
    assert_eq!(
        fs::read(mount.path("library/alpine:3.20")).unwrap(),
        b"alpine"
    );
    assert_eq!(names(mount.root()), ["library", "org"]);
    assert_eq!(names(&mount.path("library")), ["alpine:3.20"]);
    // A new bare name would be taken for a namespace here: the tag is named.
    write_and_close(&mount.path("org/tools/jq:latest"), b"a new repository").unwrap();
    assert!(skopeo_sees(&registry, "org/tools/jq", "latest"));
    assert_eq!(names(&mount.path("org/tools")), ["jq"]);
    assert_eq!(names(&mount.path("org")), ["app:v1", "app:v2", "tools"]);
    assert!(proxy.catalog_refusals() > 0);
    assert!(mount.log().contains("no catalog"));
    reposure_tests::contract::exercises(&["registry.no-catalog"]);
}

/// Blob reads redirected to another origin (object storage with presigned URLs that refuse
/// an `Authorization` header, as most hosted registries do): followed with the Range kept
/// and the header dropped, 64 MiB read byte-exact and verified, and a read at a random
/// offset fetches the right bytes. skopeo reads the same image through the same proxy.
#[test]
fn blob_reads_follow_redirects_to_storage_without_credentials() {
    let registry = token_registry();
    let content = random_bytes(64 << 20);
    skopeo_push_file(&registry, "big/data", "latest", &content);
    let proxy = FaultProxy::start(registry.registry.port);
    proxy.redirect_blobs(Some(
        BlobRedirect::new(307).with_upstream_auth(registry.tokens.pull_authorization()),
    ));
    let work = tempfile::tempdir().unwrap();
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--src-creds",
            &format!("{PEER}:{PEER_PASSWORD}"),
            &format!("docker://127.0.0.1:{}/big/data", proxy.port),
            &format!("dir:{}", work.path().join("copy").display()),
        ],
    );
    let served_to_skopeo = proxy.storage_served();
    assert!(served_to_skopeo > 0 && proxy.storage_refused() == 0);

    let secret = tempfile::tempdir().unwrap();
    let mount = Mount::new(&proxy.url(), &as_strs(&user_options(secret.path())));
    let read = fs::read(mount.path("big/data")).unwrap();
    assert!(
        read == content,
        "64 MiB read through the redirect, byte-exact"
    );
    let file = fs::File::open(mount.path("big/data")).unwrap();
    let offset = 33_554_467u64;
    let mut window = vec![0u8; 100_000];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut window, offset).unwrap();
    assert_eq!(window, content[offset as usize..offset as usize + 100_000]);
    assert!(proxy.storage_served() > served_to_skopeo);
    assert_eq!(
        proxy.storage_refused(),
        0,
        "no Authorization reached the storage"
    );
    reposure_tests::contract::exercises(&["registry.redirects"]);
}

/// A registry that throttles (429 with `Retry-After`, as Docker Hub does): `ls -l` and
/// `cat` wait it out and complete, and the log says the registry throttled.
#[test]
fn throttled_listings_and_reads_complete() {
    let registry = token_registry();
    for tag in ["a", "b", "c"] {
        skopeo_push_file(&registry, "busy/app", tag, tag.as_bytes());
    }
    let proxy = FaultProxy::start(registry.registry.port);
    proxy.inject_times(Class::ManifestGet, Fault::RateLimited(1), 2);
    proxy.inject_times(Class::Other, Fault::RateLimited(1), 2);
    proxy.inject_times(Class::BlobGet, Fault::RateLimited(1), 1);
    let secret = tempfile::tempdir().unwrap();
    let mount = Mount::new(&proxy.url(), &as_strs(&user_options(secret.path())));
    let listing = run("ls", &["-l", mount.path("busy").to_str().unwrap()]);
    for tag in ["app:a", "app:b", "app:c"] {
        assert!(listing.contains(tag), "{listing}");
    }
    assert_eq!(fs::read(mount.path("busy/app:b")).unwrap(), b"b");
    assert_eq!(proxy.rate_limited(), 5);
    assert!(mount.log().contains("throttled"));
    reposure_tests::contract::exercises(&["registry.throttling"]);
}

/// Uploads in chunks (`PATCH` with `Content-Range`, at most `max_chunk=` each, for
/// registries that cap a request's size) against the real registry: the blob arrives whole
/// and skopeo copies the image out byte-exact.
#[test]
fn chunked_uploads_reach_the_registry_whole() {
    let registry = token_registry();
    let secret = tempfile::tempdir().unwrap();
    let mut options = user_options(secret.path());
    options.push("max_chunk=1M".into());
    let mount = Mount::new(&registry.url(), &as_strs(&options));
    let content = random_bytes(5 << 20);
    fs::create_dir(mount.path("chunks")).unwrap();
    write_and_close(&mount.path("chunks/file"), &content).unwrap();
    let patches = registry
        .registry
        .log()
        .lines()
        .filter(|l| l.contains("\"PATCH /v2/chunks/file/blobs/uploads/"))
        .count();
    assert!(
        patches >= 5,
        "{patches} PATCH requests for 5 MiB in 1 MiB chunks"
    );
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("copy");
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--src-creds",
            &format!("{PEER}:{PEER_PASSWORD}"),
            &format!("docker://{}/chunks/file", registry.host()),
            &format!("dir:{}", copy.display()),
        ],
    );
    let (_, extracted) = reposure_tests::tools::file_from_skopeo_dir(&copy);
    assert!(extracted == content);
    reposure_tests::contract::exercises(&["registry.chunked-uploads"]);
}

/// `platform=` picks one image of a multi-platform index, as `skopeo --override-arch`
/// does: the image for that platform reads as its file; without the option the index reads
/// as the archive of every platform; a platform the index lacks is ENOENT, and the log
/// lists the ones it has.
#[test]
fn platform_picks_one_image_of_an_index() {
    let registry = reposure_tests::registry::Registry::start();
    {
        let mount = Mount::new(&registry.url(), &[]);
        write_and_close(&mount.path("app:amd64"), b"built for amd64").unwrap();
        write_and_close(&mount.path("app:arm64"), b"built for arm64").unwrap();
    }
    let entry = |tag: &str, arch: &str| {
        let raw = run(
            "curl",
            &[
                "-sf",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                &format!("{}/v2/app/manifests/{tag}", registry.url()),
            ],
        );
        let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
        serde_json::json!({
            "mediaType": manifest["mediaType"],
            "digest": format!("sha256:{}", reposure_tests::sha256_hex(raw.as_bytes())),
            "size": raw.len(),
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("amd64", "amd64"), entry("arm64", "arm64")],
    });
    let work = tempfile::tempdir().unwrap();
    let index_file = work.path().join("index.json");
    fs::write(&index_file, serde_json::to_vec(&index).unwrap()).unwrap();
    run(
        "curl",
        &[
            "-sf",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.index.v1+json",
            "--data-binary",
            &format!("@{}", index_file.display()),
            &format!("{}/v2/app/manifests/multi", registry.url()),
        ],
    );
    // skopeo picks the arm64 image of the index.
    let copy = work.path().join("arm64");
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--override-arch",
            "arm64",
            "--src-tls-verify=false",
            &format!("docker://{}/app:multi", registry.host()),
            &format!("dir:{}", copy.display()),
        ],
    );
    assert_eq!(
        reposure_tests::tools::file_from_skopeo_dir(&copy).1,
        b"built for arm64"
    );

    let arm = Mount::new(&registry.url(), &["platform=linux/arm64"]);
    assert_eq!(fs::read(arm.path("app:multi")).unwrap(), b"built for arm64");
    let whole = Mount::new(&registry.url(), &[]);
    let archive = fs::read(whole.path("app:multi")).unwrap();
    assert_ne!(archive, b"built for arm64");
    let s390x = Mount::new(&registry.url(), &["platform=linux/s390x"]);
    assert_eq!(
        reposure_tests::posix::errno_of(fs::read(s390x.path("app:multi"))),
        libc::ENOENT
    );
    assert!(
        s390x.log().contains("linux/amd64, linux/arm64"),
        "{}",
        s390x.log()
    );
    let pulled = ok(&reposure_with(
        &[
            "image",
            "pull",
            &registry.url(),
            "app:multi",
            "--unpack",
            "--platform",
            "linux/amd64",
        ],
        &[],
    ));
    assert_eq!(pulled, "built for amd64");
    reposure_tests::contract::exercises(&["registry.platform"]);
}
