//! Servers shared by every test of a test binary, and the key prefixes that keep those tests
//! apart.

use std::sync::OnceLock;

use crate::{RedisCluster, RedisServer};

/// A unique key prefix for one test, so tests sharing a server never see each other's keys.
pub fn unique_prefix(test: &str) -> String {
    let clean: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(32)
        .collect();
    format!("t-{clean}-{:08x}", rand::random::<u32>())
}

/// One standalone server shared by every test of this test binary (started on first use).
/// Tests sharing it must use their own key prefix ([`unique_prefix`]) and must not flush it.
pub fn shared() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// One 3-primary Cluster shared by every test of this test binary (started on first use).
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

/// The URL of the shared standalone server: `REDTOWER_TEST_REDIS_URL` when set (to run the
/// tests against an existing server), else [`shared`]'s.
pub fn shared_url() -> String {
    match std::env::var("REDTOWER_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => shared().url(),
    }
}
