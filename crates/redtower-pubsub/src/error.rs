//! The crate's [`enum@Error`].

use crate::ChannelError;

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when publishing or subscribing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The channel name was rejected (see [`Channel`](crate::Channel)).
    #[error(transparent)]
    InvalidChannel(#[from] ChannelError),
    /// The value to publish could not be serialized to JSON.
    #[error("cannot serialize the event: {0}")]
    Serialize(#[from] serde_json::Error),
    /// Redis failed or could not be reached; see [`redtower_client::Error::is_outage`].
    #[error(transparent)]
    Redis(#[from] redtower_client::Error),
    /// The store was shut down.
    #[error("the pub/sub store is closed")]
    Closed,
}

impl Error {
    /// Redis is down or slow (a timeout or an unreachable server): retrying later may succeed.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Redis(e) if e.is_outage())
    }
}
