//! The filesystem core against the in-memory store: no FUSE, no network.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use reposure_fs::errno::FsError;
use reposure_fs::inode::ROOT;
use reposure_fs::{Caller, Filesystem, FsConfig};
use reposure_registry::RegistryError;
use reposure_registry::operations::StoreRegistry;
use reposure_registry::store::memory::{MemoryStore, RequestCounts, TagDeletion};

fn filesystem(store: Arc<MemoryStore>) -> Arc<Filesystem> {
    let registry = Arc::new(StoreRegistry::new(store));
    Arc::new(Filesystem::new(registry, FsConfig::default()).unwrap())
}

async fn write_file(fs: &Filesystem, parent: u64, name: &str, content: &[u8]) {
    let (_, fh) = fs
        .create(
            parent,
            OsStr::new(name),
            libc::O_WRONLY | libc::O_CREAT,
            0o644,
            Caller::this_process(),
        )
        .await
        .unwrap();
    for (i, chunk) in content.chunks(64 * 1024).enumerate() {
        fs.write(fh, (i * 64 * 1024) as u64, chunk.to_vec())
            .await
            .unwrap();
    }
    fs.flush(fh, Caller::this_process()).await.unwrap();
    fs.release(fh);
}

async fn read_file(fs: &Filesystem, parent: u64, name: &str) -> Result<Vec<u8>, FsError> {
    let attr = fs.lookup(parent, OsStr::new(name)).await?;
    let (fh, _) = fs
        .open(attr.ino, libc::O_RDONLY, Caller::this_process())
        .await?;
    let mut out = Vec::new();
    loop {
        let chunk: Bytes = fs.read(fh, out.len() as u64, 128 * 1024).await?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(fh);
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn write_then_read_back() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    write_file(&fs, ROOT, "file", &content).await;
    assert_eq!(read_file(&fs, ROOT, "file").await.unwrap(), content);
    assert_eq!(store.counts.put_manifest.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_blob_fails_the_last_read() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    let content = vec![42u8; 200_000];
    write_file(&fs, ROOT, "victim", &content).await;
    let attr = fs.lookup(ROOT, OsStr::new("victim")).await.unwrap();
    assert_eq!(attr.size, 200_000);
    let info = {
        use reposure_registry::operations::Registry;
        let registry = StoreRegistry::new(store.clone());
        registry
            .resolve(
                "victim",
                &reposure_registry::names::Reference::Tag("latest".into()),
                None,
            )
            .await
            .unwrap()
    };
    let Ok(reposure_registry::operations::FileContent::Blob { blob, .. }) = info.file else {
        panic!()
    };
    let mut corrupt = original_blob(&store, &blob.digest).await;
    corrupt[1000] ^= 1;
    store.corrupt_blob(&blob.digest, Bytes::from(corrupt));
    let error = read_file(&fs, ROOT, "victim").await.unwrap_err();
    assert_eq!(error.errno(), libc::EIO, "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_blob_fails_again_after_a_retry_in_pages() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    write_file(&fs, ROOT, "victim", &vec![42u8; 200_000]).await;
    let registry = StoreRegistry::new(store.clone());
    let info = reposure_registry::operations::Registry::resolve(
        &registry,
        "victim",
        &reposure_registry::names::Reference::Tag("latest".into()),
        None,
    )
    .await
    .unwrap();
    let Ok(reposure_registry::operations::FileContent::Blob { blob, .. }) = info.file else {
        panic!()
    };
    let mut corrupt = original_blob(&store, &blob.digest).await;
    corrupt[100_000] ^= 1;
    store.corrupt_blob(&blob.digest, Bytes::from(corrupt));
    let attr = fs.lookup(ROOT, OsStr::new("victim")).await.unwrap();
    let (fh, _) = fs
        .open(attr.ino, libc::O_RDONLY, Caller::this_process())
        .await
        .unwrap();
    assert!(fs.read(fh, 0, 200_704).await.is_err());
    let mut failed = false;
    let mut offset = 0;
    while offset < 200_000 {
        match fs.read(fh, offset, 4096).await {
            Ok(chunk) => offset += chunk.len() as u64,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "a page-by-page retry must fail too");
}

async fn original_blob(store: &MemoryStore, digest: &reposure_registry::digest::Digest) -> Vec<u8> {
    use futures::TryStreamExt;
    use reposure_registry::store::Store;
    let chunks: Vec<Bytes> = store
        .get_blob("any", digest, 0, u64::MAX)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

fn faulty_filesystem() -> (
    Arc<MemoryStore>,
    Arc<reposure_registry::store::faulty::FaultyStore>,
    Arc<Filesystem>,
) {
    let memory = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let faulty = Arc::new(reposure_registry::store::faulty::FaultyStore::new(
        memory.clone(),
    ));
    let registry = Arc::new(StoreRegistry::new(faulty.clone()));
    let fs = Arc::new(Filesystem::new(registry, FsConfig::default()).unwrap());
    (memory, faulty, fs)
}

async fn push(fs: &Filesystem, name: &str, content: &[u8]) -> Result<(), FsError> {
    let (_, fh) = fs
        .create(
            ROOT,
            OsStr::new(name),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
            Caller::this_process(),
        )
        .await?;
    let mut offset = 0;
    for chunk in content.chunks(64 * 1024) {
        fs.write(fh, offset, chunk.to_vec()).await?;
        offset += chunk.len() as u64;
    }
    let result = fs.flush(fh, Caller::this_process()).await;
    fs.release(fh);
    result
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_upload_failure_fails_flush_and_creates_no_tag() {
    use reposure_registry::store::faulty::Faults;
    let (memory, faulty, fs) = faulty_filesystem();
    faulty.set(Faults {
        put_blob_fails_after: Some(100_000),
        ..Default::default()
    });
    let error = push(&fs, "partial", &vec![1u8; 500_000]).await.unwrap_err();
    assert_eq!(error.errno(), libc::EIO);
    assert!(error.to_string().contains("connection reset"), "{error}");
    assert_eq!(memory.counts.put_manifest.load(Ordering::Relaxed), 0);
    assert_eq!(
        fs.lookup(ROOT, OsStr::new("partial"))
            .await
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_failure_keeps_the_previous_content() {
    use reposure_registry::store::faulty::Faults;
    let (_memory, faulty, fs) = faulty_filesystem();
    push(&fs, "kept", b"old").await.unwrap();
    faulty.set(Faults {
        put_manifest_fails: true,
        ..Default::default()
    });
    assert_eq!(
        push(&fs, "kept", b"new content").await.unwrap_err().errno(),
        libc::EIO
    );
    faulty.set(Faults::default());
    assert_eq!(read_file(&fs, ROOT, "kept").await.unwrap(), b"old");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_failure_is_eio_and_next_open_recovers() {
    use reposure_registry::store::faulty::Faults;
    let (_memory, faulty, fs) = faulty_filesystem();
    push(&fs, "flaky", &vec![5u8; 10_000]).await.unwrap();
    let attr = fs.lookup(ROOT, OsStr::new("flaky")).await.unwrap();
    faulty.set(Faults {
        get_blob_fails: true,
        ..Default::default()
    });
    // The version was resolved at lookup: open needs no request, the read fails.
    let (fh, _) = fs
        .open(attr.ino, libc::O_RDONLY, Caller::this_process())
        .await
        .unwrap();
    assert_eq!(fs.read(fh, 0, 4096).await.unwrap_err().errno(), libc::EIO);
    fs.release(fh);
    faulty.set(Faults::default());
    assert_eq!(
        read_file(&fs, ROOT, "flaky").await.unwrap(),
        vec![5u8; 10_000]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_land_anywhere() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store);
    let fh = create_in_root(&fs, "anywhere").await;
    fs.write(fh, 0, b"abc".to_vec()).await.unwrap();
    fs.write(fh, 6, b"x".to_vec()).await.unwrap();
    fs.write(fh, 0, b"A".to_vec()).await.unwrap();
    fs.flush(fh, Caller::this_process()).await.unwrap();
    fs.release(fh);
    assert_eq!(
        read_file(&fs, ROOT, "anywhere").await.unwrap(),
        b"Abc\0\0\0x"
    );
}

/// Opens `name` in the root for writing with `flags`.
async fn open_for_writing(fs: &Filesystem, name: &str, flags: i32) -> u64 {
    let attr = fs.lookup(ROOT, OsStr::new(name)).await.unwrap();
    fs.open(attr.ino, flags, Caller::this_process())
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_opened_without_truncating_is_changed_in_place() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    write_file(&fs, ROOT, "doc", b"hello world").await;
    // A plain open and close (touch) fetches nothing and pushes nothing.
    let attr = fs.lookup(ROOT, OsStr::new("doc")).await.unwrap();
    let blobs_read = RequestCounts::get(&store.counts.get_blob);
    let pushes = RequestCounts::get(&store.counts.put_manifest);
    let fh = fs
        .open(attr.ino, libc::O_WRONLY, Caller::this_process())
        .await
        .unwrap()
        .0;
    fs.flush(fh, Caller::this_process()).await.unwrap();
    fs.release(fh);
    assert_eq!(RequestCounts::get(&store.counts.get_blob), blobs_read);
    assert_eq!(RequestCounts::get(&store.counts.put_manifest), pushes);
    // A partial rewrite fetches the content, then changes it.
    let fh = open_for_writing(&fs, "doc", libc::O_RDWR).await;
    fs.write(fh, 6, b"WORLD".to_vec()).await.unwrap();
    assert_eq!(&fs.read(fh, 0, 100).await.unwrap()[..], b"hello WORLD");
    fs.write(fh, 11, b"!".to_vec()).await.unwrap();
    fs.flush(fh, Caller::this_process()).await.unwrap();
    fs.release(fh);
    assert_eq!(read_file(&fs, ROOT, "doc").await.unwrap(), b"hello WORLD!");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_files_are_published_by_renaming_them() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    let fh = create_in_root(&fs, ".report.tmp123").await;
    fs.write(fh, 0, b"draft".to_vec()).await.unwrap();
    fs.flush(fh, Caller::this_process()).await.unwrap();
    fs.release(fh);
    let names = |entries: Vec<reposure_fs::filesystem::DirEntry>| {
        entries.into_iter().map(|e| e.name).collect::<Vec<_>>()
    };
    assert_eq!(names(fs.list(ROOT).await.unwrap()), [".report.tmp123"]);
    assert_eq!(
        RequestCounts::get(&store.counts.put_manifest),
        0,
        "nothing pushed"
    );
    let attr = fs.lookup(ROOT, OsStr::new(".report.tmp123")).await.unwrap();
    assert_eq!(
        attr.perm & 0o1000,
        0o1000,
        "a local file shows the sticky bit"
    );
    assert_eq!(
        read_file(&fs, ROOT, ".report.tmp123").await.unwrap(),
        b"draft"
    );
    fs.rename(
        ROOT,
        OsStr::new(".report.tmp123"),
        ROOT,
        OsStr::new("report"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(names(fs.list(ROOT).await.unwrap()), ["report"]);
    assert_eq!(read_file(&fs, ROOT, "report").await.unwrap(), b"draft");
    // An image renamed onto a local name: EXDEV.
    let refused = fs
        .rename(ROOT, OsStr::new("report"), ROOT, OsStr::new(".back"), false)
        .await
        .unwrap_err();
    assert_eq!(refused.errno(), libc::EXDEV);
    // `sed -i`'s temporary name is a valid image name, and still local: one push, at the
    // rename, under the real name.
    let pushes = RequestCounts::get(&store.counts.put_manifest);
    let fh = create_in_root(&fs, "sed4jlkg7").await;
    fs.write(fh, 0, b"edited".to_vec()).await.unwrap();
    fs.flush(fh, Caller::this_process()).await.unwrap();
    fs.release(fh);
    assert_eq!(RequestCounts::get(&store.counts.put_manifest), pushes);
    fs.rename(
        ROOT,
        OsStr::new("sed4jlkg7"),
        ROOT,
        OsStr::new("report"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(RequestCounts::get(&store.counts.put_manifest), pushes + 1);
    assert_eq!(names(fs.list(ROOT).await.unwrap()), ["report"]);
    assert_eq!(read_file(&fs, ROOT, "report").await.unwrap(), b"edited");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chmod_after_the_push_republishes_from_the_mounts_own_copy() {
    use reposure_fs::filesystem::AttrChanges;
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    write_file(&fs, ROOT, "tool", b"#!/bin/sh\necho hi\n").await;
    let attr = fs.lookup(ROOT, OsStr::new("tool")).await.unwrap();
    assert_eq!(attr.perm, 0o644);
    let blobs_read = RequestCounts::get(&store.counts.get_blob);
    let changes = AttrChanges {
        mode: Some(0o755),
        ..Default::default()
    };
    let changed = fs.setattr(attr.ino, changes, None).await.unwrap();
    assert_eq!(changed.perm, 0o755);
    assert_eq!(
        RequestCounts::get(&store.counts.get_blob),
        blobs_read,
        "the content came from the mount's own copy"
    );
    let again = fs.lookup(ROOT, OsStr::new("tool")).await.unwrap();
    assert_eq!(again.perm, 0o755);
    // The same mode again pushes nothing.
    let pushes = RequestCounts::get(&store.counts.put_manifest);
    fs.setattr(again.ino, changes, None).await.unwrap();
    assert_eq!(RequestCounts::get(&store.counts.put_manifest), pushes);
    // A new time is pushed once, through the inode the kernel already holds; the same time
    // again pushes nothing.
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_577_934_245);
    let touch = AttrChanges {
        modified: Some(time),
        ..Default::default()
    };
    assert_eq!(
        fs.setattr(again.ino, touch, None).await.unwrap().mtime,
        time
    );
    assert_eq!(RequestCounts::get(&store.counts.put_manifest), pushes + 1);
    fs.setattr(again.ino, touch, None).await.unwrap();
    assert_eq!(RequestCounts::get(&store.counts.put_manifest), pushes + 1);
    let touched = fs.lookup(ROOT, OsStr::new("tool")).await.unwrap();
    assert_eq!((touched.mtime, touched.perm), (time, 0o755));
    assert_eq!(
        read_file(&fs, ROOT, "tool").await.unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn touch_through_an_open_file_uses_the_mounts_own_copy() {
    use reposure_fs::filesystem::AttrChanges;
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    write_file(&fs, ROOT, "big", &content).await;
    let attr = fs.lookup(ROOT, OsStr::new("big")).await.unwrap();
    let (bytes_read, pushes) = (
        RequestCounts::get(&store.counts.blob_bytes_read),
        RequestCounts::get(&store.counts.put_manifest),
    );
    // `touch`: open for writing, set the time through the descriptor, close.
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    let touch = AttrChanges {
        modified: Some(time),
        ..Default::default()
    };
    for _ in 0..2 {
        let fh = open_for_writing(&fs, "big", libc::O_WRONLY).await;
        fs.setattr(attr.ino, touch, Some(fh)).await.unwrap();
        fs.flush(fh, Caller::this_process()).await.unwrap();
        fs.release(fh);
    }
    assert_eq!(
        RequestCounts::get(&store.counts.put_manifest),
        pushes + 1,
        "the second touch of the same time pushes nothing"
    );
    assert!(
        RequestCounts::get(&store.counts.blob_bytes_read) - bytes_read < content.len() as u64,
        "the content was fetched back"
    );
    let touched = fs.lookup(ROOT, OsStr::new("big")).await.unwrap();
    assert_eq!(touched.mtime, time);
    assert_eq!(read_file(&fs, ROOT, "big").await.unwrap(), content);
}

#[tokio::test(flavor = "multi_thread")]
async fn unlink_removes_one_tag_and_listing_follows() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    write_file(&fs, ROOT, "img", b"same").await;
    write_file(&fs, ROOT, "img:v2", b"same").await;
    let names = |entries: Vec<reposure_fs::filesystem::DirEntry>| {
        entries.into_iter().map(|e| e.name).collect::<Vec<_>>()
    };
    assert_eq!(names(fs.list(ROOT).await.unwrap()), ["img", "img:v2"]);
    fs.unlink(ROOT, OsStr::new("img")).await.unwrap();
    assert_eq!(names(fs.list(ROOT).await.unwrap()), ["img:v2"]);
    assert_eq!(read_file(&fs, ROOT, "img:v2").await.unwrap(), b"same");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_names_cost_no_request() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    for name in [".git", "Upper", "a b", ".Trash-0"] {
        assert_eq!(
            fs.lookup(ROOT, OsStr::new(name)).await.unwrap_err().errno(),
            libc::ENOENT
        );
    }
    assert_eq!(store.counts.get_manifest.load(Ordering::Relaxed), 0);
    assert_eq!(store.counts.list_repositories.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn random_read_fetches_a_window_not_the_blob() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    let content: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    write_file(&fs, ROOT, "big", &content).await;
    let attr = fs.lookup(ROOT, OsStr::new("big")).await.unwrap();
    let before = store.counts.blob_bytes_read.load(Ordering::Relaxed);
    let (fh, _) = fs
        .open(attr.ino, libc::O_RDONLY, Caller::this_process())
        .await
        .unwrap();
    let offset = 5 * 1024 * 1024 + 17;
    let data = fs.read(fh, offset, 4096).await.unwrap();
    assert_eq!(&data[..], &content[offset as usize..offset as usize + 4096]);
    let fetched = store.counts.blob_bytes_read.load(Ordering::Relaxed) - before;
    assert!(fetched <= 1024 * 1024, "fetched {fetched} bytes");
}

/// What `cp -r` does per file — look the name up, create it, write, close — asks the
/// registry for the missing name once, and never lists the catalog again: a push updates the
/// cached catalog in place. (Before, each file cost a catalog listing, which grows with the
/// registry.)
#[tokio::test(flavor = "multi_thread")]
async fn copying_many_files_asks_little_of_the_registry() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let registry = Arc::new(StoreRegistry::new(store.clone()));
    let config = FsConfig {
        metadata_ttl: std::time::Duration::from_secs(60),
        ..FsConfig::default()
    };
    let fs = Arc::new(Filesystem::new(registry, config).unwrap());
    fs.mkdir(ROOT, OsStr::new("tree")).await.unwrap();
    let dir = fs.lookup(ROOT, OsStr::new("tree")).await.unwrap().ino;
    let catalog_before = store.counts.list_repositories.load(Ordering::Relaxed);
    for i in 0..20 {
        let name = format!("f{i}");
        let manifests = store.counts.get_manifest.load(Ordering::Relaxed);
        assert!(matches!(
            fs.lookup(dir, OsStr::new(&name)).await,
            Err(e) if e.errno() == libc::ENOENT
        ));
        let (_, fh) = fs
            .create(
                dir,
                OsStr::new(&name),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o644,
                Caller::this_process(),
            )
            .await
            .unwrap();
        assert_eq!(
            store.counts.get_manifest.load(Ordering::Relaxed) - manifests,
            1,
            "the lookup asks once; create knows the answer"
        );
        fs.write(fh, 0, vec![i as u8; 4096]).await.unwrap();
        fs.flush(fh, Caller::this_process()).await.unwrap();
        fs.release(fh);
    }
    assert!(
        store.counts.list_repositories.load(Ordering::Relaxed) - catalog_before <= 1,
        "the catalog is listed at most once"
    );
    // And the pushed files are all there.
    let listed = fs.lookup(dir, OsStr::new("f19")).await.unwrap();
    assert_eq!(listed.size, 4096);
}

/// `stat.ttl`: the kernel may keep a name pointing at its version for what is left of the
/// resolution's `metadata_ttl`, never longer; a file being written is looked up every time.
#[tokio::test(flavor = "multi_thread")]
async fn entry_lifetimes_are_what_is_left_of_the_metadata_ttl() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let ttl = std::time::Duration::from_secs(2);
    let registry = Arc::new(StoreRegistry::new(store));
    let config = FsConfig {
        metadata_ttl: ttl,
        ..FsConfig::default()
    };
    let fs = Filesystem::new(registry, config).unwrap();
    write_file(&fs, ROOT, "file", b"content").await;
    let first = fs.lookup(ROOT, OsStr::new("file")).await.unwrap();
    assert!(first.entry_ttl > std::time::Duration::ZERO && first.entry_ttl <= ttl);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let later = fs.lookup(ROOT, OsStr::new("file")).await.unwrap();
    assert_eq!(later.ino, first.ino, "the same version");
    assert!(
        later.entry_ttl + std::time::Duration::from_millis(250) <= first.entry_ttl,
        "{:?} then {:?}",
        first.entry_ttl,
        later.entry_ttl
    );
    let (writing, fh) = fs
        .create(
            ROOT,
            OsStr::new("new"),
            libc::O_WRONLY | libc::O_CREAT,
            0o644,
            Caller::this_process(),
        )
        .await
        .unwrap();
    assert_eq!(writing.entry_ttl, std::time::Duration::ZERO);
    fs.release(fh);
}

/// `push.close`: `close()` returns only once the kernel has been told to drop both names
/// of the pushed tag, so the next open finds the new image.
#[tokio::test(flavor = "multi_thread")]
async fn a_push_answers_after_the_kernel_dropped_its_names() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store);
    // (directory, names) of each invalidation.
    type Dropped = Vec<(u64, Vec<String>)>;
    let dropped: Arc<std::sync::Mutex<Dropped>> = Arc::default();
    let recorder = dropped.clone();
    fs.set_invalidator(Box::new(move |parent, names| {
        recorder.lock().unwrap().push((parent, names));
        let (done, answer) = tokio::sync::oneshot::channel();
        // The kernel takes its time: the push must wait for it.
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let _ = done.send(());
        });
        answer
    }));
    let fh = create_in_root(&fs, "img").await;
    fs.write(fh, 0, b"x".to_vec()).await.unwrap();
    let started = std::time::Instant::now();
    fs.flush(fh, Caller::this_process()).await.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    fs.release(fh);
    let dropped = dropped.lock().unwrap().clone();
    assert_eq!(dropped.len(), 1);
    let (parent, mut names) = dropped[0].clone();
    names.sort();
    assert_eq!(
        (parent, names),
        (ROOT, vec!["img".to_owned(), "img:latest".to_owned()])
    );
}

/// The kernel's references are counted: an inode it has forgotten leaves the table, so the
/// mount holds what the kernel holds, not every version ever looked up.
#[tokio::test(flavor = "multi_thread")]
async fn forgotten_inodes_leave_the_table() {
    let fs = filesystem(Arc::new(MemoryStore::new(TagDeletion::Unsupported)));
    let baseline = fs.inode_count();
    for round in 0..50u8 {
        // A new version each round, as the kernel would see it: the created file, then the
        // name looked up twice.
        let (created, fh) = fs
            .create(
                ROOT,
                OsStr::new("churn"),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                0o644,
                Caller::this_process(),
            )
            .await
            .unwrap();
        fs.write(fh, 0, vec![round; 100]).await.unwrap();
        fs.flush(fh, Caller::this_process()).await.unwrap();
        fs.release(fh);
        fs.forget(created.ino, 1);
        let version = fs.lookup(ROOT, OsStr::new("churn")).await.unwrap();
        assert_eq!(
            fs.lookup(ROOT, OsStr::new("churn")).await.unwrap().ino,
            version.ino
        );
        fs.forget(version.ino, 1);
        assert!(
            fs.getattr(version.ino).await.is_ok(),
            "one reference is left"
        );
        fs.forget(version.ino, 1);
        assert!(matches!(
            fs.getattr(version.ino).await,
            Err(FsError::NotFound)
        ));
    }
    assert!(
        fs.inode_count() <= baseline + 1,
        "{} inodes after 50 versions",
        fs.inode_count()
    );
}

/// A file being written keeps its inode while it is open, even if the kernel forgets every
/// entry it was given for it: lookups hand that number out again (found by the load case
/// with the kernel dropping its caches).
#[tokio::test(flavor = "multi_thread")]
async fn a_file_being_written_keeps_its_inode_until_released() {
    let fs = filesystem(Arc::new(MemoryStore::new(TagDeletion::Unsupported)));
    let (created, fh) = fs
        .create(
            ROOT,
            OsStr::new("open"),
            libc::O_WRONLY | libc::O_CREAT,
            0o644,
            Caller::this_process(),
        )
        .await
        .unwrap();
    fs.write(fh, 0, b"partial".to_vec()).await.unwrap();
    fs.forget(created.ino, 1);
    let looked_up = fs.lookup(ROOT, OsStr::new("open")).await.unwrap();
    assert_eq!(looked_up.ino, created.ino);
    assert_eq!(fs.getattr(created.ino).await.unwrap().size, 7);
    fs.forget(created.ino, 1);
    fs.flush(fh, Caller::this_process()).await.unwrap();
    fs.release(fh);
    assert!(matches!(
        fs.getattr(created.ino).await,
        Err(FsError::NotFound)
    ));
}

/// Creates `name` in the root for writing, as this process; the handle.
async fn create_in_root(fs: &Filesystem, name: &str) -> u64 {
    let flags = libc::O_WRONLY | libc::O_CREAT;
    let (_, fh) = fs
        .create(ROOT, OsStr::new(name), flags, 0o644, Caller::this_process())
        .await
        .unwrap();
    fh
}

/// Another process that was only handed the descriptor (here a child process).
struct OtherProcess(std::process::Child);

impl OtherProcess {
    fn start() -> Self {
        Self(
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap(),
        )
    }

    fn caller(&self) -> Caller {
        Caller::new(self.0.id())
    }
}

impl Drop for OtherProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `push.close`: a `close()` by a process that did not open the file (a child closing an
/// inherited copy at exec or exit) pushes nothing, even mid-write; the opener's close
/// pushes everything, and `fsync` pushes whoever asks.
#[tokio::test(flavor = "multi_thread")]
async fn only_the_openers_close_pushes() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    let child = OtherProcess::start();
    let fh = create_in_root(&fs, "doc").await;
    fs.write(fh, 0, b"first half, ".to_vec()).await.unwrap();
    fs.flush(fh, child.caller()).await.unwrap();
    // A mount that never saw the file open reads what the registry has.
    let elsewhere = filesystem(store.clone());
    let before = read_file(&elsewhere, ROOT, "doc").await;
    assert!(
        matches!(before, Err(FsError::Registry(RegistryError::NotFound(_)))),
        "{before:?}"
    );
    fs.write(fh, 12, b"second half".to_vec()).await.unwrap();
    fs.flush(fh, Caller::this_process()).await.unwrap();
    assert_eq!(
        read_file(&filesystem(store.clone()), ROOT, "doc")
            .await
            .unwrap(),
        b"first half, second half"
    );
    fs.release(fh);

    let (_, fh) = fs
        .create(
            ROOT,
            OsStr::new("doc"),
            libc::O_WRONLY | libc::O_TRUNC,
            0o644,
            Caller::this_process(),
        )
        .await
        .unwrap();
    fs.write(fh, 0, b"synced".to_vec()).await.unwrap();
    fs.fsync(fh).await.unwrap();
    assert_eq!(
        read_file(&filesystem(store), ROOT, "doc").await.unwrap(),
        b"synced"
    );
    fs.release(fh);
}

/// A close waits for the kernel to drop the old entry only for a bounded time (the kernel
/// may be held up behind a directory lock), and `fsync` does not wait for it at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_invalidation_holds_a_close_for_a_bounded_time() {
    let fs = filesystem(Arc::new(MemoryStore::new(TagDeletion::Unsupported)));
    // The kernel never answers; the senders are kept so the answers stay pending.
    let pending: Arc<std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<()>>>> = Arc::default();
    let keeper = pending.clone();
    fs.set_invalidator(Box::new(move |_, _| {
        let (done, answer) = tokio::sync::oneshot::channel();
        keeper.lock().unwrap().push(done);
        answer
    }));
    let fh = create_in_root(&fs, "stuck").await;
    fs.write(fh, 0, b"one".to_vec()).await.unwrap();
    let started = std::time::Instant::now();
    fs.fsync(fh).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    fs.write(fh, 3, b" two".to_vec()).await.unwrap();
    let started = std::time::Instant::now();
    fs.flush(fh, Caller::this_process()).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(2) && waited < std::time::Duration::from_secs(5),
        "close waited {waited:?}"
    );
    assert_eq!(pending.lock().unwrap().len(), 2);
    fs.release(fh);
}

/// An unmount releases the files the kernel never sent a release for and waits for their
/// pushes: content a child wrote after its opener closed is not lost.
#[tokio::test(flavor = "multi_thread")]
async fn finishing_writes_pushes_files_never_released() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    let child = OtherProcess::start();
    let fh = create_in_root(&fs, "late").await;
    fs.write(fh, 0, b"written by a child".to_vec())
        .await
        .unwrap();
    fs.flush(fh, child.caller()).await.unwrap();
    assert!(fs.finish_writes(std::time::Duration::from_secs(10)).await);
    assert_eq!(
        read_file(&filesystem(store), ROOT, "late").await.unwrap(),
        b"written by a child"
    );
}

/// A push that failed is tried again at release if more was written since: the opener
/// closed mid-write (and was told of the failure), a child then wrote the rest.
#[tokio::test(flavor = "multi_thread")]
async fn content_written_after_a_failed_push_is_pushed_at_release() {
    use reposure_registry::store::faulty::Faults;
    let (memory, faulty, fs) = faulty_filesystem();
    let child = OtherProcess::start();
    let fh = create_in_root(&fs, "retried").await;
    fs.write(fh, 0, b"first, ".to_vec()).await.unwrap();
    faulty.set(Faults {
        put_manifest_fails: true,
        ..Default::default()
    });
    assert!(fs.flush(fh, Caller::this_process()).await.is_err());
    faulty.set(Faults::default());
    fs.write(fh, 7, b"then the rest".to_vec()).await.unwrap();
    fs.flush(fh, child.caller()).await.unwrap();
    fs.release(fh);
    assert!(fs.finish_writes(std::time::Duration::from_secs(10)).await);
    let elsewhere = filesystem(memory);
    assert_eq!(
        read_file(&elsewhere, ROOT, "retried").await.unwrap(),
        b"first, then the rest"
    );
}
