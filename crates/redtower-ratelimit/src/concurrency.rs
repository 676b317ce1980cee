//! [`ConcurrencyLimitLayer`]: at most N requests in flight per subject, across instances.

use std::{
    fmt,
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    FailurePolicy, KeyExtractor, MissingKey, PeerIp, RateLimitStore, ResponseBody, Subject,
    response::{set_retry_after, simple_problem},
};

const TARGET: &str = "redtower::ratelimit";

/// Limits the requests in flight per subject, across every instance sharing the store: "at
/// most 2 concurrent exports per user".
///
/// Each admitted request holds a lease (a member of a sorted set scored by its expiry, in one
/// key per subject and limit on Redis: `rt:rl:{<subject>}:<name>`) from before the inner
/// service is called until its response body has been sent to the end, or until the request
/// or its response is dropped (a client that goes away). A request over the limit is answered
/// `429` with `Retry-After: 1`. A lease also ends after its [lifetime](Self::lease_ttl) (60 s
/// by default), so an instance that crashes does not hold leases forever: a request running
/// longer than that stops counting.
///
/// ```
/// use std::{net::SocketAddr, num::NonZeroU32};
/// use axum::{Router, routing::get};
/// use redtower_ratelimit::{ConcurrencyLimitLayer, MemoryStore};
///
/// let exports = ConcurrencyLimitLayer::new(MemoryStore::new(), "exports", NonZeroU32::new(2).unwrap());
/// let app: Router = Router::new().route("/export", get(|| async { "csv" }).layer(exports));
/// # let _ = app;
/// ```
///
/// The lease name shares the key space of the policy names: use a name no [`Policy`] of
/// the same subject uses. The store's failure answers as the
/// [failure policy](Self::on_store_error) says (fail open by default; a local fallback counts
/// as fail open here).
///
/// [`Policy`]: crate::Policy
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    inner: Arc<Config>,
}

struct Config {
    store: Arc<dyn RateLimitStore>,
    name: &'static str,
    max: u32,
    ttl: Duration,
    key: Arc<dyn KeyExtractor>,
    failure: FailurePolicy,
    missing_key: MissingKey,
    timeout: Duration,
}

impl fmt::Debug for ConcurrencyLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("name", &self.inner.name)
            .field("max", &self.inner.max)
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

impl ConcurrencyLimitLayer {
    /// At most `max` requests of one subject in flight, counted under `name` (a policy name:
    /// 1 to 128 of `[A-Za-z0-9-_.@+=,/!~]`), keyed by [`PeerIp`] until [`key`](Self::key)
    /// says otherwise.
    pub fn new(store: impl RateLimitStore, name: &'static str, max: NonZeroU32) -> Self {
        Self {
            inner: Arc::new(Config {
                store: Arc::new(store),
                name,
                max: max.get(),
                ttl: Duration::from_secs(60),
                key: Arc::new(PeerIp),
                failure: FailurePolicy::FailOpen,
                missing_key: MissingKey::Reject,
                timeout: Duration::from_millis(100),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(c) => f(c),
            None => {
                let c = &*self.inner;
                let mut copy = Config {
                    store: c.store.clone(),
                    name: c.name,
                    max: c.max,
                    ttl: c.ttl,
                    key: c.key.clone(),
                    failure: c.failure,
                    missing_key: c.missing_key,
                    timeout: c.timeout,
                };
                f(&mut copy);
                self.inner = Arc::new(copy);
            }
        }
        self
    }

    /// How requests are identified. Defaults to [`PeerIp`].
    pub fn key(self, key: impl KeyExtractor) -> Self {
        let key: Arc<dyn KeyExtractor> = Arc::new(key);
        self.edit(|c| c.key = key)
    }

    /// The longest a lease counts when it is never released (a crashed instance). Defaults
    /// to 60 s.
    pub fn lease_ttl(self, ttl: Duration) -> Self {
        self.edit(|c| c.ttl = ttl.max(Duration::from_millis(1)))
    }

    /// What to do when the store fails: [`FailurePolicy::FailClosed`] answers 503; any other
    /// lets the request through uncounted. Defaults to [`FailurePolicy::FailOpen`].
    pub fn on_store_error(self, policy: FailurePolicy) -> Self {
        self.edit(|c| c.failure = policy)
    }

    /// What to do when the key extractor finds no identity. Defaults to [`MissingKey::Reject`].
    pub fn on_missing_key(self, missing: MissingKey) -> Self {
        self.edit(|c| c.missing_key = missing)
    }

    /// The longest a request waits for the store. Defaults to 100 ms.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.edit(|c| c.timeout = timeout)
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            config: self.inner.clone(),
        }
    }
}

/// The service of [`ConcurrencyLimitLayer`].
#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for ConcurrencyLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// A unique token per lease: a per-process random base plus a counter.
fn next_token() -> u64 {
    use std::hash::BuildHasher;
    static BASE: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        std::collections::hash_map::RandomState::new().hash_one(std::process::id())
    });
    static NEXT: AtomicU64 = AtomicU64::new(0);
    BASE.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A held lease: released when dropped (on a Tokio runtime; otherwise it runs out).
struct Lease {
    config: Arc<Config>,
    subject: Subject,
    token: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let config = self.config.clone();
        let subject = std::mem::replace(&mut self.subject, Subject::global());
        let token = self.token;
        rt.spawn(async move {
            let call = config.store.release(&subject, config.name, token);
            if let Ok(Err(error)) | Err(error) = tokio::time::timeout(config.timeout, call)
                .await
                .map_err(|_| crate::Error::Timeout(config.timeout))
            {
                tracing::debug!(target: TARGET, %error, "lease release failed; it runs out");
            }
        });
    }
}

pin_project! {
    /// The body of a [`ConcurrencyLimit`] response: holds the request's lease until the body
    /// has been sent to the end, or dropped.
    pub struct LeaseBody<B> {
        #[pin]
        body: ResponseBody<B>,
        lease: Option<Box<dyn Send + Sync>>,
    }
}

impl<B> fmt::Debug for LeaseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseBody")
            .field("leased", &self.lease.is_some())
            .finish()
    }
}

impl<B: Body<Data = Bytes>> Body for LeaseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        if frame.is_none() {
            // The end of the body: the request is no longer in flight.
            this.lease.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ConcurrencyLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<LeaseBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let respond = |res: Response<Bytes>| -> Result<Self::Response, S::Error> {
                Ok(res.map(|b| LeaseBody {
                    body: ResponseBody::full(b),
                    lease: None,
                }))
            };
            let (parts, body) = req.into_parts();
            let subject = match config.key.extract(&parts) {
                Ok(s) => s,
                Err(rejection) => match config.missing_key {
                    MissingKey::Allow => None,
                    MissingKey::Reject => {
                        return respond(simple_problem(rejection.status, rejection.reason));
                    }
                },
            };
            let req = Request::from_parts(parts, body);
            let Some(subject) = subject else {
                return pass(inner.call(req).await, None);
            };
            let token = next_token();
            let call = config
                .store
                .acquire(&subject, config.name, config.max, config.ttl, token);
            let result = tokio::time::timeout(config.timeout, call)
                .await
                .unwrap_or(Err(crate::Error::Timeout(config.timeout)));
            let lease = match result {
                Ok(a) if a.taken => Lease {
                    config: config.clone(),
                    subject,
                    token,
                },
                Ok(a) => {
                    metrics::counter!("redtower_ratelimit_concurrency_limited_total", "policy" => config.name).increment(1);
                    tracing::debug!(target: TARGET, held = a.held, "too many requests in flight");
                    let mut res = simple_problem(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many requests in flight",
                    );
                    set_retry_after(&mut res, Duration::from_secs(1));
                    return respond(res);
                }
                Err(error) => {
                    tracing::warn!(target: TARGET, %error, "concurrency limit store failed; applying the failure policy");
                    if let FailurePolicy::FailClosed = config.failure {
                        let mut res = simple_problem(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "rate limiting is temporarily unavailable",
                        );
                        set_retry_after(&mut res, Duration::from_secs(1));
                        return respond(res);
                    }
                    return pass(inner.call(req).await, None);
                }
            };
            // Dropping this future before the response (a client gone) drops the lease too.
            pass(inner.call(req).await, Some(Box::new(lease)))
        })
    }
}

fn pass<B, E>(
    res: Result<Response<B>, E>,
    lease: Option<Box<dyn Send + Sync>>,
) -> Result<Response<LeaseBody<B>>, E> {
    Ok(res?.map(|b| LeaseBody {
        body: ResponseBody::inner(b),
        lease,
    }))
}
