//! Coming from the original Go Reposure: its README's workflows, its spool file protocol
//! through a real `kubectl cp`, its Registry manifests and statuses, and an installation of
//! it taken over, through the emulated API server (see KUBERNETES.md for what it covers).

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use reposure_tests::apiserver::ApiServer;
use reposure_tests::cli::{against, failed, ok, reposure};
use reposure_tests::registry::Registry;
use reposure_tests::tools::{Containers, registry_tags, skopeo_copy, tag_digest};
use reposure_tests::{random_bytes, sha256_hex, wait_until};
use serde_json::{Value, json};

const NS: &str = "default";

fn registry_path(name: &str) -> String {
    format!("/apis/reposure.puccini.cloud/v1alpha1/namespaces/{NS}/registries/{name}")
}

fn pod_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/pods/{name}")
}

/// Runs the real `kubectl` against the emulated API server.
fn kubectl(api: &ApiServer, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(api.kubeconfig_tls())
        .args(["--namespace", NS])
        .args(args)
        .output()
        .expect("kubectl (apt-get install kubernetes-client, or kubectl on PATH)")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

/// `kubectl cp FILE POD:/spool/NAME`, as the original's users and clients dropped files:
/// a file is published as a single-file image, a `.tar.gz` image archive as its image, and
/// a `NAME!` marker deletes the image. kubectl runs `test` and `tar` in the container,
/// which the surrogate answers as.
#[test]
fn kubectl_cp_into_the_spool_publishes_and_deletes() {
    let registry = Registry::start();
    let mut api = ApiServer::start(NS);
    let pod = api.add_ready_registry(NS, "default", &registry.url());
    let work = tempfile::tempdir().unwrap();
    let copy = |local: &str, spool_name: &str| {
        let target = format!("{pod}:/spool/{spool_name}");
        let output = kubectl(&api, &["cp", local, &target, "-c", "surrogate"]);
        assert!(
            output.status.success(),
            "kubectl cp {local} {target}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };

    let content = random_bytes(300_000);
    // kubectl turns `\` into `/`: a subdirectory of the spool stands for the prefix.
    copy(
        &write(work.path(), "hello.txt", &content),
        "myrepo/hello:v1",
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            !registry_tags(&registry.url(), "myrepo/hello").is_empty()
        }),
        "the spooler did not publish the copied file"
    );
    let pulled = ok(&against(&api)(&[
        "image",
        "pull",
        "default",
        "myrepo/hello:v1",
        "-u",
        "-o",
        &work.path().join("back").display().to_string(),
    ]));
    assert!(pulled.is_empty());
    assert_eq!(
        sha256_hex(&fs::read(work.path().join("back")).unwrap()),
        sha256_hex(&content)
    );

    // An image archive: one skopeo writes, gzipped, under the original's suffix.
    let archive = work.path().join("web.tar");
    skopeo_copy(
        &format!("docker://{}/myrepo/hello:v1", registry.host()),
        &format!("docker-archive:{}:web:v2", archive.display()),
    );
    let gzipped = reposure_tests::archives::gzip(&fs::read(&archive).unwrap());
    copy(
        &write(work.path(), "web.tar.gz", &gzipped),
        "apps\\web:v2.tar.gz",
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            registry_tags(&registry.url(), "apps/web") == ["v2"]
        }),
        "the archive was not published as its image"
    );

    // A delete marker.
    copy(&write(work.path(), "marker", b""), "myrepo\\hello:v1!");
    assert!(
        wait_until(Duration::from_secs(20), || {
            tag_digest(&registry.url(), "myrepo/hello", "v1").is_none()
        }),
        "the marker did not delete the tag"
    );
    // Only the spool is written: a copy elsewhere in the container is refused.
    let refused = kubectl(
        &api,
        &[
            "cp",
            &write(work.path(), "x", b"x"),
            &format!("{pod}:/etc/x"),
            "-c",
            "surrogate",
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only extracts into the spool"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!Path::new("/etc/x").exists());
}

/// The README's workflow, for each provider: `registry create --provider`, then `registry
/// info host` is an image-name prefix (the registry Service's cluster IP and port), an
/// image saved under that name (`podman tag` + `podman save`; here skopeo writes the same
/// docker archive) is pushed with `image push`, and a file pushed is pulled back
/// `--unpack`. The surrogate "pod" behind each reaches the test registry.
#[test]
fn the_original_readme_workflow() {
    let registry = Registry::start();
    let service = |namespace: &str, name: &str, ip: &str, port: u16| {
        (
            format!("/api/v1/namespaces/{namespace}/services/{name}"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
                   "spec": {"clusterIP": ip, "ports": [{"port": port}]}}),
        )
    };
    let openshift_builder = vec![
        (
            format!("/api/v1/namespaces/{NS}/serviceaccounts/builder"),
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "builder", "namespace": NS},
                   "secrets": [{"name": "builder-token-x7k2p"}, {"name": "builder-dockercfg-q9z"}]}),
        ),
        (
            format!("/api/v1/namespaces/{NS}/secrets/builder-token-x7k2p"),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                   "metadata": {"name": "builder-token-x7k2p", "namespace": NS,
                                "annotations": {"kubernetes.io/service-account.name": "builder"}},
                   "data": {"token": "YnVpbGRlci10b2tlbg==", "service-ca.crt": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="}}),
        ),
        service(
            "openshift-image-registry",
            "image-registry",
            "172.30.0.5",
            5000,
        ),
    ];
    let providers = [
        (
            "minikube",
            vec![service("kube-system", "registry", "10.96.0.20", 80)],
            "10.96.0.20:80",
        ),
        ("openshift", openshift_builder, "172.30.0.5:5000"),
        (
            "simple",
            vec![service(NS, "reposure-simple", "10.96.0.12", 5000)],
            "10.96.0.12:5000",
        ),
    ];
    let podman = Containers::installed("podman");
    for (provider, objects, expected_host) in providers {
        let mut api = ApiServer::start(NS);
        for (path, object) in objects {
            api.put(path, object);
        }
        api.add_ready_registry(NS, "myregistry", &registry.url());
        let run = against(&api);
        ok(&run(&[
            "registry",
            "create",
            "myregistry",
            "--provider",
            provider,
        ]));
        let host = ok(&run(&["registry", "info", "myregistry", "host"]));
        let host = host.trim();
        assert_eq!(host, expected_host, "{provider}");
        if provider == "openshift" {
            let created = api.get(&registry_path("myregistry")).unwrap();
            assert_eq!(
                created["spec"]["authorizationSecret"],
                "builder-token-x7k2p"
            );
            assert_eq!(
                created["spec"]["authenticationSecretDataKey"],
                "service-ca.crt"
            );
            assert_eq!(
                ok(&run(&["registry", "info", "myregistry", "token"])),
                "builder-token\n"
            );
        }

        // echo 'hello world' > hello.txt; image push; image pull --unpack
        let work = tempfile::tempdir().unwrap();
        let hello = write(work.path(), "hello.txt", b"hello world\n");
        let repository = format!("{provider}/hello");
        ok(&run(&["image", "push", "myregistry", &repository, &hello]));
        assert_eq!(
            ok(&run(&[
                "image",
                "pull",
                "myregistry",
                &repository,
                "--unpack"
            ])),
            "hello world\n"
        );

        // podman tag localhost/myrepo/myimage $HOST/myrepo/myimage; podman save; image push
        // (where podman is not installed, skopeo writes the same docker archive).
        let archive = work.path().join("myimage.tar");
        let image = format!("{provider}/myimage");
        let local = format!("{}/{repository}", registry.host());
        let named = format!("{host}/{image}:latest");
        match &podman {
            Some(podman) => {
                podman.run(&["pull", "--quiet", "--tls-verify=false", &local]);
                podman.run(&["tag", &local, &named]);
                podman.run(&[
                    "save",
                    "--quiet",
                    "--format",
                    "docker-archive",
                    "-o",
                    archive.to_str().unwrap(),
                    &named,
                ]);
            }
            None => skopeo_copy(
                &format!("docker://{local}"),
                &format!("docker-archive:{}:{named}", archive.display()),
            ),
        }
        ok(&run(&[
            "image",
            "push",
            "myregistry",
            &image,
            archive.to_str().unwrap(),
        ]));
        // A docker archive holds a Docker manifest: the digest differs, the content not.
        assert_eq!(
            ok(&run(&["image", "pull", "myregistry", &image, "-u"])),
            "hello world\n",
            "{provider}: the image pushed is the one saved"
        );
        let listed = ok(&run(&["image", "list", "myregistry"]));
        for name in [&image, &repository] {
            assert!(
                listed.lines().any(|l| l == format!("{name}:latest")),
                "{listed}"
            );
        }
    }
}

/// A Docker archive holding several images (`docker save a b`) pushes the one named like
/// the target (whatever host prefixes it), and refuses, listing them, when none is.
#[test]
fn a_multi_image_archive_pushes_the_image_it_names() {
    let registry = Registry::start();
    let mut api = ApiServer::start(NS);
    api.add_ready_registry(NS, "myregistry", &registry.url());
    let run = against(&api);
    let work = tempfile::tempdir().unwrap();
    let (one, other) = (random_bytes(10_000), random_bytes(10_000));
    ok(&run(&[
        "image",
        "push",
        "myregistry",
        "myrepo/one",
        &write(work.path(), "one", &one),
    ]));
    ok(&run(&[
        "image",
        "push",
        "myregistry",
        "myrepo/other",
        &write(work.path(), "other", &other),
    ]));
    let several = two_image_archive(
        &registry,
        work.path(),
        [
            ("myrepo/one", "10.96.0.12:5000/team/web:1"),
            ("myrepo/other", "10.96.0.12:5000/team/db:1"),
        ],
    );
    ok(&run(&[
        "image",
        "push",
        "myregistry",
        "team/db:1",
        &several,
    ]));
    assert_eq!(
        sha256_hex(&run(&["image", "pull", "myregistry", "team/db:1", "-u"]).stdout),
        sha256_hex(&other),
        "the image named team/db:1 was pushed"
    );
    assert!(registry_tags(&registry.url(), "team/web").is_empty());
    let refused = run(&["image", "push", "myregistry", "team/cache:1", &several]);
    failed(&refused, 1, "holds 2 images");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("team/web:1") && said.contains("team/db:1"),
        "{said}"
    );
    assert!(registry_tags(&registry.url(), "team/cache").is_empty());
}

/// A Docker archive of two images of the registry, each under its name: the entries of
/// two single-image archives skopeo writes, joined.
fn two_image_archive(registry: &Registry, dir: &Path, images: [(&str, &str); 2]) -> String {
    let mut entries: Vec<Value> = Vec::new();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, (source, name)) in images.iter().enumerate() {
        let single = dir.join(format!("single-{i}.tar"));
        skopeo_copy(
            &format!("docker://{}/{source}", registry.host()),
            &format!("docker-archive:{}:{name}", single.display()),
        );
        let mut archive = tar::Archive::new(fs::File::open(&single).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            if path == "manifest.json" {
                let listed: Vec<Value> = serde_json::from_slice(&bytes).unwrap();
                entries.extend(listed);
            } else if !files.iter().any(|(p, _)| p == &path) {
                files.push((path, bytes));
            }
        }
    }
    let manifest = serde_json::to_vec(&entries).unwrap();
    let mut all: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    all.push(("manifest.json", &manifest));
    let joined = dir.join("several.tar");
    fs::write(&joined, reposure_tests::archives::tar_of(&all)).unwrap();
    joined.display().to_string()
}

/// Registries as the original's operator left them: a status that names the surrogate pod
/// and nothing else. The CLI and the mount use them by that pod's readiness; a pod being
/// deleted is passed over for another ready one; the original's own bare pod is named as
/// what `operator install` replaces.
#[test]
fn original_style_statuses_are_used_by_their_pods() {
    let registry = Registry::start();
    let mut api = ApiServer::start(NS);
    let pod = api.add_ready_registry(NS, "legacy", &registry.url());
    let mut object = api.get(&registry_path("legacy")).unwrap();
    object["status"] = json!({"surrogatePod": pod});
    api.put(registry_path("legacy"), object.clone());
    let run = against(&api);
    let work = tempfile::tempdir().unwrap();
    let file = write(work.path(), "f", b"from an original-style registry\n");
    ok(&run(&["image", "push", "legacy", "old/file", &file]));
    assert_eq!(registry_tags(&registry.url(), "old/file"), ["latest"]);
    let mount = reposure_tests::mount::Mount::new(
        "legacy",
        &[&format!("kubeconfig={}", api.kubeconfig().display())],
    );
    assert_eq!(
        fs::read(mount.path("old/file")).unwrap(),
        b"from an original-style registry\n"
    );
    drop(mount);

    // The named pod is being deleted: another ready pod of the surrogate serves.
    api.copy_pod(NS, &pod, "reposure-surrogate-legacy-new");
    let mut dying = api.get(&pod_path(&pod)).unwrap();
    dying["metadata"]["deletionTimestamp"] = json!("2026-12-06T00:00:00Z");
    api.put(pod_path(&pod), dying);
    ok(&run(&["image", "push", "legacy", "old/second", &file]));
    assert!(
        api.requests()
            .iter()
            .any(|r| r.contains("/pods/reposure-surrogate-legacy-new/exec")),
        "the replacement pod was used"
    );
    assert!(
        !api.requests()
            .iter()
            .rev()
            .take_while(|r| !r.contains("registries/legacy"))
            .any(|r| r.contains(&format!("/pods/{pod}/exec"))),
        "the dying pod was not"
    );

    // The original operator's bare pod: a clear error, naming the fix.
    api.put(
        pod_path("reposure-surrogate-original"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "reposure-surrogate-original", "namespace": NS,
                            "labels": {"app.kubernetes.io/name": "reposure-surrogate-original", "app.kubernetes.io/component": "surrogate"}},
               "spec": {"containers": [{"name": "surrogate", "image": "docker.io/tliron/reposure-surrogate"}]},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    object["metadata"]["name"] = json!("original");
    object["status"] = json!({"surrogatePod": "reposure-surrogate-original"});
    api.put(registry_path("original"), object);
    failed(
        &run(&["image", "list", "original"]),
        1,
        "reposure operator install",
    );
}

/// An installation of the original operator is taken over: its Deployment (another,
/// immutable selector) and its `reposure` ServiceAccount, Role and RoleBinding go, this
/// operator's objects are applied, and the output says what was done.
#[test]
fn operator_install_takes_over_from_the_original() {
    let api = ApiServer::start(NS);
    let original_labels = json!({
        "app.kubernetes.io/name": "reposure-operator",
        "app.kubernetes.io/instance": "reposure-operator-default",
        "app.kubernetes.io/version": "v0.1.5",
        "app.kubernetes.io/component": "operator",
        "app.kubernetes.io/part-of": "reposure",
        "app.kubernetes.io/managed-by": "reposure"
    });
    api.put(
        "/apis/apps/v1/namespaces/default/deployments/reposure-operator".into(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "reposure-operator", "namespace": NS, "labels": original_labels},
               "spec": {"replicas": 1, "selector": {"matchLabels": original_labels},
                        "template": {"metadata": {"labels": original_labels},
                                     "spec": {"containers": [{"name": "operator", "image": "docker.io/tliron/reposure-operator:v0.1.5"}]}}}}),
    );
    for (path, kind) in [
        (
            "/api/v1/namespaces/default/serviceaccounts/reposure",
            "ServiceAccount",
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/reposure",
            "Role",
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/reposure",
            "RoleBinding",
        ),
    ] {
        api.put(
            path.into(),
            json!({"kind": kind, "metadata": {"name": "reposure", "namespace": NS, "labels": original_labels}}),
        );
    }
    // A user's own Role named like the original's would stay: only labelled ones go.
    let output = against(&api)(&["operator", "install"]);
    ok(&output);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("replaced the original Reposure operator") && said.contains("Role reposure"),
        "{said}"
    );
    let deployment = api
        .get("/apis/apps/v1/namespaces/default/deployments/reposure-operator")
        .unwrap();
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "reposure-operator"})
    );
    for gone in [
        "/api/v1/namespaces/default/serviceaccounts/reposure",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/reposure",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/reposure",
    ] {
        assert!(api.get(gone).is_none(), "{gone} should be gone");
    }
    // Installing again changes nothing more (no original left to replace).
    let again = against(&api)(&["operator", "install"]);
    ok(&again);
    assert!(!String::from_utf8_lossy(&again.stderr).contains("replaced"));
    // The original's cluster-wide mode is refused with what to do instead.
    failed(
        &against(&api)(&["operator", "install", "-c"]),
        1,
        "install` in each",
    );
}

/// The original's Registry manifests, applied unchanged, read back by this CLI.
#[test]
fn original_registry_manifests_are_read_as_written() {
    let api = ApiServer::start(NS);
    let manifests = [
        (
            "minikube",
            json!({"type": "oci", "indirect": {"namespace": "kube-system", "service": "registry", "port": 80}}),
            "registry.kube-system.svc:80",
        ),
        (
            "openshift",
            json!({"type": "oci", "direct": {"host": "image-registry.openshift-image-registry.svc:5000"},
                             "authenticationSecret": "builder-token-x", "authenticationSecretDataKey": "service-ca.crt",
                             "authorizationSecret": "builder-token-x"}),
            "image-registry.openshift-image-registry.svc:5000",
        ),
        (
            "simple",
            json!({"type": "oci", "indirect": {"service": "reposure-simple", "port": 5000},
                          "authenticationSecret": "reposure-simple-authentication"}),
            "reposure-simple.default.svc:5000",
        ),
    ];
    for (name, spec, _) in &manifests {
        api.put(
            registry_path(name),
            json!({"apiVersion": "reposure.puccini.cloud/v1alpha1", "kind": "Registry",
                   "metadata": {"name": name, "namespace": NS},
                   "spec": spec, "status": {"surrogatePod": format!("reposure-surrogate-{name}")}}),
        );
    }
    let run = against(&api);
    for (name, _, host) in &manifests {
        assert_eq!(ok(&run(&["registry", "info", name, "host"])).trim(), *host);
    }
    let listed = ok(&run(&["registry", "list"]));
    for (name, _, _) in &manifests {
        assert!(
            listed.contains(&format!("reposure-surrogate-{name}")),
            "{listed}"
        );
    }
    // A tls Secret made with `kubectl create secret tls` is the CA by default (tls.crt),
    // as the original read it.
    api.put(
        "/api/v1/namespaces/default/secrets/reposure-simple-authentication".into(),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "reposure-simple-authentication", "namespace": NS},
               "data": {"tls.crt": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==", "tls.key": "eA=="}}),
    );
    assert_eq!(
        ok(&run(&["registry", "info", "simple", "cert"])),
        "-----BEGIN CERTIFICATE-----\n"
    );
}

/// The original's install flags: `-k`/`-x` choose the kubeconfig and context, `-g
/// internal` takes the images from the cluster's own registry (found by its Service),
/// `-g HOST` from another, and `-e` binds an extra ClusterRole.
#[test]
fn install_flags_of_the_original() {
    let api = ApiServer::start(NS);
    api.put(
        "/api/v1/namespaces/openshift-image-registry/services/image-registry".into(),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "image-registry", "namespace": "openshift-image-registry"},
               "spec": {"clusterIP": "172.30.0.5", "ports": [{"port": 5000}]}}),
    );
    let kubeconfig = api.kubeconfig();
    let short = |args: &[&str]| {
        let mut all = vec!["-k", kubeconfig.to_str().unwrap(), "-x", "other"];
        all.extend_from_slice(args);
        reposure(&all)
    };
    ok(&short(&[
        "operator", "install", "-g", "internal", "-e", "view",
    ]));
    // `-x other` is the context whose namespace is other-team.
    let operator = api
        .get("/apis/apps/v1/namespaces/other-team/deployments/reposure-operator")
        .expect("the operator in the context's namespace");
    let serialized = operator.to_string();
    assert!(
        serialized.contains("\"172.30.0.5:5000/reposure/reposure-operator:")
            && serialized.contains("172.30.0.5:5000/reposure/reposure-surrogate:"),
        "{serialized}"
    );
    let extra = api
        .get("/apis/rbac.authorization.k8s.io/v1/namespaces/other-team/rolebindings/reposure-operator-extra")
        .expect("the --role binding");
    assert_eq!(extra["roleRef"]["kind"], "ClusterRole");
    assert_eq!(extra["roleRef"]["name"], "view");

    ok(&short(&["simple", "install", "-g", "10.1.2.3:5000"]));
    let simple = api
        .get("/apis/apps/v1/namespaces/other-team/deployments/reposure-simple")
        .expect("the simple registry");
    assert_eq!(
        simple["spec"]["template"]["spec"]["containers"][0]["image"],
        "10.1.2.3:5000/library/registry:2.8.3"
    );
}

/// OpenShift 4.16 on makes no token Secret for `builder`: its dockercfg Secret is the
/// credentials, and the service CA is copied from the namespace's ConfigMap into a Secret.
/// Without either, the error says what to give instead.
#[test]
fn openshift_provider_without_token_secrets() {
    let api = ApiServer::start(NS);
    let run = against(&api);
    failed(
        &run(&["registry", "create", "ocp", "--provider", "openshift"]),
        3,
        "no service account builder",
    );
    let ca = "-----BEGIN CERTIFICATE-----\nservice CA\n-----END CERTIFICATE-----\n";
    let dockercfg = json!({"image-registry.openshift-image-registry.svc:5000":
                           {"username": "serviceaccount", "password": "sa-token", "auth": "c2VydmljZWFjY291bnQ6c2EtdG9rZW4="}});
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(dockercfg.to_string());
    for (path, object) in [
        (
            format!("/api/v1/namespaces/{NS}/serviceaccounts/builder"),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder", "namespace": NS},
                   "imagePullSecrets": [{"name": "builder-dockercfg-q9z"}]}),
        ),
        (
            format!("/api/v1/namespaces/{NS}/secrets/builder-dockercfg-q9z"),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockercfg",
                   "metadata": {"name": "builder-dockercfg-q9z", "namespace": NS},
                   "data": {".dockercfg": encoded}}),
        ),
        (
            format!("/api/v1/namespaces/{NS}/configmaps/openshift-service-ca.crt"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "openshift-service-ca.crt", "namespace": NS},
                   "data": {"service-ca.crt": ca}}),
        ),
    ] {
        api.put(path, object);
    }
    ok(&run(&[
        "registry",
        "create",
        "ocp",
        "--provider",
        "openshift",
    ]));
    let created = api.get(&registry_path("ocp")).unwrap();
    assert_eq!(
        created["spec"],
        json!({"type": "oci",
               "indirect": {"namespace": "openshift-image-registry", "service": "image-registry", "port": 5000},
               "authenticationSecret": "reposure-openshift-service-ca",
               "authenticationSecretDataKey": "service-ca.crt",
               "authorizationSecret": "builder-dockercfg-q9z"})
    );
    assert_eq!(ok(&run(&["registry", "info", "ocp", "cert"])), ca);
    assert_eq!(
        ok(&run(&["registry", "info", "ocp", "username"])),
        "serviceaccount\n"
    );
    assert_eq!(
        ok(&run(&["registry", "info", "ocp", "password"])),
        "sa-token\n"
    );
}
