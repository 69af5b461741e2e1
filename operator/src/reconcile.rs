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
//!
//! A Registry the original Reposure's operator served (its status is `surrogatePod` alone,
//! its pod bare) is adopted like any other: once this operator's surrogate is ready, the
//! status names it and the original pod is deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tracing::{info, instrument, warn};

use crate::endpoint::registry_url;
use crate::workload::{self, Credentials, SurrogateSpec};
use reposure_client::kubernetes::{is_running, pod_is_ready, runs_our_surrogate};
use reposure_client::resource::{READY, ReadyReason, Registry, RegistryStatus, ca_key};

/// Field manager of everything the operator applies.
pub const MANAGER: &str = "reposure-operator";

/// How often a ready Registry is checked again even if nothing changes.
const READY_RECHECK: Duration = Duration::from_secs(300);
/// How soon a Registry whose surrogate is starting is looked at again.
const STARTING_RECHECK: Duration = Duration::from_secs(10);
/// Backoff after an API error: doubles from the first value up to the second.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(300));
/// Keys of the Docker config in `kubernetes.io/dockerconfigjson` and (the legacy form, as
/// OpenShift still makes for service accounts) `kubernetes.io/dockercfg` Secrets.
const DOCKER_CONFIG_KEYS: [&str; 2] = [".dockerconfigjson", ".dockercfg"];
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
            let readiness = surrogate_readiness(&ctx.client, &namespace, &spec).await?;
            if readiness.ready {
                remove_original_surrogate(&ctx.client, &namespace, &spec.registry_name).await?;
            }
            readiness
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

/// Deletes the bare surrogate pod the original Reposure's operator made for this Registry
/// (`reposure-surrogate-NAME`, without this project's labels), once this operator's
/// surrogate is ready to take its place: an installation taken over from the original
/// keeps serving throughout.
async fn remove_original_surrogate(
    client: &Client,
    namespace: &str,
    registry: &str,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let name = workload::deployment_name(registry);
    if let Some(pod) = pods.get_opt(&name).await?
        && !runs_our_surrogate(&pod)
        && pod.metadata.deletion_timestamp.is_none()
    {
        pods.delete(&name, &Default::default()).await?;
        info!(
            pod = name,
            "removed the original Reposure's surrogate pod; this operator's serves the Registry now"
        );
    }
    Ok(())
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
            let Some(secret) = secrets.get_opt(secret_name).await? else {
                return Ok(Err(missing_secret(
                    "authenticationSecret",
                    secret_name,
                    namespace,
                )));
            };
            let data = secret.data.unwrap_or_default();
            let explicit = registry.spec.authentication_secret_data_key.as_deref();
            let key = match ca_key(explicit, |key| data.contains_key(key)) {
                Ok(key) => key.to_owned(),
                Err(wanted) => {
                    return Ok(Err(NotServable {
                        reason: ReadyReason::SecretInvalid,
                        message: format!(
                            "Secret {secret_name:?} has no {wanted} holding the CA certificate; add it or set spec.authenticationSecretDataKey"
                        ),
                    }));
                }
            };
            digest.update(b"ca\0");
            digest.update(&data[&key].0);
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
            let config_key = DOCKER_CONFIG_KEYS
                .into_iter()
                .find(|k| data.contains_key(*k));
            let (credentials, key) = if let Some(config_key) = config_key {
                (
                    Credentials::DockerConfig {
                        secret: secret_name.clone(),
                        key: config_key.to_owned(),
                    },
                    &data[config_key],
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
                        "Secret {secret_name:?} is neither a kubernetes.io/dockerconfigjson or dockercfg secret (key .dockerconfigjson or .dockercfg) nor a token (key token); create it with kubectl create secret docker-registry"
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
        .list(
            &ListParams::default().labels(&reposure_client::kubernetes::surrogate_selector(
                &spec.registry_name,
            )),
        )
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
    let starting = |message: String| Readiness {
        ready: false,
        reason: ReadyReason::SurrogateStarting,
        message,
        surrogate_pod: None,
    };
    if let Some(w) = waiting {
        return Ok(match w.reason.as_deref() {
            Some("ContainerCreating") | None => {
                starting(format!("surrogate pod {name} is starting"))
            }
            Some(reason) => Readiness {
                ready: false,
                reason: ReadyReason::SurrogateNotReady,
                message: format!(
                    "surrogate pod {name} cannot start: {reason}{}; see kubectl describe pod {name}",
                    w.message.map(|m| format!(" ({m})")).unwrap_or_default()
                ),
                surrogate_pod: None,
            },
        });
    }
    if !is_running(pod) {
        return Ok(starting(format!("surrogate pod {name} is starting")));
    }
    // Running but not ready: until a readiness check has failed it is only starting; once
    // one has, the check's own words (from the pod's events) say why.
    Ok(match last_probe_failure(client, namespace, &name).await {
        ProbeFailure::None => starting(format!(
            "surrogate pod {name} runs; its first readiness check has not passed yet"
        )),
        ProbeFailure::Said(failure) => Readiness {
            ready: false,
            reason: ReadyReason::SurrogateNotReady,
            message: format!(
                "surrogate pod {name} cannot reach {}: {failure}; see kubectl describe pod {name}",
                spec.registry_url
            ),
            surrogate_pod: None,
        },
        ProbeFailure::Unknown => Readiness {
            ready: false,
            reason: ReadyReason::SurrogateNotReady,
            message: format!(
                "surrogate pod {name} runs but its readiness check fails (it cannot reach {} with the configured credentials); see kubectl describe pod {name}",
                spec.registry_url
            ),
            surrogate_pod: None,
        },
    })
}

/// What the pod's events say of its readiness check.
enum ProbeFailure {
    /// No failure recorded: the check has not failed yet.
    None,
    /// The last failure, in the check's words.
    Said(String),
    /// Events cannot be read (no permission): it may have failed.
    Unknown,
}

/// The newest "Readiness probe failed" event of pod `name`.
async fn last_probe_failure(client: &Client, namespace: &str, name: &str) -> ProbeFailure {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields(&format!(
        "involvedObject.kind=Pod,involvedObject.name={name},reason=Unhealthy"
    ));
    let Ok(list) = events.list(&params).await else {
        return ProbeFailure::Unknown;
    };
    let when = |e: &Event| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    list.items
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter_map(|e| {
            let message = e.message.as_deref()?;
            let failure = message.strip_prefix("Readiness probe failed:")?;
            Some((when(e), failure.trim().to_owned()))
        })
        .max_by_key(|(time, _)| *time)
        .map_or(ProbeFailure::None, |(_, failure)| {
            ProbeFailure::Said(if failure.is_empty() {
                "its readiness check failed".into()
            } else {
                failure
            })
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
