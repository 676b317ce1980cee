//! The [`PubSubStore`] trait, what its two backends share, and the backends.

use std::{fmt, sync::Arc};

use tokio::sync::broadcast;

use redtower_client::TraceContext;

use crate::{Channel, Event, EventId, PublishToken, Result};

#[cfg(feature = "memory")]
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

/// What a store sends to the subscribers of a channel.
#[derive(Debug, Clone)]
pub(crate) enum Delivery {
    /// The next event, in offset order.
    Event(Arc<Event>),
    /// Events were lost and the history cannot give them back: subscribers must resync,
    /// then go on after `latest`.
    Lost {
        /// The newest event id known, if any.
        latest: Option<EventId>,
    },
}

/// What [`PubSubStore::replay`] found in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replay {
    /// Every event after the cursor, oldest first (empty when the cursor is the newest event).
    Events(Vec<Arc<Event>>),
    /// The history cannot cover the gap: it was trimmed or expired, its epoch changed, or more
    /// events are missing than the caller's limit. `latest` is the newest event id, if any, from
    /// which a subscriber can go on after reloading its state.
    Gap {
        /// The newest event id of the channel, when it has one.
        latest: Option<EventId>,
    },
}

/// How much one [`PubSubStore::replay`] may return: at most `events` events and `bytes` bytes
/// of data. When more are missing, the replay is a [`Replay::Gap`] and no event is read.
///
/// A `usize` converts into a limit of that many events and no byte limit.
///
/// ```
/// use redtower_pubsub::ReplayLimit;
///
/// let limit = ReplayLimit::new(500, 512 * 1024);
/// assert_eq!(limit.events, 500);
/// assert_eq!(ReplayLimit::from(10).bytes, usize::MAX);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayLimit {
    /// The most events.
    pub events: usize,
    /// The most bytes of event data, summed.
    pub bytes: usize,
}

impl ReplayLimit {
    /// At most `events` events and `bytes` bytes.
    pub const fn new(events: usize, bytes: usize) -> Self {
        Self { events, bytes }
    }
}

impl From<usize> for ReplayLimit {
    fn from(events: usize) -> Self {
        Self::new(events, usize::MAX)
    }
}

/// A channel's pub/sub backend: publish with history, subscribe to live events, replay.
///
/// Two implementations ship with the crate: [`RedisStore`](crate::RedisStore) (many app
/// instances over Redis or a Redis Cluster) and [`MemoryStore`](crate::MemoryStore) (one
/// process). Both give every event an [`EventId`] whose offset grows by one per publish, keep
/// a bounded history per channel, and deliver live events to every subscriber of the process
/// through one shared broadcast per channel. Use them through [`PubSub`](crate::PubSub).
#[async_trait::async_trait]
pub trait PubSubStore: fmt::Debug + Send + Sync + 'static {
    /// Appends `data` to the channel's history and delivers it to every subscriber, returning
    /// the new event's id.
    ///
    /// A publish with a `token` already used on this channel within the store's dedup window
    /// publishes nothing and returns the first event's id: a re-sent or retried publish never
    /// makes a second event.
    async fn publish(
        &self,
        channel: &Channel,
        data: Arc<str>,
        token: &PublishToken,
    ) -> Result<EventId>;

    /// [`publish`](Self::publish), storing `trace` (the W3C trace context of the publishing
    /// span) with the event, in its history entry and its live message, so that subscribers
    /// get it back in [`Event::trace_context`]. Both built-in stores keep it; the default
    /// publishes without it, for stores that have nowhere to keep it.
    async fn publish_traced(
        &self,
        channel: &Channel,
        data: Arc<str>,
        token: &PublishToken,
        trace: Option<&TraceContext>,
    ) -> Result<EventId> {
        let _ = trace;
        self.publish(channel, data, token).await
    }

    /// Subscribes to the channel's live events. When this returns, every event published
    /// afterwards is delivered to the subscription, so a caller may subscribe first and then
    /// [`replay`](Self::replay) without missing anything in between.
    async fn subscribe(&self, channel: &Channel) -> Result<Subscription>;

    /// The events after `after`, within `limit`; [`Replay::Gap`] when the history cannot give
    /// every one. The epoch of `after` and the number of missing events are checked before any
    /// event is read, so a cursor from another epoch or too far behind costs no history read.
    async fn replay(
        &self,
        channel: &Channel,
        after: &EventId,
        limit: ReplayLimit,
    ) -> Result<Replay>;

    /// The newest event id of the channel, if it has a history.
    async fn latest(&self, channel: &Channel) -> Result<Option<EventId>>;

    /// How many channels this process is subscribed to right now (on Redis: how many Redis
    /// subscriptions the hub holds, lingering ones included).
    fn active_channels(&self) -> usize;
}

#[async_trait::async_trait]
impl<T: PubSubStore + ?Sized> PubSubStore for Arc<T> {
    async fn publish(
        &self,
        channel: &Channel,
        data: Arc<str>,
        token: &PublishToken,
    ) -> Result<EventId> {
        (**self).publish(channel, data, token).await
    }

    async fn publish_traced(
        &self,
        channel: &Channel,
        data: Arc<str>,
        token: &PublishToken,
        trace: Option<&TraceContext>,
    ) -> Result<EventId> {
        (**self).publish_traced(channel, data, token, trace).await
    }

    async fn subscribe(&self, channel: &Channel) -> Result<Subscription> {
        (**self).subscribe(channel).await
    }

    async fn replay(
        &self,
        channel: &Channel,
        after: &EventId,
        limit: ReplayLimit,
    ) -> Result<Replay> {
        (**self).replay(channel, after, limit).await
    }

    async fn latest(&self, channel: &Channel) -> Result<Option<EventId>> {
        (**self).latest(channel).await
    }

    fn active_channels(&self) -> usize {
        (**self).active_channels()
    }
}

/// One subscriber's view of a channel's live events. Dropping it unsubscribes.
pub struct Subscription {
    channel: Channel,
    rx: broadcast::Receiver<Delivery>,
    _guard: Option<Box<dyn Send + Sync>>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// What [`Subscription::recv`] returns.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Received {
    /// The next live event.
    Event(Arc<Event>),
    /// This subscriber fell behind and `n` events were skipped: read them with
    /// [`PubSubStore::replay`] from the last event seen.
    Lagged(u64),
    /// Events were lost for every subscriber (a Redis outage longer than the history, for
    /// example); state must be reloaded from its source of truth. Live events go on after
    /// `latest`.
    Lost {
        /// The newest event id of the channel, if known.
        latest: Option<EventId>,
    },
    /// The store was dropped.
    Closed,
}

impl Subscription {
    pub(crate) fn new(
        channel: Channel,
        rx: broadcast::Receiver<Delivery>,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        Self {
            channel,
            rx,
            _guard: guard,
        }
    }

    /// The channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Waits for the next live event.
    pub async fn recv(&mut self) -> Received {
        match self.rx.recv().await {
            Ok(Delivery::Event(e)) => Received::Event(e),
            Ok(Delivery::Lost { latest }) => Received::Lost { latest },
            Err(broadcast::error::RecvError::Lagged(n)) => Received::Lagged(n),
            Err(broadcast::error::RecvError::Closed) => Received::Closed,
        }
    }

    pub(crate) fn into_parts(
        self,
    ) -> (broadcast::Receiver<Delivery>, Option<Box<dyn Send + Sync>>) {
        (self.rx, self._guard)
    }
}
