#![doc = include_str!("../README.md")]
//!
//! # Tracing
//!
//! Spans, under the target `redtower::pubsub`, with low-cardinality fields only (no channel
//! name: channels may be per user):
//!
//! | span | level | when | fields |
//! |---|---|---|---|
//! | `redtower.pubsub.publish` | INFO | one [`PubSub::publish`] (and `publish_json*`) | `otel.kind = producer`; recorded at the end: `outcome` = `published` \| `refused` (a limit) \| `error`, `otel.status_code = error` on a store error |
//! | `redtower.pubsub.subscribe` | INFO | opening one SSE stream (authorization, subscriptions, the first replay) | recorded at the end: `outcome` = `open` \| `rejected`, `http.response.status_code` when rejected |
//! | `redtower.pubsub.deliver` | DEBUG | one event written to one SSE stream (a zero-length marker) | `otel.kind = consumer`, `path` = `live` \| `replay` |
//!
//! With the `opentelemetry` feature, a publish stores the W3C trace context of its span with
//! the event ([`Event::trace_context`]; see
//! [`TraceContext`](redtower_client::TraceContext): one line of at most 568 bytes), and each
//! delivery span is that span's child in OpenTelemetry, on any instance: an SSE delivery is
//! traced to its publish. On Redis the context is a field `t` of the history entry (after the
//! data `d`) and a `^<context>\n` prefix of the live message; events published without it
//! (older publishers, the feature off) carry none, and a context that does not decode is
//! dropped, never the event. Without the feature nothing is stored.
//!
//! The `opentelemetry` feature (off by default) enables this through
//! `redtower-client/opentelemetry` (opentelemetry 0.33, tracing-opentelemetry 0.34); the app
//! installs the OpenTelemetry layer and exporter.
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
