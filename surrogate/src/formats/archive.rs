//! An image as one archive file that both `skopeo copy docker-archive:` and
//! `oci-archive:` accept: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`)
//! plus a Docker `manifest.json` that points into `blobs/`. Blobs are stored as they are
//! in the registry (no recompression), so the archive's exact size and the offset of every
//! byte are known from the manifest before anything is downloaded.

use bytes::Bytes;
use serde_json::json;

use super::manifest::{Descriptor, ImageManifest, StoredManifest};
use super::media_types as mt;
use super::tar_probe::{BLOCK, padded};

/// Where an entry's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Bytes held in the plan (small JSON documents).
    Inline(Bytes),
    /// A blob of the image.
    Blob(Descriptor),
}

/// One file of the archive.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    pub source: Source,
    /// Offset of the entry's tar header in the archive.
    pub offset: u64,
}

/// The archive of one image, laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivePlan {
    pub entries: Vec<Entry>,
}

impl ArchivePlan {
    /// Lays out the archive of `manifest` (an image manifest) tagged `reference`
    /// (`repository:tag`).
    pub fn new(manifest: &StoredManifest, image: &ImageManifest, reference: &str) -> Self {
        let blob_path = |d: &Descriptor| format!("blobs/sha256/{}", d.digest.hex());
        let mut index_entry = Descriptor::of(&manifest.media_type, &manifest.bytes);
        index_entry.annotations =
            Some([(mt::ANNOTATION_REF_NAME.to_owned(), reference.to_owned())].into());
        let index =
            json!({ "schemaVersion": 2, "mediaType": mt::OCI_INDEX, "manifests": [index_entry] });
        let docker = json!([{
            "Config": blob_path(&image.config),
            "RepoTags": [reference],
            "Layers": image.layers.iter().map(blob_path).collect::<Vec<_>>(),
        }]);
        let inline =
            |path: &str, bytes: Vec<u8>| (path.to_owned(), Source::Inline(Bytes::from(bytes)));
        let mut files = vec![
            inline("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            inline(
                "index.json",
                serde_json::to_vec(&index).expect("index serialises"),
            ),
            inline(
                "manifest.json",
                serde_json::to_vec(&docker).expect("manifest serialises"),
            ),
            (
                format!("blobs/sha256/{}", manifest.digest.hex()),
                Source::Inline(manifest.bytes.clone()),
            ),
            (blob_path(&image.config), Source::Blob(image.config.clone())),
        ];
        for layer in &image.layers {
            let path = blob_path(layer);
            if !files.iter().any(|(p, _)| *p == path) {
                files.push((path, Source::Blob(layer.clone())));
            }
        }
        let mut offset = 0;
        let entries = files
            .into_iter()
            .map(|(path, source)| {
                let size = match &source {
                    Source::Inline(bytes) => bytes.len() as u64,
                    Source::Blob(d) => d.size,
                };
                let entry = Entry {
                    path,
                    size,
                    source,
                    offset,
                };
                offset += BLOCK + padded(size);
                entry
            })
            .collect();
        Self { entries }
    }

    /// The archive's exact length: each entry's header and padded data, then two zero
    /// blocks.
    pub fn size(&self) -> u64 {
        self.entries
            .last()
            .map_or(0, |e| e.offset + BLOCK + padded(e.size))
            + 2 * BLOCK
    }
}

/// The tar header of an entry (paths are short: `blobs/sha256/` and 64 hex digits).
pub fn header(entry: &Entry) -> [u8; 512] {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(&entry.path)
        .expect("archive paths fit a ustar header");
    header.set_size(entry.size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    *header.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn layout_offsets_and_size_match_a_real_tar() {
        let layer = b"layer bytes".to_vec();
        let config = b"{}".to_vec();
        let image = ImageManifest {
            schema_version: 2,
            media_type: Some(mt::OCI_MANIFEST.into()),
            artifact_type: None,
            config: Descriptor::of(mt::OCI_CONFIG, &config),
            layers: vec![Descriptor::of(mt::OCI_LAYER_TAR, &layer)],
            subject: None,
            annotations: None,
        };
        let bytes = serde_json::to_vec(&image).unwrap();
        let stored = StoredManifest {
            digest: Digest::of(&bytes),
            bytes: bytes.into(),
            media_type: mt::OCI_MANIFEST.into(),
        };
        let plan = ArchivePlan::new(&stored, &image, "r:t");
        let mut archive = Vec::new();
        for entry in &plan.entries {
            assert_eq!(archive.len() as u64, entry.offset);
            archive.extend_from_slice(&header(entry));
            let data: &[u8] = match &entry.source {
                Source::Inline(b) => b,
                Source::Blob(d) if d.digest == Digest::of(&layer) => &layer,
                Source::Blob(_) => &config,
            };
            archive.extend_from_slice(data);
            archive.resize(
                archive.len() + (padded(entry.size) - entry.size) as usize,
                0,
            );
        }
        archive.resize(archive.len() + 1024, 0);
        assert_eq!(archive.len() as u64, plan.size());
        let names: Vec<String> = tar::Archive::new(archive.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&"manifest.json".to_string())
                && names.contains(&"index.json".to_string())
        );
    }
}
