//! An in-memory store with request counters, for tests of everything above the store.
//!
//! It behaves like distribution 2.8 where that matters to callers (tags listed unsorted,
//! a repository stays after its last tag goes, manifest pushes need their blobs) and its
//! tag-deletion behaviour can be set to each of the three kinds registries show.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::Store;
use crate::ByteStream;
use crate::digest::Digest;
use crate::error::{RegistryError, Result};
use crate::formats::manifest::StoredManifest;
use crate::names::Reference;

/// How the store answers a tag deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TagDeletion {
    /// Deletes the tag (distribution 3).
    Supported,
    /// Refuses, so callers must fall back (distribution 2.x).
    #[default]
    Unsupported,
    /// All deletion is off (HTTP 405).
    Disabled,
}

/// How many requests of each kind the store has answered.
#[derive(Debug, Default)]
pub struct RequestCounts {
    pub list_repositories: AtomicU64,
    pub list_tags: AtomicU64,
    pub get_manifest: AtomicU64,
    pub get_blob: AtomicU64,
    /// Bytes returned by `get_blob`, to check that ranged reads fetch only what they need.
    pub blob_bytes_read: AtomicU64,
    pub put_blob: AtomicU64,
    pub put_manifest: AtomicU64,
    pub delete: AtomicU64,
}

impl RequestCounts {
    /// One counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Repository {
    tags: HashMap<String, Digest>,
    manifests: HashMap<Digest, StoredManifest>,
}

/// An in-memory registry.
#[derive(Default)]
pub struct MemoryStore {
    repositories: Mutex<BTreeMap<String, Repository>>,
    blobs: Mutex<HashMap<Digest, Bytes>>,
    tag_deletion: TagDeletion,
    /// Counters of the requests answered so far.
    pub counts: RequestCounts,
}

impl MemoryStore {
    /// An empty store with the given tag-deletion behaviour.
    pub fn new(tag_deletion: TagDeletion) -> Self {
        Self {
            tag_deletion,
            ..Default::default()
        }
    }

    /// Replaces a stored blob's bytes without changing its digest, to test corruption.
    pub fn corrupt_blob(&self, digest: &Digest, bytes: Bytes) {
        self.blobs
            .lock()
            .expect("lock")
            .insert(digest.clone(), bytes);
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }

    async fn list_repositories(&self) -> Result<Vec<String>> {
        Self::count(&self.counts.list_repositories);
        Ok(self
            .repositories
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect())
    }

    async fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        Self::count(&self.counts.list_tags);
        let repositories = self.repositories.lock().expect("lock");
        Ok(repositories
            .get(repository)
            .map(|r| r.tags.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn get_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        Self::count(&self.counts.get_manifest);
        let repositories = self.repositories.lock().expect("lock");
        let not_found = || RegistryError::NotFound(format!("{repository}:{reference}"));
        let repo = repositories.get(repository).ok_or_else(not_found)?;
        let digest = match reference {
            Reference::Tag(tag) => repo.tags.get(tag).ok_or_else(not_found)?,
            Reference::Digest(d) => d,
        };
        repo.manifests.get(digest).cloned().ok_or_else(not_found)
    }

    async fn blob_size(&self, _repository: &str, digest: &Digest) -> Result<u64> {
        self.blobs
            .lock()
            .expect("lock")
            .get(digest)
            .map(|blob| blob.len() as u64)
            .ok_or_else(|| RegistryError::NotFound(format!("blob {digest}")))
    }

    async fn get_blob(
        &self,
        _repository: &str,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream> {
        Self::count(&self.counts.get_blob);
        let blob = self
            .blobs
            .lock()
            .expect("lock")
            .get(digest)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(format!("blob {digest}")))?;
        let start = (offset as usize).min(blob.len());
        let end = start
            .saturating_add(usize::try_from(length).unwrap_or(usize::MAX))
            .min(blob.len());
        let slice = blob.slice(start..end);
        self.counts
            .blob_bytes_read
            .fetch_add(slice.len() as u64, Ordering::Relaxed);
        // Chunks of 64 KiB, so that consumers see a stream as they would from a network.
        let chunks: Vec<Result<Bytes>> = (0..slice.len())
            .step_by(64 * 1024)
            .map(|i| Ok(slice.slice(i..(i + 64 * 1024).min(slice.len()))))
            .collect();
        Ok(futures::stream::iter(chunks).boxed())
    }

    async fn put_blob(&self, _repository: &str, mut body: ByteStream) -> Result<(Digest, u64)> {
        Self::count(&self.counts.put_blob);
        let mut buffer = BytesMut::new();
        while let Some(chunk) = body.next().await {
            buffer.extend_from_slice(&chunk?);
        }
        let bytes = buffer.freeze();
        let digest = Digest::of(&bytes);
        let size = bytes.len() as u64;
        self.blobs
            .lock()
            .expect("lock")
            .insert(digest.clone(), bytes);
        Ok((digest, size))
    }

    async fn put_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        manifest: &StoredManifest,
    ) -> Result<()> {
        Self::count(&self.counts.put_manifest);
        let parsed: serde_json::Value = serde_json::from_slice(&manifest.bytes)
            .map_err(|e| RegistryError::Rejected(format!("manifest is not JSON: {e}")))?;
        let blobs = self.blobs.lock().expect("lock");
        let referenced = parsed.get("config").into_iter().chain(
            parsed
                .get("layers")
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten(),
        );
        for descriptor in referenced {
            let digest = Digest::parse(
                descriptor
                    .get("digest")
                    .and_then(|d| d.as_str())
                    .unwrap_or_default(),
            )?;
            if !blobs.contains_key(&digest) {
                return Err(RegistryError::Rejected(format!(
                    "MANIFEST_BLOB_UNKNOWN {digest}"
                )));
            }
        }
        drop(blobs);
        let mut repositories = self.repositories.lock().expect("lock");
        let repo = repositories.entry(repository.to_owned()).or_default();
        repo.manifests
            .insert(manifest.digest.clone(), manifest.clone());
        if let Reference::Tag(tag) = reference {
            repo.tags.insert(tag.to_owned(), manifest.digest.clone());
        }
        Ok(())
    }

    async fn mount_blob(&self, _repository: &str, _from: &str, digest: &Digest) -> Result<bool> {
        // Blobs are shared by every repository here.
        Ok(self.blobs.lock().expect("lock").contains_key(digest))
    }

    async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()> {
        Self::count(&self.counts.delete);
        match self.tag_deletion {
            TagDeletion::Disabled => return Err(RegistryError::DeleteDisabled),
            TagDeletion::Unsupported => return Err(RegistryError::TagDeleteUnsupported),
            TagDeletion::Supported => {}
        }
        let mut repositories = self.repositories.lock().expect("lock");
        repositories
            .get_mut(repository)
            .and_then(|r| r.tags.remove(tag))
            .map(|_| ())
            .ok_or_else(|| RegistryError::NotFound(format!("{repository}:{tag}")))
    }

    async fn delete_manifest(&self, repository: &str, digest: &Digest) -> Result<()> {
        Self::count(&self.counts.delete);
        if self.tag_deletion == TagDeletion::Disabled {
            return Err(RegistryError::DeleteDisabled);
        }
        let mut repositories = self.repositories.lock().expect("lock");
        let repo = repositories
            .get_mut(repository)
            .ok_or_else(|| RegistryError::NotFound(repository.to_owned()))?;
        repo.manifests
            .remove(digest)
            .ok_or_else(|| RegistryError::NotFound(format!("{repository}@{digest}")))?;
        repo.tags.retain(|_, d| d != digest);
        Ok(())
    }
}
