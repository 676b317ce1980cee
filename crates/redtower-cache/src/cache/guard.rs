//! Store operations through the circuit breaker ([`redtower_client::breaker::Breaker`]), and
//! the accounting of failing open.
//!
//! A store that has not made its first connection yet is not in an outage: operations first
//! wait for it ([`CacheStore::ready`](crate::CacheStore::ready), outside their own timeout),
//! and a store that could not be reached at all while never connected fails open without
//! counting toward the breaker. Only an outage of a store that had connected (a timeout, a
//! lost connection) counts; after [`CircuitBreaker::failures`](redtower_client::CircuitBreaker)
//! of them in a row the store is skipped for the cool-down (or until the client reconnects),
//! then one operation probes it.

use std::{future::Future, sync::atomic::Ordering};

use super::{Cache, stats::bump};
use crate::{Error, Result};

impl Cache {
    /// Runs a store operation through the circuit breaker.
    pub(crate) async fn guard<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        let inner = &*self.inner;
        let store = &inner.store;
        if !store.is_ready() {
            // A fresh process: wait for the first connection instead of failing fast.
            if let Err(e) = store.ready().await {
                if !inner.unreachable_logged.swap(true, Ordering::AcqRel) {
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
        if !inner.breaker.allow(store.connections()).is_allowed() {
            return Err(Error::CircuitOpen);
        }
        let result = op.await;
        match &result {
            Err(e) if e.is_outage() => {
                if inner.breaker.failure(store.connections()) {
                    tracing::warn!(
                        target: "redtower::cache",
                        cache = self.name(),
                        error = %e,
                        "cache store unavailable; failing open (requests go to the origin)"
                    );
                }
            }
            // An answer, even an error one: the store is reachable.
            _ => {
                if inner.unreachable_logged.load(Ordering::Relaxed) {
                    inner.unreachable_logged.store(false, Ordering::Relaxed);
                }
                if inner.breaker.success() {
                    tracing::info!(target: "redtower::cache", cache = self.name(), "cache store is back");
                }
            }
        }
        result
    }

    /// Counts (and logs at DEBUG) a store failure the caller ignores: the request goes on
    /// without the cache.
    pub(super) fn fail_open(&self, op: &'static str, e: &Error) {
        bump(&self.inner.stats.fail_open);
        metrics::counter!("redtower_cache_fail_open_total", "cache" => self.name(), "op" => op)
            .increment(1);
        tracing::debug!(target: "redtower::cache", cache = self.name(), redis.op = op, error = %e, "cache store failed; failing open");
    }
}
