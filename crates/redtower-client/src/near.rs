//! [`NearCache`]: a bounded in-process map of Redis key -> value, kept coherent by Redis'
//! server-assisted client-side caching (`CLIENT TRACKING`, RESP3).
//!
//! # How it stays coherent
//!
//! Each near-cache owns one dedicated RESP3 connection (one per primary on a Cluster) with
//! `CLIENT TRACKING ON` in the **default mode**: Redis remembers which keys *this connection*
//! read and pushes an `invalidate` message when any of them changes (write, expiry, eviction,
//! `DEL`, a write inside a script). Reads that should be cached go through
//! [`client_for`](NearCache::client_for), so the server tracks exactly the keys held here.
//!
//! Why the default mode and not `BCAST` on the feature's prefixes:
//!
//! * with `BCAST`, every instance receives every write under the prefix (each session slide,
//!   each cache fill of every instance), so the push volume grows with the total write rate
//!   times the number of instances; in the default mode an instance only hears about keys it
//!   read, at most once per read -> write cycle. The measurement behind the choice is in
//!   `tests/near_cache.rs` (`tracking_mode_push_volume`): with 2 instances each reading a
//!   tenth of 1,000 keys and one writer rewriting all of them, `BCAST` delivers every write
//!   to every instance and the default mode a tenth of them;
//! * fred 10.1 sends `BCAST` to one node of a Cluster only, so the other primaries' writes
//!   would never arrive; the default mode is sent to every primary;
//! * the default mode needs no `CLIENT CACHING` pairing (fred never writes
//!   `Options::caching` to the wire) and re-enabling it is idempotent.
//!
//! # Hard rules, and how they hold
//!
//! * **A read racing an invalidation never leaves a stale entry.** fred hands replies and
//!   pushes to different tasks, so their wire order is lost. A read therefore takes a
//!   [`Ticket`] *before* it is sent: the global epoch and the generation of the key's stripe
//!   (4096 stripes by key hash). The dispatcher bumps the stripe *before* it removes the key.
//!   [`insert`](NearCache::insert) stores the value only if the tier is ready and neither
//!   number moved since the ticket, then checks again and removes what it stored if one moved
//!   meanwhile. Any invalidation that arrives after the ticket, before or after the reply,
//!   discards the value; one that arrived before the ticket belongs to a write the read sees.
//! * **A dropped, re-made or moved connection flushes everything.** A connection error, a
//!   reconnect (fred replays in-flight reads on the new connection, where tracking is not on
//!   yet), a Cluster topology change (`MOVED`, added or removed nodes), a Sentinel switch, or
//!   lost push messages (the channel lagged): the tier stops serving, bumps the epoch (so
//!   no read started before can insert), clears the map, turns tracking on again on every
//!   primary, bumps the epoch again, and only then serves.
//! * **Bounded.** Entries are bounded by count and by bytes (a weigher: key + value), every
//!   entry has a maximum age, and values over a size cap are never stored.
//! * **No tracking, no tier.** A server without RESP3 or `CLIENT TRACKING` (Redis < 6), or one
//!   that refuses tracking, disables the tier with one `warn` log line; every read then goes to
//!   Redis through the main connection, as without a near-cache.
//!
//! # Known limits
//!
//! * `FLUSHALL`/`FLUSHDB`/`SWAPDB` send a *null* invalidation that fred 10.1 drops: entries
//!   then live until their maximum age. Deny these commands to the application's user.
//! * Between a connection loss and the moment the tier hears of it (a task wake-up), hits are
//!   still served; fred reports a silently dead socket only after its unresponsive timeout
//!   ([`RedisConfig::unresponsive_timeout`](crate::RedisConfig::unresponsive_timeout)).
//! * A write by this process reaches its own tier as a push after the write's reply: a store
//!   calls [`invalidate`](NearCache::invalidate) after its own writes to read them back.

use std::{
    fmt,
    hash::BuildHasher,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use fred::{
    clients::Client,
    interfaces::{ClientLike, ClusterInterface, EventInterface, TrackingInterface},
    types::{
        ClientState,
        config::{Options, Server},
    },
};
use tokio::sync::{broadcast::error::RecvError, mpsc, oneshot, watch};

use crate::{Error, Redis, Result};

/// Stripes of invalidation generations: a key's stripe is its hash modulo this.
const STRIPES: usize = 4096;

/// Bytes counted for an entry on top of its key and value (moka's node, the `Arc`s).
const ENTRY_OVERHEAD: u64 = 96;

/// The settings of a [`NearCache`], with defaults for a small web process.
///
/// ```
/// use std::time::Duration;
/// use redtower_client::NearCacheConfig;
///
/// let config = NearCacheConfig::new("sessions")
///     .max_entries(50_000)
///     .max_bytes(32 << 20)
///     .max_age(Duration::from_secs(10));
/// assert_eq!(config.name(), "sessions");
/// ```
#[derive(Debug, Clone)]
pub struct NearCacheConfig {
    name: &'static str,
    max_entries: u64,
    max_bytes: u64,
    max_age: Duration,
    max_entry_bytes: usize,
    push_buffer: usize,
}

impl NearCacheConfig {
    /// Defaults: 10,000 entries, 64 MiB, a maximum age of 60 s, values up to 256 KiB, 4096
    /// buffered push messages. `name` labels logs.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            max_entries: 10_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(60),
            max_entry_bytes: 256 << 10,
            push_buffer: 4096,
        }
    }

    /// The most entries held (at least 1). Default 10,000.
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.max_entries = entries.max(1);
        self
    }

    /// The most bytes held, keys, values and a fixed overhead per entry counted (at least
    /// 1 KiB). Default 64 MiB.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes.max(1024);
        self
    }

    /// The longest an entry lives, invalidated or not: the safety net for a lost push (at least
    /// 1 ms). Default 60 s.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age.max(Duration::from_millis(1));
        self
    }

    /// Values weighing more than this are never stored. Default 256 KiB.
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.max_entry_bytes = bytes;
        self
    }

    /// How many invalidation messages may wait for the dispatcher; past it messages are lost
    /// and the whole tier is flushed (at least 16). Default 4096.
    pub fn push_buffer(mut self, messages: usize) -> Self {
        self.push_buffer = messages.max(16);
        self
    }

    /// The label of this near-cache in logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The most bytes held (see [`max_bytes`](Self::max_bytes)).
    pub fn bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The longest an entry is kept (see [`max_age`](Self::max_age)).
    pub fn age(&self) -> Duration {
        self.max_age
    }

    /// The weight of one entry of `bytes` in a moka map whose capacity is
    /// [`bytes`](Self::bytes): its bytes, but at least `max_bytes / max_entries`, so that a
    /// budget of `max_bytes` also bounds the count. For maps of values derived from the tier,
    /// kept within the same limits.
    ///
    /// ```
    /// use redtower_client::NearCacheConfig;
    ///
    /// let config = NearCacheConfig::new("demo").max_entries(1_000).max_bytes(1 << 20);
    /// assert_eq!(config.weight(30), 1_048);
    /// assert_eq!(config.weight(5_000), 5_000);
    /// ```
    pub fn weight(&self, bytes: u64) -> u32 {
        let floor = self.max_bytes / self.max_entries;
        u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
    }
}

/// Counters of a [`NearCache`] since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearCacheStats {
    /// Reads answered from the tier (and, through [`NearCache::count_derived_hit`], by values
    /// derived from it).
    pub hits: u64,
    /// Reads the tier did not hold while serving.
    pub misses: u64,
    /// Reads sent to Redis because the tier was not serving (tracking not (yet) on).
    pub bypasses: u64,
    /// Values stored.
    pub inserts: u64,
    /// Values not stored (or removed at once) because an invalidation or a flush raced their
    /// read.
    pub discarded: u64,
    /// Keys invalidated by a push from Redis.
    pub invalidations: u64,
    /// Whole-tier flushes (connection events, lost pushes).
    pub flushes: u64,
    /// Entries held now (approximate, as moka counts).
    pub entries: u64,
    /// Weighted bytes held now (approximate).
    pub weighted_bytes: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
    inserts: AtomicU64,
    discarded: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
}

/// What a read records before it is sent, so that its result is stored only if nothing
/// invalidated the key (or flushed the tier) while it was in flight. From
/// [`NearCache::ticket`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    epoch: u64,
    generation: u64,
    stripe: usize,
    ready: bool,
}

impl Ticket {
    /// Whether the tier was serving when the ticket was taken: only then does
    /// [`NearCache::client_for`] hand out the tracked connection, and only then can the read's
    /// result be stored.
    pub fn is_tracked(&self) -> bool {
        self.ready
    }
}

/// The [`Ticket`]s of several keys of one [`NearCache`], taken before their reads: current
/// while the tier has served without a break and none of the keys was invalidated since. A
/// value *derived* from those reads (a decoded entry, a parsed record) may be kept in process
/// and served while its stamp [is current](Self::is_current): it is then as coherent as the
/// tier's own entries, at the cost of a few atomic loads per use. From [`NearCache::stamp`].
///
/// A key's generation is shared by its stripe (one of 4,096), so an invalidation of another
/// key of the same stripe also ends the stamp: a spurious miss, never a stale hit.
#[derive(Clone)]
pub struct Stamp {
    state: Arc<State>,
    epoch: u64,
    /// Shared, so that cloning a kept value with its stamp allocates nothing.
    stripes: Arc<[(usize, u64)]>,
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stamp")
            .field("cache", &self.state.name)
            .field("keys", &self.stripes.len())
            .field("current", &self.is_current())
            .finish()
    }
}

impl Stamp {
    /// This stamp and `other` (of the same tier) as one: current while both are. For a value
    /// derived from reads whose keys are known one after the other (a record, then the key it
    /// names), each stamp taken before its own read.
    #[must_use]
    pub fn and(mut self, other: &Stamp) -> Stamp {
        debug_assert!(
            Arc::ptr_eq(&self.state, &other.state),
            "stamps of two tiers"
        );
        if other.epoch != self.epoch {
            // A flush between the two: never current again.
            self.epoch = u64::MAX;
        }
        self.stripes = self
            .stripes
            .iter()
            .chain(other.stripes.iter())
            .copied()
            .collect();
        self
    }

    /// Whether the tier still serves, was not flushed, and no key of the stamp was
    /// invalidated since it was taken.
    pub fn is_current(&self) -> bool {
        let state = &*self.state;
        state.ready.load(Ordering::Acquire)
            && state.epoch.load(Ordering::Acquire) == self.epoch
            && self.stripes.iter().all(|&(stripe, generation)| {
                state.stripes[stripe].load(Ordering::Acquire) == generation
            })
    }
}

/// The state shared by the handles and the dispatcher task.
struct State {
    name: &'static str,
    /// Bumped on every flush: reads started before cannot insert.
    epoch: AtomicU64,
    /// Serving: tracking is on for the current connections.
    ready: AtomicBool,
    /// Tracking is impossible here; reads go to the main connection for good.
    disabled: AtomicBool,
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    counters: Counters,
    /// Counts applied pushes and flushes: a waiter sees every change of the map.
    applied: watch::Sender<u64>,
}

impl State {
    fn stripe(&self, key: &[u8]) -> usize {
        // The modulo keeps the index below STRIPES, which fits a usize.
        #[allow(clippy::cast_possible_truncation)]
        let stripe = (self.hasher.hash_one(key) % STRIPES as u64) as usize;
        stripe
    }

    /// Drops `key` with `remove`, bumping its stripe before (so that no read in flight can
    /// store its value) and after (so that no [`Stamp`] taken between the first bump and the
    /// removal, whose read may still have found the old value, stays current).
    fn invalidate(&self, key: &[u8], remove: impl FnOnce()) {
        let stripe = &self.stripes[self.stripe(key)];
        stripe.fetch_add(1, Ordering::AcqRel);
        remove();
        stripe.fetch_add(1, Ordering::AcqRel);
    }

    /// Voids every read in flight and every [`Stamp`] with `clear` between two epoch bumps
    /// (see [`invalidate`](Self::invalidate)).
    fn invalidate_all(&self, clear: impl FnOnce()) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        clear();
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn note_applied(&self) {
        self.applied.send_modify(|n| *n += 1);
    }
}

/// A coherent in-process tier in front of Redis: a bounded moka map of Redis key -> `V` whose
/// entries are dropped when Redis reports the key changed. See the [module docs](self) for the
/// guarantees and their limits.
///
/// A store uses it like this: [`get`](Self::get) first; on a miss take a
/// [`ticket`](Self::ticket), read with [`client_for`](Self::client_for)`(&ticket)` (the tracked
/// connection while the tier serves, the main one otherwise), then
/// [`insert`](Self::insert)`(ticket, key, value)`; after its own writes,
/// [`invalidate`](Self::invalidate). [`get_or_load`](Self::get_or_load) does all of it for one
/// key.
///
/// ```no_run
/// use fred::interfaces::KeysInterface as _;
/// use redtower_client::{NearCache, NearCacheConfig, Redis, RedisConfig};
///
/// # async fn run() -> Result<(), redtower_client::Error> {
/// let redis = Redis::new(RedisConfig::from_env()?)?;
/// let near: NearCache<String> = NearCache::new(&redis, NearCacheConfig::new("demo"), |v: &String| v.len())?;
/// let value = near
///     .get_or_load("rt:demo:{a}", |client| async move {
///         client.get::<Option<String>, _>("rt:demo:{a}").await.map_err(redtower_client::Error::from)
///     })
///     .await?;
/// # let _ = value;
/// # Ok(()) }
/// ```
pub struct NearCache<V> {
    shared: Arc<Shared<V>>,
}

struct Shared<V> {
    redis: Redis,
    tracked: Client,
    map: moka::sync::Cache<Arc<str>, V>,
    state: Arc<State>,
    config: NearCacheConfig,
    weigher: Arc<dyn Fn(&V) -> usize + Send + Sync>,
    /// Requests to the dispatcher: "answer once every push received so far is applied".
    /// Dropping the last handle closes it, which ends the dispatcher.
    sync: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl<V> Drop for Shared<V> {
    fn drop(&mut self) {
        let client = self.tracked.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

impl<V> Clone for NearCache<V> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<V> fmt::Debug for NearCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NearCache")
            .field("name", &self.shared.config.name)
            .field("ready", &self.is_ready())
            .field("disabled", &self.is_disabled())
            .field("entries", &self.shared.map.entry_count())
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> NearCache<V> {
    /// Builds the tier and its tracked connection, which connects in the background; the tier
    /// serves once tracking is on. `weigher` gives a value's size in bytes.
    ///
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// When the tracked client cannot be built.
    pub fn new(
        redis: &Redis,
        config: NearCacheConfig,
        weigher: impl Fn(&V) -> usize + Send + Sync + 'static,
    ) -> Result<Self> {
        let tracked = redis.tracked_client(config.push_buffer)?;
        let weigher: Arc<dyn Fn(&V) -> usize + Send + Sync> = Arc::new(weigher);
        let map = {
            let weigher = weigher.clone();
            let config = config.clone();
            moka::sync::Cache::builder()
                .max_capacity(config.max_bytes)
                .time_to_live(config.max_age)
                .weigher(move |k: &Arc<str>, v: &V| {
                    let bytes = (k.len() + weigher(v)) as u64 + ENTRY_OVERHEAD;
                    config.weight(bytes)
                })
                .build()
        };
        let state = Arc::new(State {
            name: config.name,
            epoch: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            disabled: AtomicBool::new(false),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            counters: Counters::default(),
            applied: watch::channel(0).0,
        });
        let (sync, sync_rx) = mpsc::unbounded_channel();
        let dispatcher = Dispatcher {
            client: tracked.clone(),
            map: map.clone(),
            state: state.clone(),
            sync: sync_rx,
            invalidations: tracked.invalidation_rx(),
            reconnects: tracked.reconnect_rx(),
            errors: tracked.error_rx(),
            changes: tracked.cluster_change_rx(),
            timeout: redis.command_timeout(),
        };
        // Every receiver exists before the first connection, so none of its events is missed.
        let _task = tracked.connect();
        tokio::spawn(dispatcher.run());
        Ok(Self {
            shared: Arc::new(Shared {
                redis: redis.clone(),
                tracked,
                map,
                state,
                config,
                weigher,
                sync,
            }),
        })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &NearCacheConfig {
        &self.shared.config
    }

    /// The value held for `key`, if the tier is serving and holds it.
    pub fn get(&self, key: &str) -> Option<V> {
        let state = &self.shared.state;
        if !state.ready.load(Ordering::Acquire) {
            state.counters.bypasses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let value = self.shared.map.get(key);
        // A flush that began after the lookup started may have missed this entry in the map's
        // view: serve only if the tier is still serving.
        if value.is_some() && state.ready.load(Ordering::Acquire) {
            state.counters.hits.fetch_add(1, Ordering::Relaxed);
            value
        } else {
            state.counters.misses.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Records the state a read of `key` starts from. Take it *before* sending the read.
    pub fn ticket(&self, key: &str) -> Ticket {
        let state = &self.shared.state;
        let stripe = state.stripe(key.as_bytes());
        // Generation and epoch first, readiness last: a ticket that saw "ready" also saw the
        // epoch of that readiness or an older one, which then fails the insert.
        let generation = state.stripes[stripe].load(Ordering::Acquire);
        let epoch = state.epoch.load(Ordering::Acquire);
        let ready = state.ready.load(Ordering::Acquire);
        Ticket {
            epoch,
            generation,
            stripe,
            ready,
        }
    }

    /// The connection a read under `ticket` goes through: the tracked one while the tier
    /// serves (so Redis tracks the key for this tier), the main one otherwise.
    pub fn client_for(&self, ticket: &Ticket) -> &Client {
        if ticket.ready {
            &self.shared.tracked
        } else {
            self.shared.redis.client()
        }
    }

    /// Stores `value`, read for `key` under `ticket`, unless anything invalidated the key or
    /// flushed the tier since the ticket was taken (or the value is over the size cap).
    /// Returns whether it was stored.
    pub fn insert(&self, ticket: Ticket, key: &str, value: V) -> bool {
        let state = &self.shared.state;
        if !ticket.ready {
            return false;
        }
        if (self.shared.weigher)(&value) > self.shared.config.max_entry_bytes {
            return false;
        }
        let unchanged = || {
            state.ready.load(Ordering::Acquire)
                && state.epoch.load(Ordering::Acquire) == ticket.epoch
                && state.stripes[ticket.stripe].load(Ordering::Acquire) == ticket.generation
        };
        if !unchanged() {
            state.counters.discarded.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let key: Arc<str> = Arc::from(key);
        self.shared.map.insert(key.clone(), value);
        // The dispatcher bumps before it removes: an invalidation that slipped in between the
        // check and the insert is seen here, and one that comes later removes the entry.
        if !unchanged() {
            // Removed between two bumps of its stripe, like a pushed invalidation: a stamp
            // taken while the value was in the map (whose reader may keep something derived
            // from it) ends here, and Redis may never push for this key again.
            let map = &self.shared.map;
            state.invalidate(key.as_bytes(), || map.invalidate(&key));
            state.counters.discarded.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        state.counters.inserts.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Drops `key` here, and makes any read of it in flight unable to store its result: for a
    /// store's own writes, whose push arrives only after the write's reply.
    pub fn invalidate(&self, key: &str) {
        let map = &self.shared.map;
        self.shared
            .state
            .invalidate(key.as_bytes(), || map.invalidate(key));
    }

    /// Drops every entry here, and makes every read in flight unable to store its result.
    pub fn invalidate_all(&self) {
        let map = &self.shared.map;
        self.shared.state.invalidate_all(|| map.invalidate_all());
    }

    /// Counts, in [`NearCacheStats::hits`], a hit served by a value derived from this tier
    /// and kept under a current [`Stamp`] (which [`get`](Self::get) did not see).
    pub fn count_derived_hit(&self) {
        self.shared
            .state
            .counters
            .hits
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A [`Stamp`] of `keys`, to take *before* reading them (through this tier or
    /// [`client_for`](Self::client_for)); `None` while the tier does not serve. Whatever is
    /// derived from those reads may be served while the stamp [is
    /// current](Stamp::is_current).
    ///
    /// ```no_run
    /// use redtower_client::{NearCache, NearCacheConfig, Redis, RedisConfig};
    ///
    /// # async fn run() -> Result<(), redtower_client::Error> {
    /// let redis = Redis::new(RedisConfig::from_env()?)?;
    /// let near: NearCache<String> = NearCache::new(&redis, NearCacheConfig::new("demo"), |v: &String| v.len())?;
    /// let stamp = near.stamp(["rt:demo:{a}"]);
    /// let raw = near
    ///     .get_or_load("rt:demo:{a}", |client| async move {
    ///         use fred::interfaces::KeysInterface as _;
    ///         client.get::<Option<String>, _>("rt:demo:{a}").await.map_err(redtower_client::Error::from)
    ///     })
    ///     .await?;
    /// // Something derived from the value, costly to derive again.
    /// let parsed: Option<usize> = raw.map(|v| v.len());
    /// if let Some(stamp) = stamp {
    ///     // Later: serve `parsed` while nothing changed the key.
    ///     if stamp.is_current() {
    ///         println!("still {parsed:?}");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stamp<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Option<Stamp> {
        let state = &self.shared.state;
        // Generations and epoch first, readiness last, as for a ticket.
        let stripes = keys
            .into_iter()
            .map(|key| {
                let stripe = state.stripe(key.as_bytes());
                (stripe, state.stripes[stripe].load(Ordering::Acquire))
            })
            .collect();
        let epoch = state.epoch.load(Ordering::Acquire);
        state.ready.load(Ordering::Acquire).then(|| Stamp {
            state: state.clone(),
            epoch,
            stripes,
        })
    }

    /// The value of `key`: from the tier, else read by `load` (given the connection to read
    /// with) and stored if nothing raced the read. `Ok(None)` (the key does not exist) is not
    /// stored.
    ///
    /// # Errors
    ///
    /// `load`'s error.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &str,
        load: F,
    ) -> std::result::Result<Option<V>, E>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
    {
        if let Some(value) = self.get(key) {
            return Ok(Some(value));
        }
        let ticket = self.ticket(key);
        let value = load(self.client_for(&ticket).clone()).await?;
        if let Some(value) = &value {
            self.insert(ticket, key, value.clone());
        }
        Ok(value)
    }

    /// The counters so far.
    pub fn stats(&self) -> NearCacheStats {
        let c = &self.shared.state.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.shared.map.run_pending_tasks();
        NearCacheStats {
            hits: load(&c.hits),
            misses: load(&c.misses),
            bypasses: load(&c.bypasses),
            inserts: load(&c.inserts),
            discarded: load(&c.discarded),
            invalidations: load(&c.invalidations),
            flushes: load(&c.flushes),
            entries: self.shared.map.entry_count(),
            weighted_bytes: self.shared.map.weighted_size(),
        }
    }

    /// Whether `key` is held now (serving or not); for tests and benchmarks.
    pub fn contains(&self, key: &str) -> bool {
        self.shared.map.contains_key(key)
    }
}

impl<V> NearCache<V> {
    /// Whether the tier serves: tracking is on for the current connections.
    pub fn is_ready(&self) -> bool {
        self.shared.state.ready.load(Ordering::Acquire)
    }

    /// Whether tracking is impossible against this server (no RESP3, no `CLIENT TRACKING`, or
    /// refused): every read goes to Redis for the life of this tier.
    pub fn is_disabled(&self) -> bool {
        self.shared.state.disabled.load(Ordering::Acquire)
    }

    /// Waits until the tier serves, or is disabled, or `timeout` passes; returns whether it
    /// serves.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut applied = self.shared.state.applied.subscribe();
        let wait = async {
            loop {
                if self.is_ready() || self.is_disabled() {
                    return;
                }
                if applied.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.is_ready()
    }

    /// Waits until every invalidation Redis sent this tier before this call is applied: one
    /// `PING` on each tracked connection (its reply follows, on the same socket, every push
    /// sent before it), then the dispatcher drains what it has received. After a write's reply
    /// and a `sync`, this tier no longer holds what the write changed: the "one invalidation
    /// delivery" bound, as an event.
    ///
    /// # Errors
    ///
    /// When a `PING` fails, or the tier is gone.
    pub async fn sync(&self) -> Result<()> {
        let client = &self.shared.tracked;
        let options = Options {
            max_attempts: Some(1),
            ..Options::default()
        };
        if client.is_clustered() {
            let nodes = client
                .cached_cluster_state()
                .map(|s| s.unique_primary_nodes())
                .unwrap_or_default();
            for node in nodes {
                client
                    .with_options(&options)
                    .with_cluster_node(node)
                    .ping::<()>(None)
                    .await?;
            }
        } else {
            client.with_options(&options).ping::<()>(None).await?;
        }
        let (tx, rx) = oneshot::channel();
        self.shared
            .sync
            .send(tx)
            .map_err(|_| Error::reply("the near-cache dispatcher has stopped"))?;
        rx.await
            .map_err(|_| Error::reply("the near-cache dispatcher has stopped"))
    }

    /// A receiver that changes each time the dispatcher applied something (a push, a flush, a
    /// readiness change): for waiting on an invalidation without sleeping.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.state.applied.subscribe()
    }

    /// The tracked connection itself: for tests that cut it, and for reads a store makes
    /// outside [`client_for`](Self::client_for).
    pub fn tracked_client(&self) -> &Client {
        &self.shared.tracked
    }
}

/// How long after a connection error the dispatcher turns tracking on again if no reconnect
/// event came first.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// The one task that applies pushes and connection events, in the order it receives them.
struct Dispatcher<V> {
    client: Client,
    map: moka::sync::Cache<Arc<str>, V>,
    state: Arc<State>,
    sync: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    invalidations: tokio::sync::broadcast::Receiver<fred::types::client::Invalidation>,
    reconnects: tokio::sync::broadcast::Receiver<Server>,
    errors: tokio::sync::broadcast::Receiver<(fred::error::Error, Option<Server>)>,
    changes: tokio::sync::broadcast::Receiver<Vec<fred::types::ClusterStateChange>>,
    timeout: Duration,
}

/// Whether an error means tracking can never work against this server.
fn is_permanent(error: &fred::error::Error) -> bool {
    // A connection that drops or stalls (a cut in the middle of a handshake included) is never
    // a reason to turn the tier off for good: it retries.
    if matches!(
        error.kind(),
        fred::error::ErrorKind::IO
            | fred::error::ErrorKind::Timeout
            | fred::error::ErrorKind::Canceled
    ) {
        return false;
    }
    let text = error.details().to_ascii_lowercase();
    text.contains("unknown command")
        || text.contains("unknown subcommand")
        || text.contains("noproto")
        || text.contains("requires resp3")
        || text.contains("protocol version")
}

impl<V: Clone + Send + Sync + 'static> Dispatcher<V> {
    async fn run(mut self) {
        // Tracking is (re-)enabled when this is set and the connection is up; the first
        // connection's own reconnect event sets it.
        let mut enable = false;
        let mut retry = tokio::time::Instant::now();
        loop {
            let wake = tokio::time::sleep_until(retry);
            tokio::select! {
                biased;
                request = self.sync.recv() => match request {
                    Some(reply) => {
                        self.drain();
                        let _ = reply.send(());
                    }
                    None => return,
                },
                event = self.errors.recv() => match event {
                    Ok((error, server)) => {
                        if is_permanent(&error) {
                            self.disable(&error);
                            return;
                        }
                        tracing::debug!(target: "redtower::near", cache = self.state.name, %error, ?server, "tracked connection error: flushing");
                        self.flush(false);
                        // Tracking comes back with the reconnect's event, which follows (the
                        // policy retries forever). Not at once: fred replays commands queued
                        // while the connection is down on the new connection *before* it reports
                        // the reconnect, so tracking turned on now would serve until that event
                        // flushed it again. The late retry covers an error reported after its
                        // reconnect.
                        enable = true;
                        retry = tokio::time::Instant::now() + RETRY_AFTER_ERROR;
                    }
                    Err(RecvError::Lagged(_)) => { self.flush(false); enable = true; }
                    Err(RecvError::Closed) => return,
                },
                event = self.reconnects.recv() => match event {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        self.flush(false);
                        enable = true;
                        retry = tokio::time::Instant::now();
                    }
                    Err(RecvError::Closed) => return,
                },
                event = self.changes.recv() => match event {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        self.flush(false);
                        enable = true;
                        retry = tokio::time::Instant::now();
                    }
                    Err(RecvError::Closed) => return,
                },
                push = self.invalidations.recv() => match push {
                    Ok(push) => self.apply(&push),
                    // Lost pushes: nothing tells which keys they named.
                    Err(RecvError::Lagged(_)) => self.flush(true),
                    Err(RecvError::Closed) => return,
                },
                () = wake, if enable => {
                    match self.try_enable().await {
                        Ok(true) => enable = false,
                        Ok(false) => retry = tokio::time::Instant::now() + Duration::from_millis(50),
                        Err(error) => {
                            self.disable(&error);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Applies every push already received.
    fn drain(&mut self) {
        loop {
            match self.invalidations.try_recv() {
                Ok(push) => self.apply(&push),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => self.flush(true),
                Err(_) => return,
            }
        }
    }

    fn apply(&self, push: &fred::types::client::Invalidation) {
        for key in &push.keys {
            // Bumps around the removal: see `NearCache::insert` and `Stamp`.
            self.state.invalidate(key.as_bytes(), || {
                if let Some(key) = key.as_str() {
                    self.map.invalidate(key);
                }
            });
        }
        self.state
            .counters
            .invalidations
            .fetch_add(push.keys.len() as u64, Ordering::Relaxed);
        self.state.note_applied();
    }

    /// Stops serving (unless `keep_serving`: tracking is still on, only pushes were lost),
    /// voids every read in flight and clears the map.
    fn flush(&self, keep_serving: bool) {
        if !keep_serving {
            self.state.ready.store(false, Ordering::Release);
        }
        self.state.invalidate_all(|| self.map.invalidate_all());
        self.state.counters.flushes.fetch_add(1, Ordering::Relaxed);
        self.state.note_applied();
    }

    /// Turns tracking on for every current connection. `Ok(false)`: not now (not connected,
    /// or a transient error), try again.
    async fn try_enable(&self) -> std::result::Result<bool, fred::error::Error> {
        if self.client.state() != ClientState::Connected {
            return Ok(false);
        }
        let start = self
            .client
            .start_tracking(Vec::<String>::new(), false, false, false, false);
        match tokio::time::timeout(self.timeout, start).await {
            Ok(Ok(())) => {
                // Reads started before tracking was confirmed cannot insert.
                self.state.epoch.fetch_add(1, Ordering::AcqRel);
                self.state.ready.store(true, Ordering::Release);
                self.state.note_applied();
                tracing::debug!(target: "redtower::near", cache = self.state.name, "tracking on: serving");
                Ok(true)
            }
            Ok(Err(error)) if is_permanent(&error) => Err(error),
            Ok(Err(error)) => {
                tracing::debug!(target: "redtower::near", cache = self.state.name, %error, "enabling tracking failed; retrying");
                Ok(false)
            }
            Err(_) => Ok(false),
        }
    }

    fn disable(&self, error: &fred::error::Error) {
        self.flush(false);
        self.state.disabled.store(true, Ordering::Release);
        self.state.note_applied();
        tracing::warn!(
            target: "redtower::near",
            cache = self.state.name,
            %error,
            "client-side caching unavailable (the server needs RESP3 and CLIENT TRACKING, Redis >= 6): the near-cache is off, every read goes to Redis"
        );
        let client = self.client.clone();
        tokio::spawn(async move {
            let _ = client.quit().await;
        });
    }
}
