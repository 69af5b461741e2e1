//! The surrogate workload the operator keeps next to each Registry.
//!
//! One Deployment per Registry, `reposure-surrogate-NAME`, in the Registry's namespace and
//! owned by it (a controller owner reference, so deleting the Registry deletes the
//! surrogate; `blockOwnerDeletion` is left unset because setting it needs `update` on
//! `registries/finalizers` where OwnerReferencesPermissionEnforcement is on, as in
//! OpenShift, and background deletion, kubectl's default, does not use it). Its one
//! container runs the spooler as its main process; clients open sessions with
//! `reposure-surrogate serve --stdio` through the exec API in the same container, where the
//! `REPOSURE_*` variables already say how to reach the registry.
//!
//! * Secrets are mounted as files and named by `REPOSURE_*_FILE` variables: no credential
//!   is ever an environment value or an argument (the original put them in the pod spec).
//! * A digest of the secrets' data is an annotation of the pod template, so a changed
//!   Secret rolls the pod (the surrogate reads its CA and credentials at start).
//! * The spool is an `emptyDir`: it survives container restarts, not the pod's deletion.
//!   A push is acknowledged only once published, so what a client was told succeeded is
//!   never lost with the pod; a push in flight fails with EIO.
//! * Readiness is `reposure-surrogate check` (the spooler runs, and the registry answers
//!   with the configured credentials); liveness is `check --spooler-only` (the spooler
//!   still holds its lock), so an unreachable registry makes the pod unready without
//!   restarting it. The operator reads a failed probe's reason from the pod's events.
//! * One replica with `Recreate`, so a rollout (a changed spec or Secret) stops the old pod
//!   before the new one starts. That does not hold for a pod deleted or evicted by hand:
//!   the ReplicaSet starts its replacement while the old one is still terminating, and for
//!   that time two spoolers run. That is safe because each pod's spool is its own
//!   `emptyDir` (no file is seen by two spoolers) and each spooler publishes only what was
//!   handed to its own pod, as two clients pushing at once would. Clients pick a ready pod
//!   that is not terminating.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, ExecAction, KeyToPath, PodSecurityContext, PodSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::objects::{restricted_security_context, single_pod_deployment};
use reposure_client::kubernetes::{SURROGATE_CONTAINER, surrogate_labels};

/// Where the spool lives inside the container.
pub const SPOOL_DIR: &str = "/var/spool/reposure";
/// The annotation that carries the digest of the secrets' data.
pub const SECRETS_DIGEST_ANNOTATION: &str = "reposure.puccini.cloud/secrets-digest";

const CA_DIR: &str = "/etc/reposure/ca";
const CREDENTIALS_DIR: &str = "/etc/reposure/credentials";
/// Probes: `check` gives up on the registry after 4 s, so 6 s never cuts it short.
const PROBE_TIMEOUT_SECONDS: i32 = 6;

/// The Deployment name for a Registry.
pub fn deployment_name(registry: &str) -> String {
    format!("reposure-surrogate-{registry}")
}

/// How the credentials Secret is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// A Docker config in a Secret: `.dockerconfigjson`, or the legacy `.dockercfg`.
    DockerConfig { secret: String, key: String },
    /// A bearer token (key `token`, as in service-account token Secrets).
    Token { secret: String },
}

/// Everything the Deployment depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct SurrogateSpec {
    pub registry_name: String,
    pub namespace: String,
    pub owner: OwnerReference,
    /// `http(s)://HOST[:PORT]`.
    pub registry_url: String,
    /// `(secret, key)` of the CA certificate.
    pub ca: Option<(String, String)>,
    pub credentials: Option<Credentials>,
    /// sha256 of the secrets' data, so that a changed Secret changes the pod template.
    pub secrets_digest: String,
    pub image: String,
    pub image_pull_policy: Option<String>,
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn secret_volume(name: &str, secret: &str, key: &str, path: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: path.into(),
                ..Default::default()
            }]),
            // Readable by whichever user the platform runs the surrogate as (the pod pins
            // none, see [`deployment`]); the container runs nothing else.
            default_mode: Some(0o444),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

fn exec_probe(command: &[&str], period: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command.iter().map(|s| (*s).to_owned()).collect()),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(PROBE_TIMEOUT_SECONDS),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// The surrogate Deployment, as the operator applies it.
pub fn deployment(spec: &SurrogateSpec) -> Deployment {
    let labels = surrogate_labels(&spec.registry_name);
    let mut env_vars = vec![
        env("REPOSURE_REGISTRY", &spec.registry_url),
        env("REPOSURE_SPOOL", SPOOL_DIR),
    ];
    let mut volumes = vec![
        Volume {
            name: "spool".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        mount("spool", SPOOL_DIR, false),
        mount("tmp", "/tmp", false),
    ];
    if let Some((secret, key)) = &spec.ca {
        volumes.push(secret_volume("ca", secret, key, "ca.crt"));
        mounts.push(mount("ca", CA_DIR, true));
        env_vars.push(env("REPOSURE_CA_FILE", &format!("{CA_DIR}/ca.crt")));
    }
    match &spec.credentials {
        Some(Credentials::DockerConfig { secret, key }) => {
            volumes.push(secret_volume("credentials", secret, key, "config.json"));
            mounts.push(mount("credentials", CREDENTIALS_DIR, true));
            env_vars.push(env(
                "REPOSURE_DOCKER_CONFIG_FILE",
                &format!("{CREDENTIALS_DIR}/config.json"),
            ));
        }
        Some(Credentials::Token { secret }) => {
            volumes.push(secret_volume("credentials", secret, "token", "token"));
            mounts.push(mount("credentials", CREDENTIALS_DIR, true));
            env_vars.push(env(
                "REPOSURE_TOKEN_FILE",
                &format!("{CREDENTIALS_DIR}/token"),
            ));
        }
        None => {}
    }
    let container = Container {
        name: SURROGATE_CONTAINER.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        command: Some(vec!["reposure-surrogate".into(), "spooler".into()]),
        env: Some(env_vars),
        volume_mounts: Some(mounts),
        readiness_probe: Some(exec_probe(&["reposure-surrogate", "check"], 10, 1)),
        liveness_probe: Some(exec_probe(
            &["reposure-surrogate", "check", "--spooler-only"],
            20,
            3,
        )),
        resources: Some(ResourceRequirements {
            // Measured: the surrogate stays under 128 MiB while streaming 1 GiB (BENCHMARKS.md).
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("50m".into())),
                ("memory".into(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity("512Mi".into()),
            )])),
            ..Default::default()
        }),
        security_context: Some(restricted_security_context()),
        ..Default::default()
    };
    let metadata = ObjectMeta {
        name: Some(deployment_name(&spec.registry_name)),
        namespace: Some(spec.namespace.clone()),
        labels: Some(labels.clone()),
        owner_references: Some(vec![spec.owner.clone()]),
        ..Default::default()
    };
    let annotations = BTreeMap::from([(
        SECRETS_DIGEST_ANNOTATION.to_owned(),
        spec.secrets_digest.clone(),
    )]);
    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        // No user, group or fsGroup is pinned: the image's user (65532) runs it, except
        // where the platform assigns one (OpenShift's restricted-v2 SCC refuses pods that
        // pin a UID outside the project's range).
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    single_pod_deployment(metadata, labels, Some(annotations), pod)
}
