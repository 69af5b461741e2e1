//! Where a registry is: the `SOURCE` argument of `reposure-mount`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{RegistryError, Result};
use crate::registry::{Registry, StoreRegistry};
use crate::store::Store;
use crate::store::http::{HttpOptions, HttpStore};
use crate::store::layout::LayoutStore;

/// A registry location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local OCI image layout directory (`oci:PATH`).
    Layout(PathBuf),
    /// A registry over HTTP or HTTPS (`http://HOST[:PORT]`, `https://HOST[:PORT]`).
    Http(reqwest::Url),
}

impl std::str::FromStr for Source {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self> {
        if let Some(path) = s.strip_prefix("oci:") {
            if path.is_empty() {
                return Err(RegistryError::Rejected(
                    "oci: needs a directory, as in oci:/var/lib/images".into(),
                ));
            }
            return Ok(Self::Layout(PathBuf::from(path)));
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            let url = reqwest::Url::parse(s)
                .map_err(|e| RegistryError::Rejected(format!("{s:?} is not a URL: {e}")))?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(RegistryError::Rejected(
                    "put no credentials in the registry URL; use username= and password_file= (or REPOSURE_PASSWORD)".into(),
                ));
            }
            if url.path() != "/" || url.query().is_some() {
                return Err(RegistryError::Rejected(format!(
                    "{s:?} has a path; give only the registry's scheme, host and port"
                )));
            }
            return Ok(Self::Http(url));
        }
        Err(RegistryError::Rejected(format!(
            "unknown source {s:?}: use oci:PATH, http://HOST[:PORT] or https://HOST[:PORT]"
        )))
    }
}

impl Source {
    /// Opens the store behind this source.
    pub fn open_store(&self, options: HttpOptions) -> Result<Arc<dyn Store>> {
        Ok(match self {
            Source::Layout(path) => {
                if options.credentials.is_some() || options.ca_pem.is_some() {
                    return Err(RegistryError::Rejected(
                        "ca=, username= and passwords apply to http(s) registries, not oci: directories".into(),
                    ));
                }
                LayoutStore::new(path.clone())
            }
            Source::Http(url) => HttpStore::new(url, options)?,
        })
    }

    /// Opens the registry behind this source.
    pub fn open(&self, options: HttpOptions) -> Result<Arc<dyn Registry>> {
        Ok(Arc::new(StoreRegistry::new(self.open_store(options)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            "oci:/x".parse::<Source>().unwrap(),
            Source::Layout("/x".into())
        );
        assert!(matches!(
            "http://127.0.0.1:5000".parse::<Source>().unwrap(),
            Source::Http(_)
        ));
        assert!(matches!(
            "https://reg.example".parse::<Source>().unwrap(),
            Source::Http(_)
        ));
    }

    #[test]
    fn refuses_credentials_paths_and_unknown_schemes() {
        for bad in [
            "http://u:p@h",
            "http://h/v2/",
            "ftp://h",
            "oci:",
            "registry",
        ] {
            assert!(bad.parse::<Source>().is_err(), "{bad}");
        }
        let e = "http://u:p@h".parse::<Source>().unwrap_err().to_string();
        assert!(e.contains("password_file=") && !e.contains(":p@"), "{e}");
    }
}
