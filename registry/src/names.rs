//! Repository and tag names, checked against the distribution spec's grammar.
//!
//! * repository: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
//! * tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`
//!
//! The checks are written out by hand rather than as regular expressions so that each
//! failure can name the rule that was broken; that rule is what the user sees.

use crate::error::{RegistryError, Result};

/// The tag a bare image name stands for.
pub const DEFAULT_TAG: &str = "latest";

/// Longest tag the spec allows.
pub const MAX_TAG_LEN: usize = 128;

/// Longest repository name we accept; the spec recommends registries accept at least 255
/// characters including the host, so names longer than this are refused by many of them.
pub const MAX_REPOSITORY_LEN: usize = 255;

/// Checks one path segment of a repository name.
pub fn check_repository_segment(segment: &str) -> Result<()> {
    let rule = |r: &str| Err(RegistryError::invalid_name(segment, r));
    if segment.is_empty() {
        return rule("a repository path segment cannot be empty");
    }
    let bytes = segment.as_bytes();
    if bytes.iter().any(u8::is_ascii_uppercase) {
        return rule("repository names must be lower case (upper case is only allowed in tags)");
    }
    if !bytes[0].is_ascii_lowercase() && !bytes[0].is_ascii_digit() {
        return rule("a repository segment must start with a lower-case letter or a digit");
    }
    if !bytes[bytes.len() - 1].is_ascii_lowercase() && !bytes[bytes.len() - 1].is_ascii_digit() {
        return rule("a repository segment must end with a lower-case letter or a digit");
    }
    let mut previous_separator: Option<u8> = None;
    let mut separator_run = 0;
    for &b in bytes {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => {
                previous_separator = None;
                separator_run = 0;
            }
            b'.' | b'_' | b'-' => {
                separator_run += 1;
                let allowed = match (previous_separator, b) {
                    (None, _) => true,
                    (Some(b'_'), b'_') => separator_run == 2,
                    (Some(b'-'), b'-') => true,
                    _ => false,
                };
                if !allowed {
                    return rule(
                        "separators in a repository segment are one '.', one or two '_', or a run of '-'",
                    );
                }
                previous_separator = Some(b);
            }
            _ => {
                return rule(
                    "a repository segment may contain only a-z, 0-9 and the separators '.', '_', '-'",
                );
            }
        }
    }
    Ok(())
}

/// Checks a whole repository name (`a/b/c`).
pub fn check_repository(name: &str) -> Result<()> {
    if name.len() > MAX_REPOSITORY_LEN {
        return Err(RegistryError::invalid_name(
            name,
            format!("a repository name may be at most {MAX_REPOSITORY_LEN} characters"),
        ));
    }
    name.split('/').try_for_each(check_repository_segment)
}

/// Checks a tag.
pub fn check_tag(tag: &str) -> Result<()> {
    let rule = |r: String| Err(RegistryError::invalid_name(tag, r));
    if tag.is_empty() {
        return rule("a tag cannot be empty".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return rule(format!("a tag may be at most {MAX_TAG_LEN} characters"));
    }
    let bytes = tag.as_bytes();
    if bytes[0] == b'.' || bytes[0] == b'-' {
        return rule("a tag must start with a letter, a digit or '_'".into());
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return rule("a tag may contain only A-Z, a-z, 0-9, '_', '.' and '-'".into());
    }
    Ok(())
}

/// The last segment of a repository path (`c` of `a/b/c`): the name its images have as
/// files.
pub fn base_name(repository: &str) -> &str {
    parent_and_base(repository).1
}

/// A repository path split at its last `/`: the parent path (`""` at the top) and the last
/// segment.
pub fn parent_and_base(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// Whether a tag belongs to the referrers fallback scheme (`sha256-<64 hex>` with an optional
/// suffix). Such tags are bookkeeping for signatures and SBOMs, not images a user named.
pub fn is_referrers_fallback_tag(tag: &str) -> bool {
    tag.strip_prefix("sha256-")
        .map(|rest| rest.len() >= 64 && rest.as_bytes()[..64].iter().all(u8::is_ascii_hexdigit))
        .unwrap_or(false)
}

/// Which manifest a reference points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag, such as `latest` or `v1.2.3`.
    Tag(String),
    /// A manifest digest, such as `sha256:...`.
    Digest(crate::digest::Digest),
}

impl Reference {
    /// The reference as it appears in a URL path.
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) => t,
            Reference::Digest(d) => d.as_str(),
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An image name as people write it: `REPOSITORY[:TAG]` (the tag defaults to `latest`) or
/// `REPOSITORY@sha256:HEX`, checked against the naming rules.
pub fn parse_image(name: &str) -> Result<(String, Reference)> {
    if let Some((repository, digest)) = name.split_once('@') {
        check_repository(repository)?;
        return Ok((
            repository.to_owned(),
            Reference::Digest(crate::digest::Digest::parse(digest)?),
        ));
    }
    let (repository, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (name, DEFAULT_TAG),
    };
    check_repository(repository)?;
    check_tag(tag)?;
    Ok((repository.to_owned(), Reference::Tag(tag.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_repository_names() {
        for name in ["a", "myrepo/hello", "a.b/c_d/e__f/g--h", "0/1", "x-y-z"] {
            check_repository(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn refuses_bad_repository_names_with_the_rule() {
        let cases = [
            ("Hello", "lower case"),
            ("a b", "may contain only"),
            (".hidden", "must start"),
            ("a..b", "separators"),
            ("a___b", "separators"),
            ("a_-b", "separators"),
            ("a/", "empty"),
            ("a-", "must end"),
        ];
        for (name, rule) in cases {
            let err = check_repository(name).unwrap_err().to_string();
            assert!(err.contains(rule), "{name}: {err}");
        }
    }

    #[test]
    fn parents_and_base_names() {
        assert_eq!(parent_and_base("a/b/c"), ("a/b", "c"));
        assert_eq!(parent_and_base("c"), ("", "c"));
        assert_eq!(base_name("a/b"), "b");
    }

    #[test]
    fn tags() {
        check_tag("v1.2.3").unwrap();
        check_tag("_x").unwrap();
        check_tag(&"a".repeat(128)).unwrap();
        assert!(check_tag(&"a".repeat(129)).is_err());
        assert!(check_tag(".x").is_err());
        assert!(check_tag("a b").is_err());
        assert!(check_tag("a:b").is_err());
    }

    #[test]
    fn referrers_fallback_tags() {
        let hex = "a".repeat(64);
        assert!(is_referrers_fallback_tag(&format!("sha256-{hex}")));
        assert!(is_referrers_fallback_tag(&format!("sha256-{hex}.sig")));
        assert!(!is_referrers_fallback_tag("sha256-abc"));
        assert!(!is_referrers_fallback_tag("latest"));
    }
}
