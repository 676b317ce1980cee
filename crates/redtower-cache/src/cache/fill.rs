//! Single-flight fills: one fetch per key per instance (a watch channel per key in flight)
//! and across instances (the store's fill lock with a fencing token), background refreshes,
//! and storing what a fetch produced.

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
};

use tokio::{sync::watch, time::Instant};

use super::{Cache, Filled, FlightRx, Freshness, Inner, Outcome, freshness, lock, stats::bump};
use crate::{
    CacheStore,
    envelope::Entry,
    key::Key,
    store::{EntryKey, LockToken},
};

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

enum Role {
    Leader(FlightGuard),
    Waiter(FlightRx),
}

impl Cache {
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
        key: &Key,
        tags: &[String],
        seen: u64,
        fetch: F,
    ) -> Filled<R, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (R, Outcome)>,
    {
        loop {
            match self.join(key.entry()) {
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
                    return self.lead(guard, key, tags, seen, fetch).await;
                }
            }
        }
    }

    async fn lead<R, F, Fut>(
        &self,
        guard: FlightGuard,
        key: &Key,
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
        let locked_by_other = match self.guard(store.try_lock(key.entry(), cfg.lock_ttl)).await {
            Ok(t) => {
                token = t;
                token.is_none()
            }
            Err(e) => {
                self.fail_open("lock", &e);
                false
            }
        };
        // From here on a cancelled fill gives the lock back (in the background).
        let mut unlocker = Unlocker {
            store: store.clone(),
            key: key.entry().clone(),
            token: token.clone(),
        };
        // When this call waited for another fill: since when.
        let mut waited = None;
        if locked_by_other {
            let started = Instant::now();
            waited = Some(started);
            let deadline = started.checked_add(cfg.lock_wait).unwrap_or(started);
            let mut interval = cfg.poll_min;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    bump(&self.inner.stats.lock_timeouts);
                    tracing::debug!(target: "redtower::cache", cache = self.name(), "gave up waiting for another instance's fill");
                    break;
                }
                let jitter = interval.mul_f64(rand::random::<f64>() * 0.5);
                tokio::time::sleep(interval.saturating_add(jitter).min(deadline - now)).await;
                interval = interval.mul_f64(1.5).min(cfg.poll_max);
                if let Some(e) = self.fresh_fill(key, tags, seen).await {
                    bump(&self.inner.stats.remote_fills);
                    self.record_lock_wait(started);
                    guard.publish(Some(e.clone()));
                    return Filled::Shared(e, fetch);
                }
                match self.guard(store.try_lock(key.entry(), cfg.lock_ttl)).await {
                    Ok(Some(t)) => {
                        token = Some(t);
                        unlocker.token.clone_from(&token);
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
        if token.is_some() {
            // Double-check under the lock: a fill (another instance's, or an earlier flight
            // here) may have landed between the last read (the caller's, or a poll's) and
            // this lock.
            if let Some(e) = self.fresh_fill(key, tags, seen).await {
                self.release(key, token.as_ref()).await;
                unlocker.token = None;
                bump(&self.inner.stats.remote_fills);
                if let Some(started) = waited {
                    self.record_lock_wait(started);
                }
                guard.publish(Some(e.clone()));
                return Filled::Shared(e, fetch);
            }
        }
        bump(&self.inner.stats.fetches);
        let tag_gens = self.tag_generations_for_fill(tags).await;
        let (r, outcome) = fetch().await;
        unlocker.token = None;
        let shared = self
            .finish(key, tags, tag_gens, token.as_ref(), outcome)
            .await;
        guard.publish(shared);
        Filled::Led(r)
    }

    /// How long a fill waited for another instance's fill before sharing it.
    fn record_lock_wait(&self, started: Instant) {
        metrics::histogram!("redtower_cache_lock_wait_seconds", "cache" => self.name())
            .record(started.elapsed().as_secs_f64());
    }

    /// The stored entry if it is fresh and newer than the one the caller saw (`seen`).
    /// Re-reads never count an undecodable entry again.
    async fn fresh_fill(&self, key: &Key, tags: &[String], seen: u64) -> Option<Arc<Entry>> {
        self.read_store_counted(key, tags, false)
            .await
            .filter(|e| e.stored_at > seen && freshness(e, self.now_ms()) == Freshness::Fresh)
    }

    pub(crate) async fn tag_generations_for_fill(&self, tags: &[String]) -> Option<Vec<u64>> {
        if tags.is_empty() {
            return Some(Vec::new());
        }
        match self
            .guard(
                self.inner
                    .store
                    .ensure_tags(tags, self.inner.config.lock_ttl.saturating_mul(2)),
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
        key: &Key,
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
                    Ok(bytes) => {
                        match self.guard(store.put(key.entry(), bytes, ttl, token)).await {
                            Ok(written) => {
                                if written {
                                    bump(&self.inner.stats.stored);
                                    self.l1_insert(key, &entry);
                                }
                            }
                            Err(e) => {
                                self.fail_open("put", &e);
                                self.release(key, token).await;
                            }
                        }
                    }
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

    async fn release(&self, key: &Key, token: Option<&LockToken>) {
        if let Some(token) = token {
            if let Err(e) = self
                .guard(self.inner.store.unlock(key.entry(), token))
                .await
            {
                self.fail_open("unlock", &e);
            }
        }
    }

    /// Starts one background refresh of `key` unless one is already running here or on
    /// another instance (the fill lock). Never blocks the caller.
    pub(crate) fn spawn_refresh<F, Fut>(&self, key: Key, seen: u64, tags: Vec<String>, fetch: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        // Join synchronously, so stale hits racing this one see the refresh in flight.
        let Role::Leader(guard) = self.join(key.entry()) else {
            return;
        };
        let cache = self.clone();
        tokio::spawn(async move {
            let token = match cache
                .guard(
                    cache
                        .inner
                        .store
                        .try_lock(key.entry(), cache.inner.config.lock_ttl),
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
            if let Some(e) = cache.fresh_fill(&key, &tags, seen).await {
                cache.release(&key, Some(&token)).await;
                guard.publish(Some(e));
                return;
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
}
