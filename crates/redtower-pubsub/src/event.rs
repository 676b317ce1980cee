//! [`EventId`] and [`Event`]: what a publish returns and what subscribers receive.

use std::{fmt, str::FromStr, sync::Arc};

use redtower_client::TraceContext;

use crate::Channel;

/// The position of an event in its channel: `<epoch>:<offset>`.
///
/// Offsets grow by one per publish on a channel, so a subscriber can tell a gap from a
/// duplicate. The epoch names one lifetime of the channel's history: when the history is lost
/// (expired, Redis restarted without persistence, a new in-process store) a new epoch starts
/// at offset 1, and ids from the old epoch can no longer be resumed from.
///
/// ```
/// use redtower_pubsub::EventId;
///
/// let id: EventId = "k3J9x2pQ:42".parse()?;
/// assert_eq!(id.epoch(), "k3J9x2pQ");
/// assert_eq!(id.offset(), 42);
/// assert_eq!(id.to_string(), "k3J9x2pQ:42");
/// assert!("no-offset".parse::<EventId>().is_err());
/// # Ok::<(), redtower_pubsub::InvalidEventId>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventId {
    epoch: Arc<str>,
    offset: u64,
}

/// A string that is not an `<epoch>:<offset>` event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event id: expected <epoch>:<offset>")]
pub struct InvalidEventId;

impl EventId {
    /// The longest epoch accepted when parsing.
    pub const MAX_EPOCH_LEN: usize = 32;

    /// An id from its parts.
    ///
    /// # Errors
    ///
    /// [`InvalidEventId`] unless `epoch` is 1 to 32 ASCII letters or digits.
    pub fn new(epoch: impl AsRef<str>, offset: u64) -> Result<Self, InvalidEventId> {
        let epoch = epoch.as_ref();
        if !valid_epoch(epoch) {
            return Err(InvalidEventId);
        }
        Ok(Self {
            epoch: Arc::from(epoch),
            offset,
        })
    }

    pub(crate) fn from_parts(epoch: Arc<str>, offset: u64) -> Self {
        Self { epoch, offset }
    }

    /// The epoch of the history this event belongs to.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub(crate) fn epoch_arc(&self) -> &Arc<str> {
        &self.epoch
    }

    /// The offset of the event in its epoch, from 1.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// A fresh random epoch (12 base62 characters).
    pub(crate) fn random_epoch() -> String {
        use rand::Rng;
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut rng = rand::rng();
        (0..12)
            .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
            .collect()
    }
}

fn valid_epoch(epoch: &str) -> bool {
    !epoch.is_empty()
        && epoch.len() <= EventId::MAX_EPOCH_LEN
        && epoch.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({}:{})", self.epoch, self.offset)
    }
}

impl FromStr for EventId {
    type Err = InvalidEventId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (epoch, offset) = s.trim().split_once(':').ok_or(InvalidEventId)?;
        if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidEventId);
        }
        let offset = offset.parse().map_err(|_| InvalidEventId)?;
        Self::new(epoch, offset)
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The idempotency token of one publish: a re-sent or retried publish with the same token
/// returns the first event's id instead of appending a second event.
///
/// [`PubSub::publish`](crate::PubSub::publish) picks a random one per call, which makes the
/// Redis client's own re-send (after a connection dropped while the reply was on its way)
/// harmless. Pick one yourself and pass it to
/// [`PubSub::publish_json_with`](crate::PubSub::publish_json_with) to retry a failed publish
/// safely, or take one from the client (an `Idempotency-Key` header). Tokens are remembered
/// per channel for the store's dedup window (on Redis
/// [`publish_dedup_window`](crate::RedisStoreBuilder::publish_dedup_window), 1 minute by
/// default).
///
/// ```
/// use redtower_pubsub::PublishToken;
///
/// let token = PublishToken::new("order-42-shipped")?;
/// assert_eq!(token.as_str(), "order-42-shipped");
/// assert!(PublishToken::new("").is_err());
/// assert!(PublishToken::new("a b").is_err());
/// assert_eq!(PublishToken::random().as_str().len(), 22);
/// # Ok::<(), redtower_pubsub::InvalidPublishToken>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublishToken(Arc<str>);

/// A string that is not a valid [`PublishToken`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid publish token: expected 1 to 64 characters of A-Z a-z 0-9 _ -")]
pub struct InvalidPublishToken;

impl PublishToken {
    /// The longest accepted token, in bytes.
    pub const MAX_LEN: usize = 64;

    /// A token from text the caller chose.
    ///
    /// # Errors
    ///
    /// [`InvalidPublishToken`] unless `token` is 1 to 64 characters of `[A-Za-z0-9_-]`.
    pub fn new(token: impl AsRef<str>) -> Result<Self, InvalidPublishToken> {
        let token = token.as_ref();
        let valid = !token.is_empty()
            && token.len() <= Self::MAX_LEN
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(InvalidPublishToken);
        }
        Ok(Self(Arc::from(token)))
    }

    /// A fresh random token (22 base62 characters, about 131 bits).
    pub fn random() -> Self {
        use rand::Rng;
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut rng = rand::rng();
        let token: String = (0..22)
            .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
            .collect();
        Self(Arc::from(token))
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PublishToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublishToken({})", self.0)
    }
}

impl FromStr for PublishToken {
    type Err = InvalidPublishToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// One published event: its id, its channel and its data (JSON text).
///
/// Events are shared between subscribers behind an `Arc`.
#[derive(Clone)]
pub struct Event {
    id: EventId,
    channel: Channel,
    data: Arc<str>,
    /// The W3C trace context of the span that published it, if it was stored.
    trace: Option<TraceContext>,
    /// The single-channel SSE frame, encoded once for every client.
    frame: std::sync::OnceLock<bytes::Bytes>,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.channel == other.channel && self.data == other.data
    }
}

impl Eq for Event {}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id)
            .field("channel", &self.channel)
            .field("len", &self.data.len())
            .finish()
    }
}

impl Event {
    pub(crate) fn new(id: EventId, channel: Channel, data: Arc<str>) -> Self {
        Self {
            id,
            channel,
            data,
            trace: None,
            frame: std::sync::OnceLock::new(),
        }
    }

    /// The event with the trace context it was published with.
    pub(crate) fn with_trace(mut self, trace: Option<TraceContext>) -> Self {
        self.trace = trace;
        self
    }

    /// The W3C trace context of the span that published the event, when the publisher stored
    /// one (the `opentelemetry` feature); delivery spans are its children.
    pub fn trace_context(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// `id: <id>` and `data: <data>` as an SSE frame, encoded on first use.
    pub(crate) fn sse_frame(&self) -> &bytes::Bytes {
        self.frame.get_or_init(|| {
            let mut buf = bytes::BytesMut::with_capacity(self.data.len() + 32);
            crate::sse::frame::event(&mut buf, Some(&self.id.to_string()), None, &self.data);
            buf.freeze()
        })
    }

    /// The event's id.
    pub fn id(&self) -> &EventId {
        &self.id
    }

    /// The channel it was published on.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The data, as published (JSON text for [`PubSub::publish`](crate::PubSub::publish)).
    pub fn data(&self) -> &str {
        &self.data
    }

    /// Deserializes the data.
    ///
    /// # Errors
    ///
    /// When the data is not a JSON `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(&self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = EventId::new("abc123", 7).unwrap();
        assert_eq!(id.to_string().parse::<EventId>().unwrap(), id);
        for bad in [
            "",
            ":",
            "a:",
            ":1",
            "a:b",
            "a:-1",
            "a:1:2",
            "a b:1",
            "{x}:1",
            "a:+1",
            "a:99999999999999999999999",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
        assert!(EventId::new("x".repeat(33), 1).is_err());
        let epoch = EventId::random_epoch();
        assert_eq!(epoch.len(), 12);
        assert!(EventId::new(&epoch, 1).is_ok());
    }
}
