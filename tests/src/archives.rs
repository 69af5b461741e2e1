//! Archives the tests feed to Reposure, good and damaged: tars, gzip, OCI layouts.

use crate::sha256_hex;

/// A tar of `(path, bytes)` entries; paths are written as given (`../x` and `/x` too).
pub fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Set the raw name, so that paths the tar crate refuses to write (`..`, absolute)
        // reach the reader as an attacker would make them.
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, *bytes).unwrap();
    }
    builder.into_inner().unwrap()
}

/// gzip of `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, bytes).unwrap();
    gz.finish().unwrap()
}

/// A gzip stream of `mib` MiB of zeros: a few hundred KiB that expand a thousandfold.
pub fn gzip_bomb(mib: usize) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..mib {
        std::io::Write::write_all(&mut gz, &zeros).unwrap();
    }
    gz.finish().unwrap()
}

/// An OCI image layout in a tar whose one image is `manifest`, with `blobs` (and the
/// manifest) under `blobs/sha256/`.
pub fn layout_archive(manifest: &[u8], blobs: &[&[u8]]) -> Vec<u8> {
    let manifest_digest = sha256_hex(manifest);
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_digest}","size":{}}}]}}"#,
        manifest.len()
    );
    let mut names = vec![format!("blobs/sha256/{manifest_digest}")];
    names.extend(
        blobs
            .iter()
            .map(|b| format!("blobs/sha256/{}", sha256_hex(b))),
    );
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", index.as_bytes()),
        (&names[0], manifest),
    ];
    for (name, blob) in names[1..].iter().zip(blobs) {
        entries.push((name, blob));
    }
    tar_of(&entries)
}

/// An OCI image manifest with this config and these layers, all of media types a
/// registry accepts; `padding` bytes of annotation make it as large as wanted.
pub fn image_manifest(config: &[u8], layers: &[&[u8]], padding: usize) -> Vec<u8> {
    let descriptor = |media_type: &str, blob: &[u8]| {
        format!(
            r#"{{"mediaType":"{media_type}","digest":"sha256:{}","size":{}}}"#,
            sha256_hex(blob),
            blob.len()
        )
    };
    let layers: Vec<String> = layers
        .iter()
        .map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{}],"annotations":{{"padding":"{}"}}}}"#,
        descriptor("application/vnd.oci.image.config.v1+json", config),
        layers.join(","),
        "p".repeat(padding)
    )
    .into_bytes()
}

/// An image config naming these layers (uncompressed, so their digests are the diff ids).
pub fn image_config(layers: &[&[u8]]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!(r#""sha256:{}""#, sha256_hex(l)))
        .collect();
    format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    )
    .into_bytes()
}
