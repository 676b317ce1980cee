//! [`MemoryStore`]: the in-process backend, with the same semantics as Redis.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    Decision, ManualClock, Policy, Result, Subject,
    model::{self, State},
    store::wall_clock_micros,
};

const SHARDS: usize = 32;
/// Every this many checks, one shard (in turn) drops its expired counters.
const SWEEP_EVERY: u64 = 256;

type Entries = Vec<(&'static str, State, u64)>;

#[derive(Default)]
struct Shard {
    subjects: HashMap<String, Entries>,
}

/// Counters in this process: for one instance, tests, or as the fallback when Redis is down.
///
/// Same semantics as [`RedisStore`](crate::RedisStore) (both run the [`model`]), with time
/// from the Tokio clock, so tests can `tokio::time::pause()` and `advance()`, or from a
/// [`ManualClock`]. Expired counters are swept as the store is used. Cloning shares the counters.
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
    hasher: RandomState,
    base_wall_us: u64,
    base: tokio::time::Instant,
    clock: Option<ManualClock>,
    checks: AtomicU64,
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
        Self::build(None)
    }

    /// Reads time from `clock` instead of the Tokio clock (tests).
    #[must_use]
    pub fn clock(self, clock: ManualClock) -> Self {
        Self::build(Some(clock))
    }

    fn build(clock: Option<ManualClock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                hasher: RandomState::new(),
                base_wall_us: wall_clock_micros(),
                base: tokio::time::Instant::now(),
                clock,
                checks: AtomicU64::new(0),
            }),
        }
    }

    /// µs since the Unix epoch, by this store's clock.
    pub fn now_micros(&self) -> u64 {
        match &self.inner.clock {
            Some(c) => c.now_micros(),
            None => {
                let elapsed = self.inner.base.elapsed().as_micros();
                self.inner.base_wall_us + u64::try_from(elapsed).unwrap_or(u64::MAX)
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

    /// Checks synchronously (the store never waits).
    pub fn check_now(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Decision {
        let now = self.now_micros();
        let n = self.inner.checks.fetch_add(1, Ordering::Relaxed) + 1;
        if n % SWEEP_EVERY == 0 {
            let i = (n / SWEEP_EVERY) as usize % SHARDS;
            let mut shard = self.inner.shards[i]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            shard.subjects.retain(|_, entries| {
                entries.retain(|e| e.2 > now);
                !entries.is_empty()
            });
        }
        let hash = self.inner.hasher.hash_one(subject.as_str());
        let shard = &self.inner.shards[(hash as usize) % SHARDS];
        // A poisoned lock only means another thread panicked mid-update of plain data.
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let entries = shard.subjects.get(subject.as_str());
        let cost = u64::from(cost);
        let results: Vec<_> = policies
            .iter()
            .map(|p| {
                let state = entries.and_then(|es| {
                    es.iter()
                        .find(|e| e.0 == p.name() && e.2 > now)
                        .map(|e| e.1)
                });
                model::evaluate(p.quota(), state, now, cost)
            })
            .collect();
        let decision = Decision::new(policies, results.iter().map(|r| r.0));
        if decision.is_allowed() {
            let entries = shard
                .subjects
                .entry(subject.as_str().to_owned())
                .or_default();
            for (p, (outcome, update)) in policies.iter().zip(&results) {
                if !outcome.allowed {
                    continue;
                }
                let expires = now + update.ttl_us.max(1);
                match entries.iter_mut().find(|e| e.0 == p.name()) {
                    Some(e) => *e = (p.name(), update.state, expires),
                    None => entries.push((p.name(), update.state, expires)),
                }
            }
        }
        decision
    }
}

#[async_trait::async_trait]
impl crate::RateLimitStore for MemoryStore {
    async fn check(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Result<Decision> {
        Ok(self.check_now(subject, policies, cost))
    }
}
