//! The circuit breaker: after an outage the store is skipped for a cooldown, so requests go
//! straight to the origin (fail-open) without paying a timeout each.
//!
//! A store that has not made its first connection yet is not in an outage: operations first
//! wait for it ([`CacheStore::ready`](crate::CacheStore::ready), outside their own timeout),
//! and a store that could not be reached at all while never connected fails open without
//! opening the breaker. The breaker opens only when an operation failed against a store that
//! had connected.

use std::{
    future::Future,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::time::Instant;

use super::{Cache, lock, stats::bump};
use crate::{Error, Result};

/// The longest cooldown used when the configured one does not fit the clock.
const MAX_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Default)]
pub(super) struct Breaker {
    open_until: Mutex<Option<Instant>>,
    open: AtomicBool,
    /// Whether "not connected yet" was logged (once, until the store answers).
    unreachable_logged: AtomicBool,
    /// The store's connection count when the breaker opened: a reconnect since then closes it
    /// before the cooldown ends.
    opened_at_connections: AtomicU64,
}

impl Cache {
    /// Runs a store operation through the circuit breaker.
    pub(crate) async fn guard<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        let b = &self.inner.breaker;
        let store = &self.inner.store;
        if !store.is_ready() {
            // A fresh process: wait for the first connection instead of failing fast.
            if let Err(e) = store.ready().await {
                if !b.unreachable_logged.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        target: "redtower::cache",
                        cache = self.name(),
                        error = %e,
                        "cache store not reachable since start; failing open (requests go to the origin)"
                    );
                }
                return Err(e);
            }
        }
        if b.open.load(Ordering::Acquire) {
            let until = *lock(&b.open_until);
            let reconnected =
                store.connections() != b.opened_at_connections.load(Ordering::Acquire);
            match until {
                Some(t) if Instant::now() < t && !reconnected => return Err(Error::CircuitOpen),
                _ => {}
            }
        }
        let result = op.await;
        match &result {
            Ok(_) => {
                if b.unreachable_logged.load(Ordering::Relaxed) {
                    b.unreachable_logged.store(false, Ordering::Relaxed);
                }
                if b.open.swap(false, Ordering::AcqRel) {
                    tracing::info!(target: "redtower::cache", cache = self.name(), "cache store is back");
                }
            }
            Err(e) if e.is_outage() => {
                let now = Instant::now();
                let cooldown = self.inner.config.breaker_cooldown;
                b.opened_at_connections
                    .store(store.connections(), Ordering::Release);
                *lock(&b.open_until) =
                    Some(now.checked_add(cooldown).unwrap_or(now + MAX_COOLDOWN));
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

    pub(super) fn fail_open(&self, op: &'static str, e: &Error) {
        bump(&self.inner.stats.fail_open);
        metrics::counter!("redtower_cache_fail_open_total", "cache" => self.name(), "op" => op)
            .increment(1);
        tracing::debug!(target: "redtower::cache", cache = self.name(), redis.op = op, error = %e, "cache store failed; failing open");
    }
}
