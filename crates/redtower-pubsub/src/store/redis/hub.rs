//! The hub of a [`RedisStore`](crate::RedisStore): one Redis subscription per channel per
//! process, shared by every local subscriber, released after a linger, and renewed after every
//! reconnect of the subscriber connection.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use fred::interfaces::EventInterface;
use redtower_client::{Namespace, Redis};
use tokio::{
    sync::{OnceCell, broadcast, mpsc},
    task::JoinHandle,
};

use super::{
    Settings, TARGET,
    channel_task::{ChannelTask, Msg},
    history::History,
    subscriber::Subscriber,
};
use crate::{Channel, Result, store::Delivery, store::Subscription};

/// How many locks new subscriptions are spread over (by channel name): subscribing to one
/// channel never waits for another channel's Redis round trip, except on a hash collision.
const STRIPES: usize = 64;

pub(super) struct Hub {
    pub(super) redis: Redis,
    pub(super) ns: Namespace,
    pub(super) settings: Settings,
    /// The subscriber connection, made on the first subscription (see [`Hub::subscriber`]).
    subscriber: OnceLock<Subscriber>,
    /// Redis channel name -> slot.
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Serialize SUBSCRIBE/UNSUBSCRIBE per channel name (striped), so that a lingering
    /// unsubscribe never undoes a new subscribe, while other channels go on.
    stripes: Vec<Arc<tokio::sync::Mutex<()>>>,
    /// The tasks reading the subscriber connection; also serializes starting them.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    pub(super) stats: Arc<Counters>,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) lagged: AtomicU64,
    pub(super) resubscribes: AtomicU64,
    pub(super) repaired: AtomicU64,
    pub(super) lost: AtomicU64,
}

/// What the hub of a [`RedisStore`](crate::RedisStore) went through since it was built; see
/// [`RedisStore::stats`](crate::RedisStore::stats). The same counts are exported as metrics
/// (`redtower_pubsub_redis_lagged_total`, `redtower_pubsub_resubscribes_total`,
/// `redtower_pubsub_repaired_total`, `redtower_pubsub_lost_total`).
#[cfg(feature = "testing")]
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
    }
}

/// One channel the hub is subscribed to.
struct Slot {
    channel: Channel,
    name: String,
    tx: broadcast::Sender<Delivery>,
    inbox: mpsc::UnboundedSender<Msg>,
    /// Local subscribers; changed only under the hub's `slots` lock.
    refs: AtomicUsize,
    ready: OnceCell<()>,
}

impl Hub {
    pub(super) fn new(redis: Redis, settings: Settings) -> Self {
        Self {
            ns: redis.keyspace().namespace("ps"),
            redis,
            settings,
            subscriber: OnceLock::new(),
            slots: Mutex::new(HashMap::new()),
            stripes: (0..STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            tasks: Mutex::new(Vec::new()),
            stats: Arc::default(),
        }
    }

    /// The subscriber connection. The first call makes it and starts the tasks that read it,
    /// so a store that only publishes holds no subscriber connection, and building a store
    /// needs no runtime.
    fn subscriber(self: &Arc<Self>) -> Result<&Subscriber> {
        if let Some(subscriber) = self.subscriber.get() {
            return Ok(subscriber);
        }
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(subscriber) = self.subscriber.get() {
            return Ok(subscriber);
        }
        let client = self.redis.subscriber()?;
        // Taken before the first connection is up, so that no reconnect is missed.
        let messages = client.message_rx();
        let reconnects = client.reconnect_rx();
        let timeout = self.redis.command_timeout();
        let subscriber = self
            .subscriber
            .get_or_init(|| Subscriber::new(client, self.settings.sharded, timeout));
        let weak = Arc::downgrade(self);
        tasks.push(tokio::spawn(dispatch(weak.clone(), messages)));
        tasks.push(tokio::spawn(watch_reconnects(weak, reconnects)));
        Ok(subscriber)
    }

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

    pub(super) fn history(&self, channel: &Channel) -> History {
        History::new(
            self.redis.clone(),
            channel.clone(),
            self.ns.key(channel.as_str()),
        )
    }

    /// How many channels the hub is subscribed to, lingering ones included.
    pub(super) fn channels(&self) -> usize {
        self.lock().len()
    }

    #[cfg(feature = "testing")]
    pub(super) fn stats(&self) -> HubStats {
        let c = &self.stats;
        HubStats {
            lagged_messages: c.lagged.load(Ordering::Relaxed),
            resubscribes: c.resubscribes.load(Ordering::Relaxed),
            repaired_events: c.repaired.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
        }
    }

    /// Subscribes a local subscriber to `channel`: the first one of the process makes the
    /// Redis subscription (at most `max_channels` of them), later ones share it.
    pub(super) async fn subscribe(self: &Arc<Self>, channel: &Channel) -> Result<Subscription> {
        let (slot, rx) = self.join(channel)?;
        let guard = Guard {
            hub: Arc::downgrade(self),
            slot: slot.clone(),
        };
        slot.ready
            .get_or_try_init(|| async {
                // Only this channel's stripe is held across the round trips.
                let stripe = self.stripe(&slot.name);
                let _serial = stripe.lock().await;
                self.subscriber()?.subscribe(&slot.name).await?;
                let latest = self.history(channel).latest().await?;
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

    /// Counts one more local subscriber of `channel`, making its slot (and task) if needed.
    fn join(
        self: &Arc<Self>,
        channel: &Channel,
    ) -> Result<(Arc<Slot>, broadcast::Receiver<Delivery>)> {
        let name = self.ns.key(channel.as_str()).into_string();
        let mut slots = self.lock();
        let max = self.settings.max_channels;
        if !slots.contains_key(&name) && slots.len() >= max {
            release_idle(self, &mut slots);
            if slots.len() >= max {
                metrics::counter!("redtower_pubsub_channel_limit_total").increment(1);
                return Err(crate::Error::TooManyChannels { max });
            }
        }
        let slot = slots
            .entry(name.clone())
            .or_insert_with(|| {
                let (tx, _) = broadcast::channel(self.settings.capacity);
                let repair_limit = usize::try_from(self.settings.history_len)
                    .unwrap_or(usize::MAX)
                    .saturating_add(200);
                let inbox = ChannelTask::spawn(
                    self.history(channel),
                    self.stats.clone(),
                    tx.clone(),
                    repair_limit,
                );
                metrics::gauge!("redtower_pubsub_subscriptions").increment(1);
                Arc::new(Slot {
                    channel: channel.clone(),
                    name,
                    tx,
                    inbox,
                    refs: AtomicUsize::new(0),
                    ready: OnceCell::new(),
                })
            })
            .clone();
        slot.refs.fetch_add(1, Ordering::AcqRel);
        let rx = slot.tx.subscribe();
        Ok((slot, rx))
    }

    /// Unsubscribes from `name` (nothing to do when no subscriber connection was made).
    async fn unsubscribe(&self, name: &str) -> Result<()> {
        match self.subscriber.get() {
            Some(subscriber) => subscriber.unsubscribe(name).await,
            None => Ok(()),
        }
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
            self.slot.refs.fetch_sub(1, Ordering::AcqRel) == 1
        };
        if last && let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(linger(self.hub.clone(), self.slot.clone()));
        }
    }
}

async fn linger(hub: Weak<Hub>, slot: Arc<Slot>) {
    let Some(wait) = hub.upgrade().map(|h| h.settings.linger) else {
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
        let idle = slot.refs.load(Ordering::Acquire) == 0;
        let current = slots.get(&slot.name).is_some_and(|s| Arc::ptr_eq(s, &slot));
        if idle && current {
            slots.remove(&slot.name);
        }
        idle && current
    };
    if removed {
        metrics::gauge!("redtower_pubsub_subscriptions").decrement(1);
        tracing::debug!(target: TARGET, channel = %slot.channel, "unsubscribing after linger");
        if let Err(error) = hub.unsubscribe(&slot.name).await {
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
        // Set before this task was started.
        let Some(subscriber) = hub.subscriber.get() else {
            continue;
        };
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
            if let Err(error) = subscriber.subscribe(&slot.name).await {
                tracing::warn!(target: TARGET, channel = %slot.channel, error = %error, "resubscribe failed");
            }
            let _ = slot.inbox.send(Msg::Repair);
        }
    }
}

/// At the channel limit: releases up to 64 channels that no local subscriber uses any more
/// (lingering ones), so that a flood of short-lived subscriptions cannot keep the limit full.
/// A channel is released only when its stripe is free right now; its unsubscribe then runs
/// under that stripe, so a new subscription to the same name waits for it.
fn release_idle(hub: &Arc<Hub>, slots: &mut HashMap<String, Arc<Slot>>) {
    let idle: Vec<String> = slots
        .iter()
        .filter(|(_, s)| s.refs.load(Ordering::Acquire) == 0)
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
            if let Err(error) = hub.unsubscribe(&slot.name).await {
                tracing::warn!(target: TARGET, channel = %slot.channel, error = %error, "unsubscribe failed");
            }
        });
    }
}
