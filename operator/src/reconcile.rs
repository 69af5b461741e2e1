//! Reconciliation: from a Registry to its surrogate Deployment and its status.
//!
//! Each pass reads the Registry's Secrets, applies the surrogate Deployment with
//! server-side apply (field manager [`MANAGER`], forced: the operator owns those fields),
//! lists the surrogate's pods to find a ready one, and applies the status: the ready pod,
//! `observedGeneration`, and a `Ready` condition whose reason and message say what to do.
//! A spec that cannot be served or a missing Secret is reported in the status and not
//! retried until something changes (the controller watches Secrets too). API errors
//! requeue with exponential backoff.
//!
//! Deleting a Registry needs no work here: the Deployment's controller owner reference
//! makes the garbage collector delete it, and a Registry being deleted is left alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tracing::{info, instrument, warn};

use crate::endpoint::registry_url;
use crate::workload::{self, Credentials, SurrogateSpec};
use reposure_client::kubernetes::{is_running, pod_is_ready};
use reposure_client::resource::{DEFAULT_CA_KEY, READY, ReadyReason, Registry, RegistryStatus};

/// Field manager of everything the operator applies.
pub const MANAGER: &str = "reposure-operator";

/// How often a ready Registry is checked again even if nothing changes.
const READY_RECHECK: Duration = Duration::from_secs(300);
/// How soon a Registry whose surrogate is starting is looked at again.
const STARTING_RECHECK: Duration = Duration::from_secs(10);
/// Backoff after an API error: doubles from the first value up to the second.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(300));
/// Label values (the Registry name is one) are at most 63 characters.
const MAX_NAME: usize = 63;

/// What reconciliation needs.
pub struct Context {
    pub client: Client,
    /// The surrogate image (`--surrogate-image`, `REPOSURE_SURROGATE_IMAGE`).
    pub surrogate_image: String,
    pub image_pull_policy: Option<String>,
    /// Consecutive failures per Registry, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, surrogate_image: String, image_pull_policy: Option<String>) -> Self {
        Self {
            client,
            surrogate_image,
            image_pull_policy,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

/// A failed pass (an API error); the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the Registry has no namespace")]
    NoNamespace,
}

/// Why a Registry cannot be served; becomes the Ready condition.
struct NotServable {
    reason: ReadyReason,
    message: String,
}

/// The condition the status will carry.
struct Readiness {
    ready: bool,
    reason: ReadyReason,
    message: String,
    surrogate_pod: Option<String>,
}

#[instrument(name = "reconcile", skip_all, fields(registry = %registry.name_any(), namespace = registry.namespace().unwrap_or_default()))]
pub async fn reconcile(registry: Arc<Registry>, ctx: Arc<Context>) -> Result<Action, Error> {
    if registry.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = registry.namespace().ok_or(Error::NoNamespace)?;
    let readiness = match surrogate_spec(&registry, &namespace, &ctx).await? {
        Err(problem) => Readiness {
            ready: false,
            reason: problem.reason,
            message: problem.message,
            surrogate_pod: None,
        },
        Ok(spec) => {
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
            deployments
                .patch(
                    &workload::deployment_name(&spec.registry_name),
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&workload::deployment(&spec)),
                )
                .await?;
            surrogate_readiness(&ctx.client, &namespace, &spec).await?
        }
    };
    let requeue = match readiness.reason {
        _ if readiness.ready => Action::requeue(READY_RECHECK),
        // The pod may become ready without any watched object changing.
        ReadyReason::SurrogateStarting | ReadyReason::SurrogateNotReady => {
            Action::requeue(STARTING_RECHECK)
        }
        // A spec or Secret problem: the watches bring the fix.
        _ => Action::await_change(),
    };
    apply_status(&ctx.client, &registry, &namespace, readiness).await?;
    ctx.failures.lock().unwrap().remove(&registry.name_any());
    Ok(requeue)
}

/// Requeues a failed Registry after a delay that doubles with each consecutive failure.
pub fn error_policy(registry: Arc<Registry>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures.lock().unwrap();
    let count = failures.entry(registry.name_any()).or_insert(0);
    *count = count.saturating_add(1);
    let delay = BACKOFF
        .0
        .saturating_mul(2u32.saturating_pow(*count - 1))
        .min(BACKOFF.1);
    warn!(registry = %registry.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Reads the Secrets and works out the Deployment; `Ok(Err(_))` is a problem for the user.
async fn surrogate_spec(
    registry: &Registry,
    namespace: &str,
    ctx: &Context,
) -> Result<Result<SurrogateSpec, NotServable>, Error> {
    let name = registry.name_any();
    if name.len() > MAX_NAME {
        return Ok(Err(NotServable {
            reason: ReadyReason::InvalidSpec,
            message: format!(
                "the Registry name is {} characters long; use at most {MAX_NAME}",
                name.len()
            ),
        }));
    }
    let url = match registry_url(&registry.spec, namespace) {
        Ok(url) => url,
        Err(e) => {
            return Ok(Err(NotServable {
                reason: ReadyReason::InvalidSpec,
                message: e.0,
            }));
        }
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut digest = Sha256::new();
    let ca = match &registry.spec.authentication_secret {
        None => None,
        Some(secret_name) => {
            let key = registry
                .spec
                .authentication_secret_data_key
                .clone()
                .unwrap_or_else(|| DEFAULT_CA_KEY.to_owned());
            let Some(secret) = secrets.get_opt(secret_name).await? else {
                return Ok(Err(missing_secret(
                    "authenticationSecret",
                    secret_name,
                    namespace,
                )));
            };
            let Some(data) = secret.data.as_ref().and_then(|d| d.get(&key)) else {
                return Ok(Err(NotServable {
                    reason: ReadyReason::SecretInvalid,
                    message: format!(
                        "Secret {secret_name:?} has no key {key:?} holding the CA certificate; add it or set spec.authenticationSecretDataKey"
                    ),
                }));
            };
            digest.update(b"ca\0");
            digest.update(&data.0);
            Some((secret_name.clone(), key))
        }
    };
    let credentials = match &registry.spec.authorization_secret {
        None => None,
        Some(secret_name) => {
            let Some(secret) = secrets.get_opt(secret_name).await? else {
                return Ok(Err(missing_secret(
                    "authorizationSecret",
                    secret_name,
                    namespace,
                )));
            };
            let data = secret.data.unwrap_or_default();
            let (credentials, key) = if let Some(config) = data.get(".dockerconfigjson") {
                (
                    Credentials::DockerConfig {
                        secret: secret_name.clone(),
                    },
                    config,
                )
            } else if let Some(token) = data.get("token") {
                (
                    Credentials::Token {
                        secret: secret_name.clone(),
                    },
                    token,
                )
            } else {
                return Ok(Err(NotServable {
                    reason: ReadyReason::SecretInvalid,
                    message: format!(
                        "Secret {secret_name:?} is neither a kubernetes.io/dockerconfigjson secret (key .dockerconfigjson) nor a token (key token); create it with kubectl create secret docker-registry"
                    ),
                }));
            };
            digest.update(b"credentials\0");
            digest.update(&key.0);
            Some(credentials)
        }
    };
    let owner = registry
        .controller_owner_ref(&())
        .expect("a Registry read from the API has a name and uid");
    Ok(Ok(SurrogateSpec {
        registry_name: name,
        namespace: namespace.to_owned(),
        owner,
        registry_url: url,
        ca,
        credentials,
        secrets_digest: hex::encode(digest.finalize()),
        image: ctx.surrogate_image.clone(),
        image_pull_policy: ctx.image_pull_policy.clone(),
    }))
}

fn missing_secret(field: &str, secret: &str, namespace: &str) -> NotServable {
    NotServable {
        reason: ReadyReason::SecretMissing,
        message: format!(
            "spec.{field} names Secret {secret:?}, which does not exist in namespace {namespace}; create it or fix the spec"
        ),
    }
}

/// Finds a ready surrogate pod, or says why there is none.
async fn surrogate_readiness(
    client: &Client,
    namespace: &str,
    spec: &SurrogateSpec,
) -> Result<Readiness, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&workload::selector(&spec.registry_name)))
        .await?;
    let live: Vec<&Pod> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    if let Some(pod) = live.iter().find(|p| pod_is_ready(p)) {
        let name = pod.name_any();
        return Ok(Readiness {
            ready: true,
            reason: ReadyReason::SurrogateReady,
            message: format!("surrogate pod {name} serves {}", spec.registry_url),
            surrogate_pod: Some(name),
        });
    }
    let Some(pod) = live.first() else {
        return Ok(Readiness {
            ready: false,
            reason: ReadyReason::SurrogateStarting,
            message: format!(
                "waiting for the surrogate pod of Deployment {} to be created",
                workload::deployment_name(&spec.registry_name)
            ),
            surrogate_pod: None,
        });
    };
    let name = pod.name_any();
    // A container that cannot start says why (ImagePullBackOff, CrashLoopBackOff, ...).
    let waiting = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.clone());
    let message = match waiting {
        Some(w) if w.reason.as_deref() != Some("ContainerCreating") => format!(
            "surrogate pod {name} cannot start: {}{}; see kubectl describe pod {name}",
            w.reason.unwrap_or_default(),
            w.message.map(|m| format!(" ({m})")).unwrap_or_default()
        ),
        Some(_) => format!("surrogate pod {name} is starting"),
        None if is_running(pod) => format!(
            "surrogate pod {name} runs but cannot reach {} with the configured credentials (its readiness check fails); see kubectl logs {name}",
            spec.registry_url
        ),
        None => format!("surrogate pod {name} is starting"),
    };
    Ok(Readiness {
        ready: false,
        reason: if is_running(pod) {
            ReadyReason::SurrogateNotReady
        } else {
            ReadyReason::SurrogateStarting
        },
        message,
        surrogate_pod: None,
    })
}

/// Applies the status; the condition's transition time changes only when its status does.
async fn apply_status(
    client: &Client,
    registry: &Registry,
    namespace: &str,
    readiness: Readiness,
) -> Result<(), Error> {
    let status_value = if readiness.ready { "True" } else { "False" };
    let previous = registry.ready_condition();
    let last_transition_time = match previous {
        Some(c) if c.status == status_value => c.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    let generation = registry.meta().generation;
    let status = RegistryStatus {
        surrogate_pod: readiness.surrogate_pod,
        observed_generation: generation,
        conditions: vec![Condition {
            type_: READY.into(),
            status: status_value.into(),
            reason: readiness.reason.as_str().into(),
            message: readiness.message,
            last_transition_time,
            observed_generation: generation,
        }],
    };
    if previous.map(|c| (&c.status, &c.reason, &c.message))
        != Some((
            &status.conditions[0].status,
            &status.conditions[0].reason,
            &status.conditions[0].message,
        ))
    {
        info!(ready = readiness.ready, reason = %readiness.reason, message = %status.conditions[0].message, "status");
    }
    let registries: Api<Registry> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": Registry::api_version(&()),
        "kind": Registry::kind(&()),
        "status": status,
    });
    registries
        .patch_status(
            &registry.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}
