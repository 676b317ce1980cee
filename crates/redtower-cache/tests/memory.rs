//! The conformance suite on the in-process backend.

#[macro_use]
mod conformance;

use redtower_cache::MemoryStore;

async fn memory(_test: &str) -> MemoryStore {
    MemoryStore::new()
}

all_conformance!(memory);
