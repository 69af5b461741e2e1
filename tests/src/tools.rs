//! The peers: skopeo, umoci, podman and curl, run as commands, and what they extract.

use std::path::Path;
use std::process::Command;

/// Runs a command, panicking with its stderr if it fails; returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `skopeo copy` with TLS verification off (the test registries are plain HTTP).
pub fn skopeo_copy(from: &str, to: &str) {
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            from,
            to,
        ],
    );
}

/// podman or buildah with storage of its own (vfs, in a temporary directory), so that a
/// test neither sees nor touches the machine's images, run with the environment given
/// (the user's `HOME`, where their logins are).
pub struct Containers {
    program: &'static str,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Containers {
    /// `None` where `program` (podman, buildah) is not installed.
    pub fn installed(program: &'static str) -> Option<Self> {
        let found = Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        found.then(|| Self {
            program,
            dir: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        })
    }

    /// Runs with this environment too.
    pub fn with_env(mut self, env: &[(String, String)]) -> Self {
        self.env = env.to_vec();
        self
    }

    /// `PROGRAM ARGS` on this storage; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert!(
            output.status.success(),
            "{} {args:?} failed: {}",
            self.program,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `PROGRAM ARGS`, whatever its outcome.
    pub fn output(&self, args: &[&str]) -> std::process::Output {
        let root = self.dir.path().join("root").display().to_string();
        let runroot = self.dir.path().join("run").display().to_string();
        let mut all = vec![
            "--root",
            &root,
            "--runroot",
            &runroot,
            "--storage-driver",
            "vfs",
        ];
        if self.program == "podman" {
            all.extend(["--events-backend", "file"]);
        }
        all.extend_from_slice(args);
        Command::new(self.program)
            .args(&all)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", self.program))
    }
}

/// Runs a Python script with the oras-py of the venv the test command prepares
/// (`REPOSURE_ORAS_PYTHON` names another), in `cwd`, with `env` too.
pub fn oras(script: &str, cwd: &Path, env: &[(String, String)]) {
    let python = std::env::var("REPOSURE_ORAS_PYTHON")
        .unwrap_or_else(|_| "target/oras-venv/bin/python".to_owned());
    let python = if Path::new(&python).is_relative() {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(python)
    } else {
        python.into()
    };
    let output = Command::new(&python)
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the test command creates the oras-py venv)",
                python.display()
            )
        });
    assert!(
        output.status.success(),
        "oras-py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The raw manifest of `docker://HOST/REPO:TAG`.
pub fn manifest(host: &str, reference: &str) -> serde_json::Value {
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{host}/{reference}"),
        ],
    );
    serde_json::from_str(&raw).expect("manifest JSON")
}

/// The strings of `field` in the JSON document at `url`, sorted; none if it has no list.
fn sorted_list(url: &str, field: &str) -> Vec<String> {
    let body = run("curl", &["-s", url]);
    let value: serde_json::Value = serde_json::from_str(&body).expect("a JSON listing");
    let mut items: Vec<String> = value[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    items.sort();
    items
}

/// Tags of a repository, as the registry lists them (sorted here); none for an unknown
/// repository.
pub fn registry_tags(url: &str, repository: &str) -> Vec<String> {
    sorted_list(&format!("{url}/v2/{repository}/tags/list"), "tags")
}

/// The digest `REPOSITORY:TAG` points at, as the registry answers it; `None` if the tag
/// does not exist.
pub fn tag_digest(url: &str, repository: &str, tag: &str) -> Option<String> {
    let headers = run(
        "curl",
        &[
            "-s",
            "-I",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            &format!("{url}/v2/{repository}/manifests/{tag}"),
        ],
    );
    if !headers.starts_with("HTTP/1.1 200") {
        return None;
    }
    headers.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("docker-content-digest")
            .then(|| value.trim().to_owned())
    })
}

/// Every repository the registry lists (first page of 1000, sorted).
pub fn registry_catalog(url: &str) -> Vec<String> {
    sorted_list(&format!("{url}/v2/_catalog?n=1000"), "repositories")
}

/// Builds a single-file image with umoci in an OCI layout `layout:tag` and returns the
/// layout's path.
pub fn umoci_single_file_image(
    work: &Path,
    tag: &str,
    file_name: &str,
    content: &[u8],
) -> std::path::PathBuf {
    let layout = work.join("umoci-layout");
    let bundle = work.join("bundle");
    let image = format!("{}:{tag}", layout.display());
    run("umoci", &["init", "--layout", layout.to_str().unwrap()]);
    run("umoci", &["new", "--image", &image]);
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
    std::fs::write(bundle.join("rootfs").join(file_name), content).expect("write rootfs file");
    run(
        "umoci",
        &["repack", "--image", &image, bundle.to_str().unwrap()],
    );
    layout
}

/// The one regular file of a single-layer image, as an extracting client sees it: its name,
/// bytes, permission bits and modification time (seconds) from its tar header.
#[derive(Debug, Clone)]
pub struct LayerFile {
    pub name: String,
    pub data: Vec<u8>,
    pub mode: u32,
    pub mtime: u64,
}

/// Extracts the single regular file of a `dir:` image copied by skopeo (layers are
/// uncompressed tar or gzip tar).
pub fn file_from_skopeo_dir(dir: &Path) -> (String, Vec<u8>) {
    let file = layer_file_from_skopeo_dir(dir);
    (file.name, file.data)
}

/// The single regular file of a `dir:` image copied by skopeo, with its tar header's mode
/// and time.
pub fn layer_file_from_skopeo_dir(dir: &Path) -> LayerFile {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest.json"))
            .expect("json");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "single layer");
    let digest = layers[0]["digest"].as_str().unwrap();
    let blob = std::fs::read(dir.join(digest.trim_start_matches("sha256:"))).expect("layer blob");
    let reader: Box<dyn std::io::Read> = if blob.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::Cursor::new(
            blob,
        )))
    } else {
        Box::new(std::io::Cursor::new(blob))
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        if entry.header().entry_type().is_file() {
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mode = entry.header().mode().expect("tar mode") & 0o7777;
            let mtime = entry.header().mtime().expect("tar mtime");
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            return LayerFile {
                name,
                data,
                mode,
                mtime,
            };
        }
    }
    panic!("no file in the layer");
}

/// What another client gets for `REPOSITORY:TAG`: skopeo copies `docker://HOST/REFERENCE`
/// to a temporary `dir:` and the file is read from its layer.
pub fn pulled_file(host: &str, reference: &str) -> LayerFile {
    let work = tempfile::tempdir().expect("a directory for skopeo");
    let dir = work.path().join("image");
    skopeo_copy(
        &format!("docker://{host}/{reference}"),
        &format!("dir:{}", dir.display()),
    );
    layer_file_from_skopeo_dir(&dir)
}
