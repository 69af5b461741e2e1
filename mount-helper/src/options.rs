//! `-o` mount options.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reposure_registry::credentials::UserOptions;
use reposure_registry::formats::manifest::Platform;
use reposure_registry::formats::single_file::PushFormat;
use reposure_registry::names;
use reposure_registry::units::parse_size;

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
    /// How to reach an http(s) registry: `ca=`, `username=`, `password_file=`,
    /// `token_file=`, `docker_config=`, `timeout=`, `max_chunk=`.
    pub http: UserOptions,
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
    /// Repositories to list even when the registry has no catalog.
    pub repositories: Vec<String>,
    /// The platform multi-platform images read as.
    pub platform: Option<Platform>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            format: PushFormat::Image,
            http: UserOptions::default(),
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
            repositories: Vec::new(),
            platform: None,
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
                "ca" => options.http.ca = Some(value("FILE")?.into()),
                "username" => options.http.username = Some(value("NAME")?.to_owned()),
                "password_file" => options.http.password_file = Some(value("FILE")?.into()),
                "token_file" => options.http.token_file = Some(value("FILE")?.into()),
                "docker_config" => options.http.docker_config = Some(value("FILE")?.into()),
                "max_chunk" => options.http.max_chunk = Some(parse_size(value("SIZE")?)?),
                "platform" => options.platform = Some(value("OS/ARCH[/VARIANT]")?.parse()?),
                "repositories" => {
                    for repository in value("REPO[:REPO...]")?.split(':') {
                        names::check_repository(repository)?;
                        options.repositories.push(repository.to_owned());
                    }
                }
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
                "timeout" => options.http.timeout = Some(seconds(key, value("SECONDS")?, 0.1)?),
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
                    "unknown option {other:?}; known: ro, format=, ca=, username=, password_file=, token_file=, docker_config=, uid=, gid=, allow_other, kubeconfig=, context=, log=, metadata_ttl=, timeout=, max_chunk=, repositories=, platform=, spool_dir=, unpack=, cache_dir=, cache_size=, transport="
                ),
            }
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
        assert_eq!(o.http.timeout, None);
        let o = MountOptions::parse(["timeout=2.5"]).unwrap();
        assert_eq!(o.http.timeout, Some(Duration::from_millis(2500)));
        let o = MountOptions::parse(["repositories=library/alpine:org/app,max_chunk=8M"]).unwrap();
        assert_eq!(o.repositories, ["library/alpine", "org/app"]);
        assert_eq!(o.http.max_chunk, Some(8 << 20));
        assert!(MountOptions::parse(["repositories=Bad"]).is_err());
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
    }
}
