//! The `Registry` custom resource (`registries.reposure.puccini.cloud/v1alpha1`).
//!
//! Field names and shapes follow the original Go Reposure so that existing manifests keep
//! working; the status adds `observedGeneration` and a `Ready` condition. The CRD manifest
//! is generated from these types ([`crd`]) and checked in (`operator/manifests/crd.yaml`),
//! and a test fails when the two differ.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every Reposure resource.
pub const GROUP: &str = "reposure.puccini.cloud";
/// The one condition type the operator maintains.
pub const READY: &str = "Ready";
/// Why the `Ready` condition is what it is: its `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyReason {
    /// The surrogate pod is ready: sessions can be opened.
    SurrogateReady,
    /// The surrogate pod is being created or started.
    SurrogateStarting,
    /// The surrogate runs but its readiness check fails (it cannot reach the registry).
    SurrogateNotReady,
    /// A Secret the spec names does not exist.
    SecretMissing,
    /// A Secret the spec names lacks what it must hold.
    SecretInvalid,
    /// The spec cannot be served as written.
    InvalidSpec,
}

impl ReadyReason {
    /// The reason as the condition carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SurrogateReady => "SurrogateReady",
            Self::SurrogateStarting => "SurrogateStarting",
            Self::SurrogateNotReady => "SurrogateNotReady",
            Self::SecretMissing => "SecretMissing",
            Self::SecretInvalid => "SecretInvalid",
            Self::InvalidSpec => "InvalidSpec",
        }
    }
}

impl std::fmt::Display for ReadyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Data keys tried, in order, for the CA certificate in `authenticationSecret` when
/// `authenticationSecretDataKey` names none: cert-manager's `ca.crt`, then the certificate
/// of a `kubernetes.io/tls` Secret (`kubectl create secret tls`), which is what the original
/// Reposure read, and which verifies a self-signed registry certificate.
pub const DEFAULT_CA_KEYS: [&str; 2] = ["ca.crt", "tls.crt"];

/// The key of the CA certificate in a Secret holding `keys`: `explicit` if given, else the
/// first of [`DEFAULT_CA_KEYS`] it holds; `Err` lists what was looked for.
pub fn ca_key(explicit: Option<&str>, mut holds: impl FnMut(&str) -> bool) -> Result<&str, String> {
    match explicit {
        Some(key) if holds(key) => Ok(key),
        Some(key) => Err(format!("key {key:?}")),
        None => DEFAULT_CA_KEYS
            .into_iter()
            .find(|key| holds(key))
            .ok_or_else(|| format!("key {:?} or {:?}", DEFAULT_CA_KEYS[0], DEFAULT_CA_KEYS[1])),
    }
}

/// A container registry that Reposure serves through a surrogate pod.
///
/// Exactly one of `direct` and `indirect` is set: the API server refuses anything else at
/// apply time (a CEL rule, as the original's `oneOf` did).
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[kube(
    group = "reposure.puccini.cloud",
    version = "v1alpha1",
    kind = "Registry",
    plural = "registries",
    shortname = "reg",
    category = "all",
    namespaced,
    status = "RegistryStatus",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.direct.host"}"#,
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.indirect.service"}"#,
    printcolumn = r#"{"name":"Port","type":"integer","jsonPath":".spec.indirect.port"}"#,
    printcolumn = r#"{"name":"Surrogate","type":"string","jsonPath":".status.surrogatePod"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.direct) != has(self.indirect)").message("set exactly one of spec.direct and spec.indirect"))]
#[serde(rename_all = "camelCase")]
pub struct RegistrySpec {
    /// The registry protocol; `oci` (the OCI distribution API) is the only one.
    #[serde(rename = "type")]
    pub type_: RegistryType,
    /// A registry reached at a host name or address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<RegistryDirect>,
    /// A registry reached through a Service of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indirect: Option<RegistryIndirect>,
    /// Secret holding the CA certificate (PEM) that verifies the registry's TLS certificate.
    /// Giving it makes the surrogate use HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_secret: Option<String>,
    /// Key of the CA certificate in `authenticationSecret` (default `ca.crt`, else
    /// `tls.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_secret_data_key: Option<String>,
    /// Secret holding the registry credentials: a `kubernetes.io/dockerconfigjson` secret
    /// or a service-account token (`kubernetes.io/service-account-token`, key `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_secret: Option<String>,
}

/// Registry protocols.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum RegistryType {
    #[serde(rename = "oci")]
    Oci,
}

/// `spec.direct`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct RegistryDirect {
    /// `HOST[:PORT]`, or `http://HOST[:PORT]` / `https://HOST[:PORT]` to choose the scheme.
    pub host: String,
}

/// `spec.indirect`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct RegistryIndirect {
    /// Namespace of the Service (default: the Registry's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the Service.
    pub service: String,
    /// Port of the Service.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// What the operator last observed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStatus {
    /// The surrogate pod that clients open sessions with (empty while none is ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surrogate_pod: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: whether clients can use the registry now, and if not, why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Registry {
    /// The `Ready` condition, if the operator has set one.
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
    }
}

/// The CustomResourceDefinition, generated from the types above.
pub fn crd() -> CustomResourceDefinition {
    Registry::crd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_names_match_the_original() {
        let crd = crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("registries.reposure.puccini.cloud")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "Registry");
        assert_eq!(crd.spec.names.short_names, Some(vec!["reg".to_owned()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            columns.contains(&"Ready") && columns.contains(&"Host"),
            "{columns:?}"
        );
    }

    #[test]
    fn an_original_manifest_parses() {
        let registry: Registry = serde_json::from_value(serde_json::json!({
            "apiVersion": "reposure.puccini.cloud/v1alpha1",
            "kind": "Registry",
            "metadata": {"name": "default", "namespace": "workspace"},
            "spec": {
                "type": "oci",
                "indirect": {"namespace": "kube-system", "service": "registry", "port": 80},
                "authenticationSecret": "registry-ca",
                "authenticationSecretDataKey": "ca.crt",
                "authorizationSecret": "registry-auth"
            }
        }))
        .unwrap();
        let indirect = registry.spec.indirect.unwrap();
        assert_eq!((indirect.service.as_str(), indirect.port), ("registry", 80));
    }
}
