//! Degraded operation: [`FailurePolicy`], the local cache of denied subjects, and
//! [`MissingKey`]. The circuit breaker is the client's ([`redtower_client::breaker`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{Decision, model::Outcome};

/// What the layer does when the store cannot answer (Redis down, slower than the
/// [timeout](crate::RateLimitLayer::timeout), circuit breaker open, script error).
///
/// Every policy logs one WARN when the [circuit breaker](crate::CircuitBreaker) opens (for
/// failures the breaker does not count, a script error or a store not reached yet: one ERROR or
/// WARN at the first of them) and one INFO when the store answers again (not one per request),
/// and counts `redtower_ratelimit_fail_open_total` /
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

    /// Forgets the denial held for `key` (after a reset).
    pub(crate) fn remove(&self, key: u64) {
        if let Some(entries) = &self.entries {
            entries.invalidate(&key);
        }
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
