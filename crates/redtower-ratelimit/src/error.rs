//! Errors: [`ConfigError`] for bad configuration (found when the layer is built) and
//! [`enum@Error`] for a store that could not answer.

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The configuration of a quota, policy or layer cannot work. Returned when it is built, never
/// on the request path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A quota allows zero requests.
    #[error("a quota must allow at least one request per period")]
    ZeroRate,
    /// A quota's period is zero (or shorter than a microsecond).
    #[error("a quota's period must be at least one microsecond")]
    ZeroPeriod,
    /// A quota's period is too long to count in integer microseconds (over ~100 years).
    #[error("a quota's period must be at most 100 years")]
    PeriodTooLong,
    /// A request costs more than a policy can ever hold, so it could never be allowed.
    #[error("cost {cost} is above the capacity {capacity} of policy {policy:?}")]
    CostAboveCapacity {
        /// The policy's name.
        policy: &'static str,
        /// The request cost.
        cost: u32,
        /// What the policy holds when full (its burst, or its limit for windows).
        capacity: u32,
    },
    /// The cost of a request is zero.
    #[error("a request must cost at least 1")]
    ZeroCost,
    /// A policy name is not a plain key segment (1 to 128 of `[A-Za-z0-9-_.@+=,/!~]`).
    #[error("invalid policy name {0:?}: use 1 to 128 characters of [A-Za-z0-9-_.@+=,/!~]")]
    InvalidName(&'static str),
    /// Two policies applied to one request have the same name (they would share one counter).
    #[error("policy name {0:?} is used twice for one request")]
    DuplicateName(&'static str),
    /// A quota too large to compute exactly with Redis Lua numbers (integers below 2^53): for
    /// GCRA `burst × period / limit` must stay under ~140 years, for a sliding window
    /// `limit × period` (in µs) under 2^53.
    #[error("policy {0:?}: quota too large to compute exactly (see ConfigError::QuotaTooLarge)")]
    QuotaTooLarge(&'static str),
    /// A layer with no policy at all.
    #[error("a rate limit layer needs at least one policy")]
    NoPolicy,
    /// An IP prefix length is out of range (IPv4 0..=32, IPv6 0..=128).
    #[error("invalid prefix length /{0}")]
    InvalidPrefix(u8),
}

/// A store could not decide: Redis unreachable, too slow, or a script error. The layer turns it
/// into its [`FailurePolicy`](crate::FailurePolicy).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis failed (see [`redtower_client::Error::kind`]).
    #[error(transparent)]
    Redis(#[from] redtower_client::Error),
    /// The store did not answer within the layer's timeout.
    #[error("rate limit store did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The circuit breaker is open after repeated failures: the store was not called.
    #[error("rate limit store circuit breaker is open")]
    CircuitOpen,
    /// The script's reply did not have the expected shape.
    #[error("unexpected rate limit script reply: {0}")]
    Reply(String),
    /// The store does not offer this operation (a custom store that did not implement it).
    #[error("this rate limit store does not support {0}")]
    Unsupported(&'static str),
}

impl Error {
    /// Redis is down or slow (timeout, unavailable, breaker open), as opposed to a bug such as a
    /// script error.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Redis(e) => e.is_outage(),
            Self::Timeout(_) | Self::CircuitOpen => true,
            Self::Reply(_) | Self::Unsupported(_) => false,
        }
    }
}
