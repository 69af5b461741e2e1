//! [`Registry`] over a [`Store`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use super::streams::{exact_length, gunzip, window};
use super::{
    DEFAULT_FILE_MODE, Encoding, FileAttributes, FileContent, FileUpload, ImageInfo, Registry,
    probe,
};
use crate::ByteStream;
use crate::digest::{Digest, verify_stream};
use crate::error::{RegistryError, Result};
use crate::formats::archive::{ArchivePlan, Piece};
use crate::formats::manifest::{
    self, Descriptor, ImageManifest, IndexManifest, ManifestKind, Platform, StoredManifest,
};
use crate::formats::media_types as mt;
use crate::formats::single_file::{self, Classification, FileSpec, PushFormat};
use crate::names::{self, Reference};
use crate::store::Store;

/// Manifests kept by digest (they never change): enough for the archives being read at
/// once, small enough to ignore (manifests are a few KiB).
const MANIFEST_CACHE: usize = 512;

/// Files up to this size are read into memory and pushed with their layer and config
/// uploaded at once, each in two requests: a small file's push is bound by round trips, not
/// bandwidth (for 4 KiB, seven requests in sequence become three). One such buffer per push
/// in flight bounds the memory this takes.
const SMALL_FILE: u64 = 1024 * 1024;

/// What probing a manifest found: its single file (or why none) and creation time.
type Probe = (probe::Probed, Option<SystemTime>);

/// [`Registry`] over a [`Store`].
pub struct StoreRegistry {
    store: Arc<dyn Store>,
    manifests: Mutex<HashMap<Digest, StoredManifest>>,
    /// Probe results by repository and manifest digest: they cannot change, so resolving
    /// a tag again costs one manifest request, not the layer reads a probe makes.
    probes: Mutex<HashMap<(String, Digest), Probe>>,
}

impl StoreRegistry {
    /// Wraps a store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            manifests: Mutex::default(),
            probes: Mutex::default(),
        }
    }

    /// A manifest by digest, from the cache or the store.
    async fn manifest_by_digest(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<StoredManifest> {
        if let Some(manifest) = self.manifests.lock().expect("cache lock").get(digest) {
            return Ok(manifest.clone());
        }
        let manifest = self
            .store
            .get_manifest(repository, &Reference::Digest(digest.clone()))
            .await?;
        self.remember(&manifest);
        Ok(manifest)
    }

    fn remember(&self, manifest: &StoredManifest) {
        let mut cache = self.manifests.lock().expect("cache lock");
        if cache.len() >= MANIFEST_CACHE {
            cache.clear();
        }
        cache.insert(manifest.digest.clone(), manifest.clone());
    }

    /// The image manifests an archive of `root` holds.
    async fn images_of(
        &self,
        repository: &str,
        root: &StoredManifest,
    ) -> Result<Vec<(StoredManifest, ImageManifest)>> {
        match manifest::parse(root)? {
            ManifestKind::Image(image) => Ok(vec![(root.clone(), *image)]),
            ManifestKind::Index => {
                let index: IndexManifest = serde_json::from_slice(&root.bytes).map_err(|e| {
                    RegistryError::Corrupt(format!("index {} does not parse: {e}", root.digest))
                })?;
                let mut images = Vec::new();
                for child in &index.manifests {
                    let stored = self.manifest_by_digest(repository, &child.digest).await?;
                    // Nested indexes are rare; their own children are not followed.
                    if let ManifestKind::Image(image) = manifest::parse(&stored)? {
                        images.push((stored, *image));
                    }
                }
                Ok(images)
            }
        }
    }

    async fn plan(
        &self,
        repository: &str,
        root: &StoredManifest,
        reference: Option<&str>,
    ) -> Result<ArchivePlan> {
        let images = self.images_of(repository, root).await?;
        Ok(ArchivePlan::new(root, &images, reference))
    }

    /// How the image reads as one file, if it does.
    /// The image's one file, with its mode and time: the tar header's, refined by the
    /// layer's annotations where this project wrote them (an exact time; an artifact's mode).
    async fn file_of(&self, repository: &str, image: &ImageManifest) -> Result<probe::Probed> {
        let store = self.store.as_ref();
        let (layer, probed) = match single_file::classify(image) {
            Classification::Raw(layer) => {
                let file = probe::raw(&layer);
                (layer, Ok((file, FileAttributes::default())))
            }
            Classification::Tar(layer) => {
                let probed = probe::tar(store, repository, &layer).await?;
                (layer, probed)
            }
            Classification::Gzip(layer) => {
                let probed = probe::gzip(store, repository, &layer).await?;
                (layer, probed)
            }
            Classification::NotAFile(reason) => return Ok(Err(reason)),
        };
        let (annotated_mode, annotated_time) = single_file::annotated_attributes(&layer);
        let whole_seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs());
        Ok(probed.map(|(file, header)| {
            // The annotation refines the header's whole seconds; one that disagrees with
            // the header was not written with this layer and is ignored.
            let exact = annotated_time.filter(|exact| {
                header
                    .modified
                    .is_none_or(|h| whole_seconds(h).ok() == whole_seconds(*exact).ok())
            });
            let attributes = FileAttributes {
                mode: header.mode.or(annotated_mode),
                modified: exact.or(header.modified),
            };
            (file, attributes)
        }))
    }

    async fn put_bytes(&self, repository: &str, bytes: &'static [u8]) -> Result<()> {
        self.store
            .put_blob_bytes(repository, Bytes::from_static(bytes))
            .await
            .map(|_| ())
    }

    /// The layer and config of a single-file image, streamed: the layer's digest is known
    /// only at its end, so the config follows it.
    async fn push_file_blobs(
        &self,
        repository: &str,
        file: &FileSpec<'_>,
        size: u64,
        body: ByteStream,
    ) -> Result<((Digest, u64), Descriptor)> {
        let created = file.created;
        match file.format {
            PushFormat::Image => {
                let framing =
                    single_file::tar_framing(file.file_name, size, file.mode, file.modified)?;
                let layer_stream =
                    futures::stream::once(async move { Ok(Bytes::from(framing.header)) })
                        .chain(body)
                        .chain(futures::stream::once(async move {
                            Ok(Bytes::from(framing.trailer))
                        }))
                        .boxed();
                let layer = self.store.put_blob(repository, layer_stream).await?;
                let config = single_file::image_config(&layer.0, created);
                let descriptor = Descriptor::of(mt::OCI_CONFIG, &config);
                self.store
                    .put_blob_bytes(repository, Bytes::from(config))
                    .await?;
                Ok((layer, descriptor))
            }
            PushFormat::Artifact => {
                let layer = self.store.put_blob(repository, body).await?;
                self.put_bytes(repository, single_file::EMPTY_CONFIG)
                    .await?;
                Ok((
                    layer,
                    Descriptor::of(mt::OCI_EMPTY, single_file::EMPTY_CONFIG),
                ))
            }
        }
    }

    /// The same for a small file, read into memory first: with every digest known up
    /// front, the layer and the config upload at the same time, each in two requests.
    async fn push_small_file_blobs(
        &self,
        repository: &str,
        file: &FileSpec<'_>,
        body: ByteStream,
    ) -> Result<((Digest, u64), Descriptor)> {
        let created = file.created;
        let content: Vec<Bytes> = body.try_collect().await?;
        let size: usize = content.iter().map(Bytes::len).sum();
        let (layer, config, config_type): (Bytes, Bytes, &str) = match file.format {
            PushFormat::Image => {
                let framing = single_file::tar_framing(
                    file.file_name,
                    size as u64,
                    file.mode,
                    file.modified,
                )?;
                let mut layer =
                    Vec::with_capacity(framing.header.len() + size + framing.trailer.len());
                layer.extend_from_slice(&framing.header);
                content
                    .iter()
                    .for_each(|chunk| layer.extend_from_slice(chunk));
                layer.extend_from_slice(&framing.trailer);
                let config = single_file::image_config(&Digest::of(&layer), created);
                (layer.into(), config.into(), mt::OCI_CONFIG)
            }
            PushFormat::Artifact => {
                let mut layer = Vec::with_capacity(size);
                content
                    .iter()
                    .for_each(|chunk| layer.extend_from_slice(chunk));
                (
                    layer.into(),
                    Bytes::from_static(single_file::EMPTY_CONFIG),
                    mt::OCI_EMPTY,
                )
            }
        };
        let descriptor = Descriptor::of(config_type, &config);
        let (layer, _) = futures::try_join!(
            self.store.put_blob_bytes(repository, layer),
            self.store.put_blob_bytes(repository, config),
        )?;
        Ok((layer, descriptor))
    }

    /// Makes `digest` available in `to` from `from`: a mount, or a copy where the registry
    /// cannot mount.
    async fn carry_blob(&self, from: &str, to: &str, descriptor: &Descriptor) -> Result<()> {
        if self.store.mount_blob(to, from, &descriptor.digest).await? {
            return Ok(());
        }
        let stream = self
            .store
            .get_blob(from, &descriptor.digest, 0, whole(descriptor.size))
            .await?;
        self.put_blob(to, descriptor, stream).await
    }
}

/// How much of a blob to ask for to read it whole: one byte more than its descriptor says,
/// so that a registry sending a longer blob is caught at that byte (the verifying stream
/// fails, saying the blob is longer than declared) instead of being read to whatever end it
/// chooses.
fn whole(size: u64) -> u64 {
    size.saturating_add(1)
}

/// The blobs (and child manifests) a manifest needs in its repository.
fn referenced(manifest: &StoredManifest) -> Result<(Vec<Descriptor>, Vec<Descriptor>)> {
    match manifest::parse(manifest)? {
        ManifestKind::Image(image) => {
            let mut blobs = vec![image.config.clone()];
            blobs.extend(image.layers.iter().cloned());
            Ok((blobs, Vec::new()))
        }
        ManifestKind::Index => {
            let index: IndexManifest = serde_json::from_slice(&manifest.bytes).map_err(|e| {
                RegistryError::Corrupt(format!("index {} does not parse: {e}", manifest.digest))
            })?;
            Ok((Vec::new(), index.manifests))
        }
    }
}

#[async_trait]
impl Registry for StoreRegistry {
    fn describe(&self) -> String {
        self.store.describe()
    }

    async fn check(&self) -> Result<()> {
        self.store.check().await
    }

    async fn list_repositories(&self) -> Result<Vec<String>> {
        let mut names = self.store.list_repositories().await?;
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        let mut tags = self.store.list_tags(repository).await?;
        tags.retain(|t| !names::is_referrers_fallback_tag(t));
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    async fn resolve(
        &self,
        repository: &str,
        reference: &Reference,
        platform: Option<&Platform>,
    ) -> Result<ImageInfo> {
        let mut manifest = self.store.get_manifest(repository, reference).await?;
        self.remember(&manifest);
        if let Some(platform) = platform
            && let ManifestKind::Index = manifest::parse(&manifest)?
        {
            let index: IndexManifest = serde_json::from_slice(&manifest.bytes)
                .map_err(|e| RegistryError::Corrupt(format!("image index: {e}")))?;
            let Some(chosen) = index.manifests.iter().find(|d| platform.matches(d)) else {
                let message = format!(
                    "{repository}:{reference} has no image for {platform} (it has {})",
                    Platform::listed(&index)
                );
                tracing::warn!("{message}");
                return Err(RegistryError::NotFound(message));
            };
            manifest = self
                .store
                .get_manifest(repository, &Reference::Digest(chosen.digest.clone()))
                .await?;
            self.remember(&manifest);
        }
        let archive_name = match reference {
            Reference::Tag(tag) => Some(format!("{repository}:{tag}")),
            Reference::Digest(_) => None,
        };
        let plan = self
            .plan(repository, &manifest, archive_name.as_deref())
            .await?;
        let archive = FileContent::Archive {
            manifest: manifest.digest.clone(),
            reference: archive_name,
            length: plan.size(),
        };
        let key = (repository.to_owned(), manifest.digest.clone());
        let known = self.probes.lock().expect("cache lock").get(&key).cloned();
        let (file, created) = match known {
            Some(probe) => probe,
            None => {
                let probe = match manifest::parse(&manifest)? {
                    ManifestKind::Index => (Err("a multi-platform image index".to_owned()), None),
                    ManifestKind::Image(image) => (
                        self.file_of(repository, &image).await?,
                        probe::created(self.store.as_ref(), repository, &image).await,
                    ),
                };
                let mut probes = self.probes.lock().expect("cache lock");
                if probes.len() >= MANIFEST_CACHE {
                    probes.clear();
                }
                probes.insert(key, probe.clone());
                probe
            }
        };
        let (file, attributes) = match file {
            Ok((content, attributes)) => (Ok(content), attributes),
            Err(reason) => (Err(reason), FileAttributes::default()),
        };
        Ok(ImageInfo {
            digest: manifest.digest,
            media_type: manifest.media_type,
            file,
            archive,
            created,
            attributes,
        })
    }

    async fn read(
        &self,
        repository: &str,
        content: &FileContent,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream> {
        content.check()?;
        let length = length.min(content.length().saturating_sub(offset));
        match content {
            FileContent::Blob {
                blob,
                encoding,
                offset: start,
                length: file_length,
            } => {
                if length == 0 {
                    return Ok(futures::stream::empty().boxed());
                }
                // Checked above: the file ends inside the blob, and `offset` is inside the
                // file, so no sum below overflows.
                let whole_file = offset == 0 && length == *file_length;
                match encoding {
                    Encoding::Identity if !whole_file => {
                        self.store
                            .get_blob(repository, &blob.digest, start + offset, length)
                            .await
                    }
                    Encoding::Identity => {
                        let stream = self
                            .store
                            .get_blob(repository, &blob.digest, 0, whole(blob.size))
                            .await?;
                        let verified = verify_stream(stream, blob.digest.clone(), blob.size);
                        Ok(window(verified, *start, *file_length, true))
                    }
                    Encoding::Gzip => {
                        // gzip cannot be entered in the middle: decode from the start. Reads
                        // that reach the end of the file also drain the blob so its digest
                        // is checked.
                        let stream = self
                            .store
                            .get_blob(repository, &blob.digest, 0, whole(blob.size))
                            .await?;
                        let verified = verify_stream(stream, blob.digest.clone(), blob.size);
                        let reaches_end = offset + length >= *file_length;
                        Ok(window(
                            gunzip(verified),
                            start + offset,
                            length,
                            reaches_end,
                        ))
                    }
                }
            }
            FileContent::Archive {
                manifest,
                reference,
                ..
            } => {
                let root = self.manifest_by_digest(repository, manifest).await?;
                let plan = self.plan(repository, &root, reference.as_deref()).await?;
                let store = self.store.clone();
                let repository = repository.to_owned();
                let pieces = plan.pieces(offset, length);
                Ok(futures::stream::iter(pieces)
                    .then(move |piece| {
                        let store = store.clone();
                        let repository = repository.clone();
                        async move {
                            match piece {
                                Piece::Bytes(bytes) => Ok::<ByteStream, RegistryError>(
                                    futures::stream::once(async { Ok(bytes) }).boxed(),
                                ),
                                Piece::Blob {
                                    descriptor,
                                    offset,
                                    length,
                                } => {
                                    let complete = offset == 0 && length == descriptor.size;
                                    let asked = if complete { whole(length) } else { length };
                                    let stream = store
                                        .get_blob(&repository, &descriptor.digest, offset, asked)
                                        .await?;
                                    Ok(if complete {
                                        verify_stream(stream, descriptor.digest, descriptor.size)
                                    } else {
                                        stream
                                    })
                                }
                            }
                        }
                    })
                    .try_flatten()
                    .boxed())
            }
        }
    }

    async fn push_file(&self, repository: &str, tag: &str, upload: FileUpload) -> Result<Digest> {
        names::check_repository(repository)?;
        names::check_tag(tag)?;
        let created: DateTime<Utc> = upload.created.unwrap_or_else(Utc::now);
        let file = FileSpec {
            format: upload.format,
            file_name: &upload.file_name,
            created,
            mode: upload.attributes.mode.unwrap_or(DEFAULT_FILE_MODE),
            modified: upload.attributes.modified.map_or(created, DateTime::from),
        };
        let body = exact_length(upload.body, upload.size);
        let (layer, config) = if upload.size <= SMALL_FILE {
            self.push_small_file_blobs(repository, &file, body).await?
        } else {
            self.push_file_blobs(repository, &file, upload.size, body)
                .await?
        };
        let bytes = single_file::manifest(&file, layer, config);
        let manifest = StoredManifest {
            digest: Digest::of(&bytes),
            bytes: Bytes::from(bytes),
            media_type: mt::OCI_MANIFEST.to_owned(),
        };
        self.store
            .put_manifest(repository, &Reference::Tag(tag.to_owned()), &manifest)
            .await?;
        Ok(manifest.digest)
    }

    async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()> {
        match self.store.delete_tag(repository, tag).await {
            Err(RegistryError::TagDeleteUnsupported) => {}
            other => return other,
        }
        // The registry deletes manifests, not tags, and deleting the tag's manifest would
        // remove every other tag on it. Point the tag at a manifest nobody else can have
        // (it carries a random nonce) and delete that one instead.
        self.store
            .get_manifest(repository, &Reference::Tag(tag.to_owned()))
            .await?;
        self.put_bytes(repository, single_file::EMPTY_CONFIG)
            .await?;
        let nonce: u128 = rand::random();
        let throwaway = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt::OCI_MANIFEST,
            "config": Descriptor::of(mt::OCI_EMPTY, single_file::EMPTY_CONFIG),
            "layers": [Descriptor::of(mt::OCI_EMPTY, single_file::EMPTY_CONFIG)],
            "annotations": { "dev.reposure.deleted-tag": format!("{tag} {nonce:032x}") },
        }))
        .expect("manifest serialises");
        let manifest = StoredManifest {
            digest: Digest::of(&throwaway),
            bytes: Bytes::from(throwaway),
            media_type: mt::OCI_MANIFEST.to_owned(),
        };
        self.store
            .put_manifest(repository, &Reference::Tag(tag.to_owned()), &manifest)
            .await?;
        self.store
            .delete_manifest(repository, &manifest.digest)
            .await
    }

    async fn get_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let manifest = self.store.get_manifest(repository, reference).await?;
        self.remember(&manifest);
        Ok(manifest)
    }

    async fn put_blob(
        &self,
        repository: &str,
        expected: &Descriptor,
        body: ByteStream,
    ) -> Result<()> {
        let verified = verify_stream(body, expected.digest.clone(), expected.size);
        let (digest, _) = self.store.put_blob(repository, verified).await?;
        if digest != expected.digest {
            return Err(RegistryError::Corrupt(format!(
                "blob stored as {digest}, expected {}",
                expected.digest
            )));
        }
        Ok(())
    }

    async fn put_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        manifest: &StoredManifest,
    ) -> Result<()> {
        names::check_repository(repository)?;
        if let Reference::Tag(tag) = reference {
            names::check_tag(tag)?;
        }
        self.store
            .put_manifest(repository, reference, manifest)
            .await
    }

    async fn tag(
        &self,
        from_repository: &str,
        from: &Reference,
        to_repository: &str,
        to_tag: &str,
    ) -> Result<Digest> {
        names::check_repository(to_repository)?;
        names::check_tag(to_tag)?;
        let manifest = self.store.get_manifest(from_repository, from).await?;
        if from_repository != to_repository {
            let (blobs, children) = referenced(&manifest)?;
            for blob in &blobs {
                self.carry_blob(from_repository, to_repository, blob)
                    .await?;
            }
            for child in &children {
                let child_manifest = self
                    .manifest_by_digest(from_repository, &child.digest)
                    .await?;
                let (child_blobs, _) = referenced(&child_manifest)?;
                for blob in &child_blobs {
                    self.carry_blob(from_repository, to_repository, blob)
                        .await?;
                }
                self.store
                    .put_manifest(
                        to_repository,
                        &Reference::Digest(child.digest.clone()),
                        &child_manifest,
                    )
                    .await?;
            }
        }
        self.store
            .put_manifest(to_repository, &Reference::Tag(to_tag.to_owned()), &manifest)
            .await?;
        Ok(manifest.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operations::{BlobRef, Encoding};
    use crate::store::memory::MemoryStore;

    /// A session may ask for any range of any blob: nonsense is refused, never a panic or
    /// a wrapped offset (found by the `session_request` fuzz target's property).
    #[tokio::test]
    async fn ranges_outside_the_blob_are_refused() {
        let registry = StoreRegistry::new(Arc::new(MemoryStore::default()));
        let digest = Digest::of(b"");
        let content = |offset, length, encoding| FileContent::Blob {
            blob: BlobRef {
                digest: digest.clone(),
                size: 10,
            },
            encoding,
            offset,
            length,
        };
        for bogus in [
            content(u64::MAX, 19, Encoding::Identity),
            content(5, 6, Encoding::Identity),
            content(u64::MAX, 2, Encoding::Gzip),
        ] {
            let refused = registry.read("repo", &bogus, 3, 5).await.err();
            assert!(
                matches!(refused, Some(RegistryError::Rejected(_))),
                "{bogus:?}: {refused:?}"
            );
        }
    }
}
