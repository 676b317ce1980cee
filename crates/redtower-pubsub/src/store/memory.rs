//! [`MemoryStore`]: in-process broadcast with a bounded history per channel.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{sync::broadcast, time::Instant};

use super::{Delivery, PubSubStore, Replay, Subscription};
use crate::{Channel, Event, EventId, Result};

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
    history_len: usize,
    history_ttl: Duration,
    capacity: usize,
    channels: Mutex<State>,
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
    touched: Instant,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("history_len", &self.inner.history_len)
            .field("history_ttl", &self.inner.history_ttl)
            .field("capacity", &self.inner.capacity)
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
        Self::build(1000, Duration::from_secs(3600), 256)
    }

    fn build(history_len: usize, history_ttl: Duration, capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                history_len,
                history_ttl,
                capacity,
                channels: Mutex::new(State::default()),
            }),
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut (usize, Duration, usize))) -> Self {
        let mut v = (
            self.inner.history_len,
            self.inner.history_ttl,
            self.inner.capacity,
        );
        f(&mut v);
        Self::build(v.0, v.1, v.2)
    }

    /// How many events of each channel the history keeps. Defaults to 1000.
    #[must_use]
    pub fn history_len(self, n: usize) -> Self {
        self.rebuild(|v| v.0 = n.max(1))
    }

    /// How long a channel's history lives after its last publish. Defaults to 1 hour.
    #[must_use]
    pub fn history_ttl(self, ttl: Duration) -> Self {
        self.rebuild(|v| v.1 = ttl)
    }

    /// How many live events a subscriber may fall behind before it lags (and catches up from
    /// the history). Defaults to 256.
    #[must_use]
    pub fn channel_capacity(self, n: usize) -> Self {
        self.rebuild(|v| v.2 = n.max(1))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map inconsistent: recover it.
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn slot<'a>(&self, state: &'a mut State, channel: &Channel, now: Instant) -> &'a mut Slot {
        state.ops += 1;
        if state.ops % 1024 == 0 {
            let ttl = self.inner.history_ttl;
            state.channels.retain(|_, slot| {
                slot.tx.receiver_count() > 0 || now.duration_since(slot.touched) < ttl
            });
        }
        let slot = state
            .channels
            .entry(channel.clone())
            .or_insert_with(|| Slot {
                tx: broadcast::channel(self.inner.capacity).0,
                epoch: Arc::from(EventId::random_epoch()),
                offset: 0,
                history: VecDeque::new(),
                touched: now,
            });
        if now.duration_since(slot.touched) >= self.inner.history_ttl {
            // The history expired, as a Redis key would: a new epoch starts.
            slot.epoch = Arc::from(EventId::random_epoch());
            slot.offset = 0;
            slot.history.clear();
            slot.touched = now;
        }
        slot
    }
}

#[async_trait::async_trait]
impl PubSubStore for MemoryStore {
    async fn publish(&self, channel: &Channel, data: Arc<str>) -> Result<EventId> {
        let now = Instant::now();
        let mut state = self.lock();
        let history_len = self.inner.history_len;
        let slot = self.slot(&mut state, channel, now);
        slot.offset += 1;
        slot.touched = now;
        let id = EventId::from_parts(slot.epoch.clone(), slot.offset);
        let event = Arc::new(Event::new(id.clone(), channel.clone(), data));
        slot.history.push_back(event.clone());
        while slot.history.len() > history_len {
            slot.history.pop_front();
        }
        // No receiver is fine: nobody listens on this channel in this process.
        let _ = slot.tx.send(Delivery::Event(event));
        Ok(id)
    }

    async fn subscribe(&self, channel: &Channel) -> Result<Subscription> {
        let mut state = self.lock();
        let slot = self.slot(&mut state, channel, Instant::now());
        Ok(Subscription::new(
            channel.clone(),
            slot.tx.subscribe(),
            None,
        ))
    }

    async fn replay(&self, channel: &Channel, after: &EventId, limit: usize) -> Result<Replay> {
        let mut state = self.lock();
        // Reading never creates a channel: unknown names cost nothing.
        if !state.channels.contains_key(channel) {
            return Ok(Replay::Gap { latest: None });
        }
        let slot = self.slot(&mut state, channel, Instant::now());
        let latest =
            (slot.offset > 0).then(|| EventId::from_parts(slot.epoch.clone(), slot.offset));
        if *slot.epoch != *after.epoch() || after.offset() > slot.offset {
            return Ok(Replay::Gap { latest });
        }
        let missing = slot.offset - after.offset();
        if missing == 0 {
            return Ok(Replay::Events(Vec::new()));
        }
        let oldest = slot.history.front().map_or(u64::MAX, |e| e.id().offset());
        if oldest > after.offset() + 1 || missing > limit as u64 {
            return Ok(Replay::Gap { latest });
        }
        let skip = usize::try_from(after.offset() + 1 - oldest).unwrap_or(usize::MAX);
        Ok(Replay::Events(
            slot.history.iter().skip(skip).cloned().collect(),
        ))
    }

    async fn latest(&self, channel: &Channel) -> Result<Option<EventId>> {
        let mut state = self.lock();
        if !state.channels.contains_key(channel) {
            return Ok(None);
        }
        let slot = self.slot(&mut state, channel, Instant::now());
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
