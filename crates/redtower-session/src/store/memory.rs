//! [`MemoryStore`]: the same semantics as [`RedisStore`](crate::RedisStore), in process.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::Duration,
};

use async_trait::async_trait;
use tokio::time::Instant;
use tower_sessions_core::{
    SessionStore,
    session::{Id, Record},
    session_store,
};

use super::{SessionBackend, Settings, from_unix_ms, ms, to_store_error, unix_ms};
use crate::{
    Error, Result, SessionInfo, UserSessions,
    keys::{Keys, valid_handle},
    telemetry,
    user::{Binding, binding_of},
    watch::{SessionWatch, Watches},
};

mod index;

use index::Index;

/// A [`SessionBackend`] in process memory (also a drop-in `tower-sessions` [`SessionStore`]) with the same semantics as
/// [`RedisStore`](crate::RedisStore): NX create, XX save, idle and absolute timeouts, size cap,
/// and the per-user index with epoch revocation of [`UserSessions`].
///
/// For single-instance apps, development and tests. Its clock is `tokio::time`, so tests can
/// pause and advance time. Expired entries are swept as the store grows. Cloning is cheap and
/// clones share the sessions; a setting changed on a clone applies to that clone only (as with
/// [`RedisStore`](crate::RedisStore)).
///
/// ```
/// use redtower_session::MemoryStore;
/// use std::time::Duration;
///
/// let store = MemoryStore::new().idle_timeout(Duration::from_secs(1800));
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

/// One configuration of the store: its settings and watches, over sessions clones share.
#[derive(Clone)]
struct Inner {
    settings: Settings,
    shared: Arc<Shared>,
    /// Revocation watches (started on the first watch; a setting change starts new ones).
    watches: OnceLock<Arc<Watches>>,
}

/// What every clone shares: the sessions, the secret of their handles and the clock.
struct Shared {
    keys: Keys,
    base_ms: i64,
    base: Instant,
    state: Mutex<State>,
}

impl Shared {
    fn now(&self) -> i64 {
        self.base_ms + ms(self.base.elapsed())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct State {
    records: HashMap<String, Rec>,
    users: HashMap<String, UserState>,
    sweep_at: usize,
}

struct Rec {
    data: String,
    e: i64,
    c: i64,
    a: i64,
    x: i64,
    bound: Option<(Binding, u64)>,
}

#[derive(Default)]
struct UserState {
    epoch: u64,
    /// The epoch lives as long as any session of the user (like the Redis key's TTL).
    epoch_until: i64,
    index: Index,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with a random secret for handles.
    pub fn new() -> Self {
        let secret: [u8; 32] = rand::random();
        Self {
            inner: Arc::new(Inner {
                settings: Settings::default(),
                shared: Arc::new(Shared {
                    keys: Keys::new(&redtower_client::Keyspace::default(), &secret),
                    base_ms: unix_ms(time::OffsetDateTime::now_utc()),
                    base: Instant::now(),
                    state: Mutex::default(),
                }),
                watches: OnceLock::new(),
            }),
        }
    }

    fn settings_mut(&mut self) -> &mut Settings {
        let inner = Arc::make_mut(&mut self.inner);
        inner.watches = OnceLock::new();
        &mut inner.settings
    }

    /// See [`RedisStore::idle_timeout`](crate::RedisStore::idle_timeout). Defaults to none.
    #[must_use]
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.settings_mut().idle = Some(idle);
        self
    }

    /// See [`RedisStore::absolute_timeout`](crate::RedisStore::absolute_timeout). Defaults to
    /// 7 days.
    #[must_use]
    pub fn absolute_timeout(mut self, absolute: Duration) -> Self {
        self.settings_mut().absolute = absolute;
        self
    }

    /// See [`RedisStore::max_data_size`](crate::RedisStore::max_data_size). Defaults to 16 KiB.
    #[must_use]
    pub fn max_data_size(mut self, bytes: usize) -> Self {
        self.settings_mut().max_data = bytes;
        self
    }

    /// See [`RedisStore::touch_interval`](crate::RedisStore::touch_interval). Defaults to 1 s.
    #[must_use]
    pub fn touch_interval(mut self, interval: Duration) -> Self {
        self.settings_mut().touch_interval = interval;
        self
    }

    /// See [`RedisStore::max_sessions_per_user`](crate::RedisStore::max_sessions_per_user).
    /// Defaults to 100.
    ///
    /// 0 is taken as 1.
    #[must_use]
    pub fn max_sessions_per_user(mut self, max: usize) -> Self {
        self.settings_mut().max_per_user = max.max(1);
        self
    }

    /// See [`RedisStore::max_watches`](crate::RedisStore::max_watches). Defaults to 10,000.
    #[must_use]
    pub fn max_watches(mut self, max: usize) -> Self {
        self.settings_mut().max_watches = max;
        self
    }

    /// See [`RedisStore::watch_interval`](crate::RedisStore::watch_interval). Defaults to
    /// 250 ms.
    #[must_use]
    pub fn watch_interval(mut self, interval: Duration) -> Self {
        self.settings_mut().watch_interval = interval;
        self
    }

    /// How many sessions are watched now (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.inner.watches.get().map_or(0, |w| w.len())
    }

    /// How many index entries `user` has (live or not yet pruned). For tests of the cap (`testing` feature).
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn index_len(&self, user: &str) -> usize {
        self.lock().users.get(user).map_or(0, |u| u.index.len())
    }

    /// How many session records the store holds (live or not yet swept). For tests (`testing` feature).
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn records(&self) -> usize {
        self.lock().records.len()
    }

    /// How many users have an index entry (live or not yet pruned). For tests of index hygiene (`testing` feature).
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn indexed_users(&self) -> usize {
        let now = self.now();
        let mut st = self.lock();
        st.users.retain(|_, u| {
            u.index.prune(now);
            !u.index.is_empty() || u.epoch_until > now
        });
        st.users.values().filter(|u| !u.index.is_empty()).count()
    }

    /// Whether `user` has an index entry with a live session (expired ones pruned first, as
    /// Redis expires them). For tests of index hygiene (`testing` feature).
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn has_index(&self, user: &str) -> bool {
        let now = self.now();
        let mut st = self.lock();
        st.users.get_mut(user).is_some_and(|u| {
            u.index.prune(now);
            !u.index.is_empty()
        })
    }

    fn now(&self) -> i64 {
        self.inner.shared.now()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.shared.lock()
    }

    fn keys(&self) -> &Keys {
        &self.inner.shared.keys
    }
}

impl State {
    fn kill(&mut self, handle: &str) {
        if let Some(rec) = self.records.remove(handle) {
            if let Some((b, _)) = rec.bound {
                if let Some(u) = self.users.get_mut(&b.user) {
                    u.index.remove(handle);
                }
            }
        }
    }

    /// The live record `handle`, killing it when expired or revoked.
    fn live(&mut self, handle: &str, now: i64) -> Option<&mut Rec> {
        let dead = match self.records.get(handle) {
            None => return None,
            Some(rec) => {
                now >= rec.e
                    || now >= rec.x
                    || rec.bound.as_ref().is_some_and(|(b, g)| {
                        self.users
                            .get(&b.user)
                            .is_none_or(|u| u.epoch != *g || u.epoch_until <= now)
                    })
            }
        };
        if dead {
            self.kill(handle);
            return None;
        }
        self.records.get_mut(handle)
    }

    fn reindex(&mut self, handle: &str, user: &str, e: i64) {
        if let Some(u) = self.users.get_mut(user) {
            u.index.update(handle, e);
            u.epoch_until = u.epoch_until.max(e);
        }
    }

    /// Whether `handle` is a live session, without changing anything (for watches).
    fn is_live(&self, handle: &str, now: i64) -> bool {
        self.records.get(handle).is_some_and(|rec| {
            now < rec.e
                && now < rec.x
                && rec.bound.as_ref().is_none_or(|(b, g)| {
                    self.users
                        .get(&b.user)
                        .is_some_and(|u| u.epoch == *g && u.epoch_until > now)
                })
        })
    }

    /// Adds the new session `handle` (expiring at `e`) to `user`'s index, revoking the
    /// soonest-expiring sessions beyond the cap of `max` (never the new one). Returns the epoch
    /// the session carries.
    fn index_new(&mut self, user: &str, handle: &str, e: i64, now: i64, max: usize) -> u64 {
        let u = self.users.entry(user.to_owned()).or_default();
        if u.epoch_until <= now {
            // The epoch expired with the user's last session.
            u.epoch = 0;
        }
        u.index.prune(now);
        u.index.insert(handle.to_owned(), e);
        let mut evicted = Vec::new();
        while u.index.len() > max {
            let Some(old) = u.index.first_except(handle) else {
                break;
            };
            u.index.remove(&old);
            evicted.push(old);
        }
        u.epoch_until = u.epoch_until.max(e);
        let epoch = u.epoch;
        for old in evicted {
            self.records.remove(&old);
        }
        epoch
    }

    fn sweep(&mut self, now: i64) {
        if self.records.len() < self.sweep_at {
            return;
        }
        let dead: Vec<String> = self
            .records
            .iter()
            .filter(|(_, r)| now >= r.e || now >= r.x)
            .map(|(h, _)| h.clone())
            .collect();
        for h in dead {
            self.kill(&h);
        }
        self.users.retain(|_, u| {
            u.index.prune(now);
            !u.index.is_empty() || u.epoch_until > now
        });
        self.sweep_at = (self.records.len() * 2).max(1024);
    }
}

impl MemoryStore {
    fn create_inner(&self, record: &mut Record) -> Result<()> {
        let (keys, settings) = (self.keys(), &self.inner.settings);
        let max = settings.max_per_user;
        let binding = binding_of(&record.data);
        let data = settings.encode(&record.data)?;
        let now = self.now();
        let x = now.saturating_add(ms(settings.absolute));
        let e = settings.expiry(unix_ms(record.expiry_date), x, now);
        let mut st = self.lock();
        st.sweep(now);
        let bucket = binding
            .as_ref()
            .map_or_else(|| rand::random::<u16>() >> 2, |b| keys.user_bucket(&b.user));
        let (id, handle) = loop {
            let id = Keys::new_id(bucket);
            let handle = keys.handle(&id);
            if !st.records.contains_key(&handle) {
                break (id, handle);
            }
        };
        record.id = id;
        if e <= now {
            return Ok(());
        }
        record.expiry_date = from_unix_ms(e);
        let bound = binding.map(|b| {
            let epoch = st.index_new(&b.user, &handle, e, now, max);
            (b, epoch)
        });
        st.records.insert(
            handle,
            Rec {
                data,
                e,
                c: now,
                a: now,
                x,
                bound,
            },
        );
        Ok(())
    }

    fn load_inner(&self, id: &Id) -> Result<Option<Record>> {
        let (keys, settings) = (self.keys(), &self.inner.settings);
        let handle = keys.handle(id);
        let now = self.now();
        let mut st = self.lock();
        let Some(rec) = st.live(&handle, now) else {
            return Ok(None);
        };
        let mut reindex = None;
        if now - rec.a >= ms(settings.touch_interval) {
            rec.a = now;
            if let Some(idle) = settings.idle {
                let ne = now.saturating_add(ms(idle)).min(rec.x);
                if ne > rec.e {
                    rec.e = ne;
                    reindex = rec.bound.as_ref().map(|(b, _)| (b.user.clone(), ne));
                }
            }
        }
        let record = Record {
            id: *id,
            data: serde_json::from_str(&rec.data)?,
            expiry_date: from_unix_ms(rec.e),
        };
        if let Some((user, e)) = reindex {
            st.reindex(&handle, &user, e);
        }
        Ok(Some(record))
    }

    fn save_inner(&self, record: &Record) -> Result<()> {
        let (keys, settings) = (self.keys(), &self.inner.settings);
        let data = settings.encode(&record.data)?;
        let handle = keys.handle(&record.id);
        let now = self.now();
        let mut st = self.lock();
        let Some(rec) = st.live(&handle, now) else {
            return Err(Error::Gone);
        };
        let e = settings.expiry(unix_ms(record.expiry_date), rec.x, now);
        if e <= now {
            st.kill(&handle);
            return Ok(());
        }
        rec.data = data;
        rec.e = e;
        rec.a = now;
        if let Some(user) = rec.bound.as_ref().map(|(b, _)| b.user.clone()) {
            st.reindex(&handle, &user, e);
        }
        Ok(())
    }

    fn delete_inner(&self, id: &Id) {
        let handle = self.keys().handle(id);
        self.lock().kill(&handle);
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.create_inner(record).map_err(to_store_error)
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.save_inner(record).map_err(to_store_error)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        self.load_inner(id).map_err(to_store_error)
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.delete_inner(id);
        Ok(())
    }
}

#[async_trait]
impl SessionBackend for MemoryStore {
    async fn create_record(&self, record: &mut Record) -> Result<()> {
        self.create_inner(record)
    }

    async fn save_record(&self, record: &Record) -> Result<()> {
        self.save_inner(record)
    }

    async fn load_record(&self, id: &Id) -> Result<Option<Record>> {
        self.load_inner(id)
    }

    async fn delete_record(&self, id: &Id) -> Result<()> {
        self.delete_inner(id);
        Ok(())
    }
}

#[async_trait]
impl UserSessions for MemoryStore {
    fn handle(&self, id: &Id) -> String {
        self.keys().handle(id)
    }

    async fn list(&self, user: &str, current: Option<Id>) -> Result<Vec<SessionInfo>> {
        Ok(self.list_and_expired(user, current).await?.0)
    }

    async fn list_and_expired(
        &self,
        user: &str,
        current: Option<Id>,
    ) -> Result<(Vec<SessionInfo>, Vec<String>)> {
        let now = self.now();
        let current = current.map(|id| self.keys().handle(&id));
        let mut st = self.lock();
        let (mut expired, handles) = match st.users.get_mut(user) {
            Some(u) => {
                let expired = u.index.expired(now);
                u.index.prune(now);
                (expired, u.index.handles())
            }
            None => return Ok((Vec::new(), Vec::new())),
        };
        // An index entry past its expiry whose record is not live (the record may still be
        // held: this store has no TTLs).
        expired.retain(|h| !st.is_live(h, now));
        for h in &expired {
            st.records.remove(h);
        }
        let mut out = Vec::new();
        for h in handles {
            let timed_out = st
                .records
                .get(&h)
                .is_some_and(|rec| now >= rec.e || now >= rec.x);
            let Some(rec) = st.live(&h, now) else {
                if timed_out {
                    expired.push(h.clone());
                }
                if let Some(u) = st.users.get_mut(user) {
                    u.index.remove(&h);
                }
                continue;
            };
            let meta = rec
                .bound
                .as_ref()
                .map(|(b, _)| b.meta.clone())
                .unwrap_or_default();
            out.push(SessionInfo {
                current: current.as_deref() == Some(h.as_str()),
                created_at: from_unix_ms(rec.c),
                last_seen_at: from_unix_ms(rec.a),
                expires_at: from_unix_ms(rec.e),
                device: meta.device(),
                user_agent: meta.user_agent,
                ip: meta.ip,
                handle: h,
            });
        }
        out.sort_by_key(|i| i.created_at);
        Ok((out, expired))
    }

    async fn revoke(&self, user: &str, handle: &str) -> Result<bool> {
        if !valid_handle(handle) {
            return Ok(false);
        }
        let mut st = self.lock();
        let owned = st
            .records
            .get(handle)
            .and_then(|r| r.bound.as_ref())
            .is_some_and(|(b, _)| b.user == user);
        if owned {
            st.kill(handle);
            telemetry::revoked("one", 1);
        }
        Ok(owned)
    }

    async fn revoke_all(&self, user: &str) -> Result<u64> {
        let now = self.now();
        let absolute = ms(self.inner.settings.absolute);
        let mut st = self.lock();
        let u = st.users.entry(user.to_owned()).or_default();
        let handles: Vec<String> = u.index.drain();
        if u.epoch_until <= now {
            u.epoch = 0;
            u.epoch_until = now.saturating_add(absolute);
        }
        u.epoch += 1;
        let mut n = 0;
        for h in handles {
            if st.records.remove(&h).is_some() {
                n += 1;
            }
        }
        telemetry::revoked("all", n);
        Ok(n)
    }

    async fn revoke_others(&self, user: &str, current: &Id) -> Result<u64> {
        let now = self.now();
        let absolute = ms(self.inner.settings.absolute);
        let keep = self.keys().handle(current);
        let mut st = self.lock();
        let live = st.is_live(&keep, now)
            && st
                .records
                .get(&keep)
                .is_some_and(|r| r.bound.as_ref().is_some_and(|(b, _)| b.user == user));
        let u = st.users.entry(user.to_owned()).or_default();
        let mut handles = u.index.drain();
        if u.epoch_until <= now {
            u.epoch = 0;
            u.epoch_until = now.saturating_add(absolute);
        }
        u.epoch += 1;
        let epoch = u.epoch;
        let mut n = 0;
        if live {
            handles.retain(|h| *h != keep);
            if let Some(rec) = st.records.get_mut(&keep) {
                if let Some((_, g)) = rec.bound.as_mut() {
                    *g = epoch;
                }
                let e = rec.e;
                if let Some(u) = st.users.get_mut(user) {
                    u.index.insert(keep.clone(), e);
                    u.epoch_until = u.epoch_until.max(e);
                }
            }
        }
        for h in handles {
            if st.records.remove(&h).is_some() {
                n += 1;
            }
        }
        telemetry::revoked("others", n);
        Ok(n)
    }

    fn watch(&self, id: &Id) -> Result<SessionWatch> {
        let Inner {
            settings, watches, ..
        } = &*self.inner;
        let watches =
            watches.get_or_init(|| Watches::new(settings.max_watches, settings.watch_interval));
        watches.watch(*id, || {
            let shared = Arc::downgrade(&self.inner.shared);
            Box::new(move |ids: Vec<Id>| {
                let answer = shared.upgrade().map(|shared| {
                    let handles: Vec<String> =
                        ids.iter().map(|id| shared.keys.handle(id)).collect();
                    let now = shared.now();
                    let st = shared.lock();
                    handles.iter().map(|h| st.is_live(h, now)).collect()
                });
                Box::pin(std::future::ready(answer))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn create_one(store: &MemoryStore) {
        let mut r = Record {
            id: Id::default(),
            data: HashMap::new(),
            expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        };
        store.create(&mut r).await.unwrap();
    }

    /// Setting a clone never panics: the clone gets its own settings over the same sessions.
    #[tokio::test]
    async fn a_clone_can_be_configured_and_shares_the_sessions() {
        let store = MemoryStore::new();
        let small = store.clone().max_data_size(8);
        create_one(&store).await;
        assert_eq!(small.lock().records.len(), 1, "one set of sessions");
        let mut big = Record {
            id: Id::default(),
            data: [("k".to_owned(), serde_json::json!("a value over 8 bytes"))].into(),
            expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        };
        assert!(matches!(
            small.create_inner(&mut big),
            Err(Error::TooLarge { max: 8, .. })
        ));
        store.create_inner(&mut big).unwrap();
        assert!(small.load_inner(&big.id).unwrap().is_some());
    }

    /// Sweeps run when the store doubles (from 1024 up), so it holds at most about twice its
    /// live sessions.
    #[tokio::test(start_paused = true)]
    async fn expired_sessions_are_swept_as_the_store_grows() {
        let store = MemoryStore::new().idle_timeout(Duration::from_secs(1));
        for _ in 0..1500 {
            create_one(&store).await;
        }
        assert_eq!(store.lock().records.len(), 1500);
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..600 {
            create_one(&store).await;
        }
        let left = store.lock().records.len();
        assert!(left <= 600, "expired records were swept: {left}");
    }
}
