//! Image archives written to a name: recognising them and pushing the image they hold.
//!
//! Recognised, each also gzip-compressed:
//!
//! * an OCI image layout in a tar (`oci-layout`, `index.json`, `blobs/sha256/`), including
//!   the combined form Reposure's own archives use: the manifest is pushed with its exact
//!   bytes, so the image keeps its manifest and layer digests;
//! * a Docker archive (`manifest.json` with `Config`, `RepoTags`, `Layers`): the legacy
//!   `docker save` layout (`<id>/layer.tar`) and the go-containerregistry tarball
//!   (`sha256:<hex>` config, `<hex>.tar.gz` layers). A Docker schema-2 manifest is made for
//!   it; layers are pushed as they are (no recompression).
//!
//! An archive may hold several images (`docker save a b`, a layout with several tagged
//! manifests). The one pushed is the one named like the target (its `RepoTags`, or its
//! `org.opencontainers.image.ref.name`): `HOST/myrepo/myimage:v1` or `myrepo/myimage:v1`
//! for `myrepo/myimage:v1`, where any registry host is ignored. An archive of one image is
//! pushed whatever it names; with several and none named so, nothing is pushed and the
//! error lists what the archive holds.
//!
//! Anything else, a tar that is not an image archive included, is not an archive here and
//! is stored as a file by the caller.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::ByteStream;
use crate::digest::Digest;
use crate::error::{RegistryError, Result};
use crate::formats::manifest::{
    Descriptor, IndexManifest, MAX_MANIFEST_SIZE, ManifestKind, StoredManifest, media_type_of,
};
use crate::formats::media_types as mt;
use crate::formats::tar_probe;
use crate::names::Reference;
use crate::operations::Registry;
use crate::scratch::Scratch;

/// A gzip archive may expand to at most this many times its size (plus
/// [`GZIP_EXPANSION_SLACK`]) before it is refused: image layers compress 2-10x, while a
/// gzip bomb expands a thousandfold.
const GZIP_EXPANSION_LIMIT: u64 = 64;
const GZIP_EXPANSION_SLACK: u64 = 64 * 1024 * 1024;

/// Largest JSON document read from an archive: a manifest's limit
/// ([`MAX_MANIFEST_SIZE`]) serves for the index and Docker's `manifest.json` too.
const MAX_DOCUMENT: u64 = MAX_MANIFEST_SIZE as u64;

/// Chunk size when streaming a blob out of the archive.
const READ_CHUNK: usize = 1024 * 1024;

/// Where a file is inside the tar.
#[derive(Debug, Clone, Copy)]
struct Region {
    offset: u64,
    size: u64,
}

/// An archive's regular files by normalised path.
struct TarIndex {
    path: PathBuf,
    files: HashMap<String, Region>,
}

/// `./a//b` and `a/b` name the same file.
fn normalise(path: &Path) -> String {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(part) => part.to_str(),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl TarIndex {
    /// Indexes the tar at `path`; `None` if it is not a tar.
    fn read(path: &Path) -> Result<Option<Self>> {
        let mut file = std::fs::File::open(path)?;
        let mut first = [0u8; 512];
        if file.read_exact(&mut first).is_err()
            || tar_probe::probe(&first, false) == tar_probe::TarProbe::NotTar
        {
            return Ok(None);
        }
        file.seek(SeekFrom::Start(0))?;
        let length = file.metadata()?.len();
        let mut archive = tar::Archive::new(file);
        let mut files = HashMap::new();
        let mut links = Vec::new();
        let corrupt = |e: std::io::Error| {
            RegistryError::Rejected(format!("the image archive is not a valid tar: {e}"))
        };
        for entry in archive.entries_with_seek().map_err(corrupt)? {
            let entry = entry.map_err(corrupt)?;
            let name = normalise(&entry.path().map_err(corrupt)?);
            let kind = entry.header().entry_type();
            if kind.is_file() {
                let region = Region {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                };
                // Seeking past the data cannot notice the archive ending inside it.
                if region.offset.saturating_add(region.size) > length {
                    return Err(RegistryError::Rejected(format!(
                        "the image archive is truncated: {name} needs {} bytes, the archive ends {} bytes into it; nothing was pushed",
                        region.size,
                        length.saturating_sub(region.offset)
                    )));
                }
                files.insert(name, region);
            } else if kind.is_symlink() || kind.is_hard_link() {
                // `docker save` links a layer it already wrote (`<id>/layer.tar ->
                // ../<other>/layer.tar`).
                if let Some(target) = entry.link_name().map_err(corrupt)? {
                    let base = if kind.is_symlink() {
                        Path::new(&name)
                            .parent()
                            .unwrap_or(Path::new(""))
                            .join(target)
                    } else {
                        target.into_owned()
                    };
                    links.push((name, base));
                }
            }
        }
        for (name, target) in links {
            let mut resolved = Vec::new();
            for part in target.components() {
                match part {
                    Component::ParentDir => {
                        resolved.pop();
                    }
                    Component::Normal(p) => resolved.push(p.to_string_lossy().into_owned()),
                    _ => {}
                }
            }
            if let Some(region) = files.get(&resolved.join("/")).copied() {
                files.insert(name, region);
            }
        }
        Ok(Some(Self {
            path: path.to_owned(),
            files,
        }))
    }

    fn region(&self, name: &str) -> Result<Region> {
        self.files
            .get(&normalise(Path::new(name)))
            .copied()
            .ok_or_else(|| {
                RegistryError::Rejected(format!(
                    "the image archive names {name}, which it does not contain"
                ))
            })
    }

    fn document(&self, name: &str) -> Result<Vec<u8>> {
        let region = self.region(name)?;
        if region.size > MAX_DOCUMENT {
            return Err(RegistryError::Rejected(format!(
                "{name} in the image archive is too large (over 4 MiB, more than registries accept); nothing was pushed"
            )));
        }
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(region.offset))?;
        let mut bytes = vec![0u8; region.size as usize];
        file.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    fn head(&self, name: &str, len: usize) -> Result<Vec<u8>> {
        let region = self.region(name)?;
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(region.offset))?;
        let mut bytes = vec![0u8; len.min(region.size as usize)];
        file.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    async fn stream(&self, name: &str) -> Result<(ByteStream, u64)> {
        let region = self.region(name)?;
        let mut file = tokio::fs::File::open(&self.path).await?;
        file.seek(SeekFrom::Start(region.offset)).await?;
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file.take(region.size), READ_CHUNK)
                .map(|r| r.map_err(RegistryError::from))
                .boxed();
        Ok((stream, region.size))
    }

    async fn digest_of(&self, name: &str) -> Result<Digest> {
        let (mut stream, _) = self.stream(name).await?;
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        while let Some(chunk) = stream.next().await {
            sha2::Digest::update(&mut hasher, &chunk?);
        }
        Ok(Digest::from_hasher(hasher))
    }
}

/// Pushes the image archive at `path` as `repository:tag`. Answers `None` when the file is
/// not an image archive; a gzip file is decompressed into `scratch` first.
pub async fn push_archive(
    registry: &dyn Registry,
    repository: &str,
    tag: &str,
    path: &Path,
    scratch: &Path,
) -> Result<Option<Digest>> {
    let mut magic = [0u8; 2];
    let is_gzip =
        std::fs::File::open(path)?.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let decompressed = if is_gzip {
        match gunzip_to(path, scratch)? {
            Some(file) => Some(file),
            None => return Ok(None),
        }
    } else {
        None
    };
    let tar_path = decompressed
        .as_ref()
        .map_or_else(|| path.to_owned(), Scratch::path);
    let Some(index) = tokio::task::block_in_place(|| TarIndex::read(&tar_path))? else {
        return Ok(None);
    };
    if index.files.contains_key("index.json") && index.files.contains_key("oci-layout") {
        return push_layout(registry, repository, tag, &index)
            .await
            .map(Some);
    }
    if index.files.contains_key("manifest.json") {
        return push_docker(registry, repository, tag, &index)
            .await
            .map(Some);
    }
    Ok(None)
}

/// Decompresses `path` into a temporary file in `scratch`, bounded against gzip bombs.
/// `None` when it is not valid gzip (it is then stored as a file).
fn gunzip_to(path: &Path, scratch: &Path) -> Result<Option<Scratch>> {
    let compressed = std::fs::metadata(path)?.len();
    let limit = compressed.saturating_mul(GZIP_EXPANSION_LIMIT) + GZIP_EXPANSION_SLACK;
    let output = Scratch::new_in(scratch)?;
    let decoder =
        flate2::read::MultiGzDecoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
    let mut limited = decoder.take(limit + 1);
    let copied = match std::io::copy(&mut limited, &mut output.file()) {
        Ok(copied) => copied,
        // Nothing decodes: not gzip after all, so a plain file.
        Err(_) if output.file().metadata()?.len() == 0 => return Ok(None),
        Err(e) => {
            return Err(RegistryError::Rejected(format!(
                "the gzip archive is corrupt ({e}); nothing was pushed"
            )));
        }
    };
    if copied > limit {
        return Err(RegistryError::Rejected(format!(
            "the gzip archive expands past {limit} bytes ({GZIP_EXPANSION_LIMIT} times its size); refusing it as a likely gzip bomb"
        )));
    }
    Ok(Some(output))
}

async fn push_blob(
    registry: &dyn Registry,
    repository: &str,
    index: &TarIndex,
    name: &str,
    descriptor: &Descriptor,
) -> Result<()> {
    let (stream, size) = index.stream(name).await?;
    if size != descriptor.size {
        return Err(RegistryError::Rejected(format!(
            "{name} has {size} bytes, its descriptor says {}",
            descriptor.size
        )));
    }
    registry.put_blob(repository, descriptor, stream).await
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn stored(index: &TarIndex, descriptor: &Descriptor) -> Result<StoredManifest> {
    let bytes = index.document(&blob_path(&descriptor.digest))?;
    let digest = Digest::of(&bytes);
    if digest != descriptor.digest {
        return Err(RegistryError::Corrupt(format!(
            "manifest {} in the archive has digest {digest}",
            descriptor.digest
        )));
    }
    Ok(StoredManifest {
        media_type: media_type_of(&bytes)?,
        bytes: Bytes::from(bytes),
        digest,
    })
}

/// Pushes an image manifest's blobs, then the manifest under `reference`.
async fn push_image_manifest(
    registry: &dyn Registry,
    repository: &str,
    index: &TarIndex,
    manifest: &StoredManifest,
    reference: &Reference,
) -> Result<()> {
    let ManifestKind::Image(image) = crate::formats::manifest::parse(manifest)? else {
        return Err(RegistryError::Unsupported(
            "nested image indexes in an archive".into(),
        ));
    };
    for blob in std::iter::once(&image.config).chain(image.layers.iter()) {
        push_blob(registry, repository, index, &blob_path(&blob.digest), blob).await?;
    }
    registry.put_manifest(repository, reference, manifest).await
}

async fn push_layout(
    registry: &dyn Registry,
    repository: &str,
    tag: &str,
    index: &TarIndex,
) -> Result<Digest> {
    let top: IndexManifest = serde_json::from_slice(&index.document("index.json")?)
        .map_err(|e| RegistryError::Rejected(format!("index.json of the archive: {e}")))?;
    if top.manifests.is_empty() {
        return Err(RegistryError::Rejected(
            "the archive's index.json lists no image".into(),
        ));
    }
    let root = choose(&top.manifests, repository, tag, |descriptor| {
        descriptor
            .annotation(mt::ANNOTATION_REF_NAME)
            .map(|name| vec![name.to_owned()])
            .unwrap_or_default()
    })?;
    let manifest = stored(index, root)?;
    let tag_reference = Reference::Tag(tag.to_owned());
    match crate::formats::manifest::parse(&manifest)? {
        ManifestKind::Image(_) => {
            push_image_manifest(registry, repository, index, &manifest, &tag_reference).await?
        }
        ManifestKind::Index => {
            let children: IndexManifest = serde_json::from_slice(&manifest.bytes)
                .map_err(|e| RegistryError::Rejected(format!("image index in the archive: {e}")))?;
            for child in &children.manifests {
                let child_manifest = stored(index, child)?;
                let by_digest = Reference::Digest(child_manifest.digest.clone());
                push_image_manifest(registry, repository, index, &child_manifest, &by_digest)
                    .await?;
            }
            registry
                .put_manifest(repository, &tag_reference, &manifest)
                .await?;
        }
    }
    Ok(manifest.digest)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// Whether an image named `name` in an archive (`[HOST/]PATH[:TAG]`, or a bare tag as an
/// OCI layout's `ref.name` may be) is the one to push as `repository:tag`.
fn names_target(name: &str, repository: &str, tag: &str) -> bool {
    let name = name.split('@').next().unwrap_or(name);
    let (path, name_tag) = match name.rsplit_once(':') {
        Some((path, name_tag)) if !name_tag.contains('/') => (path, name_tag),
        _ => (name, "latest"),
    };
    if !name.contains('/') && !name.contains(':') {
        // A bare tag (an OCI layout's `ref.name`), or a bare repository name.
        return name == tag || (name == repository && tag == "latest");
    }
    let mut segments: Vec<&str> = path.split('/').collect();
    let first = segments[0];
    if segments.len() > 1 && (first.contains(['.', ':']) || first == "localhost") {
        segments.remove(0);
    }
    let path = segments.join("/");
    name_tag == tag && (path == repository || path.strip_prefix("library/") == Some(repository))
}

/// The one of an archive's images to push as `repository:tag`.
fn choose<'a, T>(
    images: &'a [T],
    repository: &str,
    tag: &str,
    names: impl Fn(&T) -> Vec<String>,
) -> Result<&'a T> {
    if let [only] = images {
        return Ok(only);
    }
    let matching: Vec<&T> = images
        .iter()
        .filter(|image| {
            names(image)
                .iter()
                .any(|n| names_target(n, repository, tag))
        })
        .collect();
    match matching[..] {
        [one] => Ok(one),
        _ => {
            let held: Vec<String> = images
                .iter()
                .map(|image| match names(image)[..] {
                    [] => "(an image with no name)".to_owned(),
                    ref named => named.join(" "),
                })
                .collect();
            Err(RegistryError::Rejected(format!(
                "the archive holds {} images ({}), {} named {repository}:{tag}; push it under the name of the one you mean, or save one image per archive; nothing was pushed",
                images.len(),
                held.join(", "),
                if matching.is_empty() {
                    "none"
                } else {
                    "more than one"
                },
            )))
        }
    }
}

async fn push_docker(
    registry: &dyn Registry,
    repository: &str,
    tag: &str,
    index: &TarIndex,
) -> Result<Digest> {
    let entries: Vec<DockerEntry> = serde_json::from_slice(&index.document("manifest.json")?)
        .map_err(|e| RegistryError::Rejected(format!("manifest.json of the archive: {e}")))?;
    if entries.is_empty() {
        return Err(RegistryError::Rejected(
            "the archive's manifest.json lists no image".into(),
        ));
    }
    let entry = choose(&entries, repository, tag, |entry| {
        entry.repo_tags.clone().unwrap_or_default()
    })?;
    let config_bytes = index.document(&entry.config)?;
    let config = Descriptor::of(mt::DOCKER_CONFIG, &config_bytes);
    push_blob(registry, repository, index, &entry.config, &config).await?;
    let mut layers = Vec::new();
    for layer in &entry.layers {
        let compressed = index.head(layer, 2)? == [0x1f, 0x8b];
        let digest = index.digest_of(layer).await?;
        let descriptor = Descriptor {
            media_type: if compressed {
                mt::DOCKER_LAYER_TAR_GZIP
            } else {
                mt::DOCKER_LAYER_TAR
            }
            .to_owned(),
            digest,
            size: index.region(layer)?.size,
            artifact_type: None,
            annotations: None,
            platform: None,
        };
        push_blob(registry, repository, index, layer, &descriptor).await?;
        layers.push(descriptor);
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt::DOCKER_MANIFEST,
        "config": config,
        "layers": layers,
    }))
    .expect("manifest serialises");
    let manifest = StoredManifest {
        digest: Digest::of(&manifest),
        bytes: Bytes::from(manifest),
        media_type: mt::DOCKER_MANIFEST.to_owned(),
    };
    registry
        .put_manifest(repository, &Reference::Tag(tag.to_owned()), &manifest)
        .await?;
    Ok(manifest.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_match_the_target_whatever_the_host() {
        for name in [
            "10.96.0.12:5000/myrepo/myimage:v1",
            "localhost/myrepo/myimage:v1",
            "registry.example.com/myrepo/myimage:v1",
            "myrepo/myimage:v1",
        ] {
            assert!(names_target(name, "myrepo/myimage", "v1"), "{name}");
        }
        assert!(names_target("docker.io/library/alpine:3", "alpine", "3"));
        assert!(names_target("localhost:5000/tool", "tool", "latest"));
        assert!(names_target("v1", "anything", "v1"), "an OCI ref.name tag");
        for name in [
            "myrepo/myimage:v2",
            "other/myimage:v1",
            "myrepo/myimage",
            "v2",
        ] {
            assert!(!names_target(name, "myrepo/myimage", "v1"), "{name}");
        }
    }

    #[test]
    fn one_of_several_images_is_chosen_by_name_or_none_is() {
        let images = vec![
            vec!["localhost/web:1".to_owned()],
            vec![
                "localhost/db:1".to_owned(),
                "localhost/db:stable".to_owned(),
            ],
            vec![],
        ];
        let names = |image: &Vec<String>| image.clone();
        let chosen = choose(&images, "db", "stable", names).unwrap();
        assert_eq!(chosen, &images[1]);
        let refused = choose(&images, "cache", "1", names)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("holds 3 images")
                && refused.contains("localhost/web:1")
                && refused.contains("localhost/db:1 localhost/db:stable")
                && refused.contains("(an image with no name)")
                && refused.contains("none named cache:1"),
            "{refused}"
        );
        let single = vec![vec!["localhost/web:1".to_owned()]];
        assert_eq!(
            choose(&single, "elsewhere", "x", names).unwrap(),
            &single[0],
            "an archive of one image is pushed whatever it names"
        );
    }
}
