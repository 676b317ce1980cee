//! The conformance suite on [`MemoryStore`], with paused tokio time.

mod conformance;

use conformance::{Backend, Opts};
use redtower_session::MemoryStore;

struct Memory;

impl Backend for Memory {
    type Store = MemoryStore;

    async fn store(&self, o: Opts) -> MemoryStore {
        let mut s = MemoryStore::new().touch_interval(std::time::Duration::ZERO);
        if let Some(d) = o.idle {
            s = s.idle_timeout(d);
        }
        if let Some(d) = o.absolute {
            s = s.absolute_timeout(d);
        }
        if let Some(n) = o.max_data {
            s = s.max_data_size(n);
        }
        if let Some(n) = o.max_per_user {
            s = s.max_sessions_per_user(n);
        }
        s
    }

    async fn index_exists(&self, store: &MemoryStore, user: &str) -> bool {
        store.has_index(user)
    }

    async fn index_len(&self, store: &MemoryStore, user: &str) -> usize {
        store.index_len(user)
    }

    async fn records(&self, store: &MemoryStore) -> usize {
        store.records()
    }

    fn watched(&self, store: &MemoryStore) -> usize {
        store.watched()
    }
}

conformance!([#[tokio::test(start_paused = true)]] Memory);

mod http_memory {
    use super::conformance;

    crate::http_checks!([#[tokio::test]] redtower_session::MemoryStore::new());
}

/// The store chosen at run time: the same checks through an `Arc<dyn SessionBackend>`.
mod http_erased_store {
    use std::sync::Arc;

    use redtower_session::{MemoryStore, SessionBackend};

    use super::conformance;

    crate::http_checks!(erased [#[tokio::test]]
        Arc::new(MemoryStore::new()) as Arc<dyn SessionBackend>);
}
