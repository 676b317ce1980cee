//! [`RateLimit`]: the service, and its [`ResponseFuture`].

use std::{
    fmt,
    future::Future,
    hash::BuildHasher,
    marker::PhantomData,
    mem,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use axum::extract::MatchedPath;
use bytes::Bytes;
use http::{Request, Response, StatusCode, request::Parts};
use pin_project_lite::pin_project;
use tower_service::Service;
use tracing::Instrument;

use crate::{
    Decision, Error, FailurePolicy, Headers, MissingKey, Policy, RateLimitLayer, RateLimitStore,
    RefundWhen, Subject,
    extra::Listed,
    layer::{Cost, OutcomeCounters, PolicySet, Settings, Shared},
    response::{
        ResponseBody, set_retry_after, simple_problem, too_many_requests, write_headers_with,
    },
};

const TARGET: &str = "redtower::ratelimit";
/// The layer's span (see the crate docs, "Tracing").
const SPAN: &str = "redtower.ratelimit";

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
            .field("policies", &self.shared.settings.policies)
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

pin_project! {
    /// The response future of [`RateLimit`]: the inner service's future when the decision was
    /// made at once (memory store, denied cache, no key); while the store answers, a boxed
    /// future that waits for it and then hands over to the inner service's future.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B>,
        // The inner service's error, which `F` returns.
        error: PhantomData<fn() -> E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Ready { res: Option<Response<ResponseBody<B>>> },
        Inner {
            #[pin]
            fut: F,
            headers: Option<(Decision, Arc<PolicySet>, Headers)>,
            refund: Option<Box<Ticket>>,
            span: tracing::Span,
        },
        Waiting { fut: BoxFuture<Waited<F, B>>, span: tracing::Span },
        Refunding { fut: BoxFuture<()>, res: Option<Response<ResponseBody<B>>> },
        Done,
    }
}

/// What a request does once the store has answered: respond at once, or go on with the inner
/// service's future (then write the decision's headers into its response).
enum Waited<F, B> {
    Respond(Response<ResponseBody<B>>),
    Call {
        fut: F,
        headers: Option<(Decision, Arc<PolicySet>, Headers)>,
        refund: Option<Box<Ticket>>,
    },
}

/// An admitted request of a layer that [counts by outcome](crate::RateLimitLayer::refund_when):
/// what it gives back if its response qualifies.
pub(crate) struct Ticket {
    store: Arc<dyn RateLimitStore>,
    subject: Subject,
    decision: Decision,
    cost: u32,
    when: RefundWhen,
    timeout: std::time::Duration,
}

impl Ticket {
    /// The refund, bounded by the layer's timeout; a failure is logged, never the response's.
    async fn refund(self) {
        let call = self.store.refund(&self.subject, &self.decision, self.cost);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(())) => {
                metrics::counter!("redtower_ratelimit_refunded_total").increment(1);
            }
            Ok(Err(error)) => {
                tracing::warn!(target: TARGET, %error, "rate limit refund failed; the request still counts");
            }
            Err(_) => {
                tracing::warn!(target: TARGET, "rate limit refund timed out; the request may still count");
            }
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().kind.project() {
                KindProj::Ready { res } => match res.take() {
                    Some(res) => return Poll::Ready(Ok(res)),
                    None => panic!("ResponseFuture polled after completion"),
                },
                KindProj::Inner {
                    fut,
                    headers,
                    refund,
                    span,
                } => {
                    let res = {
                        let _entered = span.enter();
                        std::task::ready!(fut.poll(cx))
                    };
                    let headers = headers.take();
                    let refund = refund.take();
                    self.as_mut().project().kind.set(Kind::Done);
                    let mut res = res?;
                    if let Some((decision, set, which)) = headers {
                        write_headers_with(
                            res.headers_mut(),
                            &decision,
                            which,
                            set.policy_header.as_ref(),
                        );
                    }
                    let res = res.map(ResponseBody::inner);
                    match refund {
                        Some(ticket) if ticket.when.applies(res.status()) => Kind::Refunding {
                            fut: Box::pin(ticket.refund()),
                            res: Some(res),
                        },
                        _ => return Poll::Ready(Ok(res)),
                    }
                }
                KindProj::Refunding { fut, res } => {
                    std::task::ready!(fut.as_mut().poll(cx));
                    let res = res.take();
                    self.as_mut().project().kind.set(Kind::Done);
                    match res {
                        Some(res) => return Poll::Ready(Ok(res)),
                        None => panic!("ResponseFuture polled after completion"),
                    }
                }
                KindProj::Waiting { fut, span } => match std::task::ready!(fut.as_mut().poll(cx)) {
                    Waited::Respond(res) => {
                        self.as_mut().project().kind.set(Kind::Done);
                        return Poll::Ready(Ok(res));
                    }
                    Waited::Call {
                        fut,
                        headers,
                        refund,
                    } => Kind::Inner {
                        fut,
                        headers,
                        refund,
                        span: mem::replace(span, tracing::Span::none()),
                    },
                },
                KindProj::Done => panic!("ResponseFuture polled after completion"),
            };
            self.as_mut().project().kind.set(next);
        }
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
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let span = tracing::debug_span!(
            target: TARGET,
            SPAN,
            outcome = tracing::field::Empty,
        );
        let step = span.in_scope(|| prepare(&self.shared, req));
        let kind = match step {
            Step::Respond(res) => Kind::Ready {
                res: Some(respond(res)),
            },
            Step::Pass(req, decision, refund) => {
                let headers = decision.map(|(d, set)| (d, set, self.shared.settings.headers));
                let fut = span.in_scope(|| self.inner.call(req));
                Kind::Inner {
                    fut,
                    headers,
                    refund,
                    span,
                }
            }
            Step::Check(pending) => {
                // Keep the service that was polled ready; leave a fresh clone in its place.
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                let shared = self.shared.clone();
                // Only the wait is boxed: the inner service's future runs unboxed afterwards,
                // which keeps the allocation small.
                Kind::Waiting {
                    fut: Box::pin(wait(shared, inner, pending).instrument(span.clone())),
                    span,
                }
            }
        };
        ResponseFuture {
            kind,
            error: PhantomData,
        }
    }
}

fn respond<B>(res: Response<Bytes>) -> Response<ResponseBody<B>> {
    res.map(ResponseBody::full)
}

fn limited(settings: &Settings, set: &PolicySet, decision: &Decision) -> Response<Bytes> {
    let mut res = match &settings.limited {
        Some(f) => f(decision),
        None => too_many_requests(decision),
    };
    if let Some(wait) = decision.retry_after() {
        set_retry_after(&mut res, wait);
    }
    write_headers_with(
        res.headers_mut(),
        decision,
        settings.headers,
        set.policy_header.as_ref(),
    );
    res
}

fn resolve<'a>(shared: &'a Shared, parts: &Parts) -> &'a Arc<PolicySet> {
    if let Some(f) = &shared.settings.quota_for {
        if let Some(set) = f.quota_for(parts).and_then(|name| shared.tiers.get(name)) {
            return set;
        }
    }
    if !shared.routes.is_empty() {
        if let Some(set) = parts
            .extensions
            .get::<MatchedPath>()
            .and_then(|m| shared.routes.get(m.as_str()))
        {
            return set;
        }
    }
    &shared.policies
}

fn count(name: &'static str, policies: &[Policy]) {
    for p in policies {
        metrics::counter!(name, "policy" => p.name()).increment(1);
    }
}

/// Where the outcome counters say they come from (as `metrics::counter!` would in this module).
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Counts each policy's outcome, with the keys the set built once. The recorder is looked up
/// per call, as `metrics::counter!` does, so a recorder installed later (or a thread-local one)
/// still sees every count.
fn record(decision: &Decision, set: &PolicySet) {
    for (i, d) in decision.policies().iter().enumerate() {
        let built;
        let keys = match set
            .counters
            .get(i)
            .filter(|_| set.list.get(i).is_some_and(|p| p.name() == d.name()))
        {
            Some(keys) => keys,
            // Not the set's policies (never happens with the built-in stores): build them here.
            None => {
                built = OutcomeCounters::new(d.policy());
                &built
            }
        };
        let key = match (d.allowed(), d.policy().is_shadow(), decision.is_allowed()) {
            (false, true, _) => &keys.shadow_limited,
            (false, false, _) => &keys.limited,
            (true, _, true) => &keys.allowed,
            (true, _, false) => continue,
        };
        metrics::with_recorder(|r| r.register_counter(key, &METADATA)).increment(1);
        if !d.allowed() && d.policy().is_shadow() {
            tracing::debug!(target: TARGET, policy = d.name(), outcome = "shadow_limited", "shadow policy would have limited");
        }
    }
}

/// What to do with a request, decided before the store is asked or without asking it.
enum Step<B> {
    /// Answer this; the inner service is not called.
    Respond(Response<Bytes>),
    /// Call the inner service (with the decision in the request's extensions), and write the
    /// decision's headers into its response (and refund it if its response qualifies).
    Pass(
        Request<B>,
        Option<(Decision, Arc<PolicySet>)>,
        Option<Box<Ticket>>,
    ),
    /// Wait for the store.
    Check(Pending<B>),
}

/// A request waiting for the store's answer.
struct Pending<B> {
    parts: Parts,
    body: B,
    set: Arc<PolicySet>,
    subject: Subject,
    cost: u32,
}

/// Everything up to the store call, synchronously; and the store call itself when the store
/// answers without waiting (memory), so such requests need no boxed future.
fn prepare<B>(shared: &Shared, req: Request<B>) -> Step<B> {
    let settings = &shared.settings;
    let (parts, body) = req.into_parts();
    if let Some((lists, ip)) = &settings.lists {
        match ip.client_addr(&parts).map(|a| lists.classify(a)) {
            Some(Listed::Denied) => {
                metrics::counter!("redtower_ratelimit_denied_ip_total").increment(1);
                tracing::debug!(target: TARGET, outcome = "denied", "address on the deny-list");
                outcome("denied");
                return Step::Respond(simple_problem(StatusCode::FORBIDDEN, "forbidden"));
            }
            Some(Listed::Allowed) => {
                outcome("bypass");
                return Step::Pass(Request::from_parts(parts, body), None, None);
            }
            _ => {}
        }
    }
    let set = resolve(shared, &parts);
    let policies = &set.list;
    let subject = if policies.is_empty() {
        None
    } else {
        match settings.key.extract(&parts) {
            Ok(subject) => subject,
            Err(rejection) => match settings.missing_key {
                MissingKey::Allow => None,
                MissingKey::Reject => {
                    outcome("rejected");
                    tracing::debug!(target: TARGET, reason = rejection.reason, "no rate limit key");
                    return Step::Respond(simple_problem(rejection.status, rejection.reason));
                }
            },
        }
    };
    let Some(subject) = subject else {
        outcome("bypass");
        return Step::Pass(Request::from_parts(parts, body), None, None);
    };
    let cost = match &settings.cost {
        Cost::Fixed(n) => *n,
        Cost::Dynamic(f) => f(&parts).max(1),
    };
    if policies.iter().any(|p| cost > p.quota().capacity()) {
        outcome("rejected");
        return Step::Respond(simple_problem(
            StatusCode::TOO_MANY_REQUESTS,
            "the request costs more than the rate limit can ever allow",
        ));
    }
    if let Some(decision) = shared.denied.get(|| cache_key(&subject, set), cost) {
        count("redtower_ratelimit_local_cache_hit_total", policies);
        outcome("limited");
        tracing::debug!(target: TARGET, outcome = "limited", cached = true, "rate limited (denied cache)");
        return Step::Respond(limited(settings, set, &decision));
    }
    let pending = Pending {
        parts,
        body,
        set: set.clone(),
        subject,
        cost,
    };
    if !shared
        .breaker
        .allow(settings.store.connections())
        .is_allowed()
    {
        return decided(shared, pending, Err(Error::CircuitOpen));
    }
    match settings
        .store
        .try_check_now(&pending.subject, policies, cost)
    {
        Some(result) => {
            settle(shared, &result);
            decided(shared, pending, result)
        }
        None => Step::Check(pending),
    }
}

/// Records the request's outcome on the layer's span: the current one, since decisions are
/// made in it (when it is disabled, the current span is another layer's, left alone).
fn outcome(outcome: &'static str) {
    let span = tracing::Span::current();
    if span
        .metadata()
        .is_some_and(|m| m.name() == SPAN && m.target() == TARGET)
    {
        span.record("outcome", outcome);
    }
}

/// Keys the denied cache: the subject and the policy set (by address: sets live as long as the
/// layer).
pub(crate) fn cache_key(subject: &Subject, set: &PolicySet) -> u64 {
    FIXED_HASHER.hash_one((subject, Arc::as_ptr(&set.list) as *const Policy as usize))
}

/// Circuit breaker bookkeeping for a store answer, and the logs of its transitions: one WARN
/// when the store becomes unavailable, one INFO when it is back, never one per request.
///
/// Only an outage (a timeout, a lost connection) of a store that has connected before counts
/// toward the breaker: failures while the first connection is being made never open it, nor
/// does a failure that is not an outage (a script error; logged once at ERROR until the store
/// answers again).
fn settle(shared: &Shared, result: &Result<Decision, Error>) {
    let store = &shared.settings.store;
    match result {
        Ok(_) => {
            let closed = shared.breaker.success();
            // A plain load first: the common case writes nothing to this shared cache line.
            let was_degraded = shared.degraded.load(Ordering::Acquire)
                && shared.degraded.swap(false, Ordering::AcqRel);
            if closed || was_degraded {
                tracing::info!(target: TARGET, "rate limit store recovered");
            }
        }
        Err(error) if error.is_outage() && store.has_connected() => {
            if shared.breaker.failure(store.connections()) {
                let policy = shared.settings.failure;
                tracing::warn!(target: TARGET, error = %error, failure_policy = ?policy, "rate limit store unavailable; applying the failure policy");
            }
        }
        Err(error) => failed_once(shared, error),
    }
}

/// Logs a failure the breaker does not count, once until the store answers again.
fn failed_once(shared: &Shared, error: &Error) {
    if !shared.degraded.swap(true, Ordering::AcqRel) {
        let policy = shared.settings.failure;
        if error.is_outage() {
            tracing::warn!(target: TARGET, error = %error, failure_policy = ?policy, "rate limit store not reached; applying the failure policy");
        } else {
            tracing::error!(target: TARGET, error = %error, failure_policy = ?policy, "rate limit store failed; applying the failure policy");
        }
    }
}

/// Applies the store's answer (or the failure policy).
fn decided<B>(shared: &Shared, pending: Pending<B>, result: Result<Decision, Error>) -> Step<B> {
    let settings = &shared.settings;
    let Pending {
        mut parts,
        body,
        set,
        subject,
        cost,
    } = pending;
    let policies = &set.list;
    let from_store = result.is_ok();
    let decision = match result {
        Ok(decision) => decision,
        Err(_) => match settings.failure {
            FailurePolicy::FailOpen => {
                count("redtower_ratelimit_fail_open_total", policies);
                outcome("fail_open");
                return Step::Pass(Request::from_parts(parts, body), None, None);
            }
            FailurePolicy::FailClosed => {
                count("redtower_ratelimit_fail_closed_total", policies);
                outcome("fail_closed");
                let mut res = simple_problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate limiting is temporarily unavailable",
                );
                set_retry_after(&mut res, shared.breaker.cool_down());
                return Step::Respond(res);
            }
            FailurePolicy::LocalFallback => {
                count("redtower_ratelimit_fallback_total", policies);
                shared.fallback.check_now(&subject, policies, cost)
            }
        },
    };
    record(&decision, &set);
    if !decision.is_allowed() {
        shared
            .denied
            .insert(cache_key(&subject, &set), cost, &decision);
        outcome("limited");
        tracing::debug!(
            target: TARGET,
            outcome = "limited",
            retry_after_ms = decision.retry_after().map(|d| d.as_millis() as u64),
            "rate limited"
        );
        return Step::Respond(limited(settings, &set, &decision));
    }
    outcome("allowed");
    tracing::trace!(target: TARGET, outcome = "allowed", remaining = decision.remaining(), "allowed");
    parts.extensions.insert(decision.clone());
    // Counting by outcome: only what the store itself counted is given back to it.
    let refund = settings.refund.filter(|_| from_store).map(|when| {
        Box::new(Ticket {
            store: settings.store.clone(),
            subject,
            decision: decision.clone(),
            cost,
            when,
            timeout: settings.timeout,
        })
    });
    Step::Pass(
        Request::from_parts(parts, body),
        Some((decision, set)),
        refund,
    )
}

/// The store call of a request that has to wait for it, bounded by the layer's timeout, and
/// what the request does next.
async fn wait<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    pending: Pending<ReqBody>,
) -> Waited<S::Future, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let settings = &shared.settings;
    // A fresh process waits for its first connection before the layer's timeout starts: the
    // wait is bounded by the store (the client's command timeout), and a store that could not
    // connect at all is unreachable, not failing (the breaker does not count it).
    if !settings.store.has_connected() {
        if let Err(error) = settings.store.first_connection().await {
            failed_once(&shared, &error);
            return next(&shared, inner, pending, Err(error));
        }
    }
    let (subject, policies, cost) = (&pending.subject, &pending.set.list, pending.cost);
    let call = settings.store.check(subject, policies, cost);
    let result = tokio::time::timeout(settings.timeout, call)
        .await
        .unwrap_or(Err(Error::Timeout(settings.timeout)));
    settle(&shared, &result);
    next(&shared, inner, pending, result)
}

/// What a request that waited for the store does next.
fn next<S, ReqBody, ResBody>(
    shared: &Shared,
    mut inner: S,
    pending: Pending<ReqBody>,
    result: Result<Decision, Error>,
) -> Waited<S::Future, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let settings = &shared.settings;
    match decided(shared, pending, result) {
        Step::Respond(res) => Waited::Respond(respond(res)),
        Step::Pass(req, decision, refund) => Waited::Call {
            fut: inner.call(req),
            headers: decision.map(|(d, set)| (d, set, settings.headers)),
            refund,
        },
        // `decided` never asks to wait again.
        Step::Check(_) => Waited::Respond(respond(simple_problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rate limit state machine error",
        ))),
    }
}

static FIXED_HASHER: std::sync::LazyLock<std::collections::hash_map::RandomState> =
    std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);
