//! Every refusal of the filesystem, and the one table that maps each to an errno.

use reposure_registry::RegistryError;

/// Why a filesystem operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The registry operation failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// No such name.
    #[error("no such file or directory")]
    NotFound,
    /// A name that cannot be a repository or tag (the text names the rule).
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// A name longer than a repository path or tag may be (the text says the limit).
    #[error("name too long: {0}")]
    NameTooLong(String),
    /// A change on a read-only mount.
    #[error("the mount is read-only")]
    ReadOnly,
    /// `rmdir` of a directory with entries.
    #[error("directory not empty")]
    NotEmpty,
    /// A file operation on a directory.
    #[error("is a directory")]
    IsDirectory,
    /// A directory operation on a file.
    #[error("not a directory")]
    NotDirectory,
    /// Creating a name that exists.
    #[error("already exists")]
    Exists,
    /// An operation the registry model cannot express (the text says which).
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// A file handle that is not open (or not open for this).
    #[error("bad file handle")]
    BadHandle,
    /// A rename the registry model cannot do in place (an image onto a local name): tools
    /// copy instead, as across filesystems.
    #[error("cannot rename across: {0}")]
    CrossDevice(String),
    /// A push at close() failed; the text is the registry's reason.
    #[error("push failed: {0}")]
    PushFailed(RegistryError),
    /// The spool (`spool_dir=`) could not hold what was written.
    #[error("cannot spool the file being written (spool_dir=): {0}")]
    Spool(std::io::Error),
}

/// Result with [`FsError`].
pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    /// Whether the error says the name is not there, or not for us to see (registries
    /// answer 401 for a repository that does not exist, so as not to tell).
    pub fn means_absent(&self) -> bool {
        matches!(
            self,
            FsError::NotFound
                | FsError::Registry(
                    RegistryError::NotFound(_)
                        | RegistryError::Unauthorized(_)
                        | RegistryError::Denied(_)
                )
        )
    }

    /// The errno for this error. This match is the table in SEMANTICS.md.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::InvalidName(_) => libc::EINVAL,
            FsError::NameTooLong(_) => libc::ENAMETOOLONG,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::IsDirectory => libc::EISDIR,
            FsError::NotDirectory => libc::ENOTDIR,
            FsError::Exists => libc::EEXIST,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::BadHandle => libc::EBADF,
            FsError::CrossDevice(_) => libc::EXDEV,
            // A registry that refuses the push (anonymous use of a token registry, a user
            // without push rights) says so; any other failed push is an I/O error.
            FsError::PushFailed(RegistryError::Unauthorized(_) | RegistryError::Denied(_)) => {
                libc::EACCES
            }
            FsError::PushFailed(_) => libc::EIO,
            // A full spool disk says so (ENOSPC, EDQUOT); anything else is an I/O error.
            FsError::Spool(e) => match e.raw_os_error() {
                Some(code @ (libc::ENOSPC | libc::EDQUOT)) => code,
                _ => libc::EIO,
            },
            FsError::Registry(e) => match e {
                RegistryError::NotFound(_) => libc::ENOENT,
                RegistryError::InvalidName { .. } | RegistryError::Usage(_) => libc::EINVAL,
                RegistryError::Unauthorized(_) | RegistryError::Denied(_) => libc::EACCES,
                RegistryError::DeleteDisabled => libc::EPERM,
                RegistryError::Unsupported(_) | RegistryError::NoCatalog(_) => libc::EOPNOTSUPP,
                RegistryError::TagDeleteUnsupported
                | RegistryError::Corrupt(_)
                | RegistryError::Unavailable(_)
                | RegistryError::UntrustedCertificate(_)
                | RegistryError::Rejected(_)
                | RegistryError::SizeMismatch { .. }
                | RegistryError::Io(_) => libc::EIO,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_map_to_their_errno() {
        assert_eq!(
            FsError::from(RegistryError::NotFound("x".into())).errno(),
            libc::ENOENT
        );
        assert_eq!(
            FsError::from(RegistryError::DeleteDisabled).errno(),
            libc::EPERM
        );
        assert_eq!(
            FsError::from(RegistryError::Corrupt("x".into())).errno(),
            libc::EIO
        );
        assert_eq!(
            FsError::from(RegistryError::Unauthorized("x".into())).errno(),
            libc::EACCES
        );
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(FsError::Spool(full).errno(), libc::ENOSPC);
    }
}
