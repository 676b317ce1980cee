//! Whether a handler response is stored (RFC 9111 section 3), where (its variant), and the
//! entry built from it; a `304` to a revalidation updates the stored entry (4.3.4).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header, request, response::Parts,
};
use http_body::Body;

use super::{
    Responder,
    respond::{CACHE_STATUS, X_CACHE},
};
use crate::{
    ResponseBody,
    body::{Collected, collect_capped},
    cache::{Outcome, StoreAt},
    envelope::{
        Entry, FLAG_AUTHORIZED, FLAG_ETAG_GENERATED, FLAG_NEGATIVE, FLAG_NO_STALE, FLAG_VARY_RECORD,
    },
    http::{
        Credentials,
        key::{IDENTITY, RequestKey, coding_acceptable, codings_known},
        policy::{
            Directives, cacheable_status, explicit_lifetime, heuristic_lifetime, known_status,
            negative_status, origin_age, understood_status, vary,
        },
        settings::sort_names,
    },
    key::{Canonical, short},
    store::MAX_TTL,
};

/// What the leader of a fill got from the handler.
pub(super) enum Lead<B: Body> {
    /// A storable response, already read, and the `Set-Cookie` values that only the request
    /// that fetched it gets (the stored entry never holds them); `true` when it is a stored
    /// entry a `304` revalidated.
    Entry(Entry, Vec<HeaderValue>, bool),
    /// Not storable: passed through (reason).
    Pass(Response<ResponseBody<B>>, &'static str),
}

/// A response whose headers allow storing it, and what they say.
struct Storable {
    /// The directives this cache obeys (a targeted field's, or `Cache-Control`).
    cc: Directives,
    /// A status stored only as a negative result (404, ...).
    negative: bool,
    /// How long it is fresh from `now`.
    lifetime: Duration,
    /// When it was received, unix ms.
    now: u64,
    /// The `Age` the origin reported (counts toward the entry's age).
    age: Duration,
    /// Whether it carries a validator of the handler's (`ETag`, `Last-Modified`).
    validators: bool,
    /// Where it is stored: its key, and the URI's Vary record (key and names) when it varies
    /// on headers beyond the declared ones.
    at: RequestKey,
    record: Option<Record>,
}

/// A URI's Vary record: its key (on the declared headers only) and the extra names.
type Record = (RequestKey, Arc<[HeaderName]>);

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
    /// Decides whether a handler response to `req` (fetched under `fill`) is stored (RFC 9111
    /// section 3) and where, and reads its body.
    pub(super) async fn analyze<B>(
        &self,
        resp: Response<B>,
        req: &request::Parts,
        fill: &RequestKey,
    ) -> (Lead<B>, Outcome)
    where
        B: Body<Data = Bytes>,
    {
        let least = usize::try_from(resp.body().size_hint().lower()).unwrap_or(usize::MAX);
        let storable = match self.storable(resp.status(), resp.headers(), least, req) {
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
        self.admit(parts, body, storable, fill)
    }

    /// A `304 Not Modified` answering the revalidation of `stored`: its headers replace the
    /// stored ones (RFC 9111 3.2 and 4.3.4; never `Content-Length` nor hop-by-hop fields), and
    /// the result is stored (or not) like a full response with the stored body.
    pub(super) fn revalidated<B: Body>(
        &self,
        not_modified: Parts,
        stored: &Entry,
        req: &request::Parts,
        fill: &RequestKey,
    ) -> (Lead<B>, Outcome) {
        let mut headers = stored.headers.clone();
        if stored.flags & FLAG_ETAG_GENERATED != 0 {
            // Generated again from the (same) body unless the 304 names one.
            headers.remove(header::ETAG);
        }
        let mut replaced: Vec<&HeaderName> = Vec::new();
        for (name, value) in &not_modified.headers {
            if *name == header::CONTENT_LENGTH
                || HOP_BY_HOP.contains(&name.as_str())
                || *name == X_CACHE
                || *name == CACHE_STATUS
            {
                continue;
            }
            if !replaced.contains(&name) {
                headers.remove(name);
                replaced.push(name);
            }
            headers.append(name.clone(), value.clone());
        }
        let mut parts = not_modified;
        parts.status = stored.status;
        parts.headers = headers;
        let body = stored.body.clone();
        match self.storable(parts.status, &parts.headers, body.len(), req) {
            Ok(s) => match self.admit(parts, body, s, fill) {
                (Lead::Entry(e, cookies, _), outcome) => (Lead::Entry(e, cookies, true), outcome),
                other => other,
            },
            Err(reason) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                let resp = Response::from_parts(parts, ResponseBody::full(body));
                (Lead::Pass(resp, reason), Outcome::Nothing)
            }
        }
    }

    /// The entry (and the outcome of the fill) of a storable response.
    fn admit<B: Body>(
        &self,
        parts: Parts,
        body: Bytes,
        s: Storable,
        fill: &RequestKey,
    ) -> (Lead<B>, Outcome) {
        let cookies: Vec<HeaderValue> = parts
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        let (entry, keep) = self.entry(parts, body, &s);
        let primary = s.at.key.primary().to_vec();
        let outcome = if s.record.is_none() && s.at.key.canonical() == fill.key.canonical() {
            self.settings.remember(&primary, None);
            Outcome::Store(entry.clone(), keep)
        } else {
            let record = s.record.map(|(base, names)| {
                let record = vary_record(&entry, &base, &names);
                self.settings.remember(&primary, Some(names));
                (base.key, record)
            });
            if record.is_none() {
                self.settings.remember(&primary, None);
            }
            Outcome::StoreAt(Box::new(StoreAt {
                entry: entry.clone(),
                ttl: keep,
                at: s.at.key,
                record,
            }))
        };
        (Lead::Entry(entry, cookies, false), outcome)
    }

    /// Whether a response (status, headers, at least `least` body bytes) to `req` may be
    /// stored, and how; if not, the reason (for `Cache-Status` and metrics).
    fn storable(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        least: usize,
        req: &request::Parts,
    ) -> Result<Storable, &'static str> {
        let settings = &self.settings;
        let now = self.cache.now_ms();
        // A targeted field (RFC 9213) replaces `Cache-Control` and `Expires` for this cache.
        let (cc, explicit) = match Directives::targeted(headers, &settings.targeted) {
            Some(d) => {
                let explicit = d.s_maxage.or(d.max_age).map(Duration::from_secs);
                (d, explicit)
            }
            None => {
                let d = Directives::parse(headers);
                let explicit = explicit_lifetime(&d, headers, now);
                (d, explicit)
            }
        };
        let negative = negative_status(status);
        let heuristic = cacheable_status(status);
        // A 206 answering a `Range` request: stored for that `Range` (RFC 9111 3.3).
        let partial =
            status == StatusCode::PARTIAL_CONTENT && req.headers.contains_key(header::RANGE);
        let guessed = settings
            .heuristic
            .and_then(|f| heuristic_lifetime(headers, f, now));
        // RFC 9111 3: any final status the cache understands, given explicit freshness or
        // `public` (with a heuristic lifetime); the heuristically cacheable ones without (the
        // negative ones when opted in, or given a heuristic lifetime).
        if !(heuristic
            || (negative && (settings.negative_ttl.is_some() || guessed.is_some()))
            || ((explicit.is_some() || (cc.public && guessed.is_some()))
                && (understood_status(status) || partial)))
        {
            return Err("STATUS");
        }
        // `must-understand` (RFC 9111 5.2.2.3): `no-store` yields for a status whose
        // requirements the cache implements.
        if cc.no_store && !(cc.must_understand && known_status(status)) {
            return Err("NO-STORE");
        }
        if cc.private {
            return Err("PRIVATE");
        }
        let validators =
            headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
        let revalidates = validators && !settings.revalidate_window.is_zero();
        // `no-cache`: stored only to be revalidated before each use (RFC 9111 5.2.2.4).
        if cc.no_cache && !revalidates {
            return Err("NO-CACHE");
        }
        // RFC 9111 3.5: a response to a request with `Authorization` only when it allows it.
        if settings.credentials == Credentials::Bypass
            && req.headers.contains_key(header::AUTHORIZATION)
            && !authorized(&cc)
        {
            return Err("AUTHORIZATION");
        }
        if !settings.store_set_cookie && headers.contains_key(header::SET_COOKIE) {
            return Err("SET-COOKIE");
        }
        let (at, record) = self.placement(headers, req, partial)?;
        if headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"text/event-stream"))
        {
            return Err("STREAM");
        }
        let age = origin_age(headers);
        let lifetime = match explicit {
            _ if cc.no_cache => Duration::ZERO,
            Some(l) => l,
            None if heuristic => guessed.unwrap_or(settings.ttl),
            None if negative => guessed.unwrap_or(settings.negative_ttl.unwrap_or_default()),
            // `public`, another status: only a heuristic lifetime, never the route's TTL.
            None => guessed.unwrap_or_default(),
        }
        .saturating_sub(age)
        .min(MAX_TTL);
        // Stale at once: stored only when `no-cache` asks for revalidation before each use (a
        // `max-age=0` response would cost a write per request for nothing when the handler
        // does not answer conditionals).
        if lifetime.is_zero() && !(cc.no_cache && revalidates) {
            return Err("NO-FRESHNESS");
        }
        if least > settings.max_body {
            return Err("TOO-LARGE");
        }
        Ok(Storable {
            cc,
            negative,
            lifetime,
            now,
            age,
            validators,
            at,
            record,
        })
    }

    /// Where a response to `req` is stored (RFC 9111 4.1): keyed on the declared key headers
    /// and the headers its `Vary` names (plus `Accept-Encoding` for an encoded response, whose
    /// coding every request of the key's bucket must accept). When it varies beyond the
    /// declared headers, the URI's Vary record (under the declared-only key) lists the names.
    fn placement(
        &self,
        headers: &HeaderMap,
        req: &request::Parts,
        partial: bool,
    ) -> Result<(RequestKey, Option<Record>), &'static str> {
        let Some(vary) = vary(headers) else {
            return Err("VARY-STAR");
        };
        let declared = self.settings.names();
        let declared = declared.as_deref().unwrap_or_default();
        let mut extra: Vec<HeaderName> =
            vary.into_iter().filter(|n| !declared.contains(n)).collect();
        let codings: Vec<&[u8]> = headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        // A coding the cache does not know is the origin's own choice: replayed as it is.
        let known = codings_known(&codings);
        if known
            && !coding_acceptable(&codings, IDENTITY)
            && !declared.contains(&header::ACCEPT_ENCODING)
            && !extra.contains(&header::ACCEPT_ENCODING)
        {
            // Encoded without saying `Vary: Accept-Encoding`: key on it as if it had.
            extra.push(header::ACCEPT_ENCODING);
        }
        sort_names(&mut extra);
        if partial {
            // The URI's one partial entry (keyed on the declared headers only).
            if !extra.is_empty() {
                return Err("PARTIAL-VARY");
            }
            return Ok((self.partial_key(req), None));
        }
        let base = self.request_key(req, None);
        let (at, record) = if extra.is_empty() {
            (base, None)
        } else {
            let extra: Arc<[HeaderName]> = Arc::from(extra);
            let at = self.request_key(req, Some(&extra));
            (at, Some((base, extra)))
        };
        match at.accepted {
            Some(accepted) if known && !coding_acceptable(&codings, accepted) => Err("ENCODING"),
            _ => Ok((at, record)),
        }
    }

    /// The entry of a storable response, and how long the store keeps it (freshness plus
    /// the longest of the stale windows and, with validators, the revalidation window).
    fn entry(&self, parts: Parts, body: Bytes, s: &Storable) -> (Entry, Duration) {
        let settings = &self.settings;
        let cc = &s.cc;
        let explicit_stale = cc.swr.is_some() || cc.sie.is_some();
        let no_stale =
            cc.no_cache || ((cc.must_revalidate || cc.s_maxage.is_some()) && !explicit_stale);
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
        if authorized(cc) {
            flags |= FLAG_AUTHORIZED;
        }
        let (headers, etag_generated) = stored_headers(parts.headers, cc, &body);
        if etag_generated {
            flags |= FLAG_ETAG_GENERATED;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let fresh_until = s.now.saturating_add(ms(s.lifetime));
        let revalidate = if s.validators {
            settings.revalidate_window
        } else {
            Duration::ZERO
        };
        let entry = Entry {
            flags,
            status: parts.status,
            // The origin's `Age` counts toward the entry's age (RFC 9111 4.2.3).
            stored_at: s.now.saturating_sub(ms(s.age)),
            fresh_until,
            stale_until: fresh_until.saturating_add(ms(swr)),
            error_until: fresh_until.saturating_add(ms(sie)),
            key_digest: *s.at.key.digest(),
            tags: Vec::new(),
            headers,
            body,
        };
        let keep = s
            .lifetime
            .saturating_add(swr.max(sie).max(revalidate))
            .min(MAX_TTL);
        (entry, keep)
    }
}

/// Whether a response may answer requests with `Authorization` (RFC 9111 3.5).
fn authorized(cc: &Directives) -> bool {
    cc.public || cc.s_maxage.is_some() || cc.must_revalidate
}

/// The Vary record of a URI: the names its responses vary on beyond the declared key headers,
/// under the declared-only key `base`, living as long as the response stored with it.
fn vary_record(entry: &Entry, base: &RequestKey, names: &[HeaderName]) -> Entry {
    let list = names
        .iter()
        .map(HeaderName::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&list) {
        headers.insert(header::VARY, v);
    }
    Entry {
        flags: FLAG_VARY_RECORD,
        status: StatusCode::OK,
        stored_at: entry.stored_at,
        fresh_until: entry.fresh_until,
        stale_until: entry.stale_until,
        error_until: entry.error_until,
        key_digest: *base.key.digest(),
        tags: Vec::new(),
        headers,
        body: Bytes::new(),
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
