//! Distribution API errors: the one table from [`RegistryError`] to an HTTP status and an
//! error code of the distribution spec, and the JSON body clients print.
//!
//! The store behind the endpoint is reached with the surrogate's (or the user's)
//! credentials, so a refusal by that registry is `403 DENIED`, never `401`: a 401 would make
//! docker and podman ask for the endpoint's own credentials again. A registry that cannot be
//! reached is `503`, which clients retry.

use http::StatusCode;
use reposure_registry::error::RegistryError;

/// An error as the distribution API answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The codes a route uses for "no such thing" and "not acceptable".
#[derive(Debug, Clone, Copy)]
pub struct Codes {
    pub unknown: &'static str,
    pub invalid: &'static str,
}

impl Codes {
    pub const MANIFEST: Self = Self {
        unknown: "MANIFEST_UNKNOWN",
        invalid: "MANIFEST_INVALID",
    };
    pub const BLOB: Self = Self {
        unknown: "BLOB_UNKNOWN",
        invalid: "BLOB_UPLOAD_INVALID",
    };
    pub const NAME: Self = Self {
        unknown: "NAME_UNKNOWN",
        invalid: "NAME_INVALID",
    };
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// What a store's error answers, for a route with these `codes`.
    pub fn from_registry(error: &RegistryError, codes: Codes) -> Self {
        use RegistryError as E;
        let (status, code) = match error {
            E::NotFound(_) => (StatusCode::NOT_FOUND, codes.unknown),
            E::InvalidName { .. } => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            E::Unauthorized(_) | E::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            E::NoCatalog(_) | E::DeleteDisabled | E::TagDeleteUnsupported | E::Unsupported(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED")
            }
            E::Corrupt(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            E::SizeMismatch { .. } => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
            E::Rejected(_) | E::Usage(_) => (StatusCode::BAD_REQUEST, codes.invalid),
            E::Unavailable(_) | E::UntrustedCertificate(_) | E::Io(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
            }
        };
        Self::new(status, code, error.to_string())
    }

    /// The body: `{"errors": [{"code", "message"}]}`.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "errors": [{"code": self.code, "message": self.message}]
        }))
        .expect("errors serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_upstream_is_no_login_prompt_here() {
        let e = ApiError::from_registry(&RegistryError::Unauthorized("x".into()), Codes::BLOB);
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "DENIED"));
        let e = ApiError::from_registry(&RegistryError::NotFound("x".into()), Codes::MANIFEST);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
        );
        let e = ApiError::from_registry(&RegistryError::Unavailable("x".into()), Codes::NAME);
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    }
}
