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
//! * **Tiers per request** ([`QuotaFor`], [`RateLimitLayer::tier`]): plan tiers chosen from a
//!   request extension an authentication layer set; a tier's policies replace the route's.
//! * **Per-subject overrides** ([`Policy::overridable`], [`RedisStore::set_override`]): an
//!   operator changes one subject's limit at run time (an override hash per subject, read by
//!   the check script in the same round trip, never cached), effective on the subject's next
//!   request on every instance. Windows keep their count under the new limit; GCRA keeps its
//!   time debt and refills at the new rate.
//! * **Concurrency limit** ([`ConcurrencyLimitLayer`]): at most N requests in flight per
//!   subject across instances (leases with an expiry, released when the response body ends
//!   or the request is dropped).
//! * **Leased quotas** ([`LeasedStore`], opt-in for the hottest routes): an instance takes a
//!   slice of a subject's quota in one store call and decides locally until it is used or its
//!   lease ends, returning what it did not use. Slices are counted when taken, so the
//!   instances together never admit more than the limit (within the bound
//!   `limit + instances × slice`); the cost is up to a slice per instance held unused (the
//!   next slice is taken ahead, once half of the current one is used, and tops it up to one).
//! * **Peek and reset** ([`RateLimitLayer::handle`], [`RateLimitStore::peek`],
//!   [`RateLimitStore::reset`]): what a subject has left, without consuming; a fresh allowance.
//! * **Counting by outcome** ([`RateLimitLayer::refund_when`]): see below.
//! * **Allow and deny lists** ([`IpLists`], [`RateLimitLayer::ip_lists`]): CIDR lists,
//!   reloadable at run time; allowed addresses skip limiting, denied ones get 403.
//!
//! None of these costs anything on a layer that does not use it: the request path only
//! tests an `Option` for each.
//!
//! # Counting by outcome
//!
//! With [`RateLimitLayer::refund_when`], an admitted request whose response qualifies (by
//! status: [`RefundWhen::Successful`] is express-rate-limit's `skipSuccessfulRequests`,
//! [`RefundWhen::Failed`] its `skipFailedRequests`) gives its units back with one more store
//! call ([`RateLimitStore::refund`], one script on Redis), awaited (bounded by the layer's
//! timeout) before the response leaves: the client's next request already sees it. A login
//! limit that counts failed attempts only:
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{Router, body::Body, extract::ConnectInfo, routing::get};
//! use http::{Request, StatusCode, Uri};
//! use redtower_ratelimit::{MemoryStore, Quota, RateLimitLayer, RefundWhen, nonzero};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let limit = RateLimitLayer::new(MemoryStore::new(), Quota::per_hour(nonzero!(1)).burst(nonzero!(2)))
//!     .refund_when(RefundWhen::Successful);
//! let login = |uri: Uri| async move {
//!     if uri.query() == Some("right") { StatusCode::OK } else { StatusCode::UNAUTHORIZED }
//! };
//! let app = Router::new().route("/login", get(login)).layer(limit);
//! let send = |q: &'static str| {
//!     let peer: SocketAddr = "203.0.113.7:50000".parse().unwrap();
//!     let req = Request::get(format!("/login?{q}")).extension(ConnectInfo(peer)).body(Body::empty()).unwrap();
//!     let app = app.clone();
//!     async move { app.oneshot(req).await.unwrap().status() }
//! };
//! for _ in 0..5 {
//!     assert_eq!(send("right").await, StatusCode::OK); // successes are given back
//! }
//! assert_eq!(send("wrong").await, StatusCode::UNAUTHORIZED);
//! assert_eq!(send("wrong").await, StatusCode::UNAUTHORIZED);
//! assert_eq!(send("right").await, StatusCode::TOO_MANY_REQUESTS); // two failures: locked
//! # }
//! ```
//!
//! What a refund gives back, per algorithm (the same on every store; atomic in one script on
//! Redis, so exact across instances):
//!
//! | Algorithm | Refund of `cost` units of a request checked at `at` |
//! | --- | --- |
//! | GCRA | the theoretical arrival time moves back by `cost` emission intervals, never before now: never more than a full bucket, and only what the request still holds (a request whose units have already come back gives nothing) |
//! | Fixed window | the count of the request's window drops by `cost`, never below 0, only while that window is current (after it, the request no longer counts anyway) |
//! | Sliding window | the count of the request's window drops by `cost`, never below 0, while that window is the current one or the previous one (where it still weighs) |
//!
//! A denied request is never refunded (it consumed nothing), nor is a policy that did not
//! consume (a shadow policy that said no). A request decided by the
//! [local fallback](FailurePolicy::LocalFallback) is not refunded, nor one whose response
//! never came (the future was dropped): it counts. The [denied cache](RateLimitLayer::denied_cache)
//! keeps answering a subject denied before a refund until its retry time (set it to 0 for a
//! route where that matters). A refund is one attempt, never re-sent (a re-sent refund would
//! give back twice); a failed refund is logged (WARN) and the request counts.
//! * **Observability**: `tracing` (target `redtower::ratelimit`) and `metrics` counters
//!   `redtower_ratelimit_{allowed,limited,shadow_limited,fail_open,fail_closed,fallback,local_cache_hit}_total`,
//!   labelled by `policy` (never by subject), and unlabelled `redtower_ratelimit_refunded_total`
//!   and `redtower_ratelimit_denied_ip_total`.
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
//! # Tracing
//!
//! One span per request through the layer, `redtower.ratelimit` (target `redtower::ratelimit`,
//! DEBUG, so it costs nothing unless asked for), around the decision and the inner service.
//! Its one field, recorded once the decision is made, is `outcome` = `allowed` \| `limited`
//! \| `bypass` (no key and [`MissingKey::Allow`], no policy, or an address on the allow-list
//! of [`IpLists`]) \| `denied` (an address on the deny-list) \| `rejected` (no key and
//! [`MissingKey::Reject`], or a cost above every allowance) \| `fail_open` \| `fail_closed`
//! (the [failure policy](FailurePolicy) answered; the local fallback records its decision).
//! No subject, key or address is ever a field.
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

mod concurrency;
mod error;
mod extra;
mod failure;
mod key;
mod layer;
mod leased;
mod model;
mod quota;
mod response;
mod service;
mod store;

pub use concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer, LeaseBody};
pub use error::{ConfigError, Error, Result};
pub use extra::{IpLists, QuotaFor, RateLimitHandle, RefundWhen};
pub use failure::{FailurePolicy, MissingKey};
pub use key::{
    BearerToken, ClientIp, ForwardedHeader, FromExtension, Global, Header, KeyExtractor,
    KeyExtractorExt, KeyRejection, Or, PeerIp, Subject,
};
pub use layer::{LimitedResponse, RateLimitLayer};
pub use leased::LeasedStore;
pub use model::Outcome;
pub use quota::{Algorithm, Policy, Quota};
/// The circuit breaker settings of [`RateLimitLayer::circuit_breaker`] (the one breaker every
/// redtower layer uses).
pub use redtower_client::CircuitBreaker;
pub use response::{Headers, ResponseBody, too_many_requests};
pub use service::{RateLimit, ResponseFuture};
#[cfg(feature = "testing")]
pub use store::ManualClock;
pub use store::{Acquired, Decision, MemoryStore, PolicyDecision, RateLimitStore, RedisStore};
