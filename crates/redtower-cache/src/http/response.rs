//! Responses from cache entries (or 304), and the `Age`, `X-Cache` and `Cache-Status` headers.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::Body;

use super::{
    body::ResponseBody,
    policy::{none_match, not_modified_since},
    service::Run,
};
use crate::envelope::Entry;

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
            (None, Some(ims)) => not_modified_since(ims, get(header::LAST_MODIFIED)),
            (None, None) => false,
        }
    }
}

pub(super) fn secs(ms: u64) -> u64 {
    ms / 1000
}

impl Run {
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
        *resp.headers_mut() = e.headers.clone();
        if head {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(e.body.len()));
        }
        self.decorate(resp, served, Some(e))
    }

    /// Adds `Age`, `X-Cache` and `Cache-Status`.
    pub(super) fn decorate<B>(
        &self,
        mut resp: Response<B>,
        served: Served,
        e: Option<&Entry>,
    ) -> Response<B> {
        let now = self.cache.now_ms();
        let name = &self.config.status_name;
        let ttl = |e: &Entry| {
            if now < e.fresh_until {
                format!("{}", secs(e.fresh_until - now))
            } else {
                format!("-{}", secs(now - e.fresh_until))
            }
        };
        let (x, status) = match (served, e) {
            (Served::Hit, Some(e)) => ("HIT", format!("{name}; hit; ttl={}", ttl(e))),
            (Served::Coalesced, Some(e)) => (
                "HIT",
                format!("{name}; hit; ttl={}; detail=COALESCED", ttl(e)),
            ),
            (Served::Stale, Some(e)) => (
                "STALE",
                format!("{name}; hit; ttl={}; detail=STALE-WHILE-REVALIDATE", ttl(e)),
            ),
            (Served::StaleError(status), Some(e)) => (
                "STALE",
                format!(
                    "{name}; fwd=stale; fwd-status={status}; ttl={}; detail=STALE-IF-ERROR",
                    ttl(e)
                ),
            ),
            (Served::Stored, Some(e)) => (
                "MISS",
                format!("{name}; fwd=uri-miss; stored; ttl={}", ttl(e)),
            ),
            (Served::Miss(reason), _) => ("MISS", format!("{name}; fwd=uri-miss; detail={reason}")),
            (Served::Bypass(reason), _) => {
                ("BYPASS", format!("{name}; fwd=bypass; detail={reason}"))
            }
            (_, None) => ("MISS", format!("{name}; fwd=uri-miss")),
        };
        let h = resp.headers_mut();
        if let Some(e) = e {
            let age = match served {
                Served::Stored => 0,
                _ => secs(now.saturating_sub(e.stored_at)),
            };
            h.insert(header::AGE, HeaderValue::from(age));
        }
        h.insert(X_CACHE.clone(), HeaderValue::from_static(x));
        if let Ok(v) = HeaderValue::from_str(&status) {
            h.insert(CACHE_STATUS.clone(), v);
        }
        resp
    }
}
