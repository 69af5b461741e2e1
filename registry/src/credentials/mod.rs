//! Where registry credentials come from: one loader for every front end.
//!
//! The mount (`username=`, `password_file=`), the CLI (`--username`, `--password-file`)
//! and the surrogate (`--username`, `--password-file`, `--token-file`,
//! `--docker-config-file`, or the same as `REPOSURE_*` variables in a pod) name files and
//! user names, never secrets: [`UserOptions::http_options`] reads them, applies one set of
//! rules, and says what is wrong in the spelling of the front end that asked
//! ([`OptionNames`]). A password may also come from `REPOSURE_PASSWORD`.
//!
//! When no credential is given, the ones users already gave `podman login`, `skopeo login`
//! or `docker login` are used, searched as the containers tools search them
//! ([`USER_CONFIG_ORDER`]): the first file with an entry (or a credential helper) for the
//! host wins. The log names the file or helper, never the secret.
//!
//! * [`docker_config`]: Docker config documents (also the containers' `auth.json`).
//! * [`helper`]: credential helpers (`docker-credential-NAME get`).
//! * [`login`]: logins added to those files for a while (the endpoint's), and taken back.

pub mod docker_config;
pub mod helper;
pub mod login;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{RegistryError, Result};
use crate::store::http::HttpOptions;

/// The environment variable that may hold the password when no password file is named.
pub const PASSWORD_VARIABLE: &str = "REPOSURE_PASSWORD";

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password (or access token used as one).
    Basic { username: String, password: String },
    /// An OAuth2 refresh token for the registry's token service (Docker's
    /// `identitytoken`, a credential helper's `<token>` answer).
    IdentityToken(String),
    /// A token sent to the registry as is (a service-account token, say).
    Bearer(String),
}

impl Credentials {
    /// The user name, for logs.
    pub fn user(&self) -> Option<&str> {
        match self {
            Self::Basic { username, .. } => Some(username),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// Credentials and where they came from (for the log: a file or option, never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub credentials: Credentials,
    pub from: String,
}

/// Where credentials are looked for when none is given, first to last: the files the
/// containers tools (podman, skopeo, buildah) read, in their order, Docker's last.
pub const USER_CONFIG_ORDER: &str = "$REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, ${XDG_CONFIG_HOME:-~/.config}/containers/auth.json, $DOCKER_CONFIG/config.json (default ~/.docker/config.json)";

/// The files of [`USER_CONFIG_ORDER`] that this environment names.
fn user_config_files() -> Vec<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = var("HOME");
    let mut files = Vec::new();
    files.extend(var("REGISTRY_AUTH_FILE"));
    files.extend(var("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    files.extend(
        var("XDG_CONFIG_HOME")
            .or_else(|| home.as_ref().map(|h| h.join(".config")))
            .map(|d| d.join("containers/auth.json")),
    );
    files.extend(
        var("DOCKER_CONFIG")
            .or_else(|| home.as_ref().map(|h| h.join(".docker")))
            .map(|d| d.join("config.json")),
    );
    files
}

/// The credentials a Docker config document holds for `host`, asking a credential helper
/// where the document says to.
pub fn from_docker_config(bytes: &[u8], file: &Path, host: &str) -> Result<Option<Found>> {
    let config = docker_config::DockerConfig::parse(bytes)
        .map_err(|e| RegistryError::Usage(format!("{}: {e}", file.display())))?;
    Ok(match config.lookup(host)? {
        None => None,
        Some(docker_config::Lookup::Entry(credentials)) => Some(Found {
            credentials,
            from: file.display().to_string(),
        }),
        Some(docker_config::Lookup::Helper { name, server }) => {
            helper::get(&name, &server)?.map(|credentials| Found {
                credentials,
                from: format!("{} (named in {})", helper::program(&name), file.display()),
            })
        }
    })
}

/// The credentials users keep for `host` ([`USER_CONFIG_ORDER`]), if any. A file that
/// cannot be read or parsed is skipped with a warning: it must not keep a public registry
/// from being used.
pub fn from_user_config(host: &str) -> Result<Option<Found>> {
    for file in user_config_files() {
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read a credentials file; skipped");
                continue;
            }
        };
        match from_docker_config(&bytes, &file, host) {
            Ok(Some(found)) => return Ok(Some(found)),
            Ok(None) => {}
            Err(e @ RegistryError::Usage(_)) => {
                tracing::warn!(error = %e, "a credentials file cannot be used; skipped");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// How a front end spells each option, so that an error says what to type.
#[derive(Debug, Clone, Copy)]
pub struct OptionNames {
    pub ca: &'static str,
    pub username: &'static str,
    pub password_file: &'static str,
    pub token_file: &'static str,
    pub docker_config: &'static str,
    pub timeout: &'static str,
    pub max_chunk: &'static str,
}

impl OptionNames {
    /// `reposure-mount -o ...`.
    pub const MOUNT: Self = Self {
        ca: "ca=",
        username: "username=",
        password_file: "password_file=",
        token_file: "token_file=",
        docker_config: "docker_config=",
        timeout: "timeout=",
        max_chunk: "max_chunk=",
    };
    /// `reposure` and `reposure-surrogate` flags.
    pub const FLAGS: Self = Self {
        ca: "--ca",
        username: "--username",
        password_file: "--password-file",
        token_file: "--token-file",
        docker_config: "--docker-config-file",
        timeout: "--timeout",
        max_chunk: "--max-chunk",
    };

    /// `OPTION VALUE` as the front end takes it: `ca=FILE`, `--ca FILE`.
    pub fn with_value(option: &str, value: &str) -> String {
        if option.ends_with('=') {
            format!("{option}{value}")
        } else {
            format!("{option} {value}")
        }
    }

    /// What the user can do about `error`, in this front end's words, if anything.
    pub fn hint(&self, error: &RegistryError) -> Option<String> {
        match error {
            RegistryError::Unauthorized(_) => Some(format!(
                "check {} and {} (or {PASSWORD_VARIABLE})",
                self.username, self.password_file
            )),
            RegistryError::UntrustedCertificate(_) => Some(format!(
                "pass the CA that signed the registry's certificate with {}",
                Self::with_value(self.ca, "FILE")
            )),
            _ => None,
        }
    }
}

/// What the user named to reach an http(s) registry: files and a user name, never secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserOptions {
    /// PEM CA certificates to trust beside the system roots.
    pub ca: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// A file holding a token sent as is.
    pub token_file: Option<PathBuf>,
    /// A Docker config (`config.json`, `.dockerconfigjson`) holding the registry's entry.
    pub docker_config: Option<PathBuf>,
    /// How long the registry may stay silent.
    pub timeout: Option<Duration>,
    /// Upload in chunks of at most this many bytes.
    pub max_chunk: Option<u64>,
}

impl UserOptions {
    /// The first option given, in the front end's spelling; for refusing options where
    /// they do not apply.
    pub fn first_given(&self, names: &OptionNames) -> Option<&'static str> {
        [
            (self.ca.is_some(), names.ca),
            (self.username.is_some(), names.username),
            (self.password_file.is_some(), names.password_file),
            (self.token_file.is_some(), names.token_file),
            (self.docker_config.is_some(), names.docker_config),
            (self.timeout.is_some(), names.timeout),
            (self.max_chunk.is_some(), names.max_chunk),
        ]
        .into_iter()
        .find_map(|(given, name)| given.then_some(name))
    }

    /// Reads the named files for the registry at `host` (`HOST[:PORT]`).
    pub fn http_options(&self, host: &str, names: &OptionNames) -> Result<HttpOptions> {
        let ca_pem = match &self.ca {
            Some(path) => Some(read(path, names.ca)?),
            None => None,
        };
        Ok(HttpOptions {
            ca_pem,
            credentials: self.credentials(host, names)?,
            read_timeout: self.timeout,
            max_chunk: self.max_chunk,
            ..Default::default()
        })
    }

    fn credentials(&self, host: &str, names: &OptionNames) -> Result<Option<Found>> {
        if let Some(explicit) = self.explicit_credentials(host, names)? {
            return Ok(Some(explicit));
        }
        let found = from_user_config(host)?;
        if let Some(found) = &found {
            tracing::info!(host, from = %found.from, user = found.credentials.user().unwrap_or("(token)"), "using the credentials kept for this registry");
        }
        Ok(found)
    }

    fn explicit_credentials(&self, host: &str, names: &OptionNames) -> Result<Option<Found>> {
        let exclusive = [
            self.username.is_some(),
            self.token_file.is_some(),
            self.docker_config.is_some(),
        ];
        if exclusive.into_iter().filter(|given| *given).count() > 1 {
            return Err(RegistryError::Usage(format!(
                "give one of {}, {} and {}",
                names.username, names.token_file, names.docker_config
            )));
        }
        let from = |option: &str, path: &Path| {
            OptionNames::with_value(option, &path.display().to_string())
        };
        if let Some(path) = &self.token_file {
            return Ok(Some(Found {
                credentials: Credentials::Bearer(read_secret(path, names.token_file)?),
                from: from(names.token_file, path),
            }));
        }
        if let Some(path) = &self.docker_config {
            let config = read(path, names.docker_config)?;
            return match from_docker_config(&config, path, host)? {
                Some(found) => Ok(Some(found)),
                None => Err(RegistryError::Usage(format!(
                    "the Docker config {} has no entry for {host}; add one under \"auths\"",
                    path.display()
                ))),
            };
        }
        let password = match &self.password_file {
            Some(path) => Some(read_secret(path, names.password_file)?),
            None => std::env::var(PASSWORD_VARIABLE).ok(),
        };
        match (&self.username, password) {
            (Some(username), Some(password)) => Ok(Some(Found {
                credentials: Credentials::Basic {
                    username: username.clone(),
                    password,
                },
                from: match &self.password_file {
                    Some(path) => from(names.password_file, path),
                    None => PASSWORD_VARIABLE.to_owned(),
                },
            })),
            (Some(_), None) => Err(RegistryError::Usage(format!(
                "{} needs a password: {} or {PASSWORD_VARIABLE}",
                names.username,
                OptionNames::with_value(names.password_file, "FILE")
            ))),
            (None, _) if self.password_file.is_some() => Err(RegistryError::Usage(format!(
                "{} needs {}",
                names.password_file, names.username
            ))),
            (None, _) => Ok(None),
        }
    }
}

fn read(path: &Path, option: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        RegistryError::Usage(format!(
            "cannot read {}: {e}",
            OptionNames::with_value(option, &path.display().to_string())
        ))
    })
}

/// A secret file's content without its line ending.
fn read_secret(path: &Path, option: &str) -> Result<String> {
    let bytes = read(path, option)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        RegistryError::Usage(format!(
            "{} is not UTF-8 text",
            OptionNames::with_value(option, &path.display().to_string())
        ))
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_file(content: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), content).unwrap();
        file
    }

    #[test]
    fn a_user_and_a_password_file_make_basic_credentials() {
        let password = secret_file("s3cr3t\n");
        let options = UserOptions {
            username: Some("alice".into()),
            password_file: Some(password.path().into()),
            ..Default::default()
        };
        let http = options.http_options("h:5000", &OptionNames::MOUNT).unwrap();
        let found = http.credentials.unwrap();
        assert_eq!(
            found.credentials,
            Credentials::Basic {
                username: "alice".into(),
                password: "s3cr3t".into()
            }
        );
        assert_eq!(
            found.from,
            format!("password_file={}", password.path().display())
        );
    }

    #[test]
    fn half_given_credentials_say_what_is_missing_in_the_front_ends_words() {
        let password = secret_file("pw");
        let without_user = UserOptions {
            password_file: Some(password.path().into()),
            ..Default::default()
        };
        let e = without_user
            .http_options("h", &OptionNames::FLAGS)
            .unwrap_err();
        assert!(matches!(&e, RegistryError::Usage(m) if m == "--password-file needs --username"));
        let e = without_user
            .http_options("h", &OptionNames::MOUNT)
            .unwrap_err();
        assert_eq!(e.to_string(), "password_file= needs username=");
        let both = UserOptions {
            username: Some("u".into()),
            token_file: Some(password.path().into()),
            ..Default::default()
        };
        assert!(matches!(
            both.http_options("h", &OptionNames::FLAGS),
            Err(RegistryError::Usage(_))
        ));
    }

    #[test]
    fn a_docker_config_is_read_for_the_host() {
        let config = secret_file(r#"{"auths": {"h:5000": {"auth": "dTpw"}}}"#);
        let options = UserOptions {
            docker_config: Some(config.path().into()),
            ..Default::default()
        };
        let http = options.http_options("h:5000", &OptionNames::FLAGS).unwrap();
        assert_eq!(
            http.credentials.unwrap().credentials,
            Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        let e = options
            .http_options("other:5000", &OptionNames::FLAGS)
            .unwrap_err();
        assert!(e.to_string().contains("no entry for other:5000"), "{e}");
    }

    #[test]
    fn hints_use_the_front_ends_spelling() {
        let refused = RegistryError::Unauthorized("401".into());
        assert!(
            OptionNames::MOUNT
                .hint(&refused)
                .unwrap()
                .contains("username= and password_file=")
        );
        assert!(
            OptionNames::FLAGS
                .hint(&refused)
                .unwrap()
                .contains("--username and --password-file")
        );
        assert_eq!(
            OptionNames::MOUNT.hint(&RegistryError::NotFound("x".into())),
            None
        );
    }
}
