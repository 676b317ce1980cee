//! [`Clock`]: the local wall clock of a producer or a worker, kept out of scheduling.

use std::{
    fmt,
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// The local wall clock of a [`Queue`](crate::Queue) (producer) or a [`Worker`](crate::Worker).
///
/// **It never takes part in scheduling.** Producers and workers send the store durations only
/// (a delay, a backoff, a lease length); every timestamp (added, due, started, lease end,
/// finished) is taken by the store inside the same atomic step: Redis `TIME` in the Lua script
/// for [`RedisStore`](crate::RedisStore), the store's own clock for
/// [`MemoryStore`](crate::MemoryStore). So machines whose clocks disagree by minutes still get
/// exact delays and backoff.
///
/// The crate reads this clock only to *report* how far the process is from the store's clock:
/// [`Queue::clock_skew`](crate::Queue::clock_skew), and a worker's check when it starts (a
/// `warn` log when the skew is a second or more, and the gauge
/// `redtower_jobs_clock_skew_seconds`). Timers inside a worker (lease extension, grace period,
/// run time) use the monotonic tokio clock, which no wall-clock offset affects.
///
/// Replace it to test that claim, by injecting an offset (see the crate's `clock_skew` test),
/// or to report against a clock of your own. Defaults to [`Clock::system`].
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use redtower_jobs::Clock;
///
/// let fast = Clock::system().ahead(Duration::from_secs(5 * 60));
/// let slow = Clock::system().behind(Duration::from_secs(7 * 60));
/// assert!(fast.now() > SystemTime::now() + Duration::from_secs(299));
/// assert!(slow.now() < SystemTime::now() - Duration::from_secs(419));
/// ```
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system's wall clock ([`SystemTime::now`]).
    pub fn system() -> Self {
        Self(Arc::new(SystemTime::now))
    }

    /// A clock that reads `now`.
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// This clock, running `by` ahead. An offset too large for the platform's time is
    /// shortened until the reading fits (never a panic).
    #[must_use]
    pub fn ahead(self, by: Duration) -> Self {
        Self::from_fn(move || {
            let now = (self.0)();
            now.checked_add(by).unwrap_or_else(|| latest_from(now, by))
        })
    }

    /// This clock, running `by` behind. An offset too large for the platform's time is
    /// shortened until the reading fits (never a panic).
    #[must_use]
    pub fn behind(self, by: Duration) -> Self {
        Self::from_fn(move || {
            let now = (self.0)();
            now.checked_sub(by)
                .unwrap_or_else(|| earliest_from(now, by))
        })
    }

    /// The current time by this clock.
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }

    /// The current time by this clock, in ms since the Unix epoch (negative before it).
    pub fn now_ms(&self) -> i64 {
        match self.now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Reads this clock around `read_store` (which returns the store's time in ms since the
    /// epoch) and returns how far this clock is from the store's, taking the middle of the
    /// round trip as the local reading.
    pub(crate) async fn skew<F>(&self, read_store: F) -> crate::Result<ClockSkew>
    where
        F: Future<Output = crate::Result<u64>>,
    {
        let before = self.now_ms();
        let store = read_store.await?;
        let after = self.now_ms();
        let local = before / 2 + after / 2 + (before % 2 + after % 2) / 2;
        Ok(ClockSkew {
            ms: local.saturating_sub(i64::try_from(store).unwrap_or(i64::MAX)),
        })
    }
}

/// `now + by` shortened until the platform's time holds it (`now` at worst).
fn latest_from(now: SystemTime, mut by: Duration) -> SystemTime {
    while !by.is_zero() {
        by /= 2;
        if let Some(t) = now.checked_add(by) {
            return t;
        }
    }
    now
}

/// `now - by` shortened until the platform's time holds it (`now` at worst).
fn earliest_from(now: SystemTime, mut by: Duration) -> SystemTime {
    while !by.is_zero() {
        by /= 2;
        if let Some(t) = now.checked_sub(by) {
            return t;
        }
    }
    now
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Clock").field(&self.now()).finish()
    }
}

/// How far a local [`Clock`] is from the store's clock, as measured by
/// [`Queue::clock_skew`](crate::Queue::clock_skew). Includes up to one round trip of error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSkew {
    ms: i64,
}

impl ClockSkew {
    /// Local minus store time in ms: positive when the local clock is ahead.
    pub fn as_millis(self) -> i64 {
        self.ms
    }

    /// The size of the difference, either way.
    pub fn magnitude(self) -> Duration {
        Duration::from_millis(self.ms.unsigned_abs())
    }

    /// Whether the local clock is ahead of the store's.
    pub fn is_ahead(self) -> bool {
        self.ms > 0
    }
}

impl fmt::Display for ClockSkew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = if self.ms >= 0 { "ahead of" } else { "behind" };
        write!(
            f,
            "{:.3} s {dir} the store's clock",
            self.magnitude().as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::Clock;

    #[test]
    fn offsets_out_of_range_do_not_panic() {
        let now = SystemTime::now();
        assert!(Clock::system().ahead(Duration::MAX).now() >= now);
        assert!(Clock::system().behind(Duration::MAX).now() <= SystemTime::now());
        let hour = Duration::from_secs(3600);
        assert!(Clock::system().ahead(hour).now() >= now + hour);
        assert!(Clock::system().behind(hour).now() <= SystemTime::now() - hour);
    }
}
