//! `reposure simple install|uninstall|host|logs|shell`: the reference registry for test
//! clusters.
//!
//! One Deployment of `registry:2` (deletion enabled) with its storage on a
//! PersistentVolumeClaim, and a Service, all named `reposure-simple`. `--authentication`
//! makes a CA and a serving certificate (no cert-manager needed) into a `kubernetes.io/tls`
//! Secret that also holds `ca.crt`; `--authorization` makes htpasswd credentials with a
//! random password, and a `kubernetes.io/dockerconfigjson` Secret for Registries to use.
//! Secrets that exist are kept, so installing again never changes a certificate or password
//! clients already hold; an htpasswd Secret the user made (`reposure-simple-htpasswd`, as the
//! original Reposure required) is used as it is. Uninstall deletes only the Secrets it made
//! (they carry its label), and keeps the data volume unless `--delete-data`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, Probe, Secret, SecretVolumeSource, Service,
    ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use kube::{Api, Client};
use reposure_client::kubernetes::KubeOptions;
use reposure_client::kubernetes::explain;
use reposure_operator::objects::single_pod_deployment;

use crate::kubernetes::{self, LogOptions, Scope};
use crate::shell::ShellOptions;

/// The name of every object of the simple registry.
pub const NAME: &str = "reposure-simple";
pub const PORT: u16 = 5000;
/// The TLS Secret (`tls.crt`, `tls.key`, `ca.crt`).
pub const AUTHENTICATION_SECRET: &str = "reposure-simple-authentication";
/// The dockerconfigjson Secret for Registries.
pub const AUTHORIZATION_SECRET: &str = "reposure-simple-authorization";
/// The registry's own htpasswd file.
const HTPASSWD_SECRET: &str = "reposure-simple-htpasswd";
const USER: &str = "reposure";
/// Reference registry 2.8, the version the project is tested against.
const IMAGE: &str = "docker.io/library/registry:2.8.3";
const STORAGE: &str = "10Gi";

#[derive(Subcommand, Debug)]
pub enum SimpleCommand {
    /// Install (or update) the simple registry in the namespace.
    #[command(
        after_help = "Examples:\n  reposure simple install --wait\n  reposure simple install --authentication --authorization --wait\n  reposure registry create default --provider simple --wait"
    )]
    Install {
        /// Serve HTTPS with a generated CA and certificate.
        #[arg(short = 'a', long)]
        authentication: bool,
        /// Require a user name and password: a generated one, or the users of a
        /// reposure-simple-htpasswd Secret you made.
        #[arg(long)]
        authorization: bool,
        /// Wait until the registry is available.
        #[arg(short = 'w', long)]
        wait: bool,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[arg(long, default_value = IMAGE)]
        image: String,
        /// Take the image from this registry host (`internal`: the cluster's own,
        /// OpenShift's or Minikube's).
        #[arg(short = 'g', long = "registry", value_name = "HOST|internal")]
        source_registry: Option<String>,
    },
    /// Remove the simple registry (its data volume stays unless --delete-data).
    #[command(
        after_help = "Examples:\n  reposure simple uninstall\n  reposure simple uninstall --delete-data"
    )]
    Uninstall {
        #[arg(long)]
        delete_data: bool,
        /// Wait until the registry is gone.
        #[arg(short = 'w', long)]
        wait: bool,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Print the registry's in-cluster address.
    #[command(after_help = "Examples:\n  reposure simple host")]
    Host,
    /// Print the registry's log.
    #[command(
        after_help = "Examples:\n  reposure simple logs\n  reposure simple logs -f --tail 20"
    )]
    Logs {
        #[command(flatten)]
        options: LogOptions,
    },
    /// Open a shell beside the registry (an ephemeral debug container).
    #[command(after_help = "Examples:\n  reposure simple shell")]
    Shell {
        #[command(flatten)]
        shell: ShellOptions,
    },
}

/// `reposure-simple.NAMESPACE.svc:5000`.
pub fn host(namespace: &str) -> String {
    format!("{NAME}.{namespace}.svc:{PORT}")
}

/// `HOST:PORT` as nodes pull by it: the Service's cluster IP (as the original printed), or
/// its DNS name where there is none or it cannot be read.
async fn reachable_host(apis: &Apis<'_>) -> String {
    let ip = match apis.services.get_opt(NAME).await {
        Ok(found) => found.as_ref().and_then(kubernetes::cluster_ip),
        Err(_) => None,
    };
    ip.map_or_else(|| host(apis.namespace), |ip| format!("{ip}:{PORT}"))
}

fn meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/name".into(),
            NAME.into(),
        )])),
        ..Default::default()
    }
}

/// Whether an object carries the label [`meta`] gives what `install` makes.
fn made_here(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get("app.kubernetes.io/name"))
        .is_some_and(|name| name == NAME)
}

fn secret(name: &str, namespace: &str, type_: &str, data: &[(&str, Vec<u8>)]) -> Secret {
    Secret {
        metadata: meta(name, namespace),
        type_: Some(type_.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.clone())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// A CA and a certificate for the Service's names and cluster IP, as PEM: (ca, cert, key).
fn certificates(namespace: &str, cluster_ip: Option<String>) -> Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "reposure-simple CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca.pem();
    // rcgen makes an IP address SAN of a name that parses as one.
    let names = [
        NAME.to_owned(),
        format!("{NAME}.{namespace}"),
        format!("{NAME}.{namespace}.svc"),
        format!("{NAME}.{namespace}.svc.cluster.local"),
    ]
    .into_iter()
    .chain(cluster_ip)
    .collect::<Vec<_>>();
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, NAME);
    let key = KeyPair::generate()?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca_pem, cert.pem(), key.serialize_pem()))
}

fn random_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

fn docker_config(hosts: &[String], user: &str, password: &str) -> Vec<u8> {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let entry = serde_json::json!({"username": user, "password": password, "auth": auth});
    let auths: serde_json::Map<String, serde_json::Value> = hosts
        .iter()
        .map(|host| (host.clone(), entry.clone()))
        .collect();
    serde_json::json!({ "auths": auths })
        .to_string()
        .into_bytes()
}

fn deployment(namespace: &str, image: &str, tls: bool, htpasswd: bool) -> Deployment {
    let labels = BTreeMap::from([("app.kubernetes.io/name".to_owned(), NAME.to_owned())]);
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
    let mut env_vars = vec![
        env("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
        env("REGISTRY_HTTP_ADDR", &format!(":{PORT}")),
    ];
    let mut volumes = vec![Volume {
        name: "data".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: NAME.into(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "data".into(),
        mount_path: "/var/lib/registry".into(),
        ..Default::default()
    }];
    let mut secret_mount = |volume: &str, secret: &str, path: &str| {
        volumes.push(Volume {
            name: volume.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: volume.into(),
            mount_path: path.into(),
            read_only: Some(true),
            ..Default::default()
        });
    };
    if tls {
        secret_mount("tls", AUTHENTICATION_SECRET, "/certs");
        env_vars.push(env("REGISTRY_HTTP_TLS_CERTIFICATE", "/certs/tls.crt"));
        env_vars.push(env("REGISTRY_HTTP_TLS_KEY", "/certs/tls.key"));
    }
    if htpasswd {
        secret_mount("htpasswd", HTPASSWD_SECRET, "/auth");
        env_vars.push(env("REGISTRY_AUTH", "htpasswd"));
        env_vars.push(env("REGISTRY_AUTH_HTPASSWD_REALM", "reposure"));
        env_vars.push(env("REGISTRY_AUTH_HTPASSWD_PATH", "/auth/htpasswd"));
    }
    let probe = Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(PORT.into()),
            ..Default::default()
        }),
        period_seconds: Some(5),
        ..Default::default()
    };
    let pod = PodSpec {
        containers: vec![Container {
            name: "registry".into(),
            image: Some(image.into()),
            env: Some(env_vars),
            ports: Some(vec![ContainerPort {
                container_port: PORT.into(),
                ..Default::default()
            }]),
            volume_mounts: Some(mounts),
            readiness_probe: Some(probe),
            ..Default::default()
        }],
        volumes: Some(volumes),
        ..Default::default()
    };
    // One registry process owns the volume.
    single_pod_deployment(meta(NAME, namespace), labels, None, pod)
}

pub async fn run(
    command: SimpleCommand,
    client: Client,
    namespace: &str,
    kube: &KubeOptions,
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let apis = Apis {
        namespace,
        secrets: Api::namespaced(client.clone(), namespace),
        claims: Api::namespaced(client.clone(), namespace),
        services: Api::namespaced(client.clone(), namespace),
        deployments: Api::namespaced(client.clone(), namespace),
    };
    let selector = format!("app.kubernetes.io/name={NAME}");
    match command {
        SimpleCommand::Install {
            authentication,
            authorization,
            wait,
            timeout,
            image,
            source_registry,
        } => {
            let image = match source_registry {
                Some(source) => kubernetes::image_from(
                    &image,
                    &kubernetes::source_registry(&client, &source).await?,
                ),
                None => image,
            };
            install(&apis, authentication, authorization, &image).await?;
            if wait {
                kubernetes::wait_available(
                    &apis.deployments,
                    NAME,
                    Duration::from_secs(timeout),
                    &apis.scope(),
                )
                .await?;
            }
            Ok(())
        }
        SimpleCommand::Uninstall {
            delete_data,
            wait,
            timeout,
        } => {
            uninstall(&apis, delete_data).await?;
            if wait {
                let deployments = &apis.deployments;
                kubernetes::wait_for(
                    Duration::from_secs(timeout),
                    "the simple registry going away",
                    || async {
                        Ok(match deployments.get_opt(NAME).await? {
                            None => Ok(()),
                            Some(_) => Err("its Deployment still exists".to_owned()),
                        })
                    },
                )
                .await?;
            }
            Ok(())
        }
        SimpleCommand::Host => {
            println!("{}", reachable_host(&apis).await);
            Ok(())
        }
        SimpleCommand::Logs { options } => {
            kubernetes::print_logs(&pods, &selector, options, &apis.scope()).await
        }
        SimpleCommand::Shell { shell } => {
            let pod = kubernetes::running_pod(&pods, &selector, &apis.scope()).await?;
            shell.open(kube, namespace, &pod, "registry")
        }
    }
}

/// The APIs of the simple registry's namespace.
struct Apis<'a> {
    namespace: &'a str,
    secrets: Api<Secret>,
    claims: Api<PersistentVolumeClaim>,
    services: Api<Service>,
    deployments: Api<Deployment>,
}

impl Apis<'_> {
    fn scope(&self) -> Scope<'_> {
        Scope {
            namespace: self.namespace,
        }
    }

    async fn secret_exists(&self, name: &str) -> Result<bool> {
        Ok(self.secret(name).await?.is_some())
    }

    async fn secret(&self, name: &str) -> Result<Option<Secret>> {
        Ok(self
            .secrets
            .get_opt(name)
            .await
            .map_err(|e| explain(e, "get", "secrets", name, self.namespace))?)
    }
}

/// Applies the registry, its volume and Service, and the Secrets asked for that do not
/// exist yet.
async fn install(
    apis: &Apis<'_>,
    authentication: bool,
    authorization: bool,
    image: &str,
) -> Result<()> {
    let (namespace, scope) = (apis.namespace, apis.scope());
    let tls = authentication || apis.secret_exists(AUTHENTICATION_SECRET).await?;
    // The Service first: its cluster IP goes into the certificate, as nodes pull by it.
    let service = kubernetes::apply(&apis.services, &service(namespace, tls), &scope).await?;
    let cluster_ip = kubernetes::cluster_ip(&service);
    if authentication && !apis.secret_exists(AUTHENTICATION_SECRET).await? {
        make_tls_secret(apis, cluster_ip.clone()).await?;
    }
    if authorization && !apis.secret_exists(AUTHORIZATION_SECRET).await? {
        match apis.secret(HTPASSWD_SECRET).await? {
            Some(users) if !made_here(&users) => eprintln!(
                "using your Secret {HTPASSWD_SECRET} as it is; for Registries to log in, make a docker-registry Secret {AUTHORIZATION_SECRET} with one of its users:\n  kubectl create secret docker-registry {AUTHORIZATION_SECRET} -n {namespace} --docker-server={} --docker-username=USER --docker-password=PASSWORD",
                host(namespace)
            ),
            _ => {
                let hosts = [host(namespace)]
                    .into_iter()
                    .chain(cluster_ip.map(|ip| format!("{ip}:{PORT}")))
                    .collect::<Vec<_>>();
                make_credentials(apis, &hosts).await?
            }
        }
    }
    kubernetes::apply(&apis.claims, &data_volume(namespace), &scope).await?;
    let htpasswd = authorization || apis.secret_exists(HTPASSWD_SECRET).await?;
    kubernetes::apply(
        &apis.deployments,
        &deployment(namespace, image, tls, htpasswd),
        &scope,
    )
    .await?;
    eprintln!("simple registry applied: {}", reachable_host(apis).await);
    Ok(())
}

/// A CA and a certificate for the registry's Service names and cluster IP, in a
/// `kubernetes.io/tls` Secret.
async fn make_tls_secret(apis: &Apis<'_>, cluster_ip: Option<String>) -> Result<()> {
    let namespace = apis.namespace;
    let (ca, cert, key) =
        certificates(namespace, cluster_ip).context("cannot make the certificates")?;
    let tls = secret(
        AUTHENTICATION_SECRET,
        namespace,
        "kubernetes.io/tls",
        &[
            ("tls.crt", cert.into_bytes()),
            ("tls.key", key.into_bytes()),
            ("ca.crt", ca.into_bytes()),
        ],
    );
    kubernetes::apply(&apis.secrets, &tls, &apis.scope()).await?;
    Ok(())
}

/// A user with a random password: its htpasswd for the registry, its Docker config (for
/// `hosts`: the Service's name, for the surrogate, and its cluster IP, for pulls) for the
/// surrogate and as an image pull Secret.
async fn make_credentials(apis: &Apis<'_>, hosts: &[String]) -> Result<()> {
    let namespace = apis.namespace;
    let password = random_password();
    let hash = bcrypt::hash(&password, bcrypt::DEFAULT_COST).context("cannot hash the password")?;
    let htpasswd = secret(
        HTPASSWD_SECRET,
        namespace,
        "Opaque",
        &[("htpasswd", format!("{USER}:{hash}\n").into_bytes())],
    );
    kubernetes::apply(&apis.secrets, &htpasswd, &apis.scope()).await?;
    let config = secret(
        AUTHORIZATION_SECRET,
        namespace,
        "kubernetes.io/dockerconfigjson",
        &[(".dockerconfigjson", docker_config(hosts, USER, &password))],
    );
    kubernetes::apply(&apis.secrets, &config, &apis.scope()).await?;
    eprintln!(
        "user {USER}; its password is in Secret {AUTHORIZATION_SECRET}:\n  kubectl get secret {AUTHORIZATION_SECRET} -n {namespace} -o jsonpath='{{.data.\\.dockerconfigjson}}' | base64 -d"
    );
    Ok(())
}

async fn uninstall(apis: &Apis<'_>, delete_data: bool) -> Result<()> {
    let scope = apis.scope();
    kubernetes::delete(&apis.deployments, NAME, &scope).await?;
    kubernetes::delete(&apis.services, NAME, &scope).await?;
    for name in [AUTHENTICATION_SECRET, AUTHORIZATION_SECRET, HTPASSWD_SECRET] {
        match apis.secret(name).await? {
            Some(secret) if made_here(&secret) => {
                kubernetes::delete(&apis.secrets, name, &scope).await?;
            }
            Some(_) => eprintln!("kept Secret {name}: it was not made by reposure simple install"),
            None => {}
        }
    }
    if delete_data {
        kubernetes::delete(&apis.claims, NAME, &scope).await?;
    } else {
        eprintln!("kept the data volume (PersistentVolumeClaim {NAME}); --delete-data removes it");
    }
    Ok(())
}

/// The registry's storage.
fn data_volume(namespace: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(NAME, namespace),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity(STORAGE.into()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(namespace: &str, tls: bool) -> Service {
    Service {
        metadata: meta(NAME, namespace),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                "app.kubernetes.io/name".into(),
                NAME.into(),
            )])),
            ports: Some(vec![ServicePort {
                name: Some(if tls { "https" } else { "http" }.into()),
                port: PORT.into(),
                target_port: Some(IntOrString::Int(PORT.into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
