//! The kubelet of the emulated cluster's one node: it runs every pod's container as a local
//! process, as a container runtime would, and reports on it.
//!
//! * Images: a container's image is found by its name's last path segment, without tag or
//!   digest (`ghcr.io/reposure/reposure-surrogate:0.1.0` is `reposure-surrogate`), among
//!   the images this emulation has ([`Images`]); its `command[0]` is a program of that
//!   image. Any other image waits in `ErrImagePull`, with a `Failed` event, as an image a
//!   node cannot pull does.
//! * Volumes: `emptyDir` is a fresh directory of the pod; `secret` writes the Secret's keys
//!   (its `items`, or all) as files with `defaultMode`; a Secret that does not exist keeps
//!   the pod `ContainerCreating` with a `FailedMount` event until it does. There is no
//!   mount namespace, so a container's paths under a volume's `mountPath` are rewritten to
//!   the volume's directory in its environment values (where the surrogate reads them),
//!   and `TMPDIR` names its `/tmp` volume or a directory of the pod.
//! * Environment: `value`s, and `valueFrom.fieldRef` of `metadata.name` and
//!   `metadata.namespace`. A pod with a service account gets `KUBECONFIG` naming the
//!   emulated API server in place of the token files (kube reads those at fixed paths).
//! * Lifecycle: `Running` once started; `Ready` when its readiness probe passed (at once
//!   without one); a process that exits is restarted (`restartCount`, a `BackOff` event);
//!   exec probes run the image's program with the pod's environment, every `periodSeconds`
//!   but at most [`PROBE_PERIOD_CAP`] apart (a test sees in seconds what a cluster shows in
//!   tens of seconds), with `timeoutSeconds`; a failed readiness probe makes the pod unready
//!   and records an `Unhealthy` event "Readiness probe failed: OUTPUT", as the kubelet does;
//!   `failureThreshold` failed liveness probes kill and restart the container (`Killing`).
//! * Deletion: a pod marked deleted gets SIGTERM, SIGKILL after its grace period (at most
//!   [`GRACE_CAP`]), and is then removed from the store.
//! * Output: the process's stdout and stderr are the pod's log (`kubectl logs`).
//!
//! Only the first container of a pod runs; init containers, resource limits, security
//! contexts and user IDs, image pull policies and node selection are not emulated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::State;
use super::store::now;

/// How often a pod's worker looks at its pod and its process.
const TICK: Duration = Duration::from_millis(100);
/// Probe periods are shortened to this.
const PROBE_PERIOD_CAP: Duration = Duration::from_secs(1);
/// A deleted pod's processes get at most this long after SIGTERM.
const GRACE_CAP: Duration = Duration::from_secs(5);
/// The wait before a container that exited is started again (the kubelet backs off from
/// 10 s; shortened like the probes).
const RESTART_DELAY: Duration = Duration::from_millis(500);

/// The images this node can run: each a directory of programs, by image name.
pub(super) struct Images(pub HashMap<String, PathBuf>);

impl Images {
    fn programs(&self, image: &str) -> Option<&Path> {
        let path = image.split('@').next().unwrap_or(image);
        let last = path.rsplit('/').next().unwrap_or(path);
        let name = last.split(':').next().unwrap_or(last);
        self.0.get(name).map(PathBuf::as_path)
    }
}

/// What the kubelet needs besides the store.
pub(super) struct Node {
    pub images: Images,
    /// Where pods' directories go.
    pub root: PathBuf,
    /// Given to pods with a service account.
    pub kubeconfig: PathBuf,
}

pub(super) async fn run(state: Arc<State>, node: Arc<Node>) {
    let mut workers: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        workers.retain(|_, worker| !worker.is_finished());
        let pods: Vec<(String, Value)> = state
            .objects
            .lock()
            .unwrap()
            .all()
            .filter(|(path, _)| path.contains("/pods/"))
            .map(|(path, pod)| (path.clone(), pod.clone()))
            .collect();
        for (path, pod) in pods {
            let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_owned();
            if let std::collections::hash_map::Entry::Vacant(slot) = workers.entry(uid) {
                let worker = PodWorker::new(state.clone(), node.clone(), path, &pod);
                slot.insert(tokio::spawn(worker.run(pod)));
            }
        }
        tokio::time::sleep(TICK).await;
    }
}

struct PodWorker {
    state: Arc<State>,
    node: Arc<Node>,
    path: String,
    namespace: String,
    name: String,
    uid: String,
    dir: PathBuf,
}

/// Why a pod's worker stops watching its container.
enum Stop {
    /// The pod is being deleted (or is gone).
    Deleted,
    /// The container must be started again.
    Restart,
}

impl PodWorker {
    fn new(state: Arc<State>, node: Arc<Node>, path: String, pod: &Value) -> Self {
        let field = |f: &str| pod["metadata"][f].as_str().unwrap_or("").to_owned();
        let (namespace, name, uid) = (field("namespace"), field("name"), field("uid"));
        let dir = node.root.join(format!("{namespace}_{name}_{uid}"));
        Self {
            state,
            node,
            path,
            namespace,
            name,
            uid,
            dir,
        }
    }

    fn pod(&self) -> Option<Value> {
        self.state.objects.lock().unwrap().get(&self.path).cloned()
    }

    /// Whether the pod is gone, being deleted, or another pod (a new uid) took its name.
    fn deleted(&self) -> bool {
        self.pod().is_none_or(|pod| {
            !pod["metadata"]["deletionTimestamp"].is_null() || pod["metadata"]["uid"] != self.uid
        })
    }

    /// Changes the pod's status, if the pod is still this one.
    fn set_status(&self, change: impl FnOnce(&mut Value)) {
        let mut objects = self.state.objects.lock().unwrap();
        let Some(mut pod) = objects.get(&self.path).cloned() else {
            return;
        };
        if pod["metadata"]["uid"] != self.uid {
            return;
        }
        let before = pod["status"].clone();
        change(&mut pod["status"]);
        if pod["status"] != before {
            objects.write(&self.path, pod);
        }
    }

    /// Records an event about the pod; a repeat of the same reason and message counts up.
    fn event(&self, kind: &str, reason: &str, message: &str) {
        let collection = format!("/api/v1/namespaces/{}/events", self.namespace);
        let mut objects = self.state.objects.lock().unwrap();
        let same = objects
            .list(&collection)
            .find(|e| {
                e["involvedObject"]["uid"] == self.uid.as_str()
                    && e["reason"] == reason
                    && e["message"] == message
            })
            .cloned();
        let (path, event) = match same {
            Some(mut event) => {
                event["count"] = json!(event["count"].as_i64().unwrap_or(1) + 1);
                event["lastTimestamp"] = json!(now());
                let name = event["metadata"]["name"].as_str().unwrap_or("").to_owned();
                (format!("{collection}/{name}"), event)
            }
            None => {
                let name = format!("{}.{:x}", self.name, objects.revision() + 1);
                let event = json!({
                    "apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": name, "namespace": self.namespace},
                    "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": self.name,
                                       "namespace": self.namespace, "uid": self.uid},
                    "reason": reason, "message": message, "type": kind, "count": 1,
                    "firstTimestamp": now(), "lastTimestamp": now(),
                    "source": {"component": "kubelet", "host": "emulated-node"}
                });
                (format!("{collection}/{name}"), event)
            }
        };
        objects.write(&path, event);
    }

    fn waiting(&self, reason: &str, message: &str) {
        let (reason, message) = (reason.to_owned(), message.to_owned());
        self.set_status(move |status| {
            status["phase"] = json!("Pending");
            status["containerStatuses"] = json!([{"name": "", "ready": false, "restartCount": 0,
                                                   "state": {"waiting": {"reason": reason, "message": message}}}]);
        });
    }

    async fn run(self, pod: Value) {
        let container = pod["spec"]["containers"][0].clone();
        let container_name = container["name"].as_str().unwrap_or("").to_owned();
        let Some(programs) = self
            .node
            .images
            .programs(container["image"].as_str().unwrap_or(""))
            .map(Path::to_path_buf)
        else {
            let image = container["image"].as_str().unwrap_or("").to_owned();
            self.event(
                "Warning",
                "Failed",
                &format!("Failed to pull image \"{image}\": not an image of this emulation"),
            );
            self.waiting("ErrImagePull", &format!("image {image} cannot be pulled"));
            self.wait_for_deletion().await;
            return self.finish();
        };
        let Some(env) = self.prepare(&pod, &container).await else {
            return self.finish();
        };
        self.state
            .pod_env
            .lock()
            .unwrap()
            .insert(self.path.clone(), env.clone());
        let mut restarts = 0;
        loop {
            let Some(mut child) = self.start(&programs, &container, &env, restarts) else {
                self.wait_for_deletion().await;
                break;
            };
            self.event(
                "Normal",
                "Started",
                &format!("Started container {container_name}"),
            );
            match self.watch(&mut child, &programs, &container, &env).await {
                Stop::Deleted => {
                    stop(&mut child, &pod).await;
                    break;
                }
                Stop::Restart => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    restarts += 1;
                    self.event(
                        "Warning",
                        "BackOff",
                        &format!("Back-off restarting container {container_name}"),
                    );
                    tokio::time::sleep(RESTART_DELAY).await;
                    if self.deleted() {
                        break;
                    }
                }
            }
        }
        self.finish();
    }

    async fn wait_for_deletion(&self) {
        while !self.deleted() {
            tokio::time::sleep(TICK).await;
        }
    }

    /// The pod is done: its environment and directory go, and then the pod itself.
    fn finish(&self) {
        self.state.pod_env.lock().unwrap().remove(&self.path);
        self.state.container_pids.lock().unwrap().remove(&self.path);
        let _ = std::fs::remove_dir_all(&self.dir);
        let mut objects = self.state.objects.lock().unwrap();
        if objects
            .get(&self.path)
            .is_some_and(|pod| pod["metadata"]["uid"] == self.uid.as_str())
        {
            objects.remove(&self.path);
        }
    }

    /// Makes the volumes and the container's environment; `None` if the pod was deleted
    /// while it waited for a Secret.
    async fn prepare(&self, pod: &Value, container: &Value) -> Option<Vec<(String, String)>> {
        let mut volume_dirs: HashMap<String, PathBuf> = HashMap::new();
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().unwrap_or("").to_owned();
            let dir = self.dir.join("volumes").join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(source) = volume.get("secret") {
                let secret_name = source["secretName"].as_str().unwrap_or("");
                let secret = loop {
                    let path = format!(
                        "/api/v1/namespaces/{}/secrets/{secret_name}",
                        self.namespace
                    );
                    if let Some(secret) = self.state.objects.lock().unwrap().get(&path).cloned() {
                        break secret;
                    }
                    self.event(
                        "Warning",
                        "FailedMount",
                        &format!("MountVolume.SetUp failed for volume \"{name}\" : secret \"{secret_name}\" not found"),
                    );
                    self.waiting("ContainerCreating", "");
                    tokio::time::sleep(PROBE_PERIOD_CAP).await;
                    if self.deleted() {
                        return None;
                    }
                };
                write_secret_files(&dir, &secret, source);
            }
            volume_dirs.insert(name, dir);
        }
        let mut mounts: Vec<(String, PathBuf)> = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let dir = volume_dirs.get(m["name"].as_str()?)?;
                Some((m["mountPath"].as_str()?.to_owned(), dir.clone()))
            })
            .collect();
        // The longest mount path first, so /a/b wins over /a.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let rewrite = |value: &str| -> String {
            for (mount_path, dir) in &mounts {
                if let Some(rest) = value.strip_prefix(mount_path.as_str())
                    && (rest.is_empty() || rest.starts_with('/'))
                {
                    return format!("{}{rest}", dir.display());
                }
            }
            value.to_owned()
        };
        let home = self.dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let tmp = rewrite("/tmp");
        let tmp = if tmp == "/tmp" {
            let own = self.dir.join("tmp");
            std::fs::create_dir_all(&own).unwrap();
            own.display().to_string()
        } else {
            tmp
        };
        let mut env = vec![
            ("HOME".to_owned(), home.display().to_string()),
            ("TMPDIR".to_owned(), tmp),
        ];
        if pod["spec"]["serviceAccountName"].is_string()
            && pod["spec"]["automountServiceAccountToken"] != false
        {
            env.push((
                "KUBECONFIG".into(),
                self.node.kubeconfig.display().to_string(),
            ));
        }
        for variable in container["env"].as_array().into_iter().flatten() {
            let name = variable["name"].as_str().unwrap_or("").to_owned();
            let value = match (
                variable["value"].as_str(),
                variable
                    .pointer("/valueFrom/fieldRef/fieldPath")
                    .and_then(Value::as_str),
            ) {
                (Some(value), _) => rewrite(value),
                (None, Some("metadata.namespace")) => self.namespace.clone(),
                (None, Some("metadata.name")) => self.name.clone(),
                _ => continue,
            };
            env.push((name, value));
        }
        Some(env)
    }

    /// Starts the container's process, its output going to the pod's log.
    fn start(
        &self,
        programs: &Path,
        container: &Value,
        env: &[(String, String)],
        restarts: i64,
    ) -> Option<Child> {
        let command: Vec<String> = container["command"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(container["args"].as_array().into_iter().flatten())
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        let Some((program, args)) = command.split_first() else {
            self.waiting(
                "CreateContainerError",
                "no command (images here have no entrypoint)",
            );
            return None;
        };
        let spawned = Command::new(programs.join(program))
            .args(args)
            .env_clear()
            .env("PATH", programs)
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                self.waiting(
                    "CreateContainerError",
                    &format!("cannot run {program}: {e}"),
                );
                return None;
            }
        };
        if let Some(pid) = child.id() {
            self.state
                .container_pids
                .lock()
                .unwrap()
                .insert(self.path.clone(), pid);
        }
        for output in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let (state, path) = (self.state.clone(), self.path.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(output).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut logs = state.logs.lock().unwrap();
                    let log = logs.entry(path.clone()).or_default();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let (name, started, ready) = (
            container["name"].clone(),
            now(),
            container.get("readinessProbe").is_none(),
        );
        self.set_status(move |status| {
            *status = json!({
                "phase": "Running", "startTime": status.get("startTime").cloned().unwrap_or_else(|| json!(now())),
                "conditions": ready_conditions(ready),
                "containerStatuses": [{"name": name, "ready": ready, "started": true,
                                       "restartCount": restarts,
                                       "state": {"running": {"startedAt": started}}}]
            });
        });
        Some(child)
    }

    /// Watches the running container: its probes, its exit, the pod's deletion.
    async fn watch(
        &self,
        child: &mut Child,
        programs: &Path,
        container: &Value,
        env: &[(String, String)],
    ) -> Stop {
        let readiness = Probe::of(container, "readinessProbe");
        let liveness = Probe::of(container, "livenessProbe");
        let mut next_readiness = tokio::time::Instant::now();
        let mut next_liveness = tokio::time::Instant::now() + PROBE_PERIOD_CAP;
        let mut liveness_failures = 0;
        loop {
            tokio::time::sleep(TICK).await;
            if self.deleted() {
                return Stop::Deleted;
            }
            if let Ok(Some(_)) = child.try_wait() {
                return Stop::Restart;
            }
            let now = tokio::time::Instant::now();
            if let Some(probe) = &readiness
                && now >= next_readiness
            {
                next_readiness = now + probe.period;
                let failure = probe.run(programs, env).await.err();
                if let Some(output) = &failure {
                    self.event(
                        "Warning",
                        "Unhealthy",
                        &format!("Readiness probe failed: {output}"),
                    );
                }
                let ready = failure.is_none();
                self.set_status(|status| {
                    status["conditions"] = ready_conditions(ready);
                    status["containerStatuses"][0]["ready"] = json!(ready);
                });
            }
            if let Some(probe) = &liveness
                && now >= next_liveness
            {
                next_liveness = now + probe.period;
                match probe.run(programs, env).await {
                    Ok(()) => liveness_failures = 0,
                    Err(output) => {
                        liveness_failures += 1;
                        self.event(
                            "Warning",
                            "Unhealthy",
                            &format!("Liveness probe failed: {output}"),
                        );
                        if liveness_failures >= probe.failure_threshold {
                            self.event(
                                "Normal",
                                "Killing",
                                &format!(
                                    "Container {} failed liveness probe, will be restarted",
                                    container["name"].as_str().unwrap_or("")
                                ),
                            );
                            return Stop::Restart;
                        }
                    }
                }
            }
        }
    }
}

fn ready_conditions(ready: bool) -> Value {
    let status = if ready { "True" } else { "False" };
    json!([{"type": "PodScheduled", "status": "True"},
           {"type": "Initialized", "status": "True"},
           {"type": "ContainersReady", "status": status},
           {"type": "Ready", "status": status}])
}

/// SIGTERM, then SIGKILL after the pod's grace period (capped).
async fn stop(child: &mut Child, pod: &Value) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) of this worker's own child process.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .map_or(GRACE_CAP, |s| Duration::from_secs(s).min(GRACE_CAP));
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// A Secret volume's files: its `items` (key to path), or every key; `defaultMode`.
fn write_secret_files(dir: &Path, secret: &Value, source: &Value) {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let data = secret["data"].as_object().cloned().unwrap_or_default();
    let files: Vec<(String, String)> = match source["items"].as_array() {
        Some(items) => items
            .iter()
            .filter_map(|i| {
                Some((
                    i["key"].as_str()?.to_owned(),
                    i["path"].as_str()?.to_owned(),
                ))
            })
            .collect(),
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    let mode = source["defaultMode"].as_u64().unwrap_or(0o644) as u32;
    for (key, path) in files {
        let Some(encoded) = data.get(&key).and_then(Value::as_str) else {
            continue;
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_default();
        let file = dir.join(path);
        std::fs::write(&file, bytes).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// An exec probe of a container.
struct Probe {
    command: Vec<String>,
    period: Duration,
    timeout: Duration,
    failure_threshold: u32,
}

impl Probe {
    fn of(container: &Value, which: &str) -> Option<Self> {
        let probe = container.get(which)?;
        let command: Vec<String> = probe["exec"]["command"]
            .as_array()?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        let seconds = |field: &str, default: u64| {
            Duration::from_secs(probe[field].as_u64().unwrap_or(default))
        };
        Some(Self {
            command,
            period: seconds("periodSeconds", 10).min(PROBE_PERIOD_CAP),
            timeout: seconds("timeoutSeconds", 1),
            failure_threshold: probe["failureThreshold"].as_u64().unwrap_or(3) as u32,
        })
    }

    /// Runs the probe; `Err` with its output (trimmed) if it fails or times out.
    async fn run(&self, programs: &Path, env: &[(String, String)]) -> Result<(), String> {
        let Some((program, args)) = self.command.split_first() else {
            return Err("no command".into());
        };
        let output = Command::new(programs.join(program))
            .args(args)
            .env_clear()
            .env("PATH", programs)
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(self.timeout, output).await {
            Err(_) => Err(format!(
                "command timed out after {}s",
                self.timeout.as_secs()
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(output)) if output.status.success() => Ok(()),
            Ok(Ok(output)) => {
                let mut said = String::from_utf8_lossy(&output.stdout).into_owned();
                said.push_str(&String::from_utf8_lossy(&output.stderr));
                Err(said.trim().to_owned())
            }
        }
    }
}
