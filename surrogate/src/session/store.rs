//! A [`Store`] reached through a surrogate session: what `reposure registry serve` serves
//! the distribution API over when the registry is inside a cluster (or behind `exec:`).
//!
//! Each operation is one request of the `/v1/store/*` routes (or of the `Registry` routes
//! where those do the same), on the [`SessionClient`]'s session, which is opened again after
//! it is lost: an operation in flight then fails, the next one works. Blob transfers carry
//! the session's end markers both ways, so a cut session never passes for a whole blob:
//! a read ends in an error, and an upload is never completed by the surrogate.

use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderValue, Method};
use reposure_registry::ByteStream;
use reposure_registry::digest::Digest;
use reposure_registry::error::{RegistryError, Result};
use reposure_registry::formats::manifest::StoredManifest;
use reposure_registry::names::Reference;
use reposure_registry::operations::Registry;
use reposure_registry::store::Store;

use super::STORE_PROTOCOL;
use super::client::{SessionClient, json_body, push_body, request};
use super::wire::*;

/// The store behind a surrogate, through a session.
pub struct SessionStore {
    client: Arc<SessionClient>,
}

impl SessionStore {
    pub fn new(client: Arc<SessionClient>) -> Self {
        Self { client }
    }
}

#[async_trait]
impl Store for SessionStore {
    fn describe(&self) -> String {
        self.client.describe()
    }

    /// The registry answers, and the surrogate has the store routes.
    async fn check(&self) -> Result<()> {
        self.client.check().await?;
        let protocol = self.client.protocol().await?;
        if protocol < STORE_PROTOCOL {
            return Err(RegistryError::Unsupported(format!(
                "{} speaks session protocol {protocol}, without the store routes `registry serve` needs (protocol {STORE_PROTOCOL}): update its surrogate (reposure operator install)",
                self.client.describe()
            )));
        }
        Ok(())
    }

    async fn list_repositories(&self) -> Result<Vec<String>> {
        self.client.list_repositories().await
    }

    async fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        self.client.call(route::STORE_TAGS, &repository).await
    }

    async fn get_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        self.client.get_manifest(repository, reference).await
    }

    async fn blob_size(&self, repository: &str, digest: &Digest) -> Result<u64> {
        let body = BlobRequest {
            repository: repository.to_owned(),
            digest: digest.clone(),
        };
        self.client.call(route::STORE_BLOB_SIZE, &body).await
    }

    async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream> {
        let body = BlobGetRequest {
            repository: repository.to_owned(),
            digest: digest.clone(),
            offset,
            length,
        };
        self.client.stream(route::STORE_BLOB_GET, &body).await
    }

    async fn put_blob(&self, repository: &str, body: ByteStream) -> Result<(Digest, u64)> {
        let header = serde_json::to_string(repository).expect("requests serialise");
        let mut request = request(Method::POST, route::STORE_BLOB_UPLOAD, push_body(body));
        request.headers_mut().insert(
            HEADER_UPLOAD,
            HeaderValue::from_str(&header)
                .map_err(|_| RegistryError::invalid_name(repository, "names must be ASCII"))?,
        );
        let answer: UploadResponse = json_body(self.client.send(request).await?).await?;
        Ok((answer.digest, answer.size))
    }

    async fn put_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        manifest: &StoredManifest,
    ) -> Result<()> {
        self.client
            .put_manifest(repository, reference, manifest)
            .await
    }

    async fn mount_blob(&self, repository: &str, from: &str, digest: &Digest) -> Result<bool> {
        let body = MountRequest {
            repository: repository.to_owned(),
            from: from.to_owned(),
            digest: digest.clone(),
        };
        self.client.call(route::STORE_BLOB_MOUNT, &body).await
    }

    /// Deletes exactly the tag, as the surrogate's registry can (with the fallback of
    /// distribution 2.x there): never [`RegistryError::TagDeleteUnsupported`].
    async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()> {
        self.client.delete_tag(repository, tag).await
    }

    async fn delete_manifest(&self, repository: &str, digest: &Digest) -> Result<()> {
        let body = BlobRequest {
            repository: repository.to_owned(),
            digest: digest.clone(),
        };
        self.client.call(route::STORE_MANIFEST_DELETE, &body).await
    }
}
