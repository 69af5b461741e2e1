//! An emulated Kubernetes API server: exactly the endpoints Reposure's client, CLI and
//! operator use, and nothing else; with [`ApiServer::start_cluster`], also the cluster
//! behind it: controllers ([`controllers`]: Deployments, ReplicaSets, garbage collection)
//! and a kubelet ([`kubelet`]) that runs pods as local processes.
//!
//! * `GET` of an object (`/apis/reposure.puccini.cloud/v1alpha1/namespaces/NS/registries/NAME`,
//!   `/api/v1/namespaces/NS/pods/NAME`, ...) and of a collection (with equality label and
//!   field selectors); watches (`?watch=true&resourceVersion=N`: every change after N, one
//!   JSON event per line, as they happen; see [`store`]); server-side apply (`PATCH`, the
//!   object stored as applied, `uid`, `generation` and `resourceVersion` kept by the
//!   server, status left alone; and `PATCH .../status`); `DELETE` (of a pod in a cluster:
//!   marked, and removed by the kubelet once stopped); `POST` to a collection (create, 409
//!   if the name is taken); and `GET .../pods/NAME/log` (with `tailLines`).
//! * `GET /api/v1/namespaces/NS/pods/NAME/exec?command=..&container=..&stdin=true&...`,
//!   upgraded to a WebSocket with subprotocol `v5.channel.k8s.io` or `v4.channel.k8s.io`.
//!   Frames carry a channel byte (0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize, 255
//!   close-stream in v5). The command runs as a local child process with the "pod's"
//!   environment, as the kubelet would run it in the container; when it exits, a `Status`
//!   (Success, or Failure with reason NonZeroExitCode) goes on channel 3 and the socket
//!   closes. Only the programs of the surrogate image run: `reposure-surrogate`, and `tar`
//!   and `test` (links to it, as in the image, for `kubectl cp`); besides them only `cat`
//!   and `sh`, for the benchmark's raw-exec baseline. Any other is "not found".
//!
//! It listens twice, on plain HTTP ([`ApiServer::kubeconfig`]) and on TLS with a
//! self-signed certificate ([`ApiServer::kubeconfig_tls`], for kubectl, which sends no
//! bearer token over plain HTTP). Requests must carry the kubeconfig's bearer token (else
//! 401). Every request is
//! recorded, so tests assert which endpoints were used; anything else gets 404.
//!
//! What this does not emulate: authentication other than a bearer token, admission
//! (schema and CEL validation), RBAC evaluation (a 403 is injected, not computed), field
//! managers and the merging of applied configurations (an apply replaces the object),
//! optimistic concurrency (a stale `resourceVersion` is not refused), watch bookmarks and
//! objects leaving a watch's selector, client certificates, the kubelet's own buffering
//! and timeouts, and a container runtime (a pod is a process on this machine sharing its
//! filesystem). Without [`ApiServer::start_cluster`] nothing acts on what is stored:
//! nothing becomes ready unless a test says so.
//!
//! Faults, switchable at any time through [`Faults`]: 403 on exec or on the Registry GET,
//! a server that speaks only v4, the connection dropped after N more stdout bytes, and
//! no status frame when the command ends.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::binary;

mod controllers;
mod exec;
mod kubelet;
mod store;

pub use exec::TrafficCount;

use store::Store;

/// The bearer token the kubeconfig carries.
pub const TOKEN: &str = "reposure-test-token-6f1d93c2a7";

/// Faults to inject; each can be changed while the server runs.
#[derive(Default)]
pub struct Faults {
    pub forbid_exec: AtomicBool,
    pub forbid_registry_get: AtomicBool,
    pub v4_only: AtomicBool,
    pub no_status: AtomicBool,
    /// Drop the next exec connection that sends this many more stdout bytes (0: off).
    pub drop_after_stdout_bytes: AtomicU64,
    /// Drop the next exec connection that receives this many more stdin bytes (0: off).
    pub drop_after_stdin_bytes: AtomicU64,
}

struct State {
    objects: Mutex<Store>,
    /// Pod logs by pod path.
    logs: Mutex<HashMap<String, String>>,
    faults: Faults,
    /// The "container" environment of exec'd commands, by pod path.
    pod_env: Mutex<HashMap<String, Vec<(String, String)>>>,
    requests: Mutex<Vec<String>>,
    /// Processes started through exec, for tests that kill them.
    exec_pids: Mutex<Vec<u32>>,
    exec_traffic: exec::ExecTraffic,
    /// The running container process of each pod the kubelet runs, by pod path.
    container_pids: Mutex<HashMap<String, u32>>,
    /// The surrogate container's image: the only programs exec can run, as in the real
    /// image (`reposure-surrogate`, and `tar` and `test` linked to it).
    image: PathBuf,
    /// Controllers and a kubelet act on the store.
    cluster: bool,
}

/// The server, on 127.0.0.1, with its kubeconfig; stopped on drop.
pub struct ApiServer {
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
    dir: tempfile::TempDir,
    port: u16,
    spooler: Option<std::process::Child>,
}

fn registry_path(namespace: &str, name: &str) -> String {
    format!("/apis/reposure.puccini.cloud/v1alpha1/namespaces/{namespace}/registries/{name}")
}

fn pod_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{name}")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl ApiServer {
    /// Starts the server; its kubeconfig's context uses `namespace` by default.
    pub fn start(namespace: &str) -> Self {
        Self::launch(namespace, false)
    }

    /// Starts the server with a cluster behind it: the Deployment and ReplicaSet
    /// controllers, the garbage collector, and a kubelet that runs the images of this
    /// project (`reposure-operator`, `reposure-surrogate`) as local processes.
    pub fn start_cluster(namespace: &str) -> Self {
        Self::launch(namespace, true)
    }

    fn launch(namespace: &str, cluster: bool) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::Builder::new()
            .prefix("reposure-kube-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("image");
        std::fs::create_dir(&image).unwrap();
        for name in ["reposure-surrogate", "tar", "test"] {
            std::os::unix::fs::symlink(binary("reposure-surrogate"), image.join(name)).unwrap();
        }
        // Not in the real image: what the benchmark's raw-exec baseline runs (on a real
        // cluster it would run them in a debug container beside the surrogate).
        for (name, program) in [("cat", "/bin/cat"), ("sh", "/bin/sh")] {
            std::os::unix::fs::symlink(program, image.join(name)).unwrap();
        }
        let state = Arc::new(State {
            objects: Mutex::new(Store::default()),
            logs: Mutex::new(HashMap::new()),
            faults: Faults::default(),
            pod_env: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            exec_pids: Mutex::new(Vec::new()),
            exec_traffic: Default::default(),
            container_pids: Mutex::new(HashMap::new()),
            image: image.clone(),
            cluster,
        });
        let accept_state = state.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(accept_state.clone(), stream));
            }
        });
        // The same API over TLS, for kubectl, which sends no bearer token over plain HTTP.
        let tls_listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let tls_port = tls_listener.local_addr().unwrap().port();
        let (ca_pem, acceptor) = tls_acceptor();
        let tls_state = state.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = tls_listener.accept().await {
                let (state, acceptor) = (tls_state.clone(), acceptor.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve(state, stream).await;
                    }
                });
            }
        });
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&ca_pem);
        std::fs::write(
            dir.path().join("kubeconfig-tls"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: emulated\n  cluster:\n    server: https://127.0.0.1:{tls_port}\n    certificate-authority-data: {ca}\nusers:\n- name: tester\n  user:\n    token: {TOKEN}\ncontexts:\n- name: emulated\n  context:\n    cluster: emulated\n    user: tester\n    namespace: {namespace}\ncurrent-context: emulated\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: emulated\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: tester\n  user:\n    token: {TOKEN}\ncontexts:\n- name: emulated\n  context:\n    cluster: emulated\n    user: tester\n    namespace: {namespace}\n- name: other\n  context:\n    cluster: emulated\n    user: tester\n    namespace: other-team\ncurrent-context: emulated\n"
            ),
        )
        .unwrap();
        if cluster {
            let operator = dir.path().join("image-operator");
            std::fs::create_dir(&operator).unwrap();
            std::os::unix::fs::symlink(
                binary("reposure-operator"),
                operator.join("reposure-operator"),
            )
            .unwrap();
            let node = Arc::new(kubelet::Node {
                images: kubelet::Images(HashMap::from([
                    ("reposure-surrogate".to_owned(), image),
                    ("reposure-operator".to_owned(), operator),
                ])),
                root: dir.path().join("node"),
                kubeconfig: dir.path().join("kubeconfig"),
            });
            runtime.spawn(controllers::run(state.clone()));
            runtime.spawn(kubelet::run(state.clone(), node));
        }
        Self {
            state,
            runtime: Some(runtime),
            dir,
            port,
            spooler: None,
        }
    }

    /// The kubeconfig file.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A kubeconfig for the same server over TLS (its CA inline), as kubectl needs: it
    /// sends no bearer token over plain HTTP.
    pub fn kubeconfig_tls(&self) -> PathBuf {
        self.dir.path().join("kubeconfig-tls")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// Every request so far, as `METHOD PATH`.
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The exec streams' WebSocket messages and bytes so far, each way.
    pub fn exec_traffic(&self) -> TrafficCount {
        self.state.exec_traffic.read()
    }

    /// Processes started through exec so far.
    pub fn exec_pids(&self) -> Vec<u32> {
        self.state.exec_pids.lock().unwrap().clone()
    }

    /// The process of a pod's running container (in a cluster).
    pub fn container_pid(&self, pod_path: &str) -> Option<u32> {
        self.state
            .container_pids
            .lock()
            .unwrap()
            .get(pod_path)
            .copied()
    }

    /// An object at its API path, as stored.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.objects.lock().unwrap().get(path).cloned()
    }

    /// The API paths of every stored object.
    pub fn paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .state
            .objects
            .lock()
            .unwrap()
            .paths()
            .cloned()
            .collect();
        paths.sort();
        paths
    }

    /// Removes an object.
    pub fn state_remove(&self, path: &str) {
        self.state.objects.lock().unwrap().remove(path);
    }

    /// Deletes an object as `DELETE` does (a pod in a cluster: gracefully); false if there
    /// is none.
    pub fn delete(&self, path: &str) -> bool {
        let mut objects = self.state.objects.lock().unwrap();
        delete(&self.state, &mut objects, path).is_some()
    }

    /// Sets the log a pod serves.
    pub fn set_log(&self, namespace: &str, pod: &str, log: &str) {
        self.state
            .logs
            .lock()
            .unwrap()
            .insert(pod_path(namespace, pod), log.to_owned());
    }

    /// Stores an object at its API path.
    pub fn put(&self, path: String, object: Value) {
        self.state.objects.lock().unwrap().write(&path, object);
    }

    /// A Registry with a surrogate as the operator leaves it: the Registry Ready and
    /// naming its pod, the pod Running and Ready, the pod's main process a real spooler,
    /// and exec running the real `reposure-surrogate` against `registry_url`. Returns the
    /// pod's name.
    pub fn add_ready_registry(
        &mut self,
        namespace: &str,
        name: &str,
        registry_url: &str,
    ) -> String {
        self.add_ready_registry_with_env(namespace, name, registry_url, &[])
    }

    /// [`Self::add_ready_registry`] with more of the pod's environment (the
    /// `REPOSURE_*_FILE` variables the operator sets for the Registry's Secrets).
    pub fn add_ready_registry_with_env(
        &mut self,
        namespace: &str,
        name: &str,
        registry_url: &str,
        extra_env: &[(&str, &str)],
    ) -> String {
        let pod = format!("reposure-surrogate-{name}-7d9f8-x2k4q");
        let spool = self.dir.path().join(format!("spool-{namespace}-{name}"));
        std::fs::create_dir_all(&spool).unwrap();
        let mut env = vec![
            ("REPOSURE_REGISTRY".to_owned(), registry_url.to_owned()),
            ("REPOSURE_SPOOL".to_owned(), spool.display().to_string()),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self.state
            .pod_env
            .lock()
            .unwrap()
            .insert(pod_path(namespace, &pod), env.clone());
        let spooler = std::process::Command::new(binary("reposure-surrogate"))
            .arg("spooler")
            .envs(env)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.spooler = Some(spooler);
        assert!(crate::wait_until(
            std::time::Duration::from_secs(10),
            || { reposure_surrogate::spool::spooler_running(&spool) }
        ));
        self.put(
            registry_path(namespace, name),
            registry_object(
                namespace,
                name,
                Some(&pod),
                "True",
                "SurrogateReady",
                "ready",
            ),
        );
        self.put(
            pod_path(namespace, &pod),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": pod, "namespace": namespace,
                                "labels": reposure_client::kubernetes::surrogate_labels(name)},
                   "spec": {"containers": [{"name": reposure_client::kubernetes::SURROGATE_CONTAINER,
                                            "image": "ghcr.io/reposure/reposure-surrogate"}]},
                   "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
        );
        pod
    }

    /// A Registry whose surrogate is not ready, for the reason given.
    pub fn add_unready_registry(&self, namespace: &str, name: &str, reason: &str, message: &str) {
        self.put(
            registry_path(namespace, name),
            registry_object(namespace, name, None, "False", reason, message),
        );
    }

    /// Another pod like `from` (a second replica of the same container): its object under
    /// the name `to`, and the same environment for what is exec'd in it.
    pub fn copy_pod(&self, namespace: &str, from: &str, to: &str) {
        let (from, to_path) = (pod_path(namespace, from), pod_path(namespace, to));
        let mut pod = self.get(&from).expect("the pod to copy");
        pod["metadata"]["name"] = json!(to);
        pod["metadata"]["uid"] = Value::Null;
        self.put(to_path.clone(), pod);
        let mut envs = self.state.pod_env.lock().unwrap();
        let env = envs.get(&from).cloned().unwrap_or_default();
        envs.insert(to_path, env);
    }

    /// The spool directory of a Registry added with [`Self::add_ready_registry`].
    pub fn spool(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir.path().join(format!("spool-{namespace}-{name}"))
    }
}

fn registry_object(
    namespace: &str,
    name: &str,
    pod: Option<&str>,
    ready: &str,
    reason: &str,
    message: &str,
) -> Value {
    let mut status = json!({
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": message,
                        "lastTransitionTime": "2026-11-30T00:00:00Z", "observedGeneration": 1}]
    });
    if let Some(pod) = pod {
        status["surrogatePod"] = json!(pod);
    }
    json!({
        "apiVersion": "reposure.puccini.cloud/v1alpha1", "kind": "Registry",
        "metadata": {"name": name, "namespace": namespace, "generation": 1, "uid": "u-1"},
        "spec": {"type": "oci", "direct": {"host": "http://127.0.0.1:5000"}},
        "status": status
    })
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(mut spooler) = self.spooler.take() {
            let _ = spooler.kill();
            let _ = spooler.wait();
        }
        for pid in self.exec_pids() {
            // SAFETY: kill(2) of a child this server started; harmless if it already exited.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Serves one connection (plain or TLS) with upgrades (exec).
async fn serve<S>(state: Arc<State>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(state, request).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

/// A self-signed certificate for 127.0.0.1 (PEM) and an acceptor that serves it.
fn tls_acceptor() -> (String, tokio_rustls::TlsAcceptor) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (
        cert.pem(),
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    )
}

/// A response body: whole, or streamed (a watch).
type Body = BoxBody<Bytes, std::convert::Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    state
        .requests
        .lock()
        .unwrap()
        .push(format!("{} {}", request.method(), path));
    let authorized = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
    if !authorized {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &status(401, "Unauthorized", "Unauthorized"),
        );
    }
    if path.ends_with("/exec") {
        let pod_path = path.trim_end_matches("/exec").to_owned();
        return exec::exec(state, request, pod_path).await;
    }
    if path.contains("/registries") && state.faults.forbid_registry_get.load(Ordering::SeqCst) {
        return json_response(
            StatusCode::FORBIDDEN,
            &status(
                403,
                "Forbidden",
                "registries.reposure.puccini.cloud is forbidden: User \"tester\" cannot get resource \"registries\"",
            ),
        );
    }
    let query = request.uri().query().unwrap_or_default().to_owned();
    let method = request.method().clone();
    let body = match http_body_util::BodyExt::collect(request.into_body()).await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &status(400, "BadRequest", "unreadable body"),
            );
        }
    };
    if method == hyper::Method::GET && path.ends_with("/log") {
        return pod_log(&state, &path, &query);
    }
    let parameters = url_pairs(&query);
    let parameter = |name: &str| {
        parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    if method == hyper::Method::GET
        && is_collection(&path)
        && matches!(parameter("watch").as_str(), "true" | "1")
    {
        let selector = Selector {
            labels: parameter("labelSelector"),
            fields: parameter("fieldSelector"),
        };
        let since = parameter("resourceVersion").parse().unwrap_or(0);
        let timeout = parameter("timeoutSeconds")
            .parse()
            .unwrap_or(WATCH_TIMEOUT_SECONDS);
        return watch(state, path, selector, since, timeout);
    }
    let mut objects = state.objects.lock().unwrap();
    match method {
        hyper::Method::GET => {
            if let Some(object) = objects.get(&path) {
                return json_response(StatusCode::OK, object);
            }
            if is_collection(&path) {
                let selector = Selector {
                    labels: parameter("labelSelector"),
                    fields: parameter("fieldSelector"),
                };
                let items: Vec<Value> = objects
                    .list(&path)
                    .filter(|object| selector.matches(object))
                    .cloned()
                    .collect();
                return json_response(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "List",
                            "metadata": {"resourceVersion": objects.revision().to_string()},
                            "items": items}),
                );
            }
            json_response(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", &format!("{path} not found")),
            )
        }
        hyper::Method::PATCH => {
            let Ok(applied) = serde_json::from_slice::<Value>(&body) else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &status(400, "BadRequest", "the patch is not JSON"),
                );
            };
            if let Some(object_path) = path.strip_suffix("/status") {
                let Some(mut object) = objects.get(object_path).cloned() else {
                    return json_response(
                        StatusCode::NOT_FOUND,
                        &status(404, "NotFound", "no such object"),
                    );
                };
                object["status"] = applied["status"].clone();
                let written = objects.write(object_path, object);
                return json_response(StatusCode::OK, &written);
            }
            // Server-side apply of the main resource: the object as applied, with what
            // the server owns (uid, generation, creation time, deletion) kept, and the
            // status left alone.
            let previous = objects.get(&path).cloned();
            let mut object = applied;
            let generation = match &previous {
                Some(p) if p["spec"] == object["spec"] => {
                    p["metadata"]["generation"].as_i64().unwrap_or(1)
                }
                Some(p) => p["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
                None => 1,
            };
            object["metadata"]["generation"] = json!(generation);
            if let Some(previous) = &previous {
                if !previous["metadata"]["deletionTimestamp"].is_null() {
                    object["metadata"]["deletionTimestamp"] =
                        previous["metadata"]["deletionTimestamp"].clone();
                }
                if let Some(status) = previous.get("status") {
                    object["status"] = status.clone();
                }
            }
            allocate_cluster_ip(&path, &mut object, previous.as_ref(), objects.revision());
            let written = objects.write(&path, object);
            json_response(StatusCode::OK, &written)
        }
        // Create: the object at COLLECTION/NAME, unless one is there.
        hyper::Method::POST if is_collection(&path) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &status(400, "BadRequest", "the object is not JSON"),
                );
            };
            let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
                return json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &status(422, "Invalid", "metadata.name: Required value"),
                );
            };
            let object_path = format!("{path}/{name}");
            if objects.get(&object_path).is_some() {
                return json_response(
                    StatusCode::CONFLICT,
                    &status(409, "AlreadyExists", &format!("{name} already exists")),
                );
            }
            allocate_cluster_ip(&object_path, &mut object, None, objects.revision());
            let written = objects.write(&object_path, object);
            json_response(StatusCode::CREATED, &written)
        }
        hyper::Method::DELETE => match delete(&state, &mut objects, &path) {
            Some(_) => json_response(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ),
            None => json_response(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", &format!("{path} not found")),
            ),
        },
        _ => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(405, "MethodNotAllowed", "not emulated"),
        ),
    }
}

/// Deletes the object at `path`: in a cluster a pod is marked, and the kubelet removes it
/// once its containers stopped; anything else goes at once (the garbage collector then
/// takes what it owned).
fn delete(state: &State, objects: &mut Store, path: &str) -> Option<Value> {
    if state.cluster && path.contains("/pods/") {
        objects.mark_deleted(path)
    } else {
        objects.remove(path)
    }
}

/// `GET .../pods/NAME/log`, with `tailLines`.
fn pod_log(state: &State, path: &str, query: &str) -> Response<Body> {
    let logs = state.logs.lock().unwrap();
    let Some(log) = logs.get(path.trim_end_matches("/log")) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", "no such pod"),
        );
    };
    let tail = url_pairs(query)
        .into_iter()
        .find(|(k, _)| k == "tailLines")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let lines: Vec<&str> = log.lines().collect();
    let shown = &lines[lines.len() - tail.unwrap_or(lines.len()).min(lines.len())..];
    let text: String = shown.iter().map(|l| format!("{l}\n")).collect();
    Response::builder()
        .header("content-type", "text/plain")
        .body(full(text))
        .unwrap()
}

/// How long a watch stays open when the client names no `timeoutSeconds` (the API
/// server's default is a random 30-60 minutes; kube asks for 290 s).
const WATCH_TIMEOUT_SECONDS: u64 = 290;

/// A watch: every change to the collection's objects after resource version `since`, one
/// JSON event per line, as they happen, until `timeout` seconds pass. Version 0 starts with
/// an `ADDED` for each object there is, as the API server does.
fn watch(
    state: Arc<State>,
    collection: String,
    selector: Selector,
    since: u64,
    timeout: u64,
) -> Response<Body> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let (revisions, seen, initial) = {
        let objects = state.objects.lock().unwrap();
        let initial: Vec<Value> = if since == 0 {
            objects
                .list(&collection)
                .filter(|o| selector.matches(o))
                .map(|o| json!({"type": "ADDED", "object": o}))
                .collect()
        } else {
            Vec::new()
        };
        let seen = if since == 0 {
            objects.revision()
        } else {
            since
        };
        (objects.subscribe(), seen, initial)
    };
    let events = futures::stream::unfold(
        (seen, initial, revisions),
        move |(mut seen, mut pending, mut revisions)| {
            let (state, collection, selector) =
                (state.clone(), collection.clone(), selector.clone());
            async move {
                loop {
                    if !pending.is_empty() {
                        let lines: String = pending.drain(..).map(|e| format!("{e}\n")).collect();
                        let frame = Frame::data(Bytes::from(lines));
                        return Some((Ok(frame), (seen, pending, revisions)));
                    }
                    // Marked seen before reading: a change made after it wakes the wait.
                    revisions.borrow_and_update();
                    {
                        let objects = state.objects.lock().unwrap();
                        pending = objects
                            .changes_since(seen, &collection)
                            .filter(|change| selector.matches(&change.object))
                            .map(|change| json!({"type": change.kind, "object": change.object}))
                            .collect();
                        seen = objects.revision();
                    }
                    if pending.is_empty() {
                        tokio::select! {
                            changed = revisions.changed() => if changed.is_err() { return None },
                            () = tokio::time::sleep_until(deadline) => return None,
                        }
                    }
                }
            }
        },
    );
    Response::builder()
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(events)))
        .unwrap()
}

/// A label and a field selector (equality terms only, `k=v,k=v`), as lists and watches
/// take them.
#[derive(Clone, Default)]
struct Selector {
    labels: String,
    fields: String,
}

impl Selector {
    fn matches(&self, object: &Value) -> bool {
        matches_labels(object, &self.labels) && matches_fields(object, &self.fields)
    }
}

/// The Service IP allocator: a Service gets a cluster IP when it is made (unless it
/// asks for one, or for none with `None`), and keeps it when applied again.
fn allocate_cluster_ip(path: &str, object: &mut Value, previous: Option<&Value>, serial: u64) {
    if !path.contains("/services/") || !object["spec"].is_object() {
        return;
    }
    if object["spec"].get("clusterIP").is_none() {
        object["spec"]["clusterIP"] = previous
            .map(|p| p["spec"]["clusterIP"].clone())
            .filter(|ip| !ip.is_null())
            .unwrap_or_else(|| {
                json!(format!(
                    "10.96.{}.{}",
                    (serial / 250) % 256,
                    1 + serial % 250
                ))
            });
    }
}

/// `/api/v1/[namespaces/NS/]RESOURCE` or `/apis/GROUP/VERSION/[namespaces/NS/]RESOURCE`.
fn is_collection(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = match segments.first() {
        Some(&"api") => &segments[2.min(segments.len())..],
        Some(&"apis") => &segments[3.min(segments.len())..],
        _ => return false,
    };
    matches!(rest, [_] | ["namespaces", _, _])
}

/// Whether an object's fields satisfy `a.b=v,c=w` (equality selectors only, as the
/// API server offers them for events' `involvedObject.*` and `reason`).
fn matches_fields(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (key, value) = term.split_once('=').unwrap_or((term, ""));
        let pointer = format!("/{}", key.replace('.', "/"));
        object.pointer(&pointer).and_then(Value::as_str) == Some(value)
    })
}

/// Whether an object's labels satisfy `k=v,k=v` (equality selectors only).
fn matches_labels(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (key, value) = term.split_once('=').unwrap_or((term, ""));
        object["metadata"]["labels"][key].as_str() == Some(value)
    })
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
