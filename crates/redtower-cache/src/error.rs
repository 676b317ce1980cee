//! The crate's error types.

use std::time::Duration;

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A cache store operation failed.
///
/// The request paths ([`Cache::get_or_fetch`](crate::Cache::get_or_fetch) and the
/// [`ResponseCache`](crate::ResponseCache) service) never surface these: they fail open, log
/// and count. They reach callers only from explicit operations such as
/// [`Cache::invalidate`](crate::Cache::invalidate).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis failed or could not be reached.
    #[error(transparent)]
    Redis(#[from] redtower_client::Error),
    /// A store command took longer than its timeout.
    #[error("cache store command timed out after {0:?}")]
    Timeout(Duration),
    /// The store was skipped: its circuit breaker is open after an outage.
    #[error("cache store skipped while its circuit breaker is open")]
    CircuitOpen,
    /// The store does not implement this operation (a [`CacheStore`](crate::CacheStore)
    /// written before it existed).
    #[error("the cache store does not support {0}")]
    Unsupported(&'static str),
    /// [`Cache::invalidate_prefix`](crate::Cache::invalidate_prefix) on a cache built without
    /// [`prefix_purge`](crate::CacheBuilder::prefix_purge): its lookups would not honour the
    /// ban.
    #[error("prefix purge is not turned on for this cache (CacheBuilder::prefix_purge)")]
    PrefixPurgeOff,
    /// A prefix given to [`Cache::invalidate_prefix`](crate::Cache::invalidate_prefix) is
    /// longer than [`MAX_PREFIX_LEN`](crate::bans::MAX_PREFIX_LEN).
    #[error("prefix too long (at most 1024 bytes)")]
    PrefixTooLong,
    /// A value given to [`Cache::set`](crate::Cache::set) could not be serialized to JSON.
    #[error("value could not be serialized: {0}")]
    Serialize(#[source] serde_json::Error),
}

impl Error {
    /// The store is down or slow (timeout, unreachable, or the breaker is open).
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Redis(e) => e.is_outage(),
            Self::Timeout(_) | Self::CircuitOpen => true,
            Self::Serialize(_)
            | Self::Unsupported(_)
            | Self::PrefixPurgeOff
            | Self::PrefixTooLong => false,
        }
    }
}

/// Why [`Cache::get_or_fetch`](crate::Cache::get_or_fetch) returned no value.
///
/// Cache failures are not here on purpose: when the store fails, the fetcher runs (fail-open).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError<E> {
    /// The fetcher failed (and no stale value could cover for it). Nothing was stored.
    #[error("fetch failed: {0}")]
    Fetch(#[source] E),
    /// The fetched value could not be serialized, so it was neither stored nor shared.
    #[error("value could not be serialized: {0}")]
    Serialize(#[source] serde_json::Error),
}

impl<E> FetchError<E> {
    /// The fetcher's error, if that is what happened.
    pub fn into_fetch(self) -> Option<E> {
        match self {
            Self::Fetch(e) => Some(e),
            Self::Serialize(_) => None,
        }
    }
}
