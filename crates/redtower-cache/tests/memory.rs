//! The conformance suite on the in-process backend, concrete and behind an
//! `Arc<dyn CacheStore>` (a backend chosen at run time).

#[macro_use]
mod conformance;

use std::sync::Arc;

use redtower_cache::{CacheStore, MemoryStore};

async fn memory(_test: &str) -> MemoryStore {
    MemoryStore::new()
}

async fn shared(_test: &str) -> Arc<dyn CacheStore> {
    Arc::new(MemoryStore::new())
}

all_conformance!(memory);

/// The same through the blanket `impl CacheStore for Arc<T>`.
mod chosen_at_run_time {
    use super::conformance;
    all_conformance!(super::shared);
}
