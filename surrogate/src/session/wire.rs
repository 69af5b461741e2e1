//! What the two ends of a session exchange besides raw bytes.

use serde::{Deserialize, Serialize};

use reposure_registry::error::RegistryError;
use reposure_registry::formats::manifest::Platform;
use reposure_registry::formats::single_file::PushFormat;
use reposure_registry::names::Reference;
use reposure_registry::operations::{FileAttributes, FileContent};

/// Trailer that ends every streamed response: `ok`, or the error as JSON in
/// [`TRAILER_ERROR`].
pub const TRAILER_STATUS: &str = "reposure-status";
/// Trailer with a [`WireError`] when a stream failed after it started.
pub const TRAILER_ERROR: &str = "reposure-error";
/// Request trailer of a push: the sha256 of the raw content the client sent.
pub const TRAILER_CONTENT_DIGEST: &str = "reposure-content-digest";
/// Request header of a push: the [`PushRequest`] as JSON.
pub const HEADER_PUSH: &str = "reposure-push";
/// Request header of a blob upload: the [`BlobPutRequest`] as JSON.
pub const HEADER_BLOB: &str = "reposure-blob";
/// Request header of a store blob upload: the repository, as a JSON string.
pub const HEADER_UPLOAD: &str = "reposure-upload";
/// Request header of a manifest upload: the [`ManifestPutRequest`] as JSON.
pub const HEADER_MANIFEST: &str = "reposure-manifest";
/// Answer header of a manifest download: its media type.
pub const HEADER_MEDIA_TYPE: &str = "reposure-media-type";

/// The request paths, one per `Registry` operation (`PROTOCOL.md`); `GET` for
/// [`route::HELLO`], [`route::CHECK`] and [`route::REPOSITORIES`], `POST` for the rest.
pub mod route {
    pub const HELLO: &str = "/hello";
    pub const CHECK: &str = "/v1/check";
    pub const REPOSITORIES: &str = "/v1/repositories";
    pub const TAGS: &str = "/v1/tags";
    pub const RESOLVE: &str = "/v1/resolve";
    pub const READ: &str = "/v1/read";
    pub const PUSH: &str = "/v1/push";
    pub const MANIFEST_GET: &str = "/v1/manifest/get";
    pub const MANIFEST_PUT: &str = "/v1/manifest/put";
    pub const BLOB_PUT: &str = "/v1/blob/put";
    pub const TAG: &str = "/v1/tag";
    pub const DELETE: &str = "/v1/delete";
    /// The store itself, for a distribution API served over the session
    /// (`reposure registry serve`).
    pub const STORE_TAGS: &str = "/v1/store/tags";
    pub const STORE_BLOB_SIZE: &str = "/v1/store/blob/size";
    pub const STORE_BLOB_GET: &str = "/v1/store/blob/get";
    pub const STORE_BLOB_UPLOAD: &str = "/v1/store/blob/upload";
    pub const STORE_BLOB_MOUNT: &str = "/v1/store/blob/mount";
    pub const STORE_MANIFEST_DELETE: &str = "/v1/store/manifest/delete";
}

/// The answer to `GET /hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the server speaks.
    pub protocols: Vec<u32>,
    /// The server's program and version, for diagnostics.
    pub server: String,
}

/// `POST /v1/resolve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveRequest {
    pub repository: String,
    pub reference: WireReference,
    /// The platform to pick from a multi-platform image (absent: the whole index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// A reference on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireReference {
    Tag(String),
    Digest(reposure_registry::digest::Digest),
}

impl From<&Reference> for WireReference {
    fn from(r: &Reference) -> Self {
        match r {
            Reference::Tag(t) => Self::Tag(t.clone()),
            Reference::Digest(d) => Self::Digest(d.clone()),
        }
    }
}

impl From<WireReference> for Reference {
    fn from(r: WireReference) -> Self {
        match r {
            WireReference::Tag(t) => Self::Tag(t),
            WireReference::Digest(d) => Self::Digest(d),
        }
    }
}

/// `POST /v1/read`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadRequest {
    pub repository: String,
    pub content: FileContent,
    pub offset: u64,
    pub length: u64,
}

/// `POST /v1/push` (in the [`HEADER_PUSH`] header; the body is the content).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushRequest {
    pub repository: String,
    pub tag: String,
    pub file_name: String,
    pub size: u64,
    pub format: PushFormat,
    /// The file's mode and time (absent from older clients: the defaults).
    #[serde(default)]
    pub attributes: FileAttributes,
}

/// The answer to a push.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushResponse {
    pub digest: reposure_registry::digest::Digest,
}

/// `POST /v1/manifest/get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestGetRequest {
    pub repository: String,
    pub reference: WireReference,
}

/// `POST /v1/manifest/put` (in the [`HEADER_MANIFEST`] header; the body is the manifest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestPutRequest {
    pub repository: String,
    pub reference: WireReference,
    pub media_type: String,
}

/// `POST /v1/blob/put` (in the [`HEADER_BLOB`] header; the body is the blob).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobPutRequest {
    pub repository: String,
    pub descriptor: reposure_registry::formats::manifest::Descriptor,
}

/// A blob of a repository: `POST /v1/store/blob/size`, `/v1/store/manifest/delete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobRequest {
    pub repository: String,
    pub digest: reposure_registry::digest::Digest,
}

/// `POST /v1/store/blob/get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobGetRequest {
    pub repository: String,
    pub digest: reposure_registry::digest::Digest,
    pub offset: u64,
    pub length: u64,
}

/// The answer to `POST /v1/store/blob/upload`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadResponse {
    pub digest: reposure_registry::digest::Digest,
    pub size: u64,
}

/// `POST /v1/store/blob/mount`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountRequest {
    pub repository: String,
    pub from: String,
    pub digest: reposure_registry::digest::Digest,
}

/// `POST /v1/tag`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagRequest {
    pub from_repository: String,
    pub from: WireReference,
    pub to_repository: String,
    pub to_tag: String,
}

/// `POST /v1/delete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub repository: String,
    pub tag: String,
}

/// The kind of a [`RegistryError`], which decides the errno on the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    InvalidName,
    Unauthorized,
    Denied,
    DeleteDisabled,
    Corrupt,
    Unsupported,
    Unavailable,
    UntrustedCertificate,
    Rejected,
    SizeMismatch,
    Io,
    NoCatalog,
}

/// A [`RegistryError`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl From<&RegistryError> for WireError {
    fn from(e: &RegistryError) -> Self {
        let (kind, message, name) = match e {
            RegistryError::NotFound(m) => (ErrorKind::NotFound, m.clone(), None),
            RegistryError::InvalidName { name, rule } => {
                (ErrorKind::InvalidName, rule.clone(), Some(name.clone()))
            }
            RegistryError::Unauthorized(m) => (ErrorKind::Unauthorized, m.clone(), None),
            RegistryError::Denied(m) => (ErrorKind::Denied, m.clone(), None),
            RegistryError::DeleteDisabled => (ErrorKind::DeleteDisabled, String::new(), None),
            RegistryError::TagDeleteUnsupported => (ErrorKind::Rejected, e.to_string(), None),
            RegistryError::Corrupt(m) => (ErrorKind::Corrupt, m.clone(), None),
            RegistryError::Unsupported(m) => (ErrorKind::Unsupported, m.clone(), None),
            RegistryError::Unavailable(m) => (ErrorKind::Unavailable, m.clone(), None),
            RegistryError::UntrustedCertificate(m) => {
                (ErrorKind::UntrustedCertificate, m.clone(), None)
            }
            RegistryError::NoCatalog(m) => (ErrorKind::NoCatalog, m.clone(), None),
            RegistryError::Rejected(m) | RegistryError::Usage(m) => {
                (ErrorKind::Rejected, m.clone(), None)
            }
            RegistryError::SizeMismatch { .. } => (ErrorKind::SizeMismatch, e.to_string(), None),
            RegistryError::Io(io) => (ErrorKind::Io, io.to_string(), None),
        };
        Self {
            kind,
            message,
            name,
        }
    }
}

impl From<WireError> for RegistryError {
    fn from(w: WireError) -> Self {
        match w.kind {
            ErrorKind::NotFound => Self::NotFound(w.message),
            ErrorKind::InvalidName => Self::InvalidName {
                name: w.name.unwrap_or_default(),
                rule: w.message,
            },
            ErrorKind::Unauthorized => Self::Unauthorized(w.message),
            ErrorKind::Denied => Self::Denied(w.message),
            ErrorKind::DeleteDisabled => Self::DeleteDisabled,
            ErrorKind::Corrupt => Self::Corrupt(w.message),
            ErrorKind::Unsupported => Self::Unsupported(w.message),
            ErrorKind::Unavailable => Self::Unavailable(w.message),
            ErrorKind::UntrustedCertificate => Self::UntrustedCertificate(w.message),
            // A size mismatch is reported by the surrogate in words; its kind (EIO) is kept.
            ErrorKind::Rejected | ErrorKind::SizeMismatch => Self::Rejected(w.message),
            ErrorKind::Io => Self::Io(std::io::Error::other(w.message)),
            ErrorKind::NoCatalog => Self::NoCatalog(w.message),
        }
    }
}

impl ErrorKind {
    /// The HTTP status a server answers with for this kind (informative; the body decides).
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ErrorKind::NotFound => S::NOT_FOUND,
            ErrorKind::InvalidName | ErrorKind::SizeMismatch | ErrorKind::Rejected => {
                S::BAD_REQUEST
            }
            ErrorKind::Unauthorized => S::UNAUTHORIZED,
            ErrorKind::Denied => S::FORBIDDEN,
            ErrorKind::DeleteDisabled => S::METHOD_NOT_ALLOWED,
            ErrorKind::Unsupported | ErrorKind::NoCatalog => S::NOT_IMPLEMENTED,
            ErrorKind::Corrupt
            | ErrorKind::Unavailable
            | ErrorKind::UntrustedCertificate
            | ErrorKind::Io => S::BAD_GATEWAY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip_with_their_kind_and_text() {
        let cases = [
            RegistryError::NotFound("x:y".into()),
            RegistryError::invalid_name("Bad", "lower case"),
            RegistryError::DeleteDisabled,
            RegistryError::Corrupt("digest".into()),
            RegistryError::Unauthorized("401".into()),
        ];
        for error in cases {
            let wire = WireError::from(&error);
            let json = serde_json::to_string(&wire).unwrap();
            let back: RegistryError = serde_json::from_str::<WireError>(&json).unwrap().into();
            assert_eq!(back.to_string(), error.to_string());
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&error)
            );
        }
    }
}
