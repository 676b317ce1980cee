//! Whether a handler response is stored (RFC 9111 section 3), and the entry built from it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header, response::Parts};
use http_body::Body;

use super::{
    Responder,
    respond::{CACHE_STATUS, X_CACHE},
};
use crate::{
    ResponseBody,
    body::{Collected, collect_capped},
    cache::Outcome,
    envelope::{Entry, FLAG_ETAG_GENERATED, FLAG_NEGATIVE, FLAG_NO_STALE},
    http::{
        key::{IDENTITY, RequestKey, coding_acceptable},
        policy::{
            Directives, cacheable_status, explicit_lifetime, negative_status, origin_age, vary,
        },
    },
    key::{Canonical, short},
    store::MAX_TTL,
};

/// What the leader of a fill got from the handler.
pub(super) enum Lead<B: Body> {
    /// A storable response, already read.
    Entry(Entry),
    /// Not storable: passed through (reason).
    Pass(Response<ResponseBody<B>>, &'static str),
}

/// A response whose headers allow storing it, and what they say.
struct Storable {
    /// The response's `Cache-Control`.
    cc: Directives,
    /// A status stored only as a negative result (404, ...).
    negative: bool,
    /// How long it is fresh from `now`.
    lifetime: Duration,
    /// When it was received, unix ms.
    now: u64,
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
];

impl Responder {
    /// Decides whether a handler response is stored (RFC 9111 section 3) and reads its body.
    pub(super) async fn analyze<B>(&self, resp: Response<B>, key: &RequestKey) -> (Lead<B>, Outcome)
    where
        B: Body<Data = Bytes>,
    {
        let storable = match self.storable(&resp, key) {
            Ok(s) => s,
            Err(reason) => {
                let resp = resp.map(ResponseBody::inner);
                return (Lead::Pass(resp, reason), Outcome::Nothing);
            }
        };
        let (parts, body) = resp.into_parts();
        let body = match collect_capped(body, self.settings.max_body).await {
            Collected::Complete(b) => b,
            Collected::Partial(frames, rest) => {
                let resp = Response::from_parts(parts, ResponseBody::prefixed(frames, rest));
                return (Lead::Pass(resp, "TOO-LARGE"), Outcome::Nothing);
            }
            Collected::Failed(e) => {
                let resp = Response::from_parts(parts, ResponseBody::failed(e));
                return (Lead::Pass(resp, "BODY-ERROR"), Outcome::Nothing);
            }
        };
        let (entry, keep) = self.entry(parts, body, &storable, key);
        (Lead::Entry(entry.clone()), Outcome::Store(entry, keep))
    }

    /// Whether the response's status and headers allow storing it under `key`; if not, the
    /// reason (for `Cache-Status` and metrics). Learns `Vary` names the key lacked.
    fn storable<B: Body>(
        &self,
        resp: &Response<B>,
        key: &RequestKey,
    ) -> Result<Storable, &'static str> {
        let settings = &self.settings;
        let status = resp.status();
        let negative = negative_status(status);
        if !(cacheable_status(status) || (negative && settings.negative_ttl.is_some())) {
            return Err("STATUS");
        }
        let headers = resp.headers();
        let cc = Directives::parse(headers);
        if cc.no_store {
            return Err("NO-STORE");
        }
        if cc.private {
            return Err("PRIVATE");
        }
        if cc.no_cache {
            return Err("NO-CACHE");
        }
        if headers.contains_key(header::SET_COOKIE) {
            return Err("SET-COOKIE");
        }
        self.key_covers(headers, key)?;
        if headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"text/event-stream"))
        {
            return Err("STREAM");
        }
        let now = self.cache.now_ms();
        let lifetime = explicit_lifetime(&cc, headers, now)
            .unwrap_or(match (negative, settings.negative_ttl) {
                (true, Some(n)) => n,
                _ => settings.ttl,
            })
            .saturating_sub(origin_age(headers))
            .min(MAX_TTL);
        if lifetime.is_zero() {
            return Err("NO-FRESHNESS");
        }
        let least = usize::try_from(resp.body().size_hint().lower()).unwrap_or(usize::MAX);
        if least > settings.max_body {
            return Err("TOO-LARGE");
        }
        Ok(Storable {
            cc,
            negative,
            lifetime,
            now,
        })
    }

    /// Whether `key` was built from every request header the response varies on: its `Vary`
    /// names, and `Accept-Encoding` for an encoded response (whose coding every request of
    /// the key's bucket must accept). Names the key lacked are learned, so the next request
    /// is keyed on them and stores.
    fn key_covers(&self, headers: &HeaderMap, key: &RequestKey) -> Result<(), &'static str> {
        let Some(vary) = vary(headers) else {
            return Err("VARY-STAR");
        };
        if !vary.iter().all(|n| key.names().contains(n)) {
            // The key did not include these headers: learn them; the next request stores.
            self.settings.learn(&vary);
            return Err("VARY-LEARNED");
        }
        let codings: Vec<&[u8]> = headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        match key.accepted {
            // Stored under the request's `Accept-Encoding` bucket: only a coding every request
            // of the bucket accepts.
            Some(accepted) if !coding_acceptable(&codings, accepted) => Err("ENCODING"),
            Some(_) => Ok(()),
            // Encoded, but not keyed on `Accept-Encoding` (the response did not say `Vary`):
            // key on it from now on, as if it had.
            None if !coding_acceptable(&codings, IDENTITY) => {
                self.settings.learn(&[header::ACCEPT_ENCODING]);
                Err("VARY-LEARNED")
            }
            None => Ok(()),
        }
    }

    /// The entry of a storable response, and how long the store keeps it (freshness plus
    /// the longer stale window).
    fn entry(
        &self,
        parts: Parts,
        body: Bytes,
        s: &Storable,
        key: &RequestKey,
    ) -> (Entry, Duration) {
        let settings = &self.settings;
        let cc = &s.cc;
        let explicit_stale = cc.swr.is_some() || cc.sie.is_some();
        let no_stale = (cc.must_revalidate || cc.s_maxage.is_some()) && !explicit_stale;
        let (swr, sie) = if no_stale {
            (Duration::ZERO, Duration::ZERO)
        } else {
            (
                cc.swr
                    .map_or(settings.swr, Duration::from_secs)
                    .min(MAX_TTL),
                cc.sie
                    .map_or(settings.sie, Duration::from_secs)
                    .min(MAX_TTL),
            )
        };
        let mut flags = 0;
        if s.negative {
            flags |= FLAG_NEGATIVE;
        }
        if no_stale {
            flags |= FLAG_NO_STALE;
        }
        let (headers, etag_generated) = stored_headers(parts.headers, cc, &body);
        if etag_generated {
            flags |= FLAG_ETAG_GENERATED;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let fresh_until = s.now.saturating_add(ms(s.lifetime));
        let entry = Entry {
            flags,
            status: parts.status,
            stored_at: s.now,
            fresh_until,
            stale_until: fresh_until.saturating_add(ms(swr)),
            error_until: fresh_until.saturating_add(ms(sie)),
            key_digest: *key.key.digest(),
            tags: Vec::new(),
            headers,
            body,
        };
        (entry, s.lifetime.saturating_add(swr.max(sie)))
    }
}

/// The headers stored with a response: without hop-by-hop headers, `Age`, `Set-Cookie`, the
/// cache's own headers and those a qualified `no-cache="h"`/`private="h"` names; with an
/// `ETag` generated from the body when the handler set none (`true` when it was).
fn stored_headers(mut headers: HeaderMap, cc: &Directives, body: &Bytes) -> (HeaderMap, bool) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in [
        header::AGE,
        header::SET_COOKIE,
        X_CACHE.clone(),
        CACHE_STATUS.clone(),
    ] {
        headers.remove(name);
    }
    for name in &cc.strip {
        headers.remove(name.as_str());
    }
    let mut generated = false;
    if !headers.contains_key(header::ETAG) {
        let digest = Canonical::new("etag").push(body).digest();
        if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", short(&digest))) {
            headers.insert(header::ETAG, v);
            generated = true;
        }
    }
    (headers, generated)
}
