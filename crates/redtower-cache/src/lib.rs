//! Redis-backed caching for tower and axum: a response cache [`ResponseCacheLayer`] and a
//! typed cache-aside helper ([`Cache::get_or_fetch`]), sharing one core.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use axum::{Router, body::Body, routing::get};
//! use http::Request;
//! use redtower_cache::{Cache, MemoryStore, ResponseCacheLayer};
//! use tower::ServiceExt;
//!
//! let cache = Cache::new(MemoryStore::new()); // RedisStore::new(redis) in production
//! let app = Router::new().route(
//!     "/products/featured",
//!     get(|| async { r#"["tea","cups"]"# }).layer(
//!         ResponseCacheLayer::new(cache.clone(), Duration::from_secs(300))
//!             .stale_while_revalidate(Duration::from_secs(60)),
//!     ),
//! );
//!
//! let get = || Request::get("/products/featured").body(Body::empty()).unwrap();
//! let first = app.clone().oneshot(get()).await.unwrap();
//! assert_eq!(first.headers()["x-cache"], "MISS");
//! let second = app.clone().oneshot(get()).await.unwrap();
//! assert_eq!(second.headers()["x-cache"], "HIT");
//! assert_eq!(second.headers()["age"], "0");
//!
//! // Cache-aside over the same core: any serde type, JSON in the store.
//! let price: u32 = cache
//!     .get_or_fetch("price:tea", Duration::from_secs(60), || async { Ok::<_, String>(7) })
//!     .await
//!     .unwrap();
//! assert_eq!(price, 7);
//! # }
//! ```
//!
//! With Redis, shared by every instance (the app starts even while Redis is down):
//!
//! ```no_run
//! # async fn run() -> Result<(), redtower_client::Error> {
//! use std::time::Duration;
//! use redtower_cache::{Cache, RedisStore, ResponseCacheLayer};
//! use redtower_client::{Redis, RedisConfig};
//!
//! let redis = Redis::new(RedisConfig::from_env()?)?;
//! let cache = Cache::builder(RedisStore::new(redis))
//!     .l1(10_000, Duration::from_secs(1)) // optional in-process tier
//!     .build();
//! let layer = ResponseCacheLayer::new(cache, Duration::from_secs(300));
//! # let _ = layer;
//! # Ok(()) }
//! ```
//!
//! # The core ([`Cache`])
//!
//! * **One round trip per hit**: one Redis string per entry (per variant) holding a compact,
//!   versioned binary [`envelope`] (status, headers, times, body); the body is never copied on
//!   decode. A value that cannot be decoded is a miss, and the fill overwrites it. Under load,
//!   the hits that arrive while a read is in flight leave together as one `MGET`
//!   ([`RedisStore::coalesce_reads`]): still one round trip each, a fraction of a command.
//! * **No stampede**: one fetch per key at a time per instance (single-flight), and across
//!   instances through a fill lock (`SET NX PX` with a fencing token, released and filled by Lua
//!   compare-and-delete). Other instances poll for the fill and fetch themselves after
//!   [`lock_wait`](CacheBuilder::lock_wait).
//! * **Stale-while-revalidate**: a stale entry is served at once and refreshed by one background
//!   task, never on the requester's path. Redis TTLs cover the stale windows.
//! * **Fail-open**: when the store fails, requests go to the origin (counted in
//!   [`CacheStats::fail_open`] and the `redtower_cache_fail_open_total` metric); a circuit
//!   breaker skips the store for a second after an outage so it adds no latency.
//! * **Invalidation** by key ([`Cache::invalidate`], and unsafe requests through the layer) and
//!   by tag in O(1) ([`Cache::invalidate_tag`]: tags hold generations; entries record them).
//! * Optional in-process **L1** ([`CacheBuilder::l1`]) with a short TTL, keyed by the full
//!   canonical key: an L1 hit computes no digest and no store key.
//!
//! # The response cache ([`ResponseCacheLayer`])
//!
//! * Keys: method (`GET`; `HEAD` reads the `GET` entry) + scheme + host + path + query
//!   ([`QueryKey`]: sorted, or an allow-list that also strips the others from the request) +
//!   declared [`key_headers`](ResponseCacheLayer::key_headers) + the response's `Vary`. Every
//!   component is length-prefixed and hashed (SHA-256); the full digest is stored in the entry
//!   and checked on read.
//! * Stored: `GET` responses with status 200, 203, 204, 300, 301 or 308 (404, 405, 410, 414 and
//!   501 with [`negative_ttl`](ResponseCacheLayer::negative_ttl)), freshness from `s-maxage`,
//!   `max-age`, `Expires` or the route's TTL.
//! * Never stored: `no-store`, `private`, `no-cache`, `Set-Cookie`, `Vary: *`,
//!   `text/event-stream`, bodies over [`max_body`](ResponseCacheLayer::max_body) (those stream
//!   through untouched). Qualified `no-cache="h"`/`private="h"` strip `h` before storing.
//! * Bypassed: requests with `Authorization` or a session cookie (unless
//!   [`Credentials`] says otherwise), `Cache-Control: no-store`, `Range`. Request `no-cache` /
//!   `max-age=0` refetch; `max-age=N` refuses older entries.
//! * An `ETag` is generated when storing if the handler set none; `If-None-Match` (and
//!   `If-Modified-Since`) are answered with 304 from the cache without calling the handler.
//! * Responses carry `Age`, `X-Cache: HIT|MISS|STALE|BYPASS` and an RFC 9211 `Cache-Status`
//!   with a reason (`SET-COOKIE`, `PRIVATE`, `TOO-LARGE`, `AUTHORIZATION`, ...).
//! * `stale-if-error`: a 5xx or an error from the handler is replaced by the stale entry
//!   within the window.
//!
//! # Keys in Redis
//!
//! See [`RedisStore`]: `rt:c:{<h>}` entries, `rt:c:{<h>}:lk` fill locks, `rt:c:{<h>}:ix`
//! variant indexes and `rt:c:t:{<tag>}` tag generations, all with TTLs.
//!
//! # Metrics
//!
//! `redtower_cache_requests_total{cache,route,outcome,reason}` (`hit|stale|miss|bypass`, with
//! the bypass reason), `redtower_cache_not_stored_total{cache,route,reason}`,
//! `redtower_cache_coalesced_total{cache}`, `redtower_cache_lock_wait_seconds{cache}` and
//! `redtower_cache_fail_open_total{cache,op}`, through the `metrics` facade. Routes are labelled
//! with [`route_name`](ResponseCacheLayer::route_name), never the raw URI.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod aside;
mod cache;
pub mod envelope;
mod error;
mod http;
mod key;
mod store;

pub use aside::Fetch;
pub use cache::{Cache, CacheBuilder, CacheStats};
pub use error::{Error, FetchError, Result};
pub use http::{
    Credentials, QueryKey, ResponseBody, ResponseCache, ResponseCacheLayer, ResponseFuture,
};
pub use store::{CacheStore, EntryKey, LockToken, memory::MemoryStore, redis::RedisStore};
