//! Whether a handler response is stored (RFC 9111 section 3), and the entry built from it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body::Body;

use super::{
    body::{Collected, ResponseBody, collect_capped},
    key::{IDENTITY, RequestKey, coding_acceptable},
    policy::{Directives, cacheable_status, explicit_lifetime, negative_status, origin_age, vary},
    response::{CACHE_STATUS, X_CACHE},
    service::Run,
};
use crate::{
    cache::Outcome,
    envelope::{Entry, FLAG_ETAG_GENERATED, FLAG_NEGATIVE, FLAG_NO_STALE},
    key::short,
    store::MAX_TTL,
};

/// What the leader of a fill got from the handler.
pub(super) enum Lead<B: Body> {
    /// A storable response, already read.
    Entry(Entry),
    /// Not storable: passed through (reason).
    Pass(Response<ResponseBody<B>>, &'static str),
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

impl Run {
    /// Decides whether a handler response is stored (RFC 9111 section 3) and reads its body.
    pub(super) async fn analyze<B>(&self, resp: Response<B>, key: &RequestKey) -> (Lead<B>, Outcome)
    where
        B: Body<Data = Bytes>,
    {
        let cfg = &self.config;
        let pass = |resp: Response<B>, reason| {
            (
                Lead::Pass(resp.map(ResponseBody::inner), reason),
                Outcome::Nothing,
            )
        };
        let status = resp.status();
        let negative = negative_status(status);
        if !(cacheable_status(status) || (negative && cfg.negative_ttl.is_some())) {
            return pass(resp, "STATUS");
        }
        let headers = resp.headers();
        let cc = Directives::parse(headers);
        if cc.no_store {
            return pass(resp, "NO-STORE");
        }
        if cc.private {
            return pass(resp, "PRIVATE");
        }
        if cc.no_cache {
            return pass(resp, "NO-CACHE");
        }
        if headers.contains_key(header::SET_COOKIE) {
            return pass(resp, "SET-COOKIE");
        }
        let Some(vary) = vary(headers) else {
            return pass(resp, "VARY-STAR");
        };
        if !vary.iter().all(|n| key.names().contains(n)) {
            // The key did not include these headers: learn them; the next request stores.
            cfg.learn(&vary);
            return pass(resp, "VARY-LEARNED");
        }
        let codings: Vec<&[u8]> = headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        match key.accepted {
            // Stored under the request's `Accept-Encoding` bucket: only a coding every request
            // of the bucket accepts.
            Some(accepted) if !coding_acceptable(&codings, accepted) => {
                return pass(resp, "ENCODING");
            }
            Some(_) => {}
            // Encoded, but not keyed on `Accept-Encoding` (the response did not say `Vary`):
            // key on it from now on, as if it had.
            None if !coding_acceptable(&codings, IDENTITY) => {
                cfg.learn(&[header::ACCEPT_ENCODING]);
                return pass(resp, "VARY-LEARNED");
            }
            None => {}
        }
        if headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"text/event-stream"))
        {
            return pass(resp, "STREAM");
        }
        let now = self.cache.now_ms();
        let lifetime = explicit_lifetime(&cc, headers, now)
            .unwrap_or(match (negative, cfg.negative_ttl) {
                (true, Some(n)) => n,
                _ => cfg.ttl,
            })
            .saturating_sub(origin_age(headers))
            .min(MAX_TTL);
        if lifetime.is_zero() {
            return pass(resp, "NO-FRESHNESS");
        }
        if usize::try_from(resp.body().size_hint().lower()).unwrap_or(usize::MAX) > cfg.max_body {
            return pass(resp, "TOO-LARGE");
        }
        let (parts, body) = resp.into_parts();
        let body = match collect_capped(body, cfg.max_body).await {
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
        let explicit_stale = cc.swr.is_some() || cc.sie.is_some();
        let no_stale = (cc.must_revalidate || cc.s_maxage.is_some()) && !explicit_stale;
        let swr = cc.swr.map_or(cfg.swr, Duration::from_secs).min(MAX_TTL);
        let sie = cc.sie.map_or(cfg.sie, Duration::from_secs).min(MAX_TTL);
        let mut flags = 0;
        if negative {
            flags |= FLAG_NEGATIVE;
        }
        if no_stale {
            flags |= FLAG_NO_STALE;
        }
        let mut headers = parts.headers;
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
        if !headers.contains_key(header::ETAG) {
            let digest = crate::key::Canonical::new("etag").push(&body).digest();
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", short(&digest))) {
                headers.insert(header::ETAG, v);
                flags |= FLAG_ETAG_GENERATED;
            }
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let fresh_until = now.saturating_add(ms(lifetime));
        let (swr, sie) = if no_stale {
            (Duration::ZERO, Duration::ZERO)
        } else {
            (swr, sie)
        };
        let entry = Entry {
            flags,
            status: parts.status,
            stored_at: now,
            fresh_until,
            stale_until: fresh_until.saturating_add(ms(swr)),
            error_until: fresh_until.saturating_add(ms(sie)),
            key_digest: *key.key.digest(),
            tags: Vec::new(),
            headers,
            body,
        };
        let keep = lifetime.saturating_add(swr.max(sie));
        (Lead::Entry(entry.clone()), Outcome::Store(entry, keep))
    }
}
