//! The `SOURCE` argument of every front end, and the one place that opens it.
//!
//! `reposure-mount SOURCE DIR`, `reposure image ... REGISTRY` and `reposure registry serve
//! REGISTRY` all name a registry the same way:
//!
//! | form | what |
//! |---|---|
//! | `oci:PATH`, `http(s)://HOST[:PORT]` | a registry reached directly ([`DirectSource`]) |
//! | `exec:COMMAND ARGS...` | a surrogate session over a child's stdin/stdout |
//! | `[NAMESPACE/]NAME` | a Registry of the Kubernetes cluster, through its surrogate pod |
//!
//! Options that only an http(s) registry can use (a CA, credentials, a timeout) are refused
//! for the others with a line that says where they belong.

use std::sync::Arc;

use reposure_registry::credentials::{OptionNames, UserOptions};
use reposure_registry::direct::{self, DirectSource};
use reposure_registry::error::{RegistryError, Result};
use reposure_registry::operations::{Registry, StoreRegistry};
use reposure_registry::store::Store;
use reposure_surrogate::session::client::SessionClient;
use reposure_surrogate::session::store::SessionStore;
use reposure_surrogate::session::transport::ChildProcess;

use crate::kubernetes::{self, KubeExec, KubeOptions};

/// Where a registry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `oci:PATH`, `http(s)://HOST[:PORT]`.
    Direct(DirectSource),
    /// A surrogate session with a command run as a child (`exec:COMMAND ARGS...`).
    Exec(String),
    /// A Registry of the Kubernetes cluster (`[NAMESPACE/]NAME`), reached through the exec
    /// API; without a namespace, the one of the kubeconfig's context (or `-n`).
    Kubernetes {
        namespace: Option<String>,
        name: String,
    },
}

/// How to reach a source, as the user said it.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// For http(s) registries.
    pub http: UserOptions,
    /// For Kubernetes Registries.
    pub kube: KubeOptions,
    /// How the front end spells its options, for messages.
    pub names: OptionNames,
}

impl std::str::FromStr for Source {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self> {
        if let Some(direct) = DirectSource::parse(s) {
            return direct.map(Self::Direct);
        }
        if let Some(command) = s.strip_prefix("exec:") {
            if command.trim().is_empty() {
                return Err(RegistryError::Usage(
                    "exec: needs a command, as in exec:reposure-surrogate serve --stdio --registry URL".into(),
                ));
            }
            return Ok(Self::Exec(command.trim().to_owned()));
        }
        match kubernetes::parse_target(s) {
            Some((namespace, name)) => Ok(Self::Kubernetes { namespace, name }),
            None => Err(RegistryError::Usage(format!(
                "unknown registry {s:?}: use {}, exec:COMMAND, or [NAMESPACE/]NAME for a Registry of the Kubernetes cluster",
                direct::FORMS
            ))),
        }
    }
}

/// A source opened: the store itself, or a surrogate session.
enum Opened {
    Direct(Arc<dyn Store>),
    Session(Arc<SessionClient>),
}

impl Source {
    /// Opens the registry behind this source.
    pub async fn open(&self, options: &OpenOptions) -> Result<Arc<dyn Registry>> {
        Ok(match self.connect(options).await? {
            Opened::Direct(store) => Arc::new(StoreRegistry::new(store)),
            Opened::Session(client) => client,
        })
    }

    /// Opens the store behind this source: for a surrogate, the store it serves, through
    /// its session (what `reposure registry serve` serves the distribution API over).
    pub async fn open_store(&self, options: &OpenOptions) -> Result<Arc<dyn Store>> {
        Ok(match self.connect(options).await? {
            Opened::Direct(store) => store,
            Opened::Session(client) => Arc::new(SessionStore::new(client)),
        })
    }

    async fn connect(&self, options: &OpenOptions) -> Result<Opened> {
        let refuse = |belongs: &str| match options.http.first_given(&options.names) {
            Some(option) => Err(RegistryError::Usage(format!(
                "{option} does not apply to {self}: {belongs}"
            ))),
            None => Ok(()),
        };
        match self {
            Self::Direct(direct) => Ok(Opened::Direct(
                direct.open_store(&options.http, &options.names)?,
            )),
            Self::Exec(command) => {
                refuse(
                    "the surrogate's own options (--ca, --username, --timeout, ...) reach its registry",
                )?;
                let connector = ChildProcess::from_command_line(command)?;
                Ok(Opened::Session(Arc::new(SessionClient::new(Box::new(
                    connector,
                )))))
            }
            Self::Kubernetes { namespace, name } => {
                refuse(
                    "its surrogate holds the registry's CA and credentials, and has a timeout of its own",
                )?;
                let mut kube = options.kube.clone();
                if namespace.is_some() {
                    kube.namespace = namespace.clone();
                }
                let (client, namespace) = kubernetes::client(&kube).await?;
                let connector = KubeExec::new(client, namespace, name.clone());
                Ok(Opened::Session(Arc::new(SessionClient::new(Box::new(
                    connector,
                )))))
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct(DirectSource::Layout(path)) => write!(f, "oci:{}", path.display()),
            Self::Direct(DirectSource::Http(url)) => {
                write!(f, "{}", url.as_str().trim_end_matches('/'))
            }
            Self::Exec(command) => write!(f, "exec:{command}"),
            Self::Kubernetes {
                namespace: Some(namespace),
                name,
            } => write!(f, "Kubernetes Registry {namespace}/{name}"),
            Self::Kubernetes {
                namespace: None,
                name,
            } => write!(f, "Kubernetes Registry {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert!(matches!(
            "oci:/x".parse::<Source>().unwrap(),
            Source::Direct(DirectSource::Layout(_))
        ));
        assert!(matches!(
            "https://reg.example".parse::<Source>().unwrap(),
            Source::Direct(DirectSource::Http(_))
        ));
        assert_eq!(
            "exec:reposure-surrogate serve --stdio"
                .parse::<Source>()
                .unwrap(),
            Source::Exec("reposure-surrogate serve --stdio".into())
        );
        assert_eq!(
            "team/reg".parse::<Source>().unwrap(),
            Source::Kubernetes {
                namespace: Some("team".into()),
                name: "reg".into()
            }
        );
    }

    #[test]
    fn bad_sources_are_usage_errors_that_list_the_forms() {
        for bad in ["Reg", "a/b/c", "exec:", "oci:", "http://u:p@h", "ftp://h"] {
            let e = bad.parse::<Source>().unwrap_err();
            assert!(matches!(e, RegistryError::Usage(_)), "{bad}: {e}");
        }
        let e = "a/b/c".parse::<Source>().unwrap_err().to_string();
        assert!(
            e.contains("oci:PATH") && e.contains("[NAMESPACE/]NAME"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn http_options_are_refused_where_they_do_not_apply() {
        let options = OpenOptions {
            http: UserOptions {
                username: Some("u".into()),
                ..Default::default()
            },
            kube: KubeOptions::default(),
            names: OptionNames::MOUNT,
        };
        let e = "exec:true"
            .parse::<Source>()
            .unwrap()
            .open(&options)
            .await
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with("username= does not apply to exec:true"),
            "{e}"
        );
    }
}
