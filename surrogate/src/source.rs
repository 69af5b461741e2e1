//! Where a registry is: the `SOURCE` argument of `reposure-mount`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{RegistryError, Result};
use crate::registry::{Registry, StoreRegistry};
use crate::session::client::SessionClient;
use crate::session::transport::ChildProcess;
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
    /// A surrogate session with a command run as a child (`exec:COMMAND ARGS...`).
    Exec(String),
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
        if let Some(command) = s.strip_prefix("exec:") {
            if command.trim().is_empty() {
                return Err(RegistryError::Rejected(
                    "exec: needs a command, as in exec:reposure-surrogate serve --stdio --registry URL".into(),
                ));
            }
            return Ok(Self::Exec(command.trim().to_owned()));
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
            "unknown source {s:?}: use oci:PATH, http://HOST[:PORT], https://HOST[:PORT] or exec:COMMAND"
        )))
    }
}

impl Source {
    /// Opens the store behind this source (not for `exec:`, which is a session).
    pub fn open_store(&self, options: HttpOptions) -> Result<Arc<dyn Store>> {
        Ok(match self {
            Source::Exec(_) => {
                return Err(RegistryError::Rejected(
                    "an exec: source is a surrogate session, not a store".into(),
                ));
            }
            Source::Layout(path) => {
                if options.credentials.is_some() || options.ca_pem.is_some() {
                    return Err(RegistryError::Rejected(
                        "ca=, username= and passwords apply to http(s) registries, not oci: directories".into(),
                    ));
                }
                if options.read_timeout.is_some() {
                    return Err(RegistryError::Rejected(
                        "timeout= applies to http(s) registries, not oci: directories".into(),
                    ));
                }
                LayoutStore::new(path.clone())
            }
            Source::Http(url) => HttpStore::new(url, options)?,
        })
    }

    /// Opens the registry behind this source.
    pub fn open(&self, options: HttpOptions) -> Result<Arc<dyn Registry>> {
        match self {
            Source::Exec(command) => {
                if options.credentials.is_some() || options.ca_pem.is_some() {
                    return Err(RegistryError::Rejected(
                        "ca= and credentials belong to the surrogate's own options with exec:"
                            .into(),
                    ));
                }
                if options.read_timeout.is_some() {
                    return Err(RegistryError::Rejected(
                        "timeout= belongs to the surrogate with exec:: give it --timeout SECONDS"
                            .into(),
                    ));
                }
                let connector = ChildProcess::from_command_line(command)?;
                Ok(Arc::new(SessionClient::new(Box::new(connector))))
            }
            _ => Ok(Arc::new(StoreRegistry::new(self.open_store(options)?))),
        }
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
