#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without a backend, the internals backends use are unused (custom stores still work).
#![cfg_attr(not(any(feature = "redis", feature = "memory")), allow(dead_code))]

mod auth;
mod channel;
mod error;
mod event;
mod pubsub;
mod sse;
mod store;

pub use auth::{Access, AllowAll, ChannelAuthorizer, ServerOwned};
pub use channel::{Channel, ChannelError};
pub use error::{Error, Result};
pub use event::{Event, EventId, InvalidEventId, InvalidPublishToken, PublishToken};
pub use pubsub::PubSub;
pub use sse::{CLIENT_JS, OnOpen, SseEndpoint, SseRejection, StreamOptions};
#[cfg(feature = "memory")]
pub use store::memory::MemoryStore;
#[cfg(all(feature = "redis", feature = "testing"))]
pub use store::redis::HubStats;
#[cfg(feature = "redis")]
pub use store::redis::{RedisStore, RedisStoreBuilder};
pub use store::{PubSubStore, Received, Replay, ReplayLimit, Subscription};
pub use tokio_util::sync::CancellationToken;
