//! `reposure registry serve`: a registry on localhost that the tools people use push to and
//! pull from — skopeo, podman, buildah and oras-py, with no flag (the endpoint logs them in
//! and allows them plain HTTP while it runs) — through a direct source and through a
//! cluster's Registry reached by the emulated API server's exec. What goes through the
//! endpoint is checked at the registry itself, by skopeo, digest for digest.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use reposure_tests::apiserver::ApiServer;
use reposure_tests::archives::{image_config, image_manifest, layout_archive, tar_of};
use reposure_tests::cli::{failed, reposure};
use reposure_tests::endpoint::Serve;
use reposure_tests::registry::{Registry, TokenRegistry};
use reposure_tests::reliability::{Category, Row, Tally};
use reposure_tests::tools::{Containers, oras, registry_tags, tag_digest};
use reposure_tests::{random_bytes, sha256_hex};

/// A multi-layer OCI image in an `oci-archive:` file; returns its manifest digest.
fn image_archive(path: &Path, layer_sizes: &[usize]) -> String {
    let layers: Vec<Vec<u8>> = layer_sizes
        .iter()
        .enumerate()
        .map(|(i, size)| tar_of(&[(&format!("layer{i}.bin"), &random_bytes(*size))]))
        .collect();
    let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    let config = image_config(&refs);
    let manifest = image_manifest(&config, &refs, 0);
    let mut blobs = vec![config.as_slice()];
    blobs.extend(refs);
    fs::write(path, layout_archive(&manifest, &blobs)).unwrap();
    format!("sha256:{}", sha256_hex(&manifest))
}

/// skopeo as the user who started the endpoint, with no TLS or credential flag for it.
fn skopeo(serve: &Serve, args: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .args(args)
        .envs(serve.env())
        .output()
        .expect("skopeo")
}

fn ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every blob the reference registry stores has the digest it is stored under.
fn no_corrupt_blob(registry: &Registry) {
    let blobs = registry.dir.path().join("docker/registry/v2/blobs/sha256");
    for prefix in fs::read_dir(&blobs).into_iter().flatten().flatten() {
        for blob in fs::read_dir(prefix.path()).unwrap().flatten() {
            let data = blob.path().join("data");
            if let Ok(bytes) = fs::read(&data) {
                assert_eq!(
                    sha256_hex(&bytes),
                    blob.file_name().to_string_lossy(),
                    "a blob whose content is not its digest"
                );
            }
        }
    }
}

/// The peers through a direct source: skopeo copies a three-layer image in and out
/// (digest unchanged at the registry), podman pushes and pulls one, buildah pushes what it
/// built, oras-py pushes and pulls a single-file artifact. None of them is given a flag.
#[test]
fn peers_push_and_pull_through_a_direct_source() {
    let registry = Registry::start();
    let mut serve = Serve::start(&registry.url(), &[]);
    assert_eq!(
        serve.cluster_host.as_deref(),
        Some(registry.host().as_str())
    );
    peers_push_and_pull(&registry, &mut serve);
}

/// The same through a cluster's Registry, reached only by the emulated API server's exec:
/// every request of every peer goes through the surrogate pod.
#[test]
fn peers_push_and_pull_through_a_kubernetes_registry() {
    let registry = Registry::start();
    let mut api = ApiServer::start("team");
    api.add_ready_registry("team", "default", &registry.url());
    let kubeconfig = api.kubeconfig().display().to_string();
    let mut serve = Serve::start("default", &["--kubeconfig", &kubeconfig]);
    assert!(serve.cluster_host.is_some());
    peers_push_and_pull(&registry, &mut serve);
    let execs = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("EXEC"))
        .count();
    assert!(execs >= 1, "the endpoint went through the pod");
}

/// skopeo, podman, buildah and oras-py through `serve`, checked at `registry`; then `serve`
/// stopped, and its logins checked gone.
fn peers_push_and_pull(registry: &Registry, serve: &mut Serve) {
    let endpoint = &serve.address.clone();
    let work = tempfile::tempdir().unwrap();

    // skopeo, in and out.
    let archive = work.path().join("app.tar");
    let digest = image_archive(&archive, &[300_000, 1_000_000, 50_000]);
    ok(&skopeo(
        serve,
        &[
            "copy",
            "--quiet",
            "--preserve-digests",
            &format!("oci-archive:{}", archive.display()),
            &format!("docker://{endpoint}/skopeo/app:v1"),
        ],
    ));
    assert_eq!(
        tag_digest(&registry.url(), "skopeo/app", "v1"),
        Some(digest.clone())
    );
    let out = work.path().join("out");
    ok(&skopeo(
        serve,
        &[
            "copy",
            "--quiet",
            "--preserve-digests",
            &format!("docker://{endpoint}/skopeo/app:v1"),
            &format!("oci:{}:app", out.display()),
        ],
    ));
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    let inspected = ok(&skopeo(
        serve,
        &[
            "inspect",
            "--raw",
            &format!("docker://{endpoint}/skopeo/app@{digest}"),
        ],
    ));
    assert_eq!(
        format!("sha256:{}", sha256_hex(inspected.as_bytes())),
        digest
    );
    let tags: serde_json::Value = serde_json::from_str(&ok(&skopeo(
        serve,
        &["list-tags", &format!("docker://{endpoint}/skopeo/app")],
    )))
    .unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));

    // podman: an image from the archive, pushed and pulled back.
    let podman = Containers::installed("podman")
        .expect("podman (scripts/install-deps.sh --tests installs it)")
        .with_env(&serve.env());
    podman.run(&[
        "pull",
        "--quiet",
        &format!("oci-archive:{}", archive.display()),
    ]);
    let images = podman.run(&["images", "--quiet"]);
    let image = images.lines().next().unwrap().to_owned();
    let digest_file = work.path().join("podman.digest");
    podman.run(&[
        "push",
        "--quiet",
        "--digestfile",
        digest_file.to_str().unwrap(),
        &image,
        &format!("{endpoint}/podman/app:v1"),
    ]);
    let pushed = fs::read_to_string(&digest_file).unwrap();
    assert_eq!(
        tag_digest(&registry.url(), "podman/app", "v1"),
        Some(pushed.trim().to_owned())
    );
    podman.run(&["rmi", "--all", "--force"]);
    podman.run(&["pull", "--quiet", &format!("{endpoint}/podman/app:v1")]);
    assert!(podman.run(&["images"]).contains("podman/app"));

    // buildah: an image built from scratch.
    let buildah = Containers::installed("buildah")
        .expect("buildah (scripts/install-deps.sh --tests installs it)")
        .with_env(&serve.env());
    let file = work.path().join("hello.txt");
    fs::write(&file, b"built by buildah\n").unwrap();
    let container = buildah.run(&["from", "scratch"]).trim().to_owned();
    buildah.run(&["copy", &container, file.to_str().unwrap(), "/hello.txt"]);
    buildah.run(&["commit", "--quiet", &container, "built"]);
    buildah.run(&[
        "push",
        "--quiet",
        "built",
        &format!("docker://{endpoint}/buildah/app:v1"),
    ]);
    assert_eq!(registry_tags(&registry.url(), "buildah/app"), ["v1"]);
    let config = reposure_tests::tools::manifest(&registry.host(), "buildah/app:v1");
    assert_eq!(config["layers"].as_array().unwrap().len(), 1);

    // oras-py (its basic-auth backend reads the Docker config the endpoint wrote): a
    // single-file artifact, pushed through the endpoint, pulled from the registry directly
    // and through the endpoint.
    let notes = random_bytes(40_000);
    fs::write(work.path().join("notes.bin"), &notes).unwrap();
    let client =
        "import oras.client\nc = oras.client.OrasClient(insecure=True, auth_backend='basic')\n";
    oras(
        &format!("{client}c.push(files=['notes.bin'], target='{endpoint}/oras/notes:v1')"),
        work.path(),
        &serve.env(),
    );
    for (host, pulled) in [(registry.host(), "direct"), (endpoint.clone(), "through")] {
        let dir = work.path().join(pulled);
        fs::create_dir(&dir).unwrap();
        oras(
            &format!(
                "{client}c.pull(target='{host}/oras/notes:v1', outdir='{}')",
                dir.display()
            ),
            work.path(),
            &serve.env(),
        );
        assert_eq!(
            sha256_hex(&fs::read(dir.join("notes.bin")).unwrap()),
            sha256_hex(&notes)
        );
    }
    no_corrupt_blob(registry);

    // Stopped: the logins and the drop-in are taken back.
    let (status, said) = serve.stop();
    let home = serve.home();
    assert!(status.success(), "{said}");
    let auth: serde_json::Value =
        serde_json::from_slice(&fs::read(home.join("run/containers/auth.json")).unwrap()).unwrap();
    assert_eq!(auth["auths"], serde_json::json!({}));
    let drop_ins = fs::read_dir(home.join(".config/containers/registries.conf.d"))
        .unwrap()
        .count();
    assert_eq!(drop_ins, 0);
}

/// The password the endpoint wrote to its user's Docker config.
fn serve_password(serve: &Serve) -> String {
    use base64::Engine;
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(serve.home().join(".docker/config.json")).unwrap())
            .unwrap();
    let auth = config["auths"][&serve.address]["auth"].as_str().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .unwrap();
    String::from_utf8(decoded)
        .unwrap()
        .split_once(':')
        .unwrap()
        .1
        .to_owned()
}

/// The session to the cluster is cut in the middle of an upload: that push fails (and makes
/// no blob), the endpoint keeps listening, and the retry, on a new session, succeeds. Then
/// 16 pushes at once, all through the one session.
#[test]
fn a_lost_session_fails_only_the_upload_in_flight() {
    let tally = Tally::default();
    let registry = Registry::start();
    let mut api = ApiServer::start("team");
    api.add_ready_registry("team", "default", &registry.url());
    let kubeconfig = api.kubeconfig().display().to_string();
    let serve = Serve::start("default", &["--kubeconfig", &kubeconfig]);
    let endpoint = serve.address.clone();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("big.tar");
    let digest = image_archive(&archive, &[8_000_000]);
    let copy = || {
        tally.operation(|| {
            skopeo(
                &serve,
                &[
                    "copy",
                    "--quiet",
                    "--retry-times",
                    "0",
                    "--preserve-digests",
                    &format!("oci-archive:{}", archive.display()),
                    &format!("docker://{endpoint}/cut/app:v1"),
                ],
            )
        })
    };
    tally.fault(|| {
        api.faults()
            .drop_after_stdin_bytes
            .store(3_000_000, std::sync::atomic::Ordering::SeqCst)
    });
    let cut = copy();
    assert!(
        !cut.status.success(),
        "the push across the lost session failed"
    );
    assert!(tag_digest(&registry.url(), "cut/app", "v1").is_none());
    no_corrupt_blob(&registry);
    ok(&copy());
    assert_eq!(tag_digest(&registry.url(), "cut/app", "v1"), Some(digest));
    no_corrupt_blob(&registry);

    // 16 at once, bounded by a timeout each.
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let archive = work.path().join(format!("small-{i}.tar"));
            let digest = image_archive(&archive, &[100_000 + i * 1000, 20_000]);
            let (env, endpoint) = (serve.env(), endpoint.clone());
            std::thread::spawn(move || {
                let output = Command::new("timeout")
                    .args(["120", "skopeo", "copy", "--quiet", "--preserve-digests"])
                    .arg(format!("oci-archive:{}", archive.display()))
                    .arg(format!("docker://{endpoint}/many/app{i}:v1"))
                    .envs(env)
                    .output()
                    .unwrap();
                (i, digest, output)
            })
        })
        .collect();
    for thread in threads {
        let (i, digest, output) = tally.operation(|| thread.join().unwrap());
        ok(&output);
        assert_eq!(
            tag_digest(&registry.url(), &format!("many/app{i}"), "v1"),
            Some(digest)
        );
    }
    no_corrupt_blob(&registry);
    Row::new(
        "fault.endpoint-session-lost",
        Category::Fault,
        "`registry serve` for a cluster Registry: the exec connection cut 3 MB into an 8 MB layer upload by skopeo; then 16 skopeo pushes at once",
        "the cut push fails and tags nothing, no partial blob is stored, the endpoint keeps serving; the retry and all 16 pushes land with their digests",
        "endpoint::a_lost_session_fails_only_the_upload_in_flight",
    )
    .tally(&tally)
    .record();
}

/// Only the user who started it gets in: no credentials or wrong ones get 401 with a Basic
/// challenge; the credential files are the user's alone; a non-loopback address is refused.
#[test]
fn only_its_user_gets_in() {
    let tally = Tally::default();
    let registry = Registry::start();
    let serve = Serve::start(&registry.url(), &[]);
    let url = format!("http://{}/v2/", serve.address);
    for args in [
        vec![],
        vec!["-u", "reposure:wrong"],
        vec!["-u", "someone:else"],
    ] {
        let output = tally.input(|| {
            Command::new("curl")
                .args(["-s", "-i", &url])
                .args(&args)
                .output()
                .unwrap()
        });
        let said = String::from_utf8_lossy(&output.stdout).to_lowercase();
        assert!(said.starts_with("http/1.1 401"), "{said}");
        assert!(
            said.contains("www-authenticate: basic realm=\"reposure\""),
            "{said}"
        );
    }
    let good = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-u"])
        .arg(format!("reposure:{}", serve_password(&serve)))
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&good.stdout), "200");
    use std::os::unix::fs::PermissionsExt;
    for file in ["run/containers/auth.json", ".docker/config.json"] {
        let mode = fs::metadata(serve.home().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} is readable by others");
    }
    let exposed = tally.input(|| {
        reposure(&[
            "registry",
            "serve",
            &registry.url(),
            "--listen",
            "0.0.0.0:0",
        ])
    });
    failed(&exposed, 2, "not a loopback address");
    Row::new(
        "security.endpoint-other-users",
        Category::Security,
        "`registry serve`: requests with no, wrong and another user's credentials; its credential files; a listen address that is not loopback",
        "401 with a Basic challenge for each, 200 only with its own credentials; the files are 0600; a non-loopback address is refused",
        "endpoint::only_its_user_gets_in",
    )
    .tally(&tally)
    .record();
}

/// A 2 GiB layer passes through the endpoint both ways without being held anywhere: curl
/// uploads it in one chunked `PATCH` from a pipe and downloads it into a pipe (so the test
/// needs no 2 GiB file of its own, only the registry stores it), and the endpoint's peak
/// memory stays bounded.
#[test]
fn a_two_gib_layer_streams_through() {
    use sha2::Digest as _;
    let registry = Registry::start();
    let serve = Serve::start(&registry.url(), &[]);
    let work = tempfile::tempdir().unwrap();
    let curl = Curl::new(&serve, work.path());
    let layer_size: u64 = 2 << 30;
    let started = curl.request("POST", "/v2/big/layer/blobs/uploads/", &[], OCTETS);
    let location = header(&started, "location");
    let mut upload = curl
        .command("PATCH", &location)
        .args(["-T", "-", "-D", "-", "-o", "/dev/null"])
        .args(["-H", "Content-Type: application/octet-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut hasher = sha2::Sha256::new();
    {
        let mut stdin = upload.stdin.take().unwrap();
        for_each_block(layer_size, |block| {
            hasher.update(block);
            stdin.write_all(block).unwrap();
        });
    }
    let patched = upload.wait_with_output().unwrap();
    assert!(patched.status.success(), "the PATCH failed");
    let patched = String::from_utf8_lossy(&patched.stdout).into_owned();
    let layer_digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    let location = header(&patched, "location");
    let separator = if location.contains('?') { '&' } else { '?' };
    let committed = curl.request(
        "PUT",
        &format!("{location}{separator}digest={layer_digest}"),
        &[],
        OCTETS,
    );
    assert!(committed.starts_with("HTTP/1.1 201"), "{committed}");
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    let config_digest = format!("sha256:{}", sha256_hex(config.as_bytes()));
    let stored = curl.request(
        "POST",
        &format!("/v2/big/layer/blobs/uploads/?digest={config_digest}"),
        config.as_bytes(),
        OCTETS,
    );
    assert!(stored.starts_with("HTTP/1.1 201"), "{stored}");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{layer_size}}}]}}"#,
        config.len()
    );
    let tagged = curl.request(
        "PUT",
        "/v2/big/layer/manifests/v1",
        manifest.as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    assert!(tagged.starts_with("HTTP/1.1 201"), "{tagged}");
    // skopeo, at the registry itself, sees the layer that was sent.
    let at_registry = reposure_tests::tools::manifest(&registry.host(), "big/layer:v1");
    assert_eq!(at_registry["layers"][0]["digest"], layer_digest.as_str());
    assert_eq!(at_registry["layers"][0]["size"], layer_size);
    // And back through the endpoint, hashed as it arrives.
    let mut download = curl
        .command("GET", &format!("/v2/big/layer/blobs/{layer_digest}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut hasher = sha2::Sha256::new();
    let mut received = 0u64;
    let mut stdout = download.stdout.take().unwrap();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut stdout, &mut buffer).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        received += n as u64;
    }
    assert!(download.wait().unwrap().success(), "the GET failed");
    assert_eq!(received, layer_size);
    assert_eq!(
        format!("sha256:{}", hex::encode(hasher.finalize())),
        layer_digest
    );
    let peak_mib = reposure_tests::process::peak_rss_kib(serve.pid() as i32) / 1024;
    assert!(
        peak_mib < 200,
        "the endpoint peaked at {peak_mib} MiB for a 2 GiB layer"
    );
}

/// Calls `each` with consecutive 1 MiB blocks making `size` bytes, each block different
/// (the first byte counts), so the content cannot be deduplicated or compressed away.
fn for_each_block(size: u64, mut each: impl FnMut(&[u8])) {
    let mut block: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut written = 0;
    while written < size {
        block[0] = block[0].wrapping_add(1);
        each(&block);
        written += block.len() as u64;
    }
}

/// curl logged in to the endpoint through a config file (never its command line).
struct Curl {
    base: String,
    config: std::path::PathBuf,
}

impl Curl {
    fn new(serve: &Serve, dir: &Path) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let config = dir.join("curlrc");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&config)
            .unwrap()
            .write_all(format!("user = \"reposure:{}\"\n", serve_password(serve)).as_bytes())
            .unwrap();
        Self {
            base: format!("http://{}", serve.address),
            config,
        }
    }

    /// curl for `method` on `path` (a URL, or a path on the endpoint).
    fn command(&self, method: &str, path: &str) -> Command {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut command = Command::new("curl");
        command
            .arg("-K")
            .arg(&self.config)
            .args(["-s", "-S", "-X", method, &url]);
        command
    }

    /// The status line and headers of `method` on `path` with `body` of `media_type`.
    fn request(&self, method: &str, path: &str, body: &[u8], media_type: &str) -> String {
        let mut child = self
            .command(method, path)
            .args(["--data-binary", "@-", "-D", "-", "-o", "/dev/null", "-H"])
            .arg(format!("Content-Type: {media_type}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(body).unwrap();
        let output = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

const OCTETS: &str = "application/octet-stream";

/// A response header's value.
fn header(response: &str, name: &str) -> String {
    response
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {name} header in {response}"))
}

/// A registry with token authentication behind the endpoint, reached with the user's
/// credentials: skopeo pushes a two-layer image (digest unchanged), then the same image to
/// another repository (skopeo asks the endpoint to mount the layers across repositories,
/// which the store does with one token for both), and pulls it back.
#[test]
fn a_token_registry_behind_the_endpoint() {
    let registry = TokenRegistry::start(&[("alice", "alice-secret")], false);
    let work = tempfile::tempdir().unwrap();
    let password = work.path().join("password");
    fs::write(&password, "alice-secret").unwrap();
    let password = password.display().to_string();
    let serve = Serve::start(
        &registry.url(),
        &["--username", "alice", "--password-file", &password],
    );
    let endpoint = &serve.address;
    let archive = work.path().join("app.tar");
    let digest = image_archive(&archive, &[400_000, 60_000]);
    for repository in ["team/app", "team/copy"] {
        ok(&skopeo(
            &serve,
            &[
                "copy",
                "--quiet",
                "--preserve-digests",
                &format!("oci-archive:{}", archive.display()),
                &format!("docker://{endpoint}/{repository}:v1"),
            ],
        ));
    }
    for repository in ["team/app", "team/copy"] {
        let raw = ok(&skopeo(
            &serve,
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--creds",
                "alice:alice-secret",
                &format!("docker://{}/{repository}:v1", registry.host()),
            ],
        ));
        assert_eq!(format!("sha256:{}", sha256_hex(raw.as_bytes())), digest);
    }
    // The second push mounted the layers: one token covered both repositories.
    let mounted = registry.tokens.log().iter().any(|request| {
        let names = |name: &str| request.scopes.iter().any(|s| s.starts_with(name));
        names("repository:team/app:") && names("repository:team/copy:")
    });
    assert!(mounted, "{:?}", registry.tokens.log());
    let out = work.path().join("out");
    ok(&skopeo(
        &serve,
        &[
            "copy",
            "--quiet",
            "--preserve-digests",
            &format!("docker://{endpoint}/team/copy:v1"),
            &format!("oci:{}:app", out.display()),
        ],
    ));
}
