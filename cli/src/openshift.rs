//! The `openshift` provider: OpenShift's internal image registry.
//!
//! The registry is `image-registry.openshift-image-registry.svc:5000`, served over HTTPS
//! with a certificate from the cluster's service CA. As the original Reposure did, a
//! Registry uses the namespace's `builder` service account, which OpenShift lets push and
//! pull the namespace's images:
//! * its token Secret (`kubernetes.io/service-account-token`, keys `token` and
//!   `service-ca.crt`) serves as both the CA and the credentials, where it has one;
//! * clusters that no longer make token Secrets (OpenShift 4.16 on) still give `builder` a
//!   `kubernetes.io/dockercfg` Secret for the registry: that is the credentials, and the
//!   service CA (every namespace's ConfigMap `openshift-service-ca.crt`) is copied into
//!   the Secret [`SERVICE_CA_SECRET`], since a Registry names its CA by Secret.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::ObjectMeta;
use kube::{Api, Client};
use reposure_client::kubernetes::explain;
use reposure_registry::RegistryError;

use crate::kubernetes::{self, Scope};

pub const REGISTRY_NAMESPACE: &str = "openshift-image-registry";
pub const REGISTRY_SERVICE: &str = "image-registry";
pub const REGISTRY_PORT: u16 = 5000;

/// The service account whose credentials a Registry uses.
const BUILDER: &str = "builder";
/// The key of the service CA, in token Secrets and in the ConfigMap.
const SERVICE_CA_KEY: &str = "service-ca.crt";
/// The ConfigMap OpenShift puts the service CA in, in every namespace.
const SERVICE_CA_CONFIGMAP: &str = "openshift-service-ca.crt";
/// The Secret the service CA is copied into, when no token Secret holds it.
pub const SERVICE_CA_SECRET: &str = "reposure-openshift-service-ca";

/// The Secrets a Registry of the internal registry names.
pub struct Builder {
    pub ca_secret: String,
    pub ca_key: String,
    pub credentials_secret: String,
}

/// Finds (or, for the CA, makes) the Secrets that let a Registry use the internal registry
/// as `builder`.
pub async fn builder_credentials(client: &Client, namespace: &str) -> Result<Builder> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(builder) = accounts
        .get_opt(BUILDER)
        .await
        .map_err(|e| explain(e, "get", "serviceaccounts", BUILDER, namespace))?
    else {
        bail!(RegistryError::NotFound(format!(
            "namespace {namespace} has no service account {BUILDER}: is this an OpenShift project? (the openshift provider uses its builder account)"
        )));
    };
    // Its Secrets, then its image pull Secrets (where the dockercfg one is listed too).
    let referenced: Vec<String> = builder
        .secrets
        .iter()
        .flatten()
        .filter_map(|r| r.name.clone())
        .chain(
            builder
                .image_pull_secrets
                .iter()
                .flatten()
                .map(|r| r.name.clone()),
        )
        .collect();
    let mut dockercfg = None;
    for name in &referenced {
        let Some(secret) = secrets.get_opt(name).await.ok().flatten() else {
            continue;
        };
        let data = secret.data.clone().unwrap_or_default();
        match secret.type_.as_deref() {
            Some("kubernetes.io/service-account-token")
                if data.contains_key("token") && data.contains_key(SERVICE_CA_KEY) =>
            {
                return Ok(Builder {
                    ca_secret: name.clone(),
                    ca_key: SERVICE_CA_KEY.into(),
                    credentials_secret: name.clone(),
                });
            }
            Some("kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson") => {
                dockercfg.get_or_insert_with(|| name.clone());
            }
            _ => {}
        }
    }
    let Some(credentials_secret) = dockercfg else {
        bail!(RegistryError::NotFound(format!(
            "the {BUILDER} service account of namespace {namespace} has no token or dockercfg Secret; give --authentication-secret and --authorization-secret"
        )));
    };
    copy_service_ca(client, namespace).await?;
    Ok(Builder {
        ca_secret: SERVICE_CA_SECRET.into(),
        ca_key: SERVICE_CA_KEY.into(),
        credentials_secret,
    })
}

/// Copies the namespace's service CA ConfigMap into [`SERVICE_CA_SECRET`].
async fn copy_service_ca(client: &Client, namespace: &str) -> Result<()> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let ca = maps
        .get_opt(SERVICE_CA_CONFIGMAP)
        .await
        .map_err(|e| explain(e, "get", "configmaps", SERVICE_CA_CONFIGMAP, namespace))?
        .and_then(|map| map.data)
        .and_then(|mut data| data.remove(SERVICE_CA_KEY));
    let Some(ca) = ca else {
        bail!(RegistryError::NotFound(format!(
            "namespace {namespace} has no ConfigMap {SERVICE_CA_CONFIGMAP} with {SERVICE_CA_KEY}; give --authentication-secret"
        )));
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SERVICE_CA_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".into(),
                kubernetes::MANAGER.into(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            SERVICE_CA_KEY.into(),
            ByteString(ca.into_bytes()),
        )])),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    kubernetes::apply(&secrets, &secret, &Scope { namespace }).await?;
    Ok(())
}
