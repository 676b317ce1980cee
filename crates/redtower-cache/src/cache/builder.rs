//! [`CacheBuilder`]: the settings of a [`Cache`], each with a documented default.

use std::{
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use super::{Cache, Config, Inner, breaker::Breaker, stats::Stats};
use crate::CacheStore;

/// Builds a [`Cache`]. Every setting has a documented default.
#[derive(Debug)]
#[must_use]
pub struct CacheBuilder {
    pub(super) store: Arc<dyn CacheStore>,
    pub(super) l1: Option<(u64, Duration)>,
    pub(super) config: Config,
}

impl CacheBuilder {
    /// Adds an in-process L1 (moka) in front of the store, holding up to `max_entries` decoded
    /// entries for at most `ttl`. An L1 hit costs no round trip; in exchange an invalidation
    /// made by another instance (or a newer fill) may be seen up to `ttl` late, so keep it
    /// short. Invalidations made through this `Cache` clear its own L1 at once. Defaults to no
    /// L1.
    ///
    /// # Panics
    ///
    /// If `ttl` is zero or longer than 60 seconds (a programmer error).
    pub fn l1(mut self, max_entries: u64, ttl: Duration) -> Self {
        assert!(
            !ttl.is_zero() && ttl <= Duration::from_secs(60),
            "the L1 TTL must be between 1 ms and 60 s"
        );
        self.l1 = Some((max_entries, ttl));
        self
    }

    /// The `cache` label of this cache's metrics. Defaults to `"default"`.
    pub fn name(mut self, name: &'static str) -> Self {
        self.config.name = name;
        self
    }

    /// How long a fill lock is held at most (the longest fetch you expect). Another instance
    /// may fill after it expires. Defaults to 5 s.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.config.lock_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// How long a request waits for another instance's fill before fetching itself.
    /// Defaults to 3 s.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.config.lock_wait = wait;
        self
    }

    /// The interval between checks while waiting for another instance's fill: starts at `min`
    /// and grows by half up to `max`, with jitter. Both are kept between 1 ms and 60 s.
    /// Defaults to 10 ms to 100 ms.
    pub fn poll_interval(mut self, min: Duration, max: Duration) -> Self {
        let ceiling = Duration::from_secs(60);
        self.config.poll_min = min.clamp(Duration::from_millis(1), ceiling);
        self.config.poll_max = max.clamp(self.config.poll_min, ceiling);
        self
    }

    /// After the store fails with an outage (timeout, unreachable), it is skipped for this long
    /// (every lookup is a miss, the fetcher runs) before it is tried again. Defaults to 1 s.
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.config.breaker_cooldown = cooldown;
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
        Cache {
            inner: Arc::new(Inner {
                store: self.store,
                l1,
                flights: Mutex::default(),
                next_flight: AtomicU64::new(1),
                config: self.config,
                breaker: Breaker::default(),
                stats: Stats::default(),
            }),
        }
    }
}
