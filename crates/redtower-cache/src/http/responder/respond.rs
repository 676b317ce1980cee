//! Responses from cache entries (or 304), and the `Age`, `X-Cache` and `Cache-Status` headers.

use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::Body;

use super::Responder;
use crate::{
    ResponseBody,
    envelope::Entry,
    http::policy::{none_match, not_modified_since},
};

pub(super) static X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");
pub(super) static CACHE_STATUS: header::HeaderName =
    header::HeaderName::from_static("cache-status");

/// How the response was produced, for `X-Cache` and `Cache-Status`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Served {
    Hit,
    Coalesced,
    Stale,
    StaleError(u16),
    Stored,
    /// A stale entry the handler confirmed with a `304`.
    Revalidated,
    Miss(&'static str),
    Bypass(&'static str),
}

/// The conditional headers of the client's request.
#[derive(Default)]
pub(super) struct Conditionals {
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
}

impl Conditionals {
    pub(super) fn take(headers: &mut HeaderMap) -> Self {
        let text = |v: HeaderValue| v.to_str().ok().map(str::to_owned);
        Self {
            if_none_match: headers.remove(header::IF_NONE_MATCH).and_then(text),
            if_modified_since: headers.remove(header::IF_MODIFIED_SINCE).and_then(text),
        }
    }

    fn not_modified(&self, e: &Entry) -> bool {
        let get = |n: header::HeaderName| e.headers.get(n).and_then(|v| v.to_str().ok());
        match (&self.if_none_match, &self.if_modified_since) {
            (Some(inm), _) => none_match(inm, get(header::ETAG)),
            // Without `Last-Modified`, the stored `Date` stands for it (RFC 9110 13.1.3).
            (None, Some(ims)) => not_modified_since(
                ims,
                get(header::LAST_MODIFIED).or_else(|| get(header::DATE)),
            ),
            (None, None) => false,
        }
    }
}

/// The first and last byte and the complete length of a `Content-Range: bytes a-b/len`.
fn content_range(value: &str) -> Option<(u64, u64, u64)> {
    let (unit, rest) = value.trim().split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (span, len) = rest.trim().split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last, len) = (
        first.trim().parse().ok()?,
        last.trim().parse().ok()?,
        len.trim().parse().ok()?,
    );
    (first <= last && last < len).then_some((first, last, len))
}

/// The first and last byte of a `Range: bytes=a-b` (or `a-`, or `-n`) of a body of `len`
/// bytes; `None` for several ranges, another unit, or an unsatisfiable range.
fn single_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let (unit, spec) = value.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') || len == 0 {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let digits = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if first.trim().is_empty() {
        let n = digits(last)?;
        return (n > 0).then(|| (len.saturating_sub(n), len - 1));
    }
    let start = digits(first)?;
    let end = if last.trim().is_empty() {
        len - 1
    } else {
        digits(last)?.min(len - 1)
    };
    (start < len && start <= end).then_some((start, end))
}

pub(super) fn secs(ms: u64) -> u64 {
    ms / 1000
}

impl Responder {
    /// A response from a cache entry (or 304 when the client's validators match).
    pub(super) fn respond<B: Body>(
        &self,
        e: &Entry,
        cond: &Conditionals,
        head: bool,
        served: Served,
    ) -> Response<ResponseBody<B>> {
        if cond.not_modified(e) {
            let mut resp = Response::new(ResponseBody::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            for name in [
                header::ETAG,
                header::CACHE_CONTROL,
                header::CONTENT_LOCATION,
                header::DATE,
                header::EXPIRES,
                header::VARY,
                header::LAST_MODIFIED,
            ] {
                for v in e.headers.get_all(&name) {
                    resp.headers_mut().append(name.clone(), v.clone());
                }
            }
            return self.decorate(resp, served, Some(e));
        }
        let body = if head {
            ResponseBody::empty()
        } else {
            ResponseBody::full(e.body.clone())
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = e.status;
        // Room for the stored headers and the three added by `decorate`: no regrowth.
        let headers = resp.headers_mut();
        headers.reserve(e.headers.len() + 3);
        for (name, value) in &e.headers {
            headers.append(name.clone(), value.clone());
        }
        if head {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(e.body.len()));
        }
        self.decorate(resp, served, Some(e))
    }

    /// A `206 Partial Content` with the one byte range `range` (a `Range` value) of a stored
    /// full `200` response (RFC 9110 14.2), or of a stored `206` whose part covers it. `None`
    /// when the range is not one satisfiable `bytes` range the entry holds (the request then
    /// goes to the handler).
    pub(super) fn respond_range<B: Body>(
        &self,
        e: &Entry,
        range: &[u8],
        head: bool,
    ) -> Option<Response<ResponseBody<B>>> {
        let held = u64::try_from(e.body.len()).ok()?;
        // Where the stored bytes start in the representation, and its length.
        let (offset, len) = match e.status {
            StatusCode::OK => (0, held),
            StatusCode::PARTIAL_CONTENT => {
                let (first, last, len) =
                    content_range(e.headers.get(header::CONTENT_RANGE)?.to_str().ok()?)?;
                (last.checked_sub(first)? + 1 == held).then_some((first, len))?
            }
            _ => return None,
        };
        let (start, end) = single_range(std::str::from_utf8(range).ok()?, len)?;
        if start < offset || end >= offset + held {
            return None;
        }
        let from = usize::try_from(start - offset).ok()?;
        let to = usize::try_from(end - offset).ok()?;
        let part = e.body.slice(from..=to);
        let length = HeaderValue::from(part.len());
        let body = if head {
            ResponseBody::empty()
        } else {
            ResponseBody::full(part)
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let headers = resp.headers_mut();
        for (name, value) in &e.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(header::CONTENT_LENGTH, length);
        let content_range = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).ok()?;
        headers.insert(header::CONTENT_RANGE, content_range);
        Some(self.decorate(resp, Served::Hit, Some(e)))
    }

    /// Like [`respond`](Self::respond), for an entry nobody else holds: its headers and body
    /// are moved into the response instead of copied.
    pub(super) fn respond_owned<B: Body>(
        &self,
        mut e: Entry,
        cond: &Conditionals,
        head: bool,
        served: Served,
    ) -> Response<ResponseBody<B>> {
        if head || cond.not_modified(&e) {
            return self.respond(&e, cond, head, served);
        }
        let mut resp = Response::new(ResponseBody::full(std::mem::take(&mut e.body)));
        *resp.status_mut() = e.status;
        *resp.headers_mut() = std::mem::take(&mut e.headers);
        self.decorate(resp, served, Some(&e))
    }

    /// Adds `Age`, `X-Cache` and `Cache-Status`.
    pub(super) fn decorate<B>(
        &self,
        mut resp: Response<B>,
        served: Served,
        e: Option<&Entry>,
    ) -> Response<B> {
        let now = self.cache.now_ms();
        let (status, x) = self.cache_status(served, e, now);
        let h = resp.headers_mut();
        h.reserve(3);
        if let Some(e) = e {
            // Includes the `Age` the origin reported (RFC 9111 4.2.3: the entry's stored_at
            // is that much earlier than its receipt).
            let age = secs(now.saturating_sub(e.stored_at));
            h.insert(header::AGE, small_number(age));
        }
        h.insert(X_CACHE.clone(), HeaderValue::from_static(x));
        if let Some(v) = status.finish() {
            h.insert(CACHE_STATUS.clone(), v);
        }
        resp
    }

    /// The RFC 9211 `Cache-Status` value of a response, and its `X-Cache` value.
    fn cache_status(&self, served: Served, e: Option<&Entry>, now: u64) -> (Line, &'static str) {
        let mut status = Line::new(&self.settings.status_name);
        let ttl = |line: &mut Line, e: &Entry| {
            line.push("ttl=");
            if now < e.fresh_until {
                line.number(secs(e.fresh_until - now));
            } else {
                line.push("-");
                line.number(secs(now - e.fresh_until));
            }
        };
        let x = match (served, e) {
            (Served::Hit, Some(e)) => {
                status.push("; hit; ");
                ttl(&mut status, e);
                "HIT"
            }
            (Served::Coalesced, Some(e)) => {
                status.push("; hit; ");
                ttl(&mut status, e);
                status.push("; detail=COALESCED");
                "HIT"
            }
            (Served::Stale, Some(e)) => {
                status.push("; hit; ");
                ttl(&mut status, e);
                status.push("; detail=STALE-WHILE-REVALIDATE");
                "STALE"
            }
            (Served::StaleError(code), Some(e)) => {
                status.push("; fwd=stale; fwd-status=");
                status.number(u64::from(code));
                status.push("; ");
                ttl(&mut status, e);
                status.push("; detail=STALE-IF-ERROR");
                "STALE"
            }
            (Served::Revalidated, Some(e)) => {
                status.push("; fwd=stale; fwd-status=304; stored; ");
                ttl(&mut status, e);
                "REVALIDATED"
            }
            (Served::Stored, Some(e)) => {
                status.push("; fwd=uri-miss; stored; ");
                ttl(&mut status, e);
                "MISS"
            }
            (Served::Miss(reason), _) => {
                status.push("; fwd=uri-miss; detail=");
                status.push(reason);
                "MISS"
            }
            (Served::Bypass(reason), _) => {
                status.push("; fwd=bypass; detail=");
                status.push(reason);
                "BYPASS"
            }
            (_, None) => {
                status.push("; fwd=uri-miss");
                "MISS"
            }
        };
        (status, x)
    }
}

/// `Age` values below this are shared static values (no allocation per response).
const STATIC_NUMBERS: u64 = 1024;

/// A header value holding `n`: a shared static one for small numbers.
fn small_number(n: u64) -> HeaderValue {
    static SMALL: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
        // One string for all of them; leaked once, like any `static`.
        let mut text = String::new();
        let mut ends = Vec::with_capacity(STATIC_NUMBERS as usize);
        for i in 0..STATIC_NUMBERS {
            text.push_str(&i.to_string());
            ends.push(text.len());
        }
        let text: &'static str = Box::leak(text.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let v = HeaderValue::from_static(&text[start..end]);
                start = end;
                v
            })
            .collect()
    });
    match usize::try_from(n).ok().and_then(|i| SMALL.get(i)) {
        Some(v) => v.clone(),
        None => HeaderValue::from(n),
    }
}

/// A `Cache-Status` value built on the stack: one allocation (the `HeaderValue`) per response.
struct Line {
    buf: [u8; 192],
    len: usize,
    /// Used when the value does not fit in `buf` (a long cache name).
    spill: Option<String>,
}

impl Line {
    fn new(start: &str) -> Self {
        let mut line = Self {
            buf: [0; 192],
            len: 0,
            spill: None,
        };
        line.push(start);
        line
    }

    fn push(&mut self, s: &str) {
        if let Some(spill) = &mut self.spill {
            spill.push_str(s);
            return;
        }
        let end = self.len + s.len();
        match self.buf.get_mut(self.len..end) {
            Some(dst) => {
                dst.copy_from_slice(s.as_bytes());
                self.len = end;
            }
            None => {
                let mut spill = String::from_utf8_lossy(&self.buf[..self.len]).into_owned();
                spill.push_str(s);
                self.spill = Some(spill);
            }
        }
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        // ASCII digits are valid UTF-8.
        self.push(std::str::from_utf8(&digits[start..]).unwrap_or("0"));
    }

    fn finish(self) -> Option<HeaderValue> {
        match self.spill {
            Some(s) => HeaderValue::from_str(&s).ok(),
            None => HeaderValue::from_bytes(&self.buf[..self.len]).ok(),
        }
    }
}
