//! The Kubernetes calls the CLI makes: server-side apply, delete, wait, logs.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{DeleteParams, ListParams, LogParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use reposure_client::kubernetes::explain;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Field manager of what the CLI applies (the operator's own objects use
/// `reposure-operator`).
pub const MANAGER: &str = "reposure";
/// How often `--wait` looks again.
const POLL: Duration = Duration::from_millis(500);

/// Where a call went, for error messages.
pub struct Scope<'a> {
    pub namespace: &'a str,
}

/// Creates or updates `object` with server-side apply; idempotent.
pub async fn apply<K>(api: &Api<K>, object: &K, scope: &Scope<'_>) -> Result<K>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let name = object
        .meta()
        .name
        .clone()
        .context("an object to apply has a name")?;
    let resource = K::plural(&Default::default()).into_owned();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|e| explain(e, "patch", &resource, &name, scope.namespace).into())
}

/// Deletes an object; true if it existed.
pub async fn delete<K>(api: &Api<K>, name: &str, scope: &Scope<'_>) -> Result<bool>
where
    K: Resource + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let resource = K::plural(&Default::default()).into_owned();
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(explain(e, "delete", &resource, name, scope.namespace).into()),
    }
}

/// Polls `check` until it says done (`Ok(Some)`), failing after `timeout` with the last
/// reason it gave.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let reason = match check().await? {
            Ok(done) => return Ok(done),
            Err(reason) => reason,
        };
        if Instant::now() >= deadline {
            bail!(reposure_registry::RegistryError::Unavailable(format!(
                "{what} did not happen within {}s: {reason}",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the Deployment `name` has an available replica.
pub async fn wait_available(
    deployments: &Api<Deployment>,
    name: &str,
    timeout: Duration,
    scope: &Scope<'_>,
) -> Result<()> {
    wait_for(
        timeout,
        &format!("Deployment {name} becoming available"),
        || async {
            let deployment = deployments
                .get(name)
                .await
                .map_err(|e| explain(e, "get", "deployments", name, scope.namespace))?;
            let available = deployment
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            Ok(if available > 0 {
                Ok(())
            } else {
                Err("no available replica yet".to_owned())
            })
        },
    )
    .await
}

/// What `logs` prints: the last `tail` lines (all if `None`), and then, with `follow`,
/// whatever comes.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LogOptions {
    /// Keep printing what the pods log.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines of each pod.
    #[arg(short = 't', long, value_name = "N")]
    pub tail: Option<i64>,
}

/// Prints the logs of every pod `selector` matches (each line after `[POD] ` when there
/// are several), oldest pod first; fails when there is none.
pub async fn print_logs(
    pods: &Api<Pod>,
    selector: &str,
    options: LogOptions,
    scope: &Scope<'_>,
) -> Result<()> {
    let mut matching = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| explain(e, "list", "pods", selector, scope.namespace))?
        .items;
    if matching.is_empty() {
        bail!(reposure_registry::RegistryError::NotFound(format!(
            "no pod with labels {selector} in namespace {}",
            scope.namespace
        )));
    }
    matching.sort_by_key(|p| (p.creation_timestamp(), p.name_any()));
    let names: Vec<String> = matching.iter().map(ResourceExt::name_any).collect();
    let prefix = |pod: &str| {
        if names.len() > 1 {
            format!("[{pod}] ")
        } else {
            String::new()
        }
    };
    let params = LogParams {
        follow: options.follow,
        tail_lines: options.tail.filter(|n| *n >= 0),
        ..Default::default()
    };
    if !options.follow {
        for pod in &names {
            let log = pods
                .logs(pod, &params)
                .await
                .map_err(|e| explain(e, "get", "pods/log", pod, scope.namespace))?;
            for line in log.lines() {
                println!("{}{line}", prefix(pod));
            }
        }
        return Ok(());
    }
    let mut streams = Vec::new();
    for pod in &names {
        let lines = pods
            .log_stream(pod, &params)
            .await
            .map_err(|e| explain(e, "get", "pods/log", pod, scope.namespace))?
            .lines();
        let prefix = prefix(pod);
        streams.push(lines.map_ok(move |line| format!("{prefix}{line}")).boxed());
    }
    let mut all = futures::stream::select_all(streams);
    while let Some(line) = all.try_next().await? {
        println!("{line}");
    }
    Ok(())
}

/// The first running pod with these labels (one that is being deleted only if there is
/// no other).
pub async fn running_pod(pods: &Api<Pod>, selector: &str, scope: &Scope<'_>) -> Result<String> {
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| explain(e, "list", "pods", selector, scope.namespace))?;
    let running = |p: &&Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    list.items
        .iter()
        .filter(running)
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .or_else(|| list.items.iter().find(running))
        .map(|p| p.name_any())
        .ok_or_else(|| {
            reposure_registry::RegistryError::NotFound(format!(
                "no running pod with labels {selector} in namespace {}",
                scope.namespace
            ))
            .into()
        })
}

/// Creates `namespace` unless it exists (the original Reposure's `operator install` did
/// so too). Whoever may not read namespaces is trusted to have named one that exists.
pub async fn ensure_namespace(client: &Client, namespace: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.get_opt(namespace).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => {
            let object = Namespace {
                metadata: ObjectMeta {
                    name: Some(namespace.to_owned()),
                    ..Default::default()
                },
                ..Default::default()
            };
            namespaces
                .create(&PostParams::default(), &object)
                .await
                .map_err(|e| explain(e, "create", "namespaces", namespace, namespace))?;
            eprintln!("namespace {namespace} created");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(()),
        Err(e) => Err(explain(e, "get", "namespaces", namespace, namespace).into()),
    }
}

/// The registry host `--registry` names: as given, or for `internal` the cluster's own
/// registry (OpenShift's, else Minikube's addon) as `CLUSTER-IP:PORT`, which nodes pull from.
pub async fn source_registry(client: &Client, source: &str) -> Result<String> {
    if source != "internal" {
        return Ok(source.to_owned());
    }
    for (namespace, service, port) in INTERNAL_REGISTRIES {
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        if let Ok(Some(found)) = services.get_opt(service).await
            && let Some(ip) = cluster_ip(&found)
        {
            return Ok(format!("{ip}:{port}"));
        }
    }
    bail!(reposure_registry::RegistryError::NotFound(
        "no internal registry found (the Service image-registry in openshift-image-registry, or registry in kube-system); give --registry HOST".into()
    ))
}

/// The cluster registries `--registry internal` looks for: (namespace, Service, port).
const INTERNAL_REGISTRIES: [(&str, &str, u16); 2] = [
    ("openshift-image-registry", "image-registry", 5000),
    ("kube-system", "registry", 80),
];

/// A Service's cluster IP, unless it is headless.
pub fn cluster_ip(service: &Service) -> Option<String> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| !ip.is_empty() && ip != "None")
}

/// `image` taken from registry `host` instead: its registry part replaced (or added).
pub fn image_from(image: &str, host: &str) -> String {
    let path = match image.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
        _ => image,
    };
    format!("{}/{path}", host.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_move_to_another_registry() {
        assert_eq!(
            image_from("ghcr.io/reposure/reposure-operator:0.1.0", "10.0.0.5:5000"),
            "10.0.0.5:5000/reposure/reposure-operator:0.1.0"
        );
        assert_eq!(
            image_from("reposure/reposure-surrogate:0.1.0", "registry.example/"),
            "registry.example/reposure/reposure-surrogate:0.1.0"
        );
    }
}
