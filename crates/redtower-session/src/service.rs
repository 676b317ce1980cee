//! [`SessionGuard`]: the service of [`SessionLayer`](crate::SessionLayer), turning a failed
//! store call into 503 (outage) or 401 plus a cleared cookie (session revoked mid-request).

use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response, StatusCode, header};
use tower_service::Service;
use tracing::Instrument;

use crate::{layer::CookieSettings, outcome};

/// The service built by [`SessionLayer`](crate::SessionLayer).
#[derive(Debug, Clone)]
pub struct SessionGuard<S> {
    inner: S,
    cookie: Arc<CookieSettings>,
}

impl<S> SessionGuard<S> {
    pub(crate) fn new(inner: S, cookie: Arc<CookieSettings>) -> Self {
        Self { inner, cookie }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the guard, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for SessionGuard<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let span = tracing::debug_span!(
            target: "redtower::session",
            "redtower.session",
            outcome = tracing::field::Empty,
        );
        let fut = span
            .in_scope(|| self.inner.call(req))
            .instrument(span.clone());
        let cookie = self.cookie.clone();
        Box::pin(outcome::FLAGS.scope(Cell::new(0), async move {
            let res = fut.await;
            if !span.is_disabled() {
                span.record("outcome", outcome::name(outcome::current()));
            }
            let res = res?;
            if !res.status().is_server_error() {
                return Ok(res);
            }
            let flags = outcome::current();
            if flags & outcome::OUTAGE != 0 {
                tracing::warn!(target: "redtower::session", outcome = "unavailable", "session store unavailable: 503");
                let mut res = Response::new(ResBody::default());
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return Ok(res);
            }
            if flags & outcome::GONE != 0 {
                tracing::debug!(target: "redtower::session", outcome = "revoked", "session gone during the request");
                let mut res = Response::new(ResBody::default());
                *res.status_mut() = cookie.on_revoked;
                if let Some(v) = cookie.removal() {
                    res.headers_mut().append(header::SET_COOKIE, v);
                }
                return Ok(res);
            }
            Ok(res)
        }))
    }
}
