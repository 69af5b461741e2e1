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
    /// Lays out the archive whose `index.json` points at `root`. `images` are the image
    /// manifests it holds: `root` itself for an image, or the manifests of an index.
    /// `reference` (`repository:tag`) names the image in `manifest.json` and `index.json`.
    pub fn new(
        root: &StoredManifest,
        images: &[(StoredManifest, ImageManifest)],
        reference: Option<&str>,
    ) -> Self {
        let blob_path = |d: &Descriptor| format!("blobs/sha256/{}", d.digest.hex());
        let mut index_entry = Descriptor::of(&root.media_type, &root.bytes);
        if let Some(reference) = reference {
            index_entry.annotations =
                Some([(mt::ANNOTATION_REF_NAME.to_owned(), reference.to_owned())].into());
        }
        let index =
            json!({ "schemaVersion": 2, "mediaType": mt::OCI_INDEX, "manifests": [index_entry] });
        let docker: Vec<serde_json::Value> = images
            .iter()
            .enumerate()
            .map(|(i, (_, image))| {
                json!({
                    "Config": blob_path(&image.config),
                    "RepoTags": if i == 0 { reference.into_iter().collect::<Vec<_>>() } else { Vec::new() },
                    "Layers": image.layers.iter().map(blob_path).collect::<Vec<_>>(),
                })
            })
            .collect();
        let inline = |path: String, bytes: Vec<u8>| (path, Source::Inline(Bytes::from(bytes)));
        let mut files = vec![
            inline(
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            inline(
                "index.json".into(),
                serde_json::to_vec(&index).expect("index serialises"),
            ),
            inline(
                "manifest.json".into(),
                serde_json::to_vec(&docker).expect("manifest serialises"),
            ),
        ];
        let mut add = |path: String, source: Source| {
            if !files.iter().any(|(p, _)| *p == path) {
                files.push((path, source));
            }
        };
        add(
            format!("blobs/sha256/{}", root.digest.hex()),
            Source::Inline(root.bytes.clone()),
        );
        for (stored, image) in images {
            add(
                format!("blobs/sha256/{}", stored.digest.hex()),
                Source::Inline(stored.bytes.clone()),
            );
            add(blob_path(&image.config), Source::Blob(image.config.clone()));
            for layer in &image.layers {
                add(blob_path(layer), Source::Blob(layer.clone()));
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
        let plan = ArchivePlan::new(&stored, &[(stored.clone(), image.clone())], Some("r:t"));
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

/// A piece of an archive byte range: bytes made here, or a range of a blob.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Bytes(Bytes),
    Blob {
        descriptor: Descriptor,
        offset: u64,
        length: u64,
    },
}

impl ArchivePlan {
    /// The pieces that make up `length` bytes of the archive from `offset`.
    pub fn pieces(&self, offset: u64, length: u64) -> Vec<Piece> {
        let end = (offset + length).min(self.size());
        let mut pieces = Vec::new();
        let mut emit = |start: u64, region_len: u64, make: &dyn Fn(u64, u64) -> Piece| {
            // Intersect [start, start + region_len) with [offset, end).
            let from = start.max(offset);
            let to = (start + region_len).min(end);
            if from < to {
                pieces.push(make(from - start, to - from));
            }
        };
        for entry in &self.entries {
            let header = header(entry);
            emit(entry.offset, BLOCK, &|at, len| {
                Piece::Bytes(Bytes::copy_from_slice(
                    &header[at as usize..(at + len) as usize],
                ))
            });
            let data_start = entry.offset + BLOCK;
            match &entry.source {
                Source::Inline(bytes) => emit(data_start, entry.size, &|at, len| {
                    Piece::Bytes(bytes.slice(at as usize..(at + len) as usize))
                }),
                Source::Blob(descriptor) => emit(data_start, entry.size, &|at, len| Piece::Blob {
                    descriptor: descriptor.clone(),
                    offset: at,
                    length: len,
                }),
            }
            let padding = padded(entry.size) - entry.size;
            emit(data_start + entry.size, padding, &|_, len| {
                Piece::Bytes(Bytes::from(vec![0u8; len as usize]))
            });
        }
        let trailer_start = self.size() - 2 * BLOCK;
        emit(trailer_start, 2 * BLOCK, &|_, len| {
            Piece::Bytes(Bytes::from(vec![0u8; len as usize]))
        });
        pieces
    }
}
