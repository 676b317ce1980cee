//! [`MemoryStore`]: in-process broadcast with a bounded history per channel.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use redtower_client::TraceContext;
use tokio::{sync::broadcast, time::Instant};

use super::{Delivery, PubSubStore, Replay, ReplayLimit, Subscription};

use crate::{Channel, Event, EventId, PublishToken, Result};

/// The in-process backend: one `tokio::sync::broadcast` per channel and a bounded history, for
/// single-instance apps, tests and the example app without Redis.
///
/// It has the semantics of [`RedisStore`](crate::RedisStore): ids are `<epoch>:<offset>`, the
/// history keeps the last [`history_len`](Self::history_len) events of a channel and is
/// forgotten (a new epoch starts) when the channel saw no publish for
/// [`history_ttl`](Self::history_ttl). Time comes from `tokio::time`, so tests can pause it.
/// Cloning is cheap and clones share the channels.
///
/// ```
/// use redtower_pubsub::{MemoryStore, PubSub, Replay};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), redtower_pubsub::Error> {
/// let pubsub = PubSub::new(MemoryStore::new().history_len(2));
/// let first = pubsub.publish("c", &1).await?;
/// for n in 2..=4 {
///     pubsub.publish("c", &n).await?;
/// }
/// // Only events 3 and 4 are kept: resuming after event 1 is impossible.
/// assert!(matches!(pubsub.replay("c", &first, 100).await?, Replay::Gap { .. }));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    channels: Mutex<State>,
}

#[derive(Debug, Clone)]
struct Settings {
    history_len: usize,
    history_bytes: usize,
    history_ttl: Duration,
    capacity: usize,
    max_payload: usize,
    max_channels: usize,
    dedup_window: Duration,
}

#[derive(Default)]
struct State {
    channels: HashMap<Channel, Slot>,
    ops: u64,
}

struct Slot {
    tx: broadcast::Sender<Delivery>,
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Arc<Event>>,
    /// Bytes of data in `history`.
    bytes: usize,
    touched: Instant,
    /// Publish tokens seen within the dedup window, oldest first.
    tokens: VecDeque<(Instant, PublishToken)>,
    token_ids: HashMap<PublishToken, EventId>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store with the default settings.
    pub fn new() -> Self {
        Self::build(Settings {
            history_len: 1000,
            history_bytes: 1024 * 1024,
            history_ttl: Duration::from_secs(3600),
            capacity: 256,
            max_payload: 64 * 1024,
            max_channels: 10_000,
            dedup_window: Duration::from_secs(60),
        })
    }

    fn build(settings: Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                channels: Mutex::new(State::default()),
            }),
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.inner.settings.clone();
        f(&mut settings);
        Self::build(settings)
    }

    /// How many events of each channel the history keeps. Defaults to 1000.
    #[must_use]
    pub fn history_len(self, n: usize) -> Self {
        self.rebuild(|c| c.history_len = n.max(1))
    }

    /// How many bytes of event data each channel's history keeps, summed (the newest event
    /// always stays). Defaults to 1 MiB.
    #[must_use]
    pub fn history_bytes(self, bytes: usize) -> Self {
        self.rebuild(|c| c.history_bytes = bytes.max(1))
    }

    /// How long a channel's history lives after its last publish. Defaults to 1 hour.
    #[must_use]
    pub fn history_ttl(self, ttl: Duration) -> Self {
        self.rebuild(|c| c.history_ttl = ttl)
    }

    /// How many live events a subscriber may fall behind before it lags (and catches up from
    /// the history). Defaults to 256.
    #[must_use]
    pub fn channel_capacity(self, n: usize) -> Self {
        self.rebuild(|c| c.capacity = n.max(1))
    }

    /// The largest event data a publish accepts, in bytes
    /// ([`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge) beyond). Defaults to 64 KiB.
    #[must_use]
    pub fn max_payload(self, bytes: usize) -> Self {
        self.rebuild(|c| c.max_payload = bytes.max(1))
    }

    /// The most channels the store holds (with a history or a subscriber). Channels without
    /// subscribers whose history expired are dropped first; beyond the limit, a publish or
    /// subscription on a new channel fails with
    /// [`Error::TooManyChannels`](crate::Error::TooManyChannels). Defaults to 10,000.
    #[must_use]
    pub fn max_channels(self, n: usize) -> Self {
        self.rebuild(|c| c.max_channels = n.max(1))
    }

    /// How long a publish's [`PublishToken`] is remembered. Defaults to 1 minute.
    #[must_use]
    pub fn publish_dedup_window(self, window: Duration) -> Self {
        self.rebuild(|c| c.dedup_window = window)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map inconsistent: recover it.
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn slot<'a>(
        &self,
        state: &'a mut State,
        channel: &Channel,
        now: Instant,
    ) -> Result<&'a mut Slot> {
        let settings = &self.inner.settings;
        state.ops += 1;
        let full =
            !state.channels.contains_key(channel) && state.channels.len() >= settings.max_channels;
        if state.ops % 1024 == 0 || full {
            let ttl = settings.history_ttl;
            // Kept: channels with a subscriber, and histories that have not expired.
            state.channels.retain(|_, slot| {
                slot.tx.receiver_count() > 0
                    || (!slot.history.is_empty() && now.duration_since(slot.touched) < ttl)
            });
            if full && state.channels.len() >= settings.max_channels {
                return Err(crate::Error::TooManyChannels {
                    max: settings.max_channels,
                });
            }
        }
        let slot = state
            .channels
            .entry(channel.clone())
            .or_insert_with(|| Slot {
                tx: broadcast::channel(settings.capacity).0,
                epoch: Arc::from(EventId::random_epoch()),
                offset: 0,
                history: VecDeque::new(),
                bytes: 0,
                touched: now,
                tokens: VecDeque::new(),
                token_ids: HashMap::new(),
            });
        if now.duration_since(slot.touched) >= settings.history_ttl {
            // The history expired, as a Redis key would: a new epoch starts.
            slot.epoch = Arc::from(EventId::random_epoch());
            slot.offset = 0;
            slot.history.clear();
            slot.bytes = 0;
            slot.touched = now;
        }
        while let Some((at, _)) = slot.tokens.front() {
            if now.duration_since(*at) < settings.dedup_window {
                break;
            }
            if let Some((_, token)) = slot.tokens.pop_front() {
                slot.token_ids.remove(&token);
            }
        }
        Ok(slot)
    }
}

#[async_trait::async_trait]
impl PubSubStore for MemoryStore {
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
        let settings = &self.inner.settings;
        if data.len() > settings.max_payload {
            return Err(crate::Error::PayloadTooLarge {
                len: data.len(),
                max: settings.max_payload,
            });
        }
        let now = Instant::now();
        let mut state = self.lock();
        let slot = self.slot(&mut state, channel, now)?;
        if let Some(id) = slot.token_ids.get(token) {
            return Ok(id.clone());
        }
        slot.offset = slot.offset.saturating_add(1);
        slot.touched = now;
        let id = EventId::from_parts(slot.epoch.clone(), slot.offset);
        slot.tokens.push_back((now, token.clone()));
        slot.token_ids.insert(token.clone(), id.clone());
        let event =
            Arc::new(Event::new(id.clone(), channel.clone(), data).with_trace(trace.cloned()));
        slot.bytes += event.data().len();
        slot.history.push_back(event.clone());
        while slot.history.len() > 1
            && (slot.history.len() > settings.history_len || slot.bytes > settings.history_bytes)
        {
            if let Some(old) = slot.history.pop_front() {
                slot.bytes -= old.data().len();
            }
        }
        // No receiver is fine: nobody listens on this channel in this process.
        let _ = slot.tx.send(Delivery::Event(event));
        Ok(id)
    }

    async fn subscribe(&self, channel: &Channel) -> Result<Subscription> {
        let mut state = self.lock();
        let slot = self.slot(&mut state, channel, Instant::now())?;
        Ok(Subscription::new(
            channel.clone(),
            slot.tx.subscribe(),
            None,
        ))
    }

    async fn replay(
        &self,
        channel: &Channel,
        after: &EventId,
        limit: ReplayLimit,
    ) -> Result<Replay> {
        let mut state = self.lock();
        // Reading never creates a channel: unknown names cost nothing.
        if !state.channels.contains_key(channel) {
            return Ok(Replay::Gap { latest: None });
        }
        let slot = self.slot(&mut state, channel, Instant::now())?;
        let latest =
            (slot.offset > 0).then(|| EventId::from_parts(slot.epoch.clone(), slot.offset));
        if *slot.epoch != *after.epoch() || after.offset() > slot.offset {
            return Ok(Replay::Gap { latest });
        }
        let missing = slot.offset - after.offset();
        if missing == 0 {
            return Ok(Replay::Events(Vec::new()));
        }
        // `after.offset() < slot.offset` here, so the next offset exists.
        let next = after.offset().saturating_add(1);
        let oldest = slot.history.front().map_or(u64::MAX, |e| e.id().offset());
        if oldest > next || missing > limit.events as u64 {
            return Ok(Replay::Gap { latest });
        }
        let skip = usize::try_from(next - oldest).unwrap_or(usize::MAX);
        let mut bytes = 0usize;
        let mut events = Vec::new();
        for event in slot.history.iter().skip(skip) {
            bytes = bytes.saturating_add(event.data().len());
            if bytes > limit.bytes {
                return Ok(Replay::Gap { latest });
            }
            events.push(event.clone());
        }
        Ok(Replay::Events(events))
    }

    async fn latest(&self, channel: &Channel) -> Result<Option<EventId>> {
        let mut state = self.lock();
        if !state.channels.contains_key(channel) {
            return Ok(None);
        }
        let slot = self.slot(&mut state, channel, Instant::now())?;
        Ok((slot.offset > 0).then(|| EventId::from_parts(slot.epoch.clone(), slot.offset)))
    }

    fn active_channels(&self) -> usize {
        self.lock()
            .channels
            .values()
            .filter(|s| s.tx.receiver_count() > 0)
            .count()
    }
}
