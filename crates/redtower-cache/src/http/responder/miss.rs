//! Misses: single-flight fills through the handler, background refreshes of stale entries,
//! `stale-if-error`, and other methods (unsafe ones invalidate their URI).

use std::sync::Arc;

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header, request::Parts,
};
use http_body::Body;
use tower_service::Service;

use super::{
    Responder, Stored,
    admit::Lead,
    call,
    respond::{Conditionals, Served},
};
use crate::{
    ResponseBody,
    cache::{Filled, Outcome},
    envelope::{Entry, FLAG_AUTHORIZED, FLAG_ETAG_GENERATED, FLAG_VARY_RECORD},
    http::key::{RequestKey, primary},
    key::short,
};

/// A copy of a request's method, URI and headers (what keys and storing decisions read).
fn head_of(parts: &Parts) -> Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// Makes a request conditional on a stored entry's validators (RFC 9111 4.3.1): its `ETag`
/// (unless the cache generated it) and `Last-Modified`.
fn add_validators(headers: &mut HeaderMap, e: &Entry) {
    if e.flags & FLAG_ETAG_GENERATED == 0
        && let Some(etag) = e.headers.get(header::ETAG)
    {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = e.headers.get(header::LAST_MODIFIED) {
        headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

/// Answers a fetch under `key`: a `304` to a revalidation updates `validate`; anything else
/// is analyzed as a new response.
async fn fetched<B: http_body::Body<Data = Bytes>>(
    responder: &Responder,
    mut resp: Response<B>,
    validate: Option<&Entry>,
    req: &Parts,
    key: &RequestKey,
) -> (Lead<B>, Outcome) {
    let tags = responder.take_tags(resp.headers_mut());
    let (lead, outcome) = match validate {
        // The stored entry keeps its tags.
        Some(stored) if resp.status() == StatusCode::NOT_MODIFIED => {
            let (parts, _) = resp.into_parts();
            responder.revalidated(parts, stored, req, key)
        }
        _ => {
            responder
                .settings
                .remember_tags(key.key.primary(), tags.iter());
            responder.analyze(resp, req, key).await
        }
    };
    (lead, with_tags(outcome, tags))
}

/// Adds a response's own tags to the entry it stores: recorded as pending (generation 0)
/// until the fill stores the entry with their current generations.
fn with_tags(outcome: Outcome, tags: Vec<String>) -> Outcome {
    if tags.is_empty() {
        return outcome;
    }
    let pending = |entry: &mut Entry| entry.tags = tags.iter().map(|t| (t.clone(), 0)).collect();
    match outcome {
        Outcome::Store(mut entry, ttl) => {
            pending(&mut entry);
            Outcome::Store(entry, ttl)
        }
        Outcome::StoreAt(mut at) => {
            pending(&mut at.entry);
            Outcome::StoreAt(at)
        }
        other => other,
    }
}

impl Responder {
    /// Removes the route's tag field from a handler's response and returns its tags.
    pub(super) fn take_tags(&self, headers: &mut HeaderMap) -> Vec<String> {
        match &self.settings.tag_header {
            Some(name) => crate::http::tags::take(headers, name, self.route()),
            None => Vec::new(),
        }
    }

    /// A miss: fill through single-flight, store when allowed, or serve stale on errors.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn miss<S, ReqBody, ResBody>(
        self,
        inner: S,
        parts: Parts,
        body: ReqBody,
        key: RequestKey,
        conditionals: Conditionals,
        stored: Stored,
        seen: u64,
        head: bool,
    ) -> Result<Response<ResponseBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        if head {
            // HEAD is never stored; only served from a stored GET.
            let mut resp = call(inner, Request::from_parts(parts, body)).await?;
            self.take_tags(resp.headers_mut());
            return Ok(self.decorate(resp.map(ResponseBody::inner), Served::Miss("HEAD"), None));
        }
        let Stored {
            fallback,
            validate,
            authorization,
        } = stored;
        // A `Range` request fills the URI's partial entry: a fill shared with it may hold
        // another range.
        let range = parts.headers.get(header::RANGE).cloned();
        let leader = {
            let responder = self.clone();
            let key = key.clone();
            let copy = head_of(&parts);
            let mut req = Request::from_parts(parts, body);
            if let Some(e) = &validate {
                add_validators(req.headers_mut(), e);
            }
            // The end of the window in which a 5xx is answered with the stale entry instead.
            let stale_until = fallback.as_ref().map(|e| e.error_until.max(e.stale_until));
            move || async move {
                match call(inner, req).await {
                    // Not stored, even with a lifetime of its own: the stale entry answers.
                    Ok(resp)
                        if resp.status().is_server_error()
                            && stale_until.is_some_and(|t| responder.cache.now_ms() < t) =>
                    {
                        let resp = resp.map(ResponseBody::inner);
                        (Ok(Lead::Pass(resp, "SERVER-ERROR")), Outcome::Nothing)
                    }
                    Ok(resp) => {
                        let (lead, outcome) =
                            fetched(&responder, resp, validate.as_deref(), &copy, &key).await;
                        (Ok(lead), outcome)
                    }
                    Err(e) => (Err(e), Outcome::Nothing),
                }
            }
        };
        let filled = self
            .cache
            .fill(&key.key, &self.settings.tags, seen, leader)
            .await;
        let led = match filled {
            // Another instance stored the URI's Vary record: fetch this variant here.
            Filled::Shared(e, f) if e.flags & FLAG_VARY_RECORD != 0 => f().await.0,
            Filled::Shared(e, f) if range.is_some() => {
                match range
                    .as_ref()
                    .and_then(|r| self.respond_range(&e, r.as_bytes(), false))
                {
                    Some(resp) => return Ok(resp),
                    None => f().await.0,
                }
            }
            // Shared with a request with `Authorization` only when the response allows it.
            Filled::Shared(e, f) if authorization && e.flags & FLAG_AUTHORIZED == 0 => f().await.0,
            Filled::Shared(e, _) => {
                return Ok(self.respond(&e, &conditionals, false, Served::Coalesced));
            }
            Filled::Led(r) => r,
            Filled::Own(f) => f().await.0,
        };
        let stale_ok = |e: &Entry| self.cache.now_ms() < e.error_until.max(e.stale_until);
        match led {
            Ok(Lead::Entry(e, cookies, revalidated)) => {
                let served = if revalidated {
                    Served::Revalidated
                } else {
                    Served::Stored
                };
                let mut resp = self.respond(&e, &conditionals, false, served);
                // The `Set-Cookie` of a stored response goes to this request only.
                for cookie in cookies {
                    resp.headers_mut().append(header::SET_COOKIE, cookie);
                }
                Ok(resp)
            }
            Ok(Lead::Pass(resp, reason)) => match fallback {
                Some(stale) if resp.status().is_server_error() && stale_ok(&stale) => {
                    self.cache.record("stale", self.route());
                    let status = Served::StaleError(resp.status().as_u16());
                    Ok(self.respond(&stale, &conditionals, false, status))
                }
                _ => {
                    metrics::counter!(
                        "redtower_cache_not_stored_total",
                        "cache" => self.cache.name(),
                        "route" => self.route(),
                        "reason" => reason
                    )
                    .increment(1);
                    tracing::debug!(target: "redtower::cache", route = self.route(), outcome = "miss", reason, "response not stored");
                    Ok(self.decorate(resp, Served::Miss(reason), None))
                }
            },
            Err(err) => match fallback {
                Some(stale) if stale_ok(&stale) => {
                    self.cache.record("stale", self.route());
                    Ok(self.respond(&stale, &conditionals, false, Served::StaleError(500)))
                }
                _ => Err(err),
            },
        }
    }

    /// Non-GET methods pass through; a non-error response to an unsafe one invalidates its
    /// URI and its `Location` and `Content-Location` on the same host (RFC 9111 4.4).
    pub(super) async fn other_method<S, ReqBody, ResBody>(
        &self,
        inner: S,
        req: Request<ReqBody>,
    ) -> Result<Response<ResponseBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes>,
    {
        let unsafe_method = !matches!(
            req.method().as_str(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PROPFIND" | "SEARCH" | "REPORT"
        );
        let target = (unsafe_method && self.settings.invalidate_unsafe).then(|| {
            let (mut parts, ()) = Request::new(()).into_parts();
            parts.uri = req.uri().clone();
            parts.headers = req.headers().clone();
            parts
        });
        let mut resp = call(inner, req).await?;
        self.take_tags(resp.headers_mut());
        if let Some(mut parts) = target {
            let s = resp.status();
            if !(s.is_client_error() || s.is_server_error()) {
                let mut groups = vec![short(&primary(&parts, &self.settings.query))];
                for name in [header::LOCATION, header::CONTENT_LOCATION] {
                    let Some(uri) = same_host(&parts, resp.headers().get(name)) else {
                        continue;
                    };
                    parts.uri = uri;
                    groups.push(short(&primary(&parts, &self.settings.query)));
                }
                for group in groups {
                    if let Err(error) = self.cache.invalidate_group(&group).await {
                        tracing::debug!(target: "redtower::cache", route = self.route(), %error, "invalidation after an unsafe request failed");
                    }
                }
            }
        }
        Ok(resp.map(ResponseBody::inner))
    }

    /// Starts one background refresh of a stale entry.
    pub(super) fn refresh<S, ReqBody, ResBody>(
        &self,
        inner: S,
        mut parts: Parts,
        key: RequestKey,
        seen: u64,
        stale: Option<Arc<Entry>>,
    ) where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        // A stale HEAD refreshes the GET entry.
        parts.method = Method::GET;
        parts.headers.remove(header::IF_NONE_MATCH);
        parts.headers.remove(header::IF_MODIFIED_SINCE);
        let validate = stale.filter(|e| super::has_validators(e));
        if let Some(e) = &validate {
            add_validators(&mut parts.headers, e);
        }
        let copy = head_of(&parts);
        let responder = self.clone();
        self.cache.spawn_refresh(
            key.key.clone(),
            seen,
            self.settings.tags.clone(),
            move || async move {
                match call(inner, Request::from_parts(parts, ReqBody::default())).await {
                    Ok(resp) => {
                        fetched(&responder, resp, validate.as_deref(), &copy, &key)
                            .await
                            .1
                    }
                    Err(_) => Outcome::Nothing,
                }
            },
        );
    }
}

/// The URI of a `Location` / `Content-Location` value when it is on the request's host
/// (relative, or absolute with the same authority).
fn same_host(req: &Parts, value: Option<&HeaderValue>) -> Option<Uri> {
    let uri: Uri = value?.to_str().ok()?.trim().parse().ok()?;
    match uri.authority() {
        None => uri.path_and_query().is_some().then_some(uri),
        Some(authority) => {
            let host = req
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri.authority().map(http::uri::Authority::as_str))?;
            authority
                .as_str()
                .eq_ignore_ascii_case(host)
                .then(|| uri.path_and_query().cloned())
                .flatten()
                .and_then(|pq| Uri::try_from(pq.as_str()).ok())
        }
    }
}
