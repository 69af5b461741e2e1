//! A registry reached without a surrogate: a local OCI image layout (`oci:PATH`) or an
//! HTTP(S) registry (`http://HOST[:PORT]`, `https://HOST[:PORT]`). The front ends' wider
//! `SOURCE` (a surrogate over `exec:`, a Kubernetes Registry) builds on this one.

use std::path::PathBuf;
use std::sync::Arc;

use crate::credentials::{OptionNames, UserOptions};
use crate::error::{RegistryError, Result};
use crate::operations::{Registry, StoreRegistry};
use crate::store::Store;
use crate::store::http::HttpStore;
use crate::store::layout::LayoutStore;

/// Where a registry is, when it is reached directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectSource {
    /// A local OCI image layout directory (`oci:PATH`).
    Layout(PathBuf),
    /// A registry over HTTP or HTTPS (`http://HOST[:PORT]`, `https://HOST[:PORT]`).
    Http(reqwest::Url),
}

/// The forms, for messages.
pub const FORMS: &str = "oci:PATH, http://HOST[:PORT], https://HOST[:PORT]";

impl DirectSource {
    /// Parses `s` if it has the form of a direct source (`None` otherwise), checking it.
    pub fn parse(s: &str) -> Option<Result<Self>> {
        if let Some(path) = s.strip_prefix("oci:") {
            return Some(if path.is_empty() {
                Err(RegistryError::Usage(
                    "oci: needs a directory, as in oci:/var/lib/images".into(),
                ))
            } else {
                Ok(Self::Layout(PathBuf::from(path)))
            });
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Some(parse_url(s).map(Self::Http));
        }
        None
    }

    /// `HOST[:PORT]` of an HTTP registry, as credentials are filed under.
    pub fn host(&self) -> Option<String> {
        let Self::Http(url) = self else {
            return None;
        };
        let host = url.host_str().unwrap_or_default();
        Some(match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        })
    }

    /// Opens the store behind this source with the user's options.
    pub fn open_store(&self, options: &UserOptions, names: &OptionNames) -> Result<Arc<dyn Store>> {
        match self {
            Self::Layout(path) => {
                if let Some(option) = options.first_given(names) {
                    return Err(RegistryError::Usage(format!(
                        "{option} applies to http(s) registries, not oci: directories"
                    )));
                }
                Ok(LayoutStore::new(path.clone()))
            }
            Self::Http(url) => {
                let host = self.host().unwrap_or_default();
                Ok(HttpStore::new(url, options.http_options(&host, names)?)?)
            }
        }
    }

    /// Opens the registry behind this source with the user's options.
    pub fn open(&self, options: &UserOptions, names: &OptionNames) -> Result<Arc<dyn Registry>> {
        Ok(Arc::new(StoreRegistry::new(
            self.open_store(options, names)?,
        )))
    }
}

impl std::str::FromStr for DirectSource {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s).unwrap_or_else(|| {
            Err(RegistryError::Usage(format!(
                "unknown registry {s:?}: use {FORMS}"
            )))
        })
    }
}

fn parse_url(s: &str) -> Result<reqwest::Url> {
    let url = reqwest::Url::parse(s)
        .map_err(|e| RegistryError::Usage(format!("{s:?} is not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(RegistryError::Usage(
            "put no credentials in the registry URL; name a user and a password file instead"
                .into(),
        ));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(RegistryError::Usage(format!(
            "{s:?} has a path; give only the registry's scheme, host and port"
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_layouts_and_urls() {
        assert_eq!(
            "oci:/x".parse::<DirectSource>().unwrap(),
            DirectSource::Layout("/x".into())
        );
        let http = "http://127.0.0.1:5000".parse::<DirectSource>().unwrap();
        assert_eq!(http.host().as_deref(), Some("127.0.0.1:5000"));
        let https = "https://reg.example".parse::<DirectSource>().unwrap();
        assert_eq!(https.host().as_deref(), Some("reg.example"));
        assert!(DirectSource::parse("exec:x").is_none());
    }

    #[test]
    fn refuses_credentials_paths_and_unknown_forms_as_usage_errors() {
        for bad in [
            "http://u:p@h",
            "http://h/v2/",
            "ftp://h",
            "oci:",
            "registry",
        ] {
            let e = bad.parse::<DirectSource>().unwrap_err();
            assert!(matches!(e, RegistryError::Usage(_)), "{bad}: {e}");
        }
        let e = "http://u:p@h"
            .parse::<DirectSource>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("password file") && !e.contains(":p@"), "{e}");
    }

    #[test]
    fn options_of_http_registries_are_refused_for_layouts() {
        let options = UserOptions {
            timeout: Some(std::time::Duration::from_secs(1)),
            ..Default::default()
        };
        let layout = DirectSource::Layout("/nonexistent".into());
        let e = layout
            .open_store(&options, &OptionNames::MOUNT)
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("timeout= applies"), "{e}");
    }
}
