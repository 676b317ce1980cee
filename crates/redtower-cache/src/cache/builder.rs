//! [`CacheBuilder`]: the settings of a [`Cache`], each with a documented default.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use redtower_client::{CircuitBreaker, breaker::Breaker};

use super::{Cache, Inner, Settings, stats::Stats};
use crate::CacheStore;

/// The longest L1 TTL: 60 s.
const MAX_L1_TTL: Duration = Duration::from_secs(60);

/// Builds a [`Cache`]. Every setting has a documented default.
#[derive(Debug)]
#[must_use]
pub struct CacheBuilder {
    pub(super) store: Arc<dyn CacheStore>,
    pub(super) l1: Option<(u64, Duration)>,
    pub(super) settings: Settings,
}

impl CacheBuilder {
    /// Adds an in-process L1 (moka) in front of the store, holding up to `max_entries` decoded
    /// entries for at most `ttl`, kept between 1 ms and 60 s. An L1 hit costs no round trip; in
    /// exchange an invalidation made by another instance (or a newer fill) may be seen up to
    /// `ttl` late, so keep it short. Invalidations made through this `Cache` clear its own L1
    /// at once. Defaults to no L1.
    ///
    /// With a Redis store, prefer its coherent tier
    /// ([`RedisStore::near_cache`](crate::RedisStore::near_cache)): it is invalidated by Redis
    /// itself, so another instance's change is seen at once rather than one TTL late. Keep
    /// this L1 for servers without client tracking (RESP2-only, tracking disabled).
    pub fn l1(mut self, max_entries: u64, ttl: Duration) -> Self {
        self.l1 = Some((max_entries, ttl.clamp(Duration::from_millis(1), MAX_L1_TTL)));
        self
    }

    /// The `cache` label of this cache's metrics. Defaults to `"default"`.
    pub fn name(mut self, name: &'static str) -> Self {
        self.settings.name = name;
        self
    }

    /// How long a fill lock is held at most (the longest fetch you expect). Another instance
    /// may fill after it expires. Defaults to 5 s.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.settings.lock_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// How long a request waits for another instance's fill before fetching itself.
    /// Defaults to 3 s.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.settings.lock_wait = wait;
        self
    }

    /// The interval between checks while waiting for another instance's fill: starts at `min`
    /// and grows by half up to `max`, with jitter. Both are kept between 1 ms and 60 s.
    /// Defaults to 10 ms to 100 ms.
    pub fn poll_interval(mut self, min: Duration, max: Duration) -> Self {
        let ceiling = Duration::from_secs(60);
        self.settings.poll_min = min.clamp(Duration::from_millis(1), ceiling);
        self.settings.poll_max = max.clamp(self.settings.poll_min, ceiling);
        self
    }

    /// The circuit breaker in front of the store: after `failures` outages in a row
    /// (timeouts, a lost connection) of a store that had connected, the store is skipped for
    /// `cool_down` (every lookup is a miss and the fetcher runs, with no store latency), or
    /// until the Redis client reconnects; then one operation probes it. A store that never
    /// connected since the process started does not count: requests wait for its first
    /// connection, then fail open without opening the breaker.
    ///
    /// Defaults to [`CircuitBreaker::default`]: 5 outages in a row, 1 s cool-down. One slow
    /// command (a large entry) does not send every route to the origin; a store that is down
    /// fails those few at once (the connection is gone), and a store that stopped answering
    /// opens the breaker within one [timeout](crate::RedisStore::timeout) under load.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redtower_cache::{Cache, CircuitBreaker, MemoryStore};
    ///
    /// let cache = Cache::builder(MemoryStore::new())
    ///     .circuit_breaker(CircuitBreaker::default().failures(1).cool_down(Duration::from_secs(5)))
    ///     .build();
    /// # let _ = cache;
    /// ```
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.settings.breaker = breaker;
        self
    }

    /// Whether lookups honour prefix bans, so that
    /// [`Cache::invalidate_prefix`](crate::Cache::invalidate_prefix) works. Turn it on for
    /// every instance sharing the store (an instance without it keeps serving banned entries).
    ///
    /// Cost on a hit from the store: on Redis, one more small key (the ban list's version, a
    /// few bytes) in the same round trip as the entry (the coalesced `MGET`, or the tracked
    /// near-cache, where it usually costs nothing), a check of the entry's key against each
    /// ban, and, once per change of the list per instance, one read of the list. Off, a
    /// lookup does no ban work at all. L1 hits ([`l1`](Self::l1)) never check bans: another
    /// instance's purge reaches this L1 after at most its TTL.
    ///
    /// Defaults to off.
    pub fn prefix_purge(mut self, on: bool) -> Self {
        self.settings.prefix_purge = on;
        self
    }

    /// Builds the cache.
    pub fn build(self) -> Cache {
        let l1 = self.l1.map(|(max, ttl)| {
            moka::sync::Cache::builder()
                .max_capacity(max)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build()
        });
        // Weighed like the tier's raw values (the entry's body and headers), in a budget the
        // size of the tier's: the decoded copy of a hot entry costs about what its raw bytes do.
        let tracked = self.store.tracked_tier().map(|tier| {
            moka::sync::Cache::builder()
                .max_capacity(tier.bytes())
                .time_to_live(tier.age())
                .weigher(move |k: &Vec<u8>, v: &super::Tracked| {
                    tier.weight((k.len() + v.entry.encoded_len()) as u64 + 128)
                })
                .build()
        });
        Cache {
            inner: Arc::new(Inner {
                store: self.store,
                l1,
                tracked,
                flights: Default::default(),
                last_decoded: Default::default(),
                breaker: Breaker::new(self.settings.breaker),
                settings: self.settings,
                unreachable_logged: AtomicBool::new(false),
                stats: Stats::default(),
            }),
        }
    }
}
