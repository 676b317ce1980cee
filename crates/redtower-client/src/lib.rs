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
//! * [`Script`]: Lua compiled in, `EVALSHA` with transparent `NOSCRIPT` reload.
//! * [`Coalescer`]: concurrent calls made during one round trip leave together as the next
//!   batch (one `MGET` for many `GET`s, one script call for many checks).
//! * [`enum@Error`]: one error type whose [`ErrorKind`] tells timeouts, outages, Cluster and
//!   script errors apart, for the layers' failure policies.
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
//! # Features
//!
//! * `rustls`: TLS (`rediss://`) through rustls with the ring provider. Without it a TLS URL is a
//!   configuration error.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod coalesce;
mod config;
mod error;
mod health;
pub mod keyspace;
mod script;

pub use client::Redis;
pub use coalesce::{Coalescer, Queued, Uncoalesced, per_slot};
pub use config::RedisConfig;
pub use error::{Error, ErrorKind, Result};
pub use health::{ConnectionState, Health, HealthStatus};
pub use keyspace::{Key, KeyError, KeyPattern, Keyspace, Namespace, Segment};
pub use script::Script;

pub use fred;
