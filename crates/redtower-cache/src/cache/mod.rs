//! [`Cache`]: the shared core. Lookups (L1, then the store), single-flight fills (per instance
//! and across instances through the store's fill lock), background refreshes, invalidation,
//! the circuit breaker and statistics.
//!
//! Every `impl Cache` is in this folder, one concern per file: [`builder`] (settings),
//! [`aside`] (the cache-aside API), [`read`] (lookups and validation), [`flight`] (one fill
//! per key in this instance), [`fill`] (fills across instances and refreshes), [`guard`]
//! (store calls through the circuit breaker; fail-open), [`stats`].

use std::{
    fmt,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use redtower_client::{CircuitBreaker, Stamp, breaker::Breaker};

use crate::{
    CacheStore, Result,
    envelope::{Entry, FLAG_NO_STALE},
    key::Key,
    store::EntryKey,
};

mod aside;
mod bans;
mod builder;
mod fill;
mod flight;
mod guard;
mod read;
mod stats;
mod write;

pub use aside::Fetch;
pub use builder::CacheBuilder;
pub use stats::CacheStats;

/// A cache over a [`CacheStore`]: the core shared by [`Cache::get_or_fetch`] and the
/// [`ResponseCacheLayer`](crate::ResponseCacheLayer).
///
/// Cloning is cheap (one `Arc`); clones share the store, the optional L1, the in-flight fills
/// and the statistics. Build one per application (per store) and clone it into layers and
/// handlers. See the [crate docs](crate) for examples.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn CacheStore>,
    l1: Option<moka::sync::Cache<Vec<u8>, L1Entry>>,
    /// Decoded entries read through the store's tracked tier, each served while its stamp is
    /// current (see [`CacheStore::tracked_tier`]).
    tracked: Option<moka::sync::Cache<Vec<u8>, Tracked>>,
    flights: flight::Flights,
    /// The entry last decoded from the store, with its bytes (see [`read::LastDecoded`]).
    last_decoded: read::LastDecoded,
    settings: Settings,
    breaker: Breaker,
    /// Whether "not reachable since start" was logged (once, until the store answers).
    unreachable_logged: AtomicBool,
    stats: stats::Stats,
}

/// An L1 value: the entry, and its store key (for invalidation by group).
#[derive(Clone)]
struct L1Entry {
    entry: Arc<Entry>,
    key: Arc<EntryKey>,
}

/// A decoded entry of the tracked tier: served while nothing changed the store keys it was
/// read from.
#[derive(Clone)]
struct Tracked {
    entry: Arc<Entry>,
    stamp: Stamp,
}

/// The settings of a [`Cache`], set through its [`CacheBuilder`].
#[derive(Debug, Clone)]
struct Settings {
    name: &'static str,
    lock_ttl: Duration,
    lock_wait: Duration,
    poll_min: Duration,
    poll_max: Duration,
    breaker: CircuitBreaker,
    prefix_purge: bool,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("store", &self.inner.store)
            .field("l1", &self.inner.l1.is_some())
            .field("settings", &self.inner.settings)
            .finish()
    }
}

/// How an entry stands at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    Fresh,
    /// Within the stale-while-revalidate window.
    Stale,
    /// Only within the stale-if-error window.
    ErrorOnly,
    Dead,
}

pub(crate) fn freshness(e: &Entry, now: u64) -> Freshness {
    let no_stale = e.flags & FLAG_NO_STALE != 0;
    if now < e.fresh_until {
        Freshness::Fresh
    } else if !no_stale && now < e.stale_until {
        Freshness::Stale
    } else if !no_stale && now < e.error_until {
        Freshness::ErrorOnly
    } else {
        Freshness::Dead
    }
}

/// What a fill produced, besides the value returned to its own caller.
pub(crate) enum Outcome {
    /// Store it for this long and share it with waiters.
    Store(Entry, Duration),
    /// Store it for this long under `at` (a response that varies on request headers the
    /// fill's key lacked, or no longer does), and `record` (the URI's Vary record) under its
    /// key; shared with waiters only when `at` is the fill's key.
    StoreAt(Box<StoreAt>),
    /// Share it with this instance's waiters, but do not store it.
    Share(Entry),
    /// Neither (errors, private responses): waiters fetch for themselves.
    Nothing,
}

/// See [`Outcome::StoreAt`].
pub(crate) struct StoreAt {
    pub(crate) entry: Entry,
    pub(crate) ttl: Duration,
    pub(crate) at: Key,
    pub(crate) record: Option<(Key, Entry)>,
}

/// How a request got its value from [`Cache::fill`].
pub(crate) enum Filled<R, F> {
    /// This request ran the fetcher.
    Led(R),
    /// Another request's fill (here or on another instance) produced this entry; the unused
    /// fetcher is handed back.
    Shared(Arc<Entry>, F),
    /// The fill it waited for produced nothing shareable: run the fetcher yourself.
    Own(F),
}

impl Cache {
    /// The longest time an entry (or a lock, or a tag) is kept in the store: 365 days.
    /// Longer lifetimes, from a route's settings or from a response's headers
    /// (`max-age=18446744073709551615`, a far `Expires`), are cut to it.
    pub const MAX_TTL: Duration = crate::store::MAX_TTL;

    /// Puts an entry into the L1 (if there is one).
    fn l1_insert(&self, key: &Key, entry: &Arc<Entry>) {
        if let Some(l1) = &self.inner.l1 {
            let value = L1Entry {
                entry: entry.clone(),
                key: Arc::new(key.entry().clone()),
            };
            l1.insert(key.canonical().to_vec(), value);
        }
    }

    /// A cache over `store` with the default settings (see [`CacheBuilder`]).
    pub fn new(store: impl CacheStore) -> Self {
        Self::builder(store).build()
    }

    /// A builder for a cache over `store`.
    pub fn builder(store: impl CacheStore) -> CacheBuilder {
        CacheBuilder {
            store: Arc::new(store),
            l1: None,
            settings: Settings {
                name: "default",
                lock_ttl: Duration::from_secs(5),
                lock_wait: Duration::from_secs(3),
                poll_min: Duration::from_millis(10),
                poll_max: Duration::from_millis(100),
                breaker: CircuitBreaker::default(),
                prefix_purge: false,
            },
        }
    }

    /// The store.
    pub fn store(&self) -> &dyn CacheStore {
        &*self.inner.store
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.store.now_ms()
    }

    pub(crate) fn name(&self) -> &'static str {
        self.inner.settings.name
    }

    /// Invalidates one group (a cache-aside key's entry, or every variant of a URI), in the
    /// store and in this instance's L1.
    pub(crate) async fn invalidate_group(&self, group: &str) -> Result<()> {
        self.invalidate_l1_group(group);
        self.guard(self.inner.store.invalidate(group)).await
    }

    /// Drops one group's entries from this instance's L1 (if there is one).
    pub(crate) fn invalidate_l1_group(&self, group: &str) {
        if let Some(l1) = &self.inner.l1 {
            let group = group.to_owned();
            let _ = l1.invalidate_entries_if(move |_, v| v.key.group() == group);
        }
    }

    /// Invalidates every entry filled under `tag`, on every instance, in O(1): one delete of the
    /// tag's generation. Entries are dropped lazily (their next read is a miss). This
    /// instance's L1 is cleared of tagged entries at once; other instances' L1 entries live at
    /// most the L1 TTL. Other instances' tracked tiers
    /// ([`RedisStore::near_cache`](crate::RedisStore::near_cache)) drop the tag's generation
    /// as soon as Redis' invalidation push reaches them, so their next read of a tagged entry
    /// is a miss.
    ///
    /// # Errors
    ///
    /// When the store fails: the invalidation may not have happened.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        if let Some(l1) = &self.inner.l1 {
            let tag = tag.to_owned();
            let _ =
                l1.invalidate_entries_if(move |_, v| v.entry.tags.iter().any(|(t, _)| *t == tag));
        }
        self.inner.store.bump_tag(tag).await
    }
}
