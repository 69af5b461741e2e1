//! A store wrapper that injects failures, for testing that failures are reported and leave
//! nothing half-done.

use std::sync::Arc;
use std::sync::Mutex;

use async_trait::async_trait;
use futures::StreamExt;

use super::Store;
use crate::ByteStream;
use crate::digest::Digest;
use crate::error::{RegistryError, Result};
use crate::formats::manifest::StoredManifest;
use crate::names::Reference;

/// Which operations fail.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Blob uploads fail after this many bytes have been read from the body.
    pub put_blob_fails_after: Option<u64>,
    /// Manifest uploads fail (as a registry 500 would).
    pub put_manifest_fails: bool,
    /// Blob reads fail (as a dropped connection would).
    pub get_blob_fails: bool,
}

/// Wraps a store and fails where [`Faults`] says.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: Mutex<Faults>,
}

impl FaultyStore {
    /// Wraps `inner` with no faults set.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            faults: Mutex::default(),
        }
    }

    /// Replaces the faults.
    pub fn set(&self, faults: Faults) {
        *self.faults.lock().expect("faults lock") = faults;
    }

    fn faults(&self) -> Faults {
        self.faults.lock().expect("faults lock").clone()
    }
}

fn injected(what: &str) -> RegistryError {
    RegistryError::Unavailable(format!("injected fault: {what}"))
}

#[async_trait]
impl Store for FaultyStore {
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }

    async fn list_repositories(&self) -> Result<Vec<String>> {
        self.inner.list_repositories().await
    }

    async fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        self.inner.list_tags(repository).await
    }

    async fn get_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        self.inner.get_manifest(repository, reference).await
    }

    async fn blob_size(&self, repository: &str, digest: &Digest) -> Result<u64> {
        self.inner.blob_size(repository, digest).await
    }

    async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream> {
        if self.faults().get_blob_fails {
            return Err(injected("blob read"));
        }
        self.inner
            .get_blob(repository, digest, offset, length)
            .await
    }

    async fn put_blob(&self, repository: &str, body: ByteStream) -> Result<(Digest, u64)> {
        let body = match self.faults().put_blob_fails_after {
            None => body,
            Some(limit) => {
                let mut seen = 0u64;
                body.map(move |chunk| {
                    let chunk = chunk?;
                    seen += chunk.len() as u64;
                    if seen > limit {
                        return Err(injected("connection reset during blob upload"));
                    }
                    Ok(chunk)
                })
                .boxed()
            }
        };
        self.inner.put_blob(repository, body).await
    }

    async fn put_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        manifest: &StoredManifest,
    ) -> Result<()> {
        if self.faults().put_manifest_fails {
            return Err(injected("manifest upload answered 500"));
        }
        self.inner
            .put_manifest(repository, reference, manifest)
            .await
    }

    async fn mount_blob(&self, repository: &str, from: &str, digest: &Digest) -> Result<bool> {
        self.inner.mount_blob(repository, from, digest).await
    }

    async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()> {
        self.inner.delete_tag(repository, tag).await
    }

    async fn delete_manifest(&self, repository: &str, digest: &Digest) -> Result<()> {
        self.inner.delete_manifest(repository, digest).await
    }
}
