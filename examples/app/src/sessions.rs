//! Sessions with revocation: `POST /login`, `GET /me`, `POST /logout`, `GET /me/sessions`,
//! `DELETE /me/sessions/{handle}`, `POST /logout-everywhere`, `POST /logout-others`.
//!
//! Environment: `SESSION_SECRET` (the same on every instance), `COOKIE_SECURE`,
//! `LOGIN_RATE_LIMIT` (`POST /login` per client IP), `LOGIN_USER_RATE_LIMIT` (per user name).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    Extension, Json, Router,
    extract::{ConnectInfo, Path, State},
    http::{HeaderMap, StatusCode},
    routing::{delete, get, post},
};
use redtower_client::Redis;
use redtower_ratelimit::Policy;
use redtower_session::{
    AuthSession, SessionBackend, SessionEvent, SessionLayer, SessionMeta, UserSessions, WithEvents,
    bind_user,
    tower_sessions::{Session, cookie::Key},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    BuildError, Config,
    error::{ApiError, AppJson},
    ratelimit::{self, RateLimits},
};

/// The session store and layer of the app, in process or in Redis.
#[derive(Clone)]
pub(crate) struct Sessions {
    accounts: Arc<Accounts>,
    layer: SessionLayer,
}

/// The state of the session routes.
struct Accounts {
    /// The session store chosen at run time: the layer runs on it, handlers call
    /// [`UserSessions`] on it.
    users: Arc<dyn SessionBackend>,
    limits: RateLimits,
    /// `POST /login` per user name (checked in the handler, which reads the name).
    login_user_limit: Policy,
}

impl Sessions {
    /// The sessions: in process without Redis, else in Redis (shared by every instance).
    pub(crate) fn new(
        config: &Config,
        redis: Option<&Redis>,
        limits: &RateLimits,
    ) -> Result<Self, BuildError> {
        let secret: Vec<u8> = match &config.session_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                tracing::warn!(
                    "SESSION_SECRET is not set: using a random one, so sessions do not survive a \
                     restart and are not shared between instances"
                );
                (0..64).map(|_| rand::random::<u8>()).collect()
            }
        };
        let SessionKeys {
            cookie: key,
            store: store_secret,
        } = SessionKeys::derive(&secret);
        let store: Arc<dyn SessionBackend> = match redis {
            None => Arc::new(redtower_session::MemoryStore::new()),
            Some(redis) => Arc::new(
                redtower_session::RedisStore::new(redis.clone(), store_secret)?.near_cache(
                    config
                        .near_cache
                        .then(|| redtower_client::NearCacheConfig::new("sessions")),
                )?,
            ),
        };
        // The audit log: logins, revocations and expiries, as `tracing` events.
        let users: Arc<dyn SessionBackend> = Arc::new(WithEvents::new(store, audit));
        // One layer type whichever store was chosen.
        let layer = SessionLayer::new(users.clone(), key).secure(config.cookie_secure);
        Ok(Self {
            accounts: Arc::new(Accounts {
                users,
                limits: limits.clone(),
                login_user_limit: ratelimit::policy("login-user", config.login_user_rate)?,
            }),
            layer,
        })
    }

    /// Every session of every user: to list, revoke and watch them.
    pub(crate) fn users(&self) -> &Arc<dyn SessionBackend> {
        &self.accounts.users
    }

    /// `router` under the session layer: its handlers can read and write the session.
    pub(crate) fn layer<S>(&self, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        router.layer(self.layer.clone())
    }

    /// The session routes, to be served under [`layer`](Self::layer). `POST /login` is
    /// limited per client IP at `LOGIN_RATE_LIMIT`.
    pub(crate) fn routes<S>(&self, config: &Config) -> Result<Router<S>, BuildError>
    where
        S: Clone + Send + Sync + 'static,
    {
        let login_limit = self
            .accounts
            .limits
            .per_client("login", config.login_rate)?;
        // Failed attempts only (a bad user name, over the per-user limit): successful logins
        // are given back.
        let failed_logins = self
            .accounts
            .limits
            .failures_per_client("login-failed", config.login_failure_rate)?;
        Ok(Router::new()
            .route(
                "/login",
                post(login)
                    .layer::<_, std::convert::Infallible>(failed_logins)
                    .layer(login_limit),
            )
            .route("/me", get(me))
            .route("/logout", post(logout))
            .route("/me/sessions", get(my_sessions))
            .route("/me/sessions/{handle}", delete(revoke_session))
            .route("/logout-everywhere", post(logout_everywhere))
            .route("/logout-others", post(logout_others))
            .with_state(self.accounts.clone()))
    }
}

/// The keys the sessions use, each derived from `SESSION_SECRET` with HKDF-SHA256 (RFC 5869)
/// under its own `info` string, so that neither key tells anything about the other or about
/// the secret, and a key added later gets a new `info` rather than another slice of the
/// secret.
///
/// The secret is the input key material as it is (at least 64 characters, checked by
/// [`Config`]); no salt (HKDF's default, a block of zeros): the secret is the only input, and
/// every instance must derive the same keys from it.
struct SessionKeys {
    /// Signs the session cookie (64 bytes, as `cookie::Key` wants).
    cookie: Key,
    /// Keys the Redis store's HMAC of session ids (into keys and handles).
    store: [u8; 32],
}

impl SessionKeys {
    /// `info` of the cookie-signing key.
    const COOKIE_INFO: &'static [u8] = b"redtower-example cookie-signing v1";
    /// `info` of the session store's HMAC secret.
    const STORE_INFO: &'static [u8] = b"redtower-example session-id-hmac v1";

    fn derive(secret: &[u8]) -> Self {
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(None, secret);
        let mut cookie = [0u8; 64];
        let mut store = [0u8; 32];
        // HKDF-SHA256 gives up to 255 * 32 bytes: these lengths cannot be refused.
        hkdf.expand(Self::COOKIE_INFO, &mut cookie)
            .expect("64 bytes is a valid HKDF-SHA256 output length");
        hkdf.expand(Self::STORE_INFO, &mut store)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self {
            cookie: Key::from(&cookie),
            store,
        }
    }
}

/// The answer to a session store error: 503 for an outage (logged), 4xx for the client's.
pub(crate) fn session_error(error: &redtower_session::tower_sessions::session::Error) -> ApiError {
    let status = redtower_session::status_for(error);
    if status.is_server_error() {
        tracing::warn!(%error, "session store failed");
    }
    ApiError::new(status, "session store unavailable, try again")
}

#[derive(Debug, Deserialize)]
struct LoginBody {
    user: String,
}

fn valid_user(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b))
}

/// The audit log of sessions (target `audit`).
fn audit(event: &SessionEvent) {
    match event {
        SessionEvent::Login { user, handle, meta } => {
            let device = meta.device();
            tracing::info!(target: "audit", %user, %handle, device, ip = meta.ip, "login");
        }
        SessionEvent::Revoked { user, handle } => {
            tracing::info!(target: "audit", %user, %handle, "session revoked");
        }
        SessionEvent::RevokedAll { user, count, kept } => {
            tracing::info!(target: "audit", %user, count, kept, "sessions revoked");
        }
        SessionEvent::Expired { user, handle } => {
            tracing::info!(target: "audit", %user, %handle, "session expired");
        }
        other => tracing::info!(target: "audit", event = ?other, "session event"),
    }
}

async fn login(
    State(accounts): State<Arc<Accounts>>,
    session: Session,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    AppJson(body): AppJson<LoginBody>,
) -> Result<Json<Value>, ApiError> {
    if !valid_user(&body.user) {
        return Err(ApiError::bad_request(
            "user must be 1 to 64 characters of letters, digits, '_', '.', '-' or '@'",
        ));
    }
    // Per user name, from any IP (the per-IP limit is the route's layer).
    accounts
        .limits
        .check(&accounts.login_user_limit, &body.user)
        .await?;
    let ip: Option<IpAddr> = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    bind_user(
        &session,
        &body.user,
        SessionMeta::from_headers(&headers, ip),
    )
    .await
    .map_err(|e| session_error(&e))?;
    Ok(Json(json!({ "user": body.user })))
}

async fn me(auth: AuthSession) -> Result<Json<Value>, ApiError> {
    let visits: u64 = auth
        .session
        .get("visits")
        .await
        .map_err(|e| session_error(&e))?
        .unwrap_or(0)
        + 1;
    auth.session
        .insert("visits", visits)
        .await
        .map_err(|e| session_error(&e))?;
    Ok(Json(json!({ "user": auth.user, "visits": visits })))
}

async fn logout(session: Session) -> Result<StatusCode, ApiError> {
    session.flush().await.map_err(|e| session_error(&e))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn my_sessions(
    State(accounts): State<Arc<Accounts>>,
    auth: AuthSession,
) -> Result<Json<Value>, ApiError> {
    let list = accounts
        .users
        .list(&auth.user, auth.session.id())
        .await
        .map_err(|error| {
            tracing::warn!(%error, "listing sessions failed");
            ApiError::unavailable()
        })?;
    Ok(Json(
        serde_json::to_value(list).unwrap_or_else(|_| json!([])),
    ))
}

async fn revoke_session(
    State(accounts): State<Arc<Accounts>>,
    auth: AuthSession,
    Path(handle): Path<String>,
) -> Result<StatusCode, ApiError> {
    match accounts.users.revoke(&auth.user, &handle).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found("no such session")),
        Err(error) => {
            tracing::warn!(%error, "revoking a session failed");
            Err(ApiError::unavailable())
        }
    }
}

async fn logout_everywhere(
    State(accounts): State<Arc<Accounts>>,
    auth: AuthSession,
) -> Result<StatusCode, ApiError> {
    accounts
        .users
        .revoke_all(&auth.user)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "revoking all sessions failed");
            ApiError::unavailable()
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /logout-others`: ends every other session of the user, on every instance, and keeps
/// this one (after a password change).
async fn logout_others(
    State(accounts): State<Arc<Accounts>>,
    auth: AuthSession,
) -> Result<StatusCode, ApiError> {
    let id = auth.session.id().ok_or_else(ApiError::unauthorized)?;
    accounts
        .users
        .revoke_others(&auth.user, &id)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "revoking the other sessions failed");
            ApiError::unavailable()
        })?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_are_derived_apart() {
        let secret = [b'x'; 64];
        let keys = SessionKeys::derive(&secret);
        let again = SessionKeys::derive(&secret);
        // The same secret gives the same keys on every instance...
        assert_eq!(keys.cookie.master(), again.cookie.master());
        assert_eq!(keys.store, again.store);
        // ...neither is the secret or a slice of it, nor a slice of the other...
        assert_ne!(keys.cookie.master(), &secret[..]);
        assert_ne!(&keys.store[..], &secret[..32]);
        assert_ne!(&keys.store[..], &keys.cookie.master()[..32]);
        // ...and another secret gives other keys.
        let other = SessionKeys::derive(&[b'y'; 64]);
        assert_ne!(keys.cookie.master(), other.cookie.master());
        assert_ne!(keys.store, other.store);
    }

    #[test]
    fn session_keys_match_rfc_5869_hkdf_sha256() {
        // RFC 5869, test case 3 (no salt, empty info), expanded under our `info` strings by
        // the same construction: T(1) = HMAC(PRK, info || 0x01).
        use hmac::{Hmac, Mac};
        let secret = [0x0b; 22];
        let prk = {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&[0u8; 32]).unwrap();
            mac.update(&secret);
            mac.finalize().into_bytes()
        };
        let t1 = {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&prk).unwrap();
            mac.update(SessionKeys::STORE_INFO);
            mac.update(&[1]);
            mac.finalize().into_bytes()
        };
        assert_eq!(SessionKeys::derive(&secret).store[..], t1[..]);
    }
}
