//! Redis-backed middleware for axum and tower, one feature per concern (none on by default):
//!
//! | module | feature | what it is |
//! | --- | --- | --- |
//! | [`client`] | always | the shared Redis layer: config, keyspace, scripts, SCAN, health |
//! | `ratelimit` | `ratelimit` | `RateLimitLayer`: GCRA / sliding / fixed window, shared across instances |
//! | `cache` | `cache` | `ResponseCacheLayer` and `Cache::get_or_fetch`, stampede-proof |
//! | `session` | `session` | a tower-sessions store with a per-user index and "log out everywhere" |
//! | `pubsub` | `pubsub` | publish through Redis, stream to browsers over SSE with resume |
//! | `jobs` | `jobs` | typed background jobs: delays, attempts, backoff, workers |
//!
//! Each feature module re-exports its crate (`redtower-ratelimit`, ...), so
//! `redtower::ratelimit::RateLimitLayer` and `redtower_ratelimit::RateLimitLayer` are the same
//! type. `full` enables all of them (and `axum`); `axum` adds the feature crates' axum routers
//! (`redtower::cache::purge`, the cache's authenticated purge router); `rustls` enables
//! `rediss://`; `opentelemetry` stores the
//! W3C trace context with each job and event, so a worker's span and an SSE delivery join the
//! trace that enqueued or published them (see each crate's "Tracing" section for its spans).
//!
//! # Limits
//!
//! Every resource a client can make a layer create is bounded, with a safe default: each
//! crate's documentation has a "Limits" table (entries, bytes, connections, channels, sessions
//! per user, variants per key, and their settings). The client's is in [`client`].
//!
//! ```
//! use redtower::client::Keyspace;
//!
//! fn main() {
//!     // Every key: <prefix>:<namespace>:{<tag>}:..., one Cluster hash tag, user input escaped.
//!     let key = Keyspace::default().namespace("demo").key("user-1");
//!     assert_eq!(key.as_str(), "rt:demo:{user-1}");
//! }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use redtower_client as client;

#[cfg(feature = "ratelimit")]
#[cfg_attr(docsrs, doc(cfg(feature = "ratelimit")))]
pub use redtower_ratelimit as ratelimit;

#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub use redtower_cache as cache;

#[cfg(feature = "session")]
#[cfg_attr(docsrs, doc(cfg(feature = "session")))]
pub use redtower_session as session;

#[cfg(feature = "pubsub")]
#[cfg_attr(docsrs, doc(cfg(feature = "pubsub")))]
pub use redtower_pubsub as pubsub;

#[cfg(feature = "jobs")]
#[cfg_attr(docsrs, doc(cfg(feature = "jobs")))]
pub use redtower_jobs as jobs;

#[cfg(all(test, feature = "cache", feature = "axum"))]
mod tests {
    /// The `axum` feature reaches the cache's purge router through the facade.
    #[test]
    fn the_cache_purge_router_is_reachable() {
        use crate::cache::{
            Cache, MemoryStore,
            purge::{self, PurgeAuth},
        };
        assert!(
            PurgeAuth::bearer("short").is_err(),
            "short tokens are refused"
        );
        let auth = PurgeAuth::bearer("a-long-random-token").unwrap();
        let _router = purge::router::<()>(Cache::new(MemoryStore::new()), auth);
    }
}
