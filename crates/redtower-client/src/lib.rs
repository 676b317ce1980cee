//! The one Redis layer of redtower.
//!
//! Every redtower crate reaches Redis through this crate, built on [`fred`]:
//!
//! * [`RedisConfig`]: from a URL (`redis://`, `rediss://`, `redis-cluster://`,
//!   `redis-sentinel://`), from `REDIS_URL` and a few `REDIS_*` variables, or a builder, with
//!   defaults that fix fred's risky ones (reconnects with jitter, a command timeout, a large
//!   pub/sub buffer, lazy connect).
//! * [`Redis`]: a cheap-`Clone` handle over one auto-pipelined client, with dedicated
//!   connections for blocking commands and subscriptions, [`Redis::scan`] (prefix-scoped, every
//!   Cluster primary) and [`Redis::health`].
//! * [`Keyspace`]: `prefix:namespace:{tag}:part` keys with exactly one Cluster hash tag and
//!   escaped user input.
//! * [`Script`]: Lua compiled in, pipelined `EVALSHA` with transparent `NOSCRIPT` reload.
//! * [`CircuitBreaker`] and [`breaker::Breaker`]: the one circuit breaker of every layer
//!   with a failure policy (opens on failures of a connected store only, probes after a
//!   cool-down or a reconnect).
//! * [`batch::Coalescer`]: concurrent calls made during one round trip leave together as the
//!   next batch (one `MGET` for many `GET`s, one script call for many checks). The `batch`
//!   and `breaker` modules are building blocks for stores; an app needs neither.
//! * [`NearCache`]: a bounded in-process tier of Redis key -> value kept coherent by Redis'
//!   client tracking (RESP3 pushes), flushed whenever the tracked connection is lost or moved;
//!   what it guarantees is in the [`near`] module docs.
//! * [`enum@Error`]: one error type whose [`ErrorKind`] tells timeouts, outages, Cluster and
//!   script errors apart, for the layers' failure policies.
//! * [`TraceContext`]: a bounded W3C trace context (`traceparent`, `tracestate`) that jobs and
//!   events carry through Redis, so work done later joins the trace that asked for it.
//!
//! ```no_run
//! use redtower_client::{Redis, RedisConfig};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), redtower_client::Error> {
//!     // REDIS_URL=redis://127.0.0.1:6379, REDIS_KEY_PREFIX=shop, ...
//!     let redis = Redis::new(RedisConfig::from_env()?)?;
//!     // The app may start while Redis is down; each layer follows its failure policy.
//!     println!("redis is {:?}", redis.health().await.status);
//!     Ok(())
//! }
//! ```
//!
//! # Limits
//!
//! What one handle can hold or wait for, and the defaults (each crate built on this one lists
//! its own in the same form):
//!
//! | limit | default | set with | why |
//! | --- | --- | --- | --- |
//! | command timeout | 2 s | [`RedisConfig::command_timeout`], `REDIS_COMMAND_TIMEOUT_MS` | fred has none: a stalled server would hold every caller |
//! | wait for the first connection | the command timeout, once | [`Redis::first_connection_within`] | a fresh process waits instead of failing; an unreachable server is an outage after one wait |
//! | attempts per command | 3 | [`RedisConfig::max_command_attempts`], `REDIS_MAX_ATTEMPTS` | state-changing scripts are idempotent under re-send or sent with one attempt |
//! | pub/sub messages buffered per subscriber | 4096 | [`RedisConfig::pubsub_buffer`] | a slow reader loses messages (and repairs them from history) instead of growing memory |
//! | unresponsive connection | 10 s | [`RedisConfig::unresponsive_timeout`] | a half-open TCP connection is replaced |
//! | key segment | [`Segment::MAX_LEN`] (128) bytes, longer values hashed | - | user input can neither grow keys nor forge another key or slot |
//! | near-cache entries / bytes / age | 10,000 / 64 MiB / 60 s per tier | [`NearCacheConfig`] | memory is bounded and a lost push is outlived by at most the age |
//! | calls per coalesced batch | set by each store (64 in the layers) | [`batch::Coalescer::new`] | one command carries a bounded amount of work |
//!
//! # Features
//!
//! * `rustls`: TLS (`rediss://`) through rustls with the ring provider. Without it a TLS URL is a
//!   configuration error.
//! * `opentelemetry`: `TraceContext::current` and `TraceContext::set_parent_of`, through
//!   `tracing-opentelemetry` and the W3C `TraceContextPropagator` (opentelemetry 0.33).
//!   Without it the type is still there (stores read and write it), but nothing captures a
//!   context.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod batch;
pub mod breaker;
mod client;
mod config;
mod error;
mod health;
pub mod keyspace;
pub mod near;
mod script;
pub mod trace;

pub use breaker::CircuitBreaker;
pub use client::Redis;
pub use config::RedisConfig;
pub use error::{Error, ErrorKind, Result};
pub use health::{ConnectionState, Health, HealthStatus};
pub use keyspace::{Key, KeyError, KeyPattern, Keyspace, Namespace, Segment};
pub use near::{NearCache, NearCacheConfig, NearCacheStats, Stamp, Ticket};
pub use script::Script;
pub use trace::TraceContext;

pub use fred;
