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
    /// The data to publish is larger than the store's payload limit
    /// ([`RedisStoreBuilder::max_payload`](crate::RedisStoreBuilder::max_payload),
    /// [`MemoryStore::max_payload`](crate::MemoryStore::max_payload)). Nothing was published.
    #[error("the event is {len} bytes; the limit is {max}")]
    PayloadTooLarge {
        /// The size of the rejected data, in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The process already holds as many channels as the store allows
    /// ([`RedisStoreBuilder::max_channels`](crate::RedisStoreBuilder::max_channels),
    /// [`MemoryStore::max_channels`](crate::MemoryStore::max_channels)): a new channel cannot
    /// be subscribed to (or, in memory, created) until others are released. Retry later.
    #[error("too many channels in this process: the limit is {max}")]
    TooManyChannels {
        /// The limit.
        max: usize,
    },
}

impl Error {
    /// Redis is down or slow (a timeout or an unreachable server): retrying later may succeed.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Redis(e) if e.is_outage())
    }

    /// A limit of the store refused the operation ([`Error::PayloadTooLarge`],
    /// [`Error::TooManyChannels`]): the store works, the request asked for too much.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            Self::PayloadTooLarge { .. } | Self::TooManyChannels { .. }
        )
    }
}
