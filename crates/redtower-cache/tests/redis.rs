//! The conformance suite and Redis-specific behaviour on real servers (standalone and Cluster).

#[macro_use]
mod conformance;

use std::time::Duration;

use redtower_cache::RedisStore;
use redtower_client::{Redis, RedisConfig};
use redtower_testkit::unique_prefix;

async fn connect(url: &str, test: &str) -> Redis {
    let redis = Redis::new(
        RedisConfig::from_url(url)
            .unwrap()
            .key_prefix(unique_prefix(test)),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    redis
}

async fn standalone(test: &str) -> RedisStore {
    RedisStore::new(connect(&redtower_testkit::shared_url(), test).await)
}

async fn cluster(test: &str) -> RedisStore {
    RedisStore::new(connect(&redtower_testkit::shared_cluster().url(), test).await)
}

mod standalone {
    use super::conformance;
    all_conformance!(super::standalone);
}

mod cluster {
    use super::conformance;
    all_conformance!(super::cluster);
}
