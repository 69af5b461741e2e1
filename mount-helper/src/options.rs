//! `-o` mount options.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reposure_registry::formats::single_file::PushFormat;

/// Options that mount(8) passes to every helper and that mean nothing here.
const GENERIC: &[&str] = &[
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "nofail",
    "_netdev",
    "defaults",
    "async",
    "atime",
    "noatime",
    "relatime",
    "diratime",
    "nodiratime",
];

/// Disk cache size when `cache_dir=` is given without `cache_size=`.
const DEFAULT_CACHE_SIZE: u64 = 4 * 1024 * 1024 * 1024;

/// `SIZE` with an optional K, M, G or T suffix (powers of 1024).
fn parse_size(text: &str) -> Result<u64> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let number: u64 = digits
        .parse()
        .with_context(|| format!("{text:?} is not a size"))?;
    let multiplier: u64 = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => bail!("{text:?}: use a number with K, M, G or T"),
    };
    number
        .checked_mul(multiplier)
        .with_context(|| format!("{text:?} is too large"))
}

/// A number of seconds from `minimum` to an hour, for option `key`.
fn seconds(key: &str, text: &str, minimum: f64) -> Result<Duration> {
    let secs: f64 = text
        .parse()
        .with_context(|| format!("{key}= takes seconds"))?;
    if !(minimum..=3600.0).contains(&secs) {
        bail!("{key}= must be between {minimum} and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parsed `-o` options.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    pub read_only: bool,
    pub format: PushFormat,
    pub ca: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub allow_other: bool,
    pub log: Option<PathBuf>,
    pub metadata_ttl: Duration,
    pub spool_dir: Option<PathBuf>,
    /// Run the registry through an in-process surrogate session (diagnostics, benchmarks).
    pub in_process_session: bool,
    /// Single-file images read as their file (true) or as their archive.
    pub unpack: bool,
    /// A directory for verified file contents.
    pub cache_dir: Option<PathBuf>,
    /// Its size limit in bytes.
    pub cache_size: u64,
    /// For a Kubernetes Registry source: the kubeconfig file and context.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// How long the registry may stay silent before an operation fails (default: the
    /// store's own, 30 s).
    pub timeout: Option<Duration>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            format: PushFormat::Image,
            ca: None,
            username: None,
            password_file: None,
            uid: None,
            gid: None,
            allow_other: false,
            log: None,
            metadata_ttl: Duration::from_secs(1),
            spool_dir: None,
            in_process_session: false,
            unpack: true,
            cache_dir: None,
            cache_size: DEFAULT_CACHE_SIZE,
            kubeconfig: None,
            context: None,
            timeout: None,
        }
    }
}

impl MountOptions {
    /// Parses every `-o` argument (each a comma-separated list).
    pub fn parse<'a>(lists: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut options = Self::default();
        for option in lists
            .into_iter()
            .flat_map(|l| l.split(','))
            .filter(|o| !o.is_empty())
        {
            let (key, value) = match option.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (option, None),
            };
            let value = |what: &str| -> Result<&str> {
                value
                    .filter(|v| !v.is_empty())
                    .with_context(|| format!("option {key} needs a value: {key}={what}"))
            };
            match key {
                "ro" => options.read_only = true,
                "format" => {
                    options.format = value("image|artifact")?
                        .parse()
                        .map_err(anyhow::Error::msg)?
                }
                "ca" => options.ca = Some(value("FILE")?.into()),
                "username" => options.username = Some(value("NAME")?.to_owned()),
                "password_file" => options.password_file = Some(value("FILE")?.into()),
                "password" => bail!(
                    "passwords are not accepted on the command line (other users can read it); use password_file=FILE or the REPOSURE_PASSWORD environment variable"
                ),
                "uid" => options.uid = Some(value("UID")?.parse().context("uid= takes a number")?),
                "gid" => options.gid = Some(value("GID")?.parse().context("gid= takes a number")?),
                "allow_other" => options.allow_other = true,
                "kubeconfig" => options.kubeconfig = Some(value("FILE")?.into()),
                "context" => options.context = Some(value("NAME")?.to_owned()),
                "log" => options.log = Some(value("FILE")?.into()),
                "metadata_ttl" => {
                    options.metadata_ttl = seconds(key, value("SECONDS")?, 0.0)?;
                }
                "timeout" => options.timeout = Some(seconds(key, value("SECONDS")?, 0.1)?),
                "spool_dir" => options.spool_dir = Some(value("DIR")?.into()),
                "cache_dir" => options.cache_dir = Some(value("DIR")?.into()),
                "cache_size" => options.cache_size = parse_size(value("SIZE")?)?,
                "unpack" => {
                    options.unpack = match value("true|false")? {
                        "true" | "yes" | "1" => true,
                        "false" | "no" | "0" => false,
                        other => bail!("unpack= is true or false, not {other:?}"),
                    }
                }
                "transport" => {
                    options.in_process_session = match value("direct|session")? {
                        "direct" => false,
                        "session" => true,
                        other => bail!("transport= is direct or session, not {other:?}"),
                    }
                }
                k if GENERIC.contains(&k) || k.starts_with("x-") => {}
                other => bail!(
                    "unknown option {other:?}; known: ro, format=, ca=, username=, password_file=, uid=, gid=, allow_other, kubeconfig=, context=, log=, metadata_ttl=, timeout=, spool_dir=, unpack=, cache_dir=, cache_size=, transport="
                ),
            }
        }
        if options.password_file.is_some() && options.username.is_none() {
            bail!("password_file= needs username=");
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_and_ignores_generic_options() {
        let o = MountOptions::parse([
            "rw,nofail,_netdev,x-systemd.automount",
            "ro,format=artifact,uid=5,metadata_ttl=0.5",
        ])
        .unwrap();
        assert!(o.read_only);
        assert_eq!(o.format, PushFormat::Artifact);
        assert_eq!(o.uid, Some(5));
        assert_eq!(o.metadata_ttl, Duration::from_millis(500));
        assert_eq!(o.timeout, None);
        let o = MountOptions::parse(["timeout=2.5"]).unwrap();
        assert_eq!(o.timeout, Some(Duration::from_millis(2500)));
        assert!(MountOptions::parse(["timeout=0"]).is_err());
        let o = MountOptions::parse(["cache_dir=/c,cache_size=2G"]).unwrap();
        assert_eq!(o.cache_size, 2 << 30);
        assert!(MountOptions::parse(["cache_size=2X"]).is_err());
    }

    #[test]
    fn refuses_unknown_options_and_passwords_in_argv() {
        assert!(
            MountOptions::parse(["bogus"])
                .unwrap_err()
                .to_string()
                .contains("unknown option")
        );
        let e = MountOptions::parse(["password=hunter2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("password_file") && !e.contains("hunter2"), "{e}");
        assert!(MountOptions::parse(["format=zip"]).is_err());
        assert!(MountOptions::parse(["password_file=/x"]).is_err());
    }
}
