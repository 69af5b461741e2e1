//! `reposure operator install|uninstall|logs|shell`.
//!
//! Install creates the namespace if it is missing, then applies the CRD and the namespace's
//! operator objects with server-side apply, so it is idempotent and upgrades in place.
//! Uninstall removes the namespace's operator and never the CRD (deleting it deletes every
//! namespace's Registries) unless `--crd` is given: a deliberate difference from the
//! original Reposure, whose uninstall deleted the CRD. One operator serves one namespace
//! (the original's `--cluster` mode is not offered: least privilege); install it in each.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ObjectMeta;
use kube::{Api, Client};
use reposure_client::kubernetes::KubeOptions;
use reposure_operator::manifests::{self, OPERATOR, USER_ROLE};

use crate::kubernetes::{self, LogOptions, Scope};
use crate::shell::ShellOptions;

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
        #[arg(short = 'e', long)]
        role: Option<String>,
        /// Take the operator's and the surrogate's images from this registry host
        /// (`internal`: the cluster's own, OpenShift's or Minikube's).
        #[arg(short = 'g', long = "registry", value_name = "HOST|internal")]
        source_registry: Option<String>,
        /// Not offered: the original's operator for every namespace. This one serves its
        /// own namespace only (least privilege): install it in each namespace.
        #[arg(short = 'c', long)]
        cluster: bool,
        /// Wait until the operator is available.
        #[arg(short = 'w', long)]
        wait: bool,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[arg(long, env = "REPOSURE_OPERATOR_IMAGE", default_value = manifests::OPERATOR_IMAGE)]
        operator_image: String,
        #[arg(long, env = "REPOSURE_SURROGATE_IMAGE", default_value = manifests::SURROGATE_IMAGE)]
        surrogate_image: String,
    },
    /// Remove the namespace's operator (the CRD and Registries stay unless --crd; the
    /// original Reposure deleted the CRD).
    #[command(
        after_help = "Examples:\n  reposure operator uninstall --wait\n  reposure operator uninstall --crd   # also every Registry in every namespace"
    )]
    Uninstall {
        /// Wait until the operator is gone.
        #[arg(short = 'w', long)]
        wait: bool,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Also delete the CRD, and with it every Registry in every namespace.
        #[arg(long)]
        crd: bool,
    },
    /// Print the operator's log.
    #[command(
        after_help = "Examples:\n  reposure operator logs\n  reposure -n team operator logs -f --tail 20"
    )]
    Logs {
        #[command(flatten)]
        options: LogOptions,
    },
    /// Open a shell beside the operator: its image has none, so an ephemeral debug
    /// container joins the pod (`kubectl debug`).
    #[command(
        after_help = "Examples:\n  reposure operator shell\n  reposure operator shell --image docker.io/library/alpine:3.20"
    )]
    Shell {
        #[command(flatten)]
        shell: ShellOptions,
    },
}

pub async fn run(
    command: OperatorCommand,
    client: Client,
    namespace: &str,
    kube: &KubeOptions,
) -> Result<()> {
    let apis = Apis::new(&client, namespace);
    match command {
        OperatorCommand::Install {
            role,
            source_registry,
            cluster,
            wait,
            timeout,
            operator_image,
            surrogate_image,
        } => {
            if cluster {
                anyhow::bail!(
                    "--cluster is not offered: an operator serves its own namespace only \
                     (least privilege); run `reposure -n NAMESPACE operator install` in each \
                     namespace that has Registries"
                );
            }
            let (operator_image, surrogate_image) = match source_registry {
                Some(source) => {
                    let host = kubernetes::source_registry(&client, &source).await?;
                    (
                        kubernetes::image_from(&operator_image, &host),
                        kubernetes::image_from(&surrogate_image, &host),
                    )
                }
                None => (operator_image, surrogate_image),
            };
            kubernetes::ensure_namespace(&client, namespace).await?;
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
        OperatorCommand::Logs { options } => {
            let pods: Api<Pod> = Api::namespaced(client, namespace);
            let selector = format!("app.kubernetes.io/name={OPERATOR}");
            kubernetes::print_logs(&pods, &selector, options, &apis.scope()).await
        }
        OperatorCommand::Shell { shell } => {
            let pods: Api<Pod> = Api::namespaced(client, namespace);
            let selector = format!("app.kubernetes.io/name={OPERATOR}");
            let pod = kubernetes::running_pod(&pods, &selector, &apis.scope()).await?;
            shell.open(kube, namespace, &pod, "operator")
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
    replace_original(apis, &deployment).await?;
    kubernetes::apply(&apis.deployments, &deployment, &scope).await?;
    eprintln!(
        "operator applied in namespace {namespace}; bind people to the Role {USER_ROLE} to let them mount"
    );
    Ok(())
}

/// The name the original Reposure gave its operator's ServiceAccount, Role and bindings.
const ORIGINAL_NAME: &str = "reposure";
/// The component label of the original's operator objects.
const ORIGINAL_COMPONENT: (&str, &str) = ("app.kubernetes.io/component", "operator");

/// Takes over from the original Reposure's operator, if it runs here: its Deployment (same
/// name, another and immutable selector) is deleted before this one is applied, and its
/// ServiceAccount, Role and bindings (`reposure`, labelled as its operator's) go too. Its
/// Registries stay: the new operator adopts them and replaces their bare surrogate pods
/// once its own are ready.
async fn replace_original(apis: &Apis<'_>, ours: &Deployment) -> Result<()> {
    let scope = apis.scope();
    let Some(existing) = apis.deployments.get_opt(OPERATOR).await? else {
        return Ok(());
    };
    let selector = |d: &Deployment| d.spec.as_ref().map(|s| s.selector.clone());
    if selector(&existing) == selector(ours) {
        return Ok(());
    }
    kubernetes::delete(&apis.deployments, OPERATOR, &scope).await?;
    kubernetes::wait_for(
        Duration::from_secs(120),
        "the original Reposure operator's Deployment going away",
        || async {
            Ok(match apis.deployments.get_opt(OPERATOR).await? {
                None => Ok(()),
                Some(_) => Err("it still exists".to_owned()),
            })
        },
    )
    .await?;
    let original = |labels: Option<&std::collections::BTreeMap<String, String>>| {
        labels
            .and_then(|l| l.get(ORIGINAL_COMPONENT.0))
            .map(String::as_str)
            == Some(ORIGINAL_COMPONENT.1)
    };
    let mut removed = vec![format!("Deployment {OPERATOR}")];
    if let Some(account) = apis.accounts.get_opt(ORIGINAL_NAME).await?
        && original(account.metadata.labels.as_ref())
    {
        kubernetes::delete(&apis.accounts, ORIGINAL_NAME, &scope).await?;
        removed.push(format!("ServiceAccount {ORIGINAL_NAME}"));
    }
    if let Some(role) = apis.roles.get_opt(ORIGINAL_NAME).await?
        && original(role.metadata.labels.as_ref())
    {
        kubernetes::delete(&apis.roles, ORIGINAL_NAME, &scope).await?;
        removed.push(format!("Role {ORIGINAL_NAME}"));
    }
    if let Some(binding) = apis.bindings.get_opt(ORIGINAL_NAME).await?
        && original(binding.metadata.labels.as_ref())
    {
        kubernetes::delete(&apis.bindings, ORIGINAL_NAME, &scope).await?;
        removed.push(format!("RoleBinding {ORIGINAL_NAME}"));
    }
    eprintln!(
        "replaced the original Reposure operator in namespace {}: removed {}; its Registries are adopted, and their surrogate pods replaced once the new ones are ready (a ClusterRoleBinding {ORIGINAL_NAME} it may have made is cluster-wide: remove it with kubectl delete clusterrolebinding {ORIGINAL_NAME})",
        apis.namespace,
        removed.join(", ")
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
