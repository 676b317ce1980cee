//! Degraded operation: [`FailurePolicy`], the circuit breaker, the local cache of denied
//! subjects, and [`MissingKey`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{Decision, model::Outcome};

/// What the layer does when the store cannot answer (Redis down, slower than the
/// [timeout](crate::RateLimitLayer::timeout), circuit breaker open, script error).
///
/// Every policy logs one WARN when the store starts failing and one INFO when it recovers
/// (not one per request), and counts `redtower_ratelimit_fail_open_total` /
/// `redtower_ratelimit_fail_closed_total` / `redtower_ratelimit_fallback_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Let the request through without rate limit headers (the default: an outage of the
    /// limiter should not become an outage of the API).
    #[default]
    FailOpen,
    /// Answer `503 Service Unavailable` with `Retry-After` (the breaker's cool-down): for
    /// endpoints where an unlimited flood is worse than refusing, such as login or OTP.
    FailClosed,
    /// Check the same policies against an in-process [`MemoryStore`](crate::MemoryStore) owned
    /// by the layer. Each instance then enforces the limits on its own, so the effective limit
    /// is up to `limit × instances` during the outage.
    LocalFallback,
}

/// Circuit breaker settings: after `failures` consecutive store failures, the store is not
/// called for `cool_down`; then one request probes it, and its success closes the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Consecutive failures that open the breaker. Defaults to 5.
    pub failures: u32,
    /// How long it stays open before a probe. Defaults to 1 s.
    pub cool_down: Duration,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            failures: 5,
            cool_down: Duration::from_secs(1),
        }
    }
}

/// What to do when the key extractor finds no identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Answer the extractor's [`KeyRejection`](crate::KeyRejection) status with a problem
    /// body (the default: a misconfiguration is loud, and clients cannot dodge the limit by
    /// omitting a header).
    #[default]
    Reject,
    /// Let the request through unlimited.
    Allow,
}

pub(crate) struct Breaker {
    config: CircuitBreaker,
    base: Instant,
    failures: AtomicU32,
    /// µs since `base` until which the breaker is open; 0 = closed.
    open_until: AtomicU64,
    /// µs since `base` when the current half-open probe started; 0 = none. A probe whose
    /// request was dropped never reports back, so a new one may start after a cool-down.
    probe_started: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(config: CircuitBreaker) -> Self {
        Self {
            config,
            base: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probe_started: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Whether the store may be called now.
    pub(crate) fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now();
        if now < until {
            return false;
        }
        // Half-open: one probe at a time (or a new one if the last never reported back).
        let started = self.probe_started.load(Ordering::Acquire);
        let stale = started != 0 && now.saturating_sub(started) >= self.cool_down_us();
        if started != 0 && !stale {
            return false;
        }
        self.probe_started
            .compare_exchange(started, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn cool_down_us(&self) -> u64 {
        u64::try_from(self.config.cool_down.as_micros()).unwrap_or(u64::MAX)
    }

    pub(crate) fn success(&self) {
        // Plain loads first: while healthy, every request would otherwise write these shared
        // cache lines.
        if self.failures.load(Ordering::Acquire) == 0
            && self.open_until.load(Ordering::Acquire) == 0
            && self.probe_started.load(Ordering::Acquire) == 0
        {
            return;
        }
        self.failures.store(0, Ordering::Release);
        self.open_until.store(0, Ordering::Release);
        self.probe_started.store(0, Ordering::Release);
    }

    pub(crate) fn failure(&self) {
        let n = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let probing = self.probe_started.swap(0, Ordering::AcqRel) != 0;
        if n >= self.config.failures.max(1) || probing {
            self.open_until.store(
                self.now().saturating_add(self.cool_down_us()),
                Ordering::Release,
            );
        }
    }

    pub(crate) fn cool_down(&self) -> Duration {
        self.config.cool_down
    }
}

/// Subjects denied recently, until their retry time: answered locally, with no store call.
///
/// A bounded cache (moka): at most `capacity` entries, each dropped at its retry time;
/// beyond the bound, the entries least likely to be asked for again go first (TinyLFU), and
/// neither an insert nor a lookup takes a lock shared by every request.
pub(crate) struct DeniedCache {
    /// `None` when disabled (capacity 0).
    entries: Option<moka::sync::Cache<u64, Arc<Denied>>>,
    /// Whether anything was ever denied, so the common case (nobody denied) skips the lookup.
    used: AtomicBool,
}

struct Denied {
    at: Instant,
    until: Instant,
    cost: u32,
    decision: Decision,
}

/// Each entry lives until its retry time (by the real clock; lookups check the Tokio clock
/// too).
struct UntilRetry;

impl moka::Expiry<u64, Arc<Denied>> for UntilRetry {
    fn expire_after_create(
        &self,
        _: &u64,
        denied: &Arc<Denied>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(denied.until.saturating_duration_since(denied.at))
    }
}

impl DeniedCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: (capacity > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(u64::try_from(capacity).unwrap_or(u64::MAX))
                    .expire_after(UntilRetry)
                    .build()
            }),
            used: AtomicBool::new(false),
        }
    }

    /// A still-valid denial for `key` covering `cost`, with its times aged.
    pub(crate) fn get(&self, key: impl FnOnce() -> u64, cost: u32) -> Option<Decision> {
        let entries = self.entries.as_ref()?;
        if !self.used.load(Ordering::Relaxed) {
            return None;
        }
        let key = key();
        let hit = entries.get(&key)?;
        let now = Instant::now();
        if now >= hit.until {
            entries.invalidate(&key);
            return None;
        }
        if cost < hit.cost {
            return None;
        }
        let aged = u64::try_from((now - hit.at).as_micros()).unwrap_or(u64::MAX);
        let policies: Vec<_> = hit
            .decision
            .policies()
            .iter()
            .map(|d| *d.policy())
            .collect();
        let outcomes = hit.decision.policies().iter().map(|d| {
            let o = d.outcome();
            Outcome {
                reset_us: o.reset_us.saturating_sub(aged),
                retry_after_us: if o.allowed {
                    0
                } else {
                    o.retry_after_us.saturating_sub(aged).max(1)
                },
                ..*o
            }
        });
        Some(Decision::new(&policies, outcomes))
    }

    pub(crate) fn insert(&self, key: u64, cost: u32, decision: &Decision) {
        let Some(entries) = &self.entries else {
            return;
        };
        let Some(wait) = decision.retry_after() else {
            return;
        };
        let now = Instant::now();
        // A wait past what the clock can hold is not cached (the store answers instead).
        let Some(until) = now.checked_add(wait) else {
            return;
        };
        entries.insert(
            key,
            Arc::new(Denied {
                at: now,
                until,
                cost,
                decision: decision.clone(),
            }),
        );
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Entries held (after pending evictions ran): for tests.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.entries.as_ref().map_or(0, |e| {
            e.run_pending_tasks();
            e.entry_count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_probes_once_and_survives_a_dropped_probe() {
        let b = Breaker::new(CircuitBreaker {
            failures: 2,
            cool_down: Duration::from_secs(1),
        });
        assert!(b.allow());
        b.failure();
        assert!(b.allow(), "one failure is not enough");
        b.failure();
        assert!(!b.allow(), "open");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.allow(), "half-open: one probe");
        assert!(!b.allow(), "only one probe at a time");
        // The probe's request is dropped and never reports; a new probe may start later.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.allow());
        b.failure();
        assert!(!b.allow(), "a failed probe re-opens");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.allow());
        b.success();
        assert!(b.allow() && b.allow(), "closed again");
    }

    fn denied() -> Decision {
        let p = [crate::Policy::new(
            "p",
            crate::Quota::per_hour(crate::nonzero!(1)),
        )];
        Decision::new(
            &p,
            [Outcome {
                allowed: false,
                remaining: 0,
                reset_us: 3_600_000_000,
                retry_after_us: 3_600_000_000,
            }],
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_denied_cache_is_bounded() {
        let cache = DeniedCache::new(1_000);
        let d = denied();
        for key in 0..20_000u64 {
            cache.insert(key, 1, &d);
        }
        let held = cache.len();
        assert!(held <= 1_000, "{held} entries held");
        // A subject that keeps asking stays cached through a flood of one-off subjects.
        let hot = 1_000_000;
        cache.insert(hot, 1, &d);
        for key in 20_000..40_000u64 {
            assert!(cache.get(|| hot, 1).is_some());
            cache.insert(key, 1, &d);
        }
        assert!(cache.len() <= 1_000);
        assert!(cache.get(|| hot, 1).is_some());
        // A huge wait is not cached, and does not panic.
        let p = [crate::Policy::new(
            "p",
            crate::Quota::per_hour(crate::nonzero!(1)),
        )];
        let forever = Decision::new(
            &p,
            [Outcome {
                allowed: false,
                remaining: 0,
                reset_us: u64::MAX,
                retry_after_us: u64::MAX,
            }],
        );
        cache.insert(7, 1, &forever);
    }
}
