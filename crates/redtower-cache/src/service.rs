//! [`ResponseCache`]: the tower service of the response cache. Each request is answered by
//! the route's [`Responder`](crate::http::Responder).

use std::{
    fmt,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use crate::{ResponseBody, ResponseFuture, http::Responder};

/// The service built by [`ResponseCacheLayer`](crate::ResponseCacheLayer). See the
/// [crate docs](crate).
#[derive(Clone)]
pub struct ResponseCache<S> {
    inner: S,
    responder: Responder,
}

impl<S> fmt::Debug for ResponseCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("responder", &self.responder)
            .finish()
    }
}

impl<S> ResponseCache<S> {
    pub(crate) fn new(inner: S, responder: Responder) -> Self {
        Self { inner, responder }
    }

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
        let responder = self.responder.clone();
        let span = tracing::debug_span!(
            target: "redtower::cache",
            "redtower.cache",
            outcome = tracing::field::Empty,
        );
        if span.is_disabled() {
            return ResponseFuture::new(Box::pin(responder.handle(inner, req)));
        }
        let handled = responder.handle(inner, req).instrument(span.clone());
        ResponseFuture::new(Box::pin(async move {
            let res = handled.await;
            if let Ok(res) = &res {
                span.record("outcome", outcome(res.headers()));
            }
            res
        }))
    }
}

/// The span's `outcome`, from the response's `X-Cache` (see the crate docs, "Tracing").
fn outcome(headers: &http::HeaderMap) -> &'static str {
    match headers.get("x-cache").map(http::HeaderValue::as_bytes) {
        Some(b"HIT") => "hit",
        Some(b"MISS") => "miss",
        Some(b"STALE") => "stale",
        Some(b"BYPASS") => "bypass",
        Some(b"REVALIDATED") => "revalidated",
        _ => "none",
    }
}
