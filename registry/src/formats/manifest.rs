//! Manifests, indexes and configs as serde types.
//!
//! Only the fields Reposure reads are typed; everything else is preserved by keeping the
//! manifest bytes themselves (a manifest's digest is over its exact bytes, so manifests
//! are never re-serialised once stored).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::media_types;
use crate::digest::Digest;
use crate::error::{RegistryError, Result};

/// The largest manifest read or written: registries refuse larger ones (distribution's
/// limit is 4 MiB), so a larger one is bad input, not something to hold in memory.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

impl Descriptor {
    /// A descriptor of `bytes` with the given media type.
    pub fn of(media_type: &str, bytes: &[u8]) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            artifact_type: None,
            annotations: None,
            platform: None,
        }
    }

    /// One annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// An image manifest (OCI, or Docker schema 2, which has the same shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ImageManifest {
    /// One annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// An image index (or Docker manifest list): the manifests it lists.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexManifest {
    pub schema_version: u32,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// The parts of an image config Reposure reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigSummary {
    #[serde(default)]
    pub created: Option<String>,
}

/// A manifest as fetched: its exact bytes, its digest and its media type.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub bytes: bytes::Bytes,
    pub digest: Digest,
    pub media_type: String,
}

/// What a manifest is.
#[derive(Debug, Clone)]
pub enum ManifestKind {
    Image(Box<ImageManifest>),
    /// An index or manifest list (a multi-platform image).
    Index,
}

/// Determines a manifest's media type from its `mediaType` field, or from its shape when
/// the field is absent (it is optional in OCI manifests).
pub fn media_type_of(bytes: &[u8]) -> Result<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::Corrupt(format!("manifest is not JSON: {e}")))?;
    match probe {
        Probe {
            media_type: Some(mt),
            ..
        } => Ok(mt),
        Probe {
            manifests: Some(_), ..
        } => Ok(media_types::OCI_INDEX.to_owned()),
        Probe {
            layers: Some(_), ..
        } => Ok(media_types::OCI_MANIFEST.to_owned()),
        _ => Err(RegistryError::Corrupt(
            "manifest has no mediaType, layers or manifests".into(),
        )),
    }
}

/// Parses a manifest by media type.
pub fn parse(manifest: &StoredManifest) -> Result<ManifestKind> {
    match manifest.media_type.as_str() {
        media_types::OCI_INDEX | media_types::DOCKER_MANIFEST_LIST => Ok(ManifestKind::Index),
        media_types::OCI_MANIFEST | media_types::DOCKER_MANIFEST => {
            let image: ImageManifest = serde_json::from_slice(&manifest.bytes).map_err(|e| {
                RegistryError::Corrupt(format!("manifest {} does not parse: {e}", manifest.digest))
            })?;
            Ok(ManifestKind::Image(Box::new(image)))
        }
        other => Err(RegistryError::Unsupported(format!(
            "manifest media type {other}"
        ))),
    }
}

/// One platform of a multi-platform image: `os/architecture[/variant]`, as `docker save
/// --platform` and `skopeo --override-os/--override-arch` take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::str::FromStr for Platform {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let word =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, architecture] | [os, architecture, _] if parts.iter().all(word) => Ok(Self {
                os: (*os).to_owned(),
                architecture: (*architecture).to_owned(),
                variant: parts.get(2).map(|v| (*v).to_owned()),
            }),
            _ => Err(RegistryError::Usage(format!(
                "{s:?} is not a platform: use OS/ARCHITECTURE[/VARIANT], as in linux/amd64 or linux/arm64/v8"
            ))),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Whether an index entry's `platform` is this one (a variant asked for must match; an
    /// entry's variant is ignored when none is asked for).
    pub fn matches(&self, descriptor: &Descriptor) -> bool {
        let Some(platform) = &descriptor.platform else {
            return false;
        };
        let field = |name: &str| platform.get(name).and_then(|v| v.as_str());
        field("os") == Some(self.os.as_str())
            && field("architecture") == Some(self.architecture.as_str())
            && self
                .variant
                .as_deref()
                .is_none_or(|variant| field("variant") == Some(variant))
    }

    /// The platforms an index holds, for messages.
    pub fn listed(index: &IndexManifest) -> String {
        index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| {
                let field = |name: &str| p.get(name).and_then(|v| v.as_str()).unwrap_or("?");
                match p.get("variant").and_then(|v| v.as_str()) {
                    Some(variant) => format!("{}/{}/{variant}", field("os"), field("architecture")),
                    None => format!("{}/{}", field("os"), field("architecture")),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
