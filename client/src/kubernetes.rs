//! The client side: from `[NAMESPACE/]NAME` to a surrogate session through the exec API.
//!
//! [`KubeExec`] is a session [`Connector`]: each time the session client needs a stream
//! (at mount and after a lost session) it reads the Registry, checks its `Ready` condition,
//! and execs `reposure-surrogate serve --stdio` in the surrogate pod the status names. So a
//! surrogate replaced by the operator is found again on the next operation.
//!
//! The exec connection is kube's WebSocket upgrade (`v5.channel.k8s.io`, falling back to
//! `v4`) carried by [`ExecStream`], which sends stdin in large messages and reads stdout
//! straight from the socket. The session protocol never needs end-of-file, so v4, where
//! stdin cannot be half-closed, works alike. The surrogate's stderr becomes log lines.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::AttachParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use reposure_registry::error::{RegistryError, Result};
use reposure_surrogate::session::transport::{Connection, Connector};

use kube::Resource;
use tracing::{info, warn};

use crate::exec::ExecStream;

use crate::resource::Registry;

/// Name of the surrogate container in the pods the operator runs (the exec target).
pub const SURROGATE_CONTAINER: &str = "surrogate";

/// Label naming the Registry a surrogate pod serves.
pub const REGISTRY_LABEL: &str = "reposure.puccini.cloud/registry";
/// Label shared by every surrogate pod (and Deployment).
pub const APP_LABEL: (&str, &str) = ("app.kubernetes.io/name", "reposure-surrogate");

/// Labels selecting one Registry's surrogate pods.
pub fn surrogate_labels(registry: &str) -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        (APP_LABEL.0.to_owned(), APP_LABEL.1.to_owned()),
        (REGISTRY_LABEL.to_owned(), registry.to_owned()),
    ])
}

/// The same labels as a label selector string.
pub fn surrogate_selector(registry: &str) -> String {
    surrogate_labels(registry)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The command a client execs in the surrogate container to open a session.
pub const SESSION_COMMAND: [&str; 3] = ["reposure-surrogate", "serve", "--stdio"];

/// Which kubeconfig and context to use; empty means what kubectl would use.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// A kubeconfig file (else `$KUBECONFIG`, else `~/.kube/config`, else in-cluster).
    pub kubeconfig: Option<std::path::PathBuf>,
    pub context: Option<String>,
    /// `-n`: overrides the context's namespace.
    pub namespace: Option<String>,
}

/// A client, and the namespace names are resolved in.
pub async fn client(options: &KubeOptions) -> Result<(Client, String)> {
    let config_options = KubeConfigOptions {
        context: options.context.clone(),
        ..Default::default()
    };
    let config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                RegistryError::Usage(format!("cannot read kubeconfig {}: {e}", path.display()))
            })?;
            Config::from_custom_kubeconfig(kubeconfig, &config_options)
                .await
                .map_err(|e| e.to_string())
        }
        None if options.context.is_some() => Config::from_kubeconfig(&config_options)
            .await
            .map_err(|e| e.to_string()),
        None => Config::infer().await.map_err(|e| e.to_string()),
    }
    .map_err(|e| {
        RegistryError::Usage(format!(
            "no usable Kubernetes configuration ({e}); set KUBECONFIG or pass kubeconfig= / --kubeconfig"
        ))
    })?;
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| {
        RegistryError::Unavailable(format!("cannot create a Kubernetes client: {e}"))
    })?;
    Ok((client, namespace))
}

/// `[NAMESPACE/]NAME`, checked against the rules for Kubernetes names.
pub fn parse_target(target: &str) -> Option<(Option<String>, String)> {
    let (namespace, name) = match target.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, target),
    };
    let dns_label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
    };
    if !dns_label(name) || !namespace.is_none_or(dns_label) {
        return None;
    }
    Some((namespace.map(str::to_owned), name.to_owned()))
}

/// Turns an API error into one line that says what to do.
pub fn explain(
    error: kube::Error,
    verb: &str,
    resource: &str,
    name: &str,
    namespace: &str,
) -> RegistryError {
    match error {
        kube::Error::Api(status) if status.code == 404 => RegistryError::NotFound(format!(
            "no {resource} {name:?} in namespace {namespace} (list them with kubectl get {resource} -n {namespace})"
        )),
        kube::Error::Api(status) if status.code == 403 => RegistryError::Denied(format!(
            "Kubernetes RBAC: you may not {verb} {resource} in namespace {namespace}; ask for the reposure-user Role ({})",
            status.message
        )),
        kube::Error::Api(status) if status.code == 401 => RegistryError::Unauthorized(format!(
            "the Kubernetes API refused your credentials: {}; check your kubeconfig",
            status.message
        )),
        kube::Error::UpgradeConnection(kube::client::UpgradeConnectionError::ProtocolSwitch(
            code,
        )) if code.as_u16() == 403 => RegistryError::Denied(format!(
            "Kubernetes RBAC: you may not {verb} {resource} in namespace {namespace}; ask for the reposure-user Role"
        )),
        other => RegistryError::Unavailable(format!(
            "cannot {verb} {resource} {name:?} in namespace {namespace}: {other}"
        )),
    }
}

/// Opens surrogate sessions for one Registry through the exec API.
pub struct KubeExec {
    client: Client,
    namespace: String,
    registry: String,
}

impl KubeExec {
    pub fn new(client: Client, namespace: String, registry: String) -> Self {
        Self {
            client,
            namespace,
            registry,
        }
    }

    /// The ready surrogate pod of the Registry.
    ///
    /// The status names it. A Registry whose status has no conditions at all (as the
    /// original Reposure's operator writes it: `surrogatePod` alone) is used by its pod's
    /// own readiness. A named pod that is being deleted, or no longer ready, is passed over
    /// for another ready pod of the same Registry's surrogate, if there is one.
    pub async fn surrogate_pod(&self) -> Result<String> {
        let registries: Api<Registry> = Api::namespaced(self.client.clone(), &self.namespace);
        let registry = registries.get(&self.registry).await.map_err(|e| {
            explain(
                e,
                "get",
                "registries.reposure.puccini.cloud",
                &self.registry,
                &self.namespace,
            )
        })?;
        let status = registry.status.as_ref();
        let condition = registry.ready_condition();
        let named = status.and_then(|s| s.surrogate_pod.clone());
        let original_style = status.is_none_or(|s| s.conditions.is_empty());
        match (condition, named) {
            (Some(c), Some(pod)) if c.status == "True" => self.usable_pod(&pod).await,
            (None, Some(pod)) if original_style => self.usable_pod(&pod).await,
            (Some(c), _) => Err(RegistryError::Unavailable(format!(
                "Registry {} is not ready: {}: {}",
                self.registry, c.reason, c.message
            ))),
            (None, _) => Err(RegistryError::Unavailable(format!(
                "Registry {} has no Ready condition yet: is the Reposure operator running in namespace {}?",
                self.registry, self.namespace
            ))),
        }
    }

    /// `pod` if it is ready, not being deleted, and runs this project's surrogate; else
    /// another ready pod of the Registry's surrogate.
    async fn usable_pod(&self, pod: &str) -> Result<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let found = pods
            .get(pod)
            .await
            .map_err(|e| explain(e, "get", "pods", pod, &self.namespace))?;
        if !runs_our_surrogate(&found) {
            return Err(RegistryError::Unsupported(format!(
                "surrogate pod {pod} of Registry {} runs the original Reposure's surrogate, which this client cannot talk to; `reposure operator install` in namespace {} replaces it",
                self.registry, self.namespace
            )));
        }
        if pod_is_ready(&found) && found.metadata.deletion_timestamp.is_none() {
            return Ok(pod.to_owned());
        }
        let others = pods
            .list(&kube::api::ListParams::default().labels(&surrogate_selector(&self.registry)))
            .await
            .map_err(|e| explain(e, "list", "pods", pod, &self.namespace))?;
        if let Some(other) = others
            .items
            .iter()
            .find(|p| pod_is_ready(p) && p.metadata.deletion_timestamp.is_none())
        {
            return Ok(other.metadata.name.clone().unwrap_or_default());
        }
        let why = if found.metadata.deletion_timestamp.is_some() {
            "is being deleted"
        } else {
            "is not ready"
        };
        Err(RegistryError::Unavailable(format!(
            "surrogate pod {pod} of Registry {} {why}, and no other is ready yet; the operator will name a new one (kubectl get reg {} -n {})",
            self.registry, self.registry, self.namespace
        )))
    }
}

/// Whether a pod is one of this project's surrogates: the original Reposure's bare
/// surrogate pods (`reposure-surrogate-NAME`, its spooler and client binaries) lack
/// [`REGISTRY_LABEL`].
pub fn runs_our_surrogate(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .is_some_and(|labels| labels.contains_key(REGISTRY_LABEL))
}

/// Whether the pod runs.
pub fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Running, with the `Ready` condition true.
pub fn pod_is_ready(pod: &Pod) -> bool {
    is_running(pod)
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[async_trait]
impl Connector for KubeExec {
    fn describe(&self) -> String {
        format!("kubernetes:{}/{}", self.namespace, self.registry)
    }

    async fn connect(&self) -> Result<Connection> {
        let pod = self.surrogate_pod().await?;
        let stream = exec_stream(&self.client, &self.namespace, &pod, SESSION_COMMAND, {
            let pod = pod.clone();
            move |line| warn!(target: "surrogate", pod, "{line}")
        })
        .await?;
        info!(pod, namespace = %self.namespace, "surrogate session opened through exec");
        Ok(Connection {
            stream: Box::pin(stream),
            guard: None,
        })
    }
}

/// Execs `command` in the surrogate container of `pod`, with stdin, stdout and stderr;
/// each stderr line goes to `on_stderr_line`.
pub async fn exec_stream(
    client: &Client,
    namespace: &str,
    pod: &str,
    command: impl IntoIterator<Item = &str>,
    on_stderr_line: impl FnMut(&str) + Send + 'static,
) -> Result<ExecStream> {
    let params = AttachParams {
        container: Some(SURROGATE_CONTAINER.to_owned()),
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
        ..Default::default()
    };
    let request = kube::core::Request::new(Pod::url_path(&(), Some(namespace)))
        .exec(pod, command, &params)
        .map_err(|e| RegistryError::Usage(format!("cannot make an exec request: {e}")))?;
    let connection = client
        .connect(request)
        .await
        .map_err(|e| explain(e, "create", "pods/exec", pod, namespace))?;
    let closes_stdin = connection.supports_stream_close();
    Ok(ExecStream::new(
        connection.into_stream(),
        pod,
        closes_stdin,
        on_stderr_line,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("reg"), Some((None, "reg".into())));
        assert_eq!(
            parse_target("team/reg"),
            Some((Some("team".into()), "reg".into()))
        );
        for bad in ["", "Reg", "a/b/c", "/reg", "reg/", "-reg", "oci:/x"] {
            assert_eq!(parse_target(bad), None, "{bad}");
        }
    }
}
