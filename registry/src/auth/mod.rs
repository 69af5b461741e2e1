//! Authentication to an HTTP(S) registry: the one layer every request of the project goes
//! through (the mount, the CLI, the surrogate, its one-shots).
//!
//! * No challenge, or `Basic`: Basic credentials when there are any.
//! * `Bearer` (distribution's token authentication, used by Docker Hub, GHCR, Quay, Harbor,
//!   GitLab, ACR, the OpenShift registry): a token from the realm for exactly the scopes the
//!   request needs ([`Access`]): `repository:R:pull` to read, `pull,push` to write,
//!   `delete` to delete, `registry:catalog:*` to list, and for a cross-repository blob mount
//!   the source's `pull` and the target's `pull,push` in one token. Anonymous tokens when
//!   there are no credentials; an identity token is posted as an OAuth2 refresh token.
//! * A fixed token (a service-account token) is sent as it is.
//!
//! Tokens are cached per set of scopes until shortly before they expire, and fetched once
//! however many requests wait for them. A `401` with a challenge drops the token of that
//! request and asks for a new one, once ([`Authenticator::refused`]); scopes the challenge
//! names beyond the request's own are asked for from then on.
//!
//! Credentials go only to the registry and its token service: [`Authenticator::header`]
//! answers nothing for a URL on another origin, and redirects drop the header (reqwest
//! removes `Authorization` when a redirect leaves the host).

pub mod challenge;
pub mod token;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue};
use tracing::{debug, info};

use self::challenge::{BearerChallenge, Challenge};
use self::token::Token;
use crate::credentials::Credentials;
use crate::error::{RegistryError, Result};

/// What a request needs to be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    /// `/v2/` itself: any valid token.
    Registry,
    /// The catalog.
    Catalog,
    Pull(&'a str),
    Push(&'a str),
    Delete(&'a str),
    /// A blob mount from one repository into another.
    Mount {
        from: &'a str,
        to: &'a str,
    },
}

impl Access<'_> {
    /// The token scopes, sorted.
    pub fn scopes(&self) -> Vec<String> {
        let repository = |name: &str, actions: &str| format!("repository:{name}:{actions}");
        let mut scopes = match *self {
            Access::Registry => vec![],
            Access::Catalog => vec!["registry:catalog:*".to_owned()],
            Access::Pull(name) => vec![repository(name, "pull")],
            Access::Push(name) => vec![repository(name, "pull,push")],
            Access::Delete(name) => vec![repository(name, "delete")],
            Access::Mount { from, to } => {
                vec![repository(from, "pull"), repository(to, "pull,push")]
            }
        };
        scopes.sort();
        scopes
    }
}

/// One registry's authentication state.
pub struct Authenticator {
    /// Scheme, host and port of the registry: the only origin credentials are sent to.
    origin: Url,
    /// For the token service: the registry's own trust (CA) and timeouts.
    http: reqwest::Client,
    timeout: std::time::Duration,
    credentials: Option<Credentials>,
    /// Where the credentials came from, for the log.
    credentials_from: Option<String>,
    challenge: Mutex<Option<Challenge>>,
    /// Per set of scopes (space-joined): the token, behind an async lock so that one
    /// request fetches it while the others wait.
    tokens: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Token>>>>>,
    /// Scopes a challenge asked for beyond a request's own, per request scope key.
    learned_scopes: Mutex<HashMap<String, BTreeSet<String>>>,
    /// An OAuth2 refresh token: an identity token, or one a token service handed out.
    refresh_token: Mutex<Option<String>>,
    token_requests: AtomicU64,
}

impl Authenticator {
    pub fn new(
        origin: &Url,
        http: reqwest::Client,
        timeout: std::time::Duration,
        credentials: Option<Credentials>,
        credentials_from: Option<String>,
    ) -> Self {
        let mut origin = origin.clone();
        origin.set_path("/");
        origin.set_query(None);
        let refresh_token = match &credentials {
            Some(Credentials::IdentityToken(token)) => Some(token.clone()),
            _ => None,
        };
        Self {
            origin,
            http,
            timeout,
            credentials,
            credentials_from,
            challenge: Mutex::new(None),
            tokens: Mutex::default(),
            learned_scopes: Mutex::default(),
            refresh_token: Mutex::new(refresh_token),
            token_requests: AtomicU64::new(0),
        }
    }

    /// Whether any credentials were given or found.
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// The challenge known so far (`None` until the registry was asked).
    pub fn challenge(&self) -> Option<Challenge> {
        self.challenge.lock().expect("challenge lock").clone()
    }

    /// Records the challenge of `/v2/`.
    pub fn set_challenge(&self, challenge: Challenge) {
        if let Challenge::Bearer(bearer) = &challenge {
            debug!(realm = %bearer.realm, service = bearer.service.as_deref().unwrap_or(""), "the registry uses token authentication");
        }
        *self.challenge.lock().expect("challenge lock") = Some(challenge);
    }

    /// Tokens fetched so far.
    pub fn token_requests(&self) -> u64 {
        self.token_requests.load(Ordering::Relaxed)
    }

    /// The `Authorization` value for a request to `url` that needs `access`; none for
    /// another origin, or when the registry asks for nothing and there are no credentials.
    pub async fn header(&self, url: &Url, access: Access<'_>) -> Result<Option<HeaderValue>> {
        if url.origin() != self.origin.origin() {
            return Ok(None);
        }
        let bearer = |token: &str| {
            HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| RegistryError::Rejected("the token is not a header value".into()))
        };
        if let Some(Credentials::Bearer(token)) = &self.credentials {
            return bearer(token).map(Some);
        }
        match self.challenge() {
            Some(Challenge::Bearer(challenge)) => {
                let token = self.token(&challenge, access).await?;
                bearer(&token.value).map(Some)
            }
            _ => Ok(match &self.credentials {
                Some(Credentials::Basic { username, password }) => Some(basic(username, password)),
                _ => None,
            }),
        }
    }

    /// After a `401` to a request that needed `access`: records what the registry asked for
    /// and answers whether a new attempt can do better (it is made once).
    pub fn refused(&self, headers: &HeaderMap, url: &Url, access: Access<'_>) -> bool {
        let Some(challenge) = challenge::parse(headers, url) else {
            return false;
        };
        let previous = self.challenge();
        match &challenge {
            Challenge::Bearer(bearer) => {
                let key = access.scopes().join(" ");
                let own: BTreeSet<String> = access.scopes().into_iter().collect();
                let extra: BTreeSet<String> = bearer
                    .scopes
                    .iter()
                    .filter(|s| !own.contains(*s))
                    .cloned()
                    .collect();
                if !extra.is_empty() {
                    debug!(?extra, "the registry asks for more scopes than expected");
                    self.learned_scopes
                        .lock()
                        .expect("scopes lock")
                        .entry(key.clone())
                        .or_default()
                        .extend(extra);
                }
                self.forget_token(&key);
                debug!(error = bearer.error.as_deref().unwrap_or(""), scopes = ?bearer.scopes, "the registry refused the token; asking for a new one");
                self.set_challenge(challenge);
                true
            }
            Challenge::Basic => {
                self.set_challenge(Challenge::Basic);
                previous != Some(Challenge::Basic)
                    && matches!(self.credentials, Some(Credentials::Basic { .. }))
            }
            Challenge::None => false,
        }
    }

    fn forget_token(&self, key: &str) {
        let slot = self.tokens.lock().expect("tokens lock").get(key).cloned();
        if let Some(slot) = slot
            && let Ok(mut token) = slot.try_lock()
        {
            *token = None;
        }
    }

    /// A fresh token for `access`: the cached one, or one fetched now.
    async fn token(&self, challenge: &BearerChallenge, access: Access<'_>) -> Result<Token> {
        let own = access.scopes();
        let key = own.join(" ");
        let slot = self
            .tokens
            .lock()
            .expect("tokens lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| t.is_fresh()) {
            return Ok(token.clone());
        }
        let mut scopes: BTreeSet<String> = own.into_iter().collect();
        if let Some(learned) = self.learned_scopes.lock().expect("scopes lock").get(&key) {
            scopes.extend(learned.iter().cloned());
        }
        let scopes: Vec<String> = scopes.into_iter().collect();
        let refresh_token = self.refresh_token.lock().expect("refresh lock").clone();
        let requests = self.token_requests.fetch_add(1, Ordering::Relaxed) + 1;
        let granted = token::fetch(
            &self.http,
            self.timeout,
            challenge,
            &scopes,
            self.credentials.as_ref(),
            refresh_token.as_deref(),
        )
        .await?;
        if requests == 1 {
            match (&self.credentials_from, &self.credentials) {
                (Some(from), Some(credentials)) => info!(
                    realm = %challenge.realm,
                    user = credentials.user().unwrap_or("(token)"),
                    from = %from,
                    "authenticated to the registry's token service"
                ),
                _ => {
                    info!(realm = %challenge.realm, "anonymous token from the registry's token service")
                }
            }
        }
        debug!(?scopes, requests, "token fetched");
        if let Some(refresh) = granted.refresh_token {
            *self.refresh_token.lock().expect("refresh lock") = Some(refresh);
        }
        *cached = Some(granted.token.clone());
        Ok(granted.token)
    }
}

fn basic(username: &str, password: &str) -> HeaderValue {
    use base64::Engine;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value =
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a header value");
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_asks_for_exactly_its_scopes() {
        assert!(Access::Registry.scopes().is_empty());
        assert_eq!(Access::Catalog.scopes(), ["registry:catalog:*"]);
        assert_eq!(Access::Pull("a/b").scopes(), ["repository:a/b:pull"]);
        assert_eq!(Access::Push("a").scopes(), ["repository:a:pull,push"]);
        assert_eq!(Access::Delete("a").scopes(), ["repository:a:delete"]);
        assert_eq!(
            Access::Mount { from: "z", to: "a" }.scopes(),
            ["repository:a:pull,push", "repository:z:pull"]
        );
    }

    #[tokio::test]
    async fn no_credentials_go_to_another_origin() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let auth = Authenticator::new(
            &Url::parse("https://reg.example:5000").unwrap(),
            reqwest::Client::new(),
            std::time::Duration::from_secs(30),
            Some(Credentials::Basic {
                username: "u".into(),
                password: "p".into(),
            }),
            None,
        );
        auth.set_challenge(Challenge::Basic);
        let same = Url::parse("https://reg.example:5000/v2/a/blobs/uploads/x").unwrap();
        let storage = Url::parse("https://storage.example/upload/x").unwrap();
        let other_port = Url::parse("https://reg.example:5001/v2/").unwrap();
        assert!(
            auth.header(&same, Access::Push("a"))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            auth.header(&storage, Access::Push("a"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            auth.header(&other_port, Access::Push("a"))
                .await
                .unwrap()
                .is_none()
        );
    }
}
