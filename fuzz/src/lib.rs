//! What the fuzz targets share: a runtime, and an in-memory registry to run against.
//!
//! Each target (in `fuzz_targets/`) states the property it checks; inputs that broke one
//! are kept in `regressions/TARGET/` and replayed by every run (`scripts/fuzz.sh`).

use std::sync::{Arc, OnceLock};

use reposure_registry::operations::StoreRegistry;
use reposure_registry::store::memory::{MemoryStore, TagDeletion};

/// One runtime for every input of a run.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// A fresh, empty registry in memory, with its store.
pub fn memory_registry() -> (Arc<MemoryStore>, Arc<StoreRegistry>) {
    let store = Arc::new(MemoryStore::new(TagDeletion::Supported));
    (store.clone(), Arc::new(StoreRegistry::new(store)))
}
