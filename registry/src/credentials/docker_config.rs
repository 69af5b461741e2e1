//! Registry credentials from a Docker config file (`~/.docker/config.json`, or the
//! `.dockerconfigjson` key of a `kubernetes.io/dockerconfigjson` Secret).
//!
//! Only the `auths` map is read: an entry's `auth` (base64 of `user:password`) or its
//! `username`/`password` pair, or an `identitytoken` used as a bearer token. Credential
//! helpers (`credsStore`) run programs and have no place inside a pod; they are ignored.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

use super::Credentials;
use crate::error::{RegistryError, Result};

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// The credentials for `host` (`HOST[:PORT]`) in a Docker config document, if any.
/// Keys are matched with and without an `http(s)://` prefix and a trailing path, as the
/// Docker CLI writes both forms.
pub fn credentials_for(config: &[u8], host: &str) -> Result<Option<Credentials>> {
    let config: ConfigFile = serde_json::from_slice(config).map_err(|e| {
        RegistryError::Usage(format!(
            "the Docker config is not valid JSON with an \"auths\" map: {e}"
        ))
    })?;
    let entry = config.auths.into_iter().find_map(|(key, entry)| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let key = key.split('/').next().unwrap_or(key);
        (key == host).then_some(entry)
    });
    let Some(entry) = entry else {
        return Ok(None);
    };
    if let Some(token) = entry.identitytoken.filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::Bearer(token)));
    }
    if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
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
            password: password.to_owned(),
        }));
    }
    match (entry.username, entry.password) {
        (Some(username), Some(password)) => Ok(Some(Credentials::Basic { username, password })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_username_password_and_identity_tokens() {
        let config = br#"{"auths": {
            "https://reg.example:5000/v1/": {"auth": "YWxpY2U6czNjcjN0"},
            "other.example": {"username": "bob", "password": "pw"},
            "token.example": {"identitytoken": "tok"}
        }}"#;
        assert_eq!(
            credentials_for(config, "reg.example:5000").unwrap(),
            Some(Credentials::Basic {
                username: "alice".into(),
                password: "s3cr3t".into()
            })
        );
        assert_eq!(
            credentials_for(config, "other.example").unwrap(),
            Some(Credentials::Basic {
                username: "bob".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            credentials_for(config, "token.example").unwrap(),
            Some(Credentials::Bearer("tok".into()))
        );
        assert_eq!(credentials_for(config, "missing.example").unwrap(), None);
    }

    #[test]
    fn bad_documents_say_what_is_wrong_without_echoing_secrets() {
        let e = credentials_for(b"{", "h").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = credentials_for(br#"{"auths": {"h": {"auth": "!!!s3cr3t"}}}"#, "h")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not base64") && !e.contains("s3cr3t"), "{e}");
        let debug = format!(
            "{:?}",
            Credentials::Basic {
                username: "u".into(),
                password: "s3cr3t".into()
            }
        );
        assert!(!debug.contains("s3cr3t"));
    }
}
