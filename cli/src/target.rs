//! The REGISTRY argument of the image commands: any `SOURCE` of the mount
//! (`reposure_client::source`), opened with the CLI's options.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use reposure_client::kubernetes::KubeOptions;
use reposure_client::source::{OpenOptions, Source};
use reposure_registry::Registry;
use reposure_registry::credentials::{OptionNames, UserOptions};
use reposure_registry::store::Store;

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

/// Opens the registry REGISTRY names.
pub async fn open(
    registry: &str,
    direct: &DirectOptions,
    kube: &KubeOptions,
) -> Result<Arc<dyn Registry>> {
    let source: Source = registry.parse()?;
    Ok(source.open(&options(direct, kube)).await?)
}

/// Opens the store behind REGISTRY (for `registry serve`).
pub async fn open_store(
    source: &Source,
    direct: &DirectOptions,
    kube: &KubeOptions,
) -> Result<Arc<dyn Store>> {
    Ok(source.open_store(&options(direct, kube)).await?)
}

fn options(direct: &DirectOptions, kube: &KubeOptions) -> OpenOptions {
    OpenOptions {
        http: UserOptions {
            ca: direct.ca.clone(),
            username: direct.username.clone(),
            password_file: direct.password_file.clone(),
            ..Default::default()
        },
        kube: kube.clone(),
        names: OptionNames::FLAGS,
    }
}
