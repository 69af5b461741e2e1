//! Finding a single file inside an image's one layer from the layer's first bytes.
//!
//! A single-file image must not be downloaded just to learn where its file starts and how
//! long it is: the first few KiB of the layer (decompressed, for gzip) hold the tar header
//! that says both. Only the original Go Reposure's raw gzip layers need one more small
//! read, of the gzip trailer's length field.

use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use chrono::DateTime;
use futures::StreamExt;

use super::{BlobRef, Encoding, FileAttributes, FileContent};
use crate::digest::Digest;
use crate::error::{RegistryError, Result};
use crate::formats::manifest::{ConfigSummary, Descriptor, ImageManifest};
use crate::formats::media_types as mt;
use crate::formats::tar_probe::{self, TarProbe};
use crate::store::Store;

/// First read when looking for the file inside a layer: one tar header and then some,
/// enough for the common case of a few directory entries before the file.
const PROBE_FIRST: u64 = 8 * 1024;

/// Most bytes read to find the file in a layer before giving up; a layer whose first
/// regular file starts later than this is shown as "not a single file".
const PROBE_LIMIT: u64 = 1024 * 1024;

/// Largest config blob read for its `created` time.
const CONFIG_LIMIT: u64 = 1024 * 1024;

/// The answer of a probe: the file and what its tar header says of it, or why there is
/// no one file.
pub type Probed = std::result::Result<(FileContent, FileAttributes), String>;

/// A tar header's mode and time.
fn header_attributes(mode: u32, mtime: u64) -> FileAttributes {
    FileAttributes {
        mode: Some(mode),
        modified: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(mtime)),
    }
}

/// `length` bytes of a blob from `offset`, collected.
pub async fn fetch(
    store: &dyn Store,
    repository: &str,
    digest: &Digest,
    offset: u64,
    length: u64,
) -> Result<Bytes> {
    let mut stream = store.get_blob(repository, digest, offset, length).await?;
    let mut buffer = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        buffer.extend_from_slice(&chunk?);
    }
    Ok(buffer.freeze())
}

fn blob_ref(layer: &Descriptor) -> BlobRef {
    BlobRef {
        digest: layer.digest.clone(),
        size: layer.size,
    }
}

/// The blob is the file (an artifact's titled layer).
pub fn raw(layer: &Descriptor) -> FileContent {
    FileContent::Blob {
        blob: blob_ref(layer),
        encoding: Encoding::Identity,
        offset: 0,
        length: layer.size,
    }
}

/// Where the file is in an uncompressed tar layer.
pub async fn tar(store: &dyn Store, repository: &str, layer: &Descriptor) -> Result<Probed> {
    let mut want = PROBE_FIRST.min(layer.size);
    loop {
        let prefix = fetch(store, repository, &layer.digest, 0, want).await?;
        let complete = want >= layer.size;
        match tar_probe::probe(&prefix, complete) {
            TarProbe::File {
                offset,
                size,
                mode,
                mtime,
                ..
            } => {
                // What follows the file must be the tar's end (zero blocks), or the layer
                // holds more than the one file. A small layer's prefix has it already.
                let end = offset + tar_probe::padded(size);
                let rest_len = 1024.min(layer.size.saturating_sub(end));
                let rest = match prefix.get(end as usize..(end + rest_len) as usize) {
                    Some(rest) => Bytes::copy_from_slice(rest),
                    None => fetch(store, repository, &layer.digest, end, rest_len).await?,
                };
                if rest.iter().any(|&b| b != 0) {
                    return Ok(Err("the layer holds more than one file".into()));
                }
                let file = FileContent::Blob {
                    blob: blob_ref(layer),
                    encoding: Encoding::Identity,
                    offset,
                    length: size,
                };
                return Ok(Ok((file, header_attributes(mode, mtime))));
            }
            TarProbe::NeedMore if want < PROBE_LIMIT.min(layer.size) => {
                want = (want * 4).min(PROBE_LIMIT).min(layer.size);
            }
            TarProbe::NeedMore => return Ok(Err("no file in the first MiB of the layer".into())),
            TarProbe::NotTar => {
                return Err(RegistryError::Corrupt(format!(
                    "layer {} is not a tar",
                    layer.digest
                )));
            }
            TarProbe::NoFile => return Ok(Err("the layer holds no regular file".into())),
        }
    }
}

/// Where the file is in a gzip layer: a tar entry, or the whole decompressed stream.
pub async fn gzip(store: &dyn Store, repository: &str, layer: &Descriptor) -> Result<Probed> {
    let mut want = PROBE_FIRST.min(layer.size);
    loop {
        let compressed = fetch(store, repository, &layer.digest, 0, want).await?;
        let complete = want >= layer.size;
        let decoded = gunzip_prefix(&compressed, complete)?;
        let file = |offset, length, attributes| {
            let content = FileContent::Blob {
                blob: blob_ref(layer),
                encoding: Encoding::Gzip,
                offset,
                length,
            };
            Ok(Ok((content, attributes)))
        };
        match tar_probe::probe(&decoded, complete) {
            TarProbe::File {
                offset,
                size,
                mode,
                mtime,
                ..
            } => return file(offset, size, header_attributes(mode, mtime)),
            TarProbe::NotTar if complete => {
                return file(0, decoded.len() as u64, FileAttributes::default());
            }
            TarProbe::NotTar if decoded.len() >= tar_probe::BLOCK as usize => {
                // Raw gzip (as the Go Reposure stored files): the trailer's ISIZE field is
                // the decompressed length modulo 2^32.
                let trailer = fetch(store, repository, &layer.digest, layer.size - 4, 4).await?;
                let isize = u32::from_le_bytes(trailer[..4].try_into().map_err(|_| {
                    RegistryError::Corrupt(format!("gzip layer {} is truncated", layer.digest))
                })?);
                return file(0, u64::from(isize), FileAttributes::default());
            }
            TarProbe::NoFile => return Ok(Err("the layer holds no regular file".into())),
            _ if want < PROBE_LIMIT.min(layer.size) => {
                want = (want * 4).min(PROBE_LIMIT).min(layer.size)
            }
            _ => return Ok(Err("no file in the first MiB of the layer".into())),
        }
    }
}

/// The creation time from the manifest's annotation or the config.
pub async fn created(
    store: &dyn Store,
    repository: &str,
    image: &ImageManifest,
) -> Option<SystemTime> {
    let parse = |s: &str| DateTime::parse_from_rfc3339(s).ok().map(SystemTime::from);
    if let Some(time) = image.annotation(mt::ANNOTATION_CREATED).and_then(parse) {
        return Some(time);
    }
    let config = &image.config;
    if config.media_type != mt::OCI_CONFIG && config.media_type != mt::DOCKER_CONFIG
        || config.size > CONFIG_LIMIT
    {
        return None;
    }
    let bytes = fetch(store, repository, &config.digest, 0, config.size)
        .await
        .ok()?;
    let summary: ConfigSummary = serde_json::from_slice(&bytes).ok()?;
    summary.created.as_deref().and_then(parse)
}

/// Decompresses as much of a gzip prefix as it holds.
fn gunzip_prefix(compressed: &[u8], complete: bool) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut decoder = flate2::write::MultiGzDecoder::new(Vec::new());
    let corrupt = |e: std::io::Error| RegistryError::Corrupt(format!("gzip layer: {e}"));
    decoder.write_all(compressed).map_err(corrupt)?;
    if complete {
        decoder.try_finish().map_err(corrupt)?;
    } else {
        decoder.flush().map_err(corrupt)?;
    }
    Ok(std::mem::take(decoder.get_mut()))
}
