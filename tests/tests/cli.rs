//! The `reposure` CLI: every command through the real binary — image commands against the
//! real registry and through the emulated cluster's exec endpoint, cluster commands against
//! the emulated API server (asserting the objects applied and deleted), exit codes for each
//! failure class, `-o json` parsed back, and the binary as `mount.fuse.reposure`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reposure_tests::apiserver::ApiServer;
use reposure_tests::cli::{against, failed, ok, reposure};
use reposure_tests::mount::is_mounted;
use reposure_tests::registry::{Registry, RegistryConfig};
use reposure_tests::tools::registry_tags;
use reposure_tests::{binary, random_bytes, sha256_hex, wait_until};
use serde_json::{Value, json};

/// Runs the CLI with the emulated cluster's kubeconfig.
fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), bytes).unwrap();
    file
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn image_commands_against_a_direct_registry() {
    let registry = Registry::start();
    let url = registry.url();
    let content = random_bytes(300_000);
    let file = temp_file(&content);

    let pushed = ok(&reposure(&[
        "image",
        "push",
        &url,
        "tools/hello:v1",
        path_str(file.path()),
    ]));
    assert!(pushed.starts_with("tools/hello:v1 sha256:"), "{pushed}");
    assert_eq!(registry_tags(&url, "tools/hello"), ["v1"]);

    // Piped: no progress bar; the file on stdout byte for byte.
    let pulled = reposure(&["image", "pull", &url, "tools/hello:v1", "--unpack"]);
    assert_eq!(sha256_hex(&pulled.stdout), sha256_hex(&content));
    assert!(!String::from_utf8_lossy(&pulled.stderr).contains("ETA"));

    // The archive, to a file; pushed back under another name it is recognised by content
    // (no .tar in its name) and keeps its digest.
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("saved-image");
    ok(&reposure(&[
        "image",
        "pull",
        &url,
        "tools/hello:v1",
        "-o",
        path_str(&archive),
    ]));
    let repushed = ok(&reposure(&[
        "image",
        "push",
        &url,
        "copies/hello",
        path_str(&archive),
    ]));
    let digest = |line: &str| line.split(' ').nth(1).unwrap().trim().to_owned();
    assert_eq!(digest(&repushed), digest(&pushed));

    ok(&reposure(&[
        "image",
        "tag",
        &url,
        "tools/hello:v1",
        "tools/hello:stable",
    ]));
    let listed: Value =
        serde_json::from_str(&ok(&reposure(&["image", "list", &url, "-o", "json"]))).unwrap();
    assert_eq!(
        listed,
        json!([
            {"repository": "copies/hello", "tag": "latest"},
            {"repository": "tools/hello", "tag": "stable"},
            {"repository": "tools/hello", "tag": "v1"}
        ])
    );
    assert_eq!(
        ok(&reposure(&["image", "list", &url])),
        "copies/hello:latest\ntools/hello:stable\ntools/hello:v1\n"
    );

    ok(&reposure(&["image", "delete", &url, "tools/hello:v1"]));
    assert_eq!(registry_tags(&url, "tools/hello"), ["stable"]);
    ok(&reposure(&["image", "delete", &url, "--all"]));
    assert_eq!(ok(&reposure(&["image", "list", &url])), "");
}

#[test]
fn exit_codes_name_the_failure_class() {
    let registry = Registry::start_with(RegistryConfig {
        credentials: Some(("alice".into(), "right".into())),
        ..Default::default()
    });
    let url = registry.url();
    let password = temp_file(b"right\n");
    let wrong = temp_file(b"wrong\n");
    let auth = [
        "--username",
        "alice",
        "--password-file",
        path_str(password.path()),
    ];
    let with_auth = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&auth);
        reposure(&all)
    };
    failed(
        &with_auth(&["image", "pull", &url, "nothing/here", "--unpack"]),
        3,
        "not found",
    );
    failed(
        &with_auth(&["image", "push", &url, "Bad_Name", "/etc/hostname"]),
        2,
        "invalid name",
    );
    failed(
        &reposure(&[
            "image",
            "list",
            &url,
            "--username",
            "alice",
            "--password-file",
            path_str(wrong.path()),
        ]),
        4,
        "refused the credentials",
    );
    let nowhere = format!("http://127.0.0.1:{}", reposure_tests::free_port());
    failed(&reposure(&["image", "list", &nowhere]), 5, "unavailable");
    failed(
        &with_auth(&["image", "push", &url, "a/b", "/nonexistent"]),
        1,
        "cannot read /nonexistent",
    );
    // A failed pull leaves no partial file.
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("pulled");
    failed(
        &with_auth(&["image", "pull", &url, "a/b", "-o", path_str(&target)]),
        3,
        "not found",
    );
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
    // Usage errors from the parser are exit 2 as well.
    assert_eq!(reposure(&["image", "push", &url]).status.code(), Some(2));
}

#[test]
fn image_commands_through_a_cluster_registry() {
    let registry = Registry::start();
    let mut api = ApiServer::start("default");
    api.add_ready_registry("team", "cluster", &registry.url());
    let content = random_bytes(2 * 1024 * 1024);
    let file = temp_file(&content);
    let run = against(&api);
    ok(&run(&[
        "-n",
        "team",
        "image",
        "push",
        "cluster",
        "apps/data",
        path_str(file.path()),
    ]));
    // Published by the surrogate's spooler into the registry behind it.
    assert_eq!(registry_tags(&registry.url(), "apps/data"), ["latest"]);
    assert_eq!(
        ok(&run(&["image", "list", "team/cluster"])),
        "apps/data:latest\n"
    );
    let pulled = run(&["image", "pull", "team/cluster", "apps/data", "--unpack"]);
    assert_eq!(sha256_hex(&pulled.stdout), sha256_hex(&content));
    ok(&run(&["image", "delete", "team/cluster", "apps/data"]));
    assert!(registry_tags(&registry.url(), "apps/data").is_empty());
    // The CLI's own exit codes through the cluster: a missing Registry is "not found".
    failed(
        &run(&["image", "list", "team/missing"]),
        3,
        "no registries.reposure.puccini.cloud \"missing\"",
    );
}

const NS: &str = "team";

fn registry_path(name: &str) -> String {
    format!("/apis/reposure.puccini.cloud/v1alpha1/namespaces/{NS}/registries/{name}")
}

#[test]
fn registry_commands_apply_and_delete_registries() {
    let api = ApiServer::start(NS);
    let run = against(&api);
    ok(&run(&[
        "registry",
        "create",
        "hub",
        "--host",
        "registry.example.com:5000",
        "--authorization-secret",
        "hub-credentials",
    ]));
    ok(&run(&[
        "registry",
        "create",
        "shared",
        "--service",
        "registry",
        "--port",
        "80",
        "--service-namespace",
        "kube-system",
    ]));
    let hub = api.get(&registry_path("hub")).expect("applied");
    assert_eq!(hub["apiVersion"], "reposure.puccini.cloud/v1alpha1");
    assert_eq!(hub["kind"], "Registry");
    assert_eq!(
        hub["spec"],
        json!({"type": "oci", "direct": {"host": "registry.example.com:5000"}, "authorizationSecret": "hub-credentials"})
    );
    assert_eq!(
        api.get(&registry_path("shared")).unwrap()["spec"]["indirect"],
        json!({"namespace": "kube-system", "service": "registry", "port": 80})
    );
    // Applying again is idempotent.
    ok(&run(&[
        "registry",
        "create",
        "hub",
        "--host",
        "registry.example.com:5000",
        "--authorization-secret",
        "hub-credentials",
    ]));
    assert_eq!(
        api.get(&registry_path("hub")).unwrap()["metadata"]["generation"],
        1
    );

    failed(
        &run(&["registry", "create", "nowhere"]),
        2,
        "give --provider, --host or --service",
    );
    // A spec the operator would refuse is refused here.
    failed(
        &run(&[
            "registry",
            "create",
            "bad",
            "--host",
            "http://h:1",
            "--authentication-secret",
            "ca",
        ]),
        2,
        "https://",
    );

    let listed: Value =
        serde_json::from_str(&ok(&run(&["registry", "list", "-o", "json"]))).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hub", "shared"]);
    // `host` is the image-name prefix (no scheme); `url` what the surrogate connects to.
    assert_eq!(
        ok(&run(&["registry", "info", "hub", "host"])),
        "registry.example.com:5000\n"
    );
    assert_eq!(
        ok(&run(&["registry", "info", "hub", "url"])),
        "https://registry.example.com:5000\n"
    );
    assert_eq!(
        ok(&run(&["registry", "info", "shared", "host"])),
        "registry.kube-system.svc:80\n",
        "without the Service readable, its DNS name"
    );
    // With the Service, its cluster IP: what nodes pull from, as the original printed.
    api.put(
        "/api/v1/namespaces/kube-system/services/registry".into(),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "registry", "namespace": "kube-system"},
               "spec": {"clusterIP": "10.96.0.12", "ports": [{"port": 80}]}}),
    );
    assert_eq!(
        ok(&run(&["registry", "info", "shared", "host"])),
        "10.96.0.12:80\n"
    );
    assert_eq!(
        ok(&run(&["registry", "info", "shared", "url"])),
        "http://registry.kube-system.svc:80\n"
    );
    let table = ok(&run(&["registry", "list"]));
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "NAME",
            "HOST",
            "NAMESPACE",
            "SERVICE",
            "PORT",
            "SURROGATE",
            "READY"
        ]
    );
    assert_eq!(rows[1][..2], ["hub", "registry.example.com:5000"]);
    assert_eq!(
        rows[2][..5],
        ["shared", "10.96.0.12:80", "kube-system", "registry", "80"]
    );
    assert_eq!(
        ok(&run(&["registry", "list", "-o", "names"])),
        "hub\nshared\n"
    );
    // --service defaults to port 5000, as the original's did; a provider's port is fixed.
    ok(&run(&[
        "registry",
        "create",
        "plain",
        "--service",
        "registry",
    ]));
    assert_eq!(
        api.get(&registry_path("plain")).unwrap()["spec"]["indirect"]["port"],
        5000
    );
    ok(&run(&["registry", "delete", "plain"]));
    failed(
        &run(&[
            "registry",
            "create",
            "mk",
            "--provider",
            "minikube",
            "--port",
            "5000",
        ]),
        2,
        "listens on port 80",
    );
    failed(
        &run(&[
            "registry",
            "create",
            "h",
            "--host",
            "h.example",
            "--port",
            "5000",
        ]),
        2,
        "--host HOST:PORT",
    );
    let described: Value =
        serde_yaml::from_str(&ok(&run(&["registry", "describe", "hub"]))).unwrap();
    assert_eq!(
        described["spec"]["direct"]["host"],
        "registry.example.com:5000"
    );

    // --wait: fails with the reason from the status on timeout (exit 5, unavailable)...
    api.put(
        registry_path("hub"),
        {
            let mut hub = api.get(&registry_path("hub")).unwrap();
            hub["status"] = json!({"conditions": [{"type": "Ready", "status": "False", "reason": "SecretMissing",
                "message": "spec.authorizationSecret names Secret \"hub-credentials\", which does not exist",
                "lastTransitionTime": "2026-11-30T00:00:00Z"}]});
            hub
        },
    );
    let timed_out = run(&[
        "registry",
        "create",
        "hub",
        "--host",
        "registry.example.com:5000",
        "--authorization-secret",
        "hub-credentials",
        "--wait",
        "--timeout",
        "1",
    ]);
    failed(&timed_out, 5, "SecretMissing");
    // ... and succeeds once the operator says Ready.
    let path = registry_path("shared");
    let waiting = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            run(&[
                "registry",
                "create",
                "shared",
                "--service",
                "registry",
                "--port",
                "80",
                "--service-namespace",
                "kube-system",
                "--wait",
                "--timeout",
                "30",
            ])
        });
        std::thread::sleep(Duration::from_secs(1));
        let mut shared = api.get(&path).unwrap();
        shared["status"] = json!({"surrogatePod": "p", "conditions": [{"type": "Ready", "status": "True", "reason": "SurrogateReady", "message": "ok", "lastTransitionTime": "2026-11-30T00:00:00Z"}]});
        api.put(path.clone(), shared);
        waiter.join().unwrap()
    });
    ok(&waiting);

    // Logs: every pod of the surrogate (each line after its pod's name when there are
    // several), the last N lines with --tail.
    for pod in ["p", "q"] {
        api.put(
            format!("/api/v1/namespaces/{NS}/pods/{pod}"),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": pod, "namespace": NS,
                                "labels": reposure_client::kubernetes::surrogate_labels("shared")}}),
        );
    }
    api.set_log(NS, "p", "spooler running\npublished a\n");
    api.set_log(NS, "q", "spooler running\n");
    assert_eq!(
        ok(&run(&["registry", "logs", "shared"])),
        "[p] spooler running\n[p] published a\n[q] spooler running\n"
    );
    assert_eq!(
        ok(&run(&["registry", "logs", "shared", "--tail", "1"])),
        "[p] published a\n[q] spooler running\n"
    );

    ok(&run(&["registry", "delete", "hub"]));
    assert!(api.get(&registry_path("hub")).is_none());
    failed(
        &run(&["registry", "delete", "hub"]),
        3,
        "no Registry \"hub\"",
    );
    ok(&run(&["registry", "delete", "-a"]));
    assert!(api.get(&registry_path("shared")).is_none());
}

#[test]
fn operator_install_is_idempotent_and_uninstall_keeps_the_crd() {
    let api = ApiServer::start(NS);
    let run = against(&api);
    let install = [
        "operator",
        "install",
        "-e",
        "view",
        "--surrogate-image",
        "example.test/surrogate:1",
        "--operator-image",
        "example.test/operator:1",
    ];
    ok(&run(&install));
    let crd =
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/registries.reposure.puccini.cloud";
    let namespaced = [
        "/api/v1/namespaces/team/serviceaccounts/reposure-operator",
        "/apis/apps/v1/namespaces/team/deployments/reposure-operator",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings/reposure-operator",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings/reposure-operator-extra",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles/reposure-operator",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles/reposure-user",
    ];
    // The namespace is created when missing, as the original's install did.
    let namespace = "/api/v1/namespaces/team";
    let mut expected: Vec<&str> = namespaced.to_vec();
    expected.extend([crd, namespace]);
    expected.sort();
    assert_eq!(api.paths(), expected);
    let deployment = api.get(namespaced[1]).unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "example.test/operator:1");
    assert!(container["env"].as_array().unwrap().contains(
        &json!({"name": "REPOSURE_SURROGATE_IMAGE", "value": "example.test/surrogate:1"})
    ));
    assert_eq!(
        api.get(namespaced[3]).unwrap()["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"})
    );
    // Again: the same objects, nothing new (an upgrade in place).
    let before: Vec<Value> = expected.iter().map(|p| api.get(p).unwrap()).collect();
    ok(&run(&install));
    let after: Vec<Value> = expected.iter().map(|p| api.get(p).unwrap()).collect();
    assert_eq!(before, after);
    // --wait fails while no replica is available, saying so, and succeeds once one is.
    failed(
        &run(&["operator", "install", "--wait", "--timeout", "1"]),
        5,
        "no available replica",
    );
    let mut available = api.get(namespaced[1]).unwrap();
    available["status"] = json!({"availableReplicas": 1});
    api.put(namespaced[1].into(), available);
    ok(&run(&["operator", "install", "-w", "--timeout", "5"]));

    api.set_log(NS, "reposure-operator-abc", "reconciled\n");
    api.put(
        "/api/v1/namespaces/team/pods/reposure-operator-abc".into(),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reposure-operator-abc", "namespace": NS,
               "labels": {"app.kubernetes.io/name": "reposure-operator"}}, "status": {"phase": "Running"}}),
    );
    assert_eq!(ok(&run(&["operator", "logs"])), "reconciled\n");
    api.state_remove("/api/v1/namespaces/team/pods/reposure-operator-abc");

    ok(&run(&["operator", "uninstall", "-w"]));
    assert_eq!(
        api.paths(),
        [namespace, crd],
        "only the CRD (and the namespace) stay"
    );
    ok(&run(&["operator", "uninstall", "--crd"]));
    assert_eq!(api.paths(), [namespace]);
}

#[test]
fn simple_install_makes_working_credentials_and_keeps_them() {
    let api = ApiServer::start(NS);
    let run = against(&api);
    let installed = run(&["simple", "install", "--authentication", "--authorization"]);
    ok(&installed);
    assert!(
        String::from_utf8_lossy(&installed.stderr)
            .contains("kubectl get secret reposure-simple-authorization")
    );
    let secret = |name: &str| {
        api.get(&format!("/api/v1/namespaces/team/secrets/{name}"))
            .unwrap()
    };
    let data = |name: &str, key: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(secret(name)["data"][key].as_str().unwrap())
            .unwrap()
    };
    // The certificate is signed by the CA, for the Service's names and the cluster IP the
    // API server gave it (what nodes pull by, as `simple host` prints).
    let cluster_ip = api
        .get("/api/v1/namespaces/team/services/reposure-simple")
        .unwrap()["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned();
    let work = tempfile::tempdir().unwrap();
    fs::write(
        work.path().join("ca.crt"),
        data("reposure-simple-authentication", "ca.crt"),
    )
    .unwrap();
    fs::write(
        work.path().join("tls.crt"),
        data("reposure-simple-authentication", "tls.crt"),
    )
    .unwrap();
    for check in [
        ["-verify_hostname", "reposure-simple.team.svc"],
        ["-verify_ip", cluster_ip.as_str()],
    ] {
        let verified = Command::new("openssl")
            .args(["verify", "-CAfile", "ca.crt"])
            .args(check)
            .arg("tls.crt")
            .current_dir(work.path())
            .output()
            .unwrap();
        assert!(
            verified.status.success(),
            "{check:?}: {}",
            String::from_utf8_lossy(&verified.stdout)
        );
    }
    // The htpasswd entry accepts the password in the Registry's Docker config.
    let config: Value =
        serde_json::from_slice(&data("reposure-simple-authorization", ".dockerconfigjson"))
            .unwrap();
    let entry = &config["auths"]["reposure-simple.team.svc:5000"];
    assert_eq!(config["auths"][format!("{cluster_ip}:5000")], *entry);
    let password = entry["password"].as_str().unwrap();
    let htpasswd = String::from_utf8(data("reposure-simple-htpasswd", "htpasswd")).unwrap();
    let (user, hash) = htpasswd.trim().split_once(':').unwrap();
    assert_eq!(user, entry["username"].as_str().unwrap());
    assert!(bcrypt::verify(password, hash).unwrap());
    assert!(password.len() >= 20);
    let deployment = api
        .get("/apis/apps/v1/namespaces/team/deployments/reposure-simple")
        .unwrap();
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(
        env.contains("REGISTRY_STORAGE_DELETE_ENABLED")
            && env.contains("REGISTRY_HTTP_TLS_CERTIFICATE")
            && env.contains("REGISTRY_AUTH")
    );
    assert!(!env.contains(password), "no password in the pod spec");
    assert!(
        api.get("/api/v1/namespaces/team/persistentvolumeclaims/reposure-simple")
            .is_some()
    );
    assert!(
        api.get("/api/v1/namespaces/team/services/reposure-simple")
            .is_some()
    );

    // Installing again keeps the certificate and the password.
    let before = (
        secret("reposure-simple-authentication"),
        secret("reposure-simple-authorization"),
    );
    ok(&run(&[
        "simple",
        "install",
        "--authentication",
        "--authorization",
    ]));
    assert_eq!(
        before,
        (
            secret("reposure-simple-authentication"),
            secret("reposure-simple-authorization")
        )
    );

    let service = api
        .get("/api/v1/namespaces/team/services/reposure-simple")
        .unwrap();
    assert_eq!(
        ok(&run(&["simple", "host"])),
        format!("{}:5000\n", service["spec"]["clusterIP"].as_str().unwrap())
    );
    let path = "/apis/apps/v1/namespaces/team/deployments/reposure-simple";
    failed(
        &run(&["simple", "install", "--wait", "--timeout", "1"]),
        5,
        "no available replica",
    );
    let mut available = api.get(path).unwrap();
    available["status"] = json!({"availableReplicas": 1});
    api.put(path.into(), available);
    ok(&run(&["simple", "install", "--wait", "--timeout", "5"]));
    // A Registry for it uses both secrets.
    ok(&run(&[
        "registry",
        "create",
        "default",
        "--provider",
        "simple",
    ]));
    assert_eq!(
        api.get(&registry_path("default")).unwrap()["spec"],
        json!({"type": "oci", "indirect": {"namespace": "team", "service": "reposure-simple", "port": 5000},
               "authenticationSecret": "reposure-simple-authentication", "authorizationSecret": "reposure-simple-authorization"})
    );
    assert_eq!(
        ok(&run(&["registry", "info", "default", "username"])),
        "reposure\n"
    );
    assert!(
        ok(&run(&["registry", "info", "default", "cert"]))
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    let uninstalled = run(&["simple", "uninstall"]);
    ok(&uninstalled);
    assert!(
        api.get("/apis/apps/v1/namespaces/team/deployments/reposure-simple")
            .is_none()
    );
    assert!(
        api.get("/api/v1/namespaces/team/secrets/reposure-simple-htpasswd")
            .is_none()
    );
    assert!(
        api.get("/api/v1/namespaces/team/persistentvolumeclaims/reposure-simple")
            .is_some(),
        "data kept"
    );
    ok(&run(&["simple", "uninstall", "--delete-data"]));
    assert!(
        api.get("/api/v1/namespaces/team/persistentvolumeclaims/reposure-simple")
            .is_none()
    );
}

/// The binary as the mount(8) helper, and as `reposure mount`.
#[test]
fn mount_t_fuse_reposure_and_reposure_mount() {
    let registry = Registry::start();
    let mut api = ApiServer::start("default");
    api.add_ready_registry(NS, "cluster", &registry.url());
    let helper = Path::new("/sbin/mount.fuse.reposure");
    let _ = fs::remove_file(helper);
    std::os::unix::fs::symlink(binary("reposure"), helper).unwrap();
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_file(self.0);
        }
    }
    let _remove = Remove(helper);
    let dir = tempfile::tempdir().unwrap();
    let options = format!("kubeconfig={}", api.kubeconfig().display());
    let mounted = Command::new("mount")
        .args(["-t", "fuse.reposure", "-o", &options, "team/cluster"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        mounted.status.success(),
        "{}",
        String::from_utf8_lossy(&mounted.stderr)
    );
    assert!(is_mounted(dir.path()));
    fs::create_dir(dir.path().join("r")).unwrap();
    fs::write(dir.path().join("r/f"), b"through mount(8)").unwrap();
    assert_eq!(registry_tags(&registry.url(), "r/f"), ["latest"]);
    assert!(
        Command::new("umount")
            .arg(dir.path())
            .status()
            .unwrap()
            .success()
    );
    assert!(wait_until(Duration::from_secs(10), || !is_mounted(
        dir.path()
    )));

    // A failed mount is a failed mount(8), with the reason.
    let refused = Command::new("mount")
        .args(["-t", "fuse.reposure", "-o", &options, "team/missing"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("no registries.reposure.puccini.cloud \"missing\"")
    );

    // `reposure mount` with the CLI's own --kubeconfig and -n.
    let kubeconfig = api.kubeconfig();
    ok(&reposure(&[
        "--kubeconfig",
        path_str(&kubeconfig),
        "-n",
        NS,
        "mount",
        "cluster",
        path_str(dir.path()),
    ]));
    assert_eq!(
        fs::read(dir.path().join("r/f")).unwrap(),
        b"through mount(8)"
    );
    assert!(
        Command::new("fusermount3")
            .arg("-u")
            .arg(dir.path())
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn completion_version_and_help() {
    let bash = ok(&reposure(&["completion", "bash"]));
    assert!(
        bash.contains("_reposure") && bash.contains("registry"),
        "{bash}"
    );
    assert!(ok(&reposure(&["version"])).starts_with("reposure 0."));
    let help = ok(&reposure(&["image", "push", "--help"]));
    assert!(help.contains("Examples:"), "{help}");
    // As a kubectl plugin the binary is the same; kubectl passes the arguments through.
    let plugin_dir = tempfile::tempdir().unwrap();
    let plugin = plugin_dir.path().join("kubectl-reposure");
    std::os::unix::fs::symlink(binary("reposure"), &plugin).unwrap();
    let version = Command::new(&plugin).arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("reposure 0."));
}

/// On a terminal, push and pull draw a progress bar (bytes, rate, ETA); piped, they do not
/// (checked in `image_commands_against_a_direct_registry`).
#[test]
fn progress_bars_on_a_terminal() {
    let registry = Registry::start();
    let file = temp_file(&random_bytes(256 * 1024 * 1024));
    // script(1) gives the command a pseudo-terminal and records what it drew.
    let typescript = tempfile::NamedTempFile::new().unwrap();
    let command = format!(
        "{} image push {} big/file {}",
        binary("reposure").display(),
        registry.url(),
        file.path().display()
    );
    let status = Command::new("script")
        .args(["-q", "-e", "-c", &command])
        .arg(typescript.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let drawn = String::from_utf8_lossy(&fs::read(typescript.path()).unwrap()).into_owned();
    assert!(
        drawn.contains("push") && drawn.contains("ETA") && drawn.contains("MiB"),
        "{drawn}"
    );
    assert_eq!(registry_tags(&registry.url(), "big/file"), ["latest"]);
}
