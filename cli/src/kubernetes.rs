//! The Kubernetes calls the CLI makes: server-side apply, delete, wait, logs.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
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

/// Prints a pod's log (of its one container), following it with `follow`.
pub async fn print_pod_log(
    pods: &Api<Pod>,
    pod: &str,
    follow: bool,
    scope: &Scope<'_>,
) -> Result<()> {
    let params = LogParams {
        follow,
        ..Default::default()
    };
    if follow {
        let mut lines = pods
            .log_stream(pod, &params)
            .await
            .map_err(|e| explain(e, "get", "pods/log", pod, scope.namespace))?
            .lines();
        while let Some(line) = lines.try_next().await? {
            println!("{line}");
        }
    } else {
        let log = pods
            .logs(pod, &params)
            .await
            .map_err(|e| explain(e, "get", "pods/log", pod, scope.namespace))?;
        print!("{log}");
    }
    Ok(())
}

/// The first running pod with these labels.
pub async fn pod_with_labels(pods: &Api<Pod>, selector: &str, scope: &Scope<'_>) -> Result<String> {
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| explain(e, "list", "pods", selector, scope.namespace))?;
    list.items
        .iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .or(list.items.first())
        .map(|p| p.name_any())
        .ok_or_else(|| {
            reposure_registry::RegistryError::NotFound(format!(
                "no pod with labels {selector} in namespace {}",
                scope.namespace
            ))
            .into()
        })
}
