//! The circuit breaker: after an outage the store is skipped for a cooldown, so requests go
//! straight to the origin (fail-open) without paying a timeout each.

use std::{
    future::Future,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::time::Instant;

use super::{Cache, lock, stats::bump};
use crate::{Error, Result};

#[derive(Default)]
pub(super) struct Breaker {
    open_until: Mutex<Option<Instant>>,
    open: AtomicBool,
}

impl Cache {
    /// Runs a store operation through the circuit breaker.
    pub(crate) async fn guard<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        let b = &self.inner.breaker;
        if b.open.load(Ordering::Acquire) {
            let until = *lock(&b.open_until);
            match until {
                Some(t) if Instant::now() < t => return Err(Error::CircuitOpen),
                _ => {}
            }
        }
        let result = op.await;
        match &result {
            Ok(_) => {
                if b.open.swap(false, Ordering::AcqRel) {
                    tracing::info!(target: "redtower::cache", cache = self.name(), "cache store is back");
                }
            }
            Err(e) if e.is_outage() => {
                *lock(&b.open_until) = Some(Instant::now() + self.inner.config.breaker_cooldown);
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
