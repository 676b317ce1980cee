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
//! use redtower_client::{NearCacheConfig, Redis, RedisConfig};
//!
//! let redis = Redis::new(RedisConfig::from_env()?)?;
//! // Optional coherent in-process tier, kept up to date by Redis client tracking.
//! let store = RedisStore::new(redis).near_cache(Some(NearCacheConfig::new("cache")));
//! let cache = Cache::new(store);
//! let layer = ResponseCacheLayer::new(cache, Duration::from_secs(300));
//! # let _ = layer;
//! # Ok(()) }
//! ```
//!
//! Choosing the backend at run time (Redis when configured, memory otherwise) is an
//! `Arc<dyn CacheStore>`, which is a store too:
//!
//! ```
//! use std::sync::Arc;
//! use redtower_cache::{Cache, CacheStore, MemoryStore, RedisStore};
//!
//! # fn run(redis: Option<redtower_client::Redis>) -> Cache {
//! let store: Arc<dyn CacheStore> = match redis {
//!     Some(redis) => Arc::new(RedisStore::new(redis)),
//!     None => Arc::new(MemoryStore::new()),
//! };
//! Cache::new(store)
//! # }
//! # let _ = run(None);
//! ```
//!
//! # The core ([`Cache`])
//!
//! * **One round trip per hit**: one Redis string per entry (per variant) holding a compact,
//!   versioned binary envelope (status, headers, times, body); the body is never copied on
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
//!   [`CacheStats::fail_open`] and the `redtower_cache_fail_open_total` metric); a
//!   [circuit breaker](CacheBuilder::circuit_breaker) skips the store after 5 outages in a row,
//!   for a second or until the Redis client reconnects, so it adds no latency. A freshly
//!   started process is not in an outage: its first requests wait for the first connection
//!   ([`CacheStore::ready`]), so they share fills with the other instances from the start.
//! * **Invalidation** by key ([`Cache::invalidate`], and unsafe requests through the layer) and
//!   by tag in O(1) ([`Cache::invalidate_tag`]: tags hold generations; entries record them).
//!   Responses tag themselves with `Surrogate-Key` / `Cache-Tag`
//!   ([`ResponseCacheLayer::tag_header`]; the field is stripped), and operators or a CMS
//!   webhook purge keys, tags and prefixes over HTTP with the `purge` router (feature `axum`:
//!   `POST /cache/purge`, bearer token), or one path with the `PURGE` method
//!   ([`purge::PurgeMethodLayer`]).
//! * **Purge by prefix** ([`Cache::invalidate_prefix`], opt-in with
//!   [`CacheBuilder::prefix_purge`]): `"/products/"` invalidates every response whose request
//!   path starts with it, `"price:"` every cache-aside key, on every instance at once, in O(1)
//!   (Varnish-style bans, evaluated lazily on lookup; see [`bans`]). Off, lookups do no ban
//!   work; on, a hit reads a few more bytes in the same round trip.
//! * **Write-through and batch reads** for cache-aside users: [`Cache::set`] /
//!   [`Cache::set_tagged`] store a value read back by every instance, [`Cache::get_many`] reads
//!   many keys in one pipelined batch.
//! * Optional **tracked in-process tier** ([`RedisStore::near_cache`]): entries and tag
//!   generations this instance read are kept in process and dropped the moment Redis reports
//!   their key changed (client tracking, RESP3), whoever changed it. Consistency with it on:
//!   this instance's own fills and invalidations are visible to it at once; another
//!   instance's fill, [`Cache::invalidate`] or [`Cache::invalidate_tag`] is visible here once
//!   its invalidation push arrived (after the writer's reply, one push delay); a lost tracking
//!   connection, a reconnect or a Cluster topology change empties the tier until tracking is
//!   back. Without RESP3/`CLIENT TRACKING` it turns itself off with one warning.
//! * Optional in-process **L1** ([`CacheBuilder::l1`]) with a short TTL, keyed by the full
//!   canonical key: an L1 hit computes no digest and no store key, but another instance's
//!   change is seen up to one TTL late. Keep it for servers without client tracking.
//!
//! # The response cache ([`ResponseCacheLayer`])
//!
//! * Keys: method (`GET`; `HEAD` reads the `GET` entry) + scheme + host (normalised; see
//!   [`hosts`](ResponseCacheLayer::hosts)) + path + the declared query parameters
//!   ([`QueryKey`]: none by default, or an allow-list; the others are stripped from the
//!   request) + declared [`key_headers`](ResponseCacheLayer::key_headers) + the response's
//!   `Vary` (`Accept-Encoding` bucketed by the codings accepted). Every component is
//!   length-prefixed and hashed (SHA-256); the full digest is stored in the entry and checked
//!   on read.
//! * Stored: `GET` responses with status 200, 203, 204, 300, 301 or 308 (404, 405, 410, 414 and
//!   501 with [`negative_ttl`](ResponseCacheLayer::negative_ttl)), and any other final status
//!   but 206 and 304 when the response states its freshness; freshness from a targeted field
//!   (`CDN-Cache-Control`, [`targeted_cache_control`](ResponseCacheLayer::targeted_cache_control)),
//!   else `s-maxage`, `max-age`, `Expires`, else the route's TTL (or
//!   [`heuristic_freshness`](ResponseCacheLayer::heuristic_freshness)).
//! * Never stored: `no-store`, `private`, `Set-Cookie` (unless
//!   [`store_set_cookie`](ResponseCacheLayer::store_set_cookie)), `Vary: *`,
//!   `text/event-stream`, bodies over [`max_body`](ResponseCacheLayer::max_body) (those stream
//!   through untouched), `no-cache` without a validator. Qualified `no-cache="h"`/`private="h"`
//!   strip `h` before storing.
//! * Bypassed: requests with a session cookie (unless [`Credentials`] says otherwise),
//!   `Cache-Control: no-store`. Requests with `Authorization` reuse and store only `public`,
//!   `s-maxage` and `must-revalidate` responses. Request `no-cache` / `max-age=0` refetch;
//!   `max-age=N` refuses older entries. One `Range` is served from a fresh full response, or
//!   from a stored 206 that covers it; other `Range` requests go to the handler.
//! * An `ETag` is generated when storing if the handler set none; `If-None-Match` (and
//!   `If-Modified-Since`) are answered with 304 from the cache without calling the handler. A
//!   stale entry with the handler's own `ETag` or `Last-Modified` is revalidated with a
//!   conditional request; a `304` refreshes it without a body.
//! * Responses carry `Age`, `X-Cache: HIT|MISS|STALE|REVALIDATED|BYPASS` and an RFC 9211 `Cache-Status`
//!   with a reason (`SET-COOKIE`, `PRIVATE`, `TOO-LARGE`, `AUTHORIZATION`, ...).
//! * `stale-if-error`: a 5xx or an error from the handler is replaced by the stale entry
//!   within the window.
//!
//! ## RFC 9111, section by section
//!
//! | section | what the layer does |
//! | --- | --- |
//! | 3 Storing | `GET` only; the heuristically cacheable statuses always, any other final status but 206 and 304 with explicit freshness; not `no-store`, `private`, `Vary: *` |
//! | 3.1 Header fields | hop-by-hop fields, `Age`, `Set-Cookie` and qualified `no-cache`/`private` fields are not stored; `Set-Cookie` responses only with [`store_set_cookie`](ResponseCacheLayer::store_set_cookie) (default off for application routes) |
//! | 3.2 Updating | a `304`'s fields replace the stored ones, except `Content-Length` and hop-by-hop fields |
//! | 3.3, 3.4 Incomplete, partial | a 206 answering a `Range` request (with explicit freshness) is stored as the URI's one partial entry and serves every single range it covers; parts are not combined; bodies that fail or exceed [`max_body`](ResponseCacheLayer::max_body) pass through unstored |
//! | 3.5 Authorization | requests with `Authorization` store and reuse only `public`, `s-maxage` and `must-revalidate` responses (or per [`Credentials`]) |
//! | 4 Constructing responses | one `Range` from a fresh full response (206, RFC 9110 14.2); client conditionals answered from the entry (304) |
//! | 4.1 Vary | the first response is stored under the values of the headers it names; the URI's Vary record leads later requests (on any instance) to their variant; `Vary: *` never matches; values compared without list whitespace, `Accept-Language` without case or order, `Accept-Encoding` by the set of codings accepted |
//! | 4.2 Freshness | a targeted field (RFC 9213: the layer's own, then `CDN-Cache-Control`) replaces `Cache-Control` and `Expires`; `s-maxage`, `max-age`, `Expires - Date` (dates read leniently), heuristic from `Last-Modified` as an option, else the route's TTL |
//! | 4.2.3 Age | the origin's `Age` (its first value) counts toward the entry's age and the `Age` sent |
//! | 4.2.4 Serving stale | only within `stale-while-revalidate` / `stale-if-error` (the response's or the route's), never for `must-revalidate`, `proxy-revalidate`, `no-cache`, `s-maxage` without them |
//! | 4.3 Validation | a stale entry with the handler's validators is revalidated with `If-None-Match` / `If-Modified-Since`; `304` refreshes it, anything else replaces it; kept for [`revalidate_window`](ResponseCacheLayer::revalidate_window) past its stale windows |
//! | 4.4 Invalidation | a non-error response to any unsafe method invalidates its URI and same-host `Location` / `Content-Location` ([`invalidate_on_unsafe`](ResponseCacheLayer::invalidate_on_unsafe)) |
//! | 5.2.1 Request directives | `no-store` bypasses, `no-cache` / `max-age=0` / `Pragma: no-cache` refetch, `max-age` bounds the age served |
//! | 5.2.2 Response directives | `no-store` (yields to `must-understand` for a known status), `private`, `no-cache` (stored only to be revalidated), `must-revalidate`, `proxy-revalidate`, `public` (any understood status, heuristic lifetime), `s-maxage`, `max-age`, `stale-while-revalidate`, `stale-if-error` |
//!
//! # Limits
//!
//! Everything a client can make the cache create is bounded. Each limit, its default, and why:
//!
//! | limit | default | set with | why |
//! | --- | --- | --- | --- |
//! | query parameters in the key | none (the query is stripped) | [`ResponseCacheLayer::query`] ([`QueryKey::allow`]) | `?r=<random>` would otherwise create an entry and a handler call per request |
//! | hosts cached per layer | the first 8 seen per process ([`DEFAULT_MAX_HOSTS`](ResponseCacheLayer::DEFAULT_MAX_HOSTS)); others bypass | [`ResponseCacheLayer::hosts`], [`ResponseCacheLayer::max_hosts`] | a random `Host` would otherwise create entries; a list also keeps an early hostile host out |
//! | variants per URI (`Vary`, key headers) | 64 ([`RedisStore::DEFAULT_MAX_VARIANTS`]); a new variant past it is not stored | [`RedisStore::max_variants`], [`MemoryStore::max_variants`] | clients choose header values (`Accept-Language: x-<random>`) |
//! | `Accept-Encoding` buckets | at most 64 sets of the 6 known codings (a few in practice) | — | spellings of one set share a bucket |
//! | stored body | 1 MiB; larger responses stream through, unstored | [`ResponseCacheLayer::max_body`] | one response may not fill the store |
//! | lifetime in the store | 365 days ([`Cache::MAX_TTL`]); longer `max-age`, `Expires`, TTLs are cut | — | header values up to `u64::MAX` saturate instead of overflowing |
//! | bytes in the memory store | 64 MiB, least useful evicted ([`MemoryStore::DEFAULT_MAX_BYTES`]) | [`MemoryStore::with_max_bytes`] | a process-wide bound |
//! | bytes in Redis | Redis' `maxmemory` (see below) | the Redis you give [`RedisStore::new`] | the only bound across instances |
//! | tracked tier | off; when on, 10,000 entries / 64 MiB / 60 s max age by default | [`RedisStore::near_cache`] | a change elsewhere is seen one invalidation push late (at worst the max age, if a push is lost while the connection looks up) |
//! | tags from a response's tag field | 32 per response, 128 bytes each (visible ASCII); others dropped | [`ResponseCacheLayer::tag_header`] (off by default) | a handler's field must not make unbounded tag keys or entries |
//! | purge request (`purge` router) | 100 keys, tags and prefixes, keys and prefixes 1 KiB, tags 128 bytes, 64 KiB body; 400 / 413 beyond | — | one request may not start unbounded work |
//! | prefix bans | 1,000 per store ([`bans::MAX_BANS`]), each kept 365 days; past the bound the oldest is folded into a horizon that bans every older entry (more misses, never a banned entry served); prefixes 1 KiB | — | one list read with each entry must stay small; a purge loop cannot grow it |
//! | L1 entries | off; when on, `max_entries` for a TTL kept between 1 ms and 60 s | [`CacheBuilder::l1`] | an invalidation elsewhere is seen at most one L1 TTL late |
//! | fill lock held / waited for | 5 s / 3 s | [`CacheBuilder::lock_ttl`], [`CacheBuilder::lock_wait`] | a crashed filler never blocks others for long |
//! | store command | 500 ms, then fail open | [`RedisStore::timeout`] | an outage adds little latency |
//! | circuit breaker | opens after 5 outages in a row (of a store that had connected), skips the store for 1 s or until Redis reconnects, then one operation probes it | [`CacheBuilder::circuit_breaker`] | an outage adds no latency; one slow command does not send every route to the origin |
//! | first connection | waited for up to the client's command timeout (2 s by default) | `RedisConfig::command_timeout` | a fresh process is not in an outage |
//!
//! ## A Redis of its own: eviction for the cache only
//!
//! Entries expire on their TTL, but a flood of distinct keys (a route keyed on
//! [`QueryKey::Sorted`], many hosts) can still fill Redis before they do. Rate limits,
//! sessions and jobs need `noeviction` (evicting them loses state); a cache wants the opposite.
//! Give the cache its own Redis, or its own database on a standalone server, bounded and
//! evicting, by handing [`RedisStore::new`] a separate handle:
//!
//! ```no_run
//! # async fn run() -> Result<(), redtower_client::Error> {
//! use redtower_cache::{Cache, RedisStore};
//! use redtower_client::{Redis, RedisConfig};
//!
//! // Server config for that Redis: `maxmemory 256mb` and `maxmemory-policy allkeys-lru`
//! // (or `volatile-lru`: every cache key has a TTL). Falls back to the shared Redis.
//! let url = std::env::var("CACHE_REDIS_URL").or_else(|_| std::env::var("REDIS_URL"));
//! let url = url.unwrap_or_else(|_| "redis://127.0.0.1:6379/1".to_owned());
//! let cache_redis = Redis::new(RedisConfig::from_url(&url)?)?;
//! let cache = Cache::new(RedisStore::new(cache_redis));
//! # let _ = cache;
//! # Ok(()) }
//! ```
//!
//! A database number (`redis://host/1`) shares the server's `maxmemory` and policy, so only a
//! separate server (or a Cluster of its own) gives the cache its own eviction; on one server,
//! `volatile-lru` evicts only keys with a TTL (every cache key has one) but also other
//! features' expiring keys. Without any of this, keep the cache's key space bounded with the
//! defaults above.
//!
//! # Keys in Redis
//!
//! See [`RedisStore`]: `rt:c:{<h>}` entries, `rt:c:{<h>}:lk` fill locks, `rt:c:{<h>}:ix`
//! variant indexes and `rt:c:t:{<tag>}` tag generations, all with TTLs.
//!
//! # Examples
//!
//! In [`examples/`](https://github.com/redtower-rs/redtower/tree/main/crates/redtower-cache/examples), each a complete axum program:
//!
//! * `response_cache.rs`: one slow route behind [`ResponseCacheLayer`], in process or over
//!   Redis (`REDIS_URL`).
//!
//! # Metrics
//!
//! `redtower_cache_requests_total{cache,route,outcome,reason}` (`hit|stale|miss|bypass`, with
//! the bypass reason), `redtower_cache_not_stored_total{cache,route,reason}`,
//! `redtower_cache_coalesced_total{cache}`, `redtower_cache_lock_wait_seconds{cache}` and
//! `redtower_cache_fail_open_total{cache,op}`, through the `metrics` facade. Routes are labelled
//! with [`route_name`](ResponseCacheLayer::route_name), never the raw URI.
//!
//! # Tracing
//!
//! One span per request through [`ResponseCacheLayer`], `redtower.cache` (target
//! `redtower::cache`, DEBUG, so it costs nothing unless asked for), around the lookup, the
//! fill and the inner service. Its one field, recorded when the response is ready, is
//! `outcome` = `hit` \| `miss` \| `stale` \| `bypass` \| `revalidated` (as `X-Cache`), or
//! `none` when the response carries no cache status. No key, URI or header value is ever a
//! field.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bans;
mod body;
mod cache;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod envelope;
#[cfg(not(feature = "testing"))]
mod envelope;
mod error;
mod future;
mod http;
mod key;
mod layer;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod purge;
mod service;
mod store;

pub use bans::Bans;
pub use body::ResponseBody;
pub use cache::{Cache, CacheBuilder, CacheStats, Fetch};
pub use error::{Error, FetchError, Result};
pub use future::ResponseFuture;
pub use http::{Credentials, QueryKey};
pub use layer::ResponseCacheLayer;
/// The circuit breaker settings of [`CacheBuilder::circuit_breaker`] (from `redtower-client`).
pub use redtower_client::CircuitBreaker;
pub use service::ResponseCache;
pub use store::{CacheStore, EntryKey, LockToken, Lookup, memory::MemoryStore, redis::RedisStore};
