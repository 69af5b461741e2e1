//! The filesystem core against the in-memory store: no FUSE, no network.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use reposure_fs::errno::FsError;
use reposure_fs::inode::ROOT;
use reposure_fs::{Filesystem, FsConfig};
use reposure_surrogate::registry::StoreRegistry;
use reposure_surrogate::store::memory::{MemoryStore, TagDeletion};

fn filesystem(store: Arc<MemoryStore>) -> Arc<Filesystem> {
    let registry = Arc::new(StoreRegistry::new(store));
    Arc::new(Filesystem::new(registry, FsConfig::default()))
}

async fn write_file(fs: &Filesystem, parent: u64, name: &str, content: &[u8]) {
    let (_, fh) = fs
        .create(parent, OsStr::new(name), libc::O_WRONLY | libc::O_CREAT)
        .await
        .unwrap();
    for (i, chunk) in content.chunks(64 * 1024).enumerate() {
        fs.write(fh, (i * 64 * 1024) as u64, chunk.to_vec())
            .await
            .unwrap();
    }
    fs.flush(fh).await.unwrap();
    fs.release(fh);
}

async fn read_file(fs: &Filesystem, parent: u64, name: &str) -> Result<Vec<u8>, FsError> {
    let attr = fs.lookup(parent, OsStr::new(name)).await?;
    let (fh, _) = fs.open(attr.ino, libc::O_RDONLY).await?;
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

#[tokio::test]
async fn write_then_read_back() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    write_file(&fs, ROOT, "file", &content).await;
    assert_eq!(read_file(&fs, ROOT, "file").await.unwrap(), content);
    assert_eq!(store.counts.put_manifest.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn corrupt_blob_fails_the_last_read() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    let content = vec![42u8; 200_000];
    write_file(&fs, ROOT, "victim", &content).await;
    let attr = fs.lookup(ROOT, OsStr::new("victim")).await.unwrap();
    assert_eq!(attr.size, 200_000);
    let info = {
        use reposure_surrogate::registry::Registry;
        let registry = StoreRegistry::new(store.clone());
        registry
            .resolve(
                "victim",
                &reposure_surrogate::names::Reference::Tag("latest".into()),
            )
            .await
            .unwrap()
    };
    let reposure_surrogate::registry::ImageView::File(content_ref) = info.view else {
        panic!()
    };
    let mut corrupt = original_blob(&store, &content_ref.blob.digest).await;
    corrupt[1000] ^= 1;
    store.corrupt_blob(&content_ref.blob.digest, Bytes::from(corrupt));
    let error = read_file(&fs, ROOT, "victim").await.unwrap_err();
    assert_eq!(error.errno(), libc::EIO, "{error}");
}

#[tokio::test]
async fn corrupt_blob_fails_again_after_a_retry_in_pages() {
    let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
    let fs = filesystem(store.clone());
    write_file(&fs, ROOT, "victim", &vec![42u8; 200_000]).await;
    let registry = StoreRegistry::new(store.clone());
    let info = reposure_surrogate::registry::Registry::resolve(
        &registry,
        "victim",
        &reposure_surrogate::names::Reference::Tag("latest".into()),
    )
    .await
    .unwrap();
    let reposure_surrogate::registry::ImageView::File(content_ref) = info.view else {
        panic!()
    };
    let mut corrupt = original_blob(&store, &content_ref.blob.digest).await;
    corrupt[100_000] ^= 1;
    store.corrupt_blob(&content_ref.blob.digest, Bytes::from(corrupt));
    let attr = fs.lookup(ROOT, OsStr::new("victim")).await.unwrap();
    let (fh, _) = fs.open(attr.ino, libc::O_RDONLY).await.unwrap();
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

async fn original_blob(
    store: &MemoryStore,
    digest: &reposure_surrogate::digest::Digest,
) -> Vec<u8> {
    use futures::TryStreamExt;
    use reposure_surrogate::store::Store;
    let chunks: Vec<Bytes> = store
        .get_blob("any", digest, 0, None)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}
