//! Statistics: [`CacheStats`] counters and the `metrics` events of lookups.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Cache;

/// Counters of one [`Cache`] and its clones since it was built (the same events also go to the
/// `metrics` facade, labelled by cache name and route).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Fresh entries served (L1 or store).
    pub hits: u64,
    /// Of `hits` and `stale`, how many came from the L1.
    pub l1_hits: u64,
    /// Of `hits` and `stale`, how many were decoded entries of the tracked tier
    /// ([`RedisStore::near_cache`](crate::RedisStore::near_cache)), served with no store read.
    pub near_hits: u64,
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
    /// Requests served by a fill found in the store instead of fetching: another instance's
    /// (while they waited for its lock), or one that landed just before they took the lock.
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
pub(super) struct Stats {
    pub(super) hits: AtomicU64,
    pub(super) l1_hits: AtomicU64,
    pub(super) near_hits: AtomicU64,
    pub(super) stale: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) fetches: AtomicU64,
    pub(super) refreshes: AtomicU64,
    pub(super) coalesced: AtomicU64,
    pub(super) remote_fills: AtomicU64,
    pub(super) lock_timeouts: AtomicU64,
    pub(super) fail_open: AtomicU64,
    pub(super) corrupt: AtomicU64,
    pub(super) stored: AtomicU64,
    pub(super) bypass: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Cache {
    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let s = &self.inner.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: g(&s.hits),
            l1_hits: g(&s.l1_hits),
            near_hits: g(&s.near_hits),
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
