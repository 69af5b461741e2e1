//! `reposure`: the command line of Reposure.
//!
//! The same binary is `kubectl reposure` when installed as `kubectl-reposure`, and the
//! mount(8) helper when installed as `mount.fuse.reposure` (`mount -t fuse.reposure
//! NS/REGISTRY /mnt/reg`, fstab entries). `reposure mount` is `reposure-mount`.
//!
//! Commands that change things are synchronous and exit non-zero with the reason when they
//! fail; the exit code tells the failure class ([`exit`]). Logs go to stderr, so pulls can
//! go to stdout; progress bars appear only on a terminal.

mod exit;
mod image;
mod kubernetes;
mod openshift;
mod operator;
mod output;
mod progress;
mod registry;
mod serve;
mod shell;
mod simple;
mod target;

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use reposure_client::kubernetes::{self as cluster, KubeOptions};
use reposure_client::source::Source;
use reposure_registry::credentials::OptionNames;
use reposure_registry::{RegistryError, logging};

use crate::image::ImageCommand;
use crate::operator::OperatorCommand;
use crate::registry::RegistryCommand;
use crate::simple::SimpleCommand;
use crate::target::DirectOptions;

#[derive(Parser, Debug)]
#[command(
    name = "reposure",
    version,
    about = "Use a Kubernetes cluster's container registry as a filesystem, and manage it",
    after_help = "Also `kubectl reposure` (installed as kubectl-reposure) and the mount helper `mount.fuse.reposure`.\n\nExit codes: 0 success, 1 failed, 2 usage, 3 not found, 4 access refused, 5 unavailable.\n\nExamples:\n  reposure operator install --wait\n  reposure simple install --wait\n  reposure registry create default --provider simple --wait\n  reposure image push default myrepo/hello hello.txt\n  reposure mount default /mnt/reg"
)]
struct Cli {
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(short = 'k', long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context.
    #[arg(short = 'x', long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// No progress bars.
    #[arg(short = 'q', long, global = true)]
    quiet: bool,
    #[command(flatten)]
    direct: DirectOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The operator that runs a surrogate next to each Registry.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Registry resources.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// The reference registry, for test clusters.
    #[command(subcommand)]
    Simple(SimpleCommand),
    /// Images of a Registry (by name), or of a direct source: oci:PATH, http(s)://HOST.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Mount a registry: reposure mount SOURCE MOUNTPOINT [-f] [-o OPTS] (see reposure-mount --help).
    #[command(disable_help_flag = true)]
    Mount {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  reposure completion bash > /etc/bash_completion.d/reposure\n  reposure completion zsh > \"${fpath[1]}/_reposure\""
    )]
    Completion { shell: clap_complete::Shell },
    /// Print the version.
    #[command(after_help = "Examples:\n  reposure version")]
    Version,
}

/// Options mount(8) passes to helpers that are not ours: no mtab (-n), sloppy (-s),
/// verbose (-v).
const MOUNT8_FLAGS: &[&str] = &["-n", "-s", "-v"];

fn main() {
    // Arguments are OS strings: a mountpoint may be any path, UTF-8 or not.
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let program = args
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("reposure")
        .to_owned();
    if program == "mount.fuse.reposure" {
        args.remove(0);
        args.retain(|a| !a.to_str().is_some_and(|a| MOUNT8_FLAGS.contains(&a)));
        reposure_mount::main(args);
    }
    let cli = Cli::parse();
    let kube = KubeOptions {
        kubeconfig: cli.kubeconfig.clone(),
        context: cli.context.clone(),
        namespace: cli.namespace.clone(),
    };
    // Before any thread: the mount daemonizes by forking.
    if let Command::Mount { args } = cli.command {
        reposure_mount::main(mount_args(args, &kube));
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    logging::init("warn", logging::Destination::Stderr).expect("stderr needs no opening");
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    if let Err(error) = runtime.block_on(run(cli.command, kube, cli.direct, cli.quiet)) {
        let mut message = error
            .chain()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(": ");
        if let Some(hint) = error
            .chain()
            .find_map(|c| c.downcast_ref::<RegistryError>())
            .and_then(|registry| OptionNames::FLAGS.hint(registry))
        {
            message.push_str(&format!("; {hint}"));
        }
        eprintln!("reposure: {message}");
        std::process::exit(exit::code(&error));
    }
}

/// `reposure [--kubeconfig F] [--context C] [-n NS] mount SOURCE DIR ...` in
/// `reposure-mount`'s terms.
fn mount_args(mut args: Vec<OsString>, kube: &KubeOptions) -> Vec<OsString> {
    if let (Some(namespace), Some(first)) = (&kube.namespace, args.first_mut())
        && let Some(Ok(Source::Kubernetes {
            namespace: None,
            name,
        })) = first.to_str().map(str::parse)
    {
        *first = format!("{namespace}/{name}").into();
    }
    let mut options = Vec::new();
    if let Some(kubeconfig) = &kube.kubeconfig {
        options.push(format!("kubeconfig={}", kubeconfig.display()));
    }
    if let Some(context) = &kube.context {
        options.push(format!("context={context}"));
    }
    if !options.is_empty() {
        args.push("-o".into());
        args.push(options.join(",").into());
    }
    args
}

async fn run(
    command: Command,
    kube: KubeOptions,
    direct: DirectOptions,
    quiet: bool,
) -> Result<()> {
    match command {
        Command::Image(command) => {
            let registry = target::open(command.registry(), &direct, &kube).await?;
            image::run(command, registry, quiet).await
        }
        Command::Operator(command) => {
            let (client, namespace) = cluster::client(&kube).await?;
            operator::run(command, client, &namespace, &kube).await
        }
        Command::Registry(RegistryCommand::Serve(args)) => serve::run(args, &direct, &kube).await,
        Command::Registry(command) => {
            let (client, namespace) = cluster::client(&kube).await?;
            registry::run(command, client, &namespace, &kube).await
        }
        Command::Simple(command) => {
            let (client, namespace) = cluster::client(&kube).await?;
            simple::run(command, client, &namespace, &kube).await
        }
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "reposure",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Version => {
            println!("reposure {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Mount { .. } => unreachable!("mount runs before the runtime starts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` of every command shows examples.
    #[test]
    fn every_command_has_examples() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            let leaf = !command.has_subcommands();
            let help = command
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            if leaf && command.get_name() != "mount" && !help.contains("Examples:") {
                missing.push(path.clone());
            }
            for sub in command.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "without examples: {missing:?}");
        Cli::command().debug_assert();
    }
}
