//! A local OCI image layout directory: the embedded default, no server needed.
//!
//! One layout holds every repository: `index.json` lists each manifest once per tag with
//! the annotation `org.opencontainers.image.ref.name` = `REPOSITORY:TAG`, and all blobs
//! share `blobs/sha256/`, so identical content is stored once. A ref name without a `:`
//! (as `umoci` and `skopeo` write for `oci:PATH:NAME`) is read as repository `NAME`, tag
//! `latest`. The directory stays readable and writable by skopeo and umoci.
//!
//! Writes are crash-safe: blobs are written under a temporary name, fsynced and renamed
//! into place once their digest is known; `index.json` is replaced by rename. Updates from
//! this process are serialised by a lock; concurrent writers in *other* processes (say,
//! skopeo writing while the mount does) can lose each other's `index.json` update, as with
//! any tool that writes image layouts. Blobs no longer referenced are not collected.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Mutex;

use super::Store;
use crate::ByteStream;
use crate::digest::Digest;
use crate::error::{RegistryError, Result};
use crate::formats::manifest::{Descriptor, StoredManifest, media_type_of};
use crate::formats::media_types::{ANNOTATION_REF_NAME, OCI_INDEX};
use crate::names::{DEFAULT_TAG, Reference};
use crate::scratch::Scratch;

/// Chunk size for reading blobs: large enough that a sequential read costs few syscalls,
/// small enough that many concurrent readers stay within the memory budget.
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// Splits a ref name into repository and tag.
fn split_ref_name(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((repository, tag)) if !repository.is_empty() && !tag.contains('/') => {
            (repository, tag)
        }
        _ => (name, DEFAULT_TAG),
    }
}

/// A local OCI image layout.
pub struct LayoutStore {
    root: PathBuf,
    index_lock: Mutex<()>,
}

impl LayoutStore {
    /// A store at `root` (created on [`Store::check`] when missing).
    pub fn new(root: impl Into<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            root: root.into(),
            index_lock: Mutex::new(()),
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    async fn read_index(&self) -> Result<Index> {
        match tokio::fs::read(self.root.join("index.json")).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                RegistryError::Corrupt(format!("{}/index.json: {e}", self.root.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index {
                schema_version: 2,
                media_type: Some(OCI_INDEX.to_owned()),
                ..Default::default()
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_index(&self, index: &Index) -> Result<()> {
        let bytes = serde_json::to_vec(index).expect("index serialises");
        write_atomically(&self.root, &self.root.join("index.json"), &bytes).await
    }

    /// Entries of `repository`, with their tags.
    fn entries<'a>(
        index: &'a Index,
        repository: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Descriptor)> {
        index.manifests.iter().filter_map(move |d| {
            let (repo, tag) = split_ref_name(d.annotation(ANNOTATION_REF_NAME)?);
            (repo == repository).then_some((tag, d))
        })
    }

    async fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        match tokio::fs::read(self.blob_path(digest)).await {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(RegistryError::NotFound(format!("blob {digest}")))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Writes `bytes` to `path` by way of a temporary file in `dir`, fsync and rename.
async fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let scratch = Scratch::new_in(dir)?;
    let mut file = tokio::fs::File::from_std(scratch.file().try_clone()?);
    file.write_all(bytes).await?;
    file.sync_all().await?;
    persist(scratch, path).await
}

/// Names a complete scratch file (see [`Scratch::persist`]) off the async threads.
async fn persist(scratch: Scratch, path: &Path) -> Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || scratch.persist(&path))
        .await
        .map_err(|e| RegistryError::Io(std::io::Error::other(e)))??;
    Ok(())
}

#[async_trait]
impl Store for LayoutStore {
    fn describe(&self) -> String {
        format!("oci:{}", self.root.display())
    }

    async fn check(&self) -> Result<()> {
        tokio::fs::create_dir_all(self.root.join("blobs/sha256")).await?;
        let marker = self.root.join("oci-layout");
        match tokio::fs::read(&marker).await {
            Ok(bytes) => {
                let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if value.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
                    return Err(RegistryError::Unsupported(format!(
                        "{} is not an OCI image layout of version 1.0.0",
                        marker.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomically(&self.root, &marker, br#"{"imageLayoutVersion":"1.0.0"}"#).await?;
            }
            Err(e) => return Err(e.into()),
        }
        let _guard = self.index_lock.lock().await;
        if !self.root.join("index.json").exists() {
            self.write_index(&self.read_index().await?).await?;
        }
        Ok(())
    }

    async fn list_repositories(&self) -> Result<Vec<String>> {
        let index = self.read_index().await?;
        let mut names: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|d| {
                Some(
                    split_ref_name(d.annotation(ANNOTATION_REF_NAME)?)
                        .0
                        .to_owned(),
                )
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        let index = self.read_index().await?;
        Ok(Self::entries(&index, repository)
            .map(|(tag, _)| tag.to_owned())
            .collect())
    }

    async fn get_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(tag) => {
                let index = self.read_index().await?;
                Self::entries(&index, repository)
                    .find(|(t, _)| t == tag)
                    .map(|(_, d)| d.digest.clone())
                    .ok_or_else(|| RegistryError::NotFound(format!("{repository}:{tag}")))?
            }
        };
        let bytes = self.read_blob(&digest).await?;
        if Digest::of(&bytes) != digest {
            return Err(RegistryError::Corrupt(format!(
                "manifest blob {digest} does not match its digest"
            )));
        }
        let media_type = media_type_of(&bytes)?;
        Ok(StoredManifest {
            bytes: Bytes::from(bytes),
            digest,
            media_type,
        })
    }

    async fn blob_size(&self, _repository: &str, digest: &Digest) -> Result<u64> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(metadata) => Ok(metadata.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(RegistryError::NotFound(format!("blob {digest}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn get_blob(
        &self,
        _repository: &str,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream> {
        let mut file = match tokio::fs::File::open(self.blob_path(digest)).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RegistryError::NotFound(format!("blob {digest}")));
            }
            Err(e) => return Err(e.into()),
        };
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        let limited = file.take(length);
        Ok(
            tokio_util::io::ReaderStream::with_capacity(limited, READ_CHUNK)
                .map(|r| r.map_err(RegistryError::from))
                .boxed(),
        )
    }

    async fn put_blob(&self, _repository: &str, mut body: ByteStream) -> Result<(Digest, u64)> {
        let dir = self.root.join("blobs/sha256");
        tokio::fs::create_dir_all(&dir).await?;
        // The upload has no name until it is complete: nothing is left if anything below
        // fails, or the process is killed.
        let scratch = Scratch::new_in(&dir)?;
        let mut file = tokio::fs::File::from_std(scratch.file().try_clone()?);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        let digest = Digest::from_hasher(hasher);
        persist(scratch, &self.blob_path(&digest)).await?;
        Ok((digest, size))
    }

    async fn put_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        manifest: &StoredManifest,
    ) -> Result<()> {
        let parsed: serde_json::Value = serde_json::from_slice(&manifest.bytes)
            .map_err(|e| RegistryError::Rejected(format!("manifest is not JSON: {e}")))?;
        let referenced = ["config"]
            .iter()
            .filter_map(|k| parsed.get(k))
            .chain(
                parsed
                    .get("layers")
                    .and_then(|l| l.as_array())
                    .into_iter()
                    .flatten(),
            )
            .chain(
                parsed
                    .get("manifests")
                    .and_then(|l| l.as_array())
                    .into_iter()
                    .flatten(),
            );
        for descriptor in referenced {
            let digest = descriptor
                .get("digest")
                .and_then(|d| d.as_str())
                .unwrap_or_default();
            let digest = Digest::parse(digest)?;
            if !self.blob_path(&digest).exists() {
                return Err(RegistryError::Rejected(format!(
                    "MANIFEST_BLOB_UNKNOWN: {digest} is not stored"
                )));
            }
        }
        let path = self.blob_path(&manifest.digest);
        write_atomically(path.parent().expect("blob dir"), &path, &manifest.bytes).await?;
        let Reference::Tag(tag) = reference else {
            // By digest: the manifest blob is all a layout needs.
            return Ok(());
        };
        let ref_name = format!("{repository}:{tag}");
        let _guard = self.index_lock.lock().await;
        let mut index = self.read_index().await?;
        index
            .manifests
            .retain(|d| d.annotation(ANNOTATION_REF_NAME) != Some(ref_name.as_str()));
        let mut descriptor = Descriptor::of(&manifest.media_type, &manifest.bytes);
        descriptor.annotations = Some([(ANNOTATION_REF_NAME.to_owned(), ref_name)].into());
        index.manifests.push(descriptor);
        self.write_index(&index).await
    }

    async fn mount_blob(&self, _repository: &str, _from: &str, digest: &Digest) -> Result<bool> {
        // One layout holds every repository's blobs.
        Ok(self.blob_path(digest).exists())
    }

    async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()> {
        let _guard = self.index_lock.lock().await;
        let mut index = self.read_index().await?;
        let before = index.manifests.len();
        index.manifests.retain(|d| {
            d.annotation(ANNOTATION_REF_NAME).map(split_ref_name) != Some((repository, tag))
        });
        if index.manifests.len() == before {
            return Err(RegistryError::NotFound(format!("{repository}:{tag}")));
        }
        self.write_index(&index).await
    }

    async fn delete_manifest(&self, repository: &str, digest: &Digest) -> Result<()> {
        let _guard = self.index_lock.lock().await;
        let mut index = self.read_index().await?;
        let before = index.manifests.len();
        index.manifests.retain(|d| {
            !(d.digest == *digest
                && d.annotation(ANNOTATION_REF_NAME)
                    .map(|n| split_ref_name(n).0)
                    == Some(repository))
        });
        if index.manifests.len() == before {
            return Err(RegistryError::NotFound(format!("{repository}@{digest}")));
        }
        self.write_index(&index).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_split_into_repository_and_tag() {
        assert_eq!(split_ref_name("a/b:v1.2"), ("a/b", "v1.2"));
        assert_eq!(split_ref_name("plain"), ("plain", "latest"));
    }
}
