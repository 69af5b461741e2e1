#![no_main]
//! An image archive (or anything else) written to a name, as `cp FILE /mnt/reg/NAME` and
//! `reposure image push` do.
//!
//! Property: the push stores nothing and says "not an archive", or pushes an image whose
//! tag then points at exactly the digest it reported, or fails leaving no tag at all; it
//! never panics, and leaves nothing behind in its scratch directory.

use libfuzzer_sys::fuzz_target;
use reposure_fuzz::{memory_registry, runtime};
use reposure_registry::import::push_archive;
use reposure_registry::names::Reference;
use reposure_registry::store::Store;

fuzz_target!(|data: &[u8]| {
    let input = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(input.path(), data).expect("write the input");
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let (store, registry) = memory_registry();
    let latest = Reference::Tag("latest".into());
    runtime().block_on(async {
        let outcome = push_archive(registry.as_ref(), "fuzz", "latest", input.path(), scratch.path()).await;
        let tagged = store.get_manifest("fuzz", &latest).await;
        match outcome {
            Ok(Some(digest)) => {
                assert_eq!(tagged.expect("the pushed tag exists").digest, digest)
            }
            Ok(None) | Err(_) => assert!(tagged.is_err(), "nothing pushed, yet a tag exists"),
        }
    });
    let left = std::fs::read_dir(scratch.path()).expect("scratch").count();
    assert_eq!(left, 0, "files left in the scratch directory");
});
