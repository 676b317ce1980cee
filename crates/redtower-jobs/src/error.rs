//! The crate's error type.

/// Errors of the job queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis failed (outage, timeout, script error, ...); see
    /// [`redtower_client::Error::kind`].
    #[error("redis: {0}")]
    Redis(#[from] redtower_client::Error),
    /// The job's payload could not be serialized.
    #[error("job payload does not serialize: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The payload is larger than the queue's limit.
    #[error("job payload is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The serialized size.
        size: usize,
        /// The limit ([`Queue::max_payload`](crate::Queue::max_payload)).
        limit: usize,
    },
    /// A progress value or result is larger than its limit
    /// ([`MAX_PROGRESS_BYTES`](crate::MAX_PROGRESS_BYTES),
    /// [`MAX_RESULT_BYTES`](crate::MAX_RESULT_BYTES)).
    #[error("job {what} is {size} bytes, over the limit of {limit} bytes")]
    ValueTooLarge {
        /// `"progress"` or `"result"`.
        what: &'static str,
        /// The serialized size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An option is out of range (for example zero attempts).
    #[error("invalid job option: {0}")]
    InvalidOption(&'static str),
    /// A [`Schedule`](crate::Schedule) is not valid (a cron expression that does not parse).
    #[error("invalid schedule: {0}")]
    InvalidSchedule(String),
    /// The store answered something this version does not understand.
    #[error("unexpected reply from the store: {0}")]
    Protocol(String),
}

/// `Result<T, redtower_jobs::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
