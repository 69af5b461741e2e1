//! `reposure-operator`: keeps a surrogate next to every Registry of its namespace.
//!
//! * `run`: the controller (in the operator's pod).
//! * `crd`, `manifests --namespace NS`: print what an install applies, as YAML.

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use reposure_operator::manifests;
use reposure_operator::reconcile::Context;
use reposure_registry::logging;

#[derive(Parser)]
#[command(name = "reposure-operator", version, about = "The Reposure operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller over the Registries of one namespace.
    Run {
        /// The namespace to serve (in a pod: its own, from the downward API).
        #[arg(long, env = "REPOSURE_NAMESPACE")]
        namespace: String,
        /// The image of the surrogate pods.
        #[arg(long, env = "REPOSURE_SURROGATE_IMAGE", default_value = manifests::SURROGATE_IMAGE)]
        surrogate_image: String,
        /// imagePullPolicy of the surrogate pods (default: Kubernetes' own rule).
        #[arg(long, env = "REPOSURE_IMAGE_PULL_POLICY")]
        image_pull_policy: Option<String>,
    },
    /// Print the CustomResourceDefinition.
    Crd,
    /// Print the namespaced objects of an install.
    Manifests {
        #[arg(long, short = 'n', default_value = "reposure")]
        namespace: String,
        #[arg(long, default_value = manifests::OPERATOR_IMAGE)]
        operator_image: String,
        #[arg(long, default_value = manifests::SURROGATE_IMAGE)]
        surrogate_image: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", manifests::to_yaml(&[manifests::crd_object()])),
        Command::Manifests {
            namespace,
            operator_image,
            surrogate_image,
        } => print!(
            "{}",
            manifests::to_yaml(&manifests::install_objects(
                &namespace,
                &operator_image,
                &surrogate_image
            ))
        ),
        Command::Run {
            namespace,
            surrogate_image,
            image_pull_policy,
        } => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            logging::init("info", logging::Destination::Stderr).context("cannot set up logging")?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start tokio")?;
            runtime.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .context("cannot reach the Kubernetes API")?;
                let ctx = Context::new(client, surrogate_image, image_pull_policy);
                reposure_operator::controller::run(ctx, &namespace).await;
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}
