//! The REGISTRY argument of the image commands: a Kubernetes Registry by name (through its
//! surrogate), or one of the mount's direct sources (`oci:PATH`, `http(s)://HOST`,
//! `exec:COMMAND`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use reposure_operator::cluster::{self, KubeExec, KubeOptions};
use reposure_surrogate::registry::Registry;
use reposure_surrogate::session::client::SessionClient;
use reposure_surrogate::source::Source;
use reposure_surrogate::store::http::HttpOptions;

use crate::exit::Usage;

/// Options of a direct `http(s)://` registry.
#[derive(Args, Debug, Clone, Default)]
pub struct DirectOptions {
    /// PEM CA that verifies an https:// registry (TLS is always verified).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// User name for an http(s):// registry; the password comes from --password-file or
    /// $REPOSURE_PASSWORD, never from the command line.
    #[arg(long, global = true)]
    pub username: Option<String>,
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
}

impl DirectOptions {
    fn http_options(&self) -> Result<HttpOptions> {
        let ca_pem = match &self.ca {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("cannot read --ca {}", path.display()))?,
            ),
            None => None,
        };
        let password = match &self.password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --password-file {}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            ),
            None => std::env::var("REPOSURE_PASSWORD").ok(),
        };
        let credentials = match (&self.username, password) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            (Some(_), None) => bail!(Usage(
                "--username needs a password: --password-file FILE or $REPOSURE_PASSWORD".into()
            )),
            (None, _) => None,
        };
        Ok(HttpOptions {
            ca_pem,
            credentials,
            ..Default::default()
        })
    }
}

/// Opens the registry REGISTRY names.
pub async fn open(
    registry: &str,
    direct: &DirectOptions,
    kube: &KubeOptions,
) -> Result<Arc<dyn Registry>> {
    let parse_error = match registry.parse::<Source>() {
        Ok(source) => return Ok(source.open(direct.http_options()?)?),
        Err(e) => e,
    };
    let Some((namespace, name)) = cluster::parse_target(registry) else {
        bail!(Usage(format!(
            "{parse_error}, or [NAMESPACE/]NAME for a Registry of the Kubernetes cluster"
        )));
    };
    if direct.ca.is_some() || direct.username.is_some() {
        bail!(Usage(
            "--ca and --username apply to http(s):// registries; a Kubernetes Registry's surrogate holds its CA and credentials".into()
        ));
    }
    let mut kube = kube.clone();
    if namespace.is_some() {
        kube.namespace = namespace;
    }
    let (client, namespace) = cluster::client(&kube).await?;
    Ok(Arc::new(SessionClient::new(Box::new(KubeExec::new(
        client, namespace, name,
    )))))
}
