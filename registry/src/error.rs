//! The one error type of registry access.
//!
//! Every variant says what went wrong in words a user can act on; the filesystem maps each
//! variant to exactly one errno (see `reposure_fs::errno`), the CLI to one exit code.
//! Messages never contain credentials: URLs are stored without user info and request
//! bodies are never echoed. Messages name no option of a front end: each front end adds
//! its own hint (`credentials::OptionNames::hint`), as the mount says `username=` where
//! the CLI says `--username`.

/// Result with [`RegistryError`].
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The repository, tag, manifest or blob does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A repository or tag name breaks the distribution spec's rules.
    #[error("invalid name {name:?}: {rule}")]
    InvalidName { name: String, rule: String },
    /// The registry refused the credentials, or none were given where they are required.
    #[error("the registry refused the credentials ({0})")]
    Unauthorized(String),
    /// The credentials are valid but do not allow this operation.
    #[error("the registry denied the operation: {0}")]
    Denied(String),
    /// The registry offers no catalog (404, `UNSUPPORTED`, or the catalog scope refused, as
    /// Docker Hub, GHCR and GitLab do): repositories can only be named, not listed.
    #[error("the registry has no catalog of repositories ({0})")]
    NoCatalog(String),
    /// The registry has deletion turned off (HTTP 405 on DELETE).
    #[error(
        "the registry has deletion disabled (HTTP 405); enable it in the registry's configuration (storage.delete.enabled: true)"
    )]
    DeleteDisabled,
    /// The registry cannot delete a tag by name (distribution 2.x answers 400); the caller
    /// falls back to deleting a throwaway manifest.
    #[error("the registry does not delete tags by name")]
    TagDeleteUnsupported,
    /// Content does not match its digest or cannot be parsed.
    #[error("corrupt content: {0}")]
    Corrupt(String),
    /// Content that this version cannot present as requested.
    #[error("unsupported content: {0}")]
    Unsupported(String),
    /// The registry could not be reached, timed out, or failed on its side (5xx).
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The registry's TLS certificate could not be verified.
    #[error("cannot verify the registry's TLS certificate ({0})")]
    UntrustedCertificate(String),
    /// The registry refused the request for another reason (4xx).
    #[error("the registry rejected the request: {0}")]
    Rejected(String),
    /// A source, option or argument given by the user is not usable (nothing was sent).
    #[error("{0}")]
    Usage(String),
    /// The caller supplied a body whose length differs from the one it declared.
    #[error("size mismatch: declared {declared} bytes, received {received}")]
    SizeMismatch { declared: u64, received: u64 },
    /// Local I/O (the layout store, temporary files).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl RegistryError {
    /// Builds an [`RegistryError::InvalidName`].
    pub fn invalid_name(name: &str, rule: impl Into<String>) -> Self {
        Self::InvalidName {
            name: name.to_owned(),
            rule: rule.into(),
        }
    }
}
