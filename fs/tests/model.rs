//! A property-based reference model: random sequences of filesystem operations, with
//! pushes and deletes by another client in between, compared after every step with a pure
//! model of the expected tree and contents. Runs the async core against the in-memory
//! store (no FUSE), with metadata trusted for no time so other clients' changes show at once.
//!
//! The names include local ones (names no registry accepts, as editors and `rsync` use for
//! their temporary files), and the operations include changes in place (a write at an
//! offset into an existing file, a truncate), so that copy-up, publishing by rename and
//! EXDEV for images renamed onto local names are all checked against the same model.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use proptest::prelude::*;
use reposure_fs::errno::FsError;
use reposure_fs::inode::ROOT;
use reposure_fs::{Caller, Filesystem, FsConfig};
use reposure_registry::operations::{FileUpload, Registry, StoreRegistry};
use reposure_registry::store::memory::{MemoryStore, TagDeletion};

/// The names the operations use: (directory, file name, repository, tag). The last two
/// are local names: no repository.
const NAMES: [(&str, &str, &str, &str); 7] = [
    ("", "a", "a", "latest"),
    ("", "a:v1", "a", "v1"),
    ("d", "b", "d/b", "latest"),
    ("d", "b:v2", "d/b", "v2"),
    ("d", "c", "d/c", "latest"),
    ("", ".a.tmp", "", ""),
    ("d", "c~", "", ""),
];

fn is_local(name: usize) -> bool {
    NAMES[name].2.is_empty()
}

fn contents() -> Vec<Vec<u8>> {
    vec![
        b"x".to_vec(),
        b"hello world".to_vec(),
        (0..100_000u32).map(|i| (i % 241) as u8).collect(),
        (0..700_000u32).map(|i| (i % 239) as u8).collect(),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize, usize),
    /// Writes bytes at an offset into the existing file, without truncating it.
    Patch(usize, u64, Vec<u8>),
    Truncate(usize, u64),
    Read(usize, u64),
    Remove(usize),
    Move(usize, usize),
    Link(usize, usize),
    PushElsewhere(usize, usize),
    DeleteElsewhere(usize),
    MakeDir,
    RemoveDir,
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    let content = 0..4usize;
    prop_oneof![
        (name.clone(), content.clone()).prop_map(|(n, c)| Op::Write(n, c)),
        (
            name.clone(),
            0..800_000u64,
            proptest::collection::vec(any::<u8>(), 1..5000)
        )
            .prop_map(|(n, o, b)| Op::Patch(n, o, b)),
        (name.clone(), 0..800_000u64).prop_map(|(n, s)| Op::Truncate(n, s)),
        (name.clone(), 0..800_000u64).prop_map(|(n, o)| Op::Read(n, o)),
        name.clone().prop_map(Op::Remove),
        (name.clone(), name.clone()).prop_map(|(a, b)| Op::Move(a, b)),
        (name.clone(), name.clone()).prop_map(|(a, b)| Op::Link(a, b)),
        (name.clone(), content).prop_map(|(n, c)| Op::PushElsewhere(n, c)),
        name.prop_map(Op::DeleteElsewhere),
        Just(Op::MakeDir),
        Just(Op::RemoveDir),
    ]
}

/// The expected state: image contents by name, and whether directory `e` exists.
#[derive(Default)]
struct Model {
    images: BTreeMap<usize, Vec<u8>>,
    e_exists: bool,
}

struct Harness {
    fs: Arc<Filesystem>,
    registry: Arc<StoreRegistry>,
    contents: Vec<Vec<u8>>,
}

impl Harness {
    async fn dir(&self, dir: &str) -> u64 {
        if dir.is_empty() {
            ROOT
        } else {
            self.fs
                .lookup(ROOT, OsStr::new(dir))
                .await
                .expect("dir")
                .ino
        }
    }

    async fn write(&self, name: usize, content: &[u8]) -> Result<(), FsError> {
        let (dir, file, ..) = NAMES[name];
        let parent = self.dir(dir).await;
        let (_, fh) = self
            .fs
            .create(
                parent,
                OsStr::new(file),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                0o644,
                Caller::this_process(),
            )
            .await?;
        let mut offset = 0;
        for chunk in content.chunks(128 * 1024) {
            self.fs.write(fh, offset, chunk.to_vec()).await?;
            offset += chunk.len() as u64;
        }
        let result = self.fs.flush(fh, Caller::this_process()).await;
        self.fs.release(fh);
        result
    }

    async fn lookup(&self, name: usize) -> Result<reposure_fs::filesystem::Attr, FsError> {
        let (dir, file, ..) = NAMES[name];
        self.fs.lookup(self.dir(dir).await, OsStr::new(file)).await
    }

    /// Opens the existing file read-write and writes `bytes` at `offset`.
    async fn patch(&self, name: usize, offset: u64, bytes: &[u8]) -> Result<(), FsError> {
        let attr = self.lookup(name).await?;
        let (fh, _) = self
            .fs
            .open(attr.ino, libc::O_RDWR, Caller::this_process())
            .await?;
        let written = self.fs.write(fh, offset, bytes.to_vec()).await;
        let flushed = self.fs.flush(fh, Caller::this_process()).await;
        self.fs.release(fh);
        written.and(flushed)
    }

    async fn truncate(&self, name: usize, size: u64) -> Result<u64, FsError> {
        let attr = self.lookup(name).await?;
        let changes = reposure_fs::filesystem::AttrChanges {
            size: Some(size),
            ..Default::default()
        };
        Ok(self.fs.setattr(attr.ino, changes, None).await?.size)
    }

    async fn read(&self, name: usize, offset: u64) -> Result<Vec<u8>, FsError> {
        let attr = self.lookup(name).await?;
        let (fh, _) = self
            .fs
            .open(attr.ino, libc::O_RDONLY, Caller::this_process())
            .await?;
        let mut out = Vec::new();
        let mut at = offset;
        loop {
            let chunk: Bytes = self.fs.read(fh, at, 256 * 1024).await?;
            if chunk.is_empty() {
                break;
            }
            at += chunk.len() as u64;
            out.extend_from_slice(&chunk);
        }
        self.fs.release(fh);
        Ok(out)
    }

    async fn push_elsewhere(&self, name: usize, content: &[u8]) {
        let (_, _, repository, tag) = NAMES[name];
        let body = content.to_vec();
        let upload = FileUpload {
            file_name: "other".into(),
            size: body.len() as u64,
            format: Default::default(),
            created: None,
            attributes: Default::default(),
            body: futures::stream::once(async move { Ok(Bytes::from(body)) }).boxed(),
        };
        self.registry
            .push_file(repository, tag, upload)
            .await
            .expect("push elsewhere");
    }

    /// Applies `op` to the filesystem and the model, checking the answer.
    async fn step(&self, model: &mut Model, op: &Op) {
        match *op {
            Op::Write(n, c) => {
                self.write(n, &self.contents[c]).await.expect("write");
                model.images.insert(n, self.contents[c].clone());
            }
            Op::Patch(n, offset, ref bytes) => {
                let result = self.patch(n, offset, bytes).await;
                match model.images.get_mut(&n) {
                    Some(content) => {
                        result.expect("patch");
                        let (start, end) = (offset as usize, offset as usize + bytes.len());
                        if content.len() < end {
                            content.resize(end, 0);
                        }
                        content[start..end].copy_from_slice(bytes);
                    }
                    None => assert_eq!(result.unwrap_err().errno(), libc::ENOENT),
                }
            }
            Op::Truncate(n, size) => {
                let result = self.truncate(n, size).await;
                match model.images.get_mut(&n) {
                    Some(content) => {
                        assert_eq!(result.expect("truncate"), size);
                        content.resize(size as usize, 0);
                    }
                    None => assert_eq!(result.unwrap_err().errno(), libc::ENOENT),
                }
            }
            Op::Read(n, offset) => match model.images.get(&n) {
                Some(content) => {
                    let offset = offset.min(content.len() as u64);
                    let read = self.read(n, offset).await.expect("read");
                    assert_eq!(read, content[offset as usize..], "read {n} at {offset}");
                }
                None => assert_eq!(
                    self.read(n, offset).await.unwrap_err().errno(),
                    libc::ENOENT
                ),
            },
            Op::Remove(n) => {
                let (dir, file, ..) = NAMES[n];
                let result = self.fs.unlink(self.dir(dir).await, OsStr::new(file)).await;
                match model.images.remove(&n) {
                    Some(_) => result.expect("remove"),
                    None => assert_eq!(result.unwrap_err().errno(), libc::ENOENT),
                }
            }
            Op::Move(a, b) => {
                let ((da, fa, ..), (db, fb, ..)) = (NAMES[a], NAMES[b]);
                let result = self
                    .fs
                    .rename(
                        self.dir(da).await,
                        OsStr::new(fa),
                        self.dir(db).await,
                        OsStr::new(fb),
                        false,
                    )
                    .await;
                match model.images.get(&a).cloned() {
                    Some(_) if a == b => result.expect("move onto itself"),
                    // An image cannot become a local file: `mv` copies it instead.
                    Some(_) if !is_local(a) && is_local(b) => {
                        assert_eq!(result.unwrap_err().errno(), libc::EXDEV)
                    }
                    Some(content) => {
                        result.expect("move");
                        model.images.remove(&a);
                        model.images.insert(b, content);
                    }
                    None => assert_eq!(result.unwrap_err().errno(), libc::ENOENT),
                }
            }
            Op::Link(a, b) => {
                let ((da, fa, ..), (db, fb, ..)) = (NAMES[a], NAMES[b]);
                let source = self.fs.lookup(self.dir(da).await, OsStr::new(fa)).await;
                match (model.images.get(&a).cloned(), source) {
                    // Only published images take new names by linking.
                    (Some(_), Ok(attr)) if is_local(a) || is_local(b) => {
                        let result = self
                            .fs
                            .link(attr.ino, self.dir(db).await, OsStr::new(fb))
                            .await;
                        let refused = result.unwrap_err().errno();
                        assert!([libc::EPERM, libc::EINVAL].contains(&refused), "{refused}");
                    }
                    (Some(content), Ok(attr)) => {
                        let result = self
                            .fs
                            .link(attr.ino, self.dir(db).await, OsStr::new(fb))
                            .await;
                        match model.images.entry(b) {
                            std::collections::btree_map::Entry::Occupied(_) => {
                                assert_eq!(result.unwrap_err().errno(), libc::EEXIST)
                            }
                            std::collections::btree_map::Entry::Vacant(slot) => {
                                result.expect("link");
                                slot.insert(content);
                            }
                        }
                    }
                    (None, Err(e)) => assert_eq!(e.errno(), libc::ENOENT),
                    (expected, got) => panic!(
                        "lookup of {fa}: model {:?}, filesystem {:?}",
                        expected.map(|c| c.len()),
                        got.map(|a| a.size)
                    ),
                }
            }
            // Another client sees only the registry.
            Op::PushElsewhere(n, _) | Op::DeleteElsewhere(n) if is_local(n) => {}
            Op::PushElsewhere(n, c) => {
                self.push_elsewhere(n, &self.contents[c]).await;
                model.images.insert(n, self.contents[c].clone());
            }
            Op::DeleteElsewhere(n) => {
                let (_, _, repository, tag) = NAMES[n];
                let result = self.registry.delete_tag(repository, tag).await;
                match model.images.remove(&n) {
                    Some(_) => result.expect("delete elsewhere"),
                    None => assert!(result.is_err()),
                }
            }
            Op::MakeDir => {
                let result = self.fs.mkdir(ROOT, OsStr::new("e")).await;
                if model.e_exists {
                    assert_eq!(result.unwrap_err().errno(), libc::EEXIST);
                } else {
                    result.expect("mkdir");
                    model.e_exists = true;
                }
            }
            Op::RemoveDir => {
                let result = self.fs.rmdir(ROOT, OsStr::new("e")).await;
                if model.e_exists {
                    result.expect("rmdir");
                    model.e_exists = false;
                } else {
                    assert_eq!(result.unwrap_err().errno(), libc::ENOENT);
                }
            }
        }
    }

    /// Compares the whole tree with the model.
    async fn check(&self, model: &Model) {
        for (dir, expected_dirs) in [("", vec!["d"]), ("d", vec![])] {
            let listed: BTreeSet<String> = self
                .fs
                .list(self.dir(dir).await)
                .await
                .expect("list")
                .into_iter()
                .map(|e| e.name)
                .collect();
            let mut expected: BTreeSet<String> =
                expected_dirs.iter().map(|s| s.to_string()).collect();
            if dir.is_empty() && model.e_exists {
                expected.insert("e".into());
            }
            for &n in model.images.keys() {
                if NAMES[n].0 == dir {
                    expected.insert(NAMES[n].1.to_owned());
                }
            }
            assert_eq!(listed, expected, "listing of {dir:?}");
        }
        for (n, &(dir, file, ..)) in NAMES.iter().enumerate() {
            let attr = self.fs.lookup(self.dir(dir).await, OsStr::new(file)).await;
            match model.images.get(&n) {
                Some(content) => assert_eq!(
                    attr.expect("lookup").size,
                    content.len() as u64,
                    "size of {file}"
                ),
                None => assert_eq!(
                    attr.unwrap_err().errno(),
                    libc::ENOENT,
                    "{file} should not exist"
                ),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn filesystem_matches_the_model(ops in proptest::collection::vec(op(), 1..30)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let store = Arc::new(MemoryStore::new(TagDeletion::Unsupported));
            let registry = Arc::new(StoreRegistry::new(store));
            let config = FsConfig { metadata_ttl: Duration::ZERO, ..FsConfig::default() };
            let fs = Arc::new(Filesystem::new(registry.clone(), config).unwrap());
            fs.mkdir(ROOT, OsStr::new("d")).await.unwrap();
            let harness = Harness { fs, registry, contents: contents() };
            let mut model = Model::default();
            for op in &ops {
                harness.step(&mut model, op).await;
                harness.check(&model).await;
            }
        });
    }
}
