//! [`AnyStore`]: Redis or memory, chosen at run time.

use async_trait::async_trait;
use tower_sessions_core::{
    SessionStore,
    session::{Id, Record},
    session_store,
};

use crate::{MemoryStore, RedisStore, Result, SessionInfo, SessionWatch, UserSessions};

/// Either store, chosen at run time (e.g. Redis when `REDIS_URL` is set, memory otherwise),
/// so an app has one concrete store type. Cloning is cheap.
///
/// ```
/// use redtower_session::{AnyStore, MemoryStore};
///
/// let store: AnyStore = MemoryStore::new().into();
/// assert!(matches!(store, AnyStore::Memory(_)));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyStore {
    /// [`RedisStore`].
    Redis(RedisStore),
    /// [`MemoryStore`].
    Memory(MemoryStore),
}

impl From<RedisStore> for AnyStore {
    fn from(s: RedisStore) -> Self {
        Self::Redis(s)
    }
}

impl From<MemoryStore> for AnyStore {
    fn from(s: MemoryStore) -> Self {
        Self::Memory(s)
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Redis($s) => $e,
            AnyStore::Memory($s) => $e,
        }
    };
}

#[async_trait]
impl SessionStore for AnyStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        each!(self, s => s.create(record).await)
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        each!(self, s => s.save(record).await)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        each!(self, s => s.load(id).await)
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        each!(self, s => s.delete(id).await)
    }
}

#[async_trait]
impl UserSessions for AnyStore {
    fn handle(&self, id: &Id) -> String {
        each!(self, s => s.handle(id))
    }

    async fn list(&self, user: &str, current: Option<Id>) -> Result<Vec<SessionInfo>> {
        each!(self, s => s.list(user, current).await)
    }

    async fn revoke(&self, user: &str, handle: &str) -> Result<bool> {
        each!(self, s => s.revoke(user, handle).await)
    }

    async fn revoke_all(&self, user: &str) -> Result<u64> {
        each!(self, s => s.revoke_all(user).await)
    }

    async fn revoke_others(&self, user: &str, current: &Id) -> Result<u64> {
        each!(self, s => s.revoke_others(user, current).await)
    }

    fn watch(&self, id: &Id) -> Result<SessionWatch> {
        each!(self, s => s.watch(id))
    }
}
