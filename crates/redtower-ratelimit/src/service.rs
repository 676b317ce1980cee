//! [`RateLimit`]: the service, and its [`ResponseFuture`].

use std::{
    fmt,
    future::Future,
    hash::BuildHasher,
    mem,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use axum::extract::MatchedPath;
use bytes::Bytes;
use http::{Request, Response, StatusCode, request::Parts};
use tower_service::Service;
use tracing::Instrument;

use crate::{
    Decision, Error, FailurePolicy, MissingKey, Policy, RateLimitLayer, RateLimitStore, Subject,
    layer::{Config, Cost, Shared},
    response::{ResponseBody, set_retry_after, simple_problem, too_many_requests, write_headers},
};

const TARGET: &str = "redtower::ratelimit";

/// The rate limiting service built by [`RateLimitLayer`]. See the [crate docs](crate).
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policies", &self.shared.config.policies)
            .finish_non_exhaustive()
    }
}

impl<S> RateLimit<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// Shortcut for [`RateLimitLayer::new`].
    pub fn layer(store: impl RateLimitStore, policy: impl Into<Policy>) -> RateLimitLayer {
        RateLimitLayer::new(store, policy)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The response future of [`RateLimit`].
pub struct ResponseFuture<B, E> {
    inner: BoxFuture<Result<Response<ResponseBody<B>>, E>>,
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Keep the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let span = tracing::debug_span!(target: TARGET, "rate_limit");
        ResponseFuture {
            inner: Box::pin(run(shared, inner, req).instrument(span)),
        }
    }
}

fn respond<B>(res: Response<Bytes>) -> Response<ResponseBody<B>> {
    res.map(ResponseBody::full)
}

fn limited<B>(config: &Config, decision: &Decision) -> Response<ResponseBody<B>> {
    let mut res = match &config.limited {
        Some(f) => f(decision),
        None => too_many_requests(decision),
    };
    if let Some(wait) = decision.retry_after() {
        set_retry_after(&mut res, wait);
    }
    write_headers(res.headers_mut(), decision, config.headers);
    respond(res)
}

fn resolve(config: &Config, parts: &Parts) -> Arc<[Policy]> {
    if !config.routes.is_empty() {
        if let Some(list) = parts
            .extensions
            .get::<MatchedPath>()
            .and_then(|m| config.routes.get(m.as_str()))
        {
            return list.clone();
        }
    }
    config.policies.clone()
}

fn count(name: &'static str, policies: &[Policy]) {
    for p in policies {
        metrics::counter!(name, "policy" => p.name()).increment(1);
    }
}

fn record(decision: &Decision) {
    for d in decision.policies() {
        let name = match (d.allowed(), d.policy().is_shadow(), decision.is_allowed()) {
            (false, true, _) => "redtower_ratelimit_shadow_limited_total",
            (false, false, _) => "redtower_ratelimit_limited_total",
            (true, _, true) => "redtower_ratelimit_allowed_total",
            (true, _, false) => continue,
        };
        metrics::counter!(name, "policy" => d.name()).increment(1);
        if !d.allowed() && d.policy().is_shadow() {
            tracing::debug!(target: TARGET, policy = d.name(), outcome = "shadow_limited", "shadow policy would have limited");
        }
    }
}

fn store_failed(shared: &Shared, error: &Error) {
    if !shared.degraded.swap(true, Ordering::AcqRel) {
        let policy = shared.config.failure;
        if error.is_outage() {
            tracing::warn!(target: TARGET, error = %error, failure_policy = ?policy, "rate limit store unavailable; applying the failure policy");
        } else {
            tracing::error!(target: TARGET, error = %error, failure_policy = ?policy, "rate limit store failed; applying the failure policy");
        }
    }
}

fn store_ok(shared: &Shared) {
    if shared.degraded.swap(false, Ordering::AcqRel) {
        tracing::info!(target: TARGET, "rate limit store recovered");
    }
}

async fn check(
    shared: &Shared,
    subject: &Subject,
    policies: &[Policy],
    cost: u32,
) -> Result<Decision, Error> {
    if !shared.breaker.allow() {
        return Err(Error::CircuitOpen);
    }
    let config = &shared.config;
    let mut call = std::pin::pin!(config.store.check(subject, policies, cost));
    // A store that answers at once (memory) needs no timer.
    let result = match futures::poll!(call.as_mut()) {
        Poll::Ready(result) => result,
        Poll::Pending => match tokio::time::timeout(config.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(config.timeout)),
        },
    };
    match &result {
        Ok(_) => shared.breaker.success(),
        Err(_) => shared.breaker.failure(),
    }
    result
}

async fn run<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let config = &shared.config;
    let (mut parts, body) = req.into_parts();
    let policies = resolve(config, &parts);
    let subject = if policies.is_empty() {
        None
    } else {
        match config.key.extract(&parts) {
            Ok(subject) => subject,
            Err(rejection) => match config.missing_key {
                MissingKey::Allow => None,
                MissingKey::Reject => {
                    tracing::debug!(target: TARGET, reason = rejection.reason, "no rate limit key");
                    return Ok(respond(simple_problem(rejection.status, rejection.reason)));
                }
            },
        }
    };
    let Some(subject) = subject else {
        let res = inner.call(Request::from_parts(parts, body)).await?;
        return Ok(res.map(ResponseBody::inner));
    };
    let cost = match &config.cost {
        Cost::Fixed(n) => *n,
        Cost::Dynamic(f) => f(&parts).max(1),
    };
    if policies.iter().any(|p| cost > p.quota().capacity()) {
        return Ok(respond(simple_problem(
            StatusCode::TOO_MANY_REQUESTS,
            "the request costs more than the rate limit can ever allow",
        )));
    }

    let cache_key =
        FIXED_HASHER.hash_one((&subject, Arc::as_ptr(&policies) as *const Policy as usize));
    if let Some(decision) = shared.denied.get(cache_key, cost) {
        count("redtower_ratelimit_local_cache_hit_total", &policies);
        tracing::debug!(target: TARGET, outcome = "limited", cached = true, "rate limited (denied cache)");
        return Ok(limited(config, &decision));
    }

    let decision = match check(&shared, &subject, &policies, cost).await {
        Ok(decision) => {
            store_ok(&shared);
            decision
        }
        Err(error) => {
            store_failed(&shared, &error);
            match config.failure {
                FailurePolicy::FailOpen => {
                    count("redtower_ratelimit_fail_open_total", &policies);
                    let res = inner.call(Request::from_parts(parts, body)).await?;
                    return Ok(res.map(ResponseBody::inner));
                }
                FailurePolicy::FailClosed => {
                    count("redtower_ratelimit_fail_closed_total", &policies);
                    let mut res = simple_problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "rate limiting is temporarily unavailable",
                    );
                    set_retry_after(&mut res, shared.breaker.cool_down());
                    return Ok(respond(res));
                }
                FailurePolicy::LocalFallback => {
                    count("redtower_ratelimit_fallback_total", &policies);
                    shared.fallback.check_now(&subject, &policies, cost)
                }
            }
        }
    };
    record(&decision);
    if !decision.is_allowed() {
        shared.denied.insert(cache_key, cost, &decision);
        tracing::debug!(
            target: TARGET,
            outcome = "limited",
            retry_after_ms = decision.retry_after().map(|d| d.as_millis() as u64),
            "rate limited"
        );
        return Ok(limited(config, &decision));
    }
    tracing::trace!(target: TARGET, outcome = "allowed", remaining = decision.remaining(), "allowed");
    parts.extensions.insert(decision.clone());
    let mut res = inner.call(Request::from_parts(parts, body)).await?;
    write_headers(res.headers_mut(), &decision, config.headers);
    Ok(res.map(ResponseBody::inner))
}

static FIXED_HASHER: std::sync::LazyLock<std::collections::hash_map::RandomState> =
    std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);
