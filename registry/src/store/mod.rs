//! A registry at the level of manifests and blobs.
//!
//! [`Store`] is the narrow waist between the format logic (in [`crate::operations`]) and the
//! places images live. Every implementation answers the same questions with the same
//! errors, so the format logic is written once and tested against [`memory::MemoryStore`].

#[cfg(any(test, feature = "testing"))]
pub mod faulty;
pub mod http;
pub mod layout;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod watchdog;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::ByteStream;
use crate::digest::Digest;
use crate::error::Result;
use crate::formats::manifest::StoredManifest;
use crate::names::Reference;

/// Manifests, blobs and names, as a registry stores them.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Where this store is, for logs and `/proc/mounts` (never includes credentials).
    fn describe(&self) -> String;

    /// Checks that the store can be used at all (reachable, credentials accepted).
    async fn check(&self) -> Result<()>;

    /// Every repository name, in any order.
    async fn list_repositories(&self) -> Result<Vec<String>>;

    /// Every tag of a repository, in any order; empty when the repository has none left.
    async fn list_tags(&self, repository: &str) -> Result<Vec<String>>;

    /// One manifest, by tag or digest.
    async fn get_manifest(&self, repository: &str, reference: &Reference)
    -> Result<StoredManifest>;

    /// The size of a blob, or [`crate::RegistryError::NotFound`].
    async fn blob_size(&self, repository: &str, digest: &Digest) -> Result<u64>;

    /// At most `length` bytes of a blob starting at `offset` (never more, whatever the
    /// store sends).
    async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream>;

    /// Uploads a blob, computing its digest while it streams; returns digest and size. A
    /// stream that ends in an error leaves no blob behind.
    async fn put_blob(&self, repository: &str, body: ByteStream) -> Result<(Digest, u64)>;

    /// Uploads a blob held in memory. Its digest is known before the upload, which lets a
    /// store send it in fewer requests than a stream.
    async fn put_blob_bytes(&self, repository: &str, bytes: Bytes) -> Result<(Digest, u64)> {
        let body = futures::stream::once(async move { Ok(bytes) }).boxed();
        self.put_blob(repository, body).await
    }

    /// Stores a manifest under a tag, or by its digest alone. Every blob it references must
    /// already be stored.
    async fn put_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        manifest: &StoredManifest,
    ) -> Result<()>;

    /// Makes blob `digest` of `from` available in `repository` without moving its bytes, if
    /// the store can; `false` means the caller must copy it.
    async fn mount_blob(&self, repository: &str, from: &str, digest: &Digest) -> Result<bool>;

    /// Removes one tag. Stores that cannot (distribution 2.x) answer
    /// [`crate::RegistryError::TagDeleteUnsupported`] and the caller falls back.
    async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()>;

    /// Removes a manifest and every tag that points at it.
    async fn delete_manifest(&self, repository: &str, digest: &Digest) -> Result<()>;
}
