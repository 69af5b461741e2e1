//! The operations a filesystem needs of a registry, and their one implementation over a
//! [`Store`](crate::store::Store).
//!
//! [`Registry`] is at the level of filesystem operations (list, resolve a name to a file,
//! read a range of that file, push a file, retag, delete a tag) rather than HTTP calls: a
//! surrogate session carries exactly these operations, one request each.
//! [`StoreRegistry`] implements them over any store with the format rules of
//! [`crate::formats`]:
//!
//! * [`probe`]: where a single file sits inside an image's layer;
//! * [`streams`]: gzip decoding and windows of streams;
//! * [`store_registry`]: the implementation, including images read as archives.

pub mod probe;
pub mod store_registry;
pub mod streams;

use std::time::SystemTime;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use store_registry::StoreRegistry;

use crate::ByteStream;
use crate::digest::Digest;
use crate::error::Result;
use crate::formats::manifest::{Descriptor, Platform, StoredManifest};
use crate::formats::single_file::PushFormat;
use crate::names::Reference;

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

/// Where a file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileContent {
    /// `length` bytes at `offset` of the (decoded) blob.
    Blob {
        blob: BlobRef,
        encoding: Encoding,
        offset: u64,
        length: u64,
    },
    /// The image `manifest` as an archive ([`crate::formats::archive`]) of `length` bytes,
    /// naming the image `reference` (`repository:tag`) inside.
    Archive {
        manifest: Digest,
        reference: Option<String>,
        length: u64,
    },
}

impl FileContent {
    /// The file's length.
    pub fn length(&self) -> u64 {
        match self {
            FileContent::Blob { length, .. } | FileContent::Archive { length, .. } => *length,
        }
    }

    /// Checks that a file's place in its blob makes sense, as a session's request may say
    /// anything: its end must be a number, and inside the blob when the blob is the bytes
    /// as stored.
    pub fn check(&self) -> Result<()> {
        let FileContent::Blob {
            blob,
            encoding,
            offset,
            length,
        } = self
        else {
            return Ok(());
        };
        match (offset.checked_add(*length), encoding) {
            (Some(end), Encoding::Identity) if end <= blob.size => Ok(()),
            (Some(_), Encoding::Gzip) => Ok(()),
            _ => Err(crate::RegistryError::Rejected(format!(
                "{length} bytes at {offset} are not within blob {} of {} bytes",
                blob.digest, blob.size
            ))),
        }
    }
}

/// A file's mode and modification time, as a single-file image carries them: the tar
/// header of its layer (what skopeo, umoci and container runtimes extract), and for the
/// nanoseconds a layer annotation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAttributes {
    /// Permission bits (`0o7777` at most); `None` where the image records none (an
    /// artifact written by another tool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// When the file was last modified; `None` where the image records no such time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<SystemTime>,
}

/// The mode a pushed file gets when none is given.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// A resolved reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The manifest digest the reference resolved to.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// The single file the image holds, or why it holds none.
    pub file: std::result::Result<FileContent, String>,
    /// The image as an archive.
    pub archive: FileContent,
    /// When the image was created (annotation, or config), if it says.
    pub created: Option<SystemTime>,
    /// The single file's mode and time, as far as the image records them.
    #[serde(default)]
    pub attributes: FileAttributes,
}

impl ImageInfo {
    /// What the image reads as: its file when it holds one and `unpack` is on, else its
    /// archive.
    pub fn content(&self, unpack: bool) -> &FileContent {
        match &self.file {
            Ok(file) if unpack => file,
            _ => &self.archive,
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
    /// The file's mode (default [`DEFAULT_FILE_MODE`]) and time (default: `created`).
    pub attributes: FileAttributes,
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
    /// Resolves a tag or digest to its manifest digest and how it reads. With `platform`, a
    /// multi-platform image resolves to its image for that platform (named, in its archive,
    /// as the reference was); without, it reads as the archive of every platform.
    async fn resolve(
        &self,
        repository: &str,
        reference: &Reference,
        platform: Option<&Platform>,
    ) -> Result<ImageInfo>;
    /// Reads `length` bytes of a file from `offset`. A read of a whole blob is verified
    /// against its digest: its stream ends in an error if the content is corrupt.
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
    /// A manifest as stored (its exact bytes).
    async fn get_manifest(&self, repository: &str, reference: &Reference)
    -> Result<StoredManifest>;
    /// Uploads a blob that must match `expected` (digest and size), or fails storing nothing.
    async fn put_blob(
        &self,
        repository: &str,
        expected: &Descriptor,
        body: ByteStream,
    ) -> Result<()>;
    /// Stores a manifest under a tag or its digest; its blobs must be stored already.
    async fn put_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        manifest: &StoredManifest,
    ) -> Result<()>;
    /// Puts the manifest `from` points at under `to_repository:to_tag` (one manifest
    /// write: readers see the old or the new image, never a mix). Across repositories the
    /// blobs are mounted, so no blob bytes pass through the client where the registry can.
    async fn tag(
        &self,
        from_repository: &str,
        from: &Reference,
        to_repository: &str,
        to_tag: &str,
    ) -> Result<Digest>;
}
