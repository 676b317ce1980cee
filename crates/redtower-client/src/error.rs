//! The one error type of the client layer, classified so failure policies can match on it.

use std::fmt;

use fred::error::{Error as FredError, ErrorKind as FredKind};

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in the terms a failure policy needs.
///
/// Layers decide between "fail open", "fail closed" and "retry" on this, so the classification is
/// deliberately coarse. See [`Error::kind`].
///
/// ```
/// use redtower_client::{Error, ErrorKind};
///
/// fn fail_open(err: &Error) -> bool {
///     matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable)
/// }
/// assert!(!fail_open(&Error::config("bad")));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The command did not complete within its timeout. Redis may or may not have applied it.
    Timeout,
    /// Redis could not be reached: connection refused or closed, still reconnecting, loading its
    /// dataset, or a replica that cannot take writes. Retrying later may succeed.
    Unavailable,
    /// A Redis Cluster condition: redirections exhausted, cluster down, or keys in different slots.
    Cluster,
    /// A Lua script failed while running, or could not be loaded.
    Script,
    /// The configuration is invalid (URL, knobs, TLS without the `rustls` feature, ...).
    Config,
    /// A key or key segment was rejected by the [`Keyspace`](crate::Keyspace).
    Key,
    /// Anything else: a wrong type, an unexpected reply, an authentication failure, ...
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Cluster => "cluster",
            Self::Script => "script",
            Self::Config => "config",
            Self::Key => "key",
            Self::Other => "other",
        })
    }
}

/// An error from the Redis layer.
///
/// Every variant keeps its cause as [`std::error::Error::source`]. Use [`Error::kind`] (or the
/// `is_*` predicates) to decide what to do; the variants themselves may grow.
///
/// ```
/// use redtower_client::{Error, ErrorKind};
///
/// let err = Error::config("REDIS_URL is not a valid URL");
/// assert_eq!(err.kind(), ErrorKind::Config);
/// assert!(!err.is_unavailable());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A command or connection failed in Redis or on the way to it.
    #[error("redis {kind} error: {source}")]
    Redis {
        /// The classification of `source`.
        kind: ErrorKind,
        /// The error reported by the driver or the server.
        #[source]
        source: FredError,
    },
    /// The configuration could not be used.
    #[error("invalid redis configuration: {0}")]
    Config(String),
    /// A key segment or prefix was rejected.
    #[error(transparent)]
    Key(#[from] crate::keyspace::KeyError),
    /// A reply did not have the shape the caller expected.
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

impl Error {
    /// A configuration error with a message.
    pub fn config(msg: impl Into<String>) -> Self {
        Self::Config(msg.into())
    }

    /// Redis was never reached: the first connection was not made within `waited`.
    /// Classified [`Unavailable`](ErrorKind::Unavailable): a process that could not connect
    /// at all is in an outage, and its failure policies apply.
    pub(crate) fn not_connected(waited: std::time::Duration) -> Self {
        Self::Redis {
            kind: ErrorKind::Unavailable,
            source: FredError::new(
                FredKind::IO,
                format!("no connection to redis was made within {waited:?} of start"),
            ),
        }
    }

    /// An unexpected-reply error with a message (for code that decodes script results).
    pub fn reply(msg: impl Into<String>) -> Self {
        Self::Reply(msg.into())
    }

    /// The classification that failure policies match on.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Redis { kind, .. } => *kind,
            Self::Config(_) => ErrorKind::Config,
            Self::Key(_) => ErrorKind::Key,
            Self::Reply(_) => ErrorKind::Other,
        }
    }

    /// The command timed out.
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }

    /// Redis could not be reached (see [`ErrorKind::Unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    /// Redis is down or slow: a timeout or unavailable. This is what "fail open" policies test.
    pub fn is_outage(&self) -> bool {
        matches!(self.kind(), ErrorKind::Timeout | ErrorKind::Unavailable)
    }

    /// A Redis Cluster condition.
    pub fn is_cluster(&self) -> bool {
        self.kind() == ErrorKind::Cluster
    }

    /// A Lua script error.
    pub fn is_script(&self) -> bool {
        self.kind() == ErrorKind::Script
    }

    /// The driver error, when there is one.
    pub fn as_fred(&self) -> Option<&FredError> {
        match self {
            Self::Redis { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<FredError> for Error {
    fn from(source: FredError) -> Self {
        let kind = classify(&source);
        match kind {
            ErrorKind::Config => Self::Config(source.details().to_owned()),
            kind => Self::Redis { kind, source },
        }
    }
}

/// Maps a fred error to our [`ErrorKind`], looking at the server's error code where fred's own
/// kind is too coarse (server errors mostly arrive as `Unknown`).
pub(crate) fn classify(err: &FredError) -> ErrorKind {
    let details = err.details();
    let code = details.split_whitespace().next().unwrap_or("");
    match code {
        "LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "BUSY" => {
            return ErrorKind::Unavailable;
        }
        "CROSSSLOT" | "MOVED" | "ASK" | "CLUSTERDOWN" => return ErrorKind::Cluster,
        "NOSCRIPT" => return ErrorKind::Script,
        _ => {}
    }
    if err.kind() == &FredKind::Unknown
        && (details.contains("Too many failed write attempts")
            || details.contains("Max attempts exceeded")
            || details.contains("Missing expected connection")
            || details.contains("Failed to route command"))
    {
        // fred reports a command it could not write before its attempts ran out, or could not
        // route because the connection to its server is gone, with an untyped error: that is
        // Redis being away.
        return ErrorKind::Unavailable;
    }
    if details.contains("Missing cluster routing state") {
        // A Cluster client that has not connected yet (lazy connect, or all nodes down).
        return ErrorKind::Unavailable;
    }
    if details.contains("Error running script")
        || details.contains("user_script")
        || details.contains("@user_script")
    {
        return ErrorKind::Script;
    }
    match err.kind() {
        FredKind::Timeout => ErrorKind::Timeout,
        FredKind::IO | FredKind::Canceled | FredKind::Backpressure | FredKind::Routing => {
            ErrorKind::Unavailable
        }
        FredKind::Cluster => ErrorKind::Cluster,
        FredKind::Config | FredKind::Url => ErrorKind::Config,
        _ => ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_codes_are_classified() {
        let cases = [
            (
                "LOADING Redis is loading the dataset in memory",
                ErrorKind::Unavailable,
            ),
            (
                "READONLY You can't write against a read only replica.",
                ErrorKind::Unavailable,
            ),
            (
                "CROSSSLOT Keys in request don't hash to the same slot",
                ErrorKind::Cluster,
            ),
            ("NOSCRIPT No matching script.", ErrorKind::Script),
            (
                "ERR Error running script (call to f_x): @user_script:1: boom",
                ErrorKind::Script,
            ),
            (
                "WRONGTYPE Operation against a key holding the wrong kind",
                ErrorKind::Other,
            ),
        ];
        for (details, want) in cases {
            let err = FredError::new(FredKind::Unknown, details);
            assert_eq!(Error::from(err).kind(), want, "{details}");
        }
    }

    #[test]
    fn driver_kinds_are_classified() {
        assert!(Error::from(FredError::new(FredKind::Timeout, "t")).is_timeout());
        assert!(Error::from(FredError::new(FredKind::IO, "refused")).is_unavailable());
        assert!(Error::from(FredError::new(FredKind::Canceled, "c")).is_outage());
        assert!(Error::from(FredError::new(FredKind::Cluster, "MOVED 1 x")).is_cluster());
        let not_yet = FredError::new(FredKind::Cluster, "Missing cluster routing state.");
        assert!(Error::from(not_yet).is_unavailable());
        // What fred answers when the connection dropped before the command could be written.
        for details in [
            "Too many failed write attempts.",
            "Max attempts exceeded",
            "Failed to route command.",
        ] {
            let dropped = FredError::new(FredKind::Unknown, details);
            assert!(Error::from(dropped).is_outage(), "{details}");
        }
        assert_eq!(
            Error::from(FredError::new(FredKind::Url, "bad")).kind(),
            ErrorKind::Config
        );
    }
}
