//! [`SessionLayer`]: `tower-sessions`' `SessionManagerLayer` with signed cookies, secure
//! defaults, and revoked/outage outcomes turned into 401/503 instead of a bare 500.

use std::{borrow::Cow, fmt, sync::Arc};

use http::{HeaderValue, StatusCode};
use tower_layer::Layer;
use tower_sessions::{
    SessionManagerLayer,
    cookie::{Cookie, Key, SameSite},
    service::SignedCookie,
    session::Expiry,
};

use redtower_client::{CircuitBreaker, breaker::Breaker};

use crate::{SessionBackend, SessionGuard, store::BackendAsStore};

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
/// For local development over plain HTTP, call [`secure(false)`](Self::secure)
/// (browsers drop `Secure` cookies on `http://` except for `localhost`).
///
/// The layer is not generic over the store: it keeps an `Arc<dyn SessionBackend>`, so a store
/// chosen at run time (an `Arc<dyn SessionBackend>`, see [`SessionBackend`]) makes the same
/// layer type as a concrete one.
///
/// See the [crate docs](crate) for a complete example.
#[derive(Clone)]
#[must_use]
pub struct SessionLayer {
    store: Arc<dyn SessionBackend>,
    key: Key,
    expiry: Expiry,
    cookie: Arc<CookieSettings>,
    /// Shared by every clone and every service the layer makes.
    breaker: Arc<Breaker>,
}

impl fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("store", &self.store)
            .field("expiry", &self.expiry)
            .field("cookie", &self.cookie)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

/// The cookie attributes and the revoked status, as the guard needs them to clear a cookie.
#[derive(Debug, Clone)]
pub(crate) struct CookieSettings {
    name: Cow<'static, str>,
    path: Cow<'static, str>,
    domain: Option<Cow<'static, str>>,
    secure: bool,
    same_site: SameSite,
    pub(crate) on_revoked: StatusCode,
}

impl SessionLayer {
    /// A layer over `store` signing cookies with `key` (use the same key on every instance,
    /// e.g. `Key::from(&secret_64_bytes)`, or `Key::generate()` for tests).
    pub fn new(store: impl SessionBackend, key: Key) -> Self {
        Self {
            store: Arc::new(store),
            key,
            expiry: Expiry::OnSessionEnd,
            cookie: Arc::new(CookieSettings {
                name: Cow::Borrowed("id"),
                path: Cow::Borrowed("/"),
                domain: None,
                secure: true,
                same_site: SameSite::Lax,
                on_revoked: StatusCode::UNAUTHORIZED,
            }),
            breaker: Arc::new(Breaker::new(CircuitBreaker::default())),
        }
    }

    /// `tower-sessions`' manager with these settings, over the store behind the breaker.
    fn manager(&self) -> SessionManagerLayer<BackendAsStore, SignedCookie> {
        let c = &self.cookie;
        let manager = SessionManagerLayer::new(BackendAsStore::new(
            self.store.clone(),
            self.breaker.clone(),
        ))
        .with_name(c.name.clone())
        .with_path(c.path.clone())
        .with_same_site(c.same_site)
        .with_secure(c.secure)
        .with_http_only(true)
        .with_expiry(self.expiry)
        .with_signed(self.key.clone());
        match &c.domain {
            Some(domain) => manager.with_domain(domain.clone()),
            None => manager,
        }
    }

    fn settings(&mut self) -> &mut CookieSettings {
        Arc::make_mut(&mut self.cookie)
    }

    /// The `Secure` cookie attribute. Defaults to `true`; set `false` only for local
    /// development over plain HTTP.
    pub fn secure(mut self, secure: bool) -> Self {
        self.settings().secure = secure;
        self
    }

    /// The cookie name. Defaults to `id`.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        let name = name.into();
        self.settings().name = name;
        self
    }

    /// The `SameSite` attribute. Defaults to `Lax`.
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.settings().same_site = same_site;
        self
    }

    /// The cookie path. Defaults to `/`.
    pub fn path(mut self, path: impl Into<Cow<'static, str>>) -> Self {
        let path = path.into();
        self.settings().path = path;
        self
    }

    /// The cookie domain. Defaults to none (host-only).
    pub fn domain(mut self, domain: impl Into<Cow<'static, str>>) -> Self {
        let domain = domain.into();
        self.settings().domain = Some(domain);
        self
    }

    /// The record expiry `tower-sessions` computes, and the cookie's `Max-Age`. Defaults to
    /// [`Expiry::OnSessionEnd`]; prefer the store's idle and absolute timeouts.
    pub fn expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = expiry;
        self
    }

    /// The circuit breaker in front of the store. Defaults to [`CircuitBreaker::default`]: after
    /// 5 consecutive outage errors of a store that had connected, requests that need the
    /// session answer `503` at once for 1 s (or until the client reconnects), then one request
    /// probes the store. A store still making its first connection never opens it.
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Arc::new(Breaker::new(breaker));
        self
    }

    /// The status for a request whose session was revoked or deleted while it ran. Defaults
    /// to `401 Unauthorized`.
    pub fn on_revoked(mut self, status: StatusCode) -> Self {
        self.settings().on_revoked = status;
        self
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service =
        SessionGuard<<SessionManagerLayer<BackendAsStore, SignedCookie> as Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionGuard::new(self.manager().layer(inner), self.cookie.clone())
    }
}

impl CookieSettings {
    /// A `Set-Cookie` value that removes the session cookie.
    pub(crate) fn removal(&self) -> Option<HeaderValue> {
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
