//! Exit codes: one per failure class, so scripts can tell them apart.
//!
//! | code | class |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed (refused by the registry, corrupt content, local I/O) |
//! | 2 | usage: bad arguments or an invalid name |
//! | 3 | not found: the image, tag or Registry does not exist |
//! | 4 | access refused: registry credentials, or Kubernetes RBAC |
//! | 5 | unavailable: the registry or cluster cannot be reached, the surrogate is not ready, a timeout |

use reposure_registry::RegistryError;

pub const FAILED: i32 = 1;
pub const USAGE: i32 = 2;
pub const NOT_FOUND: i32 = 3;
pub const REFUSED: i32 = 4;
pub const UNAVAILABLE: i32 = 5;

/// The exit code for an error: the first registry error in its chain decides.
pub fn code(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if let Some(registry) = cause.downcast_ref::<RegistryError>() {
            return match registry {
                RegistryError::NotFound(_) => NOT_FOUND,
                RegistryError::InvalidName { .. } | RegistryError::Usage(_) => USAGE,
                RegistryError::Unauthorized(_)
                | RegistryError::Denied(_)
                | RegistryError::UntrustedCertificate(_) => REFUSED,
                RegistryError::Unavailable(_) => UNAVAILABLE,
                _ => FAILED,
            };
        }
        if let Some(Usage(_)) = cause.downcast_ref::<Usage>() {
            return USAGE;
        }
    }
    FAILED
}

/// A usage error found after argument parsing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);
