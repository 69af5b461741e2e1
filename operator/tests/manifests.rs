//! The install manifests: checked in, generated from the code, valid Kubernetes objects.
//!
//! `UPDATE_MANIFESTS=1 cargo test -p reposure-operator --test manifests` rewrites the
//! checked-in files after a deliberate change.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use reposure_operator::manifests::{self, OPERATOR_IMAGE, SURROGATE_IMAGE};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn checked_in(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("manifests")
        .join(name)
}

fn rendered() -> [(&'static str, String); 2] {
    [
        ("crd.yaml", manifests::to_yaml(&[manifests::crd_object()])),
        (
            "operator.yaml",
            manifests::to_yaml(&manifests::install_objects(
                "reposure",
                OPERATOR_IMAGE,
                SURROGATE_IMAGE,
            )),
        ),
    ]
}

#[test]
fn checked_in_manifests_match_the_code() {
    for (name, text) in rendered() {
        let path = checked_in(name);
        if std::env::var_os("UPDATE_MANIFESTS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == text,
            "{} is out of date: run UPDATE_MANIFESTS=1 cargo test -p reposure-operator --test manifests",
            path.display()
        );
    }
}

/// Deserializes into the typed object and serializes back: any field the Kubernetes API
/// does not know, or a value of the wrong type, makes the two differ.
fn round_trips<K: DeserializeOwned + Serialize>(document: &Value) {
    let typed: K = serde_json::from_value(document.clone()).unwrap_or_else(|e| {
        panic!(
            "{} does not parse as {}: {e}",
            document["kind"],
            std::any::type_name::<K>()
        )
    });
    let mut back = serde_json::to_value(&typed).unwrap();
    back["apiVersion"] = document["apiVersion"].clone();
    back["kind"] = document["kind"].clone();
    assert_eq!(
        &back, document,
        "{} changed in a round trip through k8s-openapi",
        document["kind"]
    );
}

fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

#[test]
fn every_manifest_round_trips_through_the_kubernetes_types() {
    let mut kinds = Vec::new();
    for (_, text) in rendered() {
        for document in documents(&text) {
            let kind = document["kind"].as_str().unwrap().to_owned();
            match kind.as_str() {
                "CustomResourceDefinition" => round_trips::<CustomResourceDefinition>(&document),
                "ServiceAccount" => round_trips::<ServiceAccount>(&document),
                "Role" => round_trips::<Role>(&document),
                "RoleBinding" => round_trips::<RoleBinding>(&document),
                "Deployment" => round_trips::<Deployment>(&document),
                other => panic!("unexpected kind {other}"),
            }
            kinds.push(kind);
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition",
            "Deployment",
            "Role",
            "Role",
            "RoleBinding",
            "ServiceAccount"
        ]
    );
}

#[test]
fn rbac_is_least_privilege() {
    let rules = |role: Role| {
        role.rules
            .unwrap()
            .into_iter()
            .map(|r| {
                let resource = r.resources.unwrap().join(",");
                let group = r.api_groups.unwrap().join(",");
                assert!(
                    !resource.contains('*')
                        && !group.contains('*')
                        && !r.verbs.iter().any(|v| v == "*")
                );
                format!("{group}/{resource}: {}", r.verbs.join(" "))
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rules(manifests::operator_role("ns")),
        [
            "reposure.puccini.cloud/registries: get list watch",
            "reposure.puccini.cloud/registries/status: patch",
            "apps/deployments: get list watch create patch",
            "/pods: get list delete",
            "/events: list",
            "/secrets: get list watch",
        ]
    );
    assert_eq!(
        rules(manifests::user_role("ns")),
        [
            "reposure.puccini.cloud/registries: get list",
            "/pods: get list",
            "/pods/exec: create"
        ]
    );
}

#[test]
fn the_surrogate_deployment_round_trips_and_holds_no_secret_values() {
    use reposure_operator::workload::{Credentials, SurrogateSpec, deployment};
    let spec = SurrogateSpec {
        registry_name: "myreg".into(),
        namespace: "team".into(),
        owner: Default::default(),
        registry_url: "https://reg.example".into(),
        ca: Some(("reg-ca".into(), "ca.crt".into())),
        credentials: Some(Credentials::Token {
            secret: "sa-token".into(),
        }),
        secrets_digest: "abc".into(),
        image: SURROGATE_IMAGE.into(),
        image_pull_policy: None,
    };
    let mut value = serde_json::to_value(deployment(&spec)).unwrap();
    value["apiVersion"] = "apps/v1".into();
    value["kind"] = "Deployment".into();
    round_trips::<Deployment>(&value);
    for env in value["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
    {
        let name = env["name"].as_str().unwrap();
        assert!(
            ["REPOSURE_REGISTRY", "REPOSURE_SPOOL"].contains(&name) || name.ends_with("_FILE"),
            "{name} would put a credential in the environment"
        );
    }
}
