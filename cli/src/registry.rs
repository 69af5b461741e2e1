//! `reposure registry create|delete|list|describe|info|logs`: the Registry resources.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, ObjectMeta};
use kube::{Api, Client, ResourceExt};
use reposure_client::kubernetes::explain;
use reposure_client::resource::{
    DEFAULT_CA_KEY, Registry, RegistryDirect, RegistryIndirect, RegistrySpec, RegistryType,
};
use reposure_operator::endpoint::registry_url;
use reposure_registry::RegistryError;
use reposure_registry::credentials::Credentials;
use reposure_registry::credentials::docker_config::{DockerConfig, Lookup};

use crate::exit::Usage;
use crate::kubernetes::{self, Scope};
use crate::output::{Format, print_data};
use crate::simple;

const RESOURCE: &str = "registries.reposure.puccini.cloud";

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Create (or update) a Registry.
    #[command(
        after_help = "Examples:\n  reposure registry create default --provider simple --wait\n  reposure registry create shared --service registry --service-namespace kube-system --port 5000\n  reposure registry create hub --host registry.example.com --authorization-secret hub-credentials"
    )]
    Create {
        name: String,
        #[command(flatten)]
        location: Location,
        /// Secret with the CA certificate that verifies the registry's TLS.
        #[arg(long)]
        authentication_secret: Option<String>,
        /// Key of the CA certificate in that Secret (default ca.crt).
        #[arg(long, requires = "authentication_secret")]
        authentication_secret_data_key: Option<String>,
        /// Secret with the credentials (kubernetes.io/dockerconfigjson, or a token).
        #[arg(long)]
        authorization_secret: Option<String>,
        /// Wait until the Registry is ready; fail with its reason otherwise.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Delete a Registry (its surrogate goes with it), or all of the namespace's.
    #[command(
        after_help = "Examples:\n  reposure registry delete default\n  reposure registry delete --all"
    )]
    Delete {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// List the namespace's Registries.
    #[command(
        after_help = "Examples:\n  reposure registry list\n  reposure -n team registry list -o yaml"
    )]
    List {
        #[arg(short = 'o', long = "output", default_value = "names")]
        format: Format,
    },
    /// Show a Registry: its spec and status.
    #[command(
        after_help = "Examples:\n  reposure registry describe default\n  reposure registry describe default -o json"
    )]
    Describe {
        name: String,
        #[arg(short = 'o', long = "output", default_value = "yaml")]
        format: Format,
    },
    /// Print one fact about a Registry: the URL its surrogate uses, its CA certificate, or
    /// the user name of its credentials.
    #[command(
        after_help = "Examples:\n  reposure registry info default host\n  reposure registry info default cert > ca.crt\n  reposure registry info default username"
    )]
    Info { name: String, what: InfoItem },
    /// Print the log of a Registry's surrogate.
    #[command(
        after_help = "Examples:\n  reposure registry logs default\n  reposure registry logs default -f"
    )]
    Logs {
        name: String,
        #[arg(short = 'f', long)]
        follow: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum InfoItem {
    Host,
    Cert,
    Username,
}

/// Where the registry is: exactly one of --provider, --host, --service.
#[derive(Args, Debug)]
pub struct Location {
    /// A well-known registry: simple (reposure simple install), minikube (its registry
    /// addon), openshift (the internal image registry).
    #[arg(long, conflicts_with_all = ["host", "service"])]
    provider: Option<Provider>,
    /// HOST[:PORT], or http://HOST[:PORT] / https://HOST[:PORT] to choose the scheme.
    #[arg(long, conflicts_with = "service")]
    host: Option<String>,
    /// A Service of the cluster (with --port).
    #[arg(long, requires = "port")]
    service: Option<String>,
    #[arg(long, requires = "service")]
    port: Option<u16>,
    /// The Service's namespace (default: the Registry's).
    #[arg(long, requires = "service")]
    service_namespace: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Provider {
    Simple,
    Minikube,
    Openshift,
}

/// The spec a `create` makes.
async fn spec_for(
    command_location: &Location,
    namespace: &str,
    secrets: &Api<Secret>,
) -> Result<RegistrySpec> {
    let mut spec = RegistrySpec {
        type_: RegistryType::Oci,
        direct: None,
        indirect: None,
        authentication_secret: None,
        authentication_secret_data_key: None,
        authorization_secret: None,
    };
    match (
        &command_location.provider,
        &command_location.host,
        &command_location.service,
    ) {
        (Some(Provider::Simple), _, _) => {
            spec.indirect = Some(RegistryIndirect {
                namespace: Some(namespace.to_owned()),
                service: simple::NAME.into(),
                port: simple::PORT,
            });
            // The secrets `simple install --authentication/--authorization` made, if any.
            if secrets
                .get_opt(simple::AUTHENTICATION_SECRET)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                spec.authentication_secret = Some(simple::AUTHENTICATION_SECRET.into());
            }
            if secrets
                .get_opt(simple::AUTHORIZATION_SECRET)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                spec.authorization_secret = Some(simple::AUTHORIZATION_SECRET.into());
            }
        }
        // Minikube's registry addon: the Service "registry" in kube-system, port 80.
        (Some(Provider::Minikube), _, _) => {
            spec.indirect = Some(RegistryIndirect {
                namespace: Some("kube-system".into()),
                service: "registry".into(),
                port: 80,
            })
        }
        // OpenShift's internal registry, served with the cluster's service CA.
        (Some(Provider::Openshift), _, _) => {
            spec.indirect = Some(RegistryIndirect {
                namespace: Some("openshift-image-registry".into()),
                service: "image-registry".into(),
                port: 5000,
            })
        }
        (None, Some(host), _) => spec.direct = Some(RegistryDirect { host: host.clone() }),
        (None, None, Some(service)) => {
            spec.indirect = Some(RegistryIndirect {
                namespace: command_location.service_namespace.clone(),
                service: service.clone(),
                port: command_location.port.context("--service needs --port")?,
            })
        }
        (None, None, None) => bail!(Usage("give --provider, --host or --service".into())),
    }
    Ok(spec)
}

fn ready_of(registry: &Registry) -> Result<(), String> {
    match registry.ready_condition() {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(format!("{}: {}", c.reason, c.message)),
        None => Err("no Ready condition yet: is the Reposure operator installed in this namespace (reposure operator install)?".into()),
    }
}

pub async fn run(command: RegistryCommand, client: Client, namespace: &str) -> Result<()> {
    let registries = Registries {
        api: Api::namespaced(client.clone(), namespace),
        client,
        namespace,
    };
    match command {
        RegistryCommand::Create {
            name,
            location,
            authentication_secret,
            authentication_secret_data_key,
            authorization_secret,
            wait,
            timeout,
        } => {
            let secrets: Api<Secret> = Api::namespaced(registries.client.clone(), namespace);
            let mut spec = spec_for(&location, namespace, &secrets).await?;
            if authentication_secret.is_some() {
                spec.authentication_secret = authentication_secret;
                spec.authentication_secret_data_key = authentication_secret_data_key;
            }
            if authorization_secret.is_some() {
                spec.authorization_secret = authorization_secret;
            }
            registries.create(&name, spec).await?;
            if wait {
                registries
                    .wait_ready(&name, Duration::from_secs(timeout))
                    .await?;
            }
            Ok(())
        }
        // Without a name, --all was given (the parser requires one or the other).
        RegistryCommand::Delete { name, .. } => registries.delete(name).await,
        RegistryCommand::List { format } => registries.list(format).await,
        RegistryCommand::Describe { name, format } => {
            let mut registry = registries.get(&name).await?;
            registry.metadata.managed_fields = None;
            print_data(&registry, format, |r| {
                serde_yaml::to_string(r).unwrap_or_default()
            })
        }
        RegistryCommand::Info { name, what } => registries.info(&name, what).await,
        RegistryCommand::Logs { name, follow } => registries.logs(&name, follow).await,
    }
}

/// The Registries of one namespace.
struct Registries<'a> {
    client: Client,
    namespace: &'a str,
    api: Api<Registry>,
}

impl Registries<'_> {
    fn scope(&self) -> Scope<'_> {
        Scope {
            namespace: self.namespace,
        }
    }

    async fn get(&self, name: &str) -> Result<Registry> {
        Ok(self
            .api
            .get(name)
            .await
            .map_err(|e| explain(e, "get", RESOURCE, name, self.namespace))?)
    }

    async fn all(&self) -> Result<Vec<Registry>> {
        Ok(self
            .api
            .list(&ListParams::default())
            .await
            .map_err(|e| explain(e, "list", RESOURCE, "", self.namespace))?
            .items)
    }

    async fn create(&self, name: &str, spec: RegistrySpec) -> Result<()> {
        // The operator would refuse it; say so now.
        registry_url(&spec, self.namespace).map_err(|e| Usage(e.0))?;
        let mut registry = Registry::new(name, spec);
        registry.metadata = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.to_owned()),
            ..Default::default()
        };
        kubernetes::apply(&self.api, &registry, &self.scope()).await?;
        eprintln!("registry {name} applied in namespace {}", self.namespace);
        Ok(())
    }

    async fn wait_ready(&self, name: &str, timeout: Duration) -> Result<()> {
        kubernetes::wait_for(
            timeout,
            &format!("Registry {name} becoming ready"),
            || async { Ok(ready_of(&self.get(name).await?)) },
        )
        .await?;
        eprintln!("registry {name} is ready");
        Ok(())
    }

    /// Deletes `name`, or every Registry of the namespace.
    async fn delete(&self, name: Option<String>) -> Result<()> {
        let names = match name {
            Some(name) => vec![name],
            None => self.all().await?.iter().map(|r| r.name_any()).collect(),
        };
        for name in names {
            if !kubernetes::delete(&self.api, &name, &self.scope()).await? {
                bail!(RegistryError::NotFound(format!(
                    "no Registry {name:?} in namespace {}",
                    self.namespace
                )));
            }
            eprintln!("registry {name} deleted");
        }
        Ok(())
    }

    async fn list(&self, format: Format) -> Result<()> {
        let items = self.all().await?;
        print_data(&items, format, |items| {
            items
                .iter()
                .map(|r| {
                    let ready = match ready_of(r) {
                        Ok(()) => "Ready".to_owned(),
                        Err(reason) => format!(
                            "NotReady ({})",
                            reason.split(':').next().unwrap_or_default()
                        ),
                    };
                    format!("{}\t{}\n", r.name_any(), ready)
                })
                .collect()
        })
    }

    async fn info(&self, name: &str, what: InfoItem) -> Result<()> {
        let registry = self.get(name).await?;
        let namespace = self.namespace;
        let url = registry_url(&registry.spec, namespace).map_err(|e| Usage(e.0))?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        match what {
            InfoItem::Host => println!("{url}"),
            InfoItem::Cert => {
                let secret_name = registry.spec.authentication_secret.clone().ok_or_else(|| {
                    RegistryError::NotFound(format!("Registry {name} has no authenticationSecret (no CA: plain HTTP or the system roots)"))
                })?;
                let key = registry
                    .spec
                    .authentication_secret_data_key
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CA_KEY.into());
                let data = secret_value(&secrets, &secret_name, &key, namespace).await?;
                print!("{}", String::from_utf8_lossy(&data));
            }
            InfoItem::Username => {
                let secret_name = registry.spec.authorization_secret.clone().ok_or_else(|| {
                    RegistryError::NotFound(format!("Registry {name} has no authorizationSecret"))
                })?;
                let config =
                    secret_value(&secrets, &secret_name, ".dockerconfigjson", namespace).await?;
                let host = url.split("://").nth(1).unwrap_or(&url);
                match DockerConfig::parse(&config)?.lookup(host)? {
                    Some(Lookup::Entry(Credentials::Basic { username, .. })) => {
                        println!("{username}")
                    }
                    Some(_) => {
                        bail!("the credentials for {host} are a token, with no user name")
                    }
                    None => bail!(RegistryError::NotFound(format!(
                        "Secret {secret_name} has no entry for {host}"
                    ))),
                }
            }
        }
        Ok(())
    }

    async fn logs(&self, name: &str, follow: bool) -> Result<()> {
        let registry = self.get(name).await?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), self.namespace);
        let pod = match registry.status.and_then(|s| s.surrogate_pod) {
            Some(pod) => pod,
            None => {
                kubernetes::pod_with_labels(
                    &pods,
                    &reposure_operator::workload::selector(name),
                    &self.scope(),
                )
                .await?
            }
        };
        kubernetes::print_pod_log(&pods, &pod, follow, &self.scope()).await
    }
}

async fn secret_value(
    secrets: &Api<Secret>,
    name: &str,
    key: &str,
    namespace: &str,
) -> Result<Vec<u8>> {
    let secret = secrets
        .get(name)
        .await
        .map_err(|e| explain(e, "get", "secrets", name, namespace))?;
    secret
        .data
        .and_then(|mut d| d.remove(key))
        .map(|v| v.0)
        .ok_or_else(|| RegistryError::NotFound(format!("Secret {name} has no key {key}")).into())
}
