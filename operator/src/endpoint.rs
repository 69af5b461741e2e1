//! Where the surrogate reaches a Registry, and whether over HTTP or HTTPS.
//!
//! The rule, stated once here and in the README:
//! * `direct.host` with a scheme (`http://127.0.0.1:5000`, `https://reg.example`) is used as
//!   written.
//! * Otherwise HTTPS, with the CA from `authenticationSecret` when one is given and the
//!   system roots when not — except that a host on a loopback or private address (or an
//!   in-cluster Service name) with no CA secret is spoken to over plain HTTP, the original
//!   Reposure's rule for registries inside a cluster.
//! * `indirect` names a Service: `SERVICE.NAMESPACE.svc:PORT`, resolved by the pod's DNS.

use std::net::IpAddr;

use reposure_client::resource::RegistrySpec;

/// Why a spec cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

/// The registry URL (`http(s)://HOST[:PORT]`) for a spec in `namespace`.
pub fn registry_url(spec: &RegistrySpec, namespace: &str) -> Result<String, InvalidSpec> {
    let has_ca = spec.authentication_secret.is_some();
    match (&spec.direct, &spec.indirect) {
        (Some(_), Some(_)) | (None, None) => Err(InvalidSpec(
            "set exactly one of spec.direct.host and spec.indirect".into(),
        )),
        (Some(direct), None) => {
            let host = direct.host.trim().trim_end_matches('/');
            if host.is_empty() {
                return Err(InvalidSpec("spec.direct.host is empty".into()));
            }
            if let Some(rest) = host
                .strip_prefix("http://")
                .or_else(|| host.strip_prefix("https://"))
            {
                if rest.is_empty() || rest.contains('/') {
                    return Err(InvalidSpec(format!(
                        "spec.direct.host {host:?} must be [SCHEME://]HOST[:PORT], without a path"
                    )));
                }
                if host.starts_with("http://") && has_ca {
                    return Err(InvalidSpec(
                        "spec.direct.host says http:// but an authenticationSecret (a CA for TLS) is given; use https:// or drop the secret".into(),
                    ));
                }
                return Ok(host.to_owned());
            }
            if host.contains('/') || host.contains('@') {
                return Err(InvalidSpec(format!(
                    "spec.direct.host {host:?} must be [SCHEME://]HOST[:PORT]"
                )));
            }
            let scheme = if !has_ca && is_private(host_part(host)) {
                "http"
            } else {
                "https"
            };
            Ok(format!("{scheme}://{host}"))
        }
        (None, Some(indirect)) => {
            if indirect.service.is_empty() || indirect.port == 0 {
                return Err(InvalidSpec(
                    "spec.indirect needs a service and a port".into(),
                ));
            }
            let service_namespace = indirect.namespace.as_deref().unwrap_or(namespace);
            let scheme = if has_ca { "https" } else { "http" };
            Ok(format!(
                "{scheme}://{}.{service_namespace}.svc:{}",
                indirect.service, indirect.port
            ))
        }
    }
}

/// The host of `HOST[:PORT]` (IPv6 literals in brackets).
fn host_part(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Loopback, private (RFC 1918, RFC 4193), link-local, `localhost`, and in-cluster names.
fn is_private(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".svc") || host.ends_with(".svc.cluster.local") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reposure_client::resource::{RegistryDirect, RegistryIndirect, RegistryType};

    fn direct(host: &str, ca: bool) -> RegistrySpec {
        RegistrySpec {
            type_: RegistryType::Oci,
            direct: Some(RegistryDirect { host: host.into() }),
            indirect: None,
            authentication_secret: ca.then(|| "ca".into()),
            authentication_secret_data_key: None,
            authorization_secret: None,
        }
    }

    #[test]
    fn the_scheme_rule() {
        let cases = [
            ("http://127.0.0.1:5000", false, "http://127.0.0.1:5000"),
            ("https://10.0.0.1", false, "https://10.0.0.1"),
            ("127.0.0.1:5000", false, "http://127.0.0.1:5000"),
            ("192.168.1.9:5000", false, "http://192.168.1.9:5000"),
            ("[::1]:5000", false, "http://[::1]:5000"),
            ("[fd00::1]:5000", false, "http://[fd00::1]:5000"),
            ("192.168.1.9:5000", true, "https://192.168.1.9:5000"),
            (
                "registry.example:5000",
                false,
                "https://registry.example:5000",
            ),
            ("8.8.8.8", false, "https://8.8.8.8"),
            (
                "registry.kube-system.svc:80",
                false,
                "http://registry.kube-system.svc:80",
            ),
        ];
        for (host, ca, want) in cases {
            assert_eq!(
                registry_url(&direct(host, ca), "ns").unwrap(),
                want,
                "{host} ca={ca}"
            );
        }
    }

    #[test]
    fn indirect_names_the_service() {
        let mut spec = direct("x", false);
        spec.direct = None;
        spec.indirect = Some(RegistryIndirect {
            namespace: None,
            service: "registry".into(),
            port: 5000,
        });
        assert_eq!(
            registry_url(&spec, "team").unwrap(),
            "http://registry.team.svc:5000"
        );
        spec.authentication_secret = Some("ca".into());
        assert_eq!(
            registry_url(&spec, "team").unwrap(),
            "https://registry.team.svc:5000"
        );
    }

    #[test]
    fn bad_specs_say_what_to_fix() {
        let mut both = direct("h", false);
        both.indirect = Some(RegistryIndirect {
            namespace: None,
            service: "s".into(),
            port: 1,
        });
        assert!(
            registry_url(&both, "n")
                .unwrap_err()
                .0
                .contains("exactly one")
        );
        assert!(registry_url(&direct("http://h/v2", false), "n").is_err());
        assert!(
            registry_url(&direct("http://h", true), "n")
                .unwrap_err()
                .0
                .contains("https://")
        );
        assert!(registry_url(&direct("u:p@h", false), "n").is_err());
    }
}
