//! Session events for audit logs: [`SessionEvents`], [`SessionEvent`] and the
//! [`WithEvents`] store wrapper that emits them.

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use tower_sessions_core::{
    SessionStore,
    session::{Id, Record},
    session_store,
};

use crate::{
    Result, SessionBackend, SessionInfo, SessionMeta, SessionWatch, UserSessions, user::binding_of,
};

/// Something that happened to a user's session, as [`WithEvents`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A session bound to `user` was created: a login ([`bind_user`](crate::bind_user), once
    /// the response is sent and the store has written the new id).
    Login {
        /// The user.
        user: String,
        /// The session's handle (as in [`SessionInfo::handle`]).
        handle: String,
        /// Device details given at login.
        meta: SessionMeta,
    },
    /// One session was revoked ("sign out this device",
    /// [`UserSessions::revoke`]) and existed.
    Revoked {
        /// The user.
        user: String,
        /// The session's handle.
        handle: String,
    },
    /// Every session of `user` was revoked ([`UserSessions::revoke_all`]), or every one but
    /// the caller's ([`UserSessions::revoke_others`], `kept` is then its handle).
    RevokedAll {
        /// The user.
        user: String,
        /// How many indexed sessions were deleted.
        count: u64,
        /// The session kept, for `revoke_others`.
        kept: Option<String>,
    },
    /// A session of `user` ran out (idle or absolute timeout). Reported when the user's
    /// session index is cleaned: when [`list`](UserSessions::list) prunes the entry of a
    /// session that expired, once per session. Not reported: a session whose expiry a load met
    /// first (the request that found it past its absolute deadline, answered as logged out),
    /// a session whose user never lists their sessions again, and, on Redis, a user's last
    /// session (the index expires with it).
    Expired {
        /// The user.
        user: String,
        /// The session's handle.
        handle: String,
    },
}

/// Receives [`SessionEvent`]s. Called on the task that caused the event, after the store
/// answered: keep it short (log, send to a channel); it must not block. Implemented by every
/// `Fn(&SessionEvent)`.
pub trait SessionEvents: Send + Sync + 'static {
    /// One event.
    fn on_event(&self, event: &SessionEvent);
}

impl<F: Fn(&SessionEvent) + Send + Sync + 'static> SessionEvents for F {
    fn on_event(&self, event: &SessionEvent) {
        self(event)
    }
}

/// A store that reports logins, revocations and expiries to a [`SessionEvents`] hook, for
/// audit logs. Wrap the store once and hand the wrapper to both the
/// [`SessionLayer`](crate::SessionLayer) (logins) and the handlers (revocations, the session
/// list):
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use redtower_session::{
///     MemoryStore, SessionEvent, SessionMeta, UserSessions, WithEvents, bind_user,
/// };
/// use redtower_session::tower_sessions::Session;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let log = Arc::new(Mutex::new(Vec::new()));
/// let sink = log.clone();
/// let store = Arc::new(WithEvents::new(
///     MemoryStore::new(),
///     move |e: &SessionEvent| sink.lock().unwrap().push(e.clone()),
/// ));
/// // The layer takes it as it takes any store: `SessionLayer::new(store.clone(), key)`.
/// let session = Session::new(None, store.clone(), None);
/// bind_user(&session, "alice", SessionMeta::new().user_agent("curl/8")).await.unwrap();
/// session.save().await.unwrap();
/// let handle = store.handle(&session.id().unwrap());
/// store.revoke("alice", &handle).await.unwrap(); // "sign out this device"
/// let log = log.lock().unwrap();
/// assert!(matches!(&log[0], SessionEvent::Login { user, .. } if user == "alice"));
/// assert!(matches!(&log[1], SessionEvent::Revoked { handle: h, .. } if *h == handle));
/// # }
/// ```
///
/// Not reported: a logout (`Session::delete`/`flush` in the app's own handler, which knows the
/// user and can log it there) and the deletion of the pre-login id at login.
#[derive(Clone)]
pub struct WithEvents {
    inner: Arc<dyn SessionBackend>,
    hook: Arc<dyn SessionEvents>,
}

impl fmt::Debug for WithEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithEvents")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl WithEvents {
    /// `store`, reporting to `hook`.
    pub fn new(store: impl SessionBackend, hook: impl SessionEvents) -> Self {
        Self {
            inner: Arc::new(store),
            hook: Arc::new(hook),
        }
    }

    /// The store it wraps.
    pub fn inner(&self) -> &Arc<dyn SessionBackend> {
        &self.inner
    }

    fn emit(&self, event: SessionEvent) {
        tracing::debug!(target: "redtower::session", ?event, "session event");
        self.hook.on_event(&event);
    }
}

#[async_trait]
impl SessionBackend for WithEvents {
    async fn create_record(&self, record: &mut Record) -> Result<()> {
        self.inner.create_record(record).await?;
        if let Some(binding) = binding_of(&record.data) {
            self.emit(SessionEvent::Login {
                user: binding.user,
                handle: self.inner.handle(&record.id),
                meta: binding.meta,
            });
        }
        Ok(())
    }

    async fn save_record(&self, record: &Record) -> Result<()> {
        self.inner.save_record(record).await
    }

    async fn load_record(&self, id: &Id) -> Result<Option<Record>> {
        self.inner.load_record(id).await
    }

    async fn delete_record(&self, id: &Id) -> Result<()> {
        self.inner.delete_record(id).await
    }

    fn connections(&self) -> u64 {
        self.inner.connections()
    }

    fn has_connected(&self) -> bool {
        self.inner.has_connected()
    }
}

// Like the concrete stores, usable as a `tower-sessions` store directly (tests, tools).
#[async_trait]
impl SessionStore for WithEvents {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.create_record(record)
            .await
            .map_err(crate::store::to_store_error)
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.save_record(record)
            .await
            .map_err(crate::store::to_store_error)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        self.load_record(id)
            .await
            .map_err(crate::store::to_store_error)
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.delete_record(id)
            .await
            .map_err(crate::store::to_store_error)
    }
}

#[async_trait]
impl UserSessions for WithEvents {
    fn handle(&self, id: &Id) -> String {
        self.inner.handle(id)
    }

    async fn list(&self, user: &str, current: Option<Id>) -> Result<Vec<SessionInfo>> {
        let (list, expired) = self.inner.list_and_expired(user, current).await?;
        for handle in expired {
            self.emit(SessionEvent::Expired {
                user: user.to_owned(),
                handle,
            });
        }
        Ok(list)
    }

    async fn list_and_expired(
        &self,
        user: &str,
        current: Option<Id>,
    ) -> Result<(Vec<SessionInfo>, Vec<String>)> {
        let (list, expired) = self.inner.list_and_expired(user, current).await?;
        for handle in &expired {
            self.emit(SessionEvent::Expired {
                user: user.to_owned(),
                handle: handle.clone(),
            });
        }
        Ok((list, expired))
    }

    async fn revoke(&self, user: &str, handle: &str) -> Result<bool> {
        let existed = self.inner.revoke(user, handle).await?;
        if existed {
            self.emit(SessionEvent::Revoked {
                user: user.to_owned(),
                handle: handle.to_owned(),
            });
        }
        Ok(existed)
    }

    async fn revoke_all(&self, user: &str) -> Result<u64> {
        let count = self.inner.revoke_all(user).await?;
        self.emit(SessionEvent::RevokedAll {
            user: user.to_owned(),
            count,
            kept: None,
        });
        Ok(count)
    }

    async fn revoke_others(&self, user: &str, current: &Id) -> Result<u64> {
        let count = self.inner.revoke_others(user, current).await?;
        self.emit(SessionEvent::RevokedAll {
            user: user.to_owned(),
            count,
            kept: Some(self.inner.handle(current)),
        });
        Ok(count)
    }

    fn watch(&self, id: &Id) -> Result<SessionWatch> {
        self.inner.watch(id)
    }
}
