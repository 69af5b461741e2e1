//! `reposure operator install|uninstall|logs`.
//!
//! Install applies the CRD and the namespace's operator objects with server-side apply, so
//! it is idempotent and upgrades in place. Uninstall removes the namespace's operator and
//! never the CRD (deleting it deletes every namespace's Registries) unless `--crd` is given.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ObjectMeta;
use kube::{Api, Client};
use reposure_operator::manifests::{self, OPERATOR, USER_ROLE};

use crate::kubernetes::{self, Scope};

/// The RoleBinding that gives the operator an extra ClusterRole (`--role`).
const EXTRA_BINDING: &str = "reposure-operator-extra";

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Install or upgrade the operator in the namespace (and the CRD in the cluster).
    #[command(
        after_help = "Examples:\n  reposure operator install --wait\n  reposure -n team operator install --surrogate-image registry.example/reposure-surrogate:0.1.0"
    )]
    Install {
        /// Also bind this ClusterRole to the operator, in this namespace only.
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[arg(long, env = "REPOSURE_OPERATOR_IMAGE", default_value = manifests::OPERATOR_IMAGE)]
        operator_image: String,
        #[arg(long, env = "REPOSURE_SURROGATE_IMAGE", default_value = manifests::SURROGATE_IMAGE)]
        surrogate_image: String,
    },
    /// Remove the namespace's operator (the CRD and Registries stay unless --crd).
    #[command(
        after_help = "Examples:\n  reposure operator uninstall --wait\n  reposure operator uninstall --crd   # also every Registry in every namespace"
    )]
    Uninstall {
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Also delete the CRD, and with it every Registry in every namespace.
        #[arg(long)]
        crd: bool,
    },
    /// Print the operator's log.
    #[command(
        after_help = "Examples:\n  reposure operator logs\n  reposure -n team operator logs -f"
    )]
    Logs {
        #[arg(short = 'f', long)]
        follow: bool,
    },
}

pub async fn run(command: OperatorCommand, client: Client, namespace: &str) -> Result<()> {
    let apis = Apis::new(&client, namespace);
    match command {
        OperatorCommand::Install {
            role,
            wait,
            timeout,
            operator_image,
            surrogate_image,
        } => {
            install(&apis, role, &operator_image, &surrogate_image).await?;
            if wait {
                kubernetes::wait_available(
                    &apis.deployments,
                    OPERATOR,
                    Duration::from_secs(timeout),
                    &apis.scope(),
                )
                .await?;
                eprintln!("operator is available");
            }
            Ok(())
        }
        OperatorCommand::Uninstall { wait, timeout, crd } => {
            uninstall(&apis, crd).await?;
            if wait {
                let deployments = &apis.deployments;
                kubernetes::wait_for(
                    Duration::from_secs(timeout),
                    "the operator going away",
                    || async {
                        Ok(match deployments.get_opt(OPERATOR).await? {
                            None => Ok(()),
                            Some(_) => Err("its Deployment still exists".to_owned()),
                        })
                    },
                )
                .await?;
            }
            eprintln!("operator removed from namespace {namespace}");
            Ok(())
        }
        OperatorCommand::Logs { follow } => {
            let pods: Api<Pod> = Api::namespaced(client, namespace);
            let scope = apis.scope();
            let pod = kubernetes::pod_with_labels(
                &pods,
                &format!("app.kubernetes.io/name={OPERATOR}"),
                &scope,
            )
            .await?;
            kubernetes::print_pod_log(&pods, &pod, follow, &scope).await
        }
    }
}

/// The APIs an install touches, in the operator's namespace (and the cluster's CRDs).
struct Apis<'a> {
    namespace: &'a str,
    accounts: Api<ServiceAccount>,
    roles: Api<Role>,
    bindings: Api<RoleBinding>,
    deployments: Api<Deployment>,
    crds: Api<CustomResourceDefinition>,
}

impl<'a> Apis<'a> {
    fn new(client: &Client, namespace: &'a str) -> Self {
        Self {
            namespace,
            accounts: Api::namespaced(client.clone(), namespace),
            roles: Api::namespaced(client.clone(), namespace),
            bindings: Api::namespaced(client.clone(), namespace),
            deployments: Api::namespaced(client.clone(), namespace),
            crds: Api::all(client.clone()),
        }
    }

    fn scope(&self) -> Scope<'a> {
        Scope {
            namespace: self.namespace,
        }
    }
}

/// Where cluster-wide objects (the CRD) are, for messages.
const CLUSTER: Scope<'static> = Scope {
    namespace: "(cluster)",
};

/// Applies the CRD, the operator's RBAC and its Deployment.
async fn install(
    apis: &Apis<'_>,
    cluster_role: Option<String>,
    operator_image: &str,
    surrogate_image: &str,
) -> Result<()> {
    let (namespace, scope) = (apis.namespace, apis.scope());
    kubernetes::apply(&apis.crds, &reposure_client::resource::crd(), &CLUSTER).await?;
    let (account, binding, deployment) =
        manifests::operator_objects(namespace, operator_image, surrogate_image);
    kubernetes::apply(&apis.accounts, &account, &scope).await?;
    kubernetes::apply(&apis.roles, &manifests::operator_role(namespace), &scope).await?;
    kubernetes::apply(&apis.bindings, &binding, &scope).await?;
    kubernetes::apply(&apis.roles, &manifests::user_role(namespace), &scope).await?;
    if let Some(cluster_role) = cluster_role {
        let extra = RoleBinding {
            metadata: ObjectMeta {
                name: Some(EXTRA_BINDING.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: cluster_role,
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: OPERATOR.into(),
                namespace: Some(namespace.into()),
                ..Default::default()
            }]),
        };
        kubernetes::apply(&apis.bindings, &extra, &scope).await?;
    }
    kubernetes::apply(&apis.deployments, &deployment, &scope).await?;
    eprintln!(
        "operator applied in namespace {namespace}; bind people to the Role {USER_ROLE} to let them mount"
    );
    Ok(())
}

/// Deletes what [`install`] applied; the CRD (and so every Registry) only with `crd`.
async fn uninstall(apis: &Apis<'_>, crd: bool) -> Result<()> {
    let scope = apis.scope();
    kubernetes::delete(&apis.deployments, OPERATOR, &scope).await?;
    kubernetes::delete(&apis.bindings, EXTRA_BINDING, &scope).await?;
    kubernetes::delete(&apis.bindings, OPERATOR, &scope).await?;
    kubernetes::delete(&apis.roles, OPERATOR, &scope).await?;
    kubernetes::delete(&apis.roles, USER_ROLE, &scope).await?;
    kubernetes::delete(&apis.accounts, OPERATOR, &scope).await?;
    if crd {
        let name = reposure_client::resource::crd()
            .metadata
            .name
            .unwrap_or_default();
        kubernetes::delete(&apis.crds, &name, &CLUSTER).await?;
    }
    Ok(())
}
