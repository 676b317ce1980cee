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

/// Every key of a queue carries the queue's hash tag, and nothing else is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_keys_share_the_queue_tag() {
    use futures::TryStreamExt;
    use redtower_jobs::{Queue, store::WorkRequest};

    let prefix = unique_prefix("keys");
    let redis = Redis::new(
        RedisConfig::from_url(&redtower_testkit::shared_cluster().url())
            .unwrap()
            .key_prefix(prefix.clone()),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let store = RedisStore::new(redis.clone());
    let queue = Queue::<conformance::Welcome>::new(store.clone(), "mail:{x}");
    queue
        .add(conformance::Welcome { to: "a".into() })
        .unique("k")
        .await
        .unwrap();
    queue
        .add(conformance::Welcome { to: "b".into() })
        .delay(Duration::from_secs(60))
        .await
        .unwrap();
    let jobs = store
        .work(
            "mail:{x}",
            WorkRequest::new(vec![], 1, Duration::from_secs(30)),
        )
        .await
        .unwrap()
        .jobs;
    assert_eq!(jobs.len(), 1);
    let keys: Vec<String> = redis
        .scan(&redis.keyspace().pattern())
        .try_collect()
        .await
        .unwrap();
    assert!(keys.len() >= 7, "{keys:?}");
    let tag = redis.keyspace().namespace("q").key("mail:{x}");
    for k in &keys {
        assert!(
            k.starts_with(&format!("{}:", tag.as_str())),
            "{k} outside {tag}"
        );
    }
}
