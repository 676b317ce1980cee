//! [`RedisStore`]: history in a capped Redis Stream, live events through one Redis
//! subscription per channel per process (the hub), fanned out with `tokio::sync::broadcast`.

use std::{
    collections::HashMap,
    fmt,
    sync::atomic::{AtomicU64, Ordering},
    sync::{Arc, LazyLock, Mutex, MutexGuard, Weak},
    time::Duration,
};

use fred::{
    clients::SubscriberClient,
    interfaces::{EventInterface, PubsubInterface},
    types::Value,
};
use redtower_client::{Key, Namespace, Redis, Script};
use tokio::{
    sync::{OnceCell, broadcast, mpsc},
    task::JoinHandle,
};

use super::{Delivery, PubSubStore, Replay, ReplayLimit, Subscription};
use crate::{Channel, Event, EventId, PublishToken, Result};

static PUBLISH: LazyLock<Script> =
    LazyLock::new(|| Script::new("pubsub_publish", include_str!("publish.lua")));
static HISTORY: LazyLock<Script> =
    LazyLock::new(|| Script::new("pubsub_history", include_str!("history.lua")));

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
///   connection; subscribed on the first local subscriber, unsubscribed
///   [`linger`](RedisStoreBuilder::linger) after the last one left. After every reconnect it
///   subscribes again and replays from the history what was published meanwhile; when fred's
///   message buffer overflows it repairs the gap from the history too. Events reach local
///   subscribers in offset order, without gaps or duplicates; when the history cannot cover a
///   gap, subscribers are told to resync.
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
///     .build()?;
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
    config: Config,
}

#[derive(Debug, Clone)]
struct Config {
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

/// How many locks new subscriptions are spread over (by channel name): subscribing to one
/// channel never waits for another channel's Redis round trip, except on a hash collision.
const STRIPES: usize = 64;

impl RedisStoreBuilder {
    /// How many events of each channel the history keeps (trimmed exactly, oldest first, on
    /// every publish). Defaults to 1000.
    pub fn history_len(mut self, n: u64) -> Self {
        self.config.history_len = n.max(1);
        self
    }

    /// How many bytes of event data each channel's history keeps, summed (trimmed exactly,
    /// oldest first, on every publish; the newest event always stays). Defaults to 1 MiB.
    pub fn history_bytes(mut self, bytes: u64) -> Self {
        self.config.history_bytes = bytes.max(1);
        self
    }

    /// The largest event data a publish accepts, in bytes
    /// ([`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge) beyond). Defaults to
    /// 64 KiB.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.config.max_payload = bytes.max(1);
        self
    }

    /// The most channels this process holds a Redis subscription for (lingering ones
    /// included; idle lingering ones are released first when the limit is reached). A
    /// subscription to a new channel beyond it fails with
    /// [`Error::TooManyChannels`](crate::Error::TooManyChannels) (the SSE endpoint answers
    /// `503` with `Retry-After`). Defaults to 10,000.
    pub fn max_channels(mut self, n: usize) -> Self {
        self.config.max_channels = n.max(1);
        self
    }

    /// How long a publish's [`PublishToken`] is remembered at least (at most about twice
    /// this), so that a re-sent or retried publish with it returns the first event's id. Keep
    /// it above the command timeout times the command attempts. Each token costs one field
    /// of a per-channel hash (`<prefix>:ps:{<channel>}:t`, then `:u`) for that long. Defaults
    /// to 1 minute.
    pub fn publish_dedup_window(mut self, window: Duration) -> Self {
        self.config.dedup_window = window.max(Duration::from_millis(1));
        self
    }

    /// How long a channel's history lives after its last publish. Defaults to 1 hour.
    pub fn history_ttl(mut self, ttl: Duration) -> Self {
        self.config.history_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// How many live events a local subscriber may fall behind before it lags (and catches up
    /// from the history). Defaults to 256.
    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.config.capacity = n.max(1);
        self
    }

    /// How long the hub keeps a channel's Redis subscription after its last local subscriber
    /// left, so that a quick reconnect does not unsubscribe and subscribe again. Defaults to 5
    /// seconds.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.config.linger = linger;
        self
    }

    /// Whether to use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7). Defaults to `true`
    /// on a Cluster (classic `PUBLISH` is broadcast to every node there) and `false` otherwise.
    pub fn sharded(mut self, sharded: bool) -> Self {
        self.config.sharded = sharded;
        self
    }

    /// Builds the store and starts its hub (a subscriber connection and its tasks). Must be
    /// called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// When the subscriber connection cannot be built.
    pub fn build(self) -> Result<RedisStore> {
        let subscriber = self.redis.subscriber()?;
        let messages = subscriber.message_rx();
        let reconnects = subscriber.reconnect_rx();
        let hub = Arc::new(Hub {
            ns: self.redis.keyspace().namespace("ps"),
            redis: self.redis,
            subscriber,
            config: self.config,
            slots: Mutex::new(HashMap::new()),
            subscriber_up: std::sync::atomic::AtomicBool::new(false),
            stripes: (0..STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            stats: Arc::default(),
            pings: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        // Spawned once the hub exists: a task that started inside `Arc::new_cyclic` could get
        // the subscriber's first connection event before the hub can be upgraded, take the hub
        // for dropped and stop for good (no resubscription after any later reconnect).
        let weak = Arc::downgrade(&hub);
        *hub.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = vec![
            tokio::spawn(dispatch(weak.clone(), messages)),
            tokio::spawn(watch_reconnects(weak, reconnects)),
        ];
        Ok(RedisStore { hub })
    }
}

struct Hub {
    redis: Redis,
    subscriber: SubscriberClient,
    ns: Namespace,
    config: Config,
    /// Redis channel name -> slot.
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// The subscriber connection has been up at least once.
    subscriber_up: std::sync::atomic::AtomicBool,
    /// Serialize SUBSCRIBE/UNSUBSCRIBE per channel name (striped), so that a lingering
    /// unsubscribe never undoes a new subscribe, while other channels go on.
    stripes: Vec<Arc<tokio::sync::Mutex<()>>>,
    /// Tokens of the `PING`s that confirm subscriptions, in the order they are taken.
    pings: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    lagged: AtomicU64,
    resubscribes: AtomicU64,
    repaired: AtomicU64,
    lost: AtomicU64,
}

/// What the hub of a [`RedisStore`] went through since it was built; see [`RedisStore::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStats {
    /// Pub/sub messages fred dropped because its buffer overflowed (each gap was then
    /// repaired from the history).
    pub lagged_messages: u64,
    /// Times the hub subscribed again to its channels after the subscriber reconnected.
    pub resubscribes: u64,
    /// Events delivered from the history instead of live (after a reconnect or an overflow).
    pub repaired_events: u64,
    /// Times events were lost and not in the history, so subscribers were told to resync.
    pub lost: u64,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let tasks = self
            .tasks
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for task in tasks.iter() {
            task.abort();
        }
        let subscriber = self.subscriber.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = fred::interfaces::ClientLike::quit(&subscriber).await;
            });
        }
    }
}

struct Slot {
    channel: Channel,
    name: String,
    tx: broadcast::Sender<Delivery>,
    inbox: mpsc::UnboundedSender<Msg>,
    /// Local subscribers; changed only under the hub's `slots` lock.
    refs: std::sync::atomic::AtomicUsize,
    ready: OnceCell<()>,
}

enum Msg {
    /// The channel's newest id when the subscription was confirmed.
    Init(Option<EventId>),
    /// A pub/sub message.
    Raw(String),
    /// Check the history for events the subscription may have missed.
    Repair,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.hub.ns)
            .field("config", &self.hub.config)
            .field("channels", &self.active_channels())
            .finish()
    }
}

impl RedisStore {
    /// A store with the default settings (see [`RedisStoreBuilder`]).
    ///
    /// # Errors
    ///
    /// When the subscriber connection cannot be built.
    pub fn new(redis: Redis) -> Result<Self> {
        Self::builder(redis).build()
    }

    /// A builder over `redis`.
    pub fn builder(redis: Redis) -> RedisStoreBuilder {
        let sharded = redis.is_cluster();
        RedisStoreBuilder {
            redis,
            config: Config {
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

    /// The Redis pub/sub channel that carries `channel`'s events (`<prefix>:ps:{<channel>}`),
    /// for `PUBSUB NUMSUB` / `SHARDNUMSUB` and debugging.
    pub fn redis_channel(&self, channel: &Channel) -> Key {
        self.hub.ns.key(channel.as_str())
    }

    /// The Redis Stream holding `channel`'s history (`<prefix>:ps:{<channel>}:h`).
    pub fn history_key(&self, channel: &Channel) -> Key {
        self.hub.ns.key(channel.as_str()).push("h")
    }

    /// The hash holding `channel`'s epoch and last offset (`<prefix>:ps:{<channel>}:m`).
    pub fn meta_key(&self, channel: &Channel) -> Key {
        self.hub.ns.key(channel.as_str()).push("m")
    }

    /// Counters of the hub's repairs, for tests and readiness checks.
    pub fn stats(&self) -> HubStats {
        let c = &self.hub.stats;
        HubStats {
            lagged_messages: c.lagged.load(Ordering::Relaxed),
            resubscribes: c.resubscribes.load(Ordering::Relaxed),
            repaired_events: c.repaired.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
        }
    }

    /// Whether this store uses sharded pub/sub.
    pub fn is_sharded(&self) -> bool {
        self.hub.config.sharded
    }
}

impl Hub {
    fn stripe(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name);
        self.stripes[usize::try_from(hash % STRIPES as u64).unwrap_or(0)].clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn history(&self, channel: &Channel) -> History {
        let tag = self.ns.key(channel.as_str());
        History {
            redis: self.redis.clone(),
            channel: channel.clone(),
            meta: tag.clone().push("m"),
            stream: tag.push("h"),
        }
    }

    /// Waits for the subscriber's first connection, up to the command timeout: a fresh
    /// process is not in an outage, and a Cluster subscriber cannot route `SSUBSCRIBE` before
    /// it has the cluster's slots. Returns at once after the first connection.
    async fn subscriber_connected(&self) -> Result<()> {
        use fred::interfaces::ClientLike;
        if self.subscriber_up.load(Ordering::Acquire) {
            return Ok(());
        }
        let timeout = self.redis.command_timeout();
        let connected = async {
            if self.subscriber.state() != fred::types::ClientState::Connected {
                self.subscriber.wait_for_connect().await?;
            }
            Ok::<_, fred::error::Error>(())
        };
        match tokio::time::timeout(timeout, connected).await {
            Ok(Ok(())) => {
                self.subscriber_up.store(true, Ordering::Release);
                Ok(())
            }
            Ok(Err(error)) => Err(redtower_client::Error::from(error).into()),
            Err(_) => Err(redtower_client::Error::from(fred::error::Error::new(
                fred::error::ErrorKind::Timeout,
                format!("the pub/sub subscriber did not connect within {timeout:?}"),
            ))
            .into()),
        }
    }

    /// Subscribes to `name` on the subscriber connection. `SUBSCRIBE` is idempotent, so a
    /// failed one is sent again (twice at most): right after each (re)connect, fred's
    /// subscription manager re-sends its tracked subscriptions, including an empty
    /// `SUBSCRIBE` when only shard channels are tracked, and on a Cluster that command's
    /// error reply can be handed to a concurrent `SSUBSCRIBE`.
    async fn redis_subscribe(&self, name: &str) -> Result<()> {
        self.subscriber_connected().await?;
        let mut result = self.redis_subscribe_once(name).await;
        for wait_ms in [20, 100] {
            let Err(error) = &result else { break };
            tracing::debug!(target: TARGET, error = %error, "subscribe failed; sending it again");
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            result = self.redis_subscribe_once(name).await;
        }
        result
    }

    async fn redis_subscribe_once(&self, name: &str) -> Result<()> {
        let result = if self.config.sharded {
            // fred waits for Redis's `SSUBSCRIBE` confirmation.
            self.subscriber.ssubscribe(name).await
        } else {
            // A reconnect is announced before the new connection takes commands: when one
            // came, the `PING` may have been answered on a connection that never got the
            // `SUBSCRIBE`.
            let mut reconnects = self.subscriber.reconnect_rx();
            match self.subscriber.subscribe(name).await {
                Ok(()) => match self.confirm_subscribed().await {
                    Ok(())
                        if reconnects
                            .try_recv()
                            .is_err_and(|e| e == broadcast::error::TryRecvError::Empty) =>
                    {
                        Ok(())
                    }
                    Ok(()) => Err(fred::error::Error::new(
                        fred::error::ErrorKind::IO,
                        "the subscriber reconnected while subscribing",
                    )),
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            }
        };
        result.map_err(|e| redtower_client::Error::from(e).into())
    }

    /// Returns once Redis has run every `SUBSCRIBE` sent before this call.
    ///
    /// fred resolves `SUBSCRIBE` as soon as the command is queued for the socket (it drops
    /// Redis's confirmation), so without this the hub would read the channel's latest id and
    /// report the subscription ready while Redis may not have run the `SUBSCRIBE` yet: an
    /// event published in between reached nobody, and nothing repaired it until the next
    /// event of the channel (a stream waited for it forever when none came). One connection
    /// runs its commands in order, so the reply to a `PING` sent after the `SUBSCRIBE` on the
    /// subscriber connection comes after the subscription is active.
    ///
    /// The reply is checked: each `PING` carries a token from a counter, and only a token
    /// taken after the `SUBSCRIBE` was queued proves it ran. fred matches error replies it
    /// does not expect to the next command waiting for a reply (its subscription manager sends
    /// an empty `SUBSCRIBE`/`PSUBSCRIBE` after each connect, which Redis rejects), so a
    /// `PING` can get such an error (then the caller subscribes again) or another `PING`'s
    /// reply (then it pings again).
    async fn confirm_subscribed(&self) -> std::result::Result<(), fred::error::Error> {
        use fred::interfaces::ClientLike;
        let first = self.pings.fetch_add(1, Ordering::AcqRel);
        let options = fred::types::config::Options {
            // Not replayed on a new connection, where the `SUBSCRIBE` may not have run.
            max_attempts: Some(1),
            // Where fred sends `SUBSCRIBE` on a Cluster (a node chosen by the client's id).
            cluster_hash: self.subscriber.is_clustered().then(|| {
                fred::types::ClusterHash::Custom(fred::util::redis_keyslot(
                    self.subscriber.id().as_bytes(),
                ))
            }),
            ..Default::default()
        };
        let pinger = self.subscriber.with_options(&options);
        let mut token = first;
        for _ in 0..8 {
            let reply: Value = pinger.ping(Some(token.to_string())).await?;
            // `["pong", token]` in subscribed mode on RESP2, `token` otherwise.
            let echoed = match reply {
                Value::Array(mut parts) => parts.pop().and_then(|v| v.into_string()),
                other => other.into_string(),
            };
            if echoed
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|t| t >= first)
            {
                return Ok(());
            }
            token = self.pings.fetch_add(1, Ordering::AcqRel);
        }
        Err(fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            "the subscriber connection did not confirm a SUBSCRIBE",
        ))
    }

    async fn redis_unsubscribe(&self, name: &str) -> Result<()> {
        let result = if self.config.sharded {
            self.subscriber.sunsubscribe(name).await
        } else {
            self.subscriber.unsubscribe(name).await
        };
        result.map_err(|e| redtower_client::Error::from(e).into())
    }
}

/// Decrements the slot's local subscriber count on drop and lingers out the last one.
struct Guard {
    hub: Weak<Hub>,
    slot: Arc<Slot>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let last = {
            let _slots = hub.lock();
            self.slot
                .refs
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
                == 1
        };
        if last {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(linger(self.hub.clone(), self.slot.clone()));
            }
        }
    }
}

async fn linger(hub: Weak<Hub>, slot: Arc<Slot>) {
    let Some(wait) = hub.upgrade().map(|h| h.config.linger) else {
        return;
    };
    tokio::time::sleep(wait).await;
    let Some(hub) = hub.upgrade() else {
        return;
    };
    let stripe = hub.stripe(&slot.name);
    let _serial = stripe.lock().await;
    let removed = {
        let mut slots = hub.lock();
        let idle = slot.refs.load(std::sync::atomic::Ordering::Acquire) == 0;
        let current = slots.get(&slot.name).is_some_and(|s| Arc::ptr_eq(s, &slot));
        if idle && current {
            slots.remove(&slot.name);
        }
        idle && current
    };
    if removed {
        metrics::gauge!("redtower_pubsub_subscriptions").decrement(1);
        tracing::debug!(target: TARGET, channel = %slot.channel, "unsubscribing after linger");
        if let Err(error) = hub.redis_unsubscribe(&slot.name).await {
            tracing::warn!(target: TARGET, channel = %slot.channel, error = %error, "unsubscribe failed");
        }
    }
}

/// The only reader of the subscriber's messages: routes each to its channel's task, never
/// waiting on subscribers.
async fn dispatch(hub: Weak<Hub>, mut messages: broadcast::Receiver<fred::types::Message>) {
    loop {
        match messages.recv().await {
            Ok(message) => {
                let Some(hub) = hub.upgrade() else { return };
                let slot = hub.lock().get(&*message.channel).cloned();
                metrics::counter!("redtower_pubsub_redis_messages_total").increment(1);
                if let (Some(slot), Some(text)) = (slot, message.value.into_string()) {
                    let _ = slot.inbox.send(Msg::Raw(text));
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let Some(hub) = hub.upgrade() else { return };
                metrics::counter!("redtower_pubsub_redis_lagged_total").increment(n);
                hub.stats.lagged.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(target: TARGET, skipped = n, "pub/sub buffer overflowed; repairing from history");
                for slot in hub.lock().values() {
                    let _ = slot.inbox.send(Msg::Repair);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// After every reconnect of the subscriber: subscribe again to every channel, then replay
/// from the history what was published while the subscription was down.
async fn watch_reconnects(
    hub: Weak<Hub>,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
) {
    loop {
        match reconnects.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
        let Some(hub) = hub.upgrade() else { return };
        let slots: Vec<Arc<Slot>> = hub
            .lock()
            .values()
            .filter(|s| s.ready.initialized())
            .cloned()
            .collect();
        if slots.is_empty() {
            continue;
        }
        metrics::counter!("redtower_pubsub_resubscribes_total").increment(1);
        hub.stats.resubscribes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: TARGET, channels = slots.len(), "resubscribing after reconnect");
        for slot in &slots {
            let stripe = hub.stripe(&slot.name);
            let _serial = stripe.lock().await;
            if !hub
                .lock()
                .get(&slot.name)
                .is_some_and(|s| Arc::ptr_eq(s, slot))
            {
                continue; // released meanwhile
            }
            if let Err(error) = hub.redis_subscribe(&slot.name).await {
                tracing::warn!(target: TARGET, channel = %slot.channel, error = %error, "resubscribe failed");
            }
            let _ = slot.inbox.send(Msg::Repair);
        }
    }
}

/// Reads one channel's history.
#[derive(Clone)]
struct History {
    redis: Redis,
    channel: Channel,
    meta: Key,
    stream: Key,
}

struct Read {
    /// `None` when the channel has no history at all.
    epoch: Option<Arc<str>>,
    top: u64,
    events: Vec<Arc<Event>>,
    /// The events wanted hold more bytes than the limit (none were returned).
    too_big: bool,
}

impl History {
    /// The channel's epoch and last offset, and the events from offset `from` on when they are
    /// in `epoch` (any when `None`) and fit `limit` (nothing is read otherwise).
    async fn read(&self, epoch: Option<&str>, from: u64, limit: ReplayLimit) -> Result<Read> {
        self.redis.first_connection().await?;
        let reply: Value = HISTORY
            .run(
                &self.redis,
                vec![self.meta.clone(), self.stream.clone()],
                vec![
                    epoch.unwrap_or("").to_owned(),
                    from.to_string(),
                    limit.events.to_string(),
                    limit.bytes.to_string(),
                ],
            )
            .await?;
        self.decode(reply)
    }

    fn decode(&self, reply: Value) -> Result<Read> {
        let bad = || redtower_client::Error::reply("unexpected pubsub_history reply");
        let mut parts = reply.into_array().into_iter();
        let (Some(epoch), Some(top), Some(entries)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad().into());
        };
        let too_big = parts.next().and_then(|v| v.as_u64()) == Some(1);
        let epoch = epoch.into_string().ok_or_else(bad)?;
        let top = top.as_u64().ok_or_else(bad)?;
        if epoch.is_empty() {
            return Ok(Read {
                epoch: None,
                top: 0,
                events: Vec::new(),
                too_big: false,
            });
        }
        let epoch: Arc<str> = Arc::from(epoch);
        let mut events = Vec::new();
        for entry in entries.into_array() {
            let mut entry = entry.into_array().into_iter();
            let (Some(id), Some(fields)) = (entry.next(), entry.next()) else {
                return Err(bad().into());
            };
            let id = id.into_string().ok_or_else(bad)?;
            let offset = id
                .split_once('-')
                .and_then(|(o, _)| o.parse::<u64>().ok())
                .ok_or_else(bad)?;
            let mut fields = fields.into_array().into_iter();
            let mut data = None;
            while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                if k.as_str().as_deref() == Some("d") {
                    data = v.into_string();
                }
            }
            let data = data.ok_or_else(bad)?;
            events.push(Arc::new(Event::new(
                EventId::from_parts(epoch.clone(), offset),
                self.channel.clone(),
                Arc::from(data),
            )));
        }
        Ok(Read {
            epoch: Some(epoch),
            top,
            events,
            too_big,
        })
    }

    async fn latest(&self) -> Result<Option<EventId>> {
        let read = self.read(None, 1, ReplayLimit::new(0, 0)).await?;
        Ok(read
            .epoch
            .filter(|_| read.top > 0)
            .map(|e| EventId::from_parts(e, read.top)))
    }

    /// The events after `after` (epoch, offset), within `limit`.
    async fn replay(&self, after: &EventId, limit: ReplayLimit) -> Result<Replay> {
        let read = self
            .read(Some(after.epoch()), after.offset().saturating_add(1), limit)
            .await?;
        Ok(judge(read, after, limit))
    }
}

fn judge(read: Read, after: &EventId, limit: ReplayLimit) -> Replay {
    let Some(epoch) = read.epoch else {
        return Replay::Gap { latest: None };
    };
    let latest = (read.top > 0).then(|| EventId::from_parts(epoch.clone(), read.top));
    if *epoch != *after.epoch() || read.top < after.offset() {
        return Replay::Gap { latest };
    }
    let missing = read.top - after.offset();
    if missing == 0 {
        return Replay::Events(Vec::new());
    }
    // `after.offset() < read.top` here, so the next offset exists.
    let next = after.offset().saturating_add(1);
    let complete = !read.too_big
        && missing <= limit.events as u64
        && read.events.first().map(|e| e.id().offset()) == Some(next)
        && read.events.len() as u64 >= missing;
    if !complete {
        return Replay::Gap { latest };
    }
    let mut events = read.events;
    events.truncate(usize::try_from(missing).unwrap_or(usize::MAX));
    Replay::Events(events)
}

/// One task per subscribed channel: orders, de-duplicates and repairs what the subscription
/// delivers, then broadcasts it to the local subscribers.
struct ChannelTask {
    history: History,
    stats: Arc<Counters>,
    tx: broadcast::Sender<Delivery>,
    last: Option<EventId>,
    repair_limit: usize,
}

async fn run_channel(mut task: ChannelTask, mut inbox: mpsc::UnboundedReceiver<Msg>) {
    let mut pending: Option<Vec<String>> = Some(Vec::new());
    while let Some(msg) = inbox.recv().await {
        match msg {
            Msg::Init(latest) => {
                task.last = latest;
                for raw in pending.take().unwrap_or_default() {
                    task.on_raw(&raw).await;
                }
            }
            Msg::Raw(raw) => match &mut pending {
                Some(buffer) => buffer.push(raw),
                None => task.on_raw(&raw).await,
            },
            Msg::Repair if pending.is_none() => {
                let after = match &task.last {
                    Some(last) => Some(last.clone()),
                    None => task.history.latest().await.ok().flatten().map(|l| {
                        // Nothing was seen since subscribing to a channel without history:
                        // everything in the current epoch is new.
                        EventId::from_parts(l.epoch_arc().clone(), 0)
                    }),
                };
                if let Some(after) = after {
                    task.repair(&after).await;
                }
            }
            Msg::Repair => {}
        }
    }
}

impl ChannelTask {
    async fn on_raw(&mut self, raw: &str) {
        let Some((id, data)) = parse_message(raw) else {
            tracing::warn!(target: TARGET, channel = %self.history.channel, "ignoring a malformed pub/sub message");
            return;
        };
        let expected = match &self.last {
            Some(last) if last.epoch() == id.epoch() => {
                if id.offset() <= last.offset() {
                    return; // already delivered (by a repair)
                }
                // `last.offset() < id.offset()`, so this cannot overflow.
                last.offset().saturating_add(1)
            }
            _ => 1,
        };
        if id.offset() != expected {
            let after = EventId::from_parts(id.epoch_arc().clone(), expected - 1);
            self.repair(&after).await;
            if self
                .last
                .as_ref()
                .is_some_and(|l| l.epoch() == id.epoch() && l.offset() >= id.offset())
            {
                return;
            }
        }
        let event = Event::new(id.clone(), self.history.channel.clone(), Arc::from(data));
        self.last = Some(id);
        let _ = self.tx.send(Delivery::Event(Arc::new(event)));
    }

    /// Delivers the events after `after` from the history; tells subscribers to resync when
    /// the history cannot cover them.
    async fn repair(&mut self, after: &EventId) {
        // The read is idempotent: retry a failed one a few times (a reconnect in progress)
        // before telling subscribers that events were lost.
        let mut result = self.history.replay(after, self.repair_limit.into()).await;
        for wait_ms in [50, 200, 500] {
            match &result {
                Err(crate::Error::Redis(_)) => {
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                    result = self.history.replay(after, self.repair_limit.into()).await;
                }
                _ => break,
            }
        }
        match result {
            Ok(Replay::Events(events)) => {
                if !events.is_empty() {
                    metrics::counter!("redtower_pubsub_repaired_total")
                        .increment(events.len() as u64);
                    self.stats
                        .repaired
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    tracing::debug!(target: TARGET, channel = %self.history.channel, events = events.len(), "repaired a gap from history");
                }
                for event in events {
                    self.last = Some(event.id().clone());
                    let _ = self.tx.send(Delivery::Event(event));
                }
            }
            Ok(Replay::Gap { latest }) => {
                tracing::warn!(target: TARGET, channel = %self.history.channel, "events lost and not in history: subscribers resync");
                metrics::counter!("redtower_pubsub_lost_total").increment(1);
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                self.last = latest.clone();
                let _ = self.tx.send(Delivery::Lost { latest });
            }
            Err(error) => {
                tracing::warn!(target: TARGET, channel = %self.history.channel, error = %error, "reading history to repair a gap failed: subscribers resync");
                metrics::counter!("redtower_pubsub_lost_total").increment(1);
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                let _ = self.tx.send(Delivery::Lost { latest: None });
            }
        }
    }
}

/// `<epoch>:<offset>:<data>`.
fn parse_message(raw: &str) -> Option<(EventId, &str)> {
    let (epoch, rest) = raw.split_once(':')?;
    let (offset, data) = rest.split_once(':')?;
    let id = EventId::new(epoch, offset.parse().ok()?).ok()?;
    Some((id, data))
}

#[async_trait::async_trait]
impl PubSubStore for RedisStore {
    async fn publish(
        &self,
        channel: &Channel,
        data: Arc<str>,
        token: &PublishToken,
    ) -> Result<EventId> {
        let hub = &self.hub;
        if data.len() > hub.config.max_payload {
            return Err(crate::Error::PayloadTooLarge {
                len: data.len(),
                max: hub.config.max_payload,
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
                    hub.config.history_len.to_string(),
                    millis(hub.config.history_ttl).to_string(),
                    tag.into_string(),
                    if hub.config.sharded { "1" } else { "0" }.to_owned(),
                    millis(hub.config.dedup_window).to_string(),
                    hub.config.history_bytes.to_string(),
                    token.as_str().to_owned(),
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
        let hub = &self.hub;
        let name = hub.ns.key(channel.as_str()).into_string();
        let (slot, rx) = {
            let mut slots = hub.lock();
            if !slots.contains_key(&name) && slots.len() >= hub.config.max_channels {
                release_idle(hub, &mut slots);
                if slots.len() >= hub.config.max_channels {
                    metrics::counter!("redtower_pubsub_channel_limit_total").increment(1);
                    return Err(crate::Error::TooManyChannels {
                        max: hub.config.max_channels,
                    });
                }
            }
            let slot = slots
                .entry(name.clone())
                .or_insert_with(|| {
                    let (tx, _) = broadcast::channel(hub.config.capacity);
                    let (inbox, inbox_rx) = mpsc::unbounded_channel();
                    let task = ChannelTask {
                        history: hub.history(channel),
                        stats: hub.stats.clone(),
                        tx: tx.clone(),
                        last: None,
                        repair_limit: usize::try_from(hub.config.history_len)
                            .unwrap_or(usize::MAX)
                            .saturating_add(200),
                    };
                    tokio::spawn(run_channel(task, inbox_rx));
                    metrics::gauge!("redtower_pubsub_subscriptions").increment(1);
                    Arc::new(Slot {
                        channel: channel.clone(),
                        name,
                        tx,
                        inbox,
                        refs: std::sync::atomic::AtomicUsize::new(0),
                        ready: OnceCell::new(),
                    })
                })
                .clone();
            slot.refs.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let rx = slot.tx.subscribe();
            (slot, rx)
        };
        let guard = Guard {
            hub: Arc::downgrade(hub),
            slot: slot.clone(),
        };
        slot.ready
            .get_or_try_init(|| async {
                // Only this channel's stripe is held across the round trips.
                let stripe = hub.stripe(&slot.name);
                let _serial = stripe.lock().await;
                hub.redis_subscribe(&slot.name).await?;
                let latest = hub.history(channel).latest().await?;
                tracing::debug!(target: TARGET, channel = %channel, "subscribed");
                let _ = slot.inbox.send(Msg::Init(latest));
                Ok::<_, crate::Error>(())
            })
            .await?;
        Ok(Subscription::new(
            channel.clone(),
            rx,
            Some(Box::new(guard)),
        ))
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
        self.hub.lock().len()
    }
}

/// At the channel limit: releases up to 64 channels that no local subscriber uses any more
/// (lingering ones), so that a flood of short-lived subscriptions cannot keep the limit full.
/// A channel is released only when its stripe is free right now; its unsubscribe then runs
/// under that stripe, so a new subscription to the same name waits for it.
fn release_idle(hub: &Arc<Hub>, slots: &mut HashMap<String, Arc<Slot>>) {
    let idle: Vec<String> = slots
        .iter()
        .filter(|(_, s)| s.refs.load(std::sync::atomic::Ordering::Acquire) == 0)
        .map(|(name, _)| name.clone())
        .take(64)
        .collect();
    for name in idle {
        let Ok(serial) = hub.stripe(&name).try_lock_owned() else {
            continue;
        };
        let Some(slot) = slots.remove(&name) else {
            continue;
        };
        metrics::gauge!("redtower_pubsub_subscriptions").decrement(1);
        let hub = Arc::downgrade(hub);
        tokio::spawn(async move {
            let _serial = serial;
            let Some(hub) = hub.upgrade() else { return };
            tracing::debug!(target: TARGET, channel = %slot.channel, "unsubscribing an idle channel at the channel limit");
            if let Err(error) = hub.redis_unsubscribe(&slot.name).await {
                tracing::warn!(target: TARGET, channel = %slot.channel, error = %error, "unsubscribe failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(epoch: &str, top: u64, first: u64, n: u64, too_big: bool) -> Read {
        let epoch: Arc<str> = Arc::from(epoch);
        let channel = Channel::new("c").unwrap();
        let events = (0..n)
            .map_while(|i| first.checked_add(i))
            .map(|o| {
                Arc::new(Event::new(
                    EventId::from_parts(epoch.clone(), o),
                    channel.clone(),
                    Arc::from("{}"),
                ))
            })
            .collect();
        Read {
            epoch: Some(epoch),
            top,
            events,
            too_big,
        }
    }

    #[test]
    fn judging_a_replay_at_the_edges() {
        let max = u64::MAX;
        let at = |o| EventId::new("e", o).unwrap();
        let limit = ReplayLimit::new(10, usize::MAX);
        let gap = |r: Replay| matches!(r, Replay::Gap { .. });
        assert!(gap(judge(read("e", 5, 0, 0, false), &at(max), limit)));
        assert!(gap(judge(read("f", 5, 0, 0, false), &at(1), limit)));
        assert!(gap(judge(
            read("e", max, max, 1, false),
            &at(max - 100),
            limit
        )));
        assert_eq!(
            judge(read("e", max, max, 1, false), &at(max - 1), limit),
            Replay::Events(read("e", max, max, 1, false).events)
        );
        assert_eq!(
            judge(read("e", max, 0, 0, false), &at(max), limit),
            Replay::Events(Vec::new())
        );
        assert!(gap(judge(read("e", 5, 3, 3, true), &at(2), limit)));
    }

    proptest::proptest! {
        /// Any reply and cursor: no panic, and events only when they cover the gap exactly.
        #[test]
        fn judge_never_panics(top: u64, first: u64, n in 0u64..20, after: u64, events in 0usize..20, too_big: bool) {
            let after = EventId::new("e", after).unwrap();
            let r = judge(read("e", top, first, n, too_big), &after, ReplayLimit::new(events, usize::MAX));
            if let Replay::Events(got) = r {
                let mut expected = after.offset();
                for e in &got {
                    expected += 1;
                    proptest::prop_assert_eq!(e.id().offset(), expected);
                }
                proptest::prop_assert_eq!(expected, top);
            }
        }
    }

    #[test]
    fn messages_parse() {
        let (id, data) = parse_message("abc:12:{\"a\":\"x:y\"}").unwrap();
        assert_eq!(id.to_string(), "abc:12");
        assert_eq!(data, "{\"a\":\"x:y\"}");
        assert!(parse_message("abc:x:1").is_none());
        assert!(parse_message("abc").is_none());
    }
}
