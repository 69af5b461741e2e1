//! Docker config documents: `~/.docker/config.json`, the containers tools' `auth.json`
//! (same format), the `.dockerconfigjson` of a `kubernetes.io/dockerconfigjson` Secret, and
//! the legacy form (`~/.dockercfg`, the `.dockercfg` of a `kubernetes.io/dockercfg` Secret,
//! as OpenShift makes for service accounts): the `auths` map alone, at the top level.
//!
//! For a host, as the Docker CLI decides: `credHelpers[key]`, else `credsStore`, else the
//! `auths` entry (`auth` = base64 of `user:password`, or `username`/`password`, or an
//! `identitytoken`, which is an OAuth2 refresh token). Keys are matched exactly first, then
//! with any `http(s)://` and path stripped. Docker Hub is filed under
//! `https://index.docker.io/v1/` whichever of its host names is used.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

use super::Credentials;
use crate::error::{RegistryError, Result};

/// The key Docker files Docker Hub's credentials under.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// The names Docker Hub goes by; all are filed under [`DOCKER_HUB_KEY`].
const DOCKER_HUB_HOSTS: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// A parsed config document.
#[derive(Deserialize, Default)]
pub struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

/// What a config says about a host.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Credentials written in the file.
    Entry(Credentials),
    /// Ask the credential helper `docker-credential-NAME` for `server`.
    Helper { name: String, server: String },
}

impl DockerConfig {
    /// Parses a document, in either form.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let not_config = |e: serde_json::Error| {
            RegistryError::Usage(format!("not a Docker config (JSON with \"auths\"): {e}"))
        };
        let document: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(bytes).map_err(not_config)?;
        const KEYS: [&str; 3] = ["auths", "credHelpers", "credsStore"];
        let legacy = !document.is_empty() && !KEYS.iter().any(|k| document.contains_key(*k));
        if legacy {
            let auths =
                serde_json::from_value(serde_json::Value::Object(document)).map_err(not_config)?;
            return Ok(Self {
                auths,
                ..Self::default()
            });
        }
        serde_json::from_value(serde_json::Value::Object(document)).map_err(not_config)
    }

    /// What this config says for `host` (`HOST[:PORT]`).
    pub fn lookup(&self, host: &str) -> Result<Option<Lookup>> {
        let server = server_key(host);
        if let Some(name) = find(&self.cred_helpers, &server, host) {
            return Ok(Some(Lookup::Helper {
                name: name.clone(),
                server,
            }));
        }
        let entry = find(&self.auths, &server, host);
        let credentials = match entry {
            Some(entry) => entry.credentials(host)?,
            None => None,
        };
        match (&self.creds_store, credentials) {
            // Docker leaves an empty marker entry in `auths` when a store holds the secret.
            (Some(store), None) if !store.is_empty() => Ok(Some(Lookup::Helper {
                name: store.clone(),
                server,
            })),
            (_, Some(credentials)) => Ok(Some(Lookup::Entry(credentials))),
            (_, None) => Ok(None),
        }
    }
}

/// The key a host's credentials are filed under, and what a helper is asked for.
pub fn server_key(host: &str) -> String {
    if DOCKER_HUB_HOSTS.contains(&host) {
        DOCKER_HUB_KEY.to_owned()
    } else {
        host.to_owned()
    }
}

/// The value filed under `server` (exactly), else under a key that names `host` once its
/// scheme and path are stripped.
fn find<'a, V>(map: &'a BTreeMap<String, V>, server: &str, host: &str) -> Option<&'a V> {
    map.get(server).or_else(|| {
        map.iter().find_map(|(key, value)| {
            let bare = key
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let bare = bare.split('/').next().unwrap_or(bare);
            let hub = DOCKER_HUB_HOSTS.contains(&bare) && DOCKER_HUB_HOSTS.contains(&host);
            (bare == host || hub).then_some(value)
        })
    })
}

impl AuthEntry {
    fn credentials(&self, host: &str) -> Result<Option<Credentials>> {
        let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        if let Some(token) = given(&self.identitytoken) {
            return Ok(Some(Credentials::IdentityToken(token)));
        }
        if let Some(token) = given(&self.registrytoken) {
            return Ok(Some(Credentials::Bearer(token)));
        }
        if let Some(auth) = given(&self.auth) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    RegistryError::Usage(format!(
                        "the Docker config's \"auth\" for {host} is not base64 of USER:PASSWORD"
                    ))
                })?;
            let (username, password) = decoded.split_once(':').ok_or_else(|| {
                RegistryError::Usage(format!(
                    "the Docker config's \"auth\" for {host} has no ':' between user and password"
                ))
            })?;
            return Ok(Some(Credentials::Basic {
                username: username.to_owned(),
                password: password.trim_end_matches('\0').to_owned(),
            }));
        }
        Ok(match (given(&self.username), given(&self.password)) {
            (Some(username), Some(password)) => Some(Credentials::Basic { username, password }),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(config: &[u8], host: &str) -> Option<Credentials> {
        match DockerConfig::parse(config).unwrap().lookup(host).unwrap() {
            Some(Lookup::Entry(credentials)) => Some(credentials),
            Some(Lookup::Helper { .. }) => panic!("a helper for {host}"),
            None => None,
        }
    }

    #[test]
    fn reads_auth_username_password_and_tokens() {
        let config = br#"{"auths": {
            "https://reg.example:5000/v1/": {"auth": "YWxpY2U6czNjcjN0"},
            "other.example": {"username": "bob", "password": "pw"},
            "token.example": {"identitytoken": "refresh"},
            "bearer.example": {"registrytoken": "tok"}
        }}"#;
        assert_eq!(
            entry(config, "reg.example:5000"),
            Some(Credentials::Basic {
                username: "alice".into(),
                password: "s3cr3t".into()
            })
        );
        assert_eq!(
            entry(config, "other.example"),
            Some(Credentials::Basic {
                username: "bob".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            entry(config, "token.example"),
            Some(Credentials::IdentityToken("refresh".into()))
        );
        assert_eq!(
            entry(config, "bearer.example"),
            Some(Credentials::Bearer("tok".into()))
        );
        assert_eq!(entry(config, "missing.example"), None);
    }

    #[test]
    fn the_legacy_dockercfg_form_is_read() {
        let config = br#"{"image-registry.openshift-image-registry.svc:5000":
            {"username": "serviceaccount", "password": "tok", "email": "x@example", "auth": "c2VydmljZWFjY291bnQ6dG9r"}}"#;
        assert_eq!(
            entry(config, "image-registry.openshift-image-registry.svc:5000"),
            Some(Credentials::Basic {
                username: "serviceaccount".into(),
                password: "tok".into(),
            })
        );
    }

    #[test]
    fn docker_hub_is_found_under_any_of_its_names() {
        let config = br#"{"auths": {"https://index.docker.io/v1/": {"auth": "dTpw"}}}"#;
        for host in ["registry-1.docker.io", "docker.io", "index.docker.io"] {
            assert!(entry(config, host).is_some(), "{host}");
        }
        let bare = br#"{"auths": {"docker.io": {"auth": "dTpw"}}}"#;
        assert!(entry(bare, "registry-1.docker.io").is_some());
    }

    #[test]
    fn helpers_come_before_entries_and_a_store_stands_behind_empty_markers() {
        let config = DockerConfig::parse(
            br#"{"auths": {"a.example": {}, "b.example": {"auth": "dTpw"}},
                "credHelpers": {"c.example": "pass", "registry-1.docker.io": "hub"},
                "credsStore": "desktop"}"#,
        )
        .unwrap();
        let helper = |name: &str, server: &str| {
            Some(Lookup::Helper {
                name: name.into(),
                server: server.into(),
            })
        };
        assert_eq!(
            config.lookup("c.example").unwrap(),
            helper("pass", "c.example")
        );
        assert_eq!(
            config.lookup("a.example").unwrap(),
            helper("desktop", "a.example")
        );
        assert!(matches!(
            config.lookup("b.example").unwrap(),
            Some(Lookup::Entry(_))
        ));
        assert_eq!(
            config.lookup("docker.io").unwrap(),
            helper("hub", DOCKER_HUB_KEY)
        );
    }

    #[test]
    fn bad_documents_say_what_is_wrong_without_echoing_secrets() {
        let e = DockerConfig::parse(b"{").err().unwrap().to_string();
        assert!(e.contains("not a Docker config"), "{e}");
        let config = DockerConfig::parse(br#"{"auths": {"h": {"auth": "!!!s3cr3t"}}}"#).unwrap();
        let e = config.lookup("h").unwrap_err().to_string();
        assert!(e.contains("not base64") && !e.contains("s3cr3t"), "{e}");
    }
}
