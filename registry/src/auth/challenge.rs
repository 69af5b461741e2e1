//! What a registry asks for in `WWW-Authenticate` (RFC 7235, parsed by `http-auth`).
//!
//! Parsing is lenient where registries in the wild are sloppy: `service` may be missing
//! (Google Artifact Registry), `scope` may be missing (Quay), values may be unquoted
//! (gcr.io), and the reference registry puts every scope it needs into one
//! space-separated `scope` parameter. A header that cannot be parsed at all counts as no
//! challenge.

use reqwest::Url;
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};

/// A Bearer challenge: where to get a token, and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    /// The token service (absolute; resolved against the registry when relative).
    pub realm: Url,
    pub service: Option<String>,
    /// Scopes the registry names as needed, each `type:name:actions`.
    pub scopes: Vec<String>,
    /// `invalid_token`, `insufficient_scope`, ...
    pub error: Option<String>,
}

/// The authentication a registry asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Nothing: the registry answered without asking.
    None,
    Basic,
    Bearer(BearerChallenge),
}

/// The challenge of a response's `WWW-Authenticate` headers, resolved against `base` (the
/// request's URL). Bearer wins over Basic when a registry offers both.
pub fn parse(headers: &HeaderMap, base: &Url) -> Option<Challenge> {
    let mut basic = false;
    for value in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(text) = value.to_str() else {
            continue;
        };
        let Ok(challenges) = http_auth::parse_challenges(text) else {
            continue;
        };
        for challenge in challenges {
            if challenge.scheme.eq_ignore_ascii_case("bearer") {
                let param = |name: &str| {
                    challenge
                        .params
                        .iter()
                        .find(|(key, _)| key.eq_ignore_ascii_case(name))
                        .map(|(_, value)| value.to_unescaped())
                };
                let Some(realm) = param("realm").and_then(|realm| base.join(&realm).ok()) else {
                    continue;
                };
                return Some(Challenge::Bearer(BearerChallenge {
                    realm,
                    service: param("service").filter(|s| !s.is_empty()),
                    scopes: param("scope")
                        .map(|s| s.split_whitespace().map(str::to_owned).collect())
                        .unwrap_or_default(),
                    error: param("error"),
                }));
            }
            basic |= challenge.scheme.eq_ignore_ascii_case("basic");
        }
    }
    basic.then_some(Challenge::Basic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge_of(values: &[&str]) -> Option<Challenge> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(WWW_AUTHENTICATE, value.parse().unwrap());
        }
        parse(&headers, &Url::parse("https://reg.example/v2/").unwrap())
    }

    #[test]
    fn the_reference_registrys_challenge_with_several_scopes() {
        let Some(Challenge::Bearer(bearer)) = challenge_of(&[
            r#"Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope""#,
        ]) else {
            panic!("not a bearer challenge");
        };
        assert_eq!(bearer.realm.as_str(), "https://auth.example/token");
        assert_eq!(bearer.service.as_deref(), Some("reg.example"));
        assert_eq!(
            bearer.scopes,
            ["repository:a/b:pull,push", "repository:c:pull"]
        );
        assert_eq!(bearer.error.as_deref(), Some("insufficient_scope"));
    }

    #[test]
    fn sloppy_challenges_of_hosted_registries() {
        // No service (Google Artifact Registry), unquoted values (gcr.io), a relative realm.
        let Some(Challenge::Bearer(bearer)) =
            challenge_of(&[r#"Bearer realm="/v2/token",service=gcr.io"#])
        else {
            panic!("not a bearer challenge");
        };
        assert_eq!(bearer.realm.as_str(), "https://reg.example/v2/token");
        assert_eq!(bearer.service.as_deref(), Some("gcr.io"));
        assert!(bearer.scopes.is_empty());
        let Some(Challenge::Bearer(bearer)) = challenge_of(&[r#"bearer realm="https://a/t""#])
        else {
            panic!("not a bearer challenge");
        };
        assert_eq!(bearer.service, None);
    }

    #[test]
    fn basic_and_no_challenge() {
        assert_eq!(
            challenge_of(&[r#"Basic realm="registry""#]),
            Some(Challenge::Basic)
        );
        assert_eq!(
            challenge_of(&[
                r#"Basic realm="registry""#,
                r#"Bearer realm="https://a/t",service="s""#
            ])
            .map(|c| matches!(c, Challenge::Bearer(_))),
            Some(true)
        );
        assert_eq!(challenge_of(&[]), None);
        assert_eq!(challenge_of(&["this is not, a challenge=\""]), None);
    }
}
