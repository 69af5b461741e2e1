//! Pulling an image: the one pull path of every front end (`reposure image pull`, the
//! surrogate's one-shot `pull`).

use crate::ByteStream;
use crate::error::{RegistryError, Result};
use crate::formats::manifest::Platform;
use crate::names;
use crate::operations::Registry;

/// An image being pulled.
pub struct Pull {
    /// How many bytes the stream yields.
    pub length: u64,
    /// The content, verified against its digest as it streams.
    pub stream: ByteStream,
}

/// Opens `name` (`REPOSITORY[:TAG]` or `REPOSITORY@DIGEST`): the single file it holds with
/// `unpack`, else its image archive (of one `platform` of a multi-platform image, if given).
pub async fn pull(
    registry: &dyn Registry,
    name: &str,
    unpack: bool,
    platform: Option<&Platform>,
) -> Result<Pull> {
    let (repository, reference) = names::parse_image(name)?;
    let info = registry.resolve(&repository, &reference, platform).await?;
    let content = match (&info.file, unpack) {
        (Ok(file), true) => file,
        (Err(reason), true) => {
            return Err(RegistryError::Unsupported(format!(
                "{name} is not a single file ({reason}); pull it without unpacking to get the image archive"
            )));
        }
        (_, false) => &info.archive,
    };
    let stream = registry
        .read(&repository, content, 0, content.length())
        .await?;
    Ok(Pull {
        length: content.length(),
        stream,
    })
}

/// Every image as `(repository, tag)`, repositories and tags sorted.
pub async fn list_images(registry: &dyn Registry) -> Result<Vec<(String, String)>> {
    let mut all = Vec::new();
    for repository in registry.list_repositories().await? {
        for tag in registry.list_tags(&repository).await? {
            all.push((repository.clone(), tag));
        }
    }
    Ok(all)
}
