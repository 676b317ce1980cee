//! [`RedisStore`]: history in a capped Redis Stream, live events through one Redis
//! subscription per channel per process (the hub), fanned out with `tokio::sync::broadcast`.
//!
//! `hub` holds the subscriptions, `subscriber` the subscriber connection, `channel_task` the
//! per-channel task that orders and repairs live events, and `history` reads the history.

use std::{
    fmt,
    sync::{Arc, LazyLock},
    time::Duration,
};

use fred::types::Value;
use redtower_client::{Redis, Script, TraceContext};

use super::{PubSubStore, Replay, ReplayLimit, Subscription};
use crate::{Channel, EventId, PublishToken, Result};

mod channel_task;
mod history;
mod hub;
mod subscriber;

use hub::Hub;
#[cfg(feature = "testing")]
pub use hub::HubStats;

static PUBLISH: LazyLock<Script> =
    LazyLock::new(|| Script::new("pubsub_publish", include_str!("../lua/publish.lua")));
static HISTORY: LazyLock<Script> =
    LazyLock::new(|| Script::new("pubsub_history", include_str!("../lua/history.lua")));

const TARGET: &str = "redtower::pubsub";

/// The Redis backend: many app instances over one Redis (standalone, Sentinel or Cluster).
///
/// * **Publish** is one Lua script: it appends the event to the channel's history, a Redis
///   Stream capped with `MAXLEN ~` [`history_len`](RedisStoreBuilder::history_len) and
///   expiring [`history_ttl`](RedisStoreBuilder::history_ttl) after the last publish, bumps the
///   offset, and `PUBLISH`es (`SPUBLISH` on a Cluster) `<epoch>:<offset>:<data>`. Keys:
///   `<prefix>:ps:{<channel>}` is the pub/sub channel, `<prefix>:ps:{<channel>}:h` the stream
///   and `<prefix>:ps:{<channel>}:m` the epoch and offset, all in one Cluster slot.
/// * **The hub** (one per `RedisStore`, build one per process and clone it): one Redis
///   subscription per channel however many local subscribers, on a dedicated subscriber
///   connection made on the first subscription; subscribed on the first local subscriber,
///   unsubscribed [`linger`](RedisStoreBuilder::linger) after the last one left. After every
///   reconnect it subscribes again and replays from the history what was published meanwhile;
///   when fred's message buffer overflows it repairs the gap from the history too. Events
///   reach local subscribers in offset order, without gaps or duplicates; when the history
///   cannot cover a gap, subscribers are told to resync.
///
/// Cloning is cheap; clones share the hub.
///
/// ```no_run
/// use redtower_client::{Redis, RedisConfig};
/// use redtower_pubsub::{PubSub, RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::new(RedisConfig::from_env()?)?;
/// let store = RedisStore::builder(redis)
///     .history_len(1000)
///     .history_ttl(std::time::Duration::from_secs(3600))
///     .build();
/// let pubsub = PubSub::new(store);
/// let id = pubsub.publish("news", &serde_json::json!({"title": "hello"})).await?;
/// println!("published {id}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    hub: Arc<Hub>,
}

/// Builds a [`RedisStore`]; see [`RedisStore::builder`].
#[derive(Debug)]
#[must_use]
pub struct RedisStoreBuilder {
    redis: Redis,
    settings: Settings,
}

/// The settings of a [`RedisStore`].
#[derive(Debug, Clone)]
struct Settings {
    history_len: u64,
    history_bytes: u64,
    history_ttl: Duration,
    capacity: usize,
    linger: Duration,
    sharded: bool,
    max_payload: usize,
    max_channels: usize,
    dedup_window: Duration,
}

impl RedisStoreBuilder {
    /// How many events of each channel the history keeps (trimmed exactly, oldest first, on
    /// every publish). Defaults to 1000.
    pub fn history_len(mut self, n: u64) -> Self {
        self.settings.history_len = n.max(1);
        self
    }

    /// How many bytes of event data each channel's history keeps, summed (trimmed exactly,
    /// oldest first, on every publish; the newest event always stays). Defaults to 1 MiB.
    pub fn history_bytes(mut self, bytes: u64) -> Self {
        self.settings.history_bytes = bytes.max(1);
        self
    }

    /// The largest event data a publish accepts, in bytes
    /// ([`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge) beyond). Defaults to
    /// 64 KiB.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.settings.max_payload = bytes.max(1);
        self
    }

    /// The most channels this process holds a Redis subscription for (lingering ones
    /// included; idle lingering ones are released first when the limit is reached). A
    /// subscription to a new channel beyond it fails with
    /// [`Error::TooManyChannels`](crate::Error::TooManyChannels) (the SSE endpoint answers
    /// `503` with `Retry-After`). Defaults to 10,000.
    pub fn max_channels(mut self, n: usize) -> Self {
        self.settings.max_channels = n.max(1);
        self
    }

    /// How long a publish's [`PublishToken`] is remembered at least (at most about twice
    /// this), so that a re-sent or retried publish with it returns the first event's id. Keep
    /// it above the command timeout times the command attempts. Each token costs one field
    /// of a per-channel hash (`<prefix>:ps:{<channel>}:t`, then `:u`) for that long. Defaults
    /// to 1 minute.
    pub fn publish_dedup_window(mut self, window: Duration) -> Self {
        self.settings.dedup_window = window.max(Duration::from_millis(1));
        self
    }

    /// How long a channel's history lives after its last publish. Defaults to 1 hour.
    pub fn history_ttl(mut self, ttl: Duration) -> Self {
        self.settings.history_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// How many live events a local subscriber may fall behind before it lags (and catches up
    /// from the history). Defaults to 256.
    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.settings.capacity = n.max(1);
        self
    }

    /// How long the hub keeps a channel's Redis subscription after its last local subscriber
    /// left, so that a quick reconnect does not unsubscribe and subscribe again. Defaults to 5
    /// seconds.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.settings.linger = linger;
        self
    }

    /// Whether to use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7). Defaults to `true`
    /// on a Cluster (classic `PUBLISH` is broadcast to every node there) and `false` otherwise.
    pub fn sharded(mut self, sharded: bool) -> Self {
        self.settings.sharded = sharded;
        self
    }

    /// Builds the store. Its hub makes the subscriber connection (and starts the tasks that
    /// read it) on the first subscription, so a store that only publishes holds none.
    pub fn build(self) -> RedisStore {
        RedisStore {
            hub: Arc::new(Hub::new(self.redis, self.settings)),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.hub.ns)
            .field("settings", &self.hub.settings)
            .field("channels", &self.active_channels())
            .finish()
    }
}

impl RedisStore {
    /// A store with the default settings (see [`RedisStoreBuilder`]).
    pub fn new(redis: Redis) -> Self {
        Self::builder(redis).build()
    }

    /// A builder over `redis`.
    pub fn builder(redis: Redis) -> RedisStoreBuilder {
        let sharded = redis.is_cluster();
        RedisStoreBuilder {
            redis,
            settings: Settings {
                history_len: 1000,
                history_bytes: 1024 * 1024,
                history_ttl: Duration::from_secs(3600),
                capacity: 256,
                linger: Duration::from_secs(5),
                sharded,
                max_payload: 64 * 1024,
                max_channels: 10_000,
                dedup_window: Duration::from_secs(60),
            },
        }
    }

    /// Whether this store uses sharded pub/sub.
    pub fn is_sharded(&self) -> bool {
        self.hub.settings.sharded
    }

    /// The Redis pub/sub channel that carries `channel`'s events (`<prefix>:ps:{<channel>}`),
    /// for `PUBSUB NUMSUB` / `SHARDNUMSUB`.
    #[cfg(feature = "testing")]
    pub fn redis_channel(&self, channel: &Channel) -> redtower_client::Key {
        self.hub.ns.key(channel.as_str())
    }

    /// The Redis Stream holding `channel`'s history (`<prefix>:ps:{<channel>}:h`).
    #[cfg(feature = "testing")]
    pub fn history_key(&self, channel: &Channel) -> redtower_client::Key {
        self.hub.ns.key(channel.as_str()).push("h")
    }

    /// The hash holding `channel`'s epoch and last offset (`<prefix>:ps:{<channel>}:m`).
    #[cfg(feature = "testing")]
    pub fn meta_key(&self, channel: &Channel) -> redtower_client::Key {
        self.hub.ns.key(channel.as_str()).push("m")
    }

    /// Counters of the hub's repairs.
    #[cfg(feature = "testing")]
    pub fn stats(&self) -> HubStats {
        self.hub.stats()
    }
}

#[async_trait::async_trait]
impl PubSubStore for RedisStore {
    async fn publish(
        &self,
        channel: &Channel,
        data: Arc<str>,
        token: &PublishToken,
    ) -> Result<EventId> {
        self.publish_traced(channel, data, token, None).await
    }

    async fn publish_traced(
        &self,
        channel: &Channel,
        data: Arc<str>,
        token: &PublishToken,
        trace: Option<&TraceContext>,
    ) -> Result<EventId> {
        let hub = &self.hub;
        if data.len() > hub.settings.max_payload {
            return Err(crate::Error::PayloadTooLarge {
                len: data.len(),
                max: hub.settings.max_payload,
            });
        }
        // A fresh process waits for its first connection rather than failing.
        hub.redis.first_connection().await?;
        let tag = hub.ns.key(channel.as_str());
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let reply: Value = PUBLISH
            .run(
                &hub.redis,
                vec![
                    tag.clone().push("m"),
                    tag.clone().push("h"),
                    tag.clone().push("t"),
                    tag.clone().push("u"),
                ],
                vec![
                    EventId::random_epoch(),
                    data.to_string(),
                    hub.settings.history_len.to_string(),
                    millis(hub.settings.history_ttl).to_string(),
                    tag.into_string(),
                    if hub.settings.sharded { "1" } else { "0" }.to_owned(),
                    millis(hub.settings.dedup_window).to_string(),
                    hub.settings.history_bytes.to_string(),
                    token.as_str().to_owned(),
                    trace.map(TraceContext::encode).unwrap_or_default(),
                ],
            )
            .await?;
        let mut parts = reply.into_array().into_iter();
        let epoch = parts.next().and_then(Value::into_string);
        let offset = parts.next().and_then(|v| v.as_u64());
        match (epoch, offset) {
            (Some(epoch), Some(offset)) => Ok(EventId::new(epoch, offset)
                .map_err(|_| redtower_client::Error::reply("bad epoch from pubsub_publish"))?),
            _ => Err(redtower_client::Error::reply("unexpected pubsub_publish reply").into()),
        }
    }

    async fn subscribe(&self, channel: &Channel) -> Result<Subscription> {
        self.hub.subscribe(channel).await
    }

    async fn replay(
        &self,
        channel: &Channel,
        after: &EventId,
        limit: ReplayLimit,
    ) -> Result<Replay> {
        self.hub.history(channel).replay(after, limit).await
    }

    async fn latest(&self, channel: &Channel) -> Result<Option<EventId>> {
        self.hub.history(channel).latest().await
    }

    fn active_channels(&self) -> usize {
        self.hub.channels()
    }
}
