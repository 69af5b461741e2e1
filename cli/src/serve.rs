//! `reposure registry serve REGISTRY`: a registry on localhost for any OCI client.
//!
//! It serves the distribution API ([`reposure_endpoint`]) over the store REGISTRY names —
//! for a cluster's Registry, through one surrogate session over the exec API, opened again
//! when lost — on a loopback address, to whoever holds the credentials it makes. For the
//! time it runs, the user's tools are set up to use it with no flag:
//!
//! * the credentials are added to the user's Docker config and containers auth file (0600;
//!   [`Login`]);
//! * a drop-in in `~/.config/containers/registries.conf.d` lets podman, buildah and skopeo
//!   speak plain HTTP to it (docker does so for loopback addresses by itself).
//!
//! Both are taken back when it stops (SIGINT, SIGTERM), after requests in flight finished.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use reposure_client::kubernetes::{self as cluster, KubeOptions};
use reposure_client::source::Source;
use reposure_endpoint::Credentials;
use reposure_registry::credentials::login::Login;
use serde::Serialize;

use crate::target::{self, DirectOptions};

/// `registry serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A Registry of the cluster ([NAMESPACE/]NAME), or a direct source: oci:PATH (a local
    /// layout served as a registry), http(s)://HOST[:PORT].
    registry: String,
    /// Where to listen: a loopback address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// Say where it listens as JSON on stdout, for scripts.
    #[arg(short = 'o', long = "output", value_enum)]
    output: Option<ServeOutput>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ServeOutput {
    Json,
}

/// What `-o json` prints once the endpoint listens.
#[derive(Serialize)]
struct Listening {
    /// `HOST:PORT` to push to and pull from.
    listen: String,
    /// The name to use inside the cluster for what is pushed (a Registry's in-cluster
    /// host), or that of the direct registry.
    cluster_host: Option<String>,
    /// The files the login was added to.
    login_files: Vec<PathBuf>,
}

pub async fn run(args: ServeArgs, direct: &DirectOptions, kube: &KubeOptions) -> Result<()> {
    let source: Source = args.registry.parse()?;
    let store = target::open_store(&source, direct, kube).await?;
    store
        .check()
        .await
        .with_context(|| format!("cannot serve {source}"))?;
    let listener = reposure_endpoint::bind(args.listen).await?;
    let address = listener.local_addr()?.to_string();
    let cluster_host = cluster_host(&source, kube).await?;
    let credentials = Credentials::generate();
    let setup = ToolSetup::add(&address, &credentials)?;
    announce(
        &source,
        &address,
        cluster_host.as_deref(),
        &setup,
        args.output,
    )?;
    reposure_endpoint::serve(store, &credentials, listener, stop_signals()?).await;
    eprintln!("stopped; the logins for {address} are taken back");
    Ok(())
}

/// Where pods find what is pushed: a Registry's in-cluster host, or a direct registry's.
async fn cluster_host(source: &Source, kube: &KubeOptions) -> Result<Option<String>> {
    Ok(match source {
        Source::Kubernetes { namespace, name } => {
            let mut kube = kube.clone();
            if namespace.is_some() {
                kube.namespace = namespace.clone();
            }
            let (client, namespace) = cluster::client(&kube).await?;
            Some(crate::registry::in_cluster_host(client, &namespace, name).await?)
        }
        Source::Direct(direct) => direct.host(),
        Source::Exec(_) => None,
    })
}

fn announce(
    source: &Source,
    address: &str,
    cluster_host: Option<&str>,
    setup: &ToolSetup,
    output: Option<ServeOutput>,
) -> Result<()> {
    eprintln!("serving {source} on {address} (Ctrl-C stops it; again, at once)");
    eprintln!(
        "docker, podman, buildah and skopeo log in by themselves: the login is in {}",
        setup
            .login
            .files()
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    );
    if let Some(host) = cluster_host {
        eprintln!(
            "push {address}/REPOSITORY:TAG; pods pull it as {host}/REPOSITORY@sha256:... (the same digest)"
        );
    }
    if let Some(ServeOutput::Json) = output {
        let listening = Listening {
            listen: address.to_owned(),
            cluster_host: cluster_host.map(str::to_owned),
            login_files: setup.login.files().to_vec(),
        };
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", serde_json::to_string(&listening)?)?;
        stdout.flush()?;
    }
    Ok(())
}

/// Each SIGINT or SIGTERM: the first stops the endpoint, the next cuts the drain short.
fn stop_signals() -> Result<impl futures::Stream<Item = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt())?;
    let terminate = signal(SignalKind::terminate())?;
    Ok(futures::stream::unfold(
        (interrupt, terminate),
        |(mut interrupt, mut terminate)| async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            Some(((), (interrupt, terminate)))
        },
    ))
}

/// The user's tools set up for the endpoint; taken back on drop.
struct ToolSetup {
    login: Login,
    insecure: Option<PathBuf>,
}

impl ToolSetup {
    fn add(address: &str, credentials: &Credentials) -> Result<Self> {
        let login = Login::add(address, &credentials.username, &credentials.password)?;
        let insecure = plain_http_drop_in(address)
            .map_err(|e| tracing::warn!(error = %e, "podman, buildah and skopeo will need --tls-verify=false"))
            .ok();
        Ok(Self { login, insecure })
    }
}

impl Drop for ToolSetup {
    fn drop(&mut self) {
        if let Err(e) = self.login.remove() {
            tracing::warn!(error = %e, "the login could not be taken back");
        }
        if let Some(file) = &self.insecure {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A `registries.conf` drop-in that lets the containers tools use plain HTTP to `address`.
fn plain_http_drop_in(address: &str) -> Result<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("no HOME")?;
    let dir = config.join("containers/registries.conf.d");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!(
        "50-reposure-{}.conf",
        address.replace([':', '[', ']'], "_")
    ));
    std::fs::write(
        &file,
        format!(
            "# Written by `reposure registry serve` while it runs; removed when it stops.\n[[registry]]\nlocation = \"{address}\"\ninsecure = true\n"
        ),
    )?;
    Ok(file)
}
