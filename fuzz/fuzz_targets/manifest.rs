#![no_main]
//! Any manifest and blobs a registry may hold, resolved and read as the mount reads them.
//!
//! The input is a manifest template and up to eight blobs, separated by lines
//! `--blob--`; in the template `@N` stands for blob N's digest and `#N` for its size, so
//! mutations vary the documents while their references still hold.
//!
//! Property: resolving never panics; when it succeeds, reading the file and the archive
//! whole either ends in an error or yields exactly the length resolving announced.

use bytes::Bytes;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use reposure_fuzz::{memory_registry, runtime};
use reposure_registry::digest::Digest;
use reposure_registry::formats::manifest::{StoredManifest, media_type_of};
use reposure_registry::names::Reference;
use reposure_registry::operations::Registry;
use reposure_registry::store::Store;

const SEPARATOR: &[u8] = b"\n--blob--\n";

fn split(mut data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    while let Some(at) = data.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        parts.push(&data[..at]);
        data = &data[at + SEPARATOR.len()..];
    }
    parts.push(data);
    parts
}

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    let blobs: Vec<&[u8]> = parts[1..].iter().take(8).copied().collect();
    let mut manifest = String::from_utf8_lossy(parts[0]).into_owned();
    for (i, blob) in blobs.iter().enumerate() {
        manifest = manifest
            .replace(&format!("@{i}"), Digest::of(blob).as_str())
            .replace(&format!("#{i}"), &blob.len().to_string());
    }
    runtime().block_on(async {
        let (store, registry) = memory_registry();
        for blob in &blobs {
            store
                .put_blob_bytes("fuzz", Bytes::copy_from_slice(blob))
                .await
                .expect("a memory store takes any blob");
        }
        let Ok(media_type) = media_type_of(manifest.as_bytes()) else {
            return;
        };
        let stored = StoredManifest {
            digest: Digest::of(manifest.as_bytes()),
            bytes: Bytes::from(manifest),
            media_type,
        };
        let tag = Reference::Tag("t".into());
        if store.put_manifest("fuzz", &tag, &stored).await.is_err() {
            return;
        }
        let Ok(info) = registry.resolve("fuzz", &tag, None).await else {
            return;
        };
        for content in [info.file.as_ref().ok(), Some(&info.archive)]
            .into_iter()
            .flatten()
        {
            let length = content.length();
            let Ok(mut stream) = registry.read("fuzz", content, 0, length).await else {
                continue;
            };
            let mut read = 0u64;
            let mut complete = true;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => read += chunk.len() as u64,
                    Err(_) => {
                        complete = false;
                        break;
                    }
                }
                assert!(read <= length, "{read} bytes read of a {length}-byte file");
            }
            if complete {
                assert_eq!(read, length, "the file ended early without an error");
            }
        }
    });
});
