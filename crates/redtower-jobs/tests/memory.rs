//! The conformance suite on the in-memory backend, under a paused tokio clock.

use std::sync::Arc;

use redtower_jobs::{MemoryStore, QueueStore};

#[path = "conformance/mod.rs"]
mod conformance;

async fn memory(_test: &str) -> Arc<dyn QueueStore> {
    Arc::new(MemoryStore::new())
}

conformance_tests!(tokio::test(start_paused = true), memory);
