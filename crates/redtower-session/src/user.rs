//! Binding a session to a user at login, and the per-user index API (list, revoke, log out
//! everywhere).

use std::net::IpAddr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tower_sessions_core::{Session, session::Id};

use crate::{Result, SessionWatch};

/// The reserved session data key that holds the [`Binding`] written by [`bind_user`].
pub const USER_KEY: &str = "redtower.user";

/// Device details shown in a user's session list: user agent and IP address at login.
///
/// ```
/// use redtower_session::SessionMeta;
///
/// let meta = SessionMeta::new().user_agent("curl/8").ip("203.0.113.7".parse().unwrap());
/// assert_eq!(meta.ip.as_deref(), Some("203.0.113.7"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionMeta {
    /// The `User-Agent` at login, cut to 256 bytes.
    pub user_agent: Option<String>,
    /// The client IP at login.
    pub ip: Option<String>,
}

impl SessionMeta {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the user agent (cut to 256 bytes on a character boundary).
    #[must_use]
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        let mut ua = ua.into();
        if ua.len() > 256 {
            let mut end = 256;
            while !ua.is_char_boundary(end) {
                end -= 1;
            }
            ua.truncate(end);
        }
        self.user_agent = Some(ua);
        self
    }

    /// Sets the client IP.
    #[must_use]
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip.to_string());
        self
    }

    /// A readable name of the device, from the user agent ([`device_name`](crate::device_name)):
    /// `None` without a user agent.
    pub fn device(&self) -> Option<String> {
        self.user_agent.as_deref().map(crate::device_name)
    }

    /// The `User-Agent` header of a request plus a peer address (e.g. axum's
    /// `ConnectInfo<SocketAddr>`; pass `None` when unknown). Proxy headers are not trusted.
    pub fn from_headers(headers: &http::HeaderMap, ip: Option<IpAddr>) -> Self {
        let mut meta = Self::new();
        if let Some(ua) = headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            meta = meta.user_agent(ua);
        }
        meta.ip = ip.map(|ip| ip.to_string());
        meta
    }
}

/// What [`bind_user`] stores under [`USER_KEY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Binding {
    /// The user id.
    pub user: String,
    /// Device details.
    #[serde(default)]
    pub meta: SessionMeta,
}

impl Binding {
    /// A binding of `user` with device details `meta`.
    pub fn new(user: impl Into<String>, meta: SessionMeta) -> Self {
        Self {
            user: user.into(),
            meta,
        }
    }
}

/// Logs `session` in as `user`: stores the binding and cycles the session id (the pre-login
/// id is deleted from the store at once, so it is dead: no session fixation).
///
/// Session data: logging in from an anonymous session keeps its data (a cart filled before
/// login survives it), and so does logging in again as the same user. Logging in as a
/// *different* user than the one the session is bound to starts from empty data: nothing of
/// the previous user's session carries over.
///
/// The new id is created by the store when the response is sent. With [`RedisStore`] and
/// [`MemoryStore`](crate::MemoryStore) it is added to the user's index then, atomically, and
/// its id carries the user's Cluster bucket.
///
/// # Errors
///
/// When the store fails while loading or deleting the old session.
///
/// [`RedisStore`]: crate::RedisStore
pub async fn bind_user(
    session: &Session,
    user: &str,
    meta: SessionMeta,
) -> Result<(), SessionError> {
    let binding = Binding {
        user: user.to_owned(),
        meta,
    };
    let previous = session.get_value(USER_KEY).await?;
    let other_user =
        previous.is_some_and(|v| v.get("user").and_then(serde_json::Value::as_str) != Some(user));
    if other_user {
        session.clear().await;
    }
    session.insert(USER_KEY, binding).await?;
    // A session already known to the store gets a new id and its old one is deleted. A new
    // session (no id yet) is created under a fresh id anyway.
    if session.id().is_some() {
        session.cycle_id().await?;
    }
    Ok(())
}

/// The user `session` is bound to, if any. A missing, expired or revoked session reads as
/// `None`.
///
/// # Errors
///
/// When the store fails (Redis down: see [`status_for`](crate::status_for)).
pub async fn current_user(session: &Session) -> Result<Option<String>, SessionError> {
    /// The part of a [`Binding`] this reads: the device details are skipped, not decoded.
    #[derive(Deserialize)]
    struct UserOf {
        user: String,
    }
    Ok(session
        .get::<UserOf>(USER_KEY)
        .await?
        .map(|binding| binding.user))
}

/// The error type of [`Session`] methods.
pub type SessionError = tower_sessions_core::session::Error;

/// One live session of a user, as listed by [`UserSessions::list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionInfo {
    /// An opaque handle for [`UserSessions::revoke`]. It is not the session id and cannot be
    /// turned into a cookie.
    pub handle: String,
    /// When the session was created (login).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the session was last used (to the store's touch interval).
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    /// When the session expires unless used again.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// User agent at login.
    pub user_agent: Option<String>,
    /// A readable name of the device, from the user agent at login (`Firefox 128 on
    /// Windows`, see [`device_name`](crate::device_name)).
    #[serde(default)]
    pub device: Option<String>,
    /// IP at login.
    pub ip: Option<String>,
    /// Whether this is the session of the request that asked.
    pub current: bool,
}

/// The per-user index and revocation, implemented by [`RedisStore`](crate::RedisStore) and
/// [`MemoryStore`](crate::MemoryStore) (and so by every
/// [`SessionBackend`](crate::SessionBackend), `Arc<dyn SessionBackend>` included: a handler
/// holding the store chosen at run time calls these methods on it).
///
/// * Listing never shows an expired, deleted or revoked session; entries are pruned as they
///   are met, and the index itself expires with its last session.
/// * [`revoke_all`](Self::revoke_all) bumps the user's epoch, which every load and save
///   checks, so it also kills sessions the index does not know about.
#[async_trait]
pub trait UserSessions: std::fmt::Debug + Send + Sync + 'static {
    /// The opaque handle of a session id (what [`list`](Self::list) reports).
    fn handle(&self, id: &Id) -> String;

    /// The live sessions of `user`, oldest first. `current` (the caller's
    /// [`Session::id`]) marks one as [`SessionInfo::current`].
    ///
    /// # Errors
    ///
    /// When Redis fails.
    async fn list(&self, user: &str, current: Option<Id>) -> Result<Vec<SessionInfo>>;

    /// [`list`](Self::list), plus the handles of the sessions this call found expired and
    /// pruned from the index (what [`WithEvents`](crate::WithEvents) reports as
    /// [`SessionEvent::Expired`](crate::SessionEvent::Expired)). The default reports none.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    async fn list_and_expired(
        &self,
        user: &str,
        current: Option<Id>,
    ) -> Result<(Vec<SessionInfo>, Vec<String>)> {
        Ok((self.list(user, current).await?, Vec::new()))
    }

    /// Revokes the session `handle` of `user`. Returns whether it existed. A handle of
    /// another user, or garbage, revokes nothing. (When the reply was lost and the command
    /// re-sent, the re-send finds the session already gone and reports `false`: the session is
    /// revoked either way.)
    ///
    /// # Errors
    ///
    /// When Redis fails.
    async fn revoke(&self, user: &str, handle: &str) -> Result<bool>;

    /// Revokes every session of `user` in one atomic step ("log out everywhere"). Returns how
    /// many indexed sessions were deleted; unindexed ones die on their next use. The work is
    /// bounded by the per-user cap.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    async fn revoke_all(&self, user: &str) -> Result<u64>;

    /// Revokes every session of `user` except `current` (after a password change: "log out my
    /// other devices"), in one atomic step like [`revoke_all`](Self::revoke_all): sessions
    /// the index does not know about die too. Returns how many indexed sessions were deleted.
    ///
    /// `current` is the caller's [`Session::id`]. When it is not a live session of `user`,
    /// every session of `user` is revoked.
    ///
    /// ```
    /// use redtower_session::{MemoryStore, UserSessions, bind_user, SessionMeta};
    /// use redtower_session::tower_sessions::{Session, SessionStore};
    /// use std::sync::Arc;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = MemoryStore::new();
    /// let login = || async {
    ///     let session = Session::new(None, Arc::new(store.clone()), None);
    ///     bind_user(&session, "alice", SessionMeta::new()).await.unwrap();
    ///     session.save().await.unwrap();
    ///     session.id().unwrap()
    /// };
    /// let (laptop, phone) = (login().await, login().await);
    /// assert_eq!(store.revoke_others("alice", &laptop).await.unwrap(), 1);
    /// assert!(store.load(&laptop).await.unwrap().is_some());
    /// assert!(store.load(&phone).await.unwrap().is_none());
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// When Redis fails.
    async fn revoke_others(&self, user: &str, current: &Id) -> Result<u64>;

    /// A future that resolves within about one [watch interval] (250 ms by default) plus a
    /// round trip after the session `id` ends: revoked, logged out, revoked by
    /// [`revoke_all`](Self::revoke_all) or [`revoke_others`](Self::revoke_others), evicted by
    /// the per-user cap, or expired, through any instance sharing the store's Redis. For live
    /// streams (SSE, WebSocket) bound to the session they were opened with: end the stream
    /// when it resolves. A session that is already gone resolves at the first check.
    ///
    /// Cheap with many streams: one task per store checks every watched session together,
    /// one batched round trip per interval; dropping the future removes the watch.
    ///
    /// [watch interval]: crate::RedisStore::watch_interval
    ///
    /// ```
    /// use redtower_session::{MemoryStore, UserSessions, bind_user, SessionMeta};
    /// use redtower_session::tower_sessions::Session;
    /// use std::{sync::Arc, time::Duration};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = MemoryStore::new();
    /// let session = Session::new(None, Arc::new(store.clone()), None);
    /// bind_user(&session, "alice", SessionMeta::new()).await.unwrap();
    /// session.save().await.unwrap();
    /// let id = session.id().unwrap();
    ///
    /// // In an SSE handler: end the stream when the session ends, e.g. with
    /// // `stream.take_until(store.watch(&id)?)`.
    /// let ended = store.watch(&id).unwrap();
    /// store.revoke_all("alice").await.unwrap();
    /// tokio::time::timeout(Duration::from_secs(1), ended).await.expect("ended within 1 s");
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::TooManyWatches`](crate::Error::TooManyWatches) beyond the store's cap (10,000
    /// by default; answer 503), [`Error::NoRuntime`](crate::Error::NoRuntime) outside a Tokio
    /// runtime.
    fn watch(&self, id: &Id) -> Result<SessionWatch>;
}

pub(crate) fn binding_of(
    data: &std::collections::HashMap<String, serde_json::Value>,
) -> Option<Binding> {
    data.get(USER_KEY)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}
