//! `reposure image push|pull|list|delete|tag`: synchronous, with honest exit codes.
//!
//! Each command returns only once the registry has done it (a push: the manifest is
//! committed), and fails with the registry's reason otherwise. Pulls write to a temporary
//! file next to `-o FILE` and rename it at the end, so a failed pull leaves no partial file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use futures::StreamExt;
use reposure_registry::Registry;
use reposure_registry::formats::manifest::Platform;
use reposure_registry::formats::single_file::PushFormat;
use reposure_registry::names::{self, Reference};
use reposure_registry::operations::FileAttributes;
use reposure_registry::pull::list_images;
use reposure_registry::push::{Content, LocalFile, push_path, with_progress};
use reposure_registry::scratch::Scratch;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::exit::Usage;
use crate::output::{Format, print_data};
use crate::progress;

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Push a file as a single-file image, or an image archive (.tar, .tar.gz, .tgz:
    /// recognised by content) as its image. It returns once the registry has the image (the
    /// original Reposure returned once the file reached the surrogate's spool).
    #[command(
        after_help = "Examples:\n  reposure image push myregistry myrepo/hello hello.txt\n  reposure image push oci:/var/lib/images web:v2 saved-image.tar\n  reposure image push http://127.0.0.1:5000 tools/jq:1.7 ./jq"
    )]
    Push {
        registry: String,
        /// REPOSITORY[:TAG] (TAG defaults to latest).
        name: String,
        path: PathBuf,
        /// How a plain file is stored: a single-layer image, or an ORAS-style artifact.
        #[arg(long, default_value = "image")]
        format: PushFormat,
    },
    /// Pull an image: the file it holds (--unpack) or its image archive.
    #[command(
        after_help = "Examples:\n  reposure image pull myregistry myrepo/hello --unpack > hello.txt\n  reposure image pull myregistry web:v2 -o web.tar"
    )]
    Pull {
        registry: String,
        /// REPOSITORY[:TAG] or REPOSITORY@sha256:HEX.
        name: String,
        /// Write the single file the image holds, not the image archive.
        #[arg(short = 'u', long)]
        unpack: bool,
        /// Write here instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Of a multi-platform image, only this platform (OS/ARCH[/VARIANT]), as
        /// `docker save --platform` does.
        #[arg(long)]
        platform: Option<Platform>,
    },
    /// List every image as REPOSITORY:TAG.
    #[command(
        after_help = "Examples:\n  reposure image list myregistry\n  reposure image list team/myregistry -o json\n  reposure image list oci:/var/lib/images"
    )]
    List {
        registry: String,
        /// Output format.
        #[arg(short = 'o', long = "output", default_value = "names")]
        format: Format,
    },
    /// Delete one tag (other tags of the same image stay: the original Reposure deleted the
    /// image, and with it every tag on it), or with --all every tag of every repository.
    #[command(
        after_help = "Examples:\n  reposure image delete myregistry myrepo/hello:v1\n  reposure image delete http://127.0.0.1:5000 --all"
    )]
    Delete {
        registry: String,
        /// REPOSITORY[:TAG].
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Point DST at the image SRC points at (blobs are mounted, not copied).
    #[command(
        after_help = "Examples:\n  reposure image tag myregistry web:v2 web:stable\n  reposure image tag myregistry web@sha256:0123... prod/web:v2"
    )]
    Tag {
        registry: String,
        /// REPOSITORY[:TAG] or REPOSITORY@sha256:HEX.
        source: String,
        /// REPOSITORY[:TAG].
        destination: String,
    },
}

impl ImageCommand {
    pub fn registry(&self) -> &str {
        match self {
            Self::Push { registry, .. }
            | Self::Pull { registry, .. }
            | Self::List { registry, .. }
            | Self::Delete { registry, .. }
            | Self::Tag { registry, .. } => registry,
        }
    }
}

fn tag_of(name: &str) -> Result<(String, String)> {
    match names::parse_image(name)? {
        (repository, Reference::Tag(tag)) => Ok((repository, tag)),
        (_, Reference::Digest(_)) => bail!(Usage(format!("{name}: give a tag, not a digest"))),
    }
}

pub async fn run(command: ImageCommand, registry: Arc<dyn Registry>, quiet: bool) -> Result<()> {
    match command {
        ImageCommand::Push {
            name, path, format, ..
        } => push(registry.as_ref(), &name, &path, format, quiet).await,
        ImageCommand::Pull {
            name,
            unpack,
            output,
            platform,
            ..
        } => {
            let target = PullTarget {
                unpack,
                output: output.as_deref(),
                platform: platform.as_ref(),
            };
            pull(registry.as_ref(), &name, target, quiet).await
        }
        ImageCommand::List { format, .. } => list(registry.as_ref(), format).await,
        // Without a name, --all was given (the parser requires one or the other).
        ImageCommand::Delete { name, .. } => {
            let targets = match name {
                Some(name) => vec![tag_of(&name)?],
                None => list_images(registry.as_ref()).await?,
            };
            for (repository, tag) in targets {
                registry
                    .delete_tag(&repository, &tag)
                    .await
                    .with_context(|| format!("cannot delete {repository}:{tag}"))?;
                eprintln!("deleted {repository}:{tag}");
            }
            Ok(())
        }
        ImageCommand::Tag {
            source,
            destination,
            ..
        } => {
            let (from_repository, from) = names::parse_image(&source)?;
            let (to_repository, to_tag) = tag_of(&destination)?;
            let digest = registry
                .tag(&from_repository, &from, &to_repository, &to_tag)
                .await
                .with_context(|| format!("cannot tag {source} as {destination}"))?;
            println!("{to_repository}:{to_tag} {digest}");
            Ok(())
        }
    }
}

async fn push(
    registry: &dyn Registry,
    name: &str,
    path: &Path,
    format: PushFormat,
    quiet: bool,
) -> Result<()> {
    let (repository, tag) = tag_of(name)?;
    let metadata =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !metadata.is_file() {
        bail!(Usage(format!("{} is not a file", path.display())));
    }
    let bar = progress::bar(metadata.len(), "push", quiet);
    let file = LocalFile {
        path,
        file_name: path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("file")
            .to_owned(),
        format,
        created: None,
        // The image keeps the file's mode and time, as a copy would.
        attributes: FileAttributes {
            mode: Some(metadata.permissions().mode() & 0o7777),
            modified: metadata.modified().ok(),
        },
        content: Content::Detect,
        scratch_dir: &std::env::temp_dir(),
        progress: Some(progress::reporter(&bar)),
    };
    let pushed = push_path(registry, &repository, &tag, file).await;
    bar.finish_and_clear();
    let digest = pushed.with_context(|| format!("cannot push {} as {name}", path.display()))?;
    println!("{repository}:{tag} {digest}");
    Ok(())
}

/// What a pull writes, and where.
struct PullTarget<'a> {
    unpack: bool,
    output: Option<&'a Path>,
    platform: Option<&'a Platform>,
}

async fn pull(
    registry: &dyn Registry,
    name: &str,
    target: PullTarget<'_>,
    quiet: bool,
) -> Result<()> {
    let pulled = reposure_registry::pull::pull(registry, name, target.unpack, target.platform)
        .await
        .with_context(|| format!("cannot pull {name}"))?;
    let bar = progress::bar(pulled.length, "pull", quiet);
    let mut stream = with_progress(pulled.stream, progress::reporter(&bar));
    match target.output {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            // Named only once complete: a pull that fails or is killed leaves no file.
            let temporary = Scratch::new_in(dir)
                .with_context(|| format!("cannot write in {}", dir.display()))?;
            let mut file = tokio::fs::File::from_std(temporary.file().try_clone()?);
            while let Some(chunk) = stream.next().await {
                file.write_all(&chunk.with_context(|| format!("cannot pull {name}"))?)
                    .await?;
            }
            file.sync_all().await?;
            temporary
                .persist(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            let mut stdout = tokio::io::stdout();
            while let Some(chunk) = stream.next().await {
                stdout
                    .write_all(&chunk.with_context(|| format!("cannot pull {name}"))?)
                    .await?;
            }
            stdout.flush().await?;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

#[derive(Serialize)]
struct ImageName {
    repository: String,
    tag: String,
}

async fn list(registry: &dyn Registry, format: Format) -> Result<()> {
    let images: Vec<ImageName> = list_images(registry)
        .await
        .context("cannot list images")?
        .into_iter()
        .map(|(repository, tag)| ImageName { repository, tag })
        .collect();
    print_data(&images, format, |images| {
        images
            .iter()
            .map(|i| format!("{}:{}\n", i.repository, i.tag))
            .collect()
    })
}
