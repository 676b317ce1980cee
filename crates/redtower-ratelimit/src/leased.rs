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
    /// A slice of `size` units that `taken` took, `left` of them unused, leased for `lease`.
    fn new(taken: Decision, size: u32, left: u32, lease: Duration) -> Self {
        Self {
            taken,
            size,
            left,
            until: Instant::now() + lease,
        }
    }

    /// Whether a request of `cost` units may be admitted from this slice at `now`.
    fn admits(&self, cost: u32, now: Instant) -> bool {
        self.left >= cost && now < self.until
    }

    /// What the request that just used units of this slice sees: the store's answer for the
    /// whole slice, with the units not used yet counted as remaining (as if each request had
    /// been checked on its own).
    fn decision(&self) -> Decision {
        let unused = u64::from(self.left);
        self.taken.map_outcomes(|o| Outcome {
            remaining: o.remaining.saturating_add(unused),
            ..*o
        })
    }
}

/// What an instance holds of one subject's quota.
struct Held {
    subject: Subject,
    /// The slice requests are admitted from.
    current: Slice,
    /// The next slice, taken ahead once half of `current` is used, so that a busy subject's
    /// requests do not wait for the store when `current` runs out. Its size tops up what
    /// `current` has left to one slice: the instance never holds more than a slice unused.
    next: Option<Slice>,
    /// Whether the next slice was asked for since `current` took over (once per slice: a
    /// denied or failed attempt is not repeated on every request).
    ahead: bool,
}

impl Held {
    fn new(subject: Subject, current: Slice) -> Self {
        Self {
            subject,
            current,
            next: None,
            ahead: false,
        }
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
/// subject (in the slice in use and the next one together, see below) may sit unused in an
/// instance until their lease ends, so another instance may deny a request that the exact
/// store would have admitted. Each request admitted from a slice (the one that took it
/// included) sees the remaining quota an exact check would have shown it: the shared count
/// after the slice was taken, plus the slice's units not used yet.
///
/// **Taken ahead.** Once half of a subject's slice is used, the next slice (what tops the
/// units left up to a whole slice) is taken in a background task on the request's Tokio
/// runtime, and it takes over when the first one is used up: a busy subject's requests keep
/// being decided in process. Concurrent requests of a subject never take slices side by
/// side: a request that finds the subject's slices used up while the next one is being taken
/// waits for it, and only one request at a time takes a slice for a subject.
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
    slices: Mutex<HashMap<u64, Held>>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        lock(&self.inner.slices)
    }

    /// The gate of `key`'s refresh, registered until the returned handle drops.
    fn gate(&self, key: u64) -> Gate {
        let gate = lock(&self.inner.refreshing).entry(key).or_default().clone();
        Gate {
            store: self.clone(),
            key,
            gate,
        }
    }

    /// The size of a slice for `policies`: never more than the smallest policy holds, never
    /// less than the request's `cost`.
    fn slice_size(&self, policies: &[Policy], cost: u32) -> u32 {
        let capacity = policies
            .iter()
            .map(|p| p.quota().capacity())
            .min()
            .unwrap_or(u32::MAX);
        self.inner.slice.min(capacity).max(cost)
    }

    /// Admits from the subject's slice (held at `key`, its [`key`](Self::key)), if it has
    /// `cost` units left and its lease runs.
    /// Once the current slice is used up, the next one (if it was taken in time) takes its
    /// place; once half of the current slice is used, the next one is taken in the background.
    fn local(
        &self,
        key: u64,
        subject: &Subject,
        policies: &[Policy],
        cost: u32,
    ) -> Option<Decision> {
        let now = Instant::now();
        let mut slices = self.lock();
        let held = slices.get_mut(&key)?;
        if !held.current.admits(cost, now) {
            // Only a used-up slice makes way here: one with units left (past its lease, or
            // too few for `cost`) goes back to the store on the waiting path.
            let next_admits = held.next.as_ref().is_some_and(|n| n.admits(cost, now));
            if held.current.left > 0 || !next_admits {
                return None;
            }
            held.current = held.next.take()?;
            held.ahead = false;
        }
        let current = &mut held.current;
        current.left -= cost;
        let decision = current.decision();
        let refill = !held.ahead && held.next.is_none() && current.left <= current.size / 2;
        held.ahead |= refill;
        drop(slices);
        if refill {
            self.refill_ahead(key, subject, policies);
        }
        Some(decision)
    }

    /// Takes the subject's next slice in a background task (on the Tokio runtime of the
    /// request; without one, nothing is taken ahead) that holds the subject's gate, so that a
    /// request finding both slices used up waits for it instead of taking its own.
    fn refill_ahead(&self, key: u64, subject: &Subject, policies: &[Policy]) {
        let gate = self.gate(key);
        let turn = gate.gate.clone().try_lock_owned();
        // Nothing is taken ahead without a runtime to run it on, or while a slice is being
        // taken already.
        if let (Ok(runtime), Ok(turn)) = (tokio::runtime::Handle::try_current(), turn) {
            let this = self.clone();
            let (subject, policies) = (subject.clone(), policies.to_vec());
            runtime.spawn(async move {
                this.refill(key, &subject, &policies).await;
                drop(turn);
                drop(gate);
            });
        }
    }

    /// Takes a slice and keeps it as the subject's next one; gives it back if the subject's
    /// slices were dropped meanwhile (flush, reset) or another next slice is there.
    async fn refill(&self, key: u64, subject: &Subject, policies: &[Policy]) {
        // What the current slice has left only goes down from here: with the new slice, the
        // instance holds at most one slice unused, as without taking ahead.
        let left = self.lock().get(&key).map_or(0, |held| held.current.left);
        let size = self.slice_size(policies, 1).saturating_sub(left);
        if size == 0 {
            return;
        }
        let slice = match self.inner.store.check(subject, policies, size).await {
            Ok(taken) if taken.is_allowed() => {
                Some(Slice::new(taken, size, size, self.inner.lease))
            }
            Ok(_) => None,
            Err(error) => {
                tracing::debug!(target: "redtower::ratelimit", %error, "taking the next leased slice failed; the subject's requests take one when theirs runs out");
                None
            }
        };
        let spare = {
            let mut slices = self.lock();
            match slices.get_mut(&key) {
                Some(held) => {
                    if held.next.is_none() {
                        held.next = slice;
                        None
                    } else {
                        slice
                    }
                }
                None => slice,
            }
        };
        if let Some(slice) = spare {
            self.give_back(subject, slice).await;
        }
    }

    /// Returns the unused units of what `held` holds to the store.
    async fn give_back_all(&self, held: Held) {
        self.give_back(&held.subject, held.current).await;
        if let Some(next) = held.next {
            self.give_back(&held.subject, next).await;
        }
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
        // Slices being taken at this moment land first.
        let keys: Vec<u64> = lock(&self.inner.refreshing).keys().copied().collect();
        for key in keys {
            let gate = self.gate(key);
            drop(gate.gate.lock().await);
        }
        let all: Vec<Held> = self.lock().drain().map(|(_, held)| held).collect();
        for held in all {
            self.give_back_all(held).await;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request's hold on the refresh gate of one subject ([`LeasedStore::gate`]); the last one
/// to let go removes the gate, so gates exist only for subjects being refreshed.
struct Gate {
    store: LeasedStore,
    key: u64,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let mut gates = lock(&self.store.inner.refreshing);
        // Handles are cloned from the map under this lock; other clones (a task's turn) are
        // made only while a handle lives and dropped before it. Two means the map's and this
        // one, and nobody can take another while this lock is held.
        if Arc::strong_count(&self.gate) == 2 {
            gates.remove(&self.key);
        }
    }
}

#[async_trait::async_trait]
impl RateLimitStore for LeasedStore {
    async fn check(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Result<Decision> {
        let key = self.key(subject, policies);
        if let Some(d) = self.local(key, subject, policies, cost) {
            return Ok(d);
        }
        let gate = self.gate(key);
        let _turn = gate.gate.lock().await;
        // The request ahead of this one may have taken a new slice meanwhile.
        if let Some(d) = self.local(key, subject, policies, cost) {
            return Ok(d);
        }
        // The subject's old slices (used up or past their lease) go back first.
        let old = self.lock().remove(&key);
        if let Some(held) = old {
            self.give_back_all(held).await;
        }
        let store = &self.inner.store;
        let size = self.slice_size(policies, cost);
        let room = self.lock().len() < self.inner.max_subjects;
        if room && size > cost {
            let taken = store.check(subject, policies, size).await?;
            if taken.is_allowed() {
                let slice = Slice::new(taken, size, size - cost, self.inner.lease);
                let decision = slice.decision();
                let replaced = self.lock().insert(key, Held::new(subject.clone(), slice));
                if let Some(held) = replaced {
                    self.give_back_all(held).await;
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
        self.local(self.key(subject, policies), subject, policies, cost)
            .map(Ok)
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
