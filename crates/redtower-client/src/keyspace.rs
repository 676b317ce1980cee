//! Key naming: the colon convention, a configurable prefix, and exactly one Cluster hash tag.
//!
//! Every key redtower writes is built here:
//!
//! ```text
//! <prefix>:<namespace>:{<tag>}[:<part>]*        e.g.  rt:rl:{203.0.113.7}:api
//! ```
//!
//! * `prefix` comes from configuration (`REDIS_KEY_PREFIX`, default `rt`) and is never wrapped in
//!   braces, so one application does not pile all its keys into one slot.
//! * `namespace` is a static name chosen by a feature crate (`rl`, `c`, `s:u`, ...).
//! * `tag` chooses the Cluster slot: all keys built from the same tag share a slot, so one Lua
//!   script may touch them all.
//! * `part`s name structures under the tag.
//!
//! Tags and parts are [`Segment`]s. A segment built from user input is escaped, never trusted:
//! bytes outside `[A-Za-z0-9-_.@+=,/!~]` become `%XX`, the empty string becomes `%`, and a
//! value whose escaped form is longer than [`Segment::MAX_LEN`] bytes is replaced by `#` and the
//! base64url SHA-256 of the raw value. Secrets ([`Segment::secret`]) are always hashed. So no
//! input can introduce a `:`, `{`, `}`, a glob character or a control byte, no key is unbounded,
//! and the mapping from (namespace, tag, parts) to keys is injective.

use std::{borrow::Cow, fmt, sync::Arc};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

/// A key, prefix or namespace name was rejected.
///
/// ```
/// use redtower_client::{KeyError, Keyspace};
///
/// assert!(matches!(Keyspace::new("bad{prefix}"), Err(KeyError::InvalidPrefix(_))));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key prefix is empty, too long, or has characters outside `[A-Za-z0-9_.-]` and `:`
    /// separators.
    #[error(
        "invalid key prefix {0:?}: use 1 to 64 characters of [A-Za-z0-9_.-], ':' between parts"
    )]
    InvalidPrefix(String),
    /// A strict segment ([`Segment::strict`]) would have needed escaping or hashing.
    #[error("invalid key segment: {0}")]
    InvalidSegment(&'static str),
}

/// The root of all keys of one application: a validated prefix.
///
/// Cloning is cheap (one `Arc`).
///
/// ```
/// use redtower_client::{Keyspace, Segment};
///
/// let keys = Keyspace::new("shop")?;
/// let limits = keys.namespace("rl");
/// let key = limits.key("203.0.113.7").push("api");
/// assert_eq!(key.as_str(), "shop:rl:{203.0.113.7}:api");
///
/// // User input cannot break out of its segment.
/// let evil = limits.key("x}:{y").push("a:b*");
/// assert_eq!(evil.as_str(), "shop:rl:{x%7D%3A%7By}:a%3Ab%2A");
/// # Ok::<(), redtower_client::KeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Keyspace {
    prefix: Arc<str>,
}

impl fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Keyspace").field(&self.prefix).finish()
    }
}

impl Default for Keyspace {
    fn default() -> Self {
        Self {
            prefix: Arc::from(Self::DEFAULT_PREFIX),
        }
    }
}

fn valid_name(s: &str, max: usize, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.split(':').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || extra.contains(&b)
                })
        })
}

impl Keyspace {
    /// The prefix used when none is configured: `rt`.
    pub const DEFAULT_PREFIX: &'static str = "rt";

    /// A keyspace under `prefix`.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidPrefix`] unless the prefix is 1 to 64 characters of `[A-Za-z0-9_.-]`,
    /// optionally in `:`-separated non-empty parts (`myapp`, `myapp:prod`).
    pub fn new(prefix: impl Into<String>) -> Result<Self, KeyError> {
        let prefix = prefix.into();
        if !valid_name(&prefix, 64, b".") {
            return Err(KeyError::InvalidPrefix(prefix));
        }
        Ok(Self {
            prefix: Arc::from(prefix),
        })
    }

    /// The prefix, without a trailing `:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace `name` under this prefix (`<prefix>:<name>`). Feature crates use a short
    /// fixed name each (`rl`, `c`, `s`, `ps`, `q`).
    ///
    /// # Panics
    ///
    /// If `name` is not 1 to 32 characters of `[a-z0-9_-]` in `:`-separated non-empty parts.
    /// Names are compile-time constants, so this is a programmer error.
    pub fn namespace(&self, name: &'static str) -> Namespace {
        assert!(
            valid_name(name, 32, b"") && !name.bytes().any(|b| b.is_ascii_uppercase()),
            "invalid keyspace namespace {name:?}"
        );
        Namespace {
            base: Arc::from(format!("{}:{}", self.prefix, name)),
        }
    }

    /// A SCAN pattern matching every key under this prefix.
    pub fn pattern(&self) -> KeyPattern {
        KeyPattern(format!("{}:*", self.prefix))
    }
}

/// A feature's part of the keyspace: `<prefix>:<name>`. Cloning is cheap.
///
/// ```
/// use redtower_client::Keyspace;
///
/// let ns = Keyspace::default().namespace("q");
/// assert_eq!(ns.key("emails").push("wait").as_str(), "rt:q:{emails}:wait");
/// assert_eq!(ns.pattern().as_str(), "rt:q:*");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    base: Arc<str>,
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Namespace").field(&self.base).finish()
    }
}

impl Namespace {
    /// The key `<prefix>:<name>:{<tag>}`. Every key built from an equal tag lands in the same
    /// Cluster slot.
    pub fn key<'a>(&self, tag: impl Into<Segment<'a>>) -> Key {
        self.key_with_room(tag, 0)
    }

    /// [`key`](Self::key), with room for `extra` more bytes, so that the parts
    /// [pushed](Key::push) after it need no new allocation.
    ///
    /// ```
    /// use redtower_client::Keyspace;
    ///
    /// let ns = Keyspace::default().namespace("rl");
    /// let key = ns.key_with_room("alice", 4).push("api");
    /// assert_eq!(key, ns.key("alice").push("api"));
    /// ```
    pub fn key_with_room<'a>(&self, tag: impl Into<Segment<'a>>, extra: usize) -> Key {
        let tag = tag.into();
        let mut s = String::with_capacity(self.base.len() + tag.0.len() + 3 + extra);
        s.push_str(&self.base);
        s.push_str(":{");
        s.push_str(&tag.0);
        s.push('}');
        Key(s)
    }

    /// A SCAN pattern matching every key of this namespace.
    pub fn pattern(&self) -> KeyPattern {
        KeyPattern(format!("{}:*", self.base))
    }

    /// A SCAN pattern matching every key of this namespace under one tag.
    pub fn tag_pattern<'a>(&self, tag: impl Into<Segment<'a>>) -> KeyPattern {
        KeyPattern(format!("{}:{{{}}}*", self.base, tag.into().0))
    }

    /// `<prefix>:<name>`.
    pub fn as_str(&self) -> &str {
        &self.base
    }
}

/// A complete key. Built only through [`Namespace::key`] and [`Key::push`], so it always holds
/// exactly one hash tag.
///
/// ```
/// use redtower_client::Keyspace;
///
/// let ns = Keyspace::default().namespace("s");
/// let record = ns.key("alice").push("r1");
/// let index = ns.key("alice").push("idx");
/// assert_eq!(record.tag(), "alice");
/// // Same tag, same Cluster slot: one script may touch both.
/// assert_eq!(record.slot(), index.slot());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// Appends `:<part>`.
    #[must_use]
    pub fn push<'a>(mut self, part: impl Into<Segment<'a>>) -> Self {
        let part = part.into();
        self.0.reserve(part.0.len() + 1);
        self.0.push(':');
        self.0.push_str(&part.0);
        self
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The hash tag, without braces.
    pub fn tag(&self) -> &str {
        let open = self.0.find('{').unwrap_or(0);
        let close = self.0[open..].find('}').map_or(self.0.len(), |i| open + i);
        &self.0[open + 1..close]
    }

    /// The Redis Cluster slot of this key (CRC16 of its tag, mod 16384).
    pub fn slot(&self) -> u16 {
        fred::util::redis_keyslot(self.0.as_bytes())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Key> for String {
    fn from(key: Key) -> Self {
        key.0
    }
}

impl From<Key> for fred::types::Key {
    fn from(key: Key) -> Self {
        key.0.into()
    }
}

impl From<&Key> for fred::types::Key {
    fn from(key: &Key) -> Self {
        key.0.as_str().into()
    }
}

/// A SCAN `MATCH` pattern that always starts with the keyspace prefix. Built by
/// [`Keyspace::pattern`], [`Namespace::pattern`] and [`Namespace::tag_pattern`].
///
/// ```
/// use redtower_client::Keyspace;
///
/// let ns = Keyspace::new("app")?.namespace("c");
/// assert_eq!(ns.tag_pattern("*").as_str(), "app:c:{%2A}*"); // user input stays literal
/// # Ok::<(), redtower_client::KeyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyPattern(String);

impl KeyPattern {
    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One escaped key segment (a tag or a part). See the [module docs](self) for the encoding.
///
/// ```
/// use redtower_client::Segment;
///
/// assert_eq!(Segment::new("alice").as_str(), "alice");
/// assert_eq!(Segment::new("").as_str(), "%");
/// assert_eq!(Segment::new("a b\n").as_str(), "a%20b%0A");
/// assert!(Segment::new(&"x".repeat(1 << 20)).as_str().starts_with('#'));
/// assert_eq!(Segment::secret(b"api-key-123").as_str().len(), 44);
/// assert!(Segment::strict("a:b").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Segment<'a>(Cow<'a, str>);

/// The bytes kept as they are in a segment: `[A-Za-z0-9-_.@+=,/!~]`, one lookup per byte (keys
/// are built on every request's hot path).
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'_' | b'.' | b'@' | b'+' | b'=' | b',' | b'/' | b'!' | b'~'
            );
        b += 1;
    }
    t
};

fn is_plain(b: u8) -> bool {
    PLAIN[usize::from(b)]
}

/// Whether `raw` is its own segment text: 1 to [`Segment::MAX_LEN`] plain bytes.
fn kept_as_is(raw: &[u8]) -> bool {
    !raw.is_empty() && raw.len() <= Segment::MAX_LEN && raw.iter().all(|&b| is_plain(b))
}

impl<'a> Segment<'a> {
    /// The longest escaped segment kept as text; longer ones are hashed (44 bytes).
    pub const MAX_LEN: usize = 128;

    /// Escapes arbitrary text (see the [module docs](self)). Never fails.
    pub fn new(raw: &'a str) -> Self {
        if kept_as_is(raw.as_bytes()) {
            return Segment(Cow::Borrowed(raw));
        }
        Self::from_bytes(raw.as_bytes())
    }

    /// Escapes arbitrary bytes. Never fails.
    pub fn from_bytes(raw: &'a [u8]) -> Self {
        if raw.is_empty() {
            return Segment(Cow::Borrowed("%"));
        }
        if kept_as_is(raw) {
            // All plain ASCII, so valid UTF-8 (`from_utf8_lossy` borrows it as it is).
            return Segment(String::from_utf8_lossy(raw));
        }
        let escaped_len: usize = raw.iter().map(|&b| if is_plain(b) { 1 } else { 3 }).sum();
        if escaped_len > Self::MAX_LEN {
            return Self::secret(raw);
        }
        let mut s = String::with_capacity(escaped_len);
        let mut rest = raw;
        while !rest.is_empty() {
            // A run of plain bytes (ASCII, so valid text) goes in whole, then one escaped byte.
            let run = rest
                .iter()
                .position(|&b| !is_plain(b))
                .unwrap_or(rest.len());
            let (plain, tail) = rest.split_at(run);
            s.push_str(std::str::from_utf8(plain).unwrap_or_default());
            let Some((&b, tail)) = tail.split_first() else {
                break;
            };
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            s.push('%');
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 15)] as char);
            rest = tail;
        }
        Segment(Cow::Owned(s))
    }

    /// A segment for a secret or sensitive value (API keys, tokens): always `#` followed by the
    /// base64url SHA-256 of the value, so neither Redis nor logs ever hold the value itself.
    pub fn secret(raw: &[u8]) -> Segment<'static> {
        let digest = Sha256::digest(raw);
        let mut s = String::with_capacity(44);
        s.push('#');
        URL_SAFE_NO_PAD.encode_string(digest, &mut s);
        Segment(Cow::Owned(s))
    }

    /// Accepts `raw` only if it needs no escaping: 1 to [`Self::MAX_LEN`] bytes of
    /// `[A-Za-z0-9-_.@+=,/!~]`.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidSegment`] otherwise.
    pub fn strict(raw: &'a str) -> Result<Self, KeyError> {
        if raw.is_empty() {
            return Err(KeyError::InvalidSegment("empty"));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(KeyError::InvalidSegment("longer than 128 bytes"));
        }
        if !raw.bytes().all(is_plain) {
            return Err(KeyError::InvalidSegment(
                "characters outside [A-Za-z0-9-_.@+=,/!~]",
            ));
        }
        Ok(Segment(Cow::Borrowed(raw)))
    }

    /// The escaped text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An owned copy.
    pub fn into_owned(self) -> Segment<'static> {
        Segment(Cow::Owned(self.0.into_owned()))
    }
}

impl<'a> From<&'a str> for Segment<'a> {
    fn from(raw: &'a str) -> Self {
        Segment::new(raw)
    }
}

impl<'a> From<&'a String> for Segment<'a> {
    fn from(raw: &'a String) -> Self {
        Segment::new(raw)
    }
}

/// Escapes an owned string like [`Segment::new`]; text that needs no escaping is kept as it is,
/// without a copy.
///
/// ```
/// use redtower_client::Segment;
///
/// assert_eq!(Segment::from(String::from("ip/10.0.0.1")).as_str(), "ip/10.0.0.1");
/// assert_eq!(Segment::from(String::from("a b")).as_str(), "a%20b");
/// assert_eq!(Segment::from(String::new()).as_str(), "%");
/// ```
impl From<String> for Segment<'static> {
    fn from(raw: String) -> Self {
        if kept_as_is(raw.as_bytes()) {
            return Segment(Cow::Owned(raw));
        }
        Segment::from_bytes(raw.as_bytes()).into_owned()
    }
}

impl<'a> From<&'a Segment<'a>> for Segment<'a> {
    fn from(seg: &'a Segment<'a>) -> Self {
        Segment(Cow::Borrowed(&seg.0))
    }
}

macro_rules! segment_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Segment<'static> {
            fn from(n: $t) -> Self {
                Segment(Cow::Owned(n.to_string()))
            }
        }
    )*};
}
segment_from_int!(u16, u32, u64, u128, usize, i32, i64);

#[cfg(test)]
mod tests;
