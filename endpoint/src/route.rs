//! The paths of the OCI distribution API, parsed into what they ask for.
//!
//! A repository name may hold slashes, so each path is read from its end: the last
//! segments say what kind of object (`manifests/REF`, `blobs/DIGEST`, `blobs/uploads/ID`,
//! `tags/list`, `referrers/DIGEST`) and everything between `/v2/` and them is the name.

use reposure_registry::digest::Digest;
use reposure_registry::names::{self, Reference};

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/NAME/tags/list`.
    Tags { repository: String },
    /// `/v2/NAME/manifests/REFERENCE`.
    Manifest {
        repository: String,
        reference: Reference,
    },
    /// `/v2/NAME/blobs/DIGEST`.
    Blob { repository: String, digest: Digest },
    /// `/v2/NAME/blobs/uploads/`: a new upload.
    Uploads { repository: String },
    /// `/v2/NAME/blobs/uploads/ID`: an upload under way.
    Upload { repository: String, id: String },
    /// `/v2/NAME/referrers/DIGEST`.
    Referrers { repository: String, digest: Digest },
}

/// Why a path names nothing this API serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRoute {
    /// Not a distribution API path at all.
    Unknown,
    /// A repository name the distribution spec does not allow.
    Name(String),
    /// A reference or digest that does not parse.
    Reference(String),
}

impl Route {
    pub fn parse(path: &str) -> Result<Self, BadRoute> {
        let Some(rest) = path.strip_prefix("/v2/") else {
            return if path == "/v2" {
                Ok(Self::Base)
            } else {
                Err(BadRoute::Unknown)
            };
        };
        if rest.is_empty() {
            return Ok(Self::Base);
        }
        if rest == "_catalog" {
            return Ok(Self::Catalog);
        }
        let repository = |name: &str| -> Result<String, BadRoute> {
            names::check_repository(name).map_err(|e| BadRoute::Name(e.to_string()))?;
            Ok(name.to_owned())
        };
        let digest =
            |text: &str| Digest::parse(text).map_err(|e| BadRoute::Reference(e.to_string()));
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Ok(Self::Tags {
                repository: repository(name)?,
            });
        }
        if let Some(name) = rest
            .strip_suffix("/blobs/uploads/")
            .or_else(|| rest.strip_suffix("/blobs/uploads"))
        {
            return Ok(Self::Uploads {
                repository: repository(name)?,
            });
        }
        let (head, last) = rest.rsplit_once('/').ok_or(BadRoute::Unknown)?;
        let (name, kind) = head.rsplit_once('/').ok_or(BadRoute::Unknown)?;
        match kind {
            "manifests" => {
                let reference = if last.contains(':') {
                    Reference::Digest(digest(last)?)
                } else {
                    names::check_tag(last).map_err(|e| BadRoute::Reference(e.to_string()))?;
                    Reference::Tag(last.to_owned())
                };
                Ok(Self::Manifest {
                    repository: repository(name)?,
                    reference,
                })
            }
            "blobs" => Ok(Self::Blob {
                repository: repository(name)?,
                digest: digest(last)?,
            }),
            "referrers" => Ok(Self::Referrers {
                repository: repository(name)?,
                digest: digest(last)?,
            }),
            "uploads" => {
                let name = name.strip_suffix("/blobs").ok_or(BadRoute::Unknown)?;
                let valid_id = !last.is_empty()
                    && last
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !valid_id {
                    return Err(BadRoute::Unknown);
                }
                Ok(Self::Upload {
                    repository: repository(name)?,
                    id: last.to_owned(),
                })
            }
            _ => Err(BadRoute::Unknown),
        }
    }

    /// The repository the path is about, if any.
    pub fn repository(&self) -> Option<&str> {
        match self {
            Self::Base | Self::Catalog => None,
            Self::Tags { repository }
            | Self::Manifest { repository, .. }
            | Self::Blob { repository, .. }
            | Self::Uploads { repository }
            | Self::Upload { repository, .. }
            | Self::Referrers { repository, .. } => Some(repository),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn names_with_slashes_are_read_from_the_end() {
        assert_eq!(Route::parse("/v2/"), Ok(Route::Base));
        assert_eq!(Route::parse("/v2/_catalog"), Ok(Route::Catalog));
        assert_eq!(
            Route::parse("/v2/a/b/c/tags/list"),
            Ok(Route::Tags {
                repository: "a/b/c".into()
            })
        );
        assert_eq!(
            Route::parse("/v2/team/manifests/manifests/v1"),
            Ok(Route::Manifest {
                repository: "team/manifests".into(),
                reference: Reference::Tag("v1".into())
            })
        );
        assert_eq!(
            Route::parse(&format!("/v2/x/manifests/{DIGEST}")),
            Ok(Route::Manifest {
                repository: "x".into(),
                reference: Reference::Digest(Digest::parse(DIGEST).unwrap())
            })
        );
        assert_eq!(
            Route::parse(&format!("/v2/a/blobs/{DIGEST}")),
            Ok(Route::Blob {
                repository: "a".into(),
                digest: Digest::parse(DIGEST).unwrap()
            })
        );
        assert_eq!(
            Route::parse("/v2/a/b/blobs/uploads/"),
            Ok(Route::Uploads {
                repository: "a/b".into()
            })
        );
        assert_eq!(
            Route::parse("/v2/a/b/blobs/uploads/3f2a-9c"),
            Ok(Route::Upload {
                repository: "a/b".into(),
                id: "3f2a-9c".into()
            })
        );
    }

    #[test]
    fn bad_paths_say_why() {
        assert_eq!(Route::parse("/v1/x"), Err(BadRoute::Unknown));
        assert!(matches!(
            Route::parse("/v2/Upper/tags/list"),
            Err(BadRoute::Name(_))
        ));
        assert!(matches!(
            Route::parse("/v2/a/manifests/sha256:zz"),
            Err(BadRoute::Reference(_))
        ));
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads/../x"),
            Err(BadRoute::Unknown)
        );
    }
}
