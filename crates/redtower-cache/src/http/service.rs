//! [`ResponseCache`]: the service, and the decisions of one request.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header, request::Parts};
use http_body::Body;
use tower_service::Service;

use super::{
    Credentials,
    body::{Collected, ResponseBody, collect_capped},
    key::{RequestKey, primary, request_key, session_cookie},
    layer::Config,
    policy::{
        Directives, cacheable_status, explicit_lifetime, negative_status, none_match,
        not_modified_since, origin_age, vary,
    },
};
use crate::{
    Cache,
    cache::{Filled, Freshness, Outcome, freshness},
    envelope::{Entry, FLAG_ETAG_GENERATED, FLAG_NEGATIVE, FLAG_NO_STALE},
    key::short,
};

static X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");
static CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");

/// The service built by [`ResponseCacheLayer`](crate::ResponseCacheLayer). See the
/// [crate docs](crate).
#[derive(Clone)]
pub struct ResponseCache<S> {
    pub(crate) inner: S,
    pub(crate) cache: Cache,
    pub(crate) config: Arc<Config>,
}

impl<S> fmt::Debug for ResponseCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("cache", &self.cache)
            .field("route", &self.config.route)
            .finish()
    }
}

impl<S> ResponseCache<S> {
    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

type BoxFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

/// The future of [`ResponseCache`]. Opaque: it boxes today and may not tomorrow.
pub struct ResponseFuture<B: Body, E> {
    inner: BoxFuture<B, E>,
}

impl<B: Body, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B: Body, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ResponseCache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let run = Run {
            cache: self.cache.clone(),
            config: self.config.clone(),
        };
        ResponseFuture {
            inner: Box::pin(run.handle(inner, req)),
        }
    }
}

/// How the response was produced, for `X-Cache` and `Cache-Status`.
#[derive(Debug, Clone, Copy)]
enum Served {
    Hit,
    Coalesced,
    Stale,
    StaleError(u16),
    Stored,
    Miss(&'static str),
    Bypass(&'static str),
}

/// What the leader of a fill got from the handler.
enum Lead<B: Body> {
    /// A storable response, already read.
    Entry(Entry),
    /// Not storable: passed through (reason).
    Pass(Response<ResponseBody<B>>, &'static str),
}

#[derive(Clone)]
struct Run {
    cache: Cache,
    config: Arc<Config>,
}

/// The conditional headers of the client's request.
#[derive(Default)]
struct Conditionals {
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
}

impl Conditionals {
    fn take(headers: &mut HeaderMap) -> Self {
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

async fn call<S, ReqBody>(mut svc: S, req: Request<ReqBody>) -> Result<S::Response, S::Error>
where
    S: Service<Request<ReqBody>>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
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

fn secs(ms: u64) -> u64 {
    ms / 1000
}

impl Run {
    fn route(&self) -> &'static str {
        self.config.route
    }

    async fn handle<S, ReqBody, ResBody>(
        self,
        inner: S,
        req: Request<ReqBody>,
    ) -> Result<Response<ResponseBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            return self.other_method(inner, req).await;
        }
        let (mut parts, body) = req.into_parts();
        let req_cc = Directives::parse(&parts.headers);
        if let Some(reason) = self.bypass_reason(&parts, &req_cc) {
            self.cache.record_reason("bypass", self.route(), reason);
            tracing::debug!(target: "redtower::cache", route = self.route(), outcome = "bypass", reason, "cache bypass");
            let resp = call(inner, Request::from_parts(parts, body)).await?;
            return Ok(self.decorate(resp.map(ResponseBody::inner), Served::Bypass(reason), None));
        }
        if self.config.query.filters() {
            if let Some(uri) = self.config.query.rewrite(&parts.uri) {
                parts.uri = uri;
            }
        }
        let per_user = (self.config.credentials == Credentials::PerUser)
            .then_some(self.config.session_cookies.as_slice());
        let key = request_key(&parts, &self.config.query, self.config.names(), per_user);
        let head = method == Method::HEAD;
        let force = req_cc.no_cache
            || req_cc.max_age == Some(0)
            || parts
                .headers
                .get(header::PRAGMA)
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"no-cache"));
        let found = if force {
            None
        } else {
            self.cache
                .read(&key.entry, &key.digest, &self.config.tags)
                .await
        };
        let conditionals = Conditionals::take(&mut parts.headers);
        let now = self.cache.now_ms();
        let mut fallback = None;
        let mut seen = 0;
        if let Some(e) = found {
            seen = e.stored_at;
            let too_old = req_cc
                .max_age
                .is_some_and(|m| secs(now.saturating_sub(e.stored_at)) > m);
            match freshness(&e, now) {
                Freshness::Fresh if !too_old => {
                    self.cache.record("hit", self.route());
                    return Ok(self.respond(&e, &conditionals, head, Served::Hit));
                }
                Freshness::Stale if !too_old => {
                    self.cache.record("stale", self.route());
                    self.refresh(inner, parts, key, seen);
                    return Ok(self.respond(&e, &conditionals, head, Served::Stale));
                }
                Freshness::Stale | Freshness::ErrorOnly => fallback = Some(e),
                _ => {}
            }
        }
        self.cache.record("miss", self.route());
        // The miss path is boxed so the hit path's future stays small.
        Box::pin(self.miss(inner, parts, body, key, conditionals, fallback, seen, head)).await
    }

    /// A miss: fill through single-flight, store when allowed, or serve stale on errors.
    #[allow(clippy::too_many_arguments)]
    async fn miss<S, ReqBody, ResBody>(
        self,
        inner: S,
        parts: Parts,
        body: ReqBody,
        key: RequestKey,
        conditionals: Conditionals,
        fallback: Option<Arc<Entry>>,
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
            let resp = call(inner, Request::from_parts(parts, body)).await?;
            return Ok(self.decorate(resp.map(ResponseBody::inner), Served::Miss("HEAD"), None));
        }
        let leader = {
            let run = self.clone();
            let key = key.clone();
            let req = Request::from_parts(parts, body);
            move || async move {
                match call(inner, req).await {
                    Ok(resp) => {
                        let (lead, outcome) = run.analyze(resp, &key).await;
                        (Ok(lead), outcome)
                    }
                    Err(e) => (Err(e), Outcome::Nothing),
                }
            }
        };
        let filled = self
            .cache
            .fill(&key.entry, &key.digest, &self.config.tags, seen, leader)
            .await;
        let led = match filled {
            Filled::Shared(e, _) => {
                return Ok(self.respond(&e, &conditionals, false, Served::Coalesced));
            }
            Filled::Led(r) => r,
            Filled::Own(f) => f().await.0,
        };
        let stale_ok = |e: &Entry| self.cache.now_ms() < e.error_until.max(e.stale_until);
        match led {
            Ok(Lead::Entry(e)) => Ok(self.respond(&e, &conditionals, false, Served::Stored)),
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

    /// Non-GET methods pass through; successful unsafe ones invalidate their URI.
    async fn other_method<S, ReqBody, ResBody>(
        &self,
        inner: S,
        req: Request<ReqBody>,
    ) -> Result<Response<ResponseBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes>,
    {
        let unsafe_method = matches!(
            *req.method(),
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        let group = (unsafe_method && self.config.invalidate_unsafe).then(|| {
            let (parts, _) = Request::new(()).into_parts();
            let mut parts: Parts = parts;
            parts.uri = req.uri().clone();
            parts.headers = req.headers().clone();
            short(&primary(&parts, &self.config.query))
        });
        let resp = call(inner, req).await?;
        if let Some(group) = group {
            let s = resp.status();
            if s.is_success() || s.is_redirection() {
                if let Err(error) = self.cache.invalidate_group(&group).await {
                    tracing::debug!(target: "redtower::cache", route = self.route(), %error, "invalidation after an unsafe request failed");
                }
            }
        }
        Ok(resp.map(ResponseBody::inner))
    }

    fn bypass_reason(&self, parts: &Parts, req_cc: &Directives) -> Option<&'static str> {
        if req_cc.no_store {
            return Some("REQUEST-NO-STORE");
        }
        if parts.headers.contains_key(header::RANGE) {
            return Some("RANGE");
        }
        if self.config.credentials == Credentials::Bypass {
            if parts.headers.contains_key(header::AUTHORIZATION) {
                return Some("AUTHORIZATION");
            }
            if session_cookie(&parts.headers, &self.config.session_cookies).is_some() {
                return Some("SESSION-COOKIE");
            }
        }
        None
    }

    /// Starts one background refresh of a stale entry.
    fn refresh<S, ReqBody, ResBody>(&self, inner: S, mut parts: Parts, key: RequestKey, seen: u64)
    where
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
        let run = self.clone();
        let entry = key.entry.clone();
        self.cache.spawn_refresh(
            entry,
            key.digest,
            seen,
            self.config.tags.clone(),
            move || async move {
                match call(inner, Request::from_parts(parts, ReqBody::default())).await {
                    Ok(resp) => run.analyze(resp, &key).await.1,
                    Err(_) => Outcome::Nothing,
                }
            },
        );
    }

    /// Decides whether a handler response is stored (RFC 9111 section 3) and reads its body.
    async fn analyze<B>(&self, resp: Response<B>, key: &RequestKey) -> (Lead<B>, Outcome)
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
        if !vary.iter().all(|n| key.names.contains(n)) {
            // The key did not include these headers: learn them; the next request stores.
            cfg.learn(&vary);
            return pass(resp, "VARY-LEARNED");
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
            .saturating_sub(origin_age(headers));
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
        let swr = cc.swr.map_or(cfg.swr, Duration::from_secs);
        let sie = cc.sie.map_or(cfg.sie, Duration::from_secs);
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
            key_digest: key.digest,
            tags: Vec::new(),
            headers,
            body,
        };
        let keep = lifetime + swr.max(sie);
        (Lead::Entry(entry.clone()), Outcome::Store(entry, keep))
    }

    /// A response from a cache entry (or 304 when the client's validators match).
    fn respond<B: Body>(
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
    fn decorate<B>(&self, mut resp: Response<B>, served: Served, e: Option<&Entry>) -> Response<B> {
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
