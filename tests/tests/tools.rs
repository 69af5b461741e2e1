//! The tools people already use, through a real mount of the reference registry: rsync,
//! install, sed, an editor's atomic save, Python's tempfile and shutil, tar, unzip, cp, mv,
//! rm, a shell's `>>` and dd. Each test runs the real tool and asserts its exit status, then
//! what the registry holds (the tag, and the file skopeo or umoci extracts from the image:
//! bytes, mode and time from its tar header) and what the mount shows.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reposure_tests::contract;
use reposure_tests::mount::Mount;
use reposure_tests::posix::{close, errno_of, names, write_and_close};
use reposure_tests::registry::Registry;
use reposure_tests::tools::{
    pulled_file, registry_catalog, registry_tags, skopeo_copy, tag_digest,
};
use reposure_tests::{random_bytes, sha256_hex, wait_until};

/// A time in the past, so that a time the mount shows is one that was carried over.
const PAST: u64 = 1_600_000_000;

fn mounted() -> (Registry, Mount) {
    let registry = Registry::start();
    let mount = Mount::of(&registry, &[]);
    (registry, mount)
}

/// Runs a command to completion, asserting that it exited 0; its standard output.
fn ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `python3 -c SCRIPT ARGS...`, which must exit 0.
fn python(script: &str, args: &[&Path]) {
    ok(Command::new("python3").arg("-c").arg(script).args(args));
}

/// `secs` seconds and `nanos` nanoseconds after the epoch.
fn at(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

fn seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Permission bits as `ls -l` shows them (the sticky bit included).
fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn mtime_of(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

/// Writes `root/relative` (parents made) with `mode` and modification time `mtime`.
fn source_file(root: &Path, relative: &str, bytes: &[u8], mode: u32, mtime: SystemTime) -> PathBuf {
    let path = root.join(relative);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    path
}

/// Creates `path` with `mode` (as `open(O_CREAT, mode)` does), writes `bytes` and closes it.
fn create_with_mode(path: &Path, bytes: &[u8], mode: u32) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap();
    file.write_all(bytes).unwrap();
    close(file).unwrap();
}

/// The repository and tag of a path in the mount (`a/b` is `a/b:latest`).
fn repository_and_tag(path: &str) -> (String, String) {
    let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
    let (name, tag) = file.split_once(':').unwrap_or((file, "latest"));
    let repository = if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    };
    (repository, tag.to_owned())
}

/// What a published file must be.
struct Expected<'a> {
    bytes: &'a [u8],
    mode: u32,
    /// Its modification time, where the tool carried one over.
    mtime: Option<SystemTime>,
}

/// Asserts that the image at `path` (relative to the mount) is published as `expected`:
/// the registry has the tag; the file skopeo extracts has the bytes, the name, and in its
/// tar header the mode and time; and the mount shows the same. Returns the manifest
/// digest.
fn assert_published(
    registry: &Registry,
    mount: &Mount,
    path: &str,
    expected: &Expected<'_>,
) -> String {
    let (repository, tag) = repository_and_tag(path);
    let digest = tag_digest(&registry.url(), &repository, &tag)
        .unwrap_or_else(|| panic!("{repository}:{tag} is not in the registry"));
    let pulled = pulled_file(&registry.host(), &format!("{repository}:{tag}"));
    assert_eq!(
        sha256_hex(&pulled.data),
        sha256_hex(expected.bytes),
        "bytes of {path}"
    );
    assert_eq!(pulled.name, repository.rsplit('/').next().unwrap());
    assert_eq!(pulled.mode, expected.mode, "tar header mode of {path}");
    let shown = mount.path(path);
    assert_eq!(
        sha256_hex(&fs::read(&shown).unwrap()),
        sha256_hex(expected.bytes),
        "{path} read through the mount"
    );
    assert_eq!(mode_of(&shown), expected.mode, "mode of {path} shown");
    if let Some(mtime) = expected.mtime {
        assert_eq!(pulled.mtime, seconds(mtime), "tar header mtime of {path}");
        assert_eq!(seconds(mtime_of(&shown)), seconds(mtime), "mtime of {path}");
    }
    digest
}

/// The registry's log from `mark` (its length, taken earlier) on.
fn log_since(registry: &Registry, mark: usize) -> String {
    registry.log()[mark..].to_owned()
}

/// Requests in an access log with this method whose path contains `part`.
fn requests(log: &str, method: &str, part: &str) -> Vec<String> {
    let method = format!("\"{method} /v2/");
    log.lines()
        .filter(|l| l.contains(&method) && l.contains(part))
        .map(str::to_owned)
        .collect()
}

/// The bytes the registry sent in answer to these logged requests (the field after the
/// status). Finding the file in a new image reads a few KiB of its layer; reading the
/// content back reads all of it.
fn bytes_sent(requests: &[String]) -> u64 {
    requests
        .iter()
        .map(|line| {
            let after_request = line.rsplit_once("HTTP/1.1\" ").expect("access log line").1;
            let mut fields = after_request.split(' ');
            fields.next();
            fields.next().and_then(|n| n.parse().ok()).unwrap_or(0)
        })
        .sum()
}

/// The requests since `mark` with this method whose path contains `part`, once `expected`
/// of them are in the log (the registry writes a request's line just after answering it),
/// or after 5 s.
fn logged(
    registry: &Registry,
    mark: usize,
    method: &str,
    part: &str,
    expected: usize,
) -> Vec<String> {
    let found = || requests(&log_since(registry, mark), method, part);
    wait_until(Duration::from_secs(5), || found().len() >= expected);
    found()
}

/// Every request that changes the registry: uploads, manifest writes, deletions.
fn changes(log: &str) -> Vec<String> {
    ["PUT", "POST", "PATCH", "DELETE"]
        .iter()
        .flat_map(|method| requests(log, method, ""))
        .collect()
}

/// Pushes `DIR/x` (tags `latest` and `v1`) and `DIR/y/z` through the mount; each path with
/// its content.
fn images_under(mount: &Mount, dir: &str) -> Vec<(String, Vec<u8>)> {
    fs::create_dir_all(mount.path(&format!("{dir}/y"))).unwrap();
    let images: Vec<(String, Vec<u8>)> = ["x", "x:v1", "y/z"]
        .iter()
        .map(|name| (format!("{dir}/{name}"), random_bytes(200_000)))
        .collect();
    for (path, content) in &images {
        write_and_close(&mount.path(path), content).unwrap();
    }
    images
}

/// `rsync -a` publishes a tree with its modes and times, pushes again only what changed,
/// deletes with `--delete`, and an unchanged tree costs no push at all. Its temporary files
/// (`.NAME.XXXXXX`) are local until renamed: one manifest write per file.
#[test]
fn rsync_publishes_a_tree_and_then_only_what_changed() {
    let (registry, mount) = mounted();
    let source = tempfile::tempdir().unwrap();
    let src = source.path();
    let tool = random_bytes(200_000);
    let mut files: Vec<(&str, Vec<u8>, u32, SystemTime)> = vec![
        (
            "run.sh",
            b"#!/bin/sh\necho run\n".to_vec(),
            0o755,
            at(PAST, 1),
        ),
        ("notes.txt", b"notes\n".to_vec(), 0o644, at(PAST + 10, 0)),
        (
            "docs/readme.txt",
            b"read me\n".to_vec(),
            0o644,
            at(PAST + 20, 5),
        ),
        (
            "docs/guide/intro.txt",
            b"intro\n".to_vec(),
            0o644,
            at(PAST + 30, 0),
        ),
        ("bin/tool", tool, 0o755, at(PAST + 40, 999_999_999)),
    ];
    for (path, bytes, mode, mtime) in &files {
        source_file(src, path, bytes, *mode, *mtime);
    }
    let rsync = |extra: &[&str]| {
        ok(Command::new("rsync")
            .arg("-a")
            .args(extra)
            .arg(format!("{}/", src.display()))
            .arg(format!("{}/", mount.path("site").display())))
    };
    let assert_all = |files: &[(&str, Vec<u8>, u32, SystemTime)]| {
        for (path, bytes, mode, mtime) in files {
            let expected = Expected {
                bytes,
                mode: *mode,
                mtime: Some(*mtime),
            };
            assert_published(&registry, &mount, &format!("site/{path}"), &expected);
        }
    };

    // 1: everything, once each.
    fs::create_dir(mount.path("site")).unwrap();
    let mark = registry.log().len();
    rsync(&[]);
    let puts = logged(&registry, mark, "PUT", "/manifests/", files.len());
    assert_eq!(
        puts.len(),
        files.len(),
        "one manifest write per file: {puts:?}"
    );
    assert_all(&files);

    // 2: one file changed; only it is pushed again.
    let changed = b"read me, now longer\n".to_vec();
    source_file(src, "docs/readme.txt", &changed, 0o644, at(PAST + 500, 0));
    files[2] = ("docs/readme.txt", changed, 0o644, at(PAST + 500, 0));
    let mark = registry.log().len();
    rsync(&[]);
    let puts = logged(&registry, mark, "PUT", "/manifests/", 1);
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert!(puts[0].contains("/v2/site/docs/readme.txt/"), "{puts:?}");
    assert_all(&files);

    // 3: a file removed from the source; `--delete` removes its tag.
    fs::remove_file(src.join("notes.txt")).unwrap();
    files.remove(1);
    rsync(&["--delete"]);
    assert!(registry_tags(&registry.url(), "site/notes.txt").is_empty());
    assert!(!mount.path("site/notes.txt").exists());
    assert_all(&files);

    // 4: nothing changed: nothing transferred, nothing pushed.
    let mark = registry.log().len();
    let itemized = rsync(&["--delete", "--itemize-changes"]);
    assert!(
        !itemized.lines().any(|l| l.starts_with(">f")),
        "rsync transferred files again: {itemized}"
    );
    let changes = changes(&log_since(&registry, mark));
    assert!(changes.is_empty(), "an unchanged tree pushed: {changes:?}");
    contract::exercises(&["push.local", "stat.attrs", "stat.size-mtime"]);
}

/// An image in an OCI layout made by skopeo from `REPOSITORY:TAG`, unpacked by umoci: the
/// root filesystem's path.
fn umoci_unpack(registry: &Registry, reference: &str, work: &Path) -> PathBuf {
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    skopeo_copy(
        &format!("docker://{}/{reference}", registry.host()),
        &format!("oci:{}:unpacked", layout.display()),
    );
    ok(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:unpacked", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

/// `install -m 755` publishes an executable: the mount shows 0755, the tar header says
/// 0755, and a copy taken out with `cp` runs, as does the file umoci extracts. The `chmod`
/// after the push republishes from the mount's own copy: the content is not read back.
#[test]
fn install_publishes_an_executable() {
    let (registry, mount) = mounted();
    let work = tempfile::tempdir().unwrap();
    // Longer than what finding the file in a layer reads (a few KiB of its start).
    let script = format!(
        "#!/bin/sh\n# {}\necho hello from the registry\n",
        "padding ".repeat(8_000)
    );
    let script = script.as_bytes();
    let source = source_file(work.path(), "src/hello", script, 0o644, SystemTime::now());
    fs::create_dir(mount.path("tools")).unwrap();
    ok(Command::new("install")
        .args(["-m", "755"])
        .arg(&source)
        .arg(mount.path("tools/hello")));
    let reads = requests(&registry.log(), "GET", "/v2/tools/hello/blobs/");
    assert!(
        bytes_sent(&reads) < script.len() as u64,
        "the content was read back: {reads:?}"
    );
    let expected = Expected {
        bytes: script,
        mode: 0o755,
        mtime: None,
    };
    assert_published(&registry, &mount, "tools/hello", &expected);

    let copy = work.path().join("copy");
    ok(Command::new("cp").arg(mount.path("tools/hello")).arg(&copy));
    assert_eq!(ok(&mut Command::new(&copy)), "hello from the registry\n");
    let rootfs = umoci_unpack(&registry, "tools/hello:latest", work.path());
    assert_eq!(mode_of(&rootfs.join("hello")), 0o755);
    assert_eq!(
        ok(&mut Command::new(rootfs.join("hello"))),
        "hello from the registry\n"
    );
    contract::exercises(&["stat.attrs"]);
}

/// `sed -i` writes a temporary file beside the image and renames it over: the image has the
/// new content and its mode, and nothing else is left in the directory.
#[test]
fn sed_in_place_replaces_the_image() {
    let (registry, mount) = mounted();
    fs::create_dir(mount.path("etc")).unwrap();
    let original = "mode=a\nname=alpha\n";
    create_with_mode(&mount.path("etc/app.conf"), original.as_bytes(), 0o640);
    ok(Command::new("sed")
        .args(["-i", "s/a/b/"])
        .arg(mount.path("etc/app.conf")));
    let edited: String = original
        .lines()
        .map(|l| l.replacen('a', "b", 1) + "\n")
        .collect();
    let expected = Expected {
        bytes: edited.as_bytes(),
        mode: 0o640,
        mtime: None,
    };
    assert_published(&registry, &mount, "etc/app.conf", &expected);
    assert_eq!(names(&mount.path("etc")), ["app.conf"]);
    assert_eq!(registry_tags(&registry.url(), "etc/app.conf"), ["latest"]);
    contract::exercises(&["push.local"]);
}

/// An editor's atomic save: the new content goes to a hidden temporary file (written,
/// fsynced, given the original's mode), which is renamed over the original. The rename is
/// the one manifest write.
#[test]
fn an_editors_atomic_save_publishes_at_the_rename() {
    let (registry, mount) = mounted();
    fs::create_dir(mount.path("notes")).unwrap();
    create_with_mode(&mount.path("notes/report"), b"first draft\n", 0o640);
    let before = tag_digest(&registry.url(), "notes/report", "latest").unwrap();
    let mark = registry.log().len();
    python(
        "import os, sys\n\
         path = sys.argv[1]\n\
         temp = os.path.join(os.path.dirname(path), '.report.tmp123')\n\
         mode = os.stat(path).st_mode & 0o7777\n\
         with open(temp, 'w') as f:\n\
         \x20   f.write('final version\\n')\n\
         \x20   f.flush()\n\
         \x20   os.fsync(f.fileno())\n\
         os.chmod(temp, mode)\n\
         os.rename(temp, path)\n",
        &[&mount.path("notes/report")],
    );
    let puts = logged(&registry, mark, "PUT", "/manifests/", 1);
    assert_eq!(puts.len(), 1, "{puts:?}");
    let expected = Expected {
        bytes: b"final version\n",
        mode: 0o640,
        mtime: None,
    };
    let after = assert_published(&registry, &mount, "notes/report", &expected);
    assert_ne!(before, after);
    assert_eq!(names(&mount.path("notes")), ["report"]);
    contract::exercises(&["push.local"]);
}

/// Python's `tempfile.mkstemp` in the mount, with its default name (`tmpXXXXXXXX`, which a
/// registry would take) and with a hidden one, then `os.replace` onto an image name: each
/// published once, at the rename, under the real name, with mkstemp's mode 0600, and
/// nothing left behind.
#[test]
fn python_mkstemp_then_replace() {
    let (registry, mount) = mounted();
    fs::create_dir(mount.path("conf")).unwrap();
    for (prefix, target) in [("'tmp'", "settings"), ("'.x'", "hidden")] {
        let mark = registry.log().len();
        python(
            &format!(
                "import os, sys, tempfile\n\
                 directory = sys.argv[1]\n\
                 fd, temp = tempfile.mkstemp(dir=directory, prefix={prefix})\n\
                 os.write(fd, b'key = value\\n')\n\
                 os.close(fd)\n\
                 os.replace(temp, os.path.join(directory, '{target}'))\n"
            ),
            &[&mount.path("conf")],
        );
        let expected = Expected {
            bytes: b"key = value\n",
            mode: 0o600,
            mtime: None,
        };
        assert_published(&registry, &mount, &format!("conf/{target}"), &expected);
        let pushes = requests(&log_since(&registry, mark), "PUT", "/manifests/");
        assert_eq!(pushes.len(), 1, "{pushes:?}");
    }
    assert_eq!(names(&mount.path("conf")), ["hidden", "settings"]);
    contract::exercises(&["push.local"]);
}

/// `shutil.copy2` keeps the mode and time (set after the content is pushed: republished
/// from the mount's own copy, the content not read back); `shutil.copytree` publishes a tree.
#[test]
fn python_copy2_and_copytree() {
    let (registry, mount) = mounted();
    let work = tempfile::tempdir().unwrap();
    let content = random_bytes(100_000);
    let mtime = at(PAST, 123_456_789);
    let single = source_file(work.path(), "single", &content, 0o640, mtime);
    fs::create_dir(mount.path("py")).unwrap();
    python(
        "import shutil, sys\nshutil.copy2(sys.argv[1], sys.argv[2])\n",
        &[&single, &mount.path("py/copied")],
    );
    let reads = requests(&registry.log(), "GET", "/v2/py/copied/blobs/");
    assert!(
        bytes_sent(&reads) < content.len() as u64,
        "the content was read back: {reads:?}"
    );
    let expected = Expected {
        bytes: &content,
        mode: 0o640,
        mtime: Some(mtime),
    };
    assert_published(&registry, &mount, "py/copied", &expected);

    let tree = [
        ("tree/a.txt", b"a\n".to_vec(), 0o644),
        ("tree/sub/b.bin", random_bytes(50_000), 0o755),
    ];
    for (path, bytes, mode) in &tree {
        source_file(work.path(), path, bytes, *mode, mtime);
    }
    python(
        "import shutil, sys\nshutil.copytree(sys.argv[1], sys.argv[2])\n",
        &[&work.path().join("tree"), &mount.path("py/tree")],
    );
    for (path, bytes, mode) in &tree {
        let expected = Expected {
            bytes,
            mode: *mode,
            mtime: Some(mtime),
        };
        assert_published(&registry, &mount, &format!("py/{path}"), &expected);
    }
    contract::exercises(&["stat.attrs", "stat.size-mtime"]);
}

/// The files of a small package: (path, bytes, mode).
fn package() -> Vec<(&'static str, Vec<u8>, u32)> {
    vec![
        ("pkg/bin/run", b"#!/bin/sh\necho packaged\n".to_vec(), 0o755),
        ("pkg/share/data.txt", random_bytes(30_000), 0o644),
    ]
}

/// Appends an entry owned by root, modified at [`PAST`].
fn append_to_tar(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    bytes: &[u8],
) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_mtime(PAST);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(bytes.len() as u64);
    builder.append_data(&mut header, path, bytes).unwrap();
}

/// `tar -x` and `unzip` into the mount: every file published with its bytes and the mode
/// the archive gives it (and tar's time).
#[test]
fn tar_and_unzip_extract_into_the_mount() {
    let (registry, mount) = mounted();
    let work = tempfile::tempdir().unwrap();
    let mtime = at(PAST, 0);
    let files = package();

    let mut builder = tar::Builder::new(Vec::new());
    for directory in ["pkg/", "pkg/bin/", "pkg/share/"] {
        append_to_tar(
            &mut builder,
            directory,
            tar::EntryType::Directory,
            0o755,
            b"",
        );
    }
    for (path, bytes, mode) in &files {
        append_to_tar(&mut builder, path, tar::EntryType::Regular, *mode, bytes);
    }
    let tarball = work.path().join("pkg.tar");
    fs::write(&tarball, builder.into_inner().unwrap()).unwrap();
    fs::create_dir(mount.path("untarred")).unwrap();
    ok(Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(mount.path("untarred")));
    for (path, bytes, mode) in &files {
        let expected = Expected {
            bytes,
            mode: *mode,
            mtime: Some(mtime),
        };
        assert_published(&registry, &mount, &format!("untarred/{path}"), &expected);
    }

    let tree = work.path().join("tree");
    for (path, bytes, mode) in &files {
        source_file(&tree, path, bytes, *mode, mtime);
    }
    ok(Command::new("zip")
        .args(["-q", "-r", "../pkg.zip", "pkg"])
        .current_dir(&tree));
    ok(Command::new("unzip")
        .arg("-q")
        .arg(work.path().join("pkg.zip"))
        .arg("-d")
        .arg(mount.path("unzipped")));
    for (path, bytes, mode) in &files {
        let expected = Expected {
            bytes,
            mode: *mode,
            mtime: None,
        };
        assert_published(&registry, &mount, &format!("unzipped/{path}"), &expected);
    }
    assert_eq!(
        ok(Command::new("sh").arg(mount.path("unzipped/pkg/bin/run"))),
        "packaged\n"
    );
    contract::exercises(&["stat.attrs", "stat.size-mtime"]);
}

/// `cp -p` and `cp -a` keep the mode and the modification time, to the nanosecond on the
/// mount and to the second in the tar header.
#[test]
fn cp_p_and_cp_a_keep_mode_and_time() {
    let (registry, mount) = mounted();
    let work = tempfile::tempdir().unwrap();
    let content = random_bytes(150_000);
    let mtime = at(PAST, 987_654_321);
    let source = source_file(work.path(), "kept", &content, 0o750, mtime);
    fs::create_dir(mount.path("copies")).unwrap();
    for flag in ["-p", "-a"] {
        let target = format!("copies/via{}", flag.trim_start_matches('-'));
        ok(Command::new("cp")
            .arg(flag)
            .arg(&source)
            .arg(mount.path(&target)));
        let expected = Expected {
            bytes: &content,
            mode: 0o750,
            mtime: Some(mtime),
        };
        assert_published(&registry, &mount, &target, &expected);
        assert_eq!(mtime_of(&mount.path(&target)), mtime, "{target}");
    }
    contract::exercises(&["stat.attrs", "stat.size-mtime"]);
}

/// `mv` of a file from another filesystem (the kernel says EXDEV, mv copies): published
/// with its mode and time, and the source is gone.
#[test]
fn mv_from_another_filesystem_publishes_and_removes_the_source() {
    let (registry, mount) = mounted();
    let work = tempfile::tempdir().unwrap();
    let content = random_bytes(120_000);
    let mtime = at(PAST + 7, 0);
    let source = source_file(work.path(), "moving", &content, 0o755, mtime);
    fs::create_dir(mount.path("arrivals")).unwrap();
    ok(Command::new("mv")
        .arg(&source)
        .arg(mount.path("arrivals/moved")));
    assert!(!source.exists(), "the source is still there");
    let expected = Expected {
        bytes: &content,
        mode: 0o755,
        mtime: Some(mtime),
    };
    assert_published(&registry, &mount, "arrivals/moved", &expected);
    contract::exercises(&["stat.attrs"]);
}

/// `>>` appends to an image another client pushed: the mount fetches its content (the log
/// says so, with its size), appends, and publishes the whole file; `dd conv=notrunc` then
/// rewrites its middle, length unchanged. The file keeps the image's mode. An open and
/// close that neither reads nor writes (`: >>`) fetches and pushes nothing.
#[test]
fn append_and_rewrite_in_place() {
    let registry = Registry::start();
    let old = random_bytes(54_321);
    {
        // Pushed by another mount, so this one has no copy of its own.
        let writer = Mount::of(&registry, &[]);
        fs::create_dir(writer.path("logs")).unwrap();
        create_with_mode(&writer.path("logs/app"), &old, 0o750);
    }
    let mount = Mount::of(&registry, &[]);
    let path = mount.path("logs/app");
    let shell = |script: &str| {
        ok(Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&path));
    };

    let (log_mark, registry_mark) = (mount.log().len(), registry.log().len());
    shell(": >> \"$1\"");
    assert!(
        !mount.log()[log_mark..].contains("fetch"),
        "{}",
        mount.log()
    );
    let changes = changes(&log_since(&registry, registry_mark));
    assert!(changes.is_empty(), "{changes:?}");

    shell("printf more >> \"$1\"");
    let fetched = |size: usize| {
        mount
            .log()
            .lines()
            .any(|l| l.contains("fetch") && l.contains(&size.to_string()))
    };
    assert!(fetched(old.len()), "{}", mount.log());
    let appended = [old.as_slice(), b"more"].concat();
    let expected = Expected {
        bytes: &appended,
        mode: 0o750,
        mtime: None,
    };
    assert_published(&registry, &mount, "logs/app", &expected);

    shell("printf XYZ | dd of=\"$1\" bs=1 seek=3 conv=notrunc status=none");
    let mut rewritten = appended.clone();
    rewritten[3..6].copy_from_slice(b"XYZ");
    let expected = Expected {
        bytes: &rewritten,
        mode: 0o750,
        mtime: None,
    };
    assert_published(&registry, &mount, "logs/app", &expected);
    assert_eq!(fs::metadata(&path).unwrap().len(), appended.len() as u64);
    contract::exercises(&["push.copy-up", "push.anywhere"]);
}

/// `mv DIR NEWDIR` moves every image under it (each tag retagged with its manifest
/// unchanged, the blobs mounted, not uploaded), and the local files and directories too.
#[test]
fn mv_of_a_directory_moves_every_image() {
    let (registry, mount) = mounted();
    let images = images_under(&mount, "a");
    write_and_close(&mount.path("a/Notes.txt"), b"local notes").unwrap();
    fs::create_dir(mount.path("a/drafts")).unwrap();
    let digests: Vec<String> = images
        .iter()
        .map(|(path, _)| {
            let (repository, tag) = repository_and_tag(path);
            tag_digest(&registry.url(), &repository, &tag).unwrap()
        })
        .collect();
    let mark = registry.log().len();
    ok(Command::new("mv").arg(mount.path("a")).arg(mount.path("b")));

    assert_eq!(registry_tags(&registry.url(), "b/x"), ["latest", "v1"]);
    assert_eq!(registry_tags(&registry.url(), "b/y/z"), ["latest"]);
    assert!(registry_tags(&registry.url(), "a/x").is_empty());
    assert!(registry_tags(&registry.url(), "a/y/z").is_empty());
    for ((path, content), digest) in images.iter().zip(&digests) {
        let moved = path.replacen("a/", "b/", 1);
        let (repository, tag) = repository_and_tag(&moved);
        assert_eq!(
            tag_digest(&registry.url(), &repository, &tag).as_ref(),
            Some(digest),
            "{moved}"
        );
        assert_eq!(fs::read(mount.path(&moved)).unwrap(), *content);
    }
    assert_eq!(names(mount.root()), ["b"]);
    assert_eq!(
        names(&mount.path("b")),
        ["Notes.txt", "drafts", "x", "x:v1", "y"]
    );
    assert_eq!(fs::read(mount.path("b/Notes.txt")).unwrap(), b"local notes");
    assert!(mount.path("b/drafts").is_dir());
    let log = log_since(&registry, mark);
    assert!(log.contains("mount="), "no blob was mounted: {log}");
    let uploads = requests(&log, "PATCH", "/v2/b/");
    assert!(uploads.is_empty(), "blob bytes were uploaded: {uploads:?}");
    contract::exercises(&["retag.mv-dir"]);
}

/// `rm -r DIR` deletes every tag under it (and its local files), then the directories.
#[test]
fn rm_r_deletes_every_tag() {
    let (registry, mount) = mounted();
    let images = images_under(&mount, "d");
    write_and_close(&mount.path("d/Scratch.txt"), b"local").unwrap();
    ok(Command::new("rm").arg("-r").arg(mount.path("d")));
    for (path, _) in &images {
        let (repository, _) = repository_and_tag(path);
        assert!(
            registry_tags(&registry.url(), &repository).is_empty(),
            "{repository} has tags left"
        );
    }
    assert!(!mount.path("d").exists());
    assert!(names(mount.root()).is_empty());
    contract::exercises(&["dir.rm-r"]);
}

/// A file whose name cannot be an image name is local: listed, readable, `chmod` and
/// `utime` work, it shows the sticky bit and `user.reposure.local`, unlinking it discards
/// it, and nothing is pushed. An unmount keeps the ones never renamed under
/// `spool_dir=/reposure-kept-*/`, and the log says where. A directory by such a name is
/// EINVAL.
#[test]
fn a_local_file_never_renamed_is_kept_at_unmount() {
    let registry = Registry::start();
    let spool = tempfile::tempdir().unwrap();
    let spool_option = format!("spool_dir={}", spool.path().display());
    let mut mount = Mount::of(&registry, &[&spool_option]);
    fs::create_dir(mount.path("docs")).unwrap();
    assert_eq!(errno_of(fs::create_dir(mount.path("Docs"))), libc::EINVAL);

    let draft = random_bytes(10_000);
    write_and_close(&mount.path("docs/Draft.txt"), &draft).unwrap();
    write_and_close(&mount.path(".keep-me"), b"keep me").unwrap();
    assert!(mount.log().contains("kept"), "{}", mount.log());
    assert_eq!(names(mount.root()), [".keep-me", "docs"]);
    assert_eq!(names(&mount.path("docs")), ["Draft.txt"]);
    let local = mount.path("docs/Draft.txt");
    assert_eq!(fs::read(&local).unwrap(), draft);
    assert_ne!(
        mode_of(&local) & 0o1000,
        0,
        "no sticky bit: looks published"
    );
    fs::set_permissions(&local, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(mode_of(&local) & 0o777, 0o640);
    assert_ne!(mode_of(&local) & 0o1000, 0);
    let mtime = at(PAST, 0);
    fs::File::options()
        .write(true)
        .open(&local)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(seconds(mtime_of(&local)), PAST);
    let attributes = ok(Command::new("getfattr").arg("-d").arg(&local));
    assert!(attributes.contains("user.reposure.local"), "{attributes}");

    // A README copied in is local too, and unlinking it discards it.
    let work = tempfile::tempdir().unwrap();
    let readme = source_file(work.path(), "README.md", b"# read me", 0o644, mtime);
    ok(Command::new("cp").arg(&readme).arg(mount.path("docs/")));
    assert_eq!(names(&mount.path("docs")), ["Draft.txt", "README.md"]);
    fs::remove_file(mount.path("docs/README.md")).unwrap();
    assert_eq!(names(&mount.path("docs")), ["Draft.txt"]);

    mount.unmount();
    let kept_file = |name: &str| find_under(spool.path(), "reposure-kept-", name);
    assert!(
        wait_until(Duration::from_secs(10), || {
            kept_file("Draft.txt").is_some_and(|p| fs::read(p).unwrap() == draft)
                && kept_file(".keep-me").is_some_and(|p| fs::read(p).unwrap() == b"keep me")
        }),
        "local files not kept under {}: {}",
        spool.path().display(),
        mount.log()
    );
    assert!(
        kept_file("README.md").is_none(),
        "a discarded file was kept"
    );
    let kept_dir = fs::read_dir(spool.path())
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("reposure-kept-")
        })
        .unwrap()
        .path();
    assert!(
        mount.log().contains(kept_dir.to_str().unwrap()),
        "the log does not say where: {}",
        mount.log()
    );
    let changes = changes(&registry.log());
    assert!(changes.is_empty(), "something was pushed: {changes:?}");
    assert!(registry_catalog(&registry.url()).is_empty());
    contract::exercises(&["push.local", "names.invalid"]);
}

/// A file named `name` somewhere under a directory of `root` whose name starts with
/// `prefix`.
fn find_under(root: &Path, prefix: &str, name: &str) -> Option<PathBuf> {
    fn walk(dir: &Path, name: &str) -> Option<PathBuf> {
        for entry in fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if let Some(found) = walk(&path, name) {
                    return Some(found);
                }
            } else if entry.file_name() == name {
                return Some(path);
            }
        }
        None
    }
    fs::read_dir(root)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .find_map(|e| walk(&e.path(), name))
}

/// Renaming an image onto a local name is EXDEV, whether that name exists or not, and the
/// image stays; `mv` then copies it to the local file and removes the image.
#[test]
fn renaming_an_image_onto_a_local_name_is_exdev_and_mv_copies() {
    let (registry, mount) = mounted();
    let content = random_bytes(80_000);
    write_and_close(&mount.path("img"), &content).unwrap();
    write_and_close(&mount.path(".local"), b"a local file").unwrap();
    assert_eq!(
        errno_of(fs::rename(mount.path("img"), mount.path(".local"))),
        libc::EXDEV
    );
    assert_eq!(
        errno_of(fs::rename(mount.path("img"), mount.path("Copy.txt"))),
        libc::EXDEV
    );
    assert_eq!(registry_tags(&registry.url(), "img"), ["latest"]);
    assert_eq!(fs::read(mount.path(".local")).unwrap(), b"a local file");
    let attributes = ok(Command::new("getfattr").arg("-d").arg(mount.path("img")));
    assert!(!attributes.contains("user.reposure.local"), "{attributes}");

    ok(Command::new("mv")
        .arg(mount.path("img"))
        .arg(mount.path("Copy.txt")));
    assert!(registry_tags(&registry.url(), "img").is_empty());
    assert_eq!(fs::read(mount.path("Copy.txt")).unwrap(), content);
    assert_ne!(mode_of(&mount.path("Copy.txt")) & 0o1000, 0);
    assert_eq!(names(mount.root()), [".local", "Copy.txt"]);
    contract::exercises(&["push.local"]);
}
