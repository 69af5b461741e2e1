//! One file as an image, and an image as one file.
//!
//! **Writing.** With `format=image` (the default) a file becomes a real container image:
//! an OCI manifest with one *uncompressed* tar layer holding the file under its own name,
//! a config with `rootfs.diff_ids`, `os` and `architecture`, the layer annotation
//! `org.opencontainers.image.title`, and `org.opencontainers.image.created` on the
//! manifest. The layer is left uncompressed so that the file's bytes sit at a fixed offset
//! in the blob: any byte of the file can then be read with one HTTP Range request. With
//! `format=artifact` the file is stored the ORAS way: the raw bytes as the one layer, the
//! empty config, and an `artifactType`.
//!
//! **Reading.** [`classify`] decides from a manifest how the file's bytes are laid out:
//! raw in a blob (artifacts), inside an uncompressed tar, or inside gzip (a tar+gzip
//! layer, or the raw gzip the original Go Reposure wrote). The registry layer then probes
//! the blob's first bytes to find the exact offset and size.

use std::collections::BTreeMap;

use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use super::manifest::{Descriptor, ImageManifest};
use super::media_types as mt;
use crate::digest::Digest;

/// How a pushed file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushFormat {
    /// A container image with one uncompressed tar layer.
    #[default]
    Image,
    /// An ORAS-style artifact: the raw bytes as the layer.
    Artifact,
}

impl std::str::FromStr for PushFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "image" => Ok(Self::Image),
            "artifact" => Ok(Self::Artifact),
            other => Err(format!("format must be image or artifact, not {other:?}")),
        }
    }
}

/// What a single-file image records about its file.
#[derive(Debug, Clone, Copy)]
pub struct FileSpec<'a> {
    pub format: PushFormat,
    /// The file's name inside the image.
    pub file_name: &'a str,
    /// When the image is made (its `created`).
    pub created: DateTime<Utc>,
    /// Permission bits.
    pub mode: u32,
    /// When the file was last modified.
    pub modified: DateTime<Utc>,
}

/// The empty config blob of artifacts.
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// The bytes that surround a file's content in its single-file tar layer.
pub struct TarFraming {
    /// Header blocks (including any long-name extension) before the content.
    pub header: Vec<u8>,
    /// Padding to a whole block plus the two zero blocks that end the archive.
    pub trailer: Vec<u8>,
}

/// Builds the tar framing for a file of `size` bytes named `file_name`, with its mode and
/// modification time in the header (extraction by any tool restores them).
pub fn tar_framing(
    file_name: &str,
    size: u64,
    mode: u32,
    modified: DateTime<Utc>,
) -> std::io::Result<TarFraming> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(mode & 0o7777);
    header.set_mtime(modified.timestamp().max(0) as u64);
    // `append_data` writes the header blocks (with a GNU long-name entry when the name needs
    // one) and then copies the data; with no data it writes the header blocks alone, which
    // is exactly the prefix of the layer. The content itself is streamed by the caller.
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    builder.append_data(&mut header, file_name, std::io::empty())?;
    // `into_inner` ends the archive with two zero blocks; keep only what was written so far.
    let written = builder.get_ref().len();
    let mut header_bytes = builder.into_inner()?;
    header_bytes.truncate(written);
    debug_assert_eq!(header_bytes.len() % 512, 0);
    let padding = super::tar_probe::padded(size) - size;
    let trailer = vec![0u8; padding as usize + 1024];
    Ok(TarFraming {
        header: header_bytes,
        trailer,
    })
}

/// The Go `GOARCH` name of the machine, as image configs spell it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// RFC 3339 as used in annotations and configs.
pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The layer annotations of a pushed file: its name, its exact modification time, and (an
/// artifact has no tar header) its mode.
fn file_annotations(
    format: PushFormat,
    file_name: &str,
    mode: u32,
    modified: DateTime<Utc>,
) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::from([
        (mt::ANNOTATION_TITLE.to_owned(), file_name.to_owned()),
        (
            mt::ANNOTATION_FILE_MODIFIED.to_owned(),
            modified.to_rfc3339_opts(SecondsFormat::Nanos, true),
        ),
    ]);
    if format == PushFormat::Artifact {
        annotations.insert(
            mt::ANNOTATION_FILE_MODE.to_owned(),
            format!("{:o}", mode & 0o7777),
        );
    }
    annotations
}

/// The mode and time a layer's annotations record, where they do.
pub fn annotated_attributes(layer: &Descriptor) -> (Option<u32>, Option<SystemTime>) {
    let mode = layer
        .annotation(mt::ANNOTATION_FILE_MODE)
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .filter(|m| *m <= 0o7777);
    let modified = layer
        .annotation(mt::ANNOTATION_FILE_MODIFIED)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(SystemTime::from);
    (mode, modified)
}

/// The config blob of a single-file image whose (uncompressed) layer has `layer_digest`.
pub fn image_config(layer_digest: &Digest, created: DateTime<Utc>) -> Vec<u8> {
    let created = rfc3339(created);
    serde_json::to_vec(&json!({
        "created": created,
        "architecture": go_arch(),
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [{ "created": created, "created_by": "reposure push" }],
    }))
    .expect("config serialises")
}

/// The manifest of a pushed file.
pub fn manifest(file: &FileSpec<'_>, layer: (Digest, u64), config: Descriptor) -> Vec<u8> {
    let FileSpec {
        format,
        file_name,
        created,
        ..
    } = *file;
    let layer_media_type = match format {
        PushFormat::Image => mt::OCI_LAYER_TAR,
        PushFormat::Artifact => mt::OCTET_STREAM,
    };
    let layer = Descriptor {
        media_type: layer_media_type.to_owned(),
        digest: layer.0,
        size: layer.1,
        artifact_type: None,
        annotations: Some(file_annotations(
            format,
            file_name,
            file.mode,
            file.modified,
        )),
        platform: None,
    };
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(mt::OCI_MANIFEST.to_owned()),
        artifact_type: (format == PushFormat::Artifact)
            .then(|| mt::REPOSURE_FILE_ARTIFACT.to_owned()),
        config,
        layers: vec![layer],
        subject: None,
        annotations: Some(BTreeMap::from([(
            mt::ANNOTATION_CREATED.to_owned(),
            rfc3339(created),
        )])),
    };
    serde_json::to_vec(&manifest).expect("manifest serialises")
}

/// How a manifest's file bytes are laid out, before probing the blob.
#[derive(Debug, Clone, PartialEq)]
pub enum Classification {
    /// The blob is the file (an artifact's titled layer).
    Raw(Descriptor),
    /// The file is an entry of this uncompressed tar layer.
    Tar(Descriptor),
    /// The file is inside this gzip layer: a tar entry, or the whole stream.
    Gzip(Descriptor),
    /// Not a single file; the reason says why.
    NotAFile(String),
}

/// Decides how to read a manifest as one file.
pub fn classify(manifest: &ImageManifest) -> Classification {
    let [layer] = manifest.layers.as_slice() else {
        return Classification::NotAFile(format!(
            "the image has {} layers; only single-layer images read as one file",
            manifest.layers.len()
        ));
    };
    let config_is_image = manifest.config.media_type == mt::OCI_CONFIG
        || manifest.config.media_type == mt::DOCKER_CONFIG;
    let is_artifact = manifest.artifact_type.is_some() || !config_is_image;
    if is_artifact {
        if layer.annotation(mt::ANNOTATION_TITLE).is_none() {
            return Classification::NotAFile("the artifact's layer has no title".into());
        }
        if layer.annotation("io.deis.oras.content.unpack").is_some() {
            return Classification::NotAFile("the artifact's layer is a packed directory".into());
        }
        return Classification::Raw(layer.clone());
    }
    if mt::is_tar(&layer.media_type) {
        Classification::Tar(layer.clone())
    } else if mt::is_gzip(&layer.media_type) {
        Classification::Gzip(layer.clone())
    } else {
        Classification::NotAFile(format!(
            "layer media type {} is not a tar",
            layer.media_type
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::tar_probe::{TarProbe, probe};

    #[test]
    fn framing_makes_a_tar_with_the_file_its_mode_and_time() {
        let content = b"hello, world\n";
        let modified = DateTime::parse_from_rfc3339("2024-05-06T07:08:09Z")
            .unwrap()
            .with_timezone(&Utc);
        let framing = tar_framing("hello", content.len() as u64, 0o755, modified).unwrap();
        let tar = [
            framing.header.as_slice(),
            content,
            framing.trailer.as_slice(),
        ]
        .concat();
        assert_eq!(tar.len() % 512, 0);
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("hello"));
        let mut out = String::new();
        std::io::Read::read_to_string(&mut entry, &mut out).unwrap();
        assert_eq!(out.as_bytes(), content);
        drop(entry);
        assert!(entries.next().is_none());
        assert_eq!(
            probe(&tar, true),
            TarProbe::File {
                name: "hello".into(),
                offset: framing.header.len() as u64,
                size: 13,
                mode: 0o755,
                mtime: modified.timestamp() as u64,
            }
        );
    }

    #[test]
    fn framing_handles_long_names() {
        let name = "n".repeat(140);
        let framing = tar_framing(&name, 3, 0o644, Utc::now()).unwrap();
        let tar = [
            framing.header.as_slice(),
            b"abc",
            framing.trailer.as_slice(),
        ]
        .concat();
        let TarProbe::File { name: found, .. } = probe(&tar, true) else {
            panic!()
        };
        assert_eq!(found, name);
    }

    fn pushed(format: PushFormat) -> ImageManifest {
        let layer = Digest::of(b"x");
        let config = match format {
            PushFormat::Image => Descriptor::of(mt::OCI_CONFIG, &image_config(&layer, Utc::now())),
            PushFormat::Artifact => Descriptor::of(mt::OCI_EMPTY, EMPTY_CONFIG),
        };
        let file = FileSpec {
            format,
            file_name: "f",
            created: Utc::now(),
            mode: 0o750,
            modified: DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap(),
        };
        serde_json::from_slice(&manifest(&file, (layer, 1), config)).unwrap()
    }

    #[test]
    fn the_exact_time_and_an_artifacts_mode_are_annotated() {
        let image = pushed(PushFormat::Image);
        let (mode, modified) = annotated_attributes(&image.layers[0]);
        assert_eq!(mode, None, "an image's mode is in its tar header");
        assert_eq!(
            modified,
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789))
        );
        let artifact = pushed(PushFormat::Artifact);
        assert_eq!(annotated_attributes(&artifact.layers[0]).0, Some(0o750));
    }

    #[test]
    fn our_formats_classify_back() {
        assert!(matches!(
            classify(&pushed(PushFormat::Image)),
            Classification::Tar(_)
        ));
        assert!(matches!(
            classify(&pushed(PushFormat::Artifact)),
            Classification::Raw(_)
        ));
        let mut two = pushed(PushFormat::Image);
        two.layers.push(two.layers[0].clone());
        assert!(matches!(classify(&two), Classification::NotAFile(_)));
    }

    #[test]
    fn artifact_config_is_the_empty_descriptor() {
        let m = pushed(PushFormat::Artifact);
        assert_eq!(
            m.config.digest.as_str(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(m.artifact_type.as_deref(), Some(mt::REPOSURE_FILE_ARTIFACT));
    }
}
