//! The operator's whole flow on the emulated cluster (`ApiServer::start_cluster`): the
//! real `reposure-operator` runs as a pod the emulated kubelet starts from the Deployment
//! `reposure operator install` applies, and every surrogate it makes runs the real spooler
//! and its exec probes against the real registry. The test acts only as a user would:
//! the CLI, kubectl, and writes of Secrets.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use reposure_tests::apiserver::ApiServer;
use reposure_tests::cli::{against, failed, ok, reposure_with};
use reposure_tests::registry::{Registry, RegistryConfig};
use reposure_tests::{random_bytes, sha256_hex, wait_until};
use serde_json::{Value, json};

const NS: &str = "team";

fn registry_object(api: &ApiServer, name: &str) -> Option<Value> {
    api.get(&format!(
        "/apis/reposure.puccini.cloud/v1alpha1/namespaces/{NS}/registries/{name}"
    ))
}

/// The Registry's Ready condition: (status, reason, message).
fn readiness(api: &ApiServer, name: &str) -> (String, String, String) {
    let registry = registry_object(api, name).unwrap_or_default();
    let conditions = registry["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = conditions.iter().find(|c| c["type"] == "Ready");
    let field = |f: &str| {
        ready
            .and_then(|c| c[f].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    (field("status"), field("reason"), field("message"))
}

fn surrogate_pod(api: &ApiServer, name: &str) -> String {
    registry_object(api, name).unwrap_or_default()["status"]["surrogatePod"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A `kubernetes.io/dockerconfigjson` Secret for `host`, as `kubectl create secret
/// docker-registry` makes it.
fn docker_secret(name: &str, host: &str, user: &str, password: &str) -> Value {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let config = json!({"auths": {host: {"username": user, "password": password,
                                          "auth": engine.encode(format!("{user}:{password}"))}}});
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
           "metadata": {"name": name, "namespace": NS},
           "data": {".dockerconfigjson": engine.encode(config.to_string())}})
}

fn objects_of(api: &ApiServer, marker: &str) -> Vec<String> {
    api.paths()
        .into_iter()
        .filter(|p| p.contains(marker))
        .collect()
}

/// Install, a Registry whose credentials are wrong (the probe's reason in its status),
/// the Secret fixed (a rollout), pushes and pulls, its pod deleted (replaced), the
/// Registry deleted (everything collected), and the operator uninstalled.
#[test]
fn the_operator_runs_a_registry_through_its_life() {
    let registry = Registry::start_with(RegistryConfig {
        credentials: Some(("alice".into(), "s3cret-one".into())),
        ..Default::default()
    });
    let api = ApiServer::start_cluster(NS);
    let run = against(&api);
    let minute = "60";

    ok(&run(&[
        "operator",
        "install",
        "--wait",
        "--timeout",
        minute,
    ]));
    assert!(
        wait_until(Duration::from_secs(20), || {
            ok(&run(&["operator", "logs"])).contains("operator running")
        }),
        "the operator pod runs the operator: {}",
        ok(&run(&["operator", "logs"]))
    );

    // Wrong credentials: the surrogate runs, its readiness probe fails, and the status
    // says why, from the probe's event.
    let secret_path = format!("/api/v1/namespaces/{NS}/secrets/registry-credentials");
    api.put(
        secret_path.clone(),
        docker_secret("registry-credentials", &registry.host(), "alice", "wrong"),
    );
    ok(&run(&[
        "registry",
        "create",
        "default",
        "--host",
        &registry.url(),
        "--authorization-secret",
        "registry-credentials",
    ]));
    assert!(
        wait_until(Duration::from_secs(30), || {
            readiness(&api, "default").1 == "SurrogateNotReady"
        }),
        "{:?}",
        readiness(&api, "default")
    );
    let (_, _, message) = readiness(&api, "default");
    let lower = message.to_lowercase();
    assert!(
        message.contains("kubectl describe pod")
            && ["401", "unauthorized", "credentials"]
                .iter()
                .any(|w| lower.contains(w)),
        "the probe's reason: {message}"
    );
    let unready_pods = objects_of(&api, "/pods/reposure-surrogate-default-");
    assert_eq!(unready_pods.len(), 1, "{unready_pods:?}");

    // The Secret fixed: the operator rolls the surrogate, and the new pod is ready.
    api.put(
        secret_path,
        docker_secret(
            "registry-credentials",
            &registry.host(),
            "alice",
            "s3cret-one",
        ),
    );
    assert!(
        wait_until(Duration::from_secs(60), || readiness(&api, "default").0
            == "True"),
        "{:?}",
        readiness(&api, "default")
    );
    let first = surrogate_pod(&api, "default");
    assert!(
        !unready_pods.iter().any(|p| p.ends_with(&first)),
        "a new pod after the Secret changed: {first} in {unready_pods:?}"
    );

    let work = tempfile::tempdir().unwrap();
    let content = random_bytes(200_000);
    let file = work.path().join("hello.bin");
    fs::write(&file, &content).unwrap();
    let push = |name: &str| {
        ok(&run(&[
            "image",
            "push",
            "default",
            name,
            file.to_str().unwrap(),
        ]))
    };
    let pulled = |name: &str| {
        let out = work.path().join("pulled");
        ok(&run(&[
            "image",
            "pull",
            "default",
            name,
            "-u",
            "-o",
            out.to_str().unwrap(),
        ]));
        sha256_hex(&fs::read(out).unwrap())
    };
    push("myrepo/hello:v1");
    assert_eq!(pulled("myrepo/hello:v1"), sha256_hex(&content));

    // The pod deleted: it stops, and its replacement serves.
    let first_path = format!("/api/v1/namespaces/{NS}/pods/{first}");
    assert!(api.delete(&first_path));
    assert!(
        wait_until(Duration::from_secs(20), || api.get(&first_path).is_none()),
        "the kubelet stopped and removed {first}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            let pod = surrogate_pod(&api, "default");
            readiness(&api, "default").0 == "True" && !pod.is_empty() && pod != first
        }),
        "{:?} {}",
        readiness(&api, "default"),
        surrogate_pod(&api, "default")
    );
    push("myrepo/hello:v2");
    assert_eq!(pulled("myrepo/hello:v2"), sha256_hex(&content));
    assert_eq!(pulled("myrepo/hello:v1"), sha256_hex(&content));

    // The spooler killed: the kubelet restarts the container in the same pod.
    let second = surrogate_pod(&api, "default");
    let second_path = format!("/api/v1/namespaces/{NS}/pods/{second}");
    let spooler = api.container_pid(&second_path).expect("the spooler runs");
    // SAFETY: kill(2) of a process the emulated kubelet started.
    unsafe { libc::kill(spooler as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(20), || {
            let pod = api.get(&second_path).unwrap_or_default();
            let pod_ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            pod["status"]["containerStatuses"][0]["restartCount"] == 1
                && pod_ready
                && readiness(&api, "default").0 == "True"
                && api
                    .container_pid(&second_path)
                    .is_some_and(|pid| pid != spooler)
        }),
        "restarted: {}",
        api.get(&second_path).unwrap_or_default()["status"]
    );
    assert_eq!(surrogate_pod(&api, "default"), second);
    push("myrepo/hello:v3");
    assert_eq!(pulled("myrepo/hello:v3"), sha256_hex(&content));

    // `shell`: kubectl debug joins an ephemeral container to the serving pod (kubectl here
    // is a stand-in that records its arguments: ephemeral containers and attach are not
    // emulated).
    let shim = tempfile::tempdir().unwrap();
    let recorded = shim.path().join("args");
    let kubectl = shim.path().join("kubectl");
    fs::write(
        &kubectl,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\n",
            recorded.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&kubectl, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        shim.path().display(),
        std::env::var("PATH").unwrap()
    );
    let kubeconfig = api.kubeconfig().display().to_string();
    ok(&reposure_with(
        &["-k", &kubeconfig, "registry", "shell", "default"],
        &[("PATH", &path)],
    ));
    let args = fs::read_to_string(&recorded).unwrap();
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        [
            "--kubeconfig",
            kubeconfig.as_str(),
            "--namespace",
            NS,
            "debug",
            "-it",
            &surrogate_pod(&api, "default"),
            "--image=docker.io/library/busybox:1.36",
            "--target=surrogate",
            "--",
            "sh"
        ]
    );

    // The Registry deleted: its Deployment, ReplicaSets and pods are collected (events
    // stay, as they do until their TTL).
    ok(&run(&["registry", "delete", "default"]));
    let owned = || -> Vec<String> {
        objects_of(&api, "reposure-surrogate-default")
            .into_iter()
            .filter(|p| !p.contains("/events/"))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || owned().is_empty()),
        "left: {:?}",
        owned()
    );

    // A deletion is no warning: the operator's log has none from the whole life.
    let log = || ok(&run(&["operator", "logs"]));
    assert!(
        wait_until(Duration::from_secs(10), || log()
            .contains("registry deleted")),
        "{}",
        log()
    );
    assert!(!log().contains("WARN"), "{}", log());

    ok(&run(&[
        "operator",
        "uninstall",
        "--wait",
        "--timeout",
        minute,
    ]));
    assert!(
        wait_until(Duration::from_secs(30), || {
            objects_of(&api, "/pods/reposure-operator-").is_empty()
        }),
        "the operator's pod is gone: {:?}",
        objects_of(&api, "/pods/")
    );
}

/// A surrogate image the node cannot pull: the Registry is `SurrogateNotReady`, and its
/// message names the waiting reason and the pod to describe.
#[test]
fn an_image_that_cannot_be_pulled_is_named_in_the_status() {
    let registry = Registry::start();
    let api = ApiServer::start_cluster(NS);
    let run = against(&api);
    ok(&run(&[
        "operator",
        "install",
        "--wait",
        "--timeout",
        "60",
        "--surrogate-image",
        "registry.example/someone/else:1",
    ]));
    ok(&run(&[
        "registry",
        "create",
        "default",
        "--host",
        &registry.url(),
    ]));
    assert!(
        wait_until(Duration::from_secs(30), || {
            let (status, reason, message) = readiness(&api, "default");
            status == "False"
                && reason == "SurrogateNotReady"
                && message.contains("ErrImagePull")
                && message.contains("kubectl describe pod")
        }),
        "{:?}",
        readiness(&api, "default")
    );
    failed(&run(&["image", "list", "default"]), 5, "ErrImagePull");
}

/// An installation of the original Reposure upgraded in place: its operator Deployment and
/// Role, a Registry with its original-style status, and its bare surrogate pod are there
/// first; `operator install` replaces the operator, which adopts the Registry, runs a
/// surrogate of its own and, once that is ready, deletes the bare pod.
#[test]
fn an_original_installation_is_upgraded_in_place() {
    let registry = Registry::start();
    let api = ApiServer::start_cluster(NS);
    // The labels the original puts on its objects (client/admin/common.go).
    let original_labels = json!({"app.kubernetes.io/name": "reposure-operator",
                                 "app.kubernetes.io/instance": "reposure-operator-team",
                                 "app.kubernetes.io/version": "v0.1.5",
                                 "app.kubernetes.io/component": "operator",
                                 "app.kubernetes.io/part-of": "reposure",
                                 "app.kubernetes.io/managed-by": "reposure"});
    api.put(
        format!("/apis/apps/v1/namespaces/{NS}/deployments/reposure-operator"),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "reposure-operator", "namespace": NS, "labels": original_labels},
               "spec": {"replicas": 1, "selector": {"matchLabels": original_labels},
                        "template": {"metadata": {"labels": original_labels},
                                     "spec": {"containers": [{"name": "operator",
                                                              "image": "docker.io/tliron/reposure-operator:v0.1.5"}]}}}}),
    );
    api.put(
        format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/reposure"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "reposure", "namespace": NS, "labels": original_labels}}),
    );
    api.put(
        format!("/apis/reposure.puccini.cloud/v1alpha1/namespaces/{NS}/registries/default"),
        json!({"apiVersion": "reposure.puccini.cloud/v1alpha1", "kind": "Registry",
               "metadata": {"name": "default", "namespace": NS},
               "spec": {"type": "oci", "direct": {"host": registry.url()}},
               "status": {"surrogatePod": "reposure-surrogate-default"}}),
    );
    let bare = format!("/api/v1/namespaces/{NS}/pods/reposure-surrogate-default");
    api.put(
        bare.clone(),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "reposure-surrogate-default", "namespace": NS,
                            "labels": {"app.kubernetes.io/name": "reposure-surrogate-default",
                                       "app.kubernetes.io/instance": "reposure-surrogate-default-team",
                                       "app.kubernetes.io/component": "surrogate",
                                       "app.kubernetes.io/part-of": "reposure",
                                       "app.kubernetes.io/managed-by": "reposure"}},
               "spec": {"containers": [{"name": "surrogate",
                                        "image": "docker.io/tliron/reposure-surrogate:v0.1.5"}]}}),
    );
    let run = against(&api);
    let installed = run(&["operator", "install", "--wait", "--timeout", "60"]);
    ok(&installed);
    assert!(
        String::from_utf8_lossy(&installed.stderr)
            .contains("replaced the original Reposure operator")
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            readiness(&api, "default").0 == "True" && api.get(&bare).is_none()
        }),
        "{:?}, bare pod {:?}",
        readiness(&api, "default"),
        api.get(&bare).map(|p| p["metadata"].clone())
    );
    assert!(surrogate_pod(&api, "default").starts_with("reposure-surrogate-default-"));
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("f");
    fs::write(&file, b"after the upgrade\n").unwrap();
    ok(&run(&[
        "image",
        "push",
        "default",
        "upgraded/file",
        file.to_str().unwrap(),
    ]));
    assert_eq!(
        ok(&run(&["image", "pull", "default", "upgraded/file", "-u"])),
        "after the upgrade\n"
    );
    assert!(
        api.get(&format!(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/reposure"
        ))
        .is_none()
    );
}
