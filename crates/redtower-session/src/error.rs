//! The crate's error type, and [`ConfigError`] for settings that cannot work.

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from a session store or from the per-user index API.
///
/// The [`SessionStore`](tower_sessions_core::SessionStore) methods must return
/// `tower_sessions_core::session_store::Error`; they carry this error's text in
/// `session_store::Error::Backend`, and the [`SessionLayer`](crate::SessionLayer) learns the
/// typed cause through a per-request flag (see [`status_for`](crate::status_for)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis failed (down, slow, Cluster trouble, script error). See
    /// [`redtower_client::Error::is_outage`].
    #[error("redis {word}: {0}", word = availability(.0))]
    Redis(#[from] redtower_client::Error),
    /// The session no longer exists (deleted, expired or revoked) and was not written, so a
    /// concurrent logout or revocation is never undone.
    #[error("session gone: it was deleted, expired or revoked")]
    Gone,
    /// The serialized session data is larger than the configured cap.
    #[error("session data is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// The serialized size.
        size: usize,
        /// The configured cap.
        max: usize,
    },
    /// Session data could not be encoded or decoded.
    #[error("session data encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    /// [`UserSessions::watch`](crate::UserSessions::watch) was asked for more watches than the
    /// store's cap ([`RedisStore::max_watches`](crate::RedisStore::max_watches)).
    #[error("more than {max} session watches")]
    TooManyWatches {
        /// The configured cap.
        max: usize,
    },
    /// [`UserSessions::watch`](crate::UserSessions::watch) was called outside a Tokio runtime.
    #[error("session watches need a Tokio runtime")]
    NoRuntime,
    /// Creating a session collided with existing ids too many times (a broken random source).
    #[error("could not find a free session id")]
    Collision,
    /// The layer's circuit breaker is open after repeated outage errors: the store was not
    /// called (see [`SessionLayer::circuit_breaker`](crate::SessionLayer::circuit_breaker)).
    #[error("session store circuit breaker is open")]
    CircuitOpen,
    /// A setting cannot work (found when the store is built, never per request).
    #[error("invalid session configuration: {0}")]
    Config(#[from] ConfigError),
}

/// Why a configuration was refused, in [`Error::Config`].
///
/// ```
/// use redtower_client::{Redis, RedisConfig};
/// use redtower_session::{ConfigError, Error, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::new(RedisConfig::from_url("redis://127.0.0.1:6379")?)?; // connects lazily
/// let err = RedisStore::new(redis, b"too short").unwrap_err();
/// assert!(matches!(err, Error::Config(ConfigError::SecretTooShort { len: 9, min: 32 })));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The secret keying session ids and user ids is shorter than
    /// [`RedisStore::MIN_SECRET_LEN`](crate::RedisStore::MIN_SECRET_LEN).
    #[error("the session key secret is {len} bytes; it must be at least {min}")]
    SecretTooShort {
        /// The secret's length, in bytes.
        len: usize,
        /// The shortest accepted, in bytes.
        min: usize,
    },
}

impl Error {
    /// Whether this error means "Redis is down or slow" (requests that need the session get 503).
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Redis(e) => e.is_outage() || e.is_cluster(),
            Self::CircuitOpen => true,
            _ => false,
        }
    }
}

fn availability(err: &redtower_client::Error) -> &'static str {
    if err.is_outage() || err.is_cluster() {
        "unavailable"
    } else {
        "error"
    }
}
