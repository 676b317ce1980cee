//! The conformance suite on Redis standalone and Redis Cluster, plus Redis-specific checks.

use std::{sync::Arc, time::Duration};

use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{QueueStore, RedisStore};
use redtower_testkit::unique_prefix;

#[path = "conformance/mod.rs"]
mod conformance;

async fn connect(url: &str, test: &str) -> Arc<dyn QueueStore> {
    let redis = Redis::new(
        RedisConfig::from_url(url)
            .unwrap()
            .key_prefix(unique_prefix(test)),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    Arc::new(RedisStore::new(redis))
}

mod standalone {
    use super::*;

    async fn store(test: &str) -> Arc<dyn QueueStore> {
        connect(&redtower_testkit::shared_url(), test).await
    }

    conformance_tests!(
        tokio::test(flavor = "multi_thread", worker_threads = 2),
        store
    );
}

mod cluster {
    use super::*;

    async fn store(test: &str) -> Arc<dyn QueueStore> {
        connect(&redtower_testkit::shared_cluster().url(), test).await
    }

    conformance_tests!(
        tokio::test(flavor = "multi_thread", worker_threads = 2),
        store
    );
}
