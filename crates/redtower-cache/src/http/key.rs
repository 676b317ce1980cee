//! What identifies a cached response: the request URI, and the headers its variant is keyed on.

use std::{borrow::Cow, sync::Arc};

use http::{HeaderMap, HeaderName, Uri, header, request::Parts};
use sha2::{Digest, Sha256};

use crate::key::{Canonical, Key};

/// Which query parameters are part of the cache key.
///
/// Clients choose query strings freely, so every keyed parameter lets a client create entries
/// (and handler calls) at will: `GET /products/featured?r=<random>` misses every time when
/// the whole query is keyed. The default therefore keys none and removes the query before the
/// handler sees it; a route declares the parameters it reads with [`QueryKey::allow`].
///
/// ```
/// use redtower_cache::QueryKey;
///
/// let none = QueryKey::Ignore;                // the default: ?r=<random> shares one entry
/// let some = QueryKey::allow(["page", "q"]);  // others are dropped before the handler sees them
/// let all = QueryKey::Sorted;                 // every parameter: unbounded, opt in with care
/// # let _ = (none, some, all);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryKey {
    /// Every parameter, sorted, so `?a=1&b=2` and `?b=2&a=1` share an entry. A client can
    /// create as many entries as it sends distinct query strings (each one a handler call):
    /// use it only behind a bounded store (see the crate docs, "Limits").
    Sorted,
    /// Only these parameters (sorted). The others are removed from the request before it
    /// reaches the handler, so an unkeyed parameter can never influence (poison) a stored
    /// response.
    Allow(Arc<[String]>),
    /// No parameters: the query is removed before the handler sees it. The default.
    #[default]
    Ignore,
}

impl QueryKey {
    /// Keys on (and passes to the handler) only the parameters `names`.
    pub fn allow<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::Allow(names.into_iter().map(Into::into).collect())
    }

    /// The normalized query (sorted pairs, allow-listed), or `None` when it is empty.
    fn normalize(&self, query: Option<&str>) -> Option<String> {
        let query = query.filter(|q| !q.is_empty())?;
        let mut pairs: Vec<&str> = match self {
            Self::Ignore => return None,
            Self::Sorted => query.split('&').filter(|p| !p.is_empty()).collect(),
            Self::Allow(names) => query
                .split('&')
                .filter(|p| {
                    let name = p.split_once('=').map_or(*p, |(n, _)| n);
                    names.iter().any(|a| a == name)
                })
                .collect(),
        };
        pairs.sort_unstable();
        (!pairs.is_empty()).then(|| pairs.join("&"))
    }

    /// Whether the handler's URI must be rewritten (parameters dropped).
    pub(crate) fn filters(&self) -> bool {
        !matches!(self, Self::Sorted)
    }

    /// The request URI with only the keyed parameters.
    pub(crate) fn rewrite(&self, uri: &Uri) -> Option<Uri> {
        // Without a query there is nothing to drop: the URI stays as it is.
        let normalized = self.normalize(Some(uri.query()?));
        let path = uri.path();
        let pq = match normalized {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = pq.parse().ok();
        Uri::from_parts(parts).ok()
    }
}

/// What to do with requests that carry credentials (`Authorization` or a session cookie).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// The default, as RFC 9111 3.5 asks of shared caches: a request with a session cookie
    /// bypasses the cache (neither read nor store); a request with `Authorization` is answered
    /// only from, and only stores, responses that allow it (`public`, `s-maxage`,
    /// `must-revalidate`), and goes to the handler otherwise.
    #[default]
    Bypass,
    /// Cache per credential: the `Authorization` value and session cookie are hashed into the
    /// key, so each user gets their own entries.
    PerUser,
    /// Cache and share across users: only for routes whose response does not depend on who
    /// asks.
    Shared,
}

/// The key of one request: the URI, then the variant headers.
#[derive(Debug, Clone)]
pub(crate) struct RequestKey {
    pub(crate) key: Key,
    /// The `Accept-Encoding` bucket, when keyed on it (see [`accepted_codings`]).
    pub(crate) accepted: Option<u8>,
}

/// The digest of the primary (URI) canonical key of a request (the group of its entries).
pub(crate) fn primary(parts: &Parts, query: &QueryKey) -> [u8; 32] {
    primary_canonical(parts, query).digest()
}

/// The request's host, normalised: lowercase, without a trailing dot, without the scheme's
/// default port (`Example.COM.:443` over https is `example.com`). `""` when there is none.
pub(crate) fn request_host(parts: &Parts) -> Cow<'_, str> {
    let uri = &parts.uri;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(http::uri::Authority::as_str))
        .unwrap_or("");
    normalize_host(host, uri.scheme_str().unwrap_or("http"))
}

/// See [`request_host`].
pub(crate) fn normalize_host<'a>(host: &'a str, scheme: &str) -> Cow<'a, str> {
    let host = host.trim();
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    let host = host.strip_suffix(default_port).unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The primary (URI) canonical key of a request: method GET, scheme, host, path, query.
fn primary_canonical(parts: &Parts, query: &QueryKey) -> Canonical {
    let uri = &parts.uri;
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = request_host(parts);
    let q = query.normalize(uri.query());
    let mut c = Canonical::new("http");
    c.push(b"GET")
        .push(scheme.as_bytes())
        .push(host.as_bytes())
        .push(uri.path().as_bytes());
    match q {
        Some(q) => c.push(b"?").push(q.as_bytes()),
        None => c.push(b""),
    };
    c
}

/// The content codings the cache tells apart, in bucket order.
const CODINGS: [&str; 6] = ["br", "compress", "deflate", "gzip", "identity", "zstd"];
/// The bucket that accepts only `identity` (a request without `Accept-Encoding`).
pub(crate) const IDENTITY: u8 = 1 << 4;

/// The set of codings a request accepts (RFC 9110 12.5.3), as a bit per [`CODINGS`] entry:
/// the bucket its `Accept-Encoding` falls in, so each browser's spelling does not fragment the
/// cache while every client gets a coding it accepts. `q=0` excludes a coding, `*` stands for
/// the codings not listed, `x-gzip`/`x-compress` are their aliases, and a weight that does not
/// parse excludes its coding. No header (or an empty one) accepts only `identity`; `identity`
/// is accepted unless excluded. Unknown codings are ignored.
pub(crate) fn accepted_codings(value: Option<&[u8]>) -> u8 {
    let Some(value) = value else {
        return IDENTITY;
    };
    let mut listed = 0u8;
    let mut accepted = 0u8;
    let mut star = None;
    for item in value.split(|b| *b == b',') {
        let mut params = item.split(|b| *b == b';');
        let name = params.next().unwrap_or_default().trim_ascii();
        if name.is_empty() {
            continue;
        }
        let mut q_ok = true;
        for p in params {
            let p = p.trim_ascii();
            if let Some(q) = p.strip_prefix(b"q=").or_else(|| p.strip_prefix(b"Q=")) {
                q_ok = std::str::from_utf8(q)
                    .ok()
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q > 0.0 && q.is_finite());
            }
        }
        if name == b"*" {
            star = Some(q_ok);
            continue;
        }
        let name = name.to_ascii_lowercase();
        let name = match name.as_slice() {
            b"x-gzip" => &b"gzip"[..],
            b"x-compress" => &b"compress"[..],
            n => n,
        };
        if let Some(i) = CODINGS.iter().position(|c| c.as_bytes() == name) {
            let bit = 1 << i;
            listed |= bit;
            if q_ok {
                accepted |= bit;
            } else {
                accepted &= !bit;
            }
        }
    }
    for i in 0..CODINGS.len() {
        let bit = 1 << i;
        if listed & bit == 0 {
            match star {
                Some(true) => accepted |= bit,
                Some(false) => {}
                None if bit == IDENTITY => accepted |= bit,
                None => {}
            }
        }
    }
    accepted
}

/// Whether every coding in these `Content-Encoding` values is one the cache tells apart
/// (see [`accepted_codings`]).
pub(crate) fn codings_known(content_encoding: &[&[u8]]) -> bool {
    content_encoding.iter().all(|value| {
        value.split(|b| *b == b',').all(|coding| {
            let coding = coding.trim_ascii().to_ascii_lowercase();
            coding.is_empty()
                || matches!(coding.as_slice(), b"x-gzip" | b"x-compress")
                || CODINGS.iter().any(|c| c.as_bytes() == coding)
        })
    })
}

/// Whether a response with these `Content-Encoding` values is acceptable to every request of
/// the bucket `accepted` (see [`accepted_codings`]). No header is `identity`; an unknown coding
/// is never acceptable.
pub(crate) fn coding_acceptable(content_encoding: &[&[u8]], accepted: u8) -> bool {
    let mut any = false;
    for value in content_encoding {
        for coding in value.split(|b| *b == b',') {
            let coding = coding.trim_ascii().to_ascii_lowercase();
            if coding.is_empty() {
                continue;
            }
            any = true;
            let coding = match coding.as_slice() {
                b"x-gzip" => &b"gzip"[..],
                b"x-compress" => &b"compress"[..],
                c => c,
            };
            match CODINGS.iter().position(|c| c.as_bytes() == coding) {
                Some(i) if accepted & (1 << i) != 0 => {}
                _ => return false,
            }
        }
    }
    any || accepted & IDENTITY != 0
}

/// A request header's value as keyed: its lines joined with `,`, list members trimmed of
/// surrounding space (`" 1, 2 "`, `"1,2"` and the lines `1` and `2` are one value), and for
/// `Accept-Language` lowercased and sorted (`"en, De"` and `"de, en"` are one value).
fn header_values(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter().peekable();
    let first = values.next()?;
    let language = *name == header::ACCEPT_LANGUAGE;
    let plain = |v: &[u8]| {
        !v.contains(&b',')
            && v.first().is_none_or(|b| !b.is_ascii_whitespace())
            && v.last().is_none_or(|b| !b.is_ascii_whitespace())
            && !(language && v.iter().any(u8::is_ascii_uppercase))
    };
    if values.peek().is_none() && plain(first.as_bytes()) {
        return Some(first.as_bytes().to_vec());
    }
    let mut members: Vec<Vec<u8>> = std::iter::once(first)
        .chain(values)
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|m| {
            let m = m.trim_ascii();
            if language {
                m.to_ascii_lowercase()
            } else {
                m.to_vec()
            }
        })
        .filter(|m| !m.is_empty())
        .collect();
    if language {
        members.sort_unstable();
    }
    Some(members.join(&b","[..]))
}

/// The cookie values of `names` in the request, hashed.
pub(crate) fn session_cookie(headers: &HeaderMap, names: &[String]) -> Option<Vec<u8>> {
    let mut found = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            if names.iter().any(|want| want == n.trim()) {
                found.extend_from_slice(n.trim().as_bytes());
                found.push(b'=');
                found.extend_from_slice(v.trim().as_bytes());
                found.push(b';');
            }
        }
    }
    (!found.is_empty()).then_some(found)
}

/// The full key of a request for the given header names.
pub(crate) fn request_key(
    parts: &Parts,
    query: &QueryKey,
    names: Option<Arc<[HeaderName]>>,
    per_user: Option<&[String]>,
) -> RequestKey {
    let mut c = primary_canonical(parts, query);
    let names = names.filter(|n| !n.is_empty());
    if names.is_none() && per_user.is_none() {
        return RequestKey {
            key: Key::new(c),
            accepted: None,
        };
    }
    // The variant part starts with its own kind, so its digest is that of a separate
    // `Canonical::new("variant")`.
    let split = c.len();
    let mut accepted = None;
    c.push(b"variant");
    for name in names.as_deref().unwrap_or_default() {
        c.push(name.as_str().as_bytes());
        match header_values(&parts.headers, name) {
            v if *name == header::ACCEPT_ENCODING => {
                let bucket = accepted_codings(v.as_deref());
                accepted = Some(bucket);
                c.push(b"~").push(&[bucket])
            }
            Some(v) => c.push(b"=").push(&v),
            None => c.push(b"-"),
        };
    }
    if let Some(cookies) = per_user {
        let auth = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        let session = session_cookie(&parts.headers, cookies).unwrap_or_default();
        c.push(b"user")
            .push(&Sha256::digest(auth))
            .push(&Sha256::digest(session));
    }
    RequestKey {
        key: Key::split(c, split),
        accepted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::get(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn query_order_does_not_matter_but_values_do() {
        let q = QueryKey::Sorted;
        let a = primary(&parts("http://h/p?a=1&b=2", &[]), &q);
        assert_eq!(a, primary(&parts("http://h/p?b=2&a=1", &[]), &q));
        assert_ne!(a, primary(&parts("http://h/p?a=1&b=3", &[]), &q));
        assert_ne!(a, primary(&parts("http://other/p?a=1&b=2", &[]), &q));
        assert_ne!(a, primary(&parts("https://h/p?a=1&b=2", &[]), &q));
    }

    #[test]
    fn allow_list_ignores_and_strips_other_parameters() {
        let q = QueryKey::allow(["page"]);
        let a = primary(&parts("/p?page=2&utm=x", &[("host", "h")]), &q);
        assert_eq!(a, primary(&parts("/p?page=2", &[("host", "h")]), &q));
        let uri: Uri = "/p?utm=x&page=2&z".parse().unwrap();
        assert_eq!(q.rewrite(&uri).unwrap(), "/p?page=2");
        assert_eq!(QueryKey::Ignore.rewrite(&uri).unwrap(), "/p");
    }

    fn codings(v: Option<&str>) -> Vec<&'static str> {
        let mask = accepted_codings(v.map(str::as_bytes));
        CODINGS
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, c)| *c)
            .collect()
    }

    #[test]
    fn accept_encoding_buckets_honour_weights_and_star() {
        assert_eq!(codings(None), ["identity"]);
        assert_eq!(codings(Some("")), ["identity"]);
        assert_eq!(codings(Some("deflate")), ["deflate", "identity"]);
        assert_eq!(codings(Some("compress")), ["compress", "identity"]);
        assert_eq!(
            codings(Some("gzip, deflate, br, zstd")),
            ["br", "deflate", "gzip", "identity", "zstd"]
        );
        assert_eq!(codings(Some("GZIP;q=0.5, br;q=0")), ["gzip", "identity"]);
        assert_eq!(codings(Some("gzip;q=0, identity;q=0")), Vec::<&str>::new());
        assert_eq!(
            codings(Some("*")),
            ["br", "compress", "deflate", "gzip", "identity", "zstd"]
        );
        assert_eq!(codings(Some("br, *;q=0")), ["br"]);
        assert_eq!(codings(Some("x-gzip, gzip;q=abc")), ["identity"]);
        assert_eq!(codings(Some("x-gzip")), ["gzip", "identity"]);
        assert_eq!(codings(Some("unknown")), ["identity"]);
        // Same set, different spelling: one bucket.
        assert_eq!(
            accepted_codings(Some(b"gzip, br")),
            accepted_codings(Some(b"br;q=0.9,gzip ; q=1"))
        );
    }

    #[test]
    fn a_response_coding_must_be_accepted_by_its_bucket() {
        let gzip = accepted_codings(Some(b"gzip"));
        assert!(coding_acceptable(&[b"gzip"], gzip));
        assert!(coding_acceptable(&[], gzip));
        assert!(!coding_acceptable(&[b"deflate"], gzip));
        assert!(!coding_acceptable(&[b"deflate"], IDENTITY));
        assert!(!coding_acceptable(&[b"gzip"], IDENTITY));
        assert!(coding_acceptable(&[b"identity"], IDENTITY));
        assert!(!coding_acceptable(&[b"gzip, deflate"], gzip));
        assert!(!coding_acceptable(&[b"weird"], u8::MAX));
        assert!(!coding_acceptable(
            &[],
            accepted_codings(Some(b"identity;q=0, gzip"))
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_accept_encoding_is_bucketed(v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mask = accepted_codings(Some(&v));
            proptest::prop_assert!(mask < 1 << CODINGS.len());
            let _ = coding_acceptable(&[&v], mask);
        }
    }

    #[test]
    fn keyed_values_are_normalised() {
        let names: Arc<[HeaderName]> = Arc::from(vec![
            header::ACCEPT_LANGUAGE,
            HeaderName::from_static("foo"),
        ]);
        let key = |h: &[(&str, &str)]| {
            request_key(
                &parts("/p", h),
                &QueryKey::Sorted,
                Some(names.clone()),
                None,
            )
            .key
            .digest()
            .to_owned()
        };
        let a = key(&[("accept-language", "en, de"), ("foo", "1,2")]);
        assert_eq!(a, key(&[("accept-language", "De,eN"), ("foo", " 1, 2 ")]));
        assert_eq!(
            a,
            key(&[("accept-language", " en ,  de"), ("foo", "1"), ("foo", "2")])
        );
        assert_ne!(a, key(&[("accept-language", "en, de"), ("foo", "2,1")]));
        assert_ne!(a, key(&[("accept-language", "en"), ("foo", "1,2")]));
    }

    #[test]
    fn variants_differ_by_header_value() {
        let names: Arc<[HeaderName]> = Arc::from(vec![header::ACCEPT_LANGUAGE]);
        let q = QueryKey::Sorted;
        let en = request_key(
            &parts("/p", &[("accept-language", "en")]),
            &q,
            Some(names.clone()),
            None,
        );
        let fr = request_key(
            &parts("/p", &[("accept-language", "fr")]),
            &q,
            Some(names.clone()),
            None,
        );
        let none = request_key(&parts("/p", &[]), &q, Some(names), None);
        assert_eq!(en.key.entry().group(), fr.key.entry().group());
        assert_ne!(en.key.entry(), fr.key.entry());
        assert_ne!(en.key.entry(), none.key.entry());
        assert_ne!(en.key.digest(), fr.key.digest());
        assert_ne!(en.key.canonical(), fr.key.canonical());
    }
}
