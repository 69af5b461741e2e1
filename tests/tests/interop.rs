//! Independent peers read what the mount writes and the mount reads what they write:
//! skopeo, umoci and oras-py.

use std::fs;
use std::path::Path;

use reposure_tests::contract;
use reposure_tests::mount::Mount;
use reposure_tests::registry::Registry;
use reposure_tests::tools::{file_from_skopeo_dir, run, skopeo_copy, umoci_single_file_image};
use reposure_tests::{random_bytes, sha256_hex};

/// A single-file image built by umoci (tar+gzip layer with a directory entry first) and
/// pushed by skopeo reads through the mount.
#[test]
fn umoci_image_pushed_by_skopeo_reads_through_the_mount() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let content = random_bytes(70_000);
    let layout = umoci_single_file_image(work.path(), "v1", "data.bin", &content);
    skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/peers/umoci:v1", registry.host()),
    );
    let mount = Mount::new(&registry.url(), &[]);
    assert_eq!(
        fs::metadata(mount.path("peers/umoci:v1")).unwrap().len(),
        70_000
    );
    assert_eq!(
        sha256_hex(&fs::read(mount.path("peers/umoci:v1")).unwrap()),
        sha256_hex(&content)
    );
    contract::exercises(&["read.formats"]);
}

/// Writes a skopeo `dir:` image by hand: a Docker schema-2 manifest whose one layer is
/// `layer` with `layer_media_type`.
fn docker_dir_image(dir: &Path, layer: &[u8], layer_media_type: &str) {
    fs::create_dir_all(dir).unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2021-05-06T07:08:09Z",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(layer))]},
        "config": {}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": format!("sha256:{}", sha256_hex(&config))},
        "layers": [{"mediaType": layer_media_type, "size": layer.len(), "digest": format!("sha256:{}", sha256_hex(layer))}]
    }))
    .unwrap();
    fs::write(dir.join(sha256_hex(&config)), &config).unwrap();
    fs::write(dir.join(sha256_hex(layer)), layer).unwrap();
    fs::write(dir.join("manifest.json"), manifest).unwrap();
    fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").unwrap();
}

/// The original Go Reposure's format (a Docker image whose one layer is gzip of the raw
/// bytes, no tar) reads as the file; mtime is the config's `created`.
#[test]
fn go_reposure_gzip_raw_images_read_as_the_file() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let content = random_bytes(50_000);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &content).unwrap();
    let layer = gz.finish().unwrap();
    let dir = work.path().join("img");
    docker_dir_image(
        &dir,
        &layer,
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    );
    skopeo_copy(
        &format!("dir:{}", dir.display()),
        &format!("docker://{}/legacy/file:1.2", registry.host()),
    );
    let mount = Mount::new(&registry.url(), &[]);
    let meta = fs::metadata(mount.path("legacy/file:1.2")).unwrap();
    assert_eq!(meta.len(), 50_000);
    let mtime = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(mtime, 1_620_284_889, "config created 2021-05-06T07:08:09Z");
    assert_eq!(
        sha256_hex(&fs::read(mount.path("legacy/file:1.2")).unwrap()),
        sha256_hex(&content)
    );
    contract::exercises(&["read.formats", "stat.size-mtime"]);
}

/// A two-layer image built with umoci; returns its `LAYOUT:TAG`.
fn two_layer_image(work: &Path) -> String {
    let layout = umoci_single_file_image(work, "v1", "a", b"first");
    let image = format!("{}:v1", layout.display());
    let bundle = work.join("bundle2");
    run(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &image,
            bundle.to_str().unwrap(),
        ],
    );
    fs::write(bundle.join("rootfs/b"), b"second").unwrap();
    run(
        "umoci",
        &["repack", "--image", &image, bundle.to_str().unwrap()],
    );
    image
}

/// A multi-layer image reads as an archive that skopeo takes both as `docker-archive:` and
/// `oci-archive:`, straight from the mount, with the image's own manifest and layer
/// digests.
#[test]
fn multi_layer_image_reads_as_an_archive() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let image = two_layer_image(work.path());
    skopeo_copy(
        &format!("oci:{image}"),
        &format!("docker://{}/layers:latest", registry.host()),
    );
    let original = reposure_tests::tools::manifest(&registry.host(), "layers:latest");
    let mount = Mount::new(&registry.url(), &[]);
    // skopeo reads PATH:REFERENCE, so the archive is addressed by its bare (latest) name.
    let archive = mount.path("layers");
    let size = fs::metadata(&archive).unwrap().len();
    assert!(
        size > 0 && size.is_multiple_of(512),
        "an archive has a known size: {size}"
    );
    let layers = |m: &serde_json::Value| -> Vec<String> {
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect()
    };
    let config: serde_json::Value = serde_json::from_str(&run(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/layers:latest", registry.host()),
        ],
    ))
    .unwrap();
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    // oci-archive keeps the layers as stored; docker-archive presents them uncompressed, as
    // Docker archives do, so they match the config's diff_ids.
    for (transport, expected) in [
        ("oci-archive", layers(&original)),
        ("docker-archive", diff_ids),
    ] {
        let out = work.path().join(transport);
        skopeo_copy(
            &format!("{transport}:{}", archive.display()),
            &format!("dir:{}", out.display()),
        );
        let copied: serde_json::Value =
            serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(layers(&copied), expected, "{transport}");
    }
    assert_eq!(fs::read(&archive).unwrap().len() as u64, size);
    contract::exercises(&["read.archive"]);
}

fn oras(script: &str, cwd: &Path) {
    reposure_tests::tools::oras(script, cwd, &[]);
}

/// An artifact pushed by oras-py reads through the mount, and oras-py pulls an artifact the
/// mount wrote.
#[test]
fn oras_artifacts_both_ways() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let content = random_bytes(30_000);
    fs::write(work.path().join("notes.bin"), &content).unwrap();
    let host = registry.host();
    oras(
        &format!(
            "import oras.client\nc = oras.client.OrasClient(insecure=True)\nc.push(files=['notes.bin'], target='{host}/oras/notes:v1')"
        ),
        work.path(),
    );
    let mount = Mount::new(&registry.url(), &["format=artifact"]);
    assert_eq!(
        sha256_hex(&fs::read(mount.path("oras/notes:v1")).unwrap()),
        sha256_hex(&content)
    );

    let mine = random_bytes(20_000);
    fs::write(mount.path("oras/mine:v2"), &mine).unwrap();
    let out = work.path().join("out");
    fs::create_dir(&out).unwrap();
    oras(
        &format!(
            "import oras.client\nc = oras.client.OrasClient(insecure=True)\nc.pull(target='{host}/oras/mine:v2', outdir='{}')",
            out.display()
        ),
        work.path(),
    );
    assert_eq!(
        sha256_hex(&fs::read(out.join("mine")).unwrap()),
        sha256_hex(&mine)
    );
    contract::exercises(&["read.formats", "push.format-artifact"]);
}

/// The embedded default is an OCI layout skopeo and umoci read and write.
#[test]
fn oci_layout_is_shared_with_skopeo_and_umoci() {
    let store = tempfile::tempdir().unwrap();
    let layout = store.path().join("images");
    let source = format!("oci:{}", layout.display());
    let content = random_bytes(40_000);
    {
        let mount = Mount::new(&source, &[]);
        fs::create_dir(mount.path("apps")).unwrap();
        fs::write(mount.path("apps/tool:1.0"), &content).unwrap();
    }
    // skopeo reads what the mount wrote.
    let out = store.path().join("out");
    skopeo_copy(
        &format!("oci:{}:apps/tool:1.0", layout.display()),
        &format!("dir:{}", out.display()),
    );
    let (_, data) = file_from_skopeo_dir(&out);
    assert_eq!(sha256_hex(&data), sha256_hex(&content));
    let listed = run("umoci", &["ls", "--layout", layout.to_str().unwrap()]);
    assert!(listed.lines().any(|l| l == "apps/tool:1.0"), "{listed}");

    // skopeo and umoci write; the mount reads.
    let work = tempfile::tempdir().unwrap();
    let theirs = random_bytes(10_000);
    let umoci_layout = umoci_single_file_image(work.path(), "u1", "f", &theirs);
    skopeo_copy(
        &format!("oci:{}:u1", umoci_layout.display()),
        &format!("oci:{}:peers/from-skopeo:v3", layout.display()),
    );
    run(
        "umoci",
        &[
            "tag",
            "--image",
            &format!("{}:peers/from-skopeo:v3", layout.display()),
            "plain",
        ],
    );
    let mount = Mount::new(&source, &[]);
    assert_eq!(
        sha256_hex(&fs::read(mount.path("peers/from-skopeo:v3")).unwrap()),
        sha256_hex(&theirs)
    );
    assert_eq!(
        sha256_hex(&fs::read(mount.path("plain")).unwrap()),
        sha256_hex(&theirs)
    );
    fs::remove_file(mount.path("apps/tool:1.0")).unwrap();
    let listed = run("umoci", &["ls", "--layout", layout.to_str().unwrap()]);
    assert!(!listed.contains("apps/tool"), "{listed}");
    contract::exercises(&["source.layout"]);
}

fn manifest_digest(host: &str, reference: &str) -> String {
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{host}/{reference}"),
        ],
    );
    format!("sha256:{}", sha256_hex(raw.as_bytes()))
}

/// Image archives written to a name push the image: the mount's own archives (plain and
/// gzip) and skopeo's oci-archive keep the manifest digest; a skopeo docker-archive keeps
/// the layer contents; a tar that is not an image stays a file.
#[test]
fn image_archives_go_in_by_cp() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let image = two_layer_image(work.path());
    let host = registry.host();
    skopeo_copy(
        &format!("oci:{image}"),
        &format!("docker://{host}/src/app:latest"),
    );
    let original = manifest_digest(&host, "src/app:latest");
    let mount = Mount::new(&registry.url(), &[]);
    fs::create_dir(mount.path("copies")).unwrap();

    // The mount's own archive, copied back in under other names.
    fs::copy(mount.path("src/app"), mount.path("copies/plain")).unwrap();
    assert_eq!(manifest_digest(&host, "copies/plain:latest"), original);
    let archive = fs::read(mount.path("src/app")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &archive).unwrap();
    fs::write(mount.path("copies/gzipped:v2"), gz.finish().unwrap()).unwrap();
    assert_eq!(manifest_digest(&host, "copies/gzipped:v2"), original);

    // skopeo's archives.
    let oci_archive = work.path().join("app.oci.tar");
    skopeo_copy(
        &format!("docker://{host}/src/app:latest"),
        &format!("oci-archive:{}", oci_archive.display()),
    );
    fs::copy(&oci_archive, mount.path("copies/from-oci-archive")).unwrap();
    assert_eq!(
        manifest_digest(&host, "copies/from-oci-archive:latest"),
        original
    );
    let docker_archive = work.path().join("app.docker.tar");
    skopeo_copy(
        &format!("docker://{host}/src/app:latest"),
        &format!("docker-archive:{}", docker_archive.display()),
    );
    fs::copy(&docker_archive, mount.path("copies/from-docker-archive")).unwrap();
    let out = work.path().join("back");
    skopeo_copy(
        &format!("docker://{host}/copies/from-docker-archive:latest"),
        &format!("dir:{}", out.display()),
    );
    let pushed: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(pushed["layers"].as_array().unwrap().len(), 2);

    // A tar that is not an image archive is a file.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "notes.txt", &b"hello"[..])
        .unwrap();
    let plain_tar = builder.into_inner().unwrap();
    fs::write(mount.path("copies/just-a-tar"), &plain_tar).unwrap();
    assert_eq!(
        fs::read(mount.path("copies/just-a-tar")).unwrap(),
        plain_tar
    );
    contract::exercises(&["push.archive"]);
}
