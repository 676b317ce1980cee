//! Fills: one fetch per key per instance (see [`flight`](super::flight)) and across instances
//! (the store's fill lock with a fencing token), background refreshes, and storing what a
//! fetch produced.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    Cache, Filled, Freshness, Outcome, StoreAt,
    flight::{FlightGuard, Role},
    freshness,
    stats::bump,
};
use crate::{
    CacheStore,
    envelope::Entry,
    key::Key,
    store::{EntryKey, LockToken},
};

/// Releases a fill lock in the background if the fill is dropped (cancelled) before it
/// finished, so other instances do not wait for the lock to expire.
struct Unlocker {
    store: Arc<dyn CacheStore>,
    key: EntryKey,
    token: Option<LockToken>,
}

impl Unlocker {
    /// Nothing to release any more: the lock was released (or will be) by the fill itself.
    fn disarm(&mut self) {
        self.token = None;
    }
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

/// One attempt at an entry's fill lock.
enum LockAttempt {
    Taken(LockToken),
    /// Another fill (here or on another instance) holds it.
    HeldByOther,
    /// The store failed (counted as a fail-open): go on without the lock.
    Failed,
}

/// How waiting for another instance's fill ended.
enum WaitEnd {
    /// Its fill landed in the store: share it.
    Landed(Arc<Entry>),
    /// Its lock was released without a fill this caller can use: it took the lock.
    Locked(LockToken),
    /// The wait timed out, or the store failed: fetch without the lock.
    GaveUp,
}

impl Cache {
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

    /// The fill of this instance's leader: take the fill lock (or wait for the instance that
    /// holds it), then share a fill that landed meanwhile, or fetch and store.
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
        let mut token = None;
        // When this call waited for another instance's fill: since when.
        let mut waited = None;
        match self.lock_fill(key.entry()).await {
            LockAttempt::Taken(t) => token = Some(t),
            LockAttempt::Failed => {}
            LockAttempt::HeldByOther => {
                let started = Instant::now();
                waited = Some(started);
                match self.wait_for_fill(key, tags, seen, started).await {
                    WaitEnd::Landed(e) => return self.share_landed(&guard, e, waited, fetch),
                    WaitEnd::Locked(t) => token = Some(t),
                    WaitEnd::GaveUp => {}
                }
            }
        }
        // From here on a cancelled fill gives the lock back (in the background).
        let mut unlocker = Unlocker {
            store: self.inner.store.clone(),
            key: key.entry().clone(),
            token: token.clone(),
        };
        if token.is_some() {
            // Double-check under the lock: a fill (another instance's, or an earlier flight
            // here) may have landed between the last read (the caller's, or a poll's) and
            // this lock.
            if let Some(e) = self.fresh_fill(key, tags, seen).await {
                self.release(key, token.as_ref()).await;
                unlocker.disarm();
                return self.share_landed(&guard, e, waited, fetch);
            }
        }
        bump(&self.inner.stats.fetches);
        let tag_gens = self.tag_generations_for_fill(tags).await;
        let (r, outcome) = fetch().await;
        unlocker.disarm();
        let shared = self
            .finish(key, tags, tag_gens, token.as_ref(), outcome)
            .await;
        guard.publish(shared);
        Filled::Led(r)
    }

    /// One attempt at the fill lock of `key`; a store failure is counted as a fail-open.
    async fn lock_fill(&self, key: &EntryKey) -> LockAttempt {
        let ttl = self.inner.settings.lock_ttl;
        match self.guard(self.inner.store.try_lock(key, ttl)).await {
            Ok(Some(t)) => LockAttempt::Taken(t),
            Ok(None) => LockAttempt::HeldByOther,
            Err(e) => {
                self.fail_open("lock", &e);
                LockAttempt::Failed
            }
        }
    }

    /// Waits for the fill of the instance that holds the lock of `key`: polls the store for a
    /// fresh entry newer than `seen` and retries the lock, with a growing jittered interval,
    /// up to `lock_wait` from `started`.
    async fn wait_for_fill(
        &self,
        key: &Key,
        tags: &[String],
        seen: u64,
        started: Instant,
    ) -> WaitEnd {
        let settings = &self.inner.settings;
        let deadline = started.checked_add(settings.lock_wait).unwrap_or(started);
        let mut interval = settings.poll_min;
        loop {
            let now = Instant::now();
            if now >= deadline {
                bump(&self.inner.stats.lock_timeouts);
                tracing::debug!(target: "redtower::cache", cache = self.name(), "gave up waiting for another instance's fill");
                return WaitEnd::GaveUp;
            }
            let jitter = interval.mul_f64(rand::random::<f64>() * 0.5);
            tokio::time::sleep(interval.saturating_add(jitter).min(deadline - now)).await;
            interval = interval.mul_f64(1.5).min(settings.poll_max);
            if let Some(e) = self.fresh_fill(key, tags, seen).await {
                return WaitEnd::Landed(e);
            }
            match self.lock_fill(key.entry()).await {
                LockAttempt::Taken(t) => return WaitEnd::Locked(t),
                LockAttempt::HeldByOther => {}
                LockAttempt::Failed => return WaitEnd::GaveUp,
            }
        }
    }

    /// Serves a fill found in the store instead of fetching, and hands it to this instance's
    /// waiters.
    fn share_landed<R, F>(
        &self,
        guard: &FlightGuard,
        entry: Arc<Entry>,
        waited: Option<Instant>,
        fetch: F,
    ) -> Filled<R, F> {
        bump(&self.inner.stats.remote_fills);
        if let Some(started) = waited {
            self.record_lock_wait(started);
        }
        guard.publish(Some(entry.clone()));
        Filled::Shared(entry, fetch)
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

    /// The generations of `tags` before a fetch (`None` when the store failed: the value
    /// is then not stored, since it could not record them).
    async fn tag_generations_for_fill(&self, tags: &[String]) -> Option<Vec<u64>> {
        if tags.is_empty() {
            return Some(Vec::new());
        }
        let ttl = self.inner.settings.lock_ttl.saturating_mul(2);
        match self.guard(self.inner.store.ensure_tags(tags, ttl)).await {
            Ok(g) => Some(g),
            Err(e) => {
                self.fail_open("tags", &e);
                None
            }
        }
    }

    /// Stores (or not) what a fetch produced, releases the lock, and returns what to share.
    async fn finish(
        &self,
        key: &Key,
        tags: &[String],
        tag_gens: Option<Vec<u64>>,
        token: Option<&LockToken>,
        outcome: Outcome,
    ) -> Option<Arc<Entry>> {
        match outcome {
            Outcome::Store(entry, ttl) => Some(
                self.store_fetched(key, tags, tag_gens, token, entry, ttl)
                    .await,
            ),
            Outcome::StoreAt(store_at) => {
                let StoreAt {
                    entry,
                    ttl,
                    at,
                    record,
                } = *store_at;
                let mut token = token;
                let mut fenced = |k: &Key| {
                    if k.canonical() == key.canonical() {
                        token.take()
                    } else {
                        None
                    }
                };
                if let Some((record_key, record)) = record {
                    let t = fenced(&record_key);
                    self.store_fetched(&record_key, tags, tag_gens.clone(), t, record, ttl)
                        .await;
                }
                let same = at.canonical() == key.canonical();
                let t = fenced(&at);
                let stored = self.store_fetched(&at, tags, tag_gens, t, entry, ttl).await;
                self.release(key, token).await;
                same.then_some(stored)
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

    /// Stores a fetched entry for `ttl` under the tag generations read before the fetch
    /// (`before`), unless a tag was invalidated meanwhile; returns it for sharing either way.
    async fn store_fetched(
        &self,
        key: &Key,
        tags: &[String],
        before: Option<Vec<u64>>,
        token: Option<&LockToken>,
        mut entry: Entry,
        ttl: Duration,
    ) -> Arc<Entry> {
        let store = &self.inner.store;
        // Tags the fetched value carries itself (a response's tag field), beyond the fill's.
        let own: Vec<String> = entry
            .tags
            .drain(..)
            .map(|(t, _)| t)
            .filter(|t| !tags.contains(t))
            .collect();
        let Some(before) = before else {
            // Tags unknown (store down): share locally, never store untagged.
            self.release(key, token).await;
            return Arc::new(entry);
        };
        if !tags.is_empty() {
            match self.guard(store.ensure_tags(tags, ttl)).await {
                // Invalidated while fetching: the value may predate it. Share, don't store.
                Ok(after) if after != before => {
                    self.release(key, token).await;
                    return Arc::new(entry);
                }
                Ok(_) => {}
                Err(e) => {
                    self.fail_open("tags", &e);
                    self.release(key, token).await;
                    return Arc::new(entry);
                }
            }
            entry.tags = tags.iter().cloned().zip(before).collect();
        }
        if !own.is_empty() {
            // Their generations as of now: an invalidation between the fetch and this read
            // is not seen (the window is one round trip).
            match self.guard(store.ensure_tags(&own, ttl)).await {
                Ok(generations) => entry.tags.extend(own.into_iter().zip(generations)),
                Err(e) => {
                    self.fail_open("tags", &e);
                    self.release(key, token).await;
                    return Arc::new(entry);
                }
            }
        }
        let entry = Arc::new(entry);
        match entry.encode() {
            Ok(bytes) => match self.guard(store.put(key.entry(), bytes, ttl, token)).await {
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
            },
            Err(error) => {
                tracing::warn!(target: "redtower::cache", cache = self.name(), %error, "entry too large for the envelope; not stored");
                self.release(key, token).await;
            }
        }
        entry
    }

    async fn release(&self, key: &Key, token: Option<&LockToken>) {
        if let Some(token) = token
            && let Err(e) = self
                .guard(self.inner.store.unlock(key.entry(), token))
                .await
        {
            self.fail_open("unlock", &e);
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
            // Someone else refreshes it, or the store is down: keep serving stale.
            let LockAttempt::Taken(token) = cache.lock_fill(key.entry()).await else {
                return;
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
