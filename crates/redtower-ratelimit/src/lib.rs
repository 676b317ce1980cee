//! Rate limiting for tower and axum, with exact limits shared by every instance through Redis.
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{Router, body::Body, extract::ConnectInfo, routing::get};
//! use http::{Request, StatusCode};
//! use redtower_ratelimit::{MemoryStore, Quota, RateLimitLayer, nonzero};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let limit = RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(nonzero!(2)));
//! let app = Router::new().route("/", get(|| async { "hi" })).layer(limit);
//!
//! let request = || {
//!     let peer: SocketAddr = "203.0.113.7:50000".parse().unwrap();
//!     Request::get("/").extension(ConnectInfo(peer)).body(Body::empty()).unwrap()
//! };
//! assert_eq!(app.clone().oneshot(request()).await.unwrap().status(), StatusCode::OK);
//! let second = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(second.headers()["ratelimit"], "\"default\";r=0;t=60");
//! let third = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(third.headers()["retry-after"], "30"); // one request every 30 s
//! # }
//! ```
//!
//! In an application, serve with `into_make_service_with_connect_info::<SocketAddr>()` so
//! [`PeerIp`] (the default key) sees the client address. With Redis, every instance shares the
//! counters:
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::{get, post}};
//! use redtower_client::{Redis, RedisConfig};
//! use redtower_ratelimit::{
//!     ClientIp, FailurePolicy, Policy, Quota, RateLimitLayer, RedisStore, nonzero,
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = Redis::new(RedisConfig::from_env()?)?;
//! let store = RedisStore::new(redis);
//! let api = RateLimitLayer::new(
//!     store.clone(),
//!     Policy::new("burst", Quota::per_second(nonzero!(10)).burst(nonzero!(20))),
//! )
//! .policy(Policy::new("daily", Quota::per_day(nonzero!(10_000)).fixed_window()))
//! .key(ClientIp::trusted_proxies(["10.0.0.0/8".parse()?]))
//! .legacy_headers(true)
//! .build()?;
//! let login = RateLimitLayer::new(store, Policy::new("login", Quota::per_minute(nonzero!(5))))
//!     .on_store_error(FailurePolicy::FailClosed)
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/api/items", get(|| async { "items" }))
//!     .layer(api)
//!     .route("/login", post(|| async { "ok" }).layer(login));
//! # let _ = (app, Duration::ZERO);
//! # Ok(()) }
//! ```
//!
//! # What it does
//!
//! * **Algorithms** ([`Algorithm`]): GCRA (default; a token bucket with `burst`),
//!   sliding-window counter, and calendar-aligned fixed window. Integer math, one key per
//!   policy and subject, denied requests never counted, a TTL on every key.
//! * **Several policies per request**, checked in one atomic step and one Redis round trip
//!   ([`RedisStore`]): if one denies, none is consumed. A subject's keys share a hash tag
//!   (`rt:rl:{<subject>}:<policy>`), so this works on Redis Cluster. Under load, the checks that
//!   arrive while one is in flight leave together as one script call that evaluates them in
//!   order ([`RedisStore::coalesce`]), so Redis runs one script for many requests.
//! * **Keys** ([`KeyExtractor`]): [`PeerIp`] (default), [`ClientIp::trusted_proxies`] (reads
//!   `X-Forwarded-For`/`Forwarded` right to left, only from trusted peers), IPv6 grouped by
//!   /64, [`Header`] and [`BearerToken`] (hashed), [`FromExtension`], [`Global`], closures;
//!   `None` skips the limit.
//! * **Per route**: put a layer on a route (`route_layer`, `MethodRouter::layer`), or one
//!   layer with [`RateLimitLayer::route`] choosing policies by axum `MatchedPath`.
//! * **Responses**: IETF draft `RateLimit-Policy` / `RateLimit` fields (legacy
//!   `X-RateLimit-*` optional), `Retry-After` rounded up so a retry at that time succeeds, and a
//!   429 `application/problem+json` body ([`too_many_requests`], replaceable). Handlers read
//!   the [`Decision`] from the request extensions.
//! * **Failure policy** ([`FailurePolicy`]): fail open (default), fail closed (503), or a
//!   local fallback limiter; a per-call timeout (100 ms) and a [`CircuitBreaker`] (the one of
//!   `redtower-client`: one WARN when it opens, one INFO when the store is back). Subjects
//!   already denied are answered from a local cache until their retry time, with no Redis
//!   call.
//! * **Choosing the store at run time**: [`RateLimitLayer::new`] takes any [`RateLimitStore`],
//!   an `Arc<dyn RateLimitStore>` included, and keeps it as one; a concrete store and a boxed
//!   one take the same path.
//! * **Shadow mode** per policy ([`Policy::shadow`]) or per layer: evaluate and record, never
//!   reject.
//! * **Observability**: `tracing` (target `redtower::ratelimit`) and `metrics` counters
//!   `redtower_ratelimit_{allowed,limited,shadow_limited,fail_open,fail_closed,fallback,local_cache_hit}_total`,
//!   labelled by `policy` (never by subject).
//!
//! # Limits
//!
//! Everything a client can make this crate hold is bounded. Each limit, its default, and why:
//!
//! | What | Default | Set with | Why |
//! | --- | --- | --- | --- |
//! | Subjects held by a [`MemoryStore`] | 100,000 (rounded up to a multiple of 32); at most about 35 MB (about 330 bytes a subject, measured) | [`MemoryStore::max_subjects`] | Clients choose their subjects (a routed IPv6 /48 is 65,536 /64 buckets). When full, the subjects whose counters expire soonest (closest to a full allowance) make room, so a flood of new subjects does not reset a limited one; work per request stays constant on average. |
//! | Subjects held by the [local fallback](FailurePolicy::LocalFallback), per layer | 100,000 | [`RateLimitLayer::fallback_max_subjects`] | The same, during a Redis outage. |
//! | Denied subjects answered locally | 10,000, each until its retry time | [`RateLimitLayer::denied_cache`] | A flood of denied subjects. Bounded cache (moka, TinyLFU): a subject that keeps sending stays cached, one-off subjects do not push it out; no lock shared by every request. |
//! | Redis keys | one per policy and subject, each with a TTL: until its state stops mattering (GCRA: until the bucket is full again; windows: at most two periods) | the quotas | A flood of distinct subjects costs Redis memory in proportion to its rate times that TTL, never more (about 340 bytes a subject with two policies, measured). Use `noeviction` (or a dedicated Redis): an evicted counter is a reset limit. |
//! | Wait for the store, per request | 100 ms | [`RateLimitLayer::timeout`] | A slow Redis must not slow every request; the [failure policy](FailurePolicy) answers instead. |
//! | Wait for the first connection of a fresh process | the client's command timeout (2 s by default), then one script load within the store's command timeout (1 s), once | `RedisConfig::command_timeout`, [`RedisStore::command_timeout`] | A process that has not connected yet is not in an outage: its first requests wait for the connection (before the 100 ms above starts), then are decided by Redis. Once such a wait has run out, later requests fail at once until Redis is reached. |
//! | Redis command timeout of a check | 1 s | [`RedisStore::command_timeout`] | A bound below the layer's own. |
//! | Circuit breaker | open after 5 consecutive failures, for 1 s (a reconnect ends it early) | [`RateLimitLayer::circuit_breaker`] | Stop calling a Redis that is down. Only outages (timeouts, lost connections) of a store that has connected before count: never the first connection, never a script error. |
//! | Requests per script call | 64 (one call per Cluster slot) | [`RedisStore::coalesce`] (on/off) | Coalescing under load, with bounded script run time. |
//! | Forwarding entries walked | 16 | [`ClientIp::max_hops`] | A long `X-Forwarded-For` costs bounded work; entries are read as bytes, from the right, without copying the header. |
//! | Quota size | periods up to 100 years; GCRA and sliding-window values below 2^53 | [`Policy::validate`] (by [`RateLimitLayer::build`]) | Exact integer math in Lua. Values past these (a store called directly with an unvalidated policy, a clock at the end of time, a corrupt counter in Redis) saturate or are rejected as errors: never a panic. |
//! | Policy names | 1 to 128 characters of `[A-Za-z0-9-_.@+=,/!~]` | — | They are key segments and header tokens. |
//!
//! # Missing identities
//!
//! When the key extractor finds no identity (no `ConnectInfo`, no API key header), the layer
//! answers the extractor's status (500 for a missing `ConnectInfo` or extension, 401 for
//! missing credentials) with a problem body, so clients cannot dodge a limit by omitting a
//! header. [`MissingKey::Allow`] lets such requests through instead; [`KeyExtractorExt::or`]
//! falls back to another key.
//!
//! # Examples
//!
//! In [`examples/`](https://github.com/redtower-rs/redtower/tree/main/crates/redtower-ratelimit/examples), each a complete axum program:
//!
//! * `memory.rs`: one route limited per client IP with the in-process [`MemoryStore`];
//! * `redis.rs`: the same with [`RedisStore`] (`REDIS_URL`), the limit shared by every
//!   instance.
//!
//! # Features
//!
//! * `testing`: test helpers, never needed in production: `ManualClock`, and the `clock`
//!   setters of [`MemoryStore`] and [`RedisStore`] that read time from it instead of the Tokio
//!   clock or Redis `TIME` (exact numbers at window boundaries, differential tests). This
//!   crate's own tests enable it.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod failure;
mod key;
mod layer;
mod model;
mod quota;
mod response;
mod service;
mod store;

pub use error::{ConfigError, Error, Result};
pub use failure::{FailurePolicy, MissingKey};
pub use key::{
    BearerToken, ClientIp, ForwardedHeader, FromExtension, Global, Header, KeyExtractor,
    KeyExtractorExt, KeyRejection, Or, PeerIp, Subject,
};
pub use layer::{LimitedResponse, RateLimitLayer};
pub use model::Outcome;
pub use quota::{Algorithm, Policy, Quota};
/// The circuit breaker settings of [`RateLimitLayer::circuit_breaker`] (the one breaker every
/// redtower layer uses).
pub use redtower_client::CircuitBreaker;
pub use response::{Headers, ResponseBody, too_many_requests};
pub use service::{RateLimit, ResponseFuture};
#[cfg(feature = "testing")]
pub use store::ManualClock;
pub use store::{Decision, MemoryStore, PolicyDecision, RateLimitStore, RedisStore};
