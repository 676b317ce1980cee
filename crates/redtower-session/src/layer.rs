//! [`SessionLayer`]: `tower-sessions`' `SessionManagerLayer` with signed cookies, secure
//! defaults, and revoked/outage outcomes turned into 401/503 instead of a bare 500.

use std::{
    borrow::Cow,
    cell::Cell,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response, StatusCode, header};
use tower_layer::Layer;
use tower_service::Service;
use tower_sessions::{
    SessionManagerLayer, SessionStore,
    cookie::{Cookie, Key, SameSite},
    service::SignedCookie,
    session::Expiry,
};

use crate::outcome;

/// A session layer: `tower-sessions`' [`SessionManagerLayer`] with signed cookies and secure
/// defaults, wrapped so that store outcomes become proper responses.
///
/// Defaults: cookie `id`, `HttpOnly`, `Secure`, `SameSite=Lax`, `Path=/`, no `Max-Age`
/// (the cookie ends with the browser session; the server enforces idle and absolute
/// timeouts), signed with `key` (HMAC-SHA256) so a forged or tampered id is dropped without
/// touching the store.
///
/// Outcomes (the handler's response is kept otherwise):
///
/// * a write that finds its session deleted, expired or revoked (a concurrent logout or
///   "log out everywhere") → [`on_revoked`](Self::on_revoked) status (401 by default) and the
///   cookie is cleared; the session is never recreated;
/// * Redis down or slow while the request needed the session (a 5xx response after a failed
///   store call) → `503 Service Unavailable` with `Retry-After: 1`; the cookie is kept, so the
///   user is not logged out by an outage;
/// * a cookie whose session is missing, expired or revoked reads as an empty session
///   ([`AuthSession`](crate::AuthSession) answers 401) and `tower-sessions` clears the cookie.
///
/// For local development over plain HTTP, call [`with_secure(false)`](Self::with_secure)
/// (browsers drop `Secure` cookies on `http://` except for `localhost`).
///
/// See the [crate docs](crate) for a complete example.
#[derive(Debug, Clone)]
#[must_use]
pub struct SessionLayer<Store: SessionStore> {
    manager: SessionManagerLayer<Store, SignedCookie>,
    cookie: Arc<CookieSettings>,
}

#[derive(Debug, Clone)]
struct CookieSettings {
    name: Cow<'static, str>,
    path: Cow<'static, str>,
    domain: Option<Cow<'static, str>>,
    secure: bool,
    same_site: SameSite,
    on_revoked: StatusCode,
}

impl<Store: SessionStore> SessionLayer<Store> {
    /// A layer over `store` signing cookies with `key` (use the same key on every instance,
    /// e.g. `Key::from(&secret_64_bytes)`, or `Key::generate()` for tests).
    pub fn new(store: Store, key: Key) -> Self {
        let manager = SessionManagerLayer::new(store)
            .with_same_site(SameSite::Lax)
            .with_secure(true)
            .with_http_only(true)
            .with_expiry(Expiry::OnSessionEnd)
            .with_signed(key);
        Self {
            manager,
            cookie: Arc::new(CookieSettings {
                name: Cow::Borrowed("id"),
                path: Cow::Borrowed("/"),
                domain: None,
                secure: true,
                same_site: SameSite::Lax,
                on_revoked: StatusCode::UNAUTHORIZED,
            }),
        }
    }

    fn settings(&mut self) -> &mut CookieSettings {
        Arc::make_mut(&mut self.cookie)
    }

    /// The `Secure` cookie attribute. Defaults to `true`; set `false` only for local
    /// development over plain HTTP.
    pub fn with_secure(mut self, secure: bool) -> Self {
        self.manager = self.manager.with_secure(secure);
        self.settings().secure = secure;
        self
    }

    /// The cookie name. Defaults to `id`.
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        let name = name.into();
        self.manager = self.manager.with_name(name.clone());
        self.settings().name = name;
        self
    }

    /// The `SameSite` attribute. Defaults to `Lax`.
    pub fn with_same_site(mut self, same_site: SameSite) -> Self {
        self.manager = self.manager.with_same_site(same_site);
        self.settings().same_site = same_site;
        self
    }

    /// The cookie path. Defaults to `/`.
    pub fn with_path(mut self, path: impl Into<Cow<'static, str>>) -> Self {
        let path = path.into();
        self.manager = self.manager.with_path(path.clone());
        self.settings().path = path;
        self
    }

    /// The cookie domain. Defaults to none (host-only).
    pub fn with_domain(mut self, domain: impl Into<Cow<'static, str>>) -> Self {
        let domain = domain.into();
        self.manager = self.manager.with_domain(domain.clone());
        self.settings().domain = Some(domain);
        self
    }

    /// The record expiry `tower-sessions` computes, and the cookie's `Max-Age`. Defaults to
    /// [`Expiry::OnSessionEnd`]; prefer the store's idle and absolute timeouts.
    pub fn with_expiry(mut self, expiry: Expiry) -> Self {
        self.manager = self.manager.with_expiry(expiry);
        self
    }

    /// The status for a request whose session was revoked or deleted while it ran. Defaults
    /// to `401 Unauthorized`.
    pub fn on_revoked(mut self, status: StatusCode) -> Self {
        self.settings().on_revoked = status;
        self
    }
}

impl<S, Store: SessionStore> Layer<S> for SessionLayer<Store> {
    type Service = SessionGuard<<SessionManagerLayer<Store, SignedCookie> as Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionGuard {
            inner: self.manager.layer(inner),
            cookie: self.cookie.clone(),
        }
    }
}

/// The service built by [`SessionLayer`].
#[derive(Debug, Clone)]
pub struct SessionGuard<S> {
    inner: S,
    cookie: Arc<CookieSettings>,
}

impl<S> SessionGuard<S> {
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

impl CookieSettings {
    fn removal(&self) -> Option<HeaderValue> {
        let mut c = Cookie::build((self.name.clone(), ""))
            .path(self.path.clone())
            .http_only(true)
            .secure(self.secure)
            .same_site(self.same_site)
            .max_age(time::Duration::ZERO)
            .expires(time::OffsetDateTime::UNIX_EPOCH);
        if let Some(d) = &self.domain {
            c = c.domain(d.clone());
        }
        HeaderValue::from_str(&c.build().to_string()).ok()
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
        let fut = self.inner.call(req);
        let cookie = self.cookie.clone();
        Box::pin(outcome::FLAGS.scope(Cell::new(0), async move {
            let res = fut.await?;
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
