//! Who a request counts against: [`Subject`] and the [`KeyExtractor`]s that find it.
//!
//! | extractor | subject | when missing |
//! | --- | --- | --- |
//! | [`PeerIp`] (default) | the TCP peer (`ConnectInfo<SocketAddr>`), IPv6 grouped by /64 | 500: serve with `into_make_service_with_connect_info` |
//! | [`ClientIp::trusted_proxies`] | the right-most untrusted address of `X-Forwarded-For` (or `Forwarded`), read only when the peer is a trusted proxy | as `PeerIp` |
//! | [`Header`] | an API key header, hashed (SHA-256) | 401 |
//! | [`BearerToken`] | `Authorization: Bearer …`, hashed | 401 |
//! | [`FromExtension`] | a request extension set by an earlier layer (user id) | 500: the earlier layer is missing |
//! | [`Global`] | one subject for everyone | never |
//! | a closure `Fn(&Parts) -> Option<Subject>` | anything; `None` skips the limit | — |
//!
//! An extractor answers `Ok(Some(subject))`, `Ok(None)` to skip limiting (an allow-list), or
//! `Err(KeyRejection)` when the identity is missing; the layer then answers with the
//! rejection's status (or lets the request through with
//! [`MissingKey::Allow`](crate::MissingKey::Allow)). Use [`KeyExtractorExt::or`] to fall back
//! to another extractor, e.g. an API key, else the client IP.

use std::{
    fmt::{self, Write as _},
    marker::PhantomData,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use axum::extract::ConnectInfo;
use http::{HeaderName, StatusCode, header::AUTHORIZATION, request::Parts};
use ipnet::IpNet;
use redtower_client::Segment;

use crate::ConfigError;

/// The identity a request is counted against, already escaped (or hashed) for use in a Redis
/// key. Never log it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Subject(Segment<'static>);

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subject(..)")
    }
}

impl Subject {
    /// A subject from arbitrary text (escaped; long values are hashed).
    pub fn new(raw: impl AsRef<str>) -> Self {
        Self(Segment::new(raw.as_ref()).into_owned())
    }

    /// A subject from a secret (API key, token): only its SHA-256 is kept.
    pub fn secret(raw: impl AsRef<[u8]>) -> Self {
        Self(Segment::secret(raw.as_ref()))
    }

    /// The one subject of [`Global`].
    pub fn global() -> Self {
        Self::new("global")
    }

    /// The subject for an IP address (already grouped to a network if wanted).
    pub fn ip(ip: IpAddr) -> Self {
        // Every request of a peer-IP limit builds one: one allocation, IPv4 written by hand
        // (`Display` for `Ipv4Addr` formats through a padding buffer).
        let mut text = String::with_capacity(48);
        text.push_str("ip/");
        match ip {
            IpAddr::V4(v4) => push_ipv4(&mut text, v4),
            IpAddr::V6(v6) => {
                let _ = write!(text, "{v6}");
            }
        }
        Self(Segment::from(text))
    }

    /// The subject for a network (`2001:db8::/64`).
    pub fn network(net: IpNet) -> Self {
        let mut text = String::with_capacity(52);
        text.push_str("ip/");
        match net {
            IpNet::V4(v4) => {
                push_ipv4(&mut text, v4.addr());
                let _ = write!(text, "/{}", v4.prefix_len());
            }
            IpNet::V6(_) => {
                let _ = write!(text, "{net}");
            }
        }
        Self(Segment::from(text))
    }

    /// The escaped text used in keys.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The key segment.
    pub fn segment(&self) -> &Segment<'static> {
        &self.0
    }
}

/// Appends `ip` in dotted-quad form, as `Display` writes it.
fn push_ipv4(text: &mut String, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
}

/// The identity is missing: the layer answers `status` (unless configured to allow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRejection {
    /// The status to answer.
    pub status: StatusCode,
    /// Why, for the problem body and logs (no request data).
    pub reason: &'static str,
}

impl KeyRejection {
    /// A rejection with `status` and `reason`.
    pub const fn new(status: StatusCode, reason: &'static str) -> Self {
        Self { status, reason }
    }
}

/// Finds the [`Subject`] of a request. Implemented for closures
/// `Fn(&Parts) -> Option<Subject>` (where `None` skips limiting).
pub trait KeyExtractor: Send + Sync + 'static {
    /// `Ok(Some(s))`: count against `s`; `Ok(None)`: do not limit this request;
    /// `Err(_)`: the identity is missing.
    ///
    /// # Errors
    ///
    /// A [`KeyRejection`] when the request carries no identity.
    fn extract(&self, parts: &Parts) -> Result<Option<Subject>, KeyRejection>;

    /// Checks the extractor's configuration, once, when the layer is
    /// [built](crate::RateLimitLayer::build). The default finds nothing wrong.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] describing what cannot work (such as
    /// [`ConfigError::InvalidPrefix`] for a [`ClientIp`] prefix out of range).
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

impl<F> KeyExtractor for F
where
    F: Fn(&Parts) -> Option<Subject> + Send + Sync + 'static,
{
    fn extract(&self, parts: &Parts) -> Result<Option<Subject>, KeyRejection> {
        Ok(self(parts))
    }
}

impl<K: KeyExtractor + ?Sized> KeyExtractor for Arc<K> {
    fn extract(&self, parts: &Parts) -> Result<Option<Subject>, KeyRejection> {
        (**self).extract(parts)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        (**self).validate()
    }
}

/// Combinators for [`KeyExtractor`]s.
pub trait KeyExtractorExt: KeyExtractor + Sized {
    /// Uses `other` when `self` finds no identity (`Err`). `Ok(None)` (skip) is kept.
    ///
    /// ```
    /// use redtower_ratelimit::{BearerToken, KeyExtractorExt, PeerIp};
    /// let key = BearerToken.or(PeerIp);
    /// # let _ = key;
    /// ```
    fn or<O: KeyExtractor>(self, other: O) -> Or<Self, O> {
        Or(self, other)
    }
}

impl<K: KeyExtractor> KeyExtractorExt for K {}

/// See [`KeyExtractorExt::or`].
#[derive(Debug, Clone)]
pub struct Or<A, B>(A, B);

impl<A: KeyExtractor, B: KeyExtractor> KeyExtractor for Or<A, B> {
    fn extract(&self, parts: &Parts) -> Result<Option<Subject>, KeyRejection> {
        self.0.extract(parts).or_else(|_| self.1.extract(parts))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.0.validate()?;
        self.1.validate()
    }
}

/// One limit shared by every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl KeyExtractor for Global {
    fn extract(&self, _: &Parts) -> Result<Option<Subject>, KeyRejection> {
        Ok(Some(Subject::global()))
    }
}

const NO_PEER: KeyRejection = KeyRejection::new(
    StatusCode::INTERNAL_SERVER_ERROR,
    "no peer address: serve the app with into_make_service_with_connect_info::<SocketAddr>()",
);

/// The TCP peer's address, from axum's `ConnectInfo<SocketAddr>` (or a plain `SocketAddr`
/// extension). IPv6 addresses are grouped by /64 (one subscriber's allocation; see
/// [`ClientIp::ipv6_prefix`]), IPv4-mapped IPv6 addresses count as IPv4.
///
/// Behind a reverse proxy every client has the proxy's address: use
/// [`ClientIp::trusted_proxies`] there.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIp;

impl PeerIp {
    /// The peer address, grouping IPv6 addresses by `/len` instead of /64 (see
    /// [`ClientIp::ipv6_prefix`]).
    pub fn ipv6_prefix(self, len: u8) -> ClientIp {
        ClientIp::peer().ipv6_prefix(len)
    }
}

impl KeyExtractor for PeerIp {
    fn extract(&self, parts: &Parts) -> Result<Option<Subject>, KeyRejection> {
        let ip = peer(parts).ok_or(NO_PEER)?;
        warn_if_proxied(parts);
        Ok(Some(group(ip, 32, 64)))
    }
}

/// Behind a reverse proxy every client has the proxy's address: say so once.
fn warn_if_proxied(parts: &Parts) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // A `HeaderName`, not a `&str`: a `&str` key is parsed again on every lookup.
    static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
    if !WARNED.load(std::sync::atomic::Ordering::Relaxed)
        && (parts.headers.contains_key(&X_FORWARDED_FOR)
            || parts.headers.contains_key(http::header::FORWARDED))
        && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!(
            target: "redtower::ratelimit",
            "requests carry X-Forwarded-For/Forwarded but the rate limit key is the TCP peer: \
             behind a reverse proxy, use ClientIp::trusted_proxies"
        );
    }
}

fn peer(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| parts.extensions.get::<SocketAddr>().map(SocketAddr::ip))
}

fn group(ip: IpAddr, v4: u8, v6: u8) -> Subject {
    let ip = ip.to_canonical();
    let len = if ip.is_ipv4() { v4 } else { v6 };
    let full = if ip.is_ipv4() { 32 } else { 128 };
    if len >= full {
        return Subject::ip(ip);
    }
    match IpNet::new(ip, len) {
        Ok(net) => Subject::network(net.trunc()),
        Err(_) => Subject::ip(ip),
    }
}

/// Which header a trusted proxy writes the client address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// The client's IP address, optionally through trusted reverse proxies.
///
/// With no trusted proxy it is [`PeerIp`]. With [`trusted_proxies`](Self::trusted_proxies), the
/// forwarding header is read only when the TCP peer is inside one of the trusted networks, and
/// walked right to left, skipping trusted hops: the first untrusted address is the client.
/// Addresses a client writes itself sit to the left of what its first proxy appends, so they
/// are never reached. Exactly one header is read ([`ForwardedHeader`]): reading a second one
/// that the proxy passes through untouched would let clients choose their key.
///
/// The header is read as bytes, entry by entry from the right: entries a client wrote itself,
/// whatever bytes they hold (non-ASCII included), are never looked at, so they cannot change
/// the key. An entry the walk does reach and cannot parse (a trusted proxy wrote something that
/// is not an address) stops the walk at the last address reached, which is a trusted hop or the
/// client, never a value the client chose.
///
/// Trusted networks may be written IPv4-mapped (`::ffff:10.0.0.0/104` is `10.0.0.0/8`), and
/// peers and entries in either form match them.
///
/// ```
/// use redtower_ratelimit::{ClientIp, ForwardedHeader};
///
/// let key = ClientIp::trusted_proxies(["10.0.0.0/8".parse().unwrap()])
///     .header(ForwardedHeader::XForwardedFor)
///     .ipv6_prefix(56);
/// # let _ = key;
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: Arc<[IpNet]>,
    header: ForwardedHeader,
    v4_prefix: u8,
    v6_prefix: u8,
    max_hops: usize,
}

impl ClientIp {
    /// The TCP peer only (same as [`PeerIp`]).
    pub fn peer() -> Self {
        Self::trusted_proxies([])
    }

    /// Reads the forwarding header when the peer is in one of `networks`. An IPv4-mapped IPv6
    /// network (`::ffff:10.0.0.0/104`) counts as the IPv4 network it maps (`10.0.0.0/8`).
    ///
    /// ```
    /// use redtower_ratelimit::ClientIp;
    ///
    /// let key = ClientIp::trusted_proxies(["::ffff:10.0.0.0/104".parse().unwrap()]);
    /// assert!(key.is_trusted("10.1.2.3".parse().unwrap()));
    /// assert!(key.is_trusted("::ffff:10.1.2.3".parse().unwrap()));
    /// assert!(!key.is_trusted("11.0.0.1".parse().unwrap()));
    /// ```
    pub fn trusted_proxies(networks: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            trusted: networks.into_iter().map(canonical_net).collect(),
            header: ForwardedHeader::XForwardedFor,
            v4_prefix: 32,
            v6_prefix: 64,
            max_hops: 16,
        }
    }

    /// The header the proxies write. Defaults to [`ForwardedHeader::XForwardedFor`].
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Groups IPv6 clients by `/len`. Defaults to 64 (one subscriber's LAN; some ISPs hand out a
    /// /56 per customer, where 56 stops a client rotating through its 256 /64s).
    ///
    /// A length above 128 is reported as [`ConfigError::InvalidPrefix`] by
    /// [`RateLimitLayer::build`](crate::RateLimitLayer::build).
    #[must_use]
    pub fn ipv6_prefix(mut self, len: u8) -> Self {
        self.v6_prefix = len;
        self
    }

    /// Groups IPv4 clients by `/len`. Defaults to 32 (one address).
    ///
    /// A length above 32 is reported as [`ConfigError::InvalidPrefix`] by
    /// [`RateLimitLayer::build`](crate::RateLimitLayer::build).
    #[must_use]
    pub fn ipv4_prefix(mut self, len: u8) -> Self {
        self.v4_prefix = len;
        self
    }

    /// The most forwarding entries walked before giving up (using the last trusted hop).
    /// Defaults to 16.
    #[must_use]
    pub fn max_hops(mut self, hops: usize) -> Self {
        self.max_hops = hops;
        self
    }

    /// Whether `ip` is in one of the trusted networks (IPv4-mapped addresses count as IPv4).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|n| match (n, ip) {
            (IpNet::V6(n), IpAddr::V4(v4)) => n.contains(&v4.to_ipv6_mapped()),
            (n, ip) => n.contains(&ip),
        })
    }

    /// The client address of a request (before grouping).
    pub fn client_addr(&self, parts: &Parts) -> Option<IpAddr> {
        let peer = peer(parts)?.to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
        let name = match self.header {
            ForwardedHeader::XForwardedFor => &X_FORWARDED_FOR,
            ForwardedHeader::Forwarded => &http::header::FORWARDED,
        };
        // Right to left over every line of the header, as bytes: what lies left of the entry
        // the walk stops at (the client's own writing) is never decoded.
        let entries = parts
            .headers
            .get_all(name)
            .iter()
            .rev()
            .flat_map(|value| value.as_bytes().rsplit(|&b| b == b','));
        let mut client = peer;
        for entry in entries.take(self.max_hops) {
            // Not UTF-8: not an address (it stops the walk here, like any unparsable entry).
            let Ok(entry) = std::str::from_utf8(entry.trim_ascii()) else {
                break;
            };
            let parsed = match self.header {
                ForwardedHeader::XForwardedFor => parse_addr(entry),
                ForwardedHeader::Forwarded => forwarded_for(entry).and_then(parse_addr),
            };
            let Some(ip) = parsed.map(|ip| ip.to_canonical()) else {
                break;
            };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        Some(client)
    }
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::peer()
    }
}

impl KeyExtractor for ClientIp {
    fn extract(&self, parts: &Parts) -> Result<Option<Subject>, KeyRejection> {
        if self.trusted.is_empty() {
            warn_if_proxied(parts);
        }
        let ip = self.client_addr(parts).ok_or(NO_PEER)?;
        Ok(Some(group(ip, self.v4_prefix, self.v6_prefix)))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.v4_prefix > 32 {
            return Err(ConfigError::InvalidPrefix(self.v4_prefix));
        }
        if self.v6_prefix > 128 {
            return Err(ConfigError::InvalidPrefix(self.v6_prefix));
        }
        Ok(())
    }
}

/// A trusted network as it is matched: an IPv4-mapped IPv6 network of prefix 96 or longer
/// becomes the IPv4 network it maps (`::ffff:10.0.0.0/104` is `10.0.0.0/8`); every network
/// is truncated to its prefix.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let (Some(v4), Some(len)) = (v6.addr().to_ipv4_mapped(), v6.prefix_len().checked_sub(96))
        && let Ok(v4) = ipnet::Ipv4Net::new(v4, len)
    {
        return IpNet::V4(v4).trunc();
    }
    net.trunc()
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`, optionally quoted.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|v6| v6.parse().ok())
}

/// The `for=` value of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })
}

const NO_HEADER: KeyRejection = KeyRejection::new(
    StatusCode::UNAUTHORIZED,
    "missing credentials for rate limiting",
);

/// The value of a header (an API key), hashed: neither Redis nor logs see it.
#[derive(Debug, Clone)]
pub struct Header(HeaderName);

impl Header {
    /// The header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self(name)
    }

    /// The `X-Api-Key` header.
    pub fn api_key() -> Self {
        Self(HeaderName::from_static("x-api-key"))
    }
}

impl KeyExtractor for Header {
    fn extract(&self, parts: &Parts) -> Result<Option<Subject>, KeyRejection> {
        let value = parts.headers.get(&self.0).ok_or(NO_HEADER)?;
        if value.is_empty() {
            return Err(NO_HEADER);
        }
        let mut raw = b"h/".to_vec();
        raw.extend_from_slice(self.0.as_str().as_bytes());
        raw.push(b'/');
        raw.extend_from_slice(value.as_bytes());
        Ok(Some(Subject::secret(raw)))
    }
}

/// The token of `Authorization: Bearer <token>`, hashed.
#[derive(Debug, Clone, Copy, Default)]
pub struct BearerToken;

impl KeyExtractor for BearerToken {
    fn extract(&self, parts: &Parts) -> Result<Option<Subject>, KeyRejection> {
        let value = parts.headers.get(AUTHORIZATION).ok_or(NO_HEADER)?;
        let bytes = value.as_bytes();
        if bytes.len() <= 7 || !bytes[..7].eq_ignore_ascii_case(b"bearer ") {
            return Err(NO_HEADER);
        }
        let token = bytes[7..].trim_ascii();
        if token.is_empty() {
            return Err(NO_HEADER);
        }
        let mut raw = b"bearer/".to_vec();
        raw.extend_from_slice(token);
        Ok(Some(Subject::secret(raw)))
    }
}

/// A request extension `T` set by an earlier layer (e.g. the user id from an auth layer),
/// through its `Display` text.
///
/// ```
/// use redtower_ratelimit::FromExtension;
///
/// #[derive(Clone)]
/// struct UserId(u64);
/// impl std::fmt::Display for UserId {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { self.0.fmt(f) }
/// }
/// let key = FromExtension::<UserId>::new();
/// # let _ = key;
/// ```
pub struct FromExtension<T>(PhantomData<fn() -> T>);

impl<T> FromExtension<T> {
    /// Reads the extension `T`.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for FromExtension<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for FromExtension<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for FromExtension<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::any::type_name::<Self>())
    }
}

impl<T: fmt::Display + Send + Sync + 'static> KeyExtractor for FromExtension<T> {
    fn extract(&self, parts: &Parts) -> Result<Option<Subject>, KeyRejection> {
        let value = parts.extensions.get::<T>().ok_or(KeyRejection::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rate limit key extension missing: add the layer that sets it before the rate limit layer",
        ))?;
        Ok(Some(Subject::new(format!("x/{value}"))))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn text(subject: &Subject) -> String {
        subject.as_str().to_owned()
    }

    proptest! {
        /// The subject of an address or network is the text it always was, so keys already in
        /// Redis keep counting across an upgrade.
        #[test]
        fn ip_subjects_keep_their_text(octets in any::<[u8; 4]>(), v6 in any::<u128>(), len in 0u8..=32) {
            let v4 = Ipv4Addr::from(octets);
            prop_assert_eq!(text(&Subject::ip(IpAddr::V4(v4))), format!("ip/{v4}"));
            let net = IpNet::new(IpAddr::V4(v4), len).unwrap().trunc();
            prop_assert_eq!(text(&Subject::network(net)), format!("ip/{net}"));
            let v6 = std::net::Ipv6Addr::from(v6);
            let old = format!("ip/{v6}");
            prop_assert_eq!(text(&Subject::ip(IpAddr::V6(v6))), Segment::new(&old).as_str().to_owned());
            let net6 = IpNet::new(IpAddr::V6(v6), 64).unwrap().trunc();
            let old = format!("ip/{net6}");
            prop_assert_eq!(text(&Subject::network(net6)), Segment::new(&old).as_str().to_owned());
        }
    }

    #[test]
    fn ipv4_edges_print_as_display_does() {
        for octet in [0u8, 9, 10, 99, 100, 109, 110, 199, 200, 255] {
            let ip = Ipv4Addr::new(octet, 0, octet, 255);
            assert_eq!(text(&Subject::ip(IpAddr::V4(ip))), format!("ip/{ip}"));
        }
    }
}
