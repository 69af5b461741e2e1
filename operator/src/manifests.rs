//! What installing the operator applies, generated from typed objects so it cannot drift
//! from the code: the CRD, and per namespace the operator's ServiceAccount, Role,
//! RoleBinding and Deployment, plus the `reposure-user` Role for people who mount or push.
//!
//! `operator/manifests/*.yaml` are these objects rendered for the namespace `reposure`;
//! a test renders them again and fails if the files differ.
//!
//! RBAC is least privilege, listed verb by verb: the operator reads Registries and their
//! Secrets, applies surrogate Deployments (server-side apply creates and patches), lists
//! pods to find a ready surrogate, and applies Registry status. Users get Registries, get
//! pods, and create pods/exec. The CRD is the only cluster-scoped object.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, PodSecurityContext, PodSpec,
    ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::objects::{restricted_security_context, single_pod_deployment};
use reposure_client::resource::{GROUP, crd};

/// The operator's name: its ServiceAccount, Role, RoleBinding and Deployment.
pub const OPERATOR: &str = "reposure-operator";
/// The Role to bind to users who mount, push or pull.
pub const USER_ROLE: &str = "reposure-user";
/// Default images; both are overridable (flags of `reposure operator install`, and the
/// operator's `--surrogate-image` / `REPOSURE_SURROGATE_IMAGE`).
pub const OPERATOR_IMAGE: &str = concat!(
    "ghcr.io/reposure/reposure-operator:",
    env!("CARGO_PKG_VERSION")
);
pub const SURROGATE_IMAGE: &str = concat!(
    "ghcr.io/reposure/reposure-surrogate:",
    env!("CARGO_PKG_VERSION")
);

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|s| (*s).to_owned()).collect()),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/part-of".to_owned(),
            "reposure".to_owned(),
        )])),
        ..Default::default()
    }
}

/// Exactly what the operator's API calls need.
pub fn operator_role(namespace: &str) -> Role {
    Role {
        metadata: meta(OPERATOR, namespace),
        rules: Some(vec![
            rule(GROUP, &["registries"], &["get", "list", "watch"]),
            rule(GROUP, &["registries/status"], &["patch"]),
            rule(
                "apps",
                &["deployments"],
                &["get", "list", "watch", "create", "patch"],
            ),
            // `get` and `delete`: the original Reposure's bare surrogate pods, replaced.
            rule("", &["pods"], &["get", "list", "delete"]),
            // The readiness check's failures, for the status message.
            rule("", &["events"], &["list"]),
            rule("", &["secrets"], &["get", "list", "watch"]),
        ]),
    }
}

/// What a user needs to mount a Registry, push and pull.
pub fn user_role(namespace: &str) -> Role {
    Role {
        metadata: meta(USER_ROLE, namespace),
        rules: Some(vec![
            rule(GROUP, &["registries"], &["get", "list"]),
            // `list`: another ready pod of the surrogate, while the one in the status
            // is being replaced.
            rule("", &["pods"], &["get", "list"]),
            rule("", &["pods/exec"], &["create"]),
        ]),
    }
}

/// The operator's ServiceAccount, RoleBinding and Deployment.
pub fn operator_objects(
    namespace: &str,
    operator_image: &str,
    surrogate_image: &str,
) -> (ServiceAccount, RoleBinding, Deployment) {
    let account = ServiceAccount {
        metadata: meta(OPERATOR, namespace),
        ..Default::default()
    };
    let binding = RoleBinding {
        metadata: meta(OPERATOR, namespace),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: OPERATOR.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: OPERATOR.into(),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        }]),
    };
    let labels = BTreeMap::from([("app.kubernetes.io/name".to_owned(), OPERATOR.to_owned())]);
    let pod = PodSpec {
        service_account_name: Some(OPERATOR.into()),
        // The image's user runs it, or the one the platform assigns (no UID is pinned:
        // OpenShift's restricted-v2 SCC refuses pods that pin one outside its range).
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            ..Default::default()
        }),
        containers: vec![Container {
            name: "operator".into(),
            image: Some(operator_image.into()),
            command: Some(vec!["reposure-operator".into(), "run".into()]),
            env: Some(vec![
                EnvVar {
                    name: "REPOSURE_NAMESPACE".into(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.namespace".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                EnvVar {
                    name: "REPOSURE_SURROGATE_IMAGE".into(),
                    value: Some(surrogate_image.into()),
                    ..Default::default()
                },
            ]),
            security_context: Some(restricted_security_context()),
            ..Default::default()
        }],
        ..Default::default()
    };
    // One operator at a time: there is no leader election.
    let deployment = single_pod_deployment(meta(OPERATOR, namespace), labels, None, pod);
    (account, binding, deployment)
}

/// One object with its `apiVersion` and `kind`, as JSON.
fn typed<K: k8s_openapi::Resource + Serialize>(object: &K) -> serde_json::Value {
    let mut value = serde_json::to_value(object).expect("Kubernetes objects serialize");
    let map = value.as_object_mut().expect("an object");
    map.insert("apiVersion".into(), K::API_VERSION.into());
    map.insert("kind".into(), K::KIND.into());
    value
}

/// The CRD as JSON.
pub fn crd_object() -> serde_json::Value {
    typed(&crd())
}

/// The namespaced install objects, in apply order.
pub fn install_objects(
    namespace: &str,
    operator_image: &str,
    surrogate_image: &str,
) -> Vec<serde_json::Value> {
    let (account, binding, deployment) =
        operator_objects(namespace, operator_image, surrogate_image);
    vec![
        typed(&account),
        typed(&operator_role(namespace)),
        typed(&binding),
        typed(&user_role(namespace)),
        typed(&deployment),
    ]
}

/// Objects as one multi-document YAML stream.
pub fn to_yaml(objects: &[serde_json::Value]) -> String {
    objects
        .iter()
        .map(|o| serde_yaml::to_string(o).expect("JSON values are YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}
