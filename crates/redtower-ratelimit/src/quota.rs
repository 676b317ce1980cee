//! What is allowed: [`Quota`] (how many per period, which [`Algorithm`]) and [`Policy`] (a named
//! quota, the unit a request is checked against).

use std::{num::NonZeroU32, time::Duration};

use crate::ConfigError;

/// Builds a [`NonZeroU32`] from a constant, checked at compile time.
///
/// ```
/// use redtower_ratelimit::{Quota, nonzero};
///
/// let quota = Quota::per_minute(nonzero!(60));
/// assert_eq!(quota.limit().get(), 60);
/// ```
///
/// `nonzero!(0)` does not compile.
#[macro_export]
macro_rules! nonzero {
    ($n:expr) => {
        const {
            match ::core::num::NonZeroU32::new($n) {
                Some(n) => n,
                None => panic!("nonzero!(0)"),
            }
        }
    };
}

/// How a [`Quota`] is counted. All three keep one key per policy and subject in Redis, never
/// count denied requests, and read time from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// Generic cell rate algorithm (the default): a token bucket holding `burst` tokens (by
    /// default `limit`), refilled smoothly at `limit` per `period`. Exact, O(1), no boundary
    /// bursts. State: one integer (the theoretical arrival time, µs).
    #[default]
    Gcra,
    /// Sliding-window counter: the current window's count plus the previous window's count
    /// weighted by how much of it still overlaps the last `period` (rounded down). An
    /// approximation of a sliding log: it may admit more than `limit` in some exact sliding
    /// interval of length `period`, but never more than `2 × limit` in one, and never more than
    /// `limit` within one aligned window. State: one string (window, count, previous count).
    SlidingWindow,
    /// Fixed window aligned to the Unix epoch (UTC): `per_day` windows start at 00:00 UTC,
    /// `per_hour` at the top of the hour. Exactly `limit` per window; up to `2 × limit` across a
    /// boundary. State: one string (window, count).
    FixedWindow,
}

impl Algorithm {
    /// A short stable name (`gcra`, `sliding_window`, `fixed_window`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gcra => "gcra",
            Self::SlidingWindow => "sliding_window",
            Self::FixedWindow => "fixed_window",
        }
    }
}

/// `limit` requests per `period`, counted with an [`Algorithm`] (GCRA by default).
///
/// The typed constructors cannot fail; [`Quota::new`] takes plain numbers and checks them.
///
/// ```
/// use std::time::Duration;
/// use redtower_ratelimit::{Algorithm, ConfigError, Quota, nonzero};
///
/// let api = Quota::per_second(nonzero!(10)).burst(nonzero!(20));
/// assert_eq!(api.capacity(), 20);
///
/// let daily = Quota::per_day(nonzero!(1000)).with_algorithm(Algorithm::FixedWindow);
/// assert_eq!(daily.period(), Duration::from_secs(86_400));
///
/// assert_eq!(Quota::new(0, Duration::from_secs(1)), Err(ConfigError::ZeroRate));
/// assert_eq!(Quota::new(5, Duration::ZERO), Err(ConfigError::ZeroPeriod));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: NonZeroU32,
    period_us: u64,
    burst: Option<NonZeroU32>,
    algorithm: Algorithm,
}

const MAX_PERIOD_US: u64 = 100 * 366 * 86_400 * 1_000_000;

impl Quota {
    /// `limit` per `period`, from plain values.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroRate`] if `limit` is 0, [`ConfigError::ZeroPeriod`] if `period` is
    /// under 1 µs, [`ConfigError::PeriodTooLong`] above 100 years.
    pub fn new(limit: u32, period: Duration) -> Result<Self, ConfigError> {
        let limit = NonZeroU32::new(limit).ok_or(ConfigError::ZeroRate)?;
        Self::with_period(limit, period)
    }

    /// `limit` per `period`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroPeriod`] if `period` is under 1 µs, [`ConfigError::PeriodTooLong`]
    /// above 100 years.
    pub fn with_period(limit: NonZeroU32, period: Duration) -> Result<Self, ConfigError> {
        let us = period.as_micros();
        if us == 0 {
            return Err(ConfigError::ZeroPeriod);
        }
        let period_us = u64::try_from(us)
            .ok()
            .filter(|&us| us <= MAX_PERIOD_US)
            .ok_or(ConfigError::PeriodTooLong)?;
        Ok(Self {
            limit,
            period_us,
            burst: None,
            algorithm: Algorithm::Gcra,
        })
    }

    const fn secs(limit: NonZeroU32, secs: u64) -> Self {
        Self {
            limit,
            period_us: secs * 1_000_000,
            burst: None,
            algorithm: Algorithm::Gcra,
        }
    }

    /// `limit` per second.
    pub const fn per_second(limit: NonZeroU32) -> Self {
        Self::secs(limit, 1)
    }

    /// `limit` per minute.
    pub const fn per_minute(limit: NonZeroU32) -> Self {
        Self::secs(limit, 60)
    }

    /// `limit` per hour.
    pub const fn per_hour(limit: NonZeroU32) -> Self {
        Self::secs(limit, 3600)
    }

    /// `limit` per day (24 h; UTC days for [`Algorithm::FixedWindow`]).
    pub const fn per_day(limit: NonZeroU32) -> Self {
        Self::secs(limit, 86_400)
    }

    /// How many requests (GCRA: tokens) may arrive at once. Only used by [`Algorithm::Gcra`];
    /// defaults to `limit`.
    #[must_use]
    pub const fn burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// This quota counted with `algorithm` (the default is [`Algorithm::Gcra`]; read it with
    /// [`algorithm`](Self::algorithm)).
    #[must_use]
    pub const fn with_algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Shortcut for `.with_algorithm(Algorithm::FixedWindow)`.
    #[must_use]
    pub const fn fixed_window(self) -> Self {
        self.with_algorithm(Algorithm::FixedWindow)
    }

    /// Shortcut for `.with_algorithm(Algorithm::SlidingWindow)`.
    #[must_use]
    pub const fn sliding_window(self) -> Self {
        self.with_algorithm(Algorithm::SlidingWindow)
    }

    /// Requests per period.
    pub const fn limit(&self) -> NonZeroU32 {
        self.limit
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        Duration::from_micros(self.period_us)
    }

    /// The period in µs.
    pub const fn period_us(&self) -> u64 {
        self.period_us
    }

    /// The counting algorithm (change it with [`with_algorithm`](Self::with_algorithm)).
    pub const fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The most one request may cost: the burst for GCRA, the limit for windows.
    pub const fn capacity(&self) -> u32 {
        match (self.algorithm, self.burst) {
            (Algorithm::Gcra, Some(b)) => b.get(),
            _ => self.limit.get(),
        }
    }

    /// GCRA emission interval: µs per token, rounded up so refills never exceed the quota.
    pub const fn emission_interval_us(&self) -> u64 {
        self.period_us.div_ceil(self.limit.get() as u64)
    }
}

/// A named [`Quota`]: the name identifies its counter (`rt:rl:{subject}:<name>`), appears in the
/// `RateLimit` headers and labels metrics. Layers that use the same policy name for the same
/// subject share one budget.
///
/// ```
/// use redtower_ratelimit::{Policy, Quota, nonzero};
///
/// let burst = Policy::new("burst", Quota::per_second(nonzero!(10)).burst(nonzero!(20)));
/// let hourly = Policy::new("hourly", Quota::per_hour(nonzero!(1000))).shadow(true);
/// assert!(hourly.is_shadow());
/// # let _ = burst;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    name: &'static str,
    quota: Quota,
    shadow: bool,
    overridable: bool,
}

impl Policy {
    /// A policy named `name` (1 to 128 of `[A-Za-z0-9-_.@+=,/!~]`, checked when the layer is
    /// built).
    pub const fn new(name: &'static str, quota: Quota) -> Self {
        Self {
            name,
            quota,
            shadow: false,
            overridable: false,
        }
    }

    /// Per-subject overrides: the limit of this policy for a subject can be changed at run
    /// time, by an operator, with [`RedisStore::set_override`](crate::RedisStore::set_override)
    /// (or `HSET` on the subject's override hash, see there) or
    /// [`MemoryStore::set_override`](crate::MemoryStore::set_override). The override is read
    /// in the same script call as the check (no cache), so a change applies to the subject's
    /// next request on every instance. Defaults to `false` (no extra read).
    #[must_use]
    pub const fn overridable(mut self, on: bool) -> Self {
        self.overridable = on;
        self
    }

    /// Whether per-subject overrides apply.
    pub const fn is_overridable(&self) -> bool {
        self.overridable
    }

    /// Shadow (dry-run) mode: evaluated and recorded (metrics, logs, headers), never rejects.
    /// Defaults to `false`.
    #[must_use]
    pub const fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// The name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The quota.
    pub const fn quota(&self) -> &Quota {
        &self.quota
    }

    /// Whether this policy is in shadow mode.
    pub const fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// Checks the name and the quota's bounds.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidName`] or [`ConfigError::QuotaTooLarge`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if redtower_client::Segment::strict(self.name).is_err() {
            return Err(ConfigError::InvalidName(self.name));
        }
        let q = &self.quota;
        let too_large = match q.algorithm {
            Algorithm::SlidingWindow => {
                u128::from(q.limit.get()) * u128::from(q.period_us) >= 1 << 53
            }
            Algorithm::Gcra => {
                u128::from(q.capacity()) * u128::from(q.emission_interval_us()) >= 1 << 52
            }
            Algorithm::FixedWindow => false,
        };
        if too_large {
            return Err(ConfigError::QuotaTooLarge(self.name));
        }
        Ok(())
    }
}

impl From<Quota> for Policy {
    /// A policy named `default`.
    fn from(quota: Quota) -> Self {
        Policy::new("default", quota)
    }
}

impl Quota {
    /// This quota with `limit` per the same period and algorithm, and a burst of `limit` (a
    /// per-subject override).
    pub(crate) fn overridden(&self, limit: NonZeroU32) -> Self {
        Self {
            limit,
            burst: None,
            ..*self
        }
    }
}

/// Checks a set of policies applied together with a request cost.
pub(crate) fn validate_set(policies: &[Policy], cost: Option<u32>) -> Result<(), ConfigError> {
    if policies.is_empty() {
        return Err(ConfigError::NoPolicy);
    }
    for (i, p) in policies.iter().enumerate() {
        p.validate()?;
        if policies[..i].iter().any(|q| q.name == p.name) {
            return Err(ConfigError::DuplicateName(p.name));
        }
        if let Some(cost) = cost {
            if cost == 0 {
                return Err(ConfigError::ZeroCost);
            }
            if cost > p.quota.capacity() {
                return Err(ConfigError::CostAboveCapacity {
                    policy: p.name,
                    cost,
                    capacity: p.quota.capacity(),
                });
            }
        }
    }
    Ok(())
}
