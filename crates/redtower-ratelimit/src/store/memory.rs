//! [`MemoryStore`]: the in-process backend, with the same semantics as Redis.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::{
    Decision, Policy, Result, Subject,
    model::{self, State},
    store::{ManualClock, wall_clock_micros},
};

const SHARDS: usize = 32;
/// Every this many checks on a shard, one shard (in turn) drops its expired counters.
const SWEEP_EVERY: u64 = 256;
/// The default of [`MemoryStore::max_subjects`].
const MAX_SUBJECTS: usize = 100_000;

type Entries = Vec<(&'static str, State, u64)>;
/// Concurrency leases per subject and limit name: each lease's token and expiry (µs).
type Leases = HashMap<(String, &'static str), Vec<(u64, u64)>>;

#[derive(Default)]
struct Shard {
    subjects: HashMap<String, Entries>,
    /// Checks on this shard (kept under its lock: no shared counter to contend on).
    checks: u64,
}

/// Counters in this process: for one instance, tests, or as the fallback when Redis is down.
///
/// Same semantics as [`RedisStore`](crate::RedisStore) (the Lua script is checked against this
/// store's arithmetic by a differential test), with time from the Tokio clock, so tests can
/// `tokio::time::pause()` and `advance()` (or, with the `testing` feature, from a
/// `ManualClock`). Expired counters are swept as the store is used. Cloning shares the
/// counters.
///
/// The store holds at most [`max_subjects`](Self::max_subjects) subjects (100,000 by
/// default): clients choose their subjects (a routed IPv6 /48 alone is 65,536 /64 buckets), so
/// without a bound they would choose the memory the process uses.
///
/// ```
/// use redtower_ratelimit::{MemoryStore, Policy, Quota, RateLimitStore, Subject, nonzero};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let store = MemoryStore::new();
/// let policies = [Policy::new("api", Quota::per_minute(nonzero!(2)))];
/// let alice = Subject::new("alice");
/// assert!(store.check(&alice, &policies, 1).await.unwrap().is_allowed());
/// assert!(store.check(&alice, &policies, 1).await.unwrap().is_allowed());
/// let third = store.check(&alice, &policies, 1).await.unwrap();
/// assert!(!third.is_allowed());
/// assert_eq!(third.retry_after(), Some(std::time::Duration::from_secs(30)));
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Vec<Mutex<Shard>>,
    /// The most subjects one shard holds.
    shard_cap: usize,
    hasher: RandomState,
    base_wall_us: u64,
    base: tokio::time::Instant,
    clock: Option<ManualClock>,
    next_sweep: AtomicUsize,
    /// Concurrency leases: per subject and limit name, each lease's token and expiry (µs).
    /// Only subjects with a request in flight are held.
    leases: Mutex<Leases>,
    /// Per-subject limits of overridable policies: (subject, policy name) -> limit.
    overrides: Mutex<HashMap<(String, String), std::num::NonZeroU32>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("subjects", &self.len())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the Tokio clock.
    pub fn new() -> Self {
        Self::build(None, MAX_SUBJECTS)
    }

    /// Reads time from `clock` instead of the Tokio clock (tests). Returns an empty store:
    /// call it before using the store.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    #[must_use]
    pub fn clock(self, clock: ManualClock) -> Self {
        Self::build(Some(clock), self.max())
    }

    /// The most subjects held at once, rounded up to a multiple of 32 (the store's shards).
    /// Defaults to 100,000 (at most about 35 MB: about 330 bytes a subject, measured; see
    /// the crate's limits).
    ///
    /// When a subject arrives at a full shard, the shard drops its expired counters, then, if
    /// it is still nearly full, the eighth of its subjects whose counters expire soonest: the
    /// ones closest to a full allowance, so little is forgotten. A dropped subject starts over
    /// with a full allowance. The work is a pass over one shard every eighth of a shard's
    /// worth of new subjects: constant per request on average, whatever clients send.
    ///
    /// Returns an empty store: call it before using the store.
    ///
    /// ```
    /// use redtower_ratelimit::{MemoryStore, Policy, Quota, Subject, nonzero};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let store = MemoryStore::new().max_subjects(1_024);
    /// let policies = [Policy::new("api", Quota::per_hour(nonzero!(10)))];
    /// for i in 0..10_000 {
    ///     store.check_now(&Subject::new(format!("client-{i}")), &policies, 1);
    /// }
    /// assert!(store.len() <= 1_024);
    /// # }
    /// ```
    #[must_use]
    pub fn max_subjects(self, max: usize) -> Self {
        Self::build(self.inner.clock.clone(), max)
    }

    #[cfg(feature = "testing")]
    fn max(&self) -> usize {
        self.inner.shard_cap * SHARDS
    }

    fn build(clock: Option<ManualClock>, max: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                shard_cap: max.div_ceil(SHARDS).max(1),
                hasher: RandomState::new(),
                base_wall_us: wall_clock_micros(),
                base: tokio::time::Instant::now(),
                clock,
                next_sweep: AtomicUsize::new(0),
                leases: Mutex::default(),
                overrides: Mutex::default(),
            }),
        }
    }

    /// µs since the Unix epoch, by this store's clock.
    pub fn now_micros(&self) -> u64 {
        match &self.inner.clock {
            Some(c) => c.now_micros(),
            None => {
                let elapsed = self.inner.base.elapsed().as_micros();
                self.inner
                    .base_wall_us
                    .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
            }
        }
    }

    /// Subjects with at least one counter held (expired ones may linger until swept).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.subjects.len()))
            .sum()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets (or with `None`, removes) the limit of the [overridable](Policy::overridable)
    /// policy named `policy` for `subject`: it applies to the subject's next check. The
    /// override keeps the policy's period and algorithm, with a burst of `limit`.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use redtower_ratelimit::{MemoryStore, Policy, Quota, Subject, nonzero};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let store = MemoryStore::new();
    /// let p = [Policy::new("api", Quota::per_hour(nonzero!(1)).fixed_window()).overridable(true)];
    /// let vip = Subject::new("vip");
    /// assert!(store.check_now(&vip, &p, 1).is_allowed());
    /// assert!(!store.check_now(&vip, &p, 1).is_allowed());
    /// store.set_override(&vip, "api", NonZeroU32::new(3));
    /// assert!(store.check_now(&vip, &p, 1).is_allowed());
    /// # }
    /// ```
    pub fn set_override(
        &self,
        subject: &Subject,
        policy: &str,
        limit: Option<std::num::NonZeroU32>,
    ) {
        let mut map = self
            .inner
            .overrides
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let key = (subject.as_str().to_owned(), policy.to_owned());
        match limit {
            Some(limit) => {
                map.insert(key, limit);
            }
            None => {
                map.remove(&key);
            }
        }
    }

    /// `policies` with the subject's overrides applied (only overridable ones are looked up).
    fn effective<'p>(
        &self,
        subject: &Subject,
        policies: &'p [Policy],
    ) -> std::borrow::Cow<'p, [Policy]> {
        if !policies.iter().any(Policy::is_overridable) {
            return std::borrow::Cow::Borrowed(policies);
        }
        let map = self
            .inner
            .overrides
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        policies
            .iter()
            .map(|p| {
                let limit = p
                    .is_overridable()
                    .then(|| map.get(&(subject.as_str().to_owned(), p.name().to_owned())))
                    .flatten();
                match limit {
                    Some(l) => Policy::new(p.name(), p.quota().overridden(*l))
                        .shadow(p.is_shadow())
                        .overridable(true),
                    None => *p,
                }
            })
            .collect()
    }

    /// Checks synchronously (the store never waits).
    pub fn check_now(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Decision {
        let policies = &*self.effective(subject, policies);
        let now = self.now_micros();
        let cost = u64::from(cost);
        let key = subject.as_str();
        let hash = self.inner.hasher.hash_one(key);
        let (decision, sweep) = {
            // A poisoned lock only means another thread panicked mid-update of plain data.
            let mut guard = self.inner.shards[(hash as usize) % SHARDS]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let shard = &mut *guard;
            shard.checks = shard.checks.wrapping_add(1);
            let sweep = shard.checks % SWEEP_EVERY == 0;
            let decision = match shard.subjects.get_mut(key) {
                Some(entries) => apply(entries, policies, now, cost),
                None => {
                    let mut entries = Entries::new();
                    let decision = apply(&mut entries, policies, now, cost);
                    if !entries.is_empty() {
                        if shard.subjects.len() >= self.inner.shard_cap {
                            make_room(&mut shard.subjects, self.inner.shard_cap, now);
                        }
                        shard.subjects.insert(key.to_owned(), entries);
                    }
                    decision
                }
            };
            (decision, sweep)
        };
        let decision = decision.checked_at(now);
        if sweep {
            // Every so often one shard, in turn, drops its expired counters, so traffic on any
            // subject eventually sweeps them all.
            let i = self.inner.next_sweep.fetch_add(1, Ordering::Relaxed) % SHARDS;
            let mut shard = self.inner.shards[i]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            shard.subjects.retain(|_, entries| {
                entries.retain(|e| e.2 > now);
                !entries.is_empty()
            });
        }
        decision
    }
}

impl MemoryStore {
    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let hash = self.inner.hasher.hash_one(key);
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.inner.shards[(hash as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// [`peek`](crate::RateLimitStore::peek), synchronously.
    pub fn peek_now(&self, subject: &Subject, policies: &[Policy]) -> Decision {
        let policies = &*self.effective(subject, policies);
        let now = self.now_micros();
        let shard = self.shard(subject.as_str());
        let entries = shard.subjects.get(subject.as_str());
        let outcomes = policies.iter().map(|p| {
            let state = entries.and_then(|e| live(e, p.name(), now));
            model::peek(p.quota(), state, now)
        });
        Decision::new(policies, outcomes).checked_at(now)
    }

    /// [`reset`](crate::RateLimitStore::reset), synchronously.
    pub fn reset_now(&self, subject: &Subject, policies: &[Policy]) {
        let mut shard = self.shard(subject.as_str());
        if let Some(entries) = shard.subjects.get_mut(subject.as_str()) {
            entries.retain(|e| !policies.iter().any(|p| p.name() == e.0));
            if entries.is_empty() {
                shard.subjects.remove(subject.as_str());
            }
        }
    }

    /// [`refund`](crate::RateLimitStore::refund), synchronously.
    pub fn refund_now(&self, subject: &Subject, decision: &Decision, cost: u32) {
        let now = self.now_micros();
        let mut shard = self.shard(subject.as_str());
        let Some(entries) = shard.subjects.get_mut(subject.as_str()) else {
            return;
        };
        for p in decision.consumed() {
            let state = live(entries, p.name(), now);
            let Some(update) =
                model::refund(p.quota(), state, now, decision.at_micros(), u64::from(cost))
            else {
                continue;
            };
            if let Some(e) = entries.iter_mut().find(|e| e.0 == p.name()) {
                *e = (p.name(), update.state, now.saturating_add(update.ttl_us));
            }
        }
    }
}

/// A policy's state, unless it has expired.
fn live(entries: &Entries, name: &str, now: u64) -> Option<State> {
    entries
        .iter()
        .find(|e| e.0 == name && e.2 > now)
        .map(|e| e.1)
}

/// When a subject's counters stop mattering: the latest expiry among them.
fn expiry(entries: &Entries) -> u64 {
    entries.iter().map(|e| e.2).max().unwrap_or(0)
}

/// Makes room in a full shard: drops expired counters, then, if fewer than an eighth of
/// `cap` is free, the subjects whose counters expire soonest until an eighth is free (ties:
/// any of them). One pass over the shard (and a sort-free selection), for an eighth of `cap`
/// insertions.
fn make_room(subjects: &mut HashMap<String, Entries>, cap: usize, now: u64) {
    subjects.retain(|_, entries| {
        entries.retain(|e| e.2 > now);
        !entries.is_empty()
    });
    let keep = cap - (cap / 8).max(1);
    if subjects.len() <= keep {
        return;
    }
    let mut expiries: Vec<u64> = subjects.values().map(expiry).collect();
    let drop = subjects.len() - keep;
    // The `drop`-th soonest expiry: everything sooner goes, and as many at it as needed.
    let (_, &mut threshold, _) = expiries.select_nth_unstable(drop - 1);
    let mut at_threshold = drop - expiries.iter().filter(|&&e| e < threshold).count();
    subjects.retain(|_, entries| {
        let e = expiry(entries);
        if e < threshold {
            return false;
        }
        if e == threshold && at_threshold > 0 {
            at_threshold -= 1;
            return false;
        }
        true
    });
}

/// Evaluates `policies` against one subject's counters and, if admitted, updates them in place.
fn apply(entries: &mut Entries, policies: &[Policy], now: u64, cost: u64) -> Decision {
    fn state(entries: &Entries, name: &str, now: u64) -> Option<State> {
        entries
            .iter()
            .find(|e| e.0 == name && e.2 > now)
            .map(|e| e.1)
    }
    let decision = Decision::new(
        policies,
        policies
            .iter()
            .map(|p| model::evaluate(p.quota(), state(entries, p.name(), now), now, cost).0),
    );
    if decision.is_allowed() {
        // The model is pure and cheap: evaluate again for the updates rather than keep a list.
        for p in policies {
            let (outcome, update) =
                model::evaluate(p.quota(), state(entries, p.name(), now), now, cost);
            if !outcome.allowed {
                continue;
            }
            let expires = now.saturating_add(update.ttl_us.max(1));
            match entries.iter_mut().find(|e| e.0 == p.name()) {
                Some(e) => *e = (p.name(), update.state, expires),
                None => entries.push((p.name(), update.state, expires)),
            }
        }
    }
    decision
}

#[async_trait::async_trait]
impl crate::RateLimitStore for MemoryStore {
    async fn check(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Result<Decision> {
        Ok(self.check_now(subject, policies, cost))
    }

    fn try_check_now(
        &self,
        subject: &Subject,
        policies: &[Policy],
        cost: u32,
    ) -> Option<Result<Decision>> {
        Some(Ok(self.check_now(subject, policies, cost)))
    }

    async fn peek(&self, subject: &Subject, policies: &[Policy]) -> Result<Decision> {
        Ok(self.peek_now(subject, policies))
    }

    async fn reset(&self, subject: &Subject, policies: &[Policy]) -> Result<()> {
        self.reset_now(subject, policies);
        Ok(())
    }

    async fn refund(&self, subject: &Subject, decision: &Decision, cost: u32) -> Result<()> {
        self.refund_now(subject, decision, cost);
        Ok(())
    }

    async fn acquire(
        &self,
        subject: &Subject,
        name: &'static str,
        max: u32,
        ttl: std::time::Duration,
        token: u64,
    ) -> Result<crate::Acquired> {
        let now = self.now_micros();
        let ttl = u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX);
        let mut leases = self.inner.leases.lock().unwrap_or_else(|e| e.into_inner());
        let held = leases
            .entry((subject.as_str().to_owned(), name))
            .or_default();
        held.retain(|&(t, e)| e > now && t != token);
        let taken = held.len() < max as usize;
        if taken {
            held.push((token, now.saturating_add(ttl)));
        }
        let n = u32::try_from(held.len()).unwrap_or(u32::MAX);
        if held.is_empty() {
            leases.remove(&(subject.as_str().to_owned(), name));
        }
        Ok(crate::Acquired { taken, held: n })
    }

    async fn set_override(
        &self,
        subject: &Subject,
        policy: &str,
        limit: Option<std::num::NonZeroU32>,
    ) -> Result<()> {
        MemoryStore::set_override(self, subject, policy, limit);
        Ok(())
    }

    async fn release(&self, subject: &Subject, name: &'static str, token: u64) -> Result<()> {
        let mut leases = self.inner.leases.lock().unwrap_or_else(|e| e.into_inner());
        let key = (subject.as_str().to_owned(), name);
        if let Some(held) = leases.get_mut(&key) {
            held.retain(|&(t, _)| t != token);
            if held.is_empty() {
                leases.remove(&key);
            }
        }
        Ok(())
    }
}
