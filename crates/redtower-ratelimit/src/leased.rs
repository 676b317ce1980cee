//! [`LeasedStore`]: leased quotas for the hottest routes: most checks decided in process.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher, Hash, Hasher, RandomState},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::{Decision, Outcome, Policy, RateLimitStore, Result, Subject};

/// A slice of one subject's quota held by this instance.
struct Slice {
    /// The check that took the slice (what a return gives back to).
    taken: Decision,
    /// Units taken.
    size: u32,
    /// Units not used yet.
    left: u32,
    /// When the unused units go back.
    until: Instant,
}

impl Slice {
    /// What the subject's requests see once `used` units of this slice are spent: the
    /// store's answer for the whole slice, with the units not used yet counted as remaining
    /// (as if each request had been checked on its own).
    fn decision(&self, used: u32) -> Decision {
        let unused = u64::from(self.size.saturating_sub(used));
        self.taken.map_outcomes(|o| Outcome {
            remaining: o.remaining.saturating_add(unused),
            ..*o
        })
    }
}

/// Leased quotas (opt-in, for the hottest routes): wraps a store so that an instance takes a
/// slice of `slice` units of a subject's quota in one store call (one check of cost `slice`,
/// atomic in Redis like any check), then admits that subject's next requests in process, with
/// no store call, until the slice is used or its lease (`lease`, e.g. 1 s) ends; then the
/// unused units go back ([`RateLimitStore::refund`]) and a new slice is taken. When a whole
/// slice no longer fits, the request is checked exactly (its own cost), so the last units of a
/// quota are shared exactly between instances.
///
/// **Bound.** Slices are taken from the shared counter before they are used, so the instances
/// together never admit more than the limit in a window (a slice is counted when it is taken,
/// not when it is used): the documented bound `limit + instances × slice` holds with room to
/// spare; what leasing costs is the other way: up to `slice - 1` units per instance and
/// subject may sit unused in an instance until its lease ends, so another instance may deny a
/// request that the exact store would have admitted. Each request admitted from a slice (the
/// one that took it included) sees the remaining quota an exact check would have shown it: the
/// shared count after the slice was taken, plus the slice's units not used yet.
///
/// Exact mode (the plain store) stays the default; wrap the store of one route's layer:
///
/// ```
/// use std::time::Duration;
/// use redtower_ratelimit::{LeasedStore, MemoryStore, Quota, RateLimitLayer, nonzero};
///
/// let hot = LeasedStore::new(MemoryStore::new(), 10, Duration::from_secs(1));
/// let layer = RateLimitLayer::new(hot, Quota::per_second(nonzero!(1000)));
/// # let _ = layer;
/// ```
///
/// Held per instance: at most `max_subjects` slices (10,000 by default); a subject beyond it is
/// checked exactly. Slices whose lease ended are returned as the store is used; call
/// [`flush`](Self::flush) at shutdown to return every unused unit at once.
#[derive(Clone)]
pub struct LeasedStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn RateLimitStore>,
    slice: u32,
    lease: Duration,
    max_subjects: usize,
    hasher: RandomState,
    slices: Mutex<HashMap<u64, (Subject, Slice)>>,
    /// One gate per subject whose slice is being replaced: the first request to find it used
    /// up (or past its lease) takes the next slice while the subject's other requests wait for
    /// it, instead of each taking a slice of its own. Entries live while a request holds or
    /// waits for them.
    refreshing: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for LeasedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeasedStore")
            .field("store", &self.inner.store)
            .field("slice", &self.inner.slice)
            .field("lease", &self.inner.lease)
            .finish_non_exhaustive()
    }
}

impl LeasedStore {
    /// Leases slices of `slice` units (at least 1), each for at most `lease`, from `store`.
    pub fn new(store: impl RateLimitStore, slice: u32, lease: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: Arc::new(store),
                slice: slice.max(1),
                lease,
                max_subjects: 10_000,
                hasher: RandomState::new(),
                slices: Mutex::default(),
                refreshing: Mutex::default(),
            }),
        }
    }

    /// The most subjects holding a slice at once. Defaults to 10,000.
    #[must_use]
    pub fn max_subjects(self, max: usize) -> Self {
        let i = &self.inner;
        Self {
            inner: Arc::new(Inner {
                store: i.store.clone(),
                slice: i.slice,
                lease: i.lease,
                max_subjects: max,
                hasher: RandomState::new(),
                slices: Mutex::default(),
                refreshing: Mutex::default(),
            }),
        }
    }

    fn key(&self, subject: &Subject, policies: &[Policy]) -> u64 {
        let mut h = self.inner.hasher.build_hasher();
        subject.hash(&mut h);
        for p in policies {
            p.name().hash(&mut h);
        }
        h.finish()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Subject, Slice)>> {
        self.inner.slices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The gate of `key`'s refresh, registered until the returned handle drops.
    fn gate(&self, key: u64) -> Gate<'_> {
        let gate = lock(&self.inner.refreshing).entry(key).or_default().clone();
        Gate {
            store: self,
            key,
            gate,
        }
    }

    /// Admits from the subject's slice, if it has `cost` units left and its lease runs.
    fn local(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Option<Decision> {
        let key = self.key(subject, policies);
        let mut slices = self.lock();
        let (_, slice) = slices.get_mut(&key)?;
        if slice.left < cost || Instant::now() >= slice.until {
            return None;
        }
        slice.left -= cost;
        Some(slice.decision(slice.size - slice.left))
    }

    /// Returns the unused units of `slice` to the store.
    async fn give_back(&self, subject: &Subject, slice: Slice) {
        if slice.left == 0 {
            return;
        }
        if let Err(error) = self
            .inner
            .store
            .refund(subject, &slice.taken, slice.left)
            .await
        {
            tracing::debug!(target: "redtower::ratelimit", %error, "returning a leased slice failed; its units count until the window ends");
        }
    }

    /// Returns every unused unit of every slice now (at shutdown, or in tests).
    ///
    /// # Errors
    ///
    /// Never: a failed return is logged (the units then count until they run out).
    pub async fn flush(&self) -> Result<()> {
        let all: Vec<(Subject, Slice)> = self.lock().drain().map(|(_, v)| v).collect();
        for (subject, slice) in all {
            self.give_back(&subject, slice).await;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request's hold on the refresh gate of one subject ([`LeasedStore::gate`]); the last one
/// to let go removes the gate, so gates exist only for subjects being refreshed.
struct Gate<'a> {
    store: &'a LeasedStore,
    key: u64,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        let mut gates = lock(&self.store.inner.refreshing);
        // Handles are cloned only under this lock: two means the map's and this one.
        if Arc::strong_count(&self.gate) == 2 {
            gates.remove(&self.key);
        }
    }
}

#[async_trait::async_trait]
impl RateLimitStore for LeasedStore {
    async fn check(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Result<Decision> {
        if let Some(d) = self.local(subject, policies, cost) {
            return Ok(d);
        }
        let key = self.key(subject, policies);
        let gate = self.gate(key);
        let _turn = gate.gate.lock().await;
        // The request ahead of this one may have taken a new slice meanwhile.
        if let Some(d) = self.local(subject, policies, cost) {
            return Ok(d);
        }
        // The subject's old slice (used up or past its lease) goes back first.
        let old = self.lock().remove(&key);
        if let Some((s, slice)) = old {
            self.give_back(&s, slice).await;
        }
        let store = &self.inner.store;
        // A slice never exceeds what the smallest policy holds.
        let capacity = policies
            .iter()
            .map(|p| p.quota().capacity())
            .min()
            .unwrap_or(u32::MAX);
        let size = self.inner.slice.min(capacity).max(cost);
        let room = self.lock().len() < self.inner.max_subjects;
        if room && size > cost {
            let taken = store.check(subject, policies, size).await?;
            if taken.is_allowed() {
                let slice = Slice {
                    taken,
                    size,
                    left: size - cost,
                    until: Instant::now() + self.inner.lease,
                };
                let decision = slice.decision(cost);
                let replaced = self.lock().insert(key, (subject.clone(), slice));
                if let Some((s, slice)) = replaced {
                    self.give_back(&s, slice).await;
                }
                return Ok(decision);
            }
        }
        // A whole slice does not fit (or no room to hold one): this request alone, exactly.
        store.check(subject, policies, cost).await
    }

    fn try_check_now(
        &self,
        subject: &Subject,
        policies: &[Policy],
        cost: u32,
    ) -> Option<Result<Decision>> {
        self.local(subject, policies, cost).map(Ok)
    }

    async fn peek(&self, subject: &Subject, policies: &[Policy]) -> Result<Decision> {
        self.inner.store.peek(subject, policies).await
    }

    async fn reset(&self, subject: &Subject, policies: &[Policy]) -> Result<()> {
        let key = self.key(subject, policies);
        self.lock().remove(&key);
        self.inner.store.reset(subject, policies).await
    }

    async fn refund(&self, subject: &Subject, decision: &Decision, cost: u32) -> Result<()> {
        self.inner.store.refund(subject, decision, cost).await
    }

    fn has_connected(&self) -> bool {
        self.inner.store.has_connected()
    }

    async fn first_connection(&self) -> Result<()> {
        self.inner.store.first_connection().await
    }

    fn connections(&self) -> u64 {
        self.inner.store.connections()
    }
}
