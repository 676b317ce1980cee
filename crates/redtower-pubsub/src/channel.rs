//! [`Channel`]: a validated channel name.

use std::{borrow::Borrow, fmt, str::FromStr, sync::Arc};

/// Why a channel name was rejected.
///
/// ```
/// use redtower_pubsub::{Channel, ChannelError};
///
/// assert_eq!(Channel::new(""), Err(ChannelError::Empty));
/// assert_eq!(Channel::new("a b"), Err(ChannelError::InvalidChar(' ')));
/// assert!(matches!(Channel::new("x".repeat(200)), Err(ChannelError::TooLong { .. })));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The name is empty.
    #[error("channel name is empty")]
    Empty,
    /// The name is longer than [`Channel::MAX_LEN`] bytes.
    #[error("channel name is {len} bytes long; the limit is {max}")]
    TooLong {
        /// The length of the rejected name, in bytes.
        len: usize,
        /// [`Channel::MAX_LEN`].
        max: usize,
    },
    /// The name holds a character outside `[A-Za-z0-9_.:@=+/-]`.
    #[error("channel name holds {0:?}; allowed are A-Z a-z 0-9 and _ . : @ = + / -")]
    InvalidChar(char),
}

/// A channel name: 1 to [`Channel::MAX_LEN`] bytes of `[A-Za-z0-9_.:@=+/-]`.
///
/// Names are validated once (here), so a name that reaches Redis, a log line or an SSE frame
/// is always short and printable. `:` is allowed so that apps can build hierarchical names
/// such as `user:alice:inbox`; in Redis the name becomes the hash tag of its keys
/// (`rt:ps:{user%3Aalice%3Ainbox}`), escaped by the shared keyspace. Cloning is cheap.
///
/// ```
/// use redtower_pubsub::Channel;
///
/// let ch: Channel = "user:alice:inbox".parse()?;
/// assert_eq!(ch.as_str(), "user:alice:inbox");
/// assert!(Channel::new("a{b}").is_err());
/// # Ok::<(), redtower_pubsub::ChannelError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Arc<str>);

impl Channel {
    /// The longest accepted name, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates `name`.
    ///
    /// # Errors
    ///
    /// [`ChannelError`] when the name is empty, too long or holds other characters.
    pub fn new(name: impl AsRef<str>) -> Result<Self, ChannelError> {
        let name = name.as_ref();
        if name.is_empty() {
            return Err(ChannelError::Empty);
        }
        if name.len() > Self::MAX_LEN {
            return Err(ChannelError::TooLong {
                len: name.len(),
                max: Self::MAX_LEN,
            });
        }
        if let Some(c) = name
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || "_.:@=+/-".contains(c)))
        {
            return Err(ChannelError::InvalidChar(c));
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Channel {
    type Err = ChannelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Channel {
    type Error = ChannelError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for Channel {
    type Error = ChannelError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl AsRef<str> for Channel {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Channel {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_charset() {
        for ok in ["a", "user:alice:inbox", "A-Z_0.9@x=y+z/w", &"x".repeat(128)] {
            assert_eq!(Channel::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(Channel::new(""), Err(ChannelError::Empty));
        assert_eq!(
            Channel::new("x".repeat(129)),
            Err(ChannelError::TooLong { len: 129, max: 128 })
        );
        for (bad, c) in [
            ("a{b", '{'),
            ("a}b", '}'),
            ("a b", ' '),
            ("a\nb", '\n'),
            ("a,b", ','),
            ("é", 'é'),
            ("a*", '*'),
        ] {
            assert_eq!(
                Channel::new(bad),
                Err(ChannelError::InvalidChar(c)),
                "{bad:?}"
            );
        }
    }
}
