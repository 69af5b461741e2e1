//! `reposure operator|registry|simple shell`: a shell inside a pod whose image has none.
//!
//! Reposure's images are distroless, and the simple registry's has no shell worth having,
//! so a shell joins the pod as an ephemeral debug container sharing the target container's
//! process namespace: what `kubectl debug -it POD --image=IMAGE --target=CONTAINER` does,
//! and what this runs, with the same kubeconfig, context and namespace (the original
//! Reposure exec'd a shell in the container itself, which these images cannot offer).

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;
use reposure_client::kubernetes::KubeOptions;

/// The debug container's image when none is given: small, and with a shell.
const DEFAULT_IMAGE: &str = "docker.io/library/busybox:1.36";

#[derive(Args, Debug, Clone)]
pub struct ShellOptions {
    /// The debug container's image.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    image: String,
}

impl ShellOptions {
    /// Runs the shell in `pod`, beside `container`, until it exits.
    pub fn open(
        &self,
        kube: &KubeOptions,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<()> {
        let mut kubectl = Command::new("kubectl");
        if let Some(kubeconfig) = &kube.kubeconfig {
            kubectl.arg("--kubeconfig").arg(kubeconfig);
        }
        if let Some(context) = &kube.context {
            kubectl.args(["--context", context]);
        }
        kubectl.args(["--namespace", namespace, "debug", "-it", pod]);
        kubectl.arg(format!("--image={}", self.image));
        kubectl.arg(format!("--target={container}"));
        kubectl.args(["--", "sh"]);
        let status = kubectl
            .status()
            .context("running kubectl debug (install kubectl, or put it on PATH)")?;
        if !status.success() {
            bail!("kubectl debug exited with {status}");
        }
        Ok(())
    }
}
