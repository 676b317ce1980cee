//! [`ResponseCache`]: the service, and the lookup of one request (bypass, key, read, hit).
//! Misses are in `miss`, the storing decision in `admit`, cached responses in `response`.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Method, Request, Response, header, request::Parts};
use http_body::Body;
use tower_service::Service;

use super::{
    Credentials,
    body::ResponseBody,
    future::ResponseFuture,
    key::{request_host, request_key, session_cookie},
    layer::Config,
    policy::Directives,
    response::{Conditionals, Served, secs},
};
use crate::{
    Cache,
    cache::{Freshness, freshness},
};

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
        ResponseFuture::new(Box::pin(run.handle(inner, req)))
    }
}

/// One request's view of the layer: the cache and the route's configuration.
#[derive(Clone)]
pub(super) struct Run {
    pub(super) cache: Cache,
    pub(super) config: Arc<Config>,
}

/// Calls a service once it is ready.
pub(super) async fn call<S, ReqBody>(
    mut svc: S,
    req: Request<ReqBody>,
) -> Result<S::Response, S::Error>
where
    S: Service<Request<ReqBody>>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

impl Run {
    pub(super) fn route(&self) -> &'static str {
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
            self.cache.read(&key.key, &self.config.tags).await
        };
        let conditionals = Conditionals::take(&mut parts.headers);
        let now = self.cache.now_ms();
        let mut fallback = None;
        // Only a fill newer than this counts as shareable: for a forced refetch, one that lands
        // after the request arrived.
        let mut seen = if force { now } else { 0 };
        if let Some(e) = found {
            seen = e.stored_at;
            let too_old = req_cc
                .max_age
                .is_some_and(|m| secs(now.saturating_sub(e.stored_at)) > m);
            match freshness(&e, now) {
                Freshness::Fresh if !too_old => {
                    self.cache.record("hit", self.route());
                    // An entry read from the store is ours alone: move its parts out.
                    return Ok(match Arc::try_unwrap(e) {
                        Ok(e) => self.respond_owned(e, &conditionals, head, Served::Hit),
                        Err(e) => self.respond(&e, &conditionals, head, Served::Hit),
                    });
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

    fn bypass_reason(&self, parts: &Parts, req_cc: &Directives) -> Option<&'static str> {
        if req_cc.no_store {
            return Some("REQUEST-NO-STORE");
        }
        if parts.headers.contains_key(header::RANGE) {
            return Some("RANGE");
        }
        // A `Host` that is not text is never cached (nor keyed as "no host").
        if parts
            .headers
            .get(header::HOST)
            .is_some_and(|h| h.to_str().is_err())
            || !self
                .config
                .hosts
                .admits(&request_host(parts), self.config.route)
        {
            return Some("HOST");
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
}
