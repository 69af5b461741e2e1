//! The reconciler's API calls, asserted request by request against a mock API server
//! (tower-test), in the style of kube-rs's controller example.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use reposure_client::resource::Registry;
use reposure_operator::reconcile::{Context, Error, error_policy, reconcile};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const NAMESPACE: &str = "team";
const IMAGE: &str = "example.test/reposure-surrogate:1";
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const DOCKER_CONFIG: &str = r#"{"auths":{"10.0.0.5:5000":{"auth":"dTpzM2NyM3Q="}}}"#;

fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn registry(generation: i64, host: &str, status: Option<Value>) -> Registry {
    let mut value = json!({
        "apiVersion": "reposure.puccini.cloud/v1alpha1",
        "kind": "Registry",
        "metadata": {"name": "myreg", "namespace": NAMESPACE, "uid": "0a1b2c", "generation": generation},
        "spec": {
            "type": "oci",
            "direct": {"host": host},
            "authenticationSecret": "reg-ca",
            "authorizationSecret": "reg-auth"
        }
    });
    if let Some(status) = status {
        value["status"] = status;
    }
    serde_json::from_value(value).unwrap()
}

fn secret(name: &str, key: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": {key: base64(value)}
    })
}

fn pod(name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": [{"name": "surrogate", "ready": ready, "restartCount": 0, "image": IMAGE, "imageID": "", "state": {"running": {}}}]
        }
    })
}

fn pod_list(pods: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods})
}

fn context() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NAMESPACE);
    (Arc::new(Context::new(client, IMAGE.into(), None)), handle)
}

/// The next request: asserts its method and path (query included), answers `status` with
/// `response` (`Value::Null`: the request's own body), and returns the request's content type and JSON body.
async fn expect(
    handle: &mut Handle,
    method: &str,
    path: &str,
    status: u16,
    response: Value,
) -> (String, Value) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
        .expect("the client is gone");
    assert_eq!(request.method().as_str(), method, "{}", request.uri());
    assert_eq!(
        request.uri().path_and_query().unwrap().as_str(),
        path,
        "unexpected {} request",
        request.method()
    );
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    // `Value::Null` means: echo the applied object, as the API server does.
    let response = match response {
        Value::Null => {
            let mut echo = body.clone();
            echo["metadata"]["name"] = json!("echo");
            if echo["kind"] == "Registry" {
                // A status apply answers with the whole Registry.
                echo["spec"] = json!({"type": "oci", "direct": {"host": "echo"}});
            }
            echo
        }
        other => other,
    };
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&response).unwrap()))
            .unwrap(),
    );
    (content_type, body)
}

fn not_found(what: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("{what} not found"), "reason": "NotFound", "code": 404})
}

async fn assert_no_more_requests(handle: &mut Handle) {
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
    {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

const SECRET_CA: &str = "/api/v1/namespaces/team/secrets/reg-ca";
const SECRET_AUTH: &str = "/api/v1/namespaces/team/secrets/reg-auth";
const APPLY_DEPLOYMENT: &str = "/apis/apps/v1/namespaces/team/deployments/reposure-surrogate-myreg?&force=true&fieldManager=reposure-operator";
const LIST_PODS: &str = "/api/v1/namespaces/team/pods?&labelSelector=app.kubernetes.io%2Fname%3Dreposure-surrogate%2Creposure.puccini.cloud%2Fregistry%3Dmyreg";
const APPLY_STATUS: &str = "/apis/reposure.puccini.cloud/v1alpha1/namespaces/team/registries/myreg/status?&force=true&fieldManager=reposure-operator";

const ORIGINAL_POD: &str = "/api/v1/namespaces/team/pods/reposure-surrogate-myreg";

/// The events list of pod `name`: its readiness check's failures.
fn events_of(name: &str) -> String {
    format!(
        "/api/v1/namespaces/team/events?&fieldSelector=involvedObject.kind%3DPod%2CinvolvedObject.name%3D{name}%2Creason%3DUnhealthy"
    )
}

fn event_list(events: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": events})
}

/// A readiness probe failure of pod `name`, as the kubelet records it.
fn probe_failed(name: &str, output: &str, at: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.1"), "namespace": NAMESPACE},
        "involvedObject": {"kind": "Pod", "name": name, "namespace": NAMESPACE},
        "reason": "Unhealthy", "type": "Warning",
        "message": format!("Readiness probe failed: {output}"),
        "lastTimestamp": at
    })
}

/// One full pass; returns the applied Deployment, the applied status and the action.
/// With a ready pod, the original Reposure's pod is looked for (and is not there); with a
/// running unready one, its events are read (and hold no probe failure).
async fn full_pass(registry: Registry, ca: &str, pods: Vec<Value>) -> (Value, Value, Action) {
    let ready = pods
        .iter()
        .any(|p| p["status"]["conditions"][0]["status"] == "True");
    let unready = pods
        .first()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned());
    let then = match (ready, unready) {
        (true, _) => Then::OriginalPod(not_found("pods")),
        (false, Some(name)) => Then::Events(name, event_list(vec![])),
        (false, None) => Then::Nothing,
    };
    full_pass_then(registry, ca, pods, then).await
}

/// What a pass asks after listing the pods.
enum Then {
    Nothing,
    /// The original Reposure's pod, answered with this.
    OriginalPod(Value),
    /// The events of this pod, answered with this.
    Events(String, Value),
}

async fn full_pass_then(
    registry: Registry,
    ca: &str,
    pods: Vec<Value>,
    then: Then,
) -> (Value, Value, Action) {
    let (ctx, mut handle) = context();
    let pass = tokio::spawn(reconcile(Arc::new(registry), ctx));
    expect(
        &mut handle,
        "GET",
        SECRET_CA,
        200,
        secret("reg-ca", "ca.crt", ca),
    )
    .await;
    expect(
        &mut handle,
        "GET",
        SECRET_AUTH,
        200,
        secret("reg-auth", ".dockerconfigjson", DOCKER_CONFIG),
    )
    .await;
    let (content_type, deployment) =
        expect(&mut handle, "PATCH", APPLY_DEPLOYMENT, 200, Value::Null).await;
    assert_eq!(content_type, "application/apply-patch+yaml");
    // Answer the apply with what was applied (the API server echoes the object).
    let _ = &deployment;
    expect(&mut handle, "GET", LIST_PODS, 200, pod_list(pods)).await;
    match then {
        Then::Nothing => {}
        Then::OriginalPod(answer) => {
            let found = answer["kind"] == "Pod";
            expect(
                &mut handle,
                "GET",
                ORIGINAL_POD,
                if found { 200 } else { 404 },
                answer,
            )
            .await;
            if found {
                expect(
                    &mut handle,
                    "DELETE",
                    &format!("{ORIGINAL_POD}?"),
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )
                .await;
            }
        }
        Then::Events(name, answer) => {
            expect(&mut handle, "GET", &events_of(&name), 200, answer).await;
        }
    }
    let (content_type, status) = expect(&mut handle, "PATCH", APPLY_STATUS, 200, Value::Null).await;
    assert_eq!(content_type, "application/apply-patch+yaml");
    let action = pass.await.unwrap().expect("reconcile succeeds");
    assert_no_more_requests(&mut handle).await;
    (deployment, status, action)
}

fn env_of(deployment: &Value) -> Vec<(String, String)> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn ready_condition(status: &Value) -> &Value {
    &status["status"]["conditions"][0]
}

#[tokio::test]
async fn create_applies_an_owned_surrogate_with_secrets_as_files_then_reports_starting() {
    let (deployment, status, action) =
        full_pass(registry(1, "10.0.0.5:5000", None), CA_PEM, vec![]).await;

    // Owned by the Registry as its controller, so deleting the Registry deletes it.
    assert_eq!(
        deployment["metadata"]["ownerReferences"],
        json!([{"apiVersion": "reposure.puccini.cloud/v1alpha1", "kind": "Registry", "name": "myreg",
                "uid": "0a1b2c", "controller": true}])
    );
    let pod_spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod_spec["containers"][0]["image"], IMAGE);
    assert_eq!(
        pod_spec["containers"][0]["command"],
        json!(["reposure-surrogate", "spooler"])
    );
    let volumes = pod_spec["volumes"].as_array().unwrap();
    let secret_of =
        |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap()["secret"].clone();
    assert_eq!(secret_of("ca")["secretName"], "reg-ca");
    assert_eq!(
        secret_of("ca")["items"],
        json!([{"key": "ca.crt", "path": "ca.crt"}])
    );
    assert_eq!(secret_of("credentials")["secretName"], "reg-auth");
    assert_eq!(
        secret_of("credentials")["items"],
        json!([{"key": ".dockerconfigjson", "path": "config.json"}])
    );
    let env = env_of(&deployment);
    let value = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    // A CA secret makes it HTTPS even on a private address.
    assert_eq!(
        value("REPOSURE_REGISTRY").as_deref(),
        Some("https://10.0.0.5:5000")
    );
    assert_eq!(
        value("REPOSURE_CA_FILE").as_deref(),
        Some("/etc/reposure/ca/ca.crt")
    );
    assert_eq!(
        value("REPOSURE_DOCKER_CONFIG_FILE").as_deref(),
        Some("/etc/reposure/credentials/config.json")
    );
    // No credential in the pod spec itself.
    let spec_text = deployment.to_string();
    assert!(
        !spec_text.contains("dTpzM2NyM3Q") && !spec_text.contains("s3cr3t"),
        "{spec_text}"
    );
    assert!(
        pod_spec["containers"][0]["readinessProbe"]["exec"]["command"]
            == json!(["reposure-surrogate", "check"])
    );

    assert_eq!(status["kind"], "Registry");
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert!(status["status"].get("surrogatePod").is_none());
    let ready = ready_condition(&status);
    assert_eq!(
        (
            ready["type"].as_str(),
            ready["status"].as_str(),
            ready["reason"].as_str()
        ),
        (Some("Ready"), Some("False"), Some("SurrogateStarting"))
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
}

#[tokio::test]
async fn a_ready_pod_makes_the_registry_ready_and_names_the_pod() {
    let pods = vec![
        pod("reposure-surrogate-myreg-abc-1", false),
        pod("reposure-surrogate-myreg-abc-2", true),
    ];
    let (_, status, action) = full_pass(registry(1, "10.0.0.5:5000", None), CA_PEM, pods).await;
    assert_eq!(
        status["status"]["surrogatePod"],
        "reposure-surrogate-myreg-abc-2"
    );
    let ready = ready_condition(&status);
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("SurrogateReady"))
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn a_running_pod_is_starting_until_its_readiness_check_fails() {
    let (_, status, action) = full_pass(
        registry(1, "10.0.0.5:5000", None),
        CA_PEM,
        vec![pod("p1", false)],
    )
    .await;
    let ready = ready_condition(&status);
    assert_eq!(ready["reason"], "SurrogateStarting");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("has not passed yet"),
        "{}",
        ready["message"]
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
}

#[tokio::test]
async fn a_failed_readiness_check_says_why_in_the_condition() {
    let events = event_list(vec![
        probe_failed(
            "p1",
            "cannot reach https://10.0.0.5:5000: connection refused",
            "2026-12-06T10:00:00Z",
        ),
        probe_failed(
            "p1",
            "https://10.0.0.5:5000 refused the credentials (401)",
            "2026-12-06T10:00:20Z",
        ),
    ]);
    let (_, status, _) = full_pass_then(
        registry(1, "10.0.0.5:5000", None),
        CA_PEM,
        vec![pod("p1", false)],
        Then::Events("p1".into(), events),
    )
    .await;
    let ready = ready_condition(&status);
    assert_eq!(ready["reason"], "SurrogateNotReady");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("refused the credentials (401)")
            && !message.contains("connection refused")
            && message.contains("kubectl describe pod p1"),
        "the newest failure, and where to look: {message}"
    );
}

#[tokio::test]
async fn the_original_reposures_bare_pod_goes_once_the_new_surrogate_is_ready() {
    let original = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "reposure-surrogate-myreg", "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/name": "reposure-surrogate-myreg", "app.kubernetes.io/component": "surrogate"}},
        "status": {"phase": "Running"}
    });
    let original_style = json!({"surrogatePod": "reposure-surrogate-myreg"});
    let (_, status, _) = full_pass_then(
        registry(1, "10.0.0.5:5000", Some(original_style)),
        CA_PEM,
        vec![pod("reposure-surrogate-myreg-abc-1", true)],
        Then::OriginalPod(original),
    )
    .await;
    assert_eq!(
        status["status"]["surrogatePod"],
        "reposure-surrogate-myreg-abc-1"
    );
    assert_eq!(ready_condition(&status)["reason"], "SurrogateReady");
}

#[tokio::test]
async fn a_spec_change_updates_the_surrogate_and_the_observed_generation() {
    let (before, _, _) = full_pass(registry(1, "10.0.0.5:5000", None), CA_PEM, vec![]).await;
    let (after, status, _) = full_pass(
        registry(2, "https://registry.example:443", None),
        CA_PEM,
        vec![],
    )
    .await;
    let url = |d: &Value| {
        env_of(d)
            .into_iter()
            .find(|(n, _)| n == "REPOSURE_REGISTRY")
            .unwrap()
            .1
    };
    assert_eq!(url(&before), "https://10.0.0.5:5000");
    assert_eq!(url(&after), "https://registry.example:443");
    assert_eq!(status["status"]["observedGeneration"], 2);
    assert_eq!(ready_condition(&status)["observedGeneration"], 2);
}

#[tokio::test]
async fn a_secret_change_rolls_the_surrogate() {
    let annotation = |d: &Value| {
        d["spec"]["template"]["metadata"]["annotations"]["reposure.puccini.cloud/secrets-digest"]
            .clone()
    };
    let (first, _, _) = full_pass(registry(1, "10.0.0.5:5000", None), CA_PEM, vec![]).await;
    let (same, _, _) = full_pass(registry(1, "10.0.0.5:5000", None), CA_PEM, vec![]).await;
    let (rotated, _, _) = full_pass(
        registry(1, "10.0.0.5:5000", None),
        "-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n",
        vec![],
    )
    .await;
    assert!(annotation(&first).is_string());
    assert_eq!(
        annotation(&first),
        annotation(&same),
        "unchanged secrets must not roll the pod"
    );
    assert_ne!(
        annotation(&first),
        annotation(&rotated),
        "a rotated CA must roll the pod"
    );
}

#[tokio::test]
async fn a_deleted_surrogate_is_applied_again_and_readiness_drops() {
    // It was ready; its Deployment and pod are gone (the watch on Deployments triggers this pass).
    let was_ready = json!({
        "surrogatePod": "old-pod",
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "SurrogateReady", "message": "m",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]
    });
    let (deployment, status, action) = full_pass(
        registry(1, "10.0.0.5:5000", Some(was_ready)),
        CA_PEM,
        vec![],
    )
    .await;
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(deployment["metadata"]["name"], "reposure-surrogate-myreg");
    assert!(status["status"].get("surrogatePod").is_none());
    let ready = ready_condition(&status);
    assert_eq!(ready["status"], "False");
    assert_ne!(
        ready["lastTransitionTime"], "2026-01-01T00:00:00Z",
        "the transition is recorded"
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
}

#[tokio::test]
async fn an_unchanged_condition_keeps_its_transition_time() {
    let was_ready = json!({
        "surrogatePod": "p", "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "SurrogateReady", "message": "m",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]
    });
    let (_, status, _) = full_pass(
        registry(1, "10.0.0.5:5000", Some(was_ready)),
        CA_PEM,
        vec![pod("p", true)],
    )
    .await;
    assert_eq!(
        ready_condition(&status)["lastTransitionTime"],
        "2026-01-01T00:00:00Z"
    );
}

#[tokio::test]
async fn a_registry_being_deleted_is_left_to_the_garbage_collector() {
    let mut deleted = registry(1, "10.0.0.5:5000", None);
    deleted.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let (ctx, mut handle) = context();
    let action = reconcile(Arc::new(deleted), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    drop(ctx);
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn a_missing_secret_is_reported_and_nothing_is_applied() {
    let (ctx, mut handle) = context();
    let pass = tokio::spawn(reconcile(Arc::new(registry(1, "10.0.0.5:5000", None)), ctx));
    expect(
        &mut handle,
        "GET",
        SECRET_CA,
        404,
        not_found("secrets \"reg-ca\""),
    )
    .await;
    let (_, status) = expect(&mut handle, "PATCH", APPLY_STATUS, 200, Value::Null).await;
    let ready = ready_condition(&status);
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("SecretMissing"))
    );
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("\"reg-ca\"") && message.contains("namespace team"),
        "{message}"
    );
    // Nothing to retry until the Secret or the spec changes (both are watched).
    assert_eq!(pass.await.unwrap().unwrap(), Action::await_change());
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn an_invalid_spec_is_reported_without_touching_anything_else() {
    let mut bad = registry(3, "http://10.0.0.5:5000", None);
    bad.spec.authorization_secret = None;
    let (ctx, mut handle) = context();
    let pass = tokio::spawn(reconcile(Arc::new(bad), ctx));
    let (_, status) = expect(&mut handle, "PATCH", APPLY_STATUS, 200, Value::Null).await;
    let ready = ready_condition(&status);
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(ready["message"].as_str().unwrap().contains("https://"));
    assert_eq!(status["status"]["observedGeneration"], 3);
    pass.await.unwrap().unwrap();
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn api_errors_requeue_with_growing_backoff() {
    let (ctx, mut handle) = context();
    let registry = Arc::new(registry(1, "10.0.0.5:5000", None));
    let mut delays = Vec::new();
    for _ in 0..3 {
        let pass = tokio::spawn(reconcile(registry.clone(), ctx.clone()));
        let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcd is down", "reason": "InternalError", "code": 500});
        expect(&mut handle, "GET", SECRET_CA, 500, failure).await;
        let error: Error = pass.await.unwrap().unwrap_err();
        assert!(error.to_string().contains("etcd is down"), "{error}");
        delays.push(error_policy(registry.clone(), &error, ctx.clone()));
    }
    assert_eq!(
        delays,
        [2, 4, 8].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    // Success resets the backoff.
    let pass = tokio::spawn(reconcile(registry.clone(), ctx.clone()));
    expect(
        &mut handle,
        "GET",
        SECRET_CA,
        200,
        secret("reg-ca", "ca.crt", CA_PEM),
    )
    .await;
    expect(
        &mut handle,
        "GET",
        SECRET_AUTH,
        200,
        secret("reg-auth", ".dockerconfigjson", DOCKER_CONFIG),
    )
    .await;
    expect(&mut handle, "PATCH", APPLY_DEPLOYMENT, 200, Value::Null).await;
    expect(&mut handle, "GET", LIST_PODS, 200, pod_list(vec![])).await;
    expect(&mut handle, "PATCH", APPLY_STATUS, 200, Value::Null).await;
    pass.await.unwrap().unwrap();
    let pass = tokio::spawn(reconcile(registry.clone(), ctx.clone()));
    expect(&mut handle, "GET", SECRET_CA, 500, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "again", "reason": "InternalError", "code": 500})).await;
    let error = pass.await.unwrap().unwrap_err();
    assert_eq!(
        error_policy(registry, &error, ctx),
        Action::requeue(Duration::from_secs(2))
    );
}
