//! Pushing a local file: the one push path of every front end.
//!
//! The mount (a file closed in the spool), `reposure image push`, the surrogate's one-shot
//! `push` and the spooler's legacy file protocol all end here. A file that is an image
//! archive (Docker or OCI, gzip or not: [`crate::import`]) pushes the image it holds;
//! anything else becomes a single-file image under the tag. Either way the call returns
//! once the manifest is committed, and a failure leaves the tag as it was.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use crate::ByteStream;
use crate::digest::Digest;
use crate::error::{RegistryError, Result};
use crate::formats::single_file::PushFormat;
use crate::import;
use crate::operations::{FileAttributes, FileUpload, Registry};

/// Read size when streaming a local file to the registry: large enough that a push is a
/// few hundred reads per GiB, small enough to keep memory per push bounded.
const UPLOAD_CHUNK: usize = 1024 * 1024;

/// What the file at a path is taken to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// An image archive when its content is one, else a file.
    Detect,
    /// A file, whatever it holds.
    File,
    /// An image archive; anything else is refused.
    Archive,
}

/// Told the number of bytes read from the file so far, as they are read.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// A local file to push.
pub struct LocalFile<'a> {
    pub path: &'a Path,
    /// The file's name inside a single-file image.
    pub file_name: String,
    pub format: PushFormat,
    /// The creation time a single-file image records; `None` means now.
    pub created: Option<DateTime<Utc>>,
    /// The file's mode and time a single-file image records.
    pub attributes: FileAttributes,
    pub content: Content,
    /// Where a gzip archive is decompressed while it is read.
    pub scratch_dir: &'a Path,
    pub progress: Option<Progress>,
}

/// Pushes `file` as `repository:tag`; answers the manifest's digest once it is committed.
pub async fn push_path(
    registry: &dyn Registry,
    repository: &str,
    tag: &str,
    file: LocalFile<'_>,
) -> Result<Digest> {
    if file.content != Content::File {
        let pushed =
            import::push_archive(registry, repository, tag, file.path, file.scratch_dir).await?;
        match (pushed, file.content) {
            (Some(digest), _) => return Ok(digest),
            (None, Content::Archive) => {
                return Err(RegistryError::Rejected(format!(
                    "{} is named as an image archive but is not one (no manifest.json or OCI layout)",
                    file.path.display()
                )));
            }
            (None, _) => {}
        }
    }
    let opened = tokio::fs::File::open(file.path).await?;
    let size = opened.metadata().await?.len();
    let mut body = stream_of(opened, size);
    if let Some(progress) = file.progress {
        body = with_progress(body, progress);
    }
    let upload = FileUpload {
        file_name: file.file_name,
        size,
        format: file.format,
        created: file.created,
        attributes: file.attributes,
        body,
    };
    registry.push_file(repository, tag, upload).await
}

/// Tells `progress` how many bytes passed so far, as they pass.
pub fn with_progress(stream: ByteStream, progress: Progress) -> ByteStream {
    let mut passed = 0;
    stream
        .inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                passed += chunk.len() as u64;
                progress(passed);
            }
        })
        .boxed()
}

/// Streams the first `size` bytes of a file.
pub fn stream_of(file: tokio::fs::File, size: u64) -> ByteStream {
    tokio_util::io::ReaderStream::with_capacity(file.take(size), UPLOAD_CHUNK)
        .map(|chunk| chunk.map_err(RegistryError::from))
        .boxed()
}
