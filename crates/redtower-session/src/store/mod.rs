//! Where sessions live: the [`SessionBackend`] trait, [`RedisStore`] and [`MemoryStore`], and
//! what both share (timeouts and limits, the conversion to `tower-sessions`' interface).

use std::{collections::HashMap, fmt, future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::future::BoxFuture;
use redtower_client::breaker::Breaker;
use tower_sessions_core::{
    SessionStore,
    session::{Id, Record},
    session_store,
};

use crate::{Error, Result, SessionInfo, SessionWatch, UserSessions, outcome, telemetry};

mod memory;
mod redis;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// A session store the [`SessionLayer`](crate::SessionLayer) runs on: the records
/// `tower-sessions` reads and writes, plus the per-user index of [`UserSessions`].
/// Implemented by [`RedisStore`] and [`MemoryStore`], and by `Arc` of either or of
/// `dyn SessionBackend`.
///
/// Choosing a backend at run time is choosing an `Arc<dyn SessionBackend>`; the layer and the
/// handlers share it:
///
/// ```
/// use std::sync::Arc;
/// use redtower_session::{MemoryStore, RedisStore, SessionBackend, SessionLayer, UserSessions};
/// use redtower_session::tower_sessions::cookie::Key;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), redtower_session::Error> {
/// # let redis: Option<redtower_client::Redis> = None;
/// # let secret = [7u8; 32];
/// let store: Arc<dyn SessionBackend> = match redis {
///     Some(redis) => Arc::new(RedisStore::new(redis, secret)?),
///     None => Arc::new(MemoryStore::new()),
/// };
/// let layer = SessionLayer::new(store.clone(), Key::generate());
/// // In a handler: `store.revoke_all(&user)`, `store.list(&user, current)`, ...
/// assert!(store.list("alice", None).await?.is_empty());
/// # let _ = layer; Ok(()) }
/// ```
///
/// The record operations have `tower-sessions`' meaning (the layer calls them through its
/// `SessionStore` interface), with the guarantees both stores give: `create` never
/// overwrites, `save` never brings back a session that was deleted, expired or revoked,
/// `load` answers `None` for such a session. Their errors are typed: an
/// [outage](Error::is_outage) becomes `503` and [`Error::Gone`] a `401` (plus a cleared
/// cookie) under the layer.
#[async_trait]
pub trait SessionBackend: UserSessions {
    /// Stores a new record under a fresh id, written into `record.id`; never overwrites an
    /// existing session. A record bound to a user ([`bind_user`](crate::bind_user)) joins the
    /// user's index.
    ///
    /// # Errors
    ///
    /// When the store fails, when the data is over the size cap ([`Error::TooLarge`]), or when
    /// no free id was found ([`Error::Collision`]).
    async fn create_record(&self, record: &mut Record) -> Result<()>;

    /// Updates a live record (data and expiry).
    ///
    /// # Errors
    ///
    /// [`Error::Gone`] when the session was deleted, expired or revoked (it is not written);
    /// otherwise as [`create_record`](Self::create_record).
    async fn save_record(&self, record: &Record) -> Result<()>;

    /// The record of session `id`, `None` when it is missing, expired or revoked. A read slides
    /// the idle timeout.
    ///
    /// # Errors
    ///
    /// When the store fails or the stored data cannot be decoded.
    async fn load_record(&self, id: &Id) -> Result<Option<Record>>;

    /// Deletes session `id` (and its index entry). Deleting a missing session is no error.
    ///
    /// # Errors
    ///
    /// When the store fails.
    async fn delete_record(&self, id: &Id) -> Result<()>;

    /// How many times the store's Redis client has connected
    /// ([`Redis::connections`](redtower_client::Redis::connections)): the layer's circuit
    /// breaker ends its cool-down early when this moves. `0` for an in-process store.
    fn connections(&self) -> u64 {
        0
    }

    /// Whether the store has ever connected. Failures before the first connection are not an
    /// outage and never open the layer's circuit breaker. `true` for an in-process store.
    fn has_connected(&self) -> bool {
        true
    }
}

// Forwarded by hand rather than through `#[async_trait]`, so an `Arc<dyn SessionBackend>`
// costs no extra boxed future per call over the store it holds.
impl<T: SessionBackend + ?Sized> SessionBackend for Arc<T> {
    fn create_record<'a, 'b, 'f>(&'a self, record: &'b mut Record) -> BoxFuture<'f, Result<()>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).create_record(record)
    }

    fn save_record<'a, 'b, 'f>(&'a self, record: &'b Record) -> BoxFuture<'f, Result<()>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).save_record(record)
    }

    fn load_record<'a, 'b, 'f>(&'a self, id: &'b Id) -> BoxFuture<'f, Result<Option<Record>>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).load_record(id)
    }

    fn delete_record<'a, 'b, 'f>(&'a self, id: &'b Id) -> BoxFuture<'f, Result<()>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).delete_record(id)
    }

    fn connections(&self) -> u64 {
        (**self).connections()
    }

    fn has_connected(&self) -> bool {
        (**self).has_connected()
    }
}

// See the `SessionBackend` forwarding above.
impl<T: UserSessions + ?Sized> UserSessions for Arc<T> {
    fn handle(&self, id: &Id) -> String {
        (**self).handle(id)
    }

    fn list<'a, 'b, 'f>(
        &'a self,
        user: &'b str,
        current: Option<Id>,
    ) -> BoxFuture<'f, Result<Vec<SessionInfo>>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).list(user, current)
    }

    fn list_and_expired<'a, 'b, 'f>(
        &'a self,
        user: &'b str,
        current: Option<Id>,
    ) -> BoxFuture<'f, Result<(Vec<SessionInfo>, Vec<String>)>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).list_and_expired(user, current)
    }

    fn revoke<'a, 'b, 'c, 'f>(
        &'a self,
        user: &'b str,
        handle: &'c str,
    ) -> BoxFuture<'f, Result<bool>>
    where
        'a: 'f,
        'b: 'f,
        'c: 'f,
        Self: 'f,
    {
        (**self).revoke(user, handle)
    }

    fn revoke_all<'a, 'b, 'f>(&'a self, user: &'b str) -> BoxFuture<'f, Result<u64>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).revoke_all(user)
    }

    fn revoke_others<'a, 'b, 'c, 'f>(
        &'a self,
        user: &'b str,
        current: &'c Id,
    ) -> BoxFuture<'f, Result<u64>>
    where
        'a: 'f,
        'b: 'f,
        'c: 'f,
        Self: 'f,
    {
        (**self).revoke_others(user, current)
    }

    fn watch(&self, id: &Id) -> Result<SessionWatch> {
        (**self).watch(id)
    }
}

/// A [`SessionBackend`] seen through `tower-sessions`' [`SessionStore`] interface: what the
/// [`SessionLayer`](crate::SessionLayer) hands its `SessionManager`. Its errors are flagged
/// for the layer (see [`to_store_error`]) before they lose their type.
///
/// Public only in name (this module is private): it appears as a type parameter of
/// [`SessionLayer`](crate::SessionLayer)'s service.
#[derive(Clone)]
pub struct BackendAsStore {
    store: Arc<dyn SessionBackend>,
    breaker: Arc<Breaker>,
}

impl fmt::Debug for BackendAsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.store.fmt(f)
    }
}

impl BackendAsStore {
    pub(crate) fn new(store: Arc<dyn SessionBackend>, breaker: Arc<Breaker>) -> Self {
        Self { store, breaker }
    }

    /// Runs one store call through the circuit breaker. Only an outage of a store that had
    /// connected counts as a failure; any other answer (a session gone, data too large) is the
    /// store working.
    async fn guarded<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        if !self.breaker.allow(self.store.connections()).is_allowed() {
            return Err(Error::CircuitOpen);
        }
        let result = call.await;
        match &result {
            Err(e) if e.is_outage() => {
                if self.store.has_connected() && self.breaker.failure(self.store.connections()) {
                    tracing::warn!(
                        target: "redtower::session",
                        error = %e,
                        cool_down_ms = self.breaker.cool_down().as_millis(),
                        "session store unavailable; requests that need the session answer 503"
                    );
                }
            }
            _ => {
                if self.breaker.success() {
                    tracing::info!(target: "redtower::session", "session store is back");
                }
            }
        }
        result
    }
}

#[async_trait]
impl SessionStore for BackendAsStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let result = self.guarded(self.store.create_record(record)).await;
        outcome::created(&result);
        telemetry::store_call("create", result.as_ref().map(Some));
        result.map_err(to_store_error)
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let result = self.guarded(self.store.save_record(record)).await;
        telemetry::store_call("save", result.as_ref().map(Some));
        result.map_err(to_store_error)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let result = self.guarded(self.store.load_record(id)).await;
        outcome::loaded(&result);
        telemetry::store_call("load", result.as_ref().map(Option::as_ref));
        result.map_err(to_store_error)
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let result = self.guarded(self.store.delete_record(id)).await;
        telemetry::store_call("delete", result.as_ref().map(Some));
        result.map_err(to_store_error)
    }
}

/// Timeouts and limits, the same settings for both stores.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) idle: Option<Duration>,
    pub(crate) absolute: Duration,
    pub(crate) max_data: usize,
    pub(crate) touch_interval: Duration,
    pub(crate) max_per_user: usize,
    pub(crate) max_watches: usize,
    pub(crate) watch_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            idle: None,
            absolute: DEFAULT_ABSOLUTE,
            max_data: DEFAULT_MAX_DATA,
            touch_interval: DEFAULT_TOUCH_INTERVAL,
            max_per_user: DEFAULT_MAX_PER_USER,
            max_watches: DEFAULT_MAX_WATCHES,
            watch_interval: DEFAULT_WATCH_INTERVAL,
        }
    }
}

pub(crate) const DEFAULT_ABSOLUTE: Duration = Duration::from_secs(7 * 24 * 3600);
pub(crate) const DEFAULT_MAX_DATA: usize = 16 * 1024;
pub(crate) const DEFAULT_TOUCH_INTERVAL: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_MAX_PER_USER: usize = 100;
pub(crate) const DEFAULT_MAX_WATCHES: usize = 10_000;
pub(crate) const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(250);

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Settings {
    pub(crate) fn idle_ms(&self) -> i64 {
        self.idle.map_or(0, ms)
    }

    /// The per-user cap, as a script argument.
    pub(crate) fn max_per_user_arg(&self) -> i64 {
        i64::try_from(self.max_per_user).unwrap_or(i64::MAX)
    }

    pub(crate) fn encode(
        &self,
        data: &HashMap<String, serde_json::Value>,
    ) -> Result<String, Error> {
        let text = serde_json::to_string(data)?;
        if text.len() > self.max_data {
            return Err(Error::TooLarge {
                size: text.len(),
                max: self.max_data,
            });
        }
        Ok(text)
    }

    /// The expiry of a write: the record's wish, capped by the absolute deadline and the idle
    /// timeout.
    pub(crate) fn expiry(&self, wanted: i64, absolute_deadline: i64, now: i64) -> i64 {
        let mut e = wanted.min(absolute_deadline);
        if let Some(idle) = self.idle {
            e = e.min(now.saturating_add(ms(idle)));
        }
        e
    }
}

/// Converts our error for the `SessionStore` interface, flagging it for the layer first.
pub(crate) fn to_store_error(err: Error) -> session_store::Error {
    outcome::record(&err);
    match err {
        Error::Encoding(e) => session_store::Error::Encode(e.to_string()),
        other => session_store::Error::Backend(other.to_string()),
    }
}

pub(crate) fn unix_ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_unix_ms(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
