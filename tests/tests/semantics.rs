//! SEMANTICS.md, row by row, through a real FUSE mount of the real reference registry.
//! Each test names the rows it exercises in a `contract::exercises` call after its
//! assertions (`reposure_tests::contract`).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant, SystemTime};

use reposure_tests::contract;
use reposure_tests::mount::{Mount, mount_entry};
use reposure_tests::posix::{close, errno_of, names, write_and_close};
use reposure_tests::registry::{Registry, RegistryConfig};
use reposure_tests::tools::{self, manifest, registry_tags, run};
use reposure_tests::{random_bytes, sha256_hex};

fn mounted() -> (Registry, Mount) {
    let registry = Registry::start();
    let mount = Mount::of(&registry, &[]);
    (registry, mount)
}

/// `cp`, `ls`, `cat` end to end.
#[test]
fn cp_ls_cat_rm_round_trip() {
    let (registry, mount) = mounted();
    let entry = mount_entry(mount.root()).expect("mounted");
    assert!(entry.contains(" fuse.reposure "), "{entry}");
    let expected_source = match reposure_tests::mount::via().as_str() {
        "exec" => "exec:".to_owned(),
        "kubernetes" => "kubernetes:default/registry".to_owned(),
        "session" => format!("session:{}", registry.url()),
        _ => registry.url(),
    };
    assert!(entry.starts_with(&expected_source), "{entry}");

    fs::create_dir(mount.path("myrepo")).unwrap();
    fs::write(mount.path("myrepo/hello"), b"hello world\n").unwrap();
    fs::write(mount.path("myrepo/hello:v1.2.3"), b"version one\n").unwrap();
    assert_eq!(
        registry_tags(&registry.url(), "myrepo/hello"),
        ["latest", "v1.2.3"]
    );
    assert_eq!(names(mount.root()), ["myrepo"]);
    assert_eq!(names(&mount.path("myrepo")), ["hello", "hello:v1.2.3"]);
    assert_eq!(
        fs::read(mount.path("myrepo/hello")).unwrap(),
        b"hello world\n"
    );
    assert_eq!(
        fs::read(mount.path("myrepo/hello:latest")).unwrap(),
        b"hello world\n"
    );
    assert_eq!(
        fs::read(mount.path("myrepo/hello:v1.2.3")).unwrap(),
        b"version one\n"
    );
    assert!(mount.path("myrepo").is_dir());
    assert_eq!(
        errno_of(fs::read(mount.path("myrepo/nothere"))),
        libc::ENOENT
    );
    contract::exercises(&[
        "push.close",
        "tree.repositories",
        "tree.latest",
        "tree.tags",
        "source.proc-mounts",
    ]);
}

/// `rm` removes exactly one tag even when another tag shares the manifest.
#[test]
fn rm_deletes_only_that_tag() {
    let (registry, mount) = mounted();
    fs::create_dir(mount.path("r")).unwrap();
    fs::write(mount.path("r/img"), b"same").unwrap();
    reposure_tests::tools::skopeo_copy(
        &format!("docker://{}/r/img:latest", registry.host()),
        &format!("docker://{}/r/img:other", registry.host()),
    );
    let a = manifest(&registry.host(), "r/img:latest");
    let b = manifest(&registry.host(), "r/img:other");
    assert_eq!(a, b, "both tags point at one manifest");
    fs::remove_file(mount.path("r/img")).unwrap();
    assert_eq!(registry_tags(&registry.url(), "r/img"), ["other"]);
    assert_eq!(fs::read(mount.path("r/img:other")).unwrap(), b"same");
    assert_eq!(names(&mount.path("r")), ["img:other"]);
    fs::remove_file(mount.path("r/img:other")).unwrap();
    assert!(registry_tags(&registry.url(), "r/img").is_empty());
    assert_eq!(
        errno_of(fs::remove_file(mount.path("r/img:other"))),
        libc::ENOENT
    );
    contract::exercises(&["delete.one-tag"]);
}

/// A registry with deletion off makes rm fail with EPERM, tag intact.
#[test]
fn rm_on_registry_without_delete_is_eperm() {
    let registry = Registry::start_with(RegistryConfig {
        delete_disabled: true,
        ..Default::default()
    });
    let mount = Mount::of(&registry, &[]);
    fs::write(mount.path("keep"), b"x").unwrap();
    assert_eq!(errno_of(fs::remove_file(mount.path("keep"))), libc::EPERM);
    assert_eq!(registry_tags(&registry.url(), "keep"), ["latest"]);
    assert!(mount.log().contains("deletion disabled"), "{}", mount.log());
    contract::exercises(&["delete.disabled"]);
}

/// O_TRUNC and O_WRONLY+ftruncate replace the content.
#[test]
fn overwrite_replaces_the_tag() {
    let (registry, mount) = mounted();
    fs::write(mount.path("f"), b"first version").unwrap();
    fs::write(mount.path("f"), b"second").unwrap();
    assert_eq!(fs::read(mount.path("f")).unwrap(), b"second");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(mount.path("f"))
        .unwrap();
    file.set_len(0).unwrap();
    file.write_all(b"third").unwrap();
    drop(file);
    assert_eq!(fs::read(mount.path("f")).unwrap(), b"third");
    assert_eq!(registry_tags(&registry.url(), "f"), ["latest"]);
    contract::exercises(&["push.overwrite"]);
}

/// Writes land at any offset (the gap reads as zeros), `ftruncate` cuts and extends a file
/// being written, and a file opened for reading and writing reads back what it holds: the
/// whole is pushed at close. (Changing an image in place, `>>` and `dd conv=notrunc`, is in
/// `tools.rs`.)
#[test]
fn writes_land_at_any_offset() {
    let (registry, mount) = mounted();
    let mut file = fs::File::create(mount.path("sparse")).unwrap();
    file.write_all(b"abc").unwrap();
    file.seek(SeekFrom::Start(10)).unwrap();
    file.write_all(b"x").unwrap();
    file.seek(SeekFrom::Start(3)).unwrap();
    file.write_all(b"def").unwrap();
    close(file).unwrap();
    let sparse = b"abcdef\0\0\0\0x";
    assert_eq!(fs::read(mount.path("sparse")).unwrap(), sparse);
    assert_eq!(
        tools::pulled_file(&registry.host(), "sparse:latest").data,
        sparse
    );

    let mut file = fs::File::create(mount.path("resized")).unwrap();
    file.write_all(&[7u8; 100]).unwrap();
    file.set_len(40).unwrap();
    file.set_len(60).unwrap();
    close(file).unwrap();
    let resized = [[7u8; 40].as_slice(), &[0u8; 20]].concat();
    assert_eq!(fs::read(mount.path("resized")).unwrap(), resized);

    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(mount.path("readback"))
        .unwrap();
    file.write_all(b"hello world").unwrap();
    let mut held = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut held).unwrap();
    assert_eq!(held, "hello world");
    file.seek(SeekFrom::Start(6)).unwrap();
    file.write_all(b"there").unwrap();
    held.clear();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut held).unwrap();
    assert_eq!(held, "hello there");
    close(file).unwrap();
    assert_eq!(fs::read(mount.path("readback")).unwrap(), b"hello there");
    assert_eq!(registry_tags(&registry.url(), "readback"), ["latest"]);
    contract::exercises(&["push.anywhere"]);
}

/// A pushed file is a real image; skopeo copies it and the file inside is byte-identical.
#[test]
fn pushed_file_is_a_real_image() {
    let (registry, mount) = mounted();
    let content = random_bytes(100_000);
    fs::create_dir(mount.path("apps")).unwrap();
    fs::write(mount.path("apps/tool:v1"), &content).unwrap();
    let m = manifest(&registry.host(), "apps/tool:v1");
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(
        m["layers"][0]["annotations"]["org.opencontainers.image.title"],
        "tool"
    );
    assert!(m["annotations"]["org.opencontainers.image.created"].is_string());
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    reposure_tests::tools::skopeo_copy(
        &format!("docker://{}/apps/tool:v1", registry.host()),
        &format!("dir:{}", out.display()),
    );
    let (name, data) = reposure_tests::tools::file_from_skopeo_dir(&out);
    assert_eq!(name, "tool");
    assert_eq!(sha256_hex(&data), sha256_hex(&content));
    let config: serde_json::Value = serde_json::from_str(&run(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/apps/tool:v1", registry.host()),
        ],
    ))
    .unwrap();
    assert_eq!(config["os"], "linux");
    assert_eq!(config["rootfs"]["diff_ids"][0], m["layers"][0]["digest"]);
    contract::exercises(&["push.format-image", "read.formats"]);
}

/// `format=artifact` stores an ORAS-style artifact.
#[test]
fn artifact_format() {
    let registry = Registry::start();
    let mount = Mount::of(&registry, &["format=artifact"]);
    fs::write(mount.path("art"), b"raw bytes").unwrap();
    let m = manifest(&registry.host(), "art:latest");
    assert_eq!(m["artifactType"], "application/vnd.reposure.file.v1");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    assert_eq!(m["layers"][0]["size"], 9);
    assert_eq!(
        m["layers"][0]["annotations"]["org.opencontainers.image.title"],
        "art"
    );
    assert_eq!(fs::read(mount.path("art")).unwrap(), b"raw bytes");
    contract::exercises(&["push.format-artifact", "read.formats"]);
}

/// True size, and as mtime the time the file was written.
#[test]
fn stat_shows_size_and_created_time() {
    let (_registry, mount) = mounted();
    let before = SystemTime::now() - Duration::from_secs(2);
    fs::write(mount.path("sized"), vec![7u8; 12345]).unwrap();
    let meta = fs::metadata(mount.path("sized")).unwrap();
    assert_eq!(meta.len(), 12345);
    let mtime = meta.modified().unwrap();
    assert!(
        mtime >= before && mtime <= SystemTime::now() + Duration::from_secs(2),
        "{mtime:?}"
    );
    assert!(mount.path("").is_dir());
    contract::exercises(&["stat.size-mtime"]);
}

/// `chmod` and setting the mtime of an image publish it again with the new mode or time
/// (same content); setting what it records, or only the atime, pushes nothing. `chown` to
/// the owner shown succeeds and changes nothing, to another is EPERM. On a file being
/// written a `chmod` takes effect with its push; directories accept changes and keep none.
#[test]
fn chmod_and_times_republish_and_chown_only_to_the_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (registry, mount) = mounted();
    let attrs = mount.path("attrs");
    let digest = || tools::tag_digest(&registry.url(), "attrs", "latest").unwrap();
    let manifest_puts = || {
        registry
            .log()
            .lines()
            .filter(|l| l.contains("\"PUT /v2/attrs/manifests/"))
            .count()
    };
    fs::write(&attrs, b"x").unwrap();
    let meta = fs::metadata(&attrs).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);

    let first = digest();
    fs::set_permissions(&attrs, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(&attrs).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    let pulled = tools::pulled_file(&registry.host(), "attrs:latest");
    assert_eq!(
        (pulled.mode, pulled.data.as_slice()),
        (0o600, b"x".as_slice())
    );
    assert_ne!(digest(), first, "chmod did not publish");

    let time = 1_577_934_245;
    run(
        "touch",
        &["-d", &format!("@{time}"), attrs.to_str().unwrap()],
    );
    let mtime = fs::metadata(&attrs).unwrap().modified().unwrap();
    assert_eq!(
        mtime
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        time
    );
    let pulled = tools::pulled_file(&registry.host(), "attrs:latest");
    assert_eq!((pulled.mtime, pulled.mode), (time, 0o600));
    assert_eq!(pulled.data, b"x", "touch leaves the content");
    let (published, puts) = (digest(), manifest_puts());
    run(
        "touch",
        &["-d", &format!("@{time}"), attrs.to_str().unwrap()],
    );
    run("touch", &["-a", attrs.to_str().unwrap()]);
    assert_eq!(
        manifest_puts(),
        puts,
        "setting what the image records pushed"
    );

    let owner = fs::metadata(&attrs).unwrap();
    std::os::unix::fs::chown(&attrs, Some(owner.uid()), Some(owner.gid())).unwrap();
    assert_eq!(
        errno_of(std::os::unix::fs::chown(
            &attrs,
            Some(owner.uid() + 4242),
            None
        )),
        libc::EPERM
    );
    assert_eq!(
        errno_of(std::os::unix::fs::chown(
            &attrs,
            None,
            Some(owner.gid() + 4242)
        )),
        libc::EPERM
    );
    assert_eq!((digest(), manifest_puts()), (published, puts));

    // Copy tools chmod the file they are writing: it is pushed with that mode.
    let mut file = fs::File::create(mount.path("copied")).unwrap();
    file.write_all(b"copy").unwrap();
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    close(file).unwrap();
    assert_eq!(fs::read(mount.path("copied")).unwrap(), b"copy");
    assert_eq!(
        fs::metadata(mount.path("copied"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o600
    );
    let source = tempfile::NamedTempFile::new().unwrap();
    fs::write(source.path(), b"via cp -a").unwrap();
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(source.path())
        .arg(mount.path("cpa"))
        .output()
        .unwrap();
    assert!(
        cp.status.success(),
        "{}",
        String::from_utf8_lossy(&cp.stderr)
    );
    assert_eq!(fs::read(mount.path("cpa")).unwrap(), b"via cp -a");

    fs::create_dir(mount.path("dir")).unwrap();
    fs::set_permissions(mount.path("dir"), fs::Permissions::from_mode(0o700)).unwrap();
    run(
        "touch",
        &["-d", "@1000000000", mount.path("dir").to_str().unwrap()],
    );
    assert_eq!(
        fs::metadata(mount.path("dir"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    // Truncating an image to empty publishes the empty content (at release).
    fs::File::create(&attrs).unwrap();
    assert!(reposure_tests::wait_until(Duration::from_secs(5), || {
        fs::read(&attrs).unwrap().is_empty()
    }));
    contract::exercises(&["stat.attrs"]);
}

/// Local directories, ENOTEMPTY.
#[test]
fn directories() {
    let (_registry, mount) = mounted();
    fs::create_dir(mount.path("newdir")).unwrap();
    assert!(mount.path("newdir").is_dir());
    assert_eq!(errno_of(fs::create_dir(mount.path("newdir"))), libc::EEXIST);
    assert_eq!(errno_of(fs::create_dir(mount.path("BadDir"))), libc::EINVAL);
    fs::create_dir(mount.path("newdir/sub")).unwrap();
    fs::write(mount.path("newdir/sub/file"), b"content").unwrap();
    assert_eq!(
        errno_of(fs::remove_dir(mount.path("newdir"))),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of(fs::remove_dir(mount.path("newdir/sub"))),
        libc::ENOTEMPTY
    );
    fs::remove_file(mount.path("newdir/sub/file")).unwrap();
    fs::remove_dir(mount.path("newdir/sub")).unwrap();
    fs::remove_dir(mount.path("newdir")).unwrap();
    assert_eq!(names(mount.root()), Vec::<String>::new());
    fs::create_dir(mount.path("empty")).unwrap();
    fs::remove_dir(mount.path("empty")).unwrap();
    assert!(!mount.path("empty").exists());
    contract::exercises(&["dir.mkdir", "dir.rmdir"]);
}

/// Names that cannot be registry names do not exist until made; a directory by such a
/// name is EINVAL with the rule in the log, a file by such a name is a local file (nothing
/// reaches the registry), a file name that is not UTF-8 is EINVAL, and names past the
/// registry's limits are ENAMETOOLONG.
#[test]
fn invalid_names_are_refused() {
    let (registry, mount) = mounted();
    for (name, rule) in [
        ("Upper", "lower case"),
        ("with space", "may contain only"),
        (".hidden", "must start"),
    ] {
        assert_eq!(
            errno_of(fs::metadata(mount.path(name))),
            libc::ENOENT,
            "{name}"
        );
        assert_eq!(
            errno_of(fs::create_dir(mount.path(name))),
            libc::EINVAL,
            "{name}"
        );
        assert!(
            mount.log().contains(rule),
            "log lacks {rule:?}: {}",
            mount.log()
        );
        fs::write(mount.path(name), b"local").unwrap();
        assert_eq!(fs::read(mount.path(name)).unwrap(), b"local", "{name}");
    }
    let long_tag = format!("ok:{}", "t".repeat(129));
    assert_eq!(
        errno_of(fs::write(mount.path(&long_tag), b"x")),
        libc::ENAMETOOLONG
    );
    assert!(mount.log().contains("at most 128"), "{}", mount.log());
    assert_eq!(errno_of(fs::metadata(mount.path(&long_tag))), libc::ENOENT);
    use std::os::unix::ffi::OsStrExt;
    let non_utf8 = mount.root().join(std::ffi::OsStr::from_bytes(b"bad\xff"));
    assert_eq!(errno_of(fs::write(&non_utf8, b"x")), libc::EINVAL);
    assert_eq!(errno_of(fs::create_dir(&non_utf8)), libc::EINVAL);
    // A repository path may be 255 characters: four directories of 60 fit, a file or a
    // fifth directory below them does not.
    let mut deep = mount.root().to_path_buf();
    for level in 0..4 {
        deep.push(format!("{level}{}", "d".repeat(59)));
        fs::create_dir(&deep).unwrap();
    }
    assert_eq!(
        errno_of(fs::write(deep.join("f".repeat(20)), b"x")),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of(fs::create_dir(deep.join("e".repeat(20)))),
        libc::ENAMETOOLONG
    );
    assert!(mount.log().contains("at most 255 characters"));
    assert!(tools::registry_catalog(&registry.url()).is_empty());
    contract::exercises(&["names.invalid", "tree.invalid-lookup", "push.local"]);
}

/// A repository that is also a directory shows its tags as NAME:TAG.
#[test]
fn repository_shadowed_by_directory() {
    let (_registry, mount) = mounted();
    fs::write(mount.path("app"), b"top").unwrap();
    fs::create_dir(mount.path("app:ignored")).unwrap_err();
    // Make `app` also a directory by pushing app/sub.
    fs::write(mount.path("app:v2"), b"two").unwrap();
    // A push into app/ needs the directory first; the name `app` is a file now.
    assert!(fs::create_dir(mount.path("app")).is_err());
    let registry_url_mount = mount.root().to_path_buf();
    drop(registry_url_mount);
    // Push the nested repository from a second name space: the directory appears once the
    // registry has app/sub.
    fs::create_dir(mount.path("tmpdir")).unwrap();
    fs::remove_dir(mount.path("tmpdir")).unwrap();
    let (registry2, mount2) = mounted();
    fs::write(mount2.path("app"), b"top").unwrap();
    fs::write(mount2.path("app:v2"), b"two").unwrap();
    reposure_tests::tools::skopeo_copy(
        &format!("docker://{}/app:v2", registry2.host()),
        &format!("docker://{}/app/sub:latest", registry2.host()),
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(names(mount2.root()), ["app", "app:latest", "app:v2"]);
    assert!(mount2.path("app").is_dir());
    assert_eq!(fs::read(mount2.path("app:latest")).unwrap(), b"top");
    assert_eq!(fs::read(mount2.path("app/sub")).unwrap(), b"two");
    contract::exercises(&["tree.shadowed"]);
}

/// A file being written is listed; after close the listing is current at once.
#[test]
fn file_being_written_is_visible() {
    let (_registry, mount) = mounted();
    let mut file = fs::File::create(mount.path("growing")).unwrap();
    file.write_all(&[1u8; 4096]).unwrap();
    assert_eq!(names(mount.root()), ["growing"]);
    assert_eq!(fs::metadata(mount.path("growing")).unwrap().len(), 4096);
    drop(file);
    assert_eq!(names(mount.root()), ["growing"]);
    assert_eq!(fs::read(mount.path("growing")).unwrap().len(), 4096);
    contract::exercises(&["push.visible"]);
}

/// `ro` refuses every change with EROFS.
#[test]
fn read_only_mount() {
    let registry = Registry::start();
    {
        let writable = Mount::of(&registry, &[]);
        fs::write(writable.path("existing"), b"data").unwrap();
    }
    let mount = Mount::of(&registry, &["ro"]);
    assert_eq!(fs::read(mount.path("existing")).unwrap(), b"data");
    assert_eq!(errno_of(fs::write(mount.path("new"), b"x")), libc::EROFS);
    assert_eq!(
        errno_of(fs::write(mount.path("existing"), b"x")),
        libc::EROFS
    );
    assert_eq!(
        errno_of(fs::remove_file(mount.path("existing"))),
        libc::EROFS
    );
    assert_eq!(errno_of(fs::create_dir(mount.path("d"))), libc::EROFS);
    contract::exercises(&["errors.read-only"]);
}

/// More repositories and tags than one page of the catalog/tag list.
#[test]
fn listings_are_complete_and_sorted_past_one_page() {
    let registry = Registry::start();
    // Seed 120 tags (past a 100-entry page) and 3 repositories through skopeo.
    let work = tempfile::tempdir().unwrap();
    let layout = reposure_tests::tools::umoci_single_file_image(work.path(), "seed", "f", b"seed");
    let src = format!("oci:{}:seed", layout.display());
    for repo in ["zeta", "alpha", "mid"] {
        reposure_tests::tools::skopeo_copy(
            &src,
            &format!("docker://{}/{repo}:latest", registry.host()),
        );
    }
    let mount = Mount::of(&registry, &[]);
    for i in 0..120 {
        fs::write(mount.path(&format!("alpha:t{i:03}")), b"x").unwrap();
    }
    assert_eq!(names(mount.root()).len(), 3 + 120);
    let listed: Vec<String> = fs::read_dir(mount.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "readdir order is sorted");
    assert_eq!(listed[0], "alpha");
    assert_eq!(listed.last().unwrap(), "zeta");
    contract::exercises(&["tree.sorted"]);
}

/// `sha256-<hex>` tags are not listed.
#[test]
fn referrers_fallback_tags_are_hidden() {
    let (registry, mount) = mounted();
    fs::write(mount.path("signed"), b"x").unwrap();
    let hidden = format!("sha256-{}", "ab".repeat(32));
    reposure_tests::tools::skopeo_copy(
        &format!("docker://{}/signed:latest", registry.host()),
        &format!("docker://{}/signed:{hidden}", registry.host()),
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(names(mount.root()), ["signed"]);
    assert_eq!(registry_tags(&registry.url(), "signed").len(), 2);
    contract::exercises(&["tree.referrers-hidden"]);
}

/// Another client's change shows within metadata_ttl.
#[test]
fn out_of_band_changes_show_within_the_ttl() {
    let (registry, mount) = mounted();
    fs::write(mount.path("oob"), b"one").unwrap();
    assert_eq!(names(mount.root()), ["oob"]);
    reposure_tests::tools::skopeo_copy(
        &format!("docker://{}/oob:latest", registry.host()),
        &format!("docker://{}/oob:copy", registry.host()),
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while names(mount.root()).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "out-of-band tag not visible after 3 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(names(mount.root()), ["oob", "oob:copy"]);
    contract::exercises(&["stat.ttl"]);
}

/// Pushing and reading 512 MiB keeps the daemon's peak RSS small.
#[test]
fn large_push_and_read_use_bounded_memory() {
    let (_registry, mount) = mounted();
    let source = tempfile::NamedTempFile::new().unwrap();
    {
        let mut file = fs::File::create(source.path()).unwrap();
        let block = random_bytes(1024 * 1024);
        for _ in 0..512 {
            file.write_all(&block).unwrap();
        }
    }
    fs::copy(source.path(), mount.path("big")).unwrap();
    assert_eq!(
        fs::metadata(mount.path("big")).unwrap().len(),
        512 * 1024 * 1024
    );
    let mut reader = fs::File::open(mount.path("big")).unwrap();
    let mut buffer = vec![0u8; 1024 * 1024];
    let mut total = 0;
    loop {
        let n = reader.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, 512 * 1024 * 1024);
    let hwm_kib = reposure_tests::process::peak_rss_kib(daemon_pid(mount.root()) as i32);
    assert!(hwm_kib < 128 * 1024, "peak RSS {hwm_kib} KiB");
    contract::exercises(&["push.bounded-memory", "cache.read-ahead"]);
}

/// The pid of the reposure-mount process serving `dir`.
fn daemon_pid(dir: &std::path::Path) -> u32 {
    let needle = dir.to_str().unwrap();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"reposure-mount"))
            && args.contains(&needle.as_bytes())
        {
            return pid;
        }
    }
    panic!("no reposure-mount process for {needle}");
}

/// A create with O_EXCL of an existing name fails with EEXIST.
#[test]
fn exclusive_create_of_existing_name_fails() {
    let (_registry, mount) = mounted();
    fs::write(mount.path("excl"), b"x").unwrap();
    let result = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(mount.path("excl"));
    assert_eq!(errno_of(result), libc::EEXIST);
}

/// `dd of=` (which closes a duplicated descriptor before writing) pushes exactly once;
/// `touch` of a new name pushes an empty file.
#[test]
fn dd_pushes_once_and_touch_creates_empty() {
    let (registry, mount) = mounted();
    let source = tempfile::NamedTempFile::new().unwrap();
    fs::write(source.path(), random_bytes(3 * 1024 * 1024)).unwrap();
    let status = std::process::Command::new("dd")
        .arg(format!("if={}", source.path().display()))
        .arg(format!("of={}", mount.path("viadd").display()))
        .args(["bs=1M", "status=none"])
        .status()
        .unwrap();
    assert!(status.success());
    let manifest_puts = registry
        .log()
        .lines()
        .filter(|l| l.contains("\"PUT /v2/viadd/manifests/"))
        .count();
    assert_eq!(manifest_puts, 1, "{}", registry.log());
    assert_eq!(
        sha256_hex(&fs::read(mount.path("viadd")).unwrap()),
        sha256_hex(&fs::read(source.path()).unwrap())
    );

    let status = std::process::Command::new("touch")
        .arg(mount.path("empty"))
        .status()
        .unwrap();
    assert!(status.success());
    // The kernel releases the file after touch has exited, and the push happens then: the
    // registry may have the tag a moment before the mount has taken in its own publish.
    assert!(reposure_tests::wait_until(Duration::from_secs(5), || {
        registry_tags(&registry.url(), "empty") == ["latest"]
            && fs::metadata(mount.path("empty")).is_ok()
    }));
    assert_eq!(fs::read(mount.path("empty")).unwrap(), b"");
    contract::exercises(&["push.close"]);
}

/// A child process closing its copy of a descriptor (at exec, or at exit) pushes nothing;
/// the opener's close pushes the whole file once, and a file the opener handed to a child
/// and closed first is pushed when the child's copy goes.
#[test]
fn only_the_process_that_opened_a_file_pushes_it() {
    let (registry, mount) = mounted();
    let manifest_puts = |repository: &str| {
        registry
            .log()
            .lines()
            .filter(|l| l.contains(&format!("\"PUT /v2/{repository}/manifests/")))
            .count()
    };
    let first = random_bytes(1024 * 1024);
    let second = random_bytes(1024 * 1024);
    let mut file = fs::File::create(mount.path("forked")).unwrap();
    file.write_all(&first).unwrap();
    // The child gets a copy of every descriptor and closes it when it execs.
    let status = std::process::Command::new("true").status().unwrap();
    assert!(status.success());
    assert!(registry_tags(&registry.url(), "forked").is_empty());
    file.write_all(&second).unwrap();
    drop(file);
    assert_eq!(manifest_puts("forked"), 1, "{}", registry.log());
    assert_eq!(
        sha256_hex(&fs::read(mount.path("forked")).unwrap()),
        sha256_hex(&[first, second].concat())
    );

    let file = fs::File::create(mount.path("handed")).unwrap();
    let mut child = std::process::Command::new("sh")
        // `sleep` inherits the descriptor too, and exits holding a file that is not empty.
        .args([
            "-c",
            "sleep 0.5; printf 'written '; sleep 0.2; printf 'by a child'",
        ])
        .stdout(file)
        .spawn()
        .unwrap();
    // The Command held the opener's copy; it is closed now, before the child writes.
    assert!(child.wait().unwrap().success());
    assert!(
        reposure_tests::wait_until(Duration::from_secs(10), || {
            fs::read(mount.path("handed")).is_ok_and(|c| c == b"written by a child")
        }),
        "{}",
        mount.log()
    );
    assert_eq!(manifest_puts("handed"), 1, "{}", registry.log());
    contract::exercises(&["push.close"]);
}

/// A push at a writer's last release that began before another writer's `close()` never
/// lands after it: a child writes 16 MiB and exits (its release pushes them), another
/// writer then writes a few bytes and closes; both pushes land, and the last close wins.
#[test]
fn the_last_close_wins_over_an_earlier_push_at_release() {
    let (registry, mount) = mounted();
    let path = mount.path("ordered");
    let file = fs::File::create(&path).unwrap();
    let mut child = std::process::Command::new("sh")
        .args(["-c", "sleep 0.3; head -c 16777216 /dev/urandom"])
        .stdout(file)
        .spawn()
        .unwrap();
    // The opener's copy went with the Command, while the file was still empty.
    assert!(child.wait().unwrap().success());
    // Until the mount has the child's release, the name has a writer: a second is EPERM.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match write_and_close(&path, b"last") {
            Ok(()) => break,
            Err(libc::EPERM) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(errno) => panic!("the second writer failed with errno {errno}"),
        }
    }
    let manifest_puts = || {
        registry
            .log()
            .lines()
            .filter(|l| l.contains("\"PUT /v2/ordered/manifests/"))
            .count()
    };
    assert!(
        reposure_tests::wait_until(Duration::from_secs(20), || manifest_puts() >= 2),
        "{}",
        mount.log()
    );
    assert_eq!(manifest_puts(), 2, "{}", registry.log());
    assert_eq!(fs::read(&path).unwrap(), b"last");
    assert_eq!(
        tools::pulled_file(&registry.host(), "ordered:latest").data,
        b"last"
    );
    contract::exercises(&["push.order"]);
}

/// `mv` puts the manifest under the new name (across repositories too) and removes the old
/// tag only; `ln` adds a tag for the same manifest.
#[test]
fn mv_and_ln_retag() {
    let (registry, mount) = mounted();
    fs::create_dir(mount.path("a")).unwrap();
    fs::create_dir(mount.path("b")).unwrap();
    let content = random_bytes(300_000);
    fs::write(mount.path("a/img:v1"), &content).unwrap();
    reposure_tests::tools::skopeo_copy(
        &format!("docker://{}/a/img:v1", registry.host()),
        &format!("docker://{}/a/img:keep", registry.host()),
    );
    let digest = manifest(&registry.host(), "a/img:v1");
    fs::rename(mount.path("a/img:v1"), mount.path("a/img:v2")).unwrap();
    assert_eq!(registry_tags(&registry.url(), "a/img"), ["keep", "v2"]);
    fs::rename(mount.path("a/img:v2"), mount.path("b/moved")).unwrap();
    assert_eq!(registry_tags(&registry.url(), "a/img"), ["keep"]);
    assert_eq!(manifest(&registry.host(), "b/moved:latest"), digest);
    assert_eq!(
        sha256_hex(&fs::read(mount.path("b/moved")).unwrap()),
        sha256_hex(&content)
    );
    // No blob went through the mount: the registry mounted them into b/moved.
    let log = registry.log();
    assert!(
        log.contains("mount=sha256"),
        "cross-repository blob mounts expected"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("PATCH /v2/b/moved/blobs/uploads")),
        "blob bytes were uploaded"
    );

    fs::hard_link(mount.path("b/moved"), mount.path("a/linked:v9")).unwrap();
    assert_eq!(manifest(&registry.host(), "a/linked:v9"), digest);
    assert_eq!(registry_tags(&registry.url(), "b/moved"), ["latest"]);
    assert_eq!(
        errno_of(fs::hard_link(
            mount.path("b/moved"),
            mount.path("a/linked:v9")
        )),
        libc::EEXIST
    );
    // A directory moves onto a new path only (`tools.rs` moves one).
    assert_eq!(
        errno_of(fs::rename(mount.path("b"), mount.path("a"))),
        libc::ENOTEMPTY
    );
    contract::exercises(&["retag.mv", "retag.ln", "retag.mv-dir"]);
}

/// A reader keeps the content it opened when the tag moves, even to the end of a file
/// longer than the new one.
#[test]
fn open_file_keeps_its_content_when_the_tag_moves() {
    let (_registry, mount) = mounted();
    let first = random_bytes(3 * 1024 * 1024);
    fs::write(mount.path("moving"), &first).unwrap();
    let mut reader = fs::File::open(mount.path("moving")).unwrap();
    let mut head = vec![0u8; 1024];
    reader.read_exact(&mut head).unwrap();
    fs::write(mount.path("moving"), b"replaced").unwrap();
    fs::rename(mount.path("moving"), mount.path("moving:elsewhere")).unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    head.extend(rest);
    assert_eq!(sha256_hex(&head), sha256_hex(&first));
    assert_eq!(
        sha256_hex(&fs::read(mount.path("moving:elsewhere")).unwrap()),
        sha256_hex(b"replaced")
    );
    contract::exercises(&["read.pinned"]);
}

/// NAME@sha256:HEX reads the manifest it names, is not listed, and is read-only.
#[test]
fn digest_names_are_read_only_and_unlisted() {
    let (registry, mount) = mounted();
    fs::write(mount.path("pinned"), b"by digest").unwrap();
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/pinned:latest", registry.host()),
        ],
    );
    let digest = format!("sha256:{}", sha256_hex(raw.as_bytes()));
    let by_digest = mount.path(&format!("pinned@{digest}"));
    fs::write(mount.path("pinned"), b"moved on").unwrap();
    assert_eq!(fs::read(&by_digest).unwrap(), b"by digest");
    assert_eq!(names(mount.root()), ["pinned"]);
    assert_eq!(errno_of(fs::write(&by_digest, b"x")), libc::EPERM);
    assert_eq!(errno_of(fs::remove_file(&by_digest)), libc::EPERM);
    let missing = mount.path(&format!("pinned@sha256:{}", "0".repeat(64)));
    assert_eq!(errno_of(fs::metadata(missing)), libc::ENOENT);
    contract::exercises(&["tree.digest-names"]);
}

/// The digest, media type and reference as extended attributes.
#[test]
fn extended_attributes_describe_the_image() {
    let (registry, mount) = mounted();
    fs::write(mount.path("described:v1"), b"x").unwrap();
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/described:v1", registry.host()),
        ],
    );
    let dump = run(
        "getfattr",
        &[
            "-d",
            "-m",
            "user.",
            mount.path("described:v1").to_str().unwrap(),
        ],
    );
    assert!(
        dump.contains(&format!(
            "user.reposure.digest=\"sha256:{}\"",
            sha256_hex(raw.as_bytes())
        )),
        "{dump}"
    );
    assert!(
        dump.contains("user.reposure.mediatype=\"application/vnd.oci.image.manifest.v1+json\""),
        "{dump}"
    );
    assert!(
        dump.contains("user.reposure.reference=\"described:v1\""),
        "{dump}"
    );
    let set = std::process::Command::new("setfattr")
        .args(["-n", "user.other", "-v", "1"])
        .arg(mount.path("described:v1"))
        .output()
        .unwrap();
    assert!(!set.status.success());
    contract::exercises(&["stat.xattrs"]);
}

/// With unpack=false a single-file image reads as its archive.
#[test]
fn unpack_false_shows_archives() {
    let registry = Registry::start();
    {
        let mount = Mount::of(&registry, &[]);
        fs::write(mount.path("single"), b"just a file").unwrap();
    }
    let mount = Mount::of(&registry, &["unpack=false"]);
    let archive = fs::read(mount.path("single")).unwrap();
    assert!(archive.len() > 2048 && archive.len().is_multiple_of(512));
    let mut tar = tar::Archive::new(archive.as_slice());
    let names: Vec<String> = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"manifest.json".to_owned()) && names.contains(&"oci-layout".to_owned()),
        "{names:?}"
    );
    contract::exercises(&["read.unpack-option"]);
}

/// A retag by another client shows within the metadata TTL, and the mount's own retag at
/// once.
#[test]
fn out_of_band_retag_shows_within_the_ttl() {
    let (registry, mount) = mounted();
    fs::write(mount.path("rt:one"), b"one").unwrap();
    fs::write(mount.path("rt:two"), b"two").unwrap();
    assert_eq!(
        fs::read(mount.path("rt:cur")).map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENOENT))
    );
    reposure_tests::tools::skopeo_copy(
        &format!("docker://{}/rt:one", registry.host()),
        &format!("docker://{}/rt:cur", registry.host()),
    );
    assert!(reposure_tests::wait_until(
        Duration::from_secs(3),
        || fs::read(mount.path("rt:cur")).ok().as_deref() == Some(b"one")
    ));
    reposure_tests::tools::skopeo_copy(
        &format!("docker://{}/rt:two", registry.host()),
        &format!("docker://{}/rt:cur", registry.host()),
    );
    assert!(reposure_tests::wait_until(
        Duration::from_secs(3),
        || fs::read(mount.path("rt:cur")).ok().as_deref() == Some(b"two")
    ));
    fs::hard_link(mount.path("rt:one"), mount.path("rt:mine")).unwrap();
    assert_eq!(fs::read(mount.path("rt:mine")).unwrap(), b"one");
    contract::exercises(&["stat.ttl"]);
}

/// `cp -r` and `cp -a` of a directory tree into the mount.
#[test]
fn copy_a_tree_in() {
    let (registry, mount) = mounted();
    let tree = tempfile::tempdir().unwrap();
    fs::create_dir_all(tree.path().join("site/assets")).unwrap();
    fs::write(tree.path().join("site/index"), b"<html>").unwrap();
    fs::write(tree.path().join("site/assets/logo"), random_bytes(5000)).unwrap();
    for (flag, target) in [("-r", "viar"), ("-a", "viaa")] {
        let out = std::process::Command::new("cp")
            .arg(flag)
            .arg(tree.path().join("site"))
            .arg(mount.path(target))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cp {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            fs::read(mount.path(&format!("{target}/index"))).unwrap(),
            b"<html>"
        );
        assert_eq!(
            fs::read(mount.path(&format!("{target}/assets/logo"))).unwrap(),
            fs::read(tree.path().join("site/assets/logo")).unwrap()
        );
        assert_eq!(
            registry_tags(&registry.url(), &format!("{target}/assets/logo")),
            ["latest"]
        );
    }
    contract::exercises(&["dir.copy-tree"]);
}

/// Reading a file again reads the kernel's cached pages, not the registry, while its digest
/// is unchanged.
#[test]
fn second_read_comes_from_the_page_cache() {
    let (registry, mount) = mounted();
    let content = random_bytes(2 * 1024 * 1024);
    fs::write(mount.path("cached"), &content).unwrap();
    assert_eq!(fs::read(mount.path("cached")).unwrap(), content);
    let blob_gets = || {
        registry
            .log()
            .lines()
            .filter(|l| l.contains("GET /v2/cached/blobs/"))
            .count()
    };
    let before = blob_gets();
    assert_eq!(fs::read(mount.path("cached")).unwrap(), content);
    assert_eq!(blob_gets(), before, "the second read went to the registry");
    contract::exercises(&["cache.page-cache"]);
}

/// With cache_dir=, a file read whole is kept on disk (verified) and a later mount reads it
/// from there instead of the registry; past cache_size the least recently used file goes.
#[test]
fn disk_cache_serves_verified_content() {
    let registry = Registry::start();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = format!("cache_dir={}", cache.path().display());
    let first = random_bytes(2 * 1024 * 1024);
    let second = random_bytes(2 * 1024 * 1024);
    {
        let mount = Mount::of(&registry, &[&cache_dir, "cache_size=3M"]);
        fs::write(mount.path("one"), &first).unwrap();
        fs::write(mount.path("two"), &second).unwrap();
        assert_eq!(fs::read(mount.path("one")).unwrap(), first);
    }
    let entries = || fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(entries(), 1, "one verified file in the cache");
    // Large blob reads in the registry's log (probes are a few KiB).
    let large_gets = || {
        registry
            .log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/one/blobs/"))
            .filter_map(|l| {
                l.split('"')
                    .nth(2)?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u64>()
                    .ok()
            })
            .filter(|&bytes| bytes > 64 * 1024)
            .count()
    };
    let before = large_gets();
    {
        let mount = Mount::of(&registry, &[&cache_dir, "cache_size=3M"]);
        assert_eq!(fs::read(mount.path("one")).unwrap(), first);
        assert_eq!(large_gets(), before, "the cached file was downloaded again");
        assert_eq!(fs::read(mount.path("two")).unwrap(), second);
    }
    assert_eq!(entries(), 1, "the least recently used file was evicted");
    contract::exercises(&["cache.disk"]);
}
