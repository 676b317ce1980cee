//! [`Cache`]: the shared core. Lookups (L1, then the store), single-flight fills (per instance
//! and across instances through the store's fill lock), background refreshes, invalidation,
//! the circuit breaker and statistics.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use crate::{
    CacheStore, Error, Result,
    envelope::{Entry, FLAG_NO_STALE},
    store::{EntryKey, LockToken},
};

/// A cache over a [`CacheStore`]: the core shared by [`Cache::get_or_fetch`] and the
/// [`ResponseCacheLayer`](crate::ResponseCacheLayer).
///
/// Cloning is cheap (one `Arc`); clones share the store, the optional L1, the in-flight fills
/// and the statistics. Build one per application (per store) and clone it into layers and
/// handlers. See the [crate docs](crate) for examples.
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn CacheStore>,
    l1: Option<moka::sync::Cache<EntryKey, Arc<Entry>>>,
    flights: Mutex<HashMap<EntryKey, (u64, FlightRx)>>,
    next_flight: AtomicU64,
    pub(crate) config: Config,
    breaker: Breaker,
    pub(crate) stats: Stats,
}

/// What a fill publishes: `None` until done, then the shared entry (or `None`: not shareable).
type FlightRx = watch::Receiver<Option<Option<Arc<Entry>>>>;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) name: &'static str,
    pub(crate) lock_ttl: Duration,
    pub(crate) lock_wait: Duration,
    pub(crate) poll_min: Duration,
    pub(crate) poll_max: Duration,
    pub(crate) breaker_cooldown: Duration,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("store", &self.inner.store)
            .field("l1", &self.inner.l1.is_some())
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Builds a [`Cache`]. Every setting has a documented default.
#[derive(Debug)]
#[must_use]
pub struct CacheBuilder {
    store: Arc<dyn CacheStore>,
    l1: Option<(u64, Duration)>,
    config: Config,
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
    /// and grows by half up to `max`, with jitter. Defaults to 10 ms to 100 ms.
    pub fn poll_interval(mut self, min: Duration, max: Duration) -> Self {
        self.config.poll_min = min.max(Duration::from_millis(1));
        self.config.poll_max = max.max(self.config.poll_min);
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

/// Counters of what the cache did, for tests and dashboards (the same events also go to the
/// `metrics` facade, labelled by cache name and route).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Fresh entries served (L1 or store).
    pub hits: u64,
    /// Of `hits` and `stale`, how many came from the L1.
    pub l1_hits: u64,
    /// Stale entries served (while a refresh runs, or because the origin failed).
    pub stale: u64,
    /// Lookups that found nothing usable.
    pub misses: u64,
    /// Fetcher / handler runs (leaders, background refreshes and fail-open fetches).
    pub fetches: u64,
    /// Background refreshes started.
    pub refreshes: u64,
    /// Requests served by another request's fill in this instance.
    pub coalesced: u64,
    /// Requests served by a fill that another instance made while they waited.
    pub remote_fills: u64,
    /// Requests that gave up waiting for another instance and fetched themselves.
    pub lock_timeouts: u64,
    /// Store failures on the request path that were ignored (fail-open).
    pub fail_open: u64,
    /// Entries in the store that could not be decoded (treated as misses and overwritten).
    pub corrupt: u64,
    /// Entries written to the store.
    pub stored: u64,
    /// Requests that bypassed the cache (HTTP: credentials, `no-store`, methods, ...).
    pub bypass: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) hits: AtomicU64,
    pub(crate) l1_hits: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) fetches: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) remote_fills: AtomicU64,
    pub(crate) lock_timeouts: AtomicU64,
    pub(crate) fail_open: AtomicU64,
    pub(crate) corrupt: AtomicU64,
    pub(crate) stored: AtomicU64,
    pub(crate) bypass: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Default)]
struct Breaker {
    open_until: Mutex<Option<Instant>>,
    open: AtomicBool,
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
    /// Share it with this instance's waiters, but do not store it.
    Share(Entry),
    /// Neither (errors, private responses): waiters fetch for themselves.
    Nothing,
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

struct FlightGuard {
    cache: Arc<Inner>,
    key: EntryKey,
    id: u64,
    tx: watch::Sender<Option<Option<Arc<Entry>>>>,
}

impl FlightGuard {
    fn publish(&self, entry: Option<Arc<Entry>>) {
        self.tx.send_replace(Some(entry));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut flights = lock(&self.cache.flights);
        if flights.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            flights.remove(&self.key);
        }
    }
}

/// Releases a fill lock in the background if the fill is dropped (cancelled) before it
/// finished, so other instances do not wait for the lock to expire.
struct Unlocker {
    store: Arc<dyn CacheStore>,
    key: EntryKey,
    token: Option<LockToken>,
}

impl Drop for Unlocker {
    fn drop(&mut self) {
        if let (Some(token), Ok(rt)) = (self.token.take(), tokio::runtime::Handle::try_current()) {
            let store = self.store.clone();
            let key = self.key.clone();
            rt.spawn(async move {
                let _ = store.unlock(&key, &token).await;
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Role {
    Leader(FlightGuard),
    Waiter(FlightRx),
}

impl Cache {
    /// A cache over `store` with the default settings (see [`CacheBuilder`]).
    pub fn new(store: impl CacheStore) -> Self {
        Self::builder(store).build()
    }

    /// A builder for a cache over `store`.
    pub fn builder(store: impl CacheStore) -> CacheBuilder {
        CacheBuilder {
            store: Arc::new(store),
            l1: None,
            config: Config {
                name: "default",
                lock_ttl: Duration::from_secs(5),
                lock_wait: Duration::from_secs(3),
                poll_min: Duration::from_millis(10),
                poll_max: Duration::from_millis(100),
                breaker_cooldown: Duration::from_secs(1),
            },
        }
    }

    /// The store.
    pub fn store(&self) -> &dyn CacheStore {
        &*self.inner.store
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let s = &self.inner.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: g(&s.hits),
            l1_hits: g(&s.l1_hits),
            stale: g(&s.stale),
            misses: g(&s.misses),
            fetches: g(&s.fetches),
            refreshes: g(&s.refreshes),
            coalesced: g(&s.coalesced),
            remote_fills: g(&s.remote_fills),
            lock_timeouts: g(&s.lock_timeouts),
            fail_open: g(&s.fail_open),
            corrupt: g(&s.corrupt),
            stored: g(&s.stored),
            bypass: g(&s.bypass),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.store.now_ms()
    }

    pub(crate) fn name(&self) -> &'static str {
        self.inner.config.name
    }

    /// Invalidates one group (a cache-aside key's entry, or every variant of a URI), in the
    /// store and in this instance's L1.
    pub(crate) async fn invalidate_group(&self, group: &str) -> Result<()> {
        if let Some(l1) = &self.inner.l1 {
            let group = group.to_owned();
            let _ = l1.invalidate_entries_if(move |k, _| k.group() == group);
        }
        self.guard(self.inner.store.invalidate(group)).await
    }

    /// Invalidates every entry filled under `tag`, on every instance, in O(1): one delete of the
    /// tag's generation. Entries are dropped lazily (their next read is a miss). This
    /// instance's L1 is cleared of tagged entries at once; other instances' L1 entries live at
    /// most the L1 TTL.
    ///
    /// # Errors
    ///
    /// When the store fails: the invalidation may not have happened.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        if let Some(l1) = &self.inner.l1 {
            let tag = tag.to_owned();
            let _ = l1.invalidate_entries_if(move |_, e| e.tags.iter().any(|(t, _)| *t == tag));
        }
        self.inner.store.bump_tag(tag).await
    }

    /// Runs a store operation through the circuit breaker.
    pub(crate) async fn guard<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        let b = &self.inner.breaker;
        if b.open.load(Ordering::Acquire) {
            let until = *lock(&b.open_until);
            match until {
                Some(t) if Instant::now() < t => return Err(Error::CircuitOpen),
                _ => {}
            }
        }
        let result = op.await;
        match &result {
            Ok(_) => {
                if b.open.swap(false, Ordering::AcqRel) {
                    tracing::info!(target: "redtower::cache", cache = self.name(), "cache store is back");
                }
            }
            Err(e) if e.is_outage() => {
                *lock(&b.open_until) = Some(Instant::now() + self.inner.config.breaker_cooldown);
                if !b.open.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        target: "redtower::cache",
                        cache = self.name(),
                        error = %e,
                        "cache store unavailable; failing open (requests go to the origin)"
                    );
                }
            }
            Err(_) => {}
        }
        result
    }

    fn fail_open(&self, op: &'static str, e: &Error) {
        bump(&self.inner.stats.fail_open);
        metrics::counter!("redtower_cache_fail_open_total", "cache" => self.name(), "op" => op)
            .increment(1);
        tracing::debug!(target: "redtower::cache", cache = self.name(), redis.op = op, error = %e, "cache store failed; failing open");
    }

    /// Reads and validates an entry: L1 first, then the store (with the tags' generations
    /// read concurrently). Undecodable, colliding or invalidated entries are misses. Store
    /// failures are misses too (fail-open, counted).
    pub(crate) async fn read(
        &self,
        key: &EntryKey,
        digest: &[u8; 32],
        tags: &[String],
    ) -> Option<Arc<Entry>> {
        self.read_with(key, digest, tags, true).await
    }

    async fn read_with(
        &self,
        key: &EntryKey,
        digest: &[u8; 32],
        tags: &[String],
        use_l1: bool,
    ) -> Option<Arc<Entry>> {
        if let Some(l1) = self.inner.l1.as_ref().filter(|_| use_l1) {
            if let Some(e) = l1.get(key) {
                if e.key_digest == *digest {
                    bump(&self.inner.stats.l1_hits);
                    return Some(e);
                }
            }
        }
        let store = &self.inner.store;
        let read = async {
            if tags.is_empty() {
                Ok((store.get(key).await?, Vec::new()))
            } else {
                futures::try_join!(store.get(key), store.tag_generations(tags))
            }
        };
        let (bytes, generations) = match self.guard(read).await {
            Ok(r) => r,
            Err(e) => {
                self.fail_open("get", &e);
                return None;
            }
        };
        let bytes = bytes?;
        let entry = match Entry::decode(&bytes) {
            Ok(e) => e,
            Err(error) => {
                bump(&self.inner.stats.corrupt);
                tracing::warn!(target: "redtower::cache", cache = self.name(), %error, "undecodable cache entry; treating as a miss");
                return None;
            }
        };
        if entry.key_digest != *digest {
            tracing::debug!(target: "redtower::cache", cache = self.name(), "cache key collision; treating as a miss");
            return None;
        }
        if !entry.tags.is_empty() && !self.tags_valid(&entry, tags, &generations).await {
            return None;
        }
        let entry = Arc::new(entry);
        if let Some(l1) = &self.inner.l1 {
            l1.insert(key.clone(), entry.clone());
        }
        Some(entry)
    }

    async fn tags_valid(&self, entry: &Entry, asked: &[String], generations: &[u64]) -> bool {
        let mut missing = Vec::new();
        for (tag, generation) in &entry.tags {
            match asked.iter().position(|t| t == tag) {
                Some(i) => {
                    if generations.get(i) != Some(generation) {
                        return false;
                    }
                }
                None => missing.push(tag.clone()),
            }
        }
        if missing.is_empty() {
            return true;
        }
        match self.guard(self.inner.store.tag_generations(&missing)).await {
            Ok(current) => entry
                .tags
                .iter()
                .filter(|(t, _)| missing.contains(t))
                .zip(current)
                .all(|((_, g), c)| *g == c),
            Err(e) => {
                self.fail_open("tags", &e);
                false
            }
        }
    }

    fn join(&self, key: &EntryKey) -> Role {
        let mut flights = lock(&self.inner.flights);
        if let Some((_, rx)) = flights.get(key) {
            return Role::Waiter(rx.clone());
        }
        let id = self.inner.next_flight.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        flights.insert(key.clone(), (id, rx));
        Role::Leader(FlightGuard {
            cache: self.inner.clone(),
            key: key.clone(),
            id,
            tx,
        })
    }

    /// Fills `key` with single-flight: one fetch per key per instance, and across instances
    /// through the store's fill lock (others poll the store for the result, up to `lock_wait`,
    /// then fetch themselves). `seen` is the `stored_at` of the entry the caller found (0 for
    /// none): only a newer entry counts as another instance's fill.
    pub(crate) async fn fill<R, F, Fut>(
        &self,
        key: &EntryKey,
        digest: &[u8; 32],
        tags: &[String],
        seen: u64,
        fetch: F,
    ) -> Filled<R, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (R, Outcome)>,
    {
        loop {
            match self.join(key) {
                Role::Waiter(mut rx) => match rx.wait_for(Option::is_some).await {
                    Ok(v) => {
                        let shared = v.clone().flatten();
                        drop(v);
                        return match shared {
                            Some(e) => {
                                bump(&self.inner.stats.coalesced);
                                metrics::counter!("redtower_cache_coalesced_total", "cache" => self.name()).increment(1);
                                Filled::Shared(e, fetch)
                            }
                            None => Filled::Own(fetch),
                        };
                    }
                    // The leader was cancelled: try again (maybe as the leader).
                    Err(_) => continue,
                },
                Role::Leader(guard) => {
                    return self.lead(guard, key, digest, tags, seen, fetch).await;
                }
            }
        }
    }

    async fn lead<R, F, Fut>(
        &self,
        guard: FlightGuard,
        key: &EntryKey,
        digest: &[u8; 32],
        tags: &[String],
        seen: u64,
        fetch: F,
    ) -> Filled<R, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (R, Outcome)>,
    {
        let cfg = &self.inner.config;
        let store = &self.inner.store;
        let mut token = None;
        let locked_by_other = match self.guard(store.try_lock(key, cfg.lock_ttl)).await {
            Ok(t) => {
                token = t;
                token.is_none()
            }
            Err(e) => {
                self.fail_open("lock", &e);
                false
            }
        };
        if locked_by_other {
            let started = Instant::now();
            let deadline = started + cfg.lock_wait;
            let mut interval = cfg.poll_min;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    bump(&self.inner.stats.lock_timeouts);
                    tracing::debug!(target: "redtower::cache", cache = self.name(), "gave up waiting for another instance's fill");
                    break;
                }
                let jitter = interval.mul_f64(rand::random::<f64>() * 0.5);
                tokio::time::sleep((interval + jitter).min(deadline - now)).await;
                interval = interval.mul_f64(1.5).min(cfg.poll_max);
                if let Some(e) = self.read_with(key, digest, tags, false).await {
                    if e.stored_at > seen && freshness(&e, self.now_ms()) == Freshness::Fresh {
                        bump(&self.inner.stats.remote_fills);
                        metrics::histogram!("redtower_cache_lock_wait_seconds", "cache" => self.name())
                            .record(started.elapsed().as_secs_f64());
                        guard.publish(Some(e.clone()));
                        return Filled::Shared(e, fetch);
                    }
                }
                match self.guard(store.try_lock(key, cfg.lock_ttl)).await {
                    Ok(Some(t)) => {
                        token = Some(t);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.fail_open("lock", &e);
                        break;
                    }
                }
            }
        }
        bump(&self.inner.stats.fetches);
        let mut unlocker = Unlocker {
            store: store.clone(),
            key: key.clone(),
            token: token.clone(),
        };
        let tag_gens = self.tag_generations_for_fill(tags).await;
        let (r, outcome) = fetch().await;
        unlocker.token = None;
        let shared = self
            .finish(key, tags, tag_gens, token.as_ref(), outcome)
            .await;
        guard.publish(shared);
        Filled::Led(r)
    }

    pub(crate) async fn tag_generations_for_fill(&self, tags: &[String]) -> Option<Vec<u64>> {
        if tags.is_empty() {
            return Some(Vec::new());
        }
        match self
            .guard(
                self.inner
                    .store
                    .ensure_tags(tags, self.inner.config.lock_ttl * 2),
            )
            .await
        {
            Ok(g) => Some(g),
            Err(e) => {
                self.fail_open("tags", &e);
                None
            }
        }
    }

    /// Stores (or not) what a fetch produced, releases the lock, and returns what to share.
    pub(crate) async fn finish(
        &self,
        key: &EntryKey,
        tags: &[String],
        tag_gens: Option<Vec<u64>>,
        token: Option<&LockToken>,
        outcome: Outcome,
    ) -> Option<Arc<Entry>> {
        let store = &self.inner.store;
        match outcome {
            Outcome::Store(mut entry, ttl) => {
                let Some(before) = tag_gens else {
                    // Tags unknown (store down): share locally, never store untagged.
                    self.release(key, token).await;
                    return Some(Arc::new(entry));
                };
                if !tags.is_empty() {
                    match self.guard(store.ensure_tags(tags, ttl)).await {
                        // Invalidated while fetching: the value may predate it. Share, don't store.
                        Ok(after) if after != before => {
                            self.release(key, token).await;
                            return Some(Arc::new(entry));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            self.fail_open("tags", &e);
                            self.release(key, token).await;
                            return Some(Arc::new(entry));
                        }
                    }
                    entry.tags = tags.iter().cloned().zip(before).collect();
                }
                let entry = Arc::new(entry);
                match entry.encode() {
                    Ok(bytes) => match self.guard(store.put(key, bytes, ttl, token)).await {
                        Ok(written) => {
                            if written {
                                bump(&self.inner.stats.stored);
                                if let Some(l1) = &self.inner.l1 {
                                    l1.insert(key.clone(), entry.clone());
                                }
                            }
                        }
                        Err(e) => {
                            self.fail_open("put", &e);
                            self.release(key, token).await;
                        }
                    },
                    Err(error) => {
                        tracing::warn!(target: "redtower::cache", cache = self.name(), %error, "entry too large for the envelope; not stored");
                        self.release(key, token).await;
                    }
                }
                Some(entry)
            }
            Outcome::Share(entry) => {
                self.release(key, token).await;
                Some(Arc::new(entry))
            }
            Outcome::Nothing => {
                self.release(key, token).await;
                None
            }
        }
    }

    async fn release(&self, key: &EntryKey, token: Option<&LockToken>) {
        if let Some(token) = token {
            if let Err(e) = self.guard(self.inner.store.unlock(key, token)).await {
                self.fail_open("unlock", &e);
            }
        }
    }

    /// Starts one background refresh of `key` unless one is already running here or on
    /// another instance (the fill lock). Never blocks the caller.
    pub(crate) fn spawn_refresh<F, Fut>(
        &self,
        key: EntryKey,
        digest: [u8; 32],
        seen: u64,
        tags: Vec<String>,
        fetch: F,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        // Join synchronously, so stale hits racing this one see the refresh in flight.
        let Role::Leader(guard) = self.join(&key) else {
            return;
        };
        let cache = self.clone();
        tokio::spawn(async move {
            let token = match cache
                .guard(
                    cache
                        .inner
                        .store
                        .try_lock(&key, cache.inner.config.lock_ttl),
                )
                .await
            {
                Ok(Some(t)) => t,
                // Someone else refreshes it, or the store is down: keep serving stale.
                Ok(None) => return,
                Err(e) => {
                    cache.fail_open("lock", &e);
                    return;
                }
            };
            // Another instance may have refreshed it between our read and our lock.
            if let Some(e) = cache.read_with(&key, &digest, &tags, false).await {
                if e.stored_at > seen && freshness(&e, cache.now_ms()) == Freshness::Fresh {
                    cache.release(&key, Some(&token)).await;
                    guard.publish(Some(e));
                    return;
                }
            }
            bump(&cache.inner.stats.refreshes);
            bump(&cache.inner.stats.fetches);
            let tag_gens = cache.tag_generations_for_fill(&tags).await;
            let outcome = fetch().await;
            let shared = cache
                .finish(&key, &tags, tag_gens, Some(&token), outcome)
                .await;
            guard.publish(shared);
        });
    }

    /// Records a lookup outcome in the counters and metrics.
    pub(crate) fn record(&self, outcome: &'static str, route: &'static str) {
        self.record_reason(outcome, route, "");
    }

    /// Records a lookup outcome with a reason (bypass and uncacheable causes).
    pub(crate) fn record_reason(
        &self,
        outcome: &'static str,
        route: &'static str,
        reason: &'static str,
    ) {
        let s = &self.inner.stats;
        match outcome {
            "hit" => bump(&s.hits),
            "stale" => bump(&s.stale),
            "miss" => bump(&s.misses),
            "bypass" => bump(&s.bypass),
            _ => {}
        }
        metrics::counter!(
            "redtower_cache_requests_total",
            "cache" => self.name(),
            "route" => route,
            "outcome" => outcome,
            "reason" => reason
        )
        .increment(1);
    }
}
