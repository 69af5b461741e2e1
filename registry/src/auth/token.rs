//! Tokens from a registry's token service: distribution's token protocol (`GET`) and its
//! OAuth2 variant (`POST` with a refresh token).
//!
//! A client with an identity token (a refresh token: Docker's `identitytoken`, a credential
//! helper's `<token>` answer) posts it with `grant_type=refresh_token`; token services that
//! do not speak OAuth2 answer that with 400, 401, 404 or 405, and the client falls back to
//! `GET`, as regclient and containerd do. Otherwise `GET realm?service=S&scope=A&scope=B`,
//! with Basic credentials when there are any (anonymous tokens otherwise).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;
use tracing::debug;

use super::challenge::BearerChallenge;
use crate::credentials::Credentials;
use crate::error::{RegistryError, Result};
use crate::store::http::{map_reqwest, read_limited};

/// How long a token lives when the service does not say: the spec's default. A shorter
/// lifetime the service does state is taken as stated (renewing early costs a request;
/// using a token past its time costs a refused request).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// The shortest lifetime a token is used for.
const LEAST_LIFETIME: Duration = Duration::from_secs(1);

/// A token is renewed this long before it expires (at most half its lifetime), so that a
/// request never leaves with a token that lapses on the way.
const RENEW_MARGIN: Duration = Duration::from_secs(10);

/// The largest token response read: tokens are a few KiB.
const MAX_RESPONSE: usize = 1024 * 1024;

/// `client_id` sent to OAuth2 token services, as the spec asks of every client.
const CLIENT_ID: &str = "reposure";

/// A token and when to renew it.
#[derive(Clone)]
pub struct Token {
    pub value: String,
    pub renew_at: Instant,
}

impl Token {
    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.renew_at
    }
}

/// What a token service answered.
pub struct Granted {
    pub token: Token,
    /// A refresh token, when the service handed one out.
    pub refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
}

/// Asks the token service of `challenge` for a token covering `scopes`.
pub async fn fetch(
    http: &reqwest::Client,
    timeout: Duration,
    challenge: &BearerChallenge,
    scopes: &[String],
    credentials: Option<&Credentials>,
    refresh_token: Option<&str>,
) -> Result<Granted> {
    if let Some(refresh_token) = refresh_token {
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token.to_owned()),
            ("client_id", CLIENT_ID.to_owned()),
            ("access_type", "offline".to_owned()),
        ];
        if let Some(service) = &challenge.service {
            form.push(("service", service.clone()));
        }
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        let response = http
            .post(challenge.realm.clone())
            .form(&form)
            .send()
            .await
            .map_err(map_reqwest)?;
        match response.status() {
            StatusCode::BAD_REQUEST
            | StatusCode::UNAUTHORIZED
            | StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED => {
                debug!(realm = %challenge.realm, status = %response.status(), "the token service takes no OAuth2 POST; asking with GET");
            }
            _ => return granted(challenge, response, timeout).await,
        }
    }
    let mut url = challenge.realm.clone();
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = &challenge.service {
            query.append_pair("service", service);
        }
        for scope in scopes {
            query.append_pair("scope", scope);
        }
        if let Some(Credentials::Basic { username, .. }) = credentials {
            query.append_pair("account", username);
        }
    }
    let mut request = http.get(url);
    if let Some(Credentials::Basic { username, password }) = credentials {
        request = request.basic_auth(username, Some(password));
    }
    let response = request.send().await.map_err(map_reqwest)?;
    granted(challenge, response, timeout).await
}

/// The token in a token service's answer, or why there is none.
async fn granted(
    challenge: &BearerChallenge,
    response: reqwest::Response,
    timeout: Duration,
) -> Result<Granted> {
    let status = response.status();
    let body = read_limited(response, MAX_RESPONSE, "token response", timeout).await?;
    let realm = challenge.realm.as_str();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(RegistryError::Unauthorized(format!(
            "the token service {realm} answered {status}"
        )));
    }
    if !status.is_success() {
        let summary = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(if status.is_server_error() {
            RegistryError::Unavailable(format!("the token service {realm} answered {status}"))
        } else {
            RegistryError::Rejected(format!(
                "the token service {realm} answered {status}: {summary}"
            ))
        });
    }
    let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
        RegistryError::Corrupt(format!("the token service {realm} answered no token: {e}"))
    })?;
    let value = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            RegistryError::Corrupt(format!("the token service {realm} answered no token"))
        })?;
    let lifetime = parsed
        .expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LIFETIME)
        .max(LEAST_LIFETIME);
    Ok(Granted {
        token: Token {
            value,
            renew_at: Instant::now() + lifetime - RENEW_MARGIN.min(lifetime / 2),
        },
        refresh_token: parsed.refresh_token.filter(|t| !t.is_empty()),
    })
}
