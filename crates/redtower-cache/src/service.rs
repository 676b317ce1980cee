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
        ResponseFuture::new(Box::pin(responder.handle(inner, req)))
    }
}
