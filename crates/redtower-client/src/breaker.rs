//! [`Breaker`]: the one circuit breaker of every layer that has a failure policy.
//!
//! After [`CircuitBreaker::failures`] consecutive failures of a store **that had connected**,
//! the breaker opens: the layer skips the store for [`CircuitBreaker::cool_down`] and applies
//! its failure policy at once, instead of paying a timeout on every request. When the
//! cool-down ends, or as soon as the client has reconnected (its
//! [`connections`](crate::Redis::connections) count moved), exactly one call goes through as a
//! probe (half-open); its success closes the breaker, its failure opens it again. A probe
//! whose caller was dropped and never reported lets a new probe start one cool-down later.
//!
//! A store that has not connected yet is not in an outage (DESIGN: "connected, never
//! connected, lost"): callers report failures with [`Breaker::failure`] only when the store
//! had connected, and wait for the first connection themselves.
//!
//! The breaker takes no lock: each call is a few atomic loads.

use std::{
    fmt,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

/// Circuit breaker settings: after `failures` consecutive store failures, the store is not
/// called for `cool_down` (or until the client reconnects); then one call probes it, and its
/// success closes the breaker.
///
/// ```
/// use std::time::Duration;
/// use redtower_client::CircuitBreaker;
///
/// let strict = CircuitBreaker::default().failures(1).cool_down(Duration::from_millis(500));
/// assert_eq!(strict.failures, 1);
/// assert_eq!(CircuitBreaker::default().cool_down, Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct CircuitBreaker {
    /// Consecutive failures that open the breaker (0 is taken as 1). Defaults to 5.
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

impl CircuitBreaker {
    /// Sets the consecutive failures that open the breaker.
    pub fn failures(mut self, failures: u32) -> Self {
        self.failures = failures;
        self
    }

    /// Sets how long the breaker stays open before a probe.
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }
}

/// What a call may do, from [`Breaker::allow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed: call the store.
    Closed,
    /// The breaker is half-open and this call is its one probe: call the store and report.
    Probe,
    /// The breaker is open: do not call the store; apply the failure policy.
    Open,
}

impl Admission {
    /// Whether the store may be called.
    pub fn is_allowed(self) -> bool {
        !matches!(self, Self::Open)
    }
}

/// The state of one circuit breaker, shared by every clone of a layer (keep it in an `Arc`).
///
/// ```
/// use redtower_client::{
///     CircuitBreaker,
///     breaker::{Admission, Breaker},
/// };
///
/// let breaker = Breaker::new(CircuitBreaker::default().failures(2));
/// let connections = 1; // `Redis::connections()` of the store's client
/// assert_eq!(breaker.allow(connections), Admission::Closed);
/// assert!(!breaker.failure(connections), "one failure does not open it");
/// assert!(breaker.failure(connections), "the second does");
/// assert_eq!(breaker.allow(connections), Admission::Open);
/// // The client reconnected: one probe goes at once.
/// assert_eq!(breaker.allow(connections + 1), Admission::Probe);
/// assert!(breaker.success(), "the probe's success closes it");
/// assert_eq!(breaker.allow(connections + 1), Admission::Closed);
/// ```
pub struct Breaker {
    config: CircuitBreaker,
    base: Instant,
    failures: AtomicU32,
    /// µs since `base` until which the breaker is open; 0 = closed.
    open_until: AtomicU64,
    /// µs since `base` when the current half-open probe started; 0 = none. A probe whose
    /// caller was dropped never reports back, so a new one may start after a cool-down.
    probe_started: AtomicU64,
    /// The client's connection count when the breaker last opened: a reconnect since then
    /// ends the cool-down early.
    opened_at_connections: AtomicU64,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("config", &self.config)
            .field("open", &self.is_open())
            .field("failures", &self.failures.load(Ordering::Relaxed))
            .finish()
    }
}

impl Breaker {
    /// A closed breaker with `config`.
    pub fn new(config: CircuitBreaker) -> Self {
        Self {
            config,
            base: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probe_started: AtomicU64::new(0),
            opened_at_connections: AtomicU64::new(0),
        }
    }

    /// The settings.
    pub fn config(&self) -> CircuitBreaker {
        self.config
    }

    /// The cool-down (for a `Retry-After` header while open).
    pub fn cool_down(&self) -> Duration {
        self.config.cool_down
    }

    /// Whether the breaker is open or half-open.
    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// µs since `base`, never 0 (0 marks "none" in the atomics).
    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn cool_down_us(&self) -> u64 {
        u64::try_from(self.config.cool_down.as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go to the store now. `connections` is the store client's
    /// connection count ([`Redis::connections`](crate::Redis::connections)): a count other
    /// than the one seen when the breaker opened means the client reconnected, which ends the
    /// cool-down early.
    pub fn allow(&self, connections: u64) -> Admission {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Admission::Closed;
        }
        let now = self.now();
        let reconnected = connections != self.opened_at_connections.load(Ordering::Acquire);
        if now < until && !reconnected {
            return Admission::Open;
        }
        // Half-open: one probe at a time; a probe that never reported is replaced after a
        // cool-down.
        let started = self.probe_started.load(Ordering::Acquire);
        let stale = started != 0 && now.saturating_sub(started) >= self.cool_down_us();
        if started != 0 && !stale {
            return Admission::Open;
        }
        match self
            .probe_started
            .compare_exchange(started, now, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Admission::Probe,
            Err(_) => Admission::Open,
        }
    }

    /// Reports a store answer. Returns `true` when this closed an open breaker (log "back").
    pub fn success(&self) -> bool {
        // The common case (closed, no failures) writes nothing.
        if self.failures.load(Ordering::Acquire) == 0
            && self.open_until.load(Ordering::Acquire) == 0
            && self.probe_started.load(Ordering::Acquire) == 0
        {
            return false;
        }
        self.failures.store(0, Ordering::Release);
        self.probe_started.store(0, Ordering::Release);
        self.open_until.swap(0, Ordering::AcqRel) != 0
    }

    /// Reports a failure of a store that had connected (an outage: a timeout, a lost
    /// connection). `connections` is the client's connection count now. Returns `true` when
    /// this opened a closed breaker (log "unavailable" once, not per request).
    pub fn failure(&self, connections: u64) -> bool {
        let n = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let probing = self.probe_started.swap(0, Ordering::AcqRel) != 0;
        if n < self.config.failures.max(1) && !probing {
            return false;
        }
        self.opened_at_connections
            .store(connections, Ordering::Release);
        let was = self.open_until.swap(
            self.now().saturating_add(self.cool_down_us()),
            Ordering::AcqRel,
        );
        was == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_probes_once_and_survives_a_dropped_probe() {
        let b = Breaker::new(CircuitBreaker::default().failures(2));
        assert_eq!(b.allow(0), Admission::Closed);
        assert!(!b.failure(0));
        assert_eq!(b.allow(0), Admission::Closed, "one failure is not enough");
        assert!(b.failure(0), "the second opens it");
        assert_eq!(b.allow(0), Admission::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.allow(0), Admission::Probe, "half-open: one probe");
        assert_eq!(b.allow(0), Admission::Open, "only one probe at a time");
        // The probe's caller is dropped and never reports; a new probe may start later.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.allow(0), Admission::Probe);
        assert!(
            !b.failure(0),
            "a failed probe re-opens (it was open already)"
        );
        assert_eq!(b.allow(0), Admission::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.allow(0), Admission::Probe);
        assert!(b.success(), "the probe closed it");
        assert_eq!(b.allow(0), Admission::Closed);
        assert!(!b.success(), "closing a closed breaker reports nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_ends_the_cool_down() {
        let b = Breaker::new(
            CircuitBreaker::default()
                .failures(1)
                .cool_down(Duration::from_secs(60)),
        );
        assert!(b.failure(3));
        assert_eq!(
            b.allow(3),
            Admission::Open,
            "open while the connection is still the one that failed"
        );
        assert_eq!(
            b.allow(4),
            Admission::Probe,
            "a reconnect lets a probe through"
        );
        assert_eq!(b.allow(4), Admission::Open, "only one probe at a time");
        assert!(b.success());
        assert_eq!(b.allow(4), Admission::Closed);
        // A failed probe on the new connection waits for the next reconnect (or cool-down).
        assert!(b.failure(4));
        assert_eq!(b.allow(4), Admission::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_failures_is_one_and_a_huge_cool_down_does_not_overflow() {
        let b = Breaker::new(
            CircuitBreaker::default()
                .failures(0)
                .cool_down(Duration::MAX),
        );
        assert!(b.failure(0), "0 is taken as 1");
        assert_eq!(b.allow(0), Admission::Open);
        tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
        assert_eq!(b.allow(0), Admission::Open, "still open after a year");
        assert_eq!(b.allow(1), Admission::Probe, "a reconnect still ends it");
    }
}
