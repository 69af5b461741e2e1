//! `reposure registry create|delete|list|describe|info|logs|shell`: the Registry resources.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{ListParams, ObjectMeta};
use kube::{Api, Client, ResourceExt};
use reposure_client::kubernetes::{KubeOptions, SURROGATE_CONTAINER, explain, surrogate_selector};
use reposure_client::resource::{
    Registry, RegistryDirect, RegistryIndirect, RegistrySpec, RegistryType, ca_key,
};
use reposure_operator::endpoint::registry_url;
use reposure_registry::RegistryError;
use reposure_registry::credentials::Credentials;
use reposure_registry::credentials::docker_config::{DockerConfig, Lookup};

use crate::exit::Usage;
use crate::kubernetes::{self, LogOptions, Scope};
use crate::openshift;
use crate::output::{Format, print_data, table};
use crate::shell::ShellOptions;
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
        /// Key of the CA certificate in that Secret (default: ca.crt, else tls.crt as in a
        /// `kubectl create secret tls` Secret).
        #[arg(long, requires = "authentication_secret")]
        authentication_secret_data_key: Option<String>,
        /// Secret with the credentials (kubernetes.io/dockerconfigjson or dockercfg, or a
        /// `token` key).
        #[arg(long)]
        authorization_secret: Option<String>,
        /// Wait until the Registry is ready; fail with its reason otherwise.
        #[arg(short = 'w', long)]
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
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// List the namespace's Registries.
    ///
    /// Columns: name, host (the image-name prefix, as `info host`), the Service's namespace,
    /// Service and port, surrogate pod, and readiness.
    #[command(
        after_help = "Examples:\n  reposure registry list\n  reposure registry list -o names\n  reposure -n team registry list -o yaml"
    )]
    List {
        #[arg(short = 'o', long = "output", default_value = "table")]
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
    /// Print one fact about a Registry.
    ///
    /// `host` is HOST:PORT, the prefix of the names pods pull its images by (`podman tag
    /// IMAGE $(reposure registry info default host)/myrepo/x`): a Service's cluster IP, as
    /// nodes reach it. `url` is what its surrogate connects to. `cert`, `username`,
    /// `password` and `token` come from its Secrets.
    #[command(
        after_help = "Examples:\n  reposure registry info default host\n  reposure registry info default cert > ca.crt\n  reposure registry info default password"
    )]
    Info { name: String, what: InfoItem },
    /// Print the log of a Registry's surrogate (every pod of it).
    #[command(
        after_help = "Examples:\n  reposure registry logs default\n  reposure registry logs default -f --tail 50"
    )]
    Logs {
        name: String,
        #[command(flatten)]
        options: LogOptions,
    },
    /// Open a shell beside a Registry's surrogate (an ephemeral debug container).
    #[command(after_help = "Examples:\n  reposure registry shell default")]
    Shell {
        name: String,
        #[command(flatten)]
        shell: ShellOptions,
    },
    /// Serve a registry on localhost to buildah, podman, docker, skopeo and oras: a
    /// Registry of the cluster through its surrogate, or a direct source.
    #[command(
        after_help = "Examples:\n  reposure registry serve default\n  podman push localhost/myimage 127.0.0.1:5000/myrepo/myimage   # logs in by itself\n  reposure registry serve oci:/var/lib/images --listen 127.0.0.1:0 -o json"
    )]
    Serve(crate::serve::ServeArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum InfoItem {
    Host,
    Url,
    Cert,
    Username,
    Password,
    Token,
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
    /// A Service of the cluster.
    #[arg(long)]
    service: Option<String>,
    /// The Service's port (default 5000).
    #[arg(long)]
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

/// The port of a `--service` given without `--port` (the original's default too).
const DEFAULT_SERVICE_PORT: u16 = 5000;

/// The spec a `create` makes.
async fn spec_for(
    command_location: &Location,
    namespace: &str,
    client: &Client,
) -> Result<RegistrySpec> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut spec = RegistrySpec {
        type_: RegistryType::Oci,
        direct: None,
        indirect: None,
        authentication_secret: None,
        authentication_secret_data_key: None,
        authorization_secret: None,
    };
    let port = command_location.port;
    // A provider's registry listens where it does; a --port that says otherwise is a mistake.
    let fixed_port = |provider: &str, fixed: u16| match port {
        Some(port) if port != fixed => Err(Usage(format!(
            "the {provider} registry listens on port {fixed}; drop --port {port}, or use --service with --port"
        ))),
        _ => Ok(fixed),
    };
    match (
        &command_location.provider,
        &command_location.host,
        &command_location.service,
    ) {
        (None, Some(_), _) if port.is_some() => {
            bail!(Usage(
                "give the port in --host HOST:PORT, not with --port".into()
            ))
        }
        (Some(Provider::Simple), _, _) => {
            spec.indirect = Some(RegistryIndirect {
                namespace: Some(namespace.to_owned()),
                service: simple::NAME.into(),
                port: fixed_port("simple", simple::PORT)?,
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
                port: fixed_port("minikube", 80)?,
            })
        }
        // OpenShift's internal registry: HTTPS with the cluster's service CA, and the
        // namespace's `builder` service account's credentials (as the original did).
        (Some(Provider::Openshift), _, _) => {
            spec.indirect = Some(RegistryIndirect {
                namespace: Some(openshift::REGISTRY_NAMESPACE.into()),
                service: openshift::REGISTRY_SERVICE.into(),
                port: fixed_port("openshift", openshift::REGISTRY_PORT)?,
            });
            let builder = openshift::builder_credentials(client, namespace).await?;
            spec.authentication_secret = Some(builder.ca_secret);
            spec.authentication_secret_data_key = Some(builder.ca_key);
            spec.authorization_secret = Some(builder.credentials_secret);
        }
        (None, Some(host), _) => spec.direct = Some(RegistryDirect { host: host.clone() }),
        (None, None, Some(service)) => {
            spec.indirect = Some(RegistryIndirect {
                namespace: command_location.service_namespace.clone(),
                service: service.clone(),
                port: port.unwrap_or(DEFAULT_SERVICE_PORT),
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

/// `HOST[:PORT]` of Registry `name`, as pods pull images from it (see
/// [`Registries::host`]).
pub async fn in_cluster_host(client: Client, namespace: &str, name: &str) -> Result<String> {
    let registries = Registries {
        api: Api::namespaced(client.clone(), namespace),
        client,
        namespace,
    };
    let registry = registries.get(name).await?;
    registries.host(&registry).await
}

pub async fn run(
    command: RegistryCommand,
    client: Client,
    namespace: &str,
    kube: &KubeOptions,
) -> Result<()> {
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
            let mut spec = spec_for(&location, namespace, &registries.client).await?;
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
        RegistryCommand::Logs { name, options } => {
            let pods: Api<Pod> = Api::namespaced(registries.client.clone(), namespace);
            let selector = surrogate_selector(&name);
            kubernetes::print_logs(&pods, &selector, options, &registries.scope()).await
        }
        RegistryCommand::Serve(_) => {
            unreachable!("registry serve needs no cluster client and is run by main")
        }
        RegistryCommand::Shell { name, shell } => {
            let registry = registries.get(&name).await?;
            let pods: Api<Pod> = Api::namespaced(registries.client.clone(), namespace);
            let pod = match registry.status.and_then(|s| s.surrogate_pod) {
                Some(pod) => pod,
                None => {
                    kubernetes::running_pod(&pods, &surrogate_selector(&name), &registries.scope())
                        .await?
                }
            };
            shell.open(kube, namespace, &pod, SURROGATE_CONTAINER)
        }
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
        if format != Format::Table {
            return print_data(&items, format, |items| {
                items
                    .iter()
                    .map(|r| format!("{}\n", r.name_any()))
                    .collect()
            });
        }
        let mut rows = Vec::new();
        for registry in &items {
            let (service_namespace, service, port) = match &registry.spec.indirect {
                Some(indirect) => (
                    indirect
                        .namespace
                        .clone()
                        .unwrap_or_else(|| self.namespace.to_owned()),
                    indirect.service.clone(),
                    indirect.port.to_string(),
                ),
                None => Default::default(),
            };
            let ready = match ready_of(registry) {
                Ok(()) => "True".to_owned(),
                Err(reason) => format!("False ({})", reason.split(':').next().unwrap_or_default()),
            };
            rows.push(vec![
                registry.name_any(),
                self.host(registry)
                    .await
                    .unwrap_or_else(|e| format!("({e})")),
                service_namespace,
                service,
                port,
                registry
                    .status
                    .as_ref()
                    .and_then(|s| s.surrogate_pod.clone())
                    .unwrap_or_default(),
                ready,
            ]);
        }
        let header = [
            "NAME",
            "HOST",
            "NAMESPACE",
            "SERVICE",
            "PORT",
            "SURROGATE",
            "READY",
        ];
        print!("{}", table(&header, &rows));
        Ok(())
    }

    /// `HOST[:PORT]`, the prefix of the image names pods pull by: a direct host as written
    /// (without its scheme), an indirect Service's cluster IP and port (what nodes reach,
    /// as the original Reposure printed), else the Service's DNS name.
    async fn host(&self, registry: &Registry) -> Result<String> {
        let url = registry_url(&registry.spec, self.namespace).map_err(|e| Usage(e.0))?;
        let dns_host = url.split("://").nth(1).unwrap_or(&url).to_owned();
        let Some(indirect) = &registry.spec.indirect else {
            return Ok(dns_host);
        };
        let service_namespace = indirect.namespace.as_deref().unwrap_or(self.namespace);
        let services: Api<Service> = Api::namespaced(self.client.clone(), service_namespace);
        match services.get_opt(&indirect.service).await {
            Ok(Some(service)) => Ok(kubernetes::cluster_ip(&service)
                .map_or(dns_host, |ip| format!("{ip}:{}", indirect.port))),
            _ => Ok(dns_host),
        }
    }

    async fn info(&self, name: &str, what: InfoItem) -> Result<()> {
        let registry = self.get(name).await?;
        let namespace = self.namespace;
        let url = registry_url(&registry.spec, namespace).map_err(|e| Usage(e.0))?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        match what {
            InfoItem::Host => println!("{}", self.host(&registry).await?),
            InfoItem::Url => println!("{url}"),
            InfoItem::Cert => {
                let secret_name = registry.spec.authentication_secret.clone().ok_or_else(|| {
                    RegistryError::NotFound(format!("Registry {name} has no authenticationSecret (no CA: plain HTTP or the system roots)"))
                })?;
                let data = secret_data(&secrets, &secret_name, namespace).await?;
                let explicit = registry.spec.authentication_secret_data_key.as_deref();
                let key = ca_key(explicit, |key| data.contains_key(key)).map_err(|wanted| {
                    RegistryError::NotFound(format!("Secret {secret_name} has no {wanted}"))
                })?;
                print!("{}", String::from_utf8_lossy(&data[key]));
            }
            InfoItem::Username | InfoItem::Password | InfoItem::Token => {
                let hosts = [
                    url.split("://").nth(1).unwrap_or(&url).to_owned(),
                    self.host(&registry).await?,
                ];
                let credentials = self.credentials(&registry, &hosts).await?;
                let shown = match (what, credentials) {
                    (InfoItem::Username, Credentials::Basic { username, .. }) => username,
                    (InfoItem::Password, Credentials::Basic { password, .. }) => password,
                    (
                        InfoItem::Token,
                        Credentials::Bearer(token) | Credentials::IdentityToken(token),
                    ) => token,
                    (InfoItem::Token, Credentials::Basic { .. }) => {
                        bail!(RegistryError::NotFound(format!(
                            "Registry {name}'s credentials are a user name and password, not a token"
                        )))
                    }
                    (_, _) => bail!(RegistryError::NotFound(format!(
                        "Registry {name}'s credentials are a token, with no user name or password"
                    ))),
                };
                println!("{shown}");
            }
        }
        Ok(())
    }

    /// The credentials of a Registry's authorizationSecret: a Docker config entry for one of
    /// `hosts`, or a service-account token.
    async fn credentials(&self, registry: &Registry, hosts: &[String]) -> Result<Credentials> {
        let name = registry.name_any();
        let secret_name = registry.spec.authorization_secret.clone().ok_or_else(|| {
            RegistryError::NotFound(format!("Registry {name} has no authorizationSecret"))
        })?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
        let data = secret_data(&secrets, &secret_name, self.namespace).await?;
        if let Some(config) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
        {
            let config = DockerConfig::parse(config)?;
            for host in hosts {
                match config.lookup(host)? {
                    Some(Lookup::Entry(credentials)) => return Ok(credentials),
                    Some(Lookup::Helper { .. }) => bail!(
                        "Secret {secret_name} sends {host} to a credential helper, which a Secret cannot use"
                    ),
                    None => {}
                }
            }
            bail!(RegistryError::NotFound(format!(
                "Secret {secret_name} has no entry for {}",
                hosts.join(" or ")
            )));
        }
        match data.get("token") {
            Some(token) => Ok(Credentials::Bearer(
                String::from_utf8_lossy(token).trim().to_owned(),
            )),
            None => bail!(RegistryError::NotFound(format!(
                "Secret {secret_name} holds neither a Docker config nor a token"
            ))),
        }
    }
}

/// A Secret's data.
async fn secret_data(
    secrets: &Api<Secret>,
    name: &str,
    namespace: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let secret = secrets
        .get(name)
        .await
        .map_err(|e| explain(e, "get", "secrets", name, namespace))?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}
