//! A token service for the reference registry's `auth: token`, as the distribution token
//! spec describes it and hosted registries run it, on 127.0.0.1.
//!
//! * At start it makes an ECDSA P-256 key and a self-signed certificate for it
//!   ([`TokenServer::certificate_path`], the registry's `rootcertbundle`), and signs ES256
//!   JWTs whose header `kid` is the key's libtrust fingerprint ([`libtrust_kid`]), which is
//!   how registry 2.8 finds the key. Claims: `iss`, `sub`, `aud` (the service, a JSON
//!   string: 2.8 refuses an array), `exp`, `nbf`, `iat`, `jti`, `access`.
//! * `GET /token?service=S&scope=A&scope=B[&account=U][&offline_token=true&client_id=C]`,
//!   optional Basic auth: `{token, access_token, expires_in, issued_at[, refresh_token]}`.
//! * `POST /token`, form `grant_type=password` (`username`, `password`) or
//!   `grant_type=refresh_token` (`refresh_token`), with `service`, `client_id` (required),
//!   `scope` (space-separated; repeated fields are accepted too) and `access_type=offline`
//!   for a refresh token: `{access_token, token_type, scope, expires_in, issued_at[,
//!   refresh_token]}`.
//! * Answers: unknown or missing service, missing `client_id` or an unknown grant type
//!   400; wrong user or password, unknown refresh token, or an anonymous request while
//!   anonymous pull is off 401; any other path 404, any other method 405.
//! * Policy: a user gets `pull,push,delete` (or `*`) on every repository and
//!   `registry:catalog:*`; anonymous gets `pull` on repositories and nothing else. The
//!   token grants the intersection of what was asked and what is allowed, with 200 even
//!   when that is less than asked (the spec's partial grant).
//!
//! Every request to `/token` is logged ([`TokenServer::log`]) and counted, in total and by
//! its requested scope set ([`scope_key`]: each scope's actions sorted, the scopes sorted
//! and joined by one space) and method.
//!
//! Not emulated: TLS to the token service (the registry never calls it, clients do, and
//! over plain HTTP here), `x5c` or `jwk` headers (the `kid` path only), per-repository
//! permissions, and token revocation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::PublicKeyData;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Digest;

use crate::proxy::UpstreamAuth;
use crate::registry::TokenAuth;

/// The service name the registry is configured with by default (`aud` of its tokens).
pub const SERVICE: &str = "reposure-test-registry";

/// The issuer by default (`iss`).
pub const ISSUER: &str = "reposure-test-issuer";

/// How to run a token server.
#[derive(Debug, Clone)]
pub struct TokenServerConfig {
    /// Users and their passwords.
    pub users: Vec<(String, String)>,
    /// Whether anonymous requests get pull tokens (else they are refused with 401).
    pub anonymous_pull: bool,
    /// The only `service` accepted, and the tokens' `aud`.
    pub service: String,
    /// The tokens' `iss`.
    pub issuer: String,
    /// How long a token lives (`expires_in`, `exp - iat`).
    pub lifetime: Duration,
}

impl Default for TokenServerConfig {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            anonymous_pull: true,
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            lifetime: Duration::from_secs(300),
        }
    }
}

/// One request to `/token`, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` or `POST` (anything else is not logged: it gets 405).
    pub method: &'static str,
    /// The authenticated user (Basic, `username`, or a refresh token's owner); `None` for
    /// an anonymous request or when authentication failed.
    pub account: Option<String>,
    /// The requested scopes, normalised as in [`scope_key`].
    pub scopes: Vec<String>,
    /// What the token granted, in scope syntax (`type:name:actions`); empty if refused.
    pub granted: Vec<String>,
    /// The status answered.
    pub status: u16,
}

/// Requests for one scope set, by method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub get: usize,
    pub post: usize,
}

impl Counts {
    pub fn total(&self) -> usize {
        self.get + self.post
    }
}

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: &'a [Access],
}

/// The key and the claims every token shares.
struct Signer {
    key: jsonwebtoken::EncodingKey,
    kid: String,
    issuer: String,
    service: String,
    lifetime_secs: AtomicU64,
}

impl Signer {
    fn sign(&self, subject: &str, access: &[Access]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = Claims {
            iss: &self.issuer,
            sub: subject,
            aud: &self.service,
            exp: now + self.lifetime_secs.load(Ordering::SeqCst),
            nbf: now,
            iat: now,
            jti: hex::encode(crate::random_bytes(16)),
            access,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign an ES256 token")
    }
}

#[derive(Default)]
struct Log {
    requests: Vec<TokenRequest>,
    by_scopes: HashMap<String, Counts>,
}

struct State {
    signer: Arc<Signer>,
    users: HashMap<String, String>,
    anonymous_pull: AtomicBool,
    /// Refresh token → user.
    refresh_tokens: Mutex<HashMap<String, String>>,
    log: Mutex<Log>,
}

/// A running token server; stopped on drop.
pub struct TokenServer {
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
    dir: tempfile::TempDir,
    port: u16,
}

impl TokenServer {
    /// Starts a token server with this configuration.
    pub fn start(config: TokenServerConfig) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let kid = libtrust_kid(&key.subject_public_key_info());
        let certificate = rcgen::CertificateParams::new(vec!["reposure-test-token".to_owned()])
            .expect("certificate parameters")
            .self_signed(&key)
            .expect("self-signed certificate");
        let dir = tempfile::Builder::new()
            .prefix("reposure-token-")
            .tempdir()
            .expect("token server dir");
        std::fs::write(dir.path().join("token.pem"), certificate.pem()).expect("certificate");
        let signer = Arc::new(Signer {
            key: jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der()),
            kid,
            issuer: config.issuer,
            service: config.service,
            lifetime_secs: AtomicU64::new(config.lifetime.as_secs()),
        });
        let state = Arc::new(State {
            signer,
            users: config.users.into_iter().collect(),
            anonymous_pull: AtomicBool::new(config.anonymous_pull),
            refresh_tokens: Mutex::default(),
            log: Mutex::default(),
        });

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("token server runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("token server bind");
        let port = listener.local_addr().expect("token server address").port();
        let accept_state = state.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            state,
            runtime: Some(runtime),
            dir,
            port,
        }
    }

    /// A server with these users (name, password) and the other settings by default.
    pub fn with_users(users: &[(&str, &str)], anonymous_pull: bool) -> Self {
        Self::start(TokenServerConfig {
            users: users
                .iter()
                .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
                .collect(),
            anonymous_pull,
            ..Default::default()
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/token`, the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    pub fn service(&self) -> &str {
        &self.state.signer.service
    }

    pub fn issuer(&self) -> &str {
        &self.state.signer.issuer
    }

    /// The signing key's libtrust key ID, sent as the tokens' `kid`.
    pub fn kid(&self) -> &str {
        &self.state.signer.kid
    }

    /// The self-signed certificate (PEM) of the signing key: the registry's `rootcertbundle`.
    pub fn certificate_path(&self) -> PathBuf {
        self.dir.path().join("token.pem")
    }

    /// The registry's `auth: token` settings for this server.
    pub fn token_auth(&self) -> TokenAuth {
        TokenAuth {
            realm: self.realm(),
            service: self.service().to_owned(),
            issuer: self.issuer().to_owned(),
            rootcertbundle: self.certificate_path(),
        }
    }

    /// Turns anonymous pull tokens on or off (off: anonymous requests get 401).
    pub fn set_anonymous_pull(&self, allowed: bool) {
        self.state.anonymous_pull.store(allowed, Ordering::SeqCst);
    }

    /// Sets the lifetime of the tokens issued from now on (whole seconds).
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.state
            .signer
            .lifetime_secs
            .store(lifetime.as_secs(), Ordering::SeqCst);
    }

    /// How many requests `/token` got (any method, any outcome but 405).
    pub fn requests(&self) -> usize {
        self.state.log.lock().unwrap().requests.len()
    }

    /// Requests that asked for exactly this scope set (in any order, actions in any order).
    pub fn counts(&self, scopes: &[&str]) -> Counts {
        let key = scope_key(scopes.iter().copied());
        self.all_counts().get(&key).copied().unwrap_or_default()
    }

    /// Requests by requested scope set ([`scope_key`]; `""` for none).
    pub fn all_counts(&self) -> HashMap<String, Counts> {
        self.state.log.lock().unwrap().by_scopes.clone()
    }

    /// Every request so far, in order.
    pub fn log(&self) -> Vec<TokenRequest> {
        self.state.log.lock().unwrap().requests.clone()
    }

    /// Forgets the log and the counters.
    pub fn reset_counters(&self) {
        *self.state.log.lock().unwrap() = Log::default();
    }

    /// A token granting exactly `scopes` (no policy applied, nothing logged), as `subject`.
    pub fn mint(&self, subject: &str, scopes: &[&str]) -> String {
        let access = merge(scopes.iter().filter_map(|s| parse_scope(s)));
        self.state.signer.sign(subject, &access)
    }

    /// For [`crate::proxy::BlobRedirect::upstream_auth`]: a repository's `Bearer` header
    /// value with a pull token minted for it (not logged), as object storage fetching
    /// with its own credentials would.
    pub fn pull_authorization(&self) -> UpstreamAuth {
        let signer = self.state.signer.clone();
        Arc::new(move |repository: &str| {
            let access = [Access {
                kind: "repository".into(),
                name: repository.into(),
                actions: vec!["pull".into()],
            }];
            Some(format!(
                "Bearer {}",
                signer.sign("reposure-test-storage", &access)
            ))
        })
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The libtrust key ID of a public key given as DER SubjectPublicKeyInfo: SHA-256, the
/// first 30 bytes, base32 without padding, 12 groups of 4 joined by `:`.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    let digest = sha2::Sha256::digest(spki_der);
    let encoded = data_encoding::BASE32_NOPAD.encode(&digest[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("base32 is ASCII"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The counter key of a scope set: each scope with its actions sorted, the scopes sorted,
/// deduplicated and joined by one space.
pub fn scope_key<'a>(scopes: impl IntoIterator<Item = &'a str>) -> String {
    normalise(scopes).join(" ")
}

fn normalise<'a>(scopes: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let set: BTreeSet<String> = scopes
        .into_iter()
        .flat_map(|s| s.split(' '))
        .filter(|s| !s.is_empty())
        .map(|scope| match scope.rsplit_once(':') {
            Some((resource, actions)) => {
                let actions: BTreeSet<&str> = actions.split(',').collect();
                format!(
                    "{resource}:{}",
                    actions.into_iter().collect::<Vec<_>>().join(",")
                )
            }
            None => scope.to_owned(),
        })
        .collect();
    set.into_iter().collect()
}

/// `type[(class)]:name:actions` → an access entry (the class dropped; the name may hold
/// a `:`, as a host with a port does).
fn parse_scope(scope: &str) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let kind = kind.split('(').next().unwrap_or(kind);
    if kind.is_empty() || name.is_empty() {
        return None;
    }
    Some(Access {
        kind: kind.into(),
        name: name.into(),
        actions: actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// One entry per resource, actions merged, in a stable order.
fn merge(entries: impl Iterator<Item = Access>) -> Vec<Access> {
    let mut merged: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for entry in entries {
        merged
            .entry((entry.kind, entry.name))
            .or_default()
            .extend(entry.actions);
    }
    merged
        .into_iter()
        .filter(|(_, actions)| !actions.is_empty())
        .map(|((kind, name), actions)| Access {
            kind,
            name,
            actions: actions.into_iter().collect(),
        })
        .collect()
}

/// What `account` (`None`: anonymous) may do on a resource: explicit actions, and
/// whether `*` is granted.
fn allowed(account: Option<&str>, kind: &str, name: &str) -> (&'static [&'static str], bool) {
    match (account, kind, name) {
        (Some(_), "repository", _) => (&["pull", "push", "delete"], true),
        (Some(_), "registry", "catalog") => (&[], true),
        (None, "repository", _) => (&["pull"], false),
        _ => (&[], false),
    }
}

/// The intersection of what was asked and what is allowed.
fn grant(account: Option<&str>, requested: &[String]) -> Vec<Access> {
    merge(
        requested
            .iter()
            .filter_map(|s| parse_scope(s))
            .map(|mut a| {
                let (explicit, star) = allowed(account, &a.kind, &a.name);
                a.actions = a
                    .actions
                    .iter()
                    .flat_map(|action| -> Vec<String> {
                        match action.as_str() {
                            "*" if star => vec!["*".into()],
                            "*" => explicit.iter().map(|s| (*s).to_owned()).collect(),
                            other if explicit.contains(&other) => vec![other.to_owned()],
                            _ => Vec::new(),
                        }
                    })
                    .collect();
                a
            }),
    )
}

fn scope_strings(access: &[Access]) -> Vec<String> {
    access
        .iter()
        .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
        .collect()
}

/// Percent-decoding of a query or form component (`+` is a space).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// A refusal: the status and an OAuth-style error body.
struct Refusal(StatusCode, &'static str, String);

fn refuse(status: StatusCode, error: &'static str, description: impl Into<String>) -> Refusal {
    Refusal(status, error, description.into())
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/token" {
        return respond(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
    }
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        _ => {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method_not_allowed"}),
            );
        }
    };
    let basic = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(basic_credentials);
    let params = if method == "GET" {
        pairs(request.uri().query().unwrap_or_default())
    } else {
        match request.into_body().collect().await {
            Ok(body) => pairs(&String::from_utf8_lossy(&body.to_bytes())),
            Err(_) => return respond(StatusCode::BAD_REQUEST, &json!({"error": "bad_body"})),
        }
    };
    let requested = normalise(
        params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    );
    let mut entry = TokenRequest {
        method,
        account: None,
        scopes: requested.clone(),
        granted: Vec::new(),
        status: 200,
    };
    let outcome = if method == "GET" {
        answer_get(state, &params, basic, &requested, &mut entry)
    } else {
        answer_post(state, &params, &requested, &mut entry)
    };
    let response = match outcome {
        Ok(body) => respond(StatusCode::OK, &body),
        Err(Refusal(status, error, description)) => {
            entry.status = status.as_u16();
            let mut response = respond(
                status,
                &json!({"error": error, "error_description": description}),
            );
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static(r#"Basic realm="reposure-test-token""#),
                );
            }
            response
        }
    };
    let mut log = state.log.lock().unwrap();
    let counts = log.by_scopes.entry(requested.join(" ")).or_default();
    if method == "GET" {
        counts.get += 1;
    } else {
        counts.post += 1;
    }
    log.requests.push(entry);
    response
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn check_service(state: &State, params: &[(String, String)]) -> Result<(), Refusal> {
    match param(params, "service") {
        Some(s) if s == state.signer.service => Ok(()),
        Some(s) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("unknown service {s:?}"),
        )),
        None => Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no service",
        )),
    }
}

fn check_password(state: &State, user: &str, password: &str) -> Result<(), Refusal> {
    if state.users.get(user).is_some_and(|p| p == password) {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "incorrect username or password",
        ))
    }
}

fn new_refresh_token(state: &State, user: &str) -> String {
    let token = hex::encode(crate::random_bytes(24));
    state
        .refresh_tokens
        .lock()
        .unwrap()
        .insert(token.clone(), user.to_owned());
    token
}

fn issued_at() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn answer_get(
    state: &State,
    params: &[(String, String)],
    basic: Option<(String, String)>,
    requested: &[String],
    entry: &mut TokenRequest,
) -> Result<Value, Refusal> {
    check_service(state, params)?;
    let account = match basic {
        Some((user, password)) => {
            check_password(state, &user, &password)?;
            Some(user)
        }
        None if state.anonymous_pull.load(Ordering::SeqCst) => None,
        None => {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "anonymous access is off",
            ));
        }
    };
    entry.account = account.clone();
    let access = grant(account.as_deref(), requested);
    entry.granted = scope_strings(&access);
    let token = state
        .signer
        .sign(account.as_deref().unwrap_or_default(), &access);
    let mut body = json!({
        "token": token,
        "access_token": token,
        "expires_in": state.signer.lifetime_secs.load(Ordering::SeqCst),
        "issued_at": issued_at(),
    });
    if let Some(user) = &account
        && param(params, "offline_token") == Some("true")
    {
        body["refresh_token"] = json!(new_refresh_token(state, user));
    }
    Ok(body)
}

fn answer_post(
    state: &State,
    params: &[(String, String)],
    requested: &[String],
    entry: &mut TokenRequest,
) -> Result<Value, Refusal> {
    check_service(state, params)?;
    if param(params, "client_id").is_none_or(str::is_empty) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no client_id",
        ));
    }
    let (user, refresh_token) = match param(params, "grant_type") {
        Some("password") => {
            let (Some(user), Some(password)) =
                (param(params, "username"), param(params, "password"))
            else {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "username and password are required",
                ));
            };
            check_password(state, user, password)?;
            (user.to_owned(), None)
        }
        Some("refresh_token") => {
            let given = param(params, "refresh_token").unwrap_or_default();
            let owner = state.refresh_tokens.lock().unwrap().get(given).cloned();
            let Some(user) = owner else {
                return Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "invalid_grant",
                    "unknown refresh token",
                ));
            };
            (user, Some(given.to_owned()))
        }
        _ => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be password or refresh_token",
            ));
        }
    };
    entry.account = Some(user.clone());
    let access = grant(Some(&user), requested);
    entry.granted = scope_strings(&access);
    let token = state.signer.sign(&user, &access);
    let mut body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "scope": entry.granted.join(" "),
        "expires_in": state.signer.lifetime_secs.load(Ordering::SeqCst),
        "issued_at": issued_at(),
    });
    if param(params, "access_type") == Some("offline") {
        let refresh = refresh_token.unwrap_or_else(|| new_refresh_token(state, &user));
        body["refresh_token"] = json!(refresh);
    }
    Ok(body)
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a response")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The jwt.md example key (x, y) gives the kid the spec prints.
    #[test]
    fn kid_is_the_libtrust_fingerprint() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let x = b64
            .decode("m7zUpx3b-zmVE5cymSs64POG9QcyEpJaYCD82-549_Q")
            .unwrap();
        let y = b64
            .decode("dU3biz8sZ_8GPB-odm8Wxz3lNDr1xcAQQPQaOcr1fmc")
            .unwrap();
        let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        spki.push(4);
        spki.extend(x);
        spki.extend(y);
        assert_eq!(
            libtrust_kid(&spki),
            "PYYO:TEWU:V7JH:26JV:AQTZ:LJC3:SXVJ:XGHA:34F2:2LAQ:ZRMK:Z7Q6"
        );
    }

    #[test]
    fn grants_are_the_intersection() {
        let asked = normalise([
            "repository:a/b:push,pull",
            "registry:catalog:*",
            "repository:127.0.0.1:5000/c:*",
        ]);
        assert_eq!(
            scope_strings(&grant(None, &asked)),
            ["repository:127.0.0.1:5000/c:pull", "repository:a/b:pull"]
        );
        assert_eq!(
            scope_strings(&grant(Some("alice"), &asked)),
            [
                "registry:catalog:*",
                "repository:127.0.0.1:5000/c:*",
                "repository:a/b:pull,push"
            ]
        );
        assert_eq!(
            scope_key(["repository:x:push,pull", "registry:catalog:*"]),
            "registry:catalog:* repository:x:pull,push"
        );
    }
}
