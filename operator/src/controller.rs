//! The running operator: a kube-runtime controller over the Registries of one namespace.
//!
//! It watches Registries, the surrogate Deployments they own (a deleted or edited
//! Deployment is put back; a pod becoming ready updates the status), and Secrets (a Secret
//! a Registry names changing rolls its surrogate). The operator is namespaced — its Role
//! grants nothing outside its namespace — so several teams can each run their own.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, controller, watcher};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::reconcile::{Context, error_policy, reconcile};
use reposure_client::kubernetes::APP_LABEL;
use reposure_client::resource::Registry;

/// Runs until SIGTERM or SIGINT.
pub async fn run(ctx: Context, namespace: &str) {
    let client = ctx.client.clone();
    let registries: Api<Registry> = Api::namespaced(client.clone(), namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let controller = Controller::new(registries, watcher::Config::default());
    let store = controller.store();
    info!(namespace, "operator running");
    controller
        .owns(
            deployments,
            watcher::Config::default().labels(&format!("{}={}", APP_LABEL.0, APP_LABEL.1)),
        )
        .watches(
            secrets,
            watcher::Config::default(),
            move |secret: Secret| {
                let name = secret.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|r| {
                        r.spec.authentication_secret.as_deref() == Some(name.as_str())
                            || r.spec.authorization_secret.as_deref() == Some(name.as_str())
                    })
                    .map(|r| ObjectRef::from_obj(&*r))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(registry = %object.name, "reconciled"),
                // A change to a Registry that was deleted since: nothing to do, and no
                // warning (its surrogate goes with it by garbage collection).
                Err(controller::Error::ObjectNotFound(object)) => {
                    info!(registry = %object.name, "registry deleted; its surrogate goes with it")
                }
                Err(e) => warn!(error = %e, "controller"),
            }
        })
        .await;
    info!("operator stopped");
}
