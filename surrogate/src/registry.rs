//! The operations a filesystem needs of a registry, and their one implementation over a
//! [`Store`].
//!
//! [`Registry`] is deliberately at the level of filesystem operations (list, resolve a
//! name to a file, read a range of that file, push a file, delete a tag) rather than HTTP
//! calls: a surrogate session carries exactly these operations, one request each.
//! [`StoreRegistry`] implements them over any [`Store`] with the format rules of
//! [`crate::formats::single_file`].

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::ByteStream;
use crate::digest::{Digest, verify_stream};
use crate::error::{RegistryError, Result};
use crate::formats::manifest::{self, ConfigSummary, Descriptor, ManifestKind, StoredManifest};
use crate::formats::media_types as mt;
use crate::formats::single_file::{self, Classification, PushFormat};
use crate::formats::tar_probe::{self, TarProbe};
use crate::names::{self, Reference};
use crate::store::Store;

/// First read when looking for the file inside a layer: one tar header and then some,
/// enough for the common case of a few directory entries before the file.
const PROBE_FIRST: u64 = 8 * 1024;

/// Most bytes read to find the file in a layer before giving up; a layer whose first
/// regular file starts later than this is shown as "not a single file".
const PROBE_LIMIT: u64 = 1024 * 1024;

/// Largest config blob read for its `created` time.
const CONFIG_LIMIT: u64 = 1024 * 1024;

/// A blob and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
}

/// How a blob is encoded around the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// Stored as is.
    Identity,
    /// gzip (one or more members).
    Gzip,
}

/// Where a file's bytes are: `length` bytes at `offset` of the decoded blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContent {
    pub blob: BlobRef,
    pub encoding: Encoding,
    pub offset: u64,
    pub length: u64,
}

/// What a reference shows as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageView {
    /// A single file.
    File(FileContent),
    /// Something that is not a single file; the text says what.
    NotAFile(String),
}

/// A resolved reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The manifest digest the reference resolved to.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// How the image reads as a file.
    pub view: ImageView,
    /// When the image was created (annotation, or config), if it says.
    pub created: Option<SystemTime>,
}

impl ImageInfo {
    /// The file size this image shows.
    pub fn size(&self) -> u64 {
        match &self.view {
            ImageView::File(content) => content.length,
            ImageView::NotAFile(_) => 0,
        }
    }
}

/// A file to push.
pub struct FileUpload {
    /// The name the file has inside the image.
    pub file_name: String,
    /// Exact length of `body`; the push fails if the body is shorter or longer.
    pub size: u64,
    /// How to store it.
    pub format: PushFormat,
    /// The creation time recorded in the image; `None` means now. A spool sets it when it
    /// accepts a push, so publishing the same entry again (after a crash) makes the very
    /// same manifest.
    pub created: Option<DateTime<Utc>>,
    /// The content.
    pub body: ByteStream,
}

/// What a filesystem asks of a registry.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Where the registry is (no credentials).
    fn describe(&self) -> String;
    /// Checks that the registry is reachable and the credentials work.
    async fn check(&self) -> Result<()>;
    /// Repository names, sorted.
    async fn list_repositories(&self) -> Result<Vec<String>>;
    /// A repository's tags, sorted, without referrers-fallback tags.
    async fn list_tags(&self, repository: &str) -> Result<Vec<String>>;
    /// Resolves a tag or digest to its manifest digest and file view.
    async fn resolve(&self, repository: &str, reference: &Reference) -> Result<ImageInfo>;
    /// Reads `length` bytes of a file from `offset`. A read of the whole file is verified
    /// against the blob's digest: its stream ends in an error if the content is corrupt.
    async fn read(
        &self,
        repository: &str,
        content: &FileContent,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream>;
    /// Pushes a file as a single-file image under a tag; returns once the manifest is
    /// committed, with its digest.
    async fn push_file(&self, repository: &str, tag: &str, upload: FileUpload) -> Result<Digest>;
    /// Deletes exactly one tag, never another tag on the same manifest.
    async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()>;
}

/// [`Registry`] over a [`Store`].
pub struct StoreRegistry {
    store: Arc<dyn Store>,
}

impl StoreRegistry {
    /// Wraps a store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    async fn fetch(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<Bytes> {
        let mut stream = self
            .store
            .get_blob(repository, digest, offset, Some(length))
            .await?;
        let mut buffer = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            buffer.extend_from_slice(&chunk?);
        }
        Ok(buffer.freeze())
    }

    /// Where the file is in an uncompressed tar layer.
    async fn probe_tar(&self, repository: &str, layer: &Descriptor) -> Result<ImageView> {
        let mut want = PROBE_FIRST.min(layer.size);
        loop {
            let prefix = self.fetch(repository, &layer.digest, 0, want).await?;
            let complete = want >= layer.size;
            match tar_probe::probe(&prefix, complete) {
                TarProbe::File { offset, size, .. } => {
                    let end = offset + tar_probe::padded(size);
                    let rest = self
                        .fetch(
                            repository,
                            &layer.digest,
                            end,
                            1024.min(layer.size.saturating_sub(end)),
                        )
                        .await?;
                    if rest.iter().any(|&b| b != 0) {
                        return Ok(ImageView::NotAFile(
                            "the layer holds more than one file".into(),
                        ));
                    }
                    return Ok(ImageView::File(FileContent {
                        blob: blob_ref(layer),
                        encoding: Encoding::Identity,
                        offset,
                        length: size,
                    }));
                }
                TarProbe::NeedMore if want < PROBE_LIMIT.min(layer.size) => {
                    want = (want * 4).min(PROBE_LIMIT).min(layer.size);
                }
                TarProbe::NeedMore => {
                    return Ok(ImageView::NotAFile(
                        "no file in the first MiB of the layer".into(),
                    ));
                }
                TarProbe::NotTar => {
                    return Err(RegistryError::Corrupt(format!(
                        "layer {} is not a tar",
                        layer.digest
                    )));
                }
                TarProbe::NoFile => {
                    return Ok(ImageView::NotAFile(
                        "the layer holds no regular file".into(),
                    ));
                }
            }
        }
    }

    /// Where the file is in a gzip layer: a tar entry, or the whole decompressed stream.
    async fn probe_gzip(&self, repository: &str, layer: &Descriptor) -> Result<ImageView> {
        let mut want = PROBE_FIRST.min(layer.size);
        loop {
            let compressed = self.fetch(repository, &layer.digest, 0, want).await?;
            let complete = want >= layer.size;
            let decoded = gunzip_prefix(&compressed, complete)?;
            let file = |offset, length| {
                Ok(ImageView::File(FileContent {
                    blob: blob_ref(layer),
                    encoding: Encoding::Gzip,
                    offset,
                    length,
                }))
            };
            match tar_probe::probe(&decoded, complete) {
                TarProbe::File { offset, size, .. } => return file(offset, size),
                TarProbe::NotTar if complete => return file(0, decoded.len() as u64),
                TarProbe::NotTar if decoded.len() >= tar_probe::BLOCK as usize => {
                    // Raw gzip (as the Go Reposure stored files): the trailer's ISIZE field is
                    // the decompressed length modulo 2^32.
                    let trailer = self
                        .fetch(repository, &layer.digest, layer.size - 4, 4)
                        .await?;
                    let isize = u32::from_le_bytes(trailer[..4].try_into().map_err(|_| {
                        RegistryError::Corrupt(format!("gzip layer {} is truncated", layer.digest))
                    })?);
                    return file(0, u64::from(isize));
                }
                TarProbe::NoFile => {
                    return Ok(ImageView::NotAFile(
                        "the layer holds no regular file".into(),
                    ));
                }
                _ if want < PROBE_LIMIT.min(layer.size) => {
                    want = (want * 4).min(PROBE_LIMIT).min(layer.size)
                }
                _ => {
                    return Ok(ImageView::NotAFile(
                        "no file in the first MiB of the layer".into(),
                    ));
                }
            }
        }
    }

    /// The creation time from the manifest's annotation or the config.
    async fn created(
        &self,
        repository: &str,
        image: &manifest::ImageManifest,
    ) -> Option<SystemTime> {
        let parse = |s: &str| DateTime::parse_from_rfc3339(s).ok().map(SystemTime::from);
        if let Some(time) = image.annotation(mt::ANNOTATION_CREATED).and_then(parse) {
            return Some(time);
        }
        let config = &image.config;
        if config.media_type != mt::OCI_CONFIG && config.media_type != mt::DOCKER_CONFIG
            || config.size > CONFIG_LIMIT
        {
            return None;
        }
        let bytes = self
            .fetch(repository, &config.digest, 0, config.size)
            .await
            .ok()?;
        let summary: ConfigSummary = serde_json::from_slice(&bytes).ok()?;
        summary.created.as_deref().and_then(parse)
    }

    async fn put_bytes(&self, repository: &str, bytes: &'static [u8]) -> Result<()> {
        let body = futures::stream::once(async move { Ok(Bytes::from_static(bytes)) }).boxed();
        self.store.put_blob(repository, body).await.map(|_| ())
    }
}

fn blob_ref(layer: &Descriptor) -> BlobRef {
    BlobRef {
        digest: layer.digest.clone(),
        size: layer.size,
    }
}

/// Decompresses as much of a gzip prefix as it holds.
fn gunzip_prefix(compressed: &[u8], complete: bool) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut decoder = flate2::write::MultiGzDecoder::new(Vec::new());
    let corrupt = |e: std::io::Error| RegistryError::Corrupt(format!("gzip layer: {e}"));
    decoder.write_all(compressed).map_err(corrupt)?;
    if complete {
        decoder.try_finish().map_err(corrupt)?;
    } else {
        decoder.flush().map_err(corrupt)?;
    }
    Ok(std::mem::take(decoder.get_mut()))
}

/// Decompresses a gzip stream chunk by chunk.
fn gunzip(stream: ByteStream) -> ByteStream {
    use std::io::Write;
    let corrupt = |e: std::io::Error| RegistryError::Corrupt(format!("gzip layer: {e}"));
    let decoder = flate2::write::MultiGzDecoder::new(Vec::new());
    futures::stream::unfold(Some((stream, decoder)), move |state| async move {
        let (mut stream, mut decoder) = state?;
        loop {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    if let Err(e) = decoder.write_all(&chunk) {
                        return Some((Err(corrupt(e)), None));
                    }
                    let out = std::mem::take(decoder.get_mut());
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), Some((stream, decoder))));
                    }
                }
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    return match decoder.try_finish() {
                        Ok(()) => {
                            let out = std::mem::take(decoder.get_mut());
                            (!out.is_empty()).then(|| (Ok(Bytes::from(out)), None))
                        }
                        Err(e) => Some((Err(corrupt(e)), None)),
                    };
                }
            }
        }
    })
    .boxed()
}

/// Yields `take` bytes after skipping `skip`; with `drain`, keeps consuming the source to
/// its end afterwards (so that a verifying source checks the whole blob and can fail).
fn window(source: ByteStream, skip: u64, take: u64, drain: bool) -> ByteStream {
    struct State {
        source: ByteStream,
        skip: u64,
        take: u64,
        drain: bool,
    }
    futures::stream::unfold(
        State {
            source,
            skip,
            take,
            drain,
        },
        |mut st| async move {
            loop {
                if st.take == 0 && !st.drain {
                    return None;
                }
                match st.source.next().await {
                    None => {
                        if st.take > 0 {
                            let message = format!("content ended {} bytes early", st.take);
                            st.take = 0;
                            st.drain = false;
                            return Some((Err(RegistryError::Corrupt(message)), st));
                        }
                        return None;
                    }
                    Some(Err(e)) => {
                        st.take = 0;
                        st.drain = false;
                        return Some((Err(e), st));
                    }
                    Some(Ok(mut chunk)) => {
                        let skipped = st.skip.min(chunk.len() as u64);
                        st.skip -= skipped;
                        let _ = chunk.split_to(skipped as usize);
                        let kept = st.take.min(chunk.len() as u64);
                        st.take -= kept;
                        chunk.truncate(kept as usize);
                        if !chunk.is_empty() {
                            return Some((Ok(chunk), st));
                        }
                    }
                }
            }
        },
    )
    .boxed()
}

/// Fails a stream whose total length differs from `declared`.
fn exact_length(body: ByteStream, declared: u64) -> ByteStream {
    let mut received = 0u64;
    body.map(move |item| {
        let chunk = item?;
        received += chunk.len() as u64;
        if received > declared {
            return Err(RegistryError::SizeMismatch { declared, received });
        }
        Ok(chunk)
    })
    .chain(futures::stream::once(async { Ok(Bytes::new()) }))
    .scan(0u64, move |total, item| {
        let item = item.and_then(|chunk| {
            *total += chunk.len() as u64;
            if chunk.is_empty() && *total != declared {
                return Err(RegistryError::SizeMismatch {
                    declared,
                    received: *total,
                });
            }
            Ok(chunk)
        });
        futures::future::ready(Some(item))
    })
    .try_filter(|chunk| futures::future::ready(!chunk.is_empty()))
    .boxed()
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

    async fn resolve(&self, repository: &str, reference: &Reference) -> Result<ImageInfo> {
        let manifest = self.store.get_manifest(repository, reference).await?;
        let (view, created) = match manifest::parse(&manifest)? {
            ManifestKind::Index => (
                ImageView::NotAFile("a multi-platform image index".into()),
                None,
            ),
            ManifestKind::Image(image) => {
                let view = match single_file::classify(&image) {
                    Classification::Raw(layer) => ImageView::File(FileContent {
                        blob: blob_ref(&layer),
                        encoding: Encoding::Identity,
                        offset: 0,
                        length: layer.size,
                    }),
                    Classification::Tar(layer) => self.probe_tar(repository, &layer).await?,
                    Classification::Gzip(layer) => self.probe_gzip(repository, &layer).await?,
                    Classification::NotAFile(reason) => ImageView::NotAFile(reason),
                };
                (view, self.created(repository, &image).await)
            }
        };
        Ok(ImageInfo {
            digest: manifest.digest,
            media_type: manifest.media_type,
            view,
            created,
        })
    }

    async fn read(
        &self,
        repository: &str,
        content: &FileContent,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream> {
        let length = length.min(content.length.saturating_sub(offset));
        let whole_file = offset == 0 && length == content.length;
        let blob = &content.blob;
        match content.encoding {
            Encoding::Identity if !whole_file => {
                if length == 0 {
                    return Ok(futures::stream::empty().boxed());
                }
                self.store
                    .get_blob(
                        repository,
                        &blob.digest,
                        content.offset + offset,
                        Some(length),
                    )
                    .await
            }
            Encoding::Identity => {
                let stream = self
                    .store
                    .get_blob(repository, &blob.digest, 0, None)
                    .await?;
                let verified = verify_stream(stream, blob.digest.clone(), blob.size);
                Ok(window(verified, content.offset, content.length, true))
            }
            Encoding::Gzip => {
                // gzip cannot be entered in the middle: decode from the start. Reads that
                // reach the end of the file also drain the blob so its digest is checked.
                let stream = self
                    .store
                    .get_blob(repository, &blob.digest, 0, None)
                    .await?;
                let verified = verify_stream(stream, blob.digest.clone(), blob.size);
                let reaches_end = offset + length >= content.length;
                Ok(window(
                    gunzip(verified),
                    content.offset + offset,
                    length,
                    reaches_end,
                ))
            }
        }
    }

    async fn push_file(&self, repository: &str, tag: &str, upload: FileUpload) -> Result<Digest> {
        names::check_repository(repository)?;
        names::check_tag(tag)?;
        let created: DateTime<Utc> = upload.created.unwrap_or_else(Utc::now);
        let body = exact_length(upload.body, upload.size);
        let (layer, config) = match upload.format {
            PushFormat::Image => {
                let framing = single_file::tar_framing(&upload.file_name, upload.size, created)?;
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
                let config_stream =
                    futures::stream::once(async move { Ok(Bytes::from(config)) }).boxed();
                self.store.put_blob(repository, config_stream).await?;
                (layer, descriptor)
            }
            PushFormat::Artifact => {
                let layer = self.store.put_blob(repository, body).await?;
                self.put_bytes(repository, single_file::EMPTY_CONFIG)
                    .await?;
                (
                    layer,
                    Descriptor::of(mt::OCI_EMPTY, single_file::EMPTY_CONFIG),
                )
            }
        };
        let bytes = single_file::manifest(upload.format, &upload.file_name, layer, config, created);
        let manifest = StoredManifest {
            digest: Digest::of(&bytes),
            bytes: Bytes::from(bytes),
            media_type: mt::OCI_MANIFEST.to_owned(),
        };
        self.store.put_manifest(repository, tag, &manifest).await?;
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
        self.store.put_manifest(repository, tag, &manifest).await?;
        self.store
            .delete_manifest(repository, &manifest.digest)
            .await
    }
}
