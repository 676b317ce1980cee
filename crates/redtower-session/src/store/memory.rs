//! [`MemoryStore`]: the same semantics as [`RedisStore`](crate::RedisStore), in process.

use std::{
    collections::{BTreeSet, HashMap},
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

use super::{
    Policy, from_unix_ms, ms, to_store_error, unix_ms,
    watch::{SessionWatch, Watches},
};
use crate::{
    Error, Result, SessionInfo, UserSessions,
    keys::{Keys, valid_handle},
    user::{Binding, binding_of},
};

/// A [`SessionStore`] in process memory with the same semantics as
/// [`RedisStore`](crate::RedisStore): NX create, XX save, idle and absolute timeouts, size cap,
/// and the per-user index with epoch revocation of [`UserSessions`].
///
/// For single-instance apps, development and tests. Its clock is `tokio::time`, so tests can
/// pause and advance time. Expired entries are swept as the store grows. Cloning is cheap and
/// clones share the sessions.
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

struct Inner {
    keys: Keys,
    policy: Policy,
    base_ms: i64,
    base: Instant,
    state: Mutex<State>,
    watches: OnceLock<Arc<Watches>>,
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

/// A user's sessions by handle, ordered by expiry (like the Redis ZSET): pruning and eviction
/// take the soonest-expiring entries without scanning the rest.
#[derive(Default)]
struct Index {
    score: HashMap<String, i64>,
    order: BTreeSet<(i64, String)>,
}

impl Index {
    fn len(&self) -> usize {
        self.score.len()
    }

    fn is_empty(&self) -> bool {
        self.score.is_empty()
    }

    fn insert(&mut self, handle: String, e: i64) {
        if let Some(old) = self.score.insert(handle.clone(), e) {
            self.order.remove(&(old, handle.clone()));
        }
        self.order.insert((e, handle));
    }

    /// Sets the score of an indexed handle (`ZADD XX`).
    fn update(&mut self, handle: &str, e: i64) {
        if self.score.contains_key(handle) {
            self.insert(handle.to_owned(), e);
        }
    }

    fn remove(&mut self, handle: &str) -> bool {
        match self.score.remove(handle) {
            Some(old) => {
                self.order.remove(&(old, handle.to_owned()));
                true
            }
            None => false,
        }
    }

    /// Drops the entries that expired by `now` (`ZREMRANGEBYSCORE -inf now`).
    fn prune(&mut self, now: i64) {
        while self.order.first().is_some_and(|(e, _)| *e <= now) {
            if let Some((_, h)) = self.order.pop_first() {
                self.score.remove(&h);
            }
        }
    }

    /// The soonest-expiring handle other than `keep`.
    fn first_except(&self, keep: &str) -> Option<String> {
        self.order
            .iter()
            .map(|(_, h)| h)
            .find(|h| h.as_str() != keep)
            .cloned()
    }

    /// The handles, soonest-expiring first.
    fn handles(&self) -> Vec<String> {
        self.order.iter().map(|(_, h)| h.clone()).collect()
    }

    fn drain(&mut self) -> Vec<String> {
        self.score.clear();
        std::mem::take(&mut self.order)
            .into_iter()
            .map(|(_, h)| h)
            .collect()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("policy", &self.inner.policy)
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
                keys: Keys::new(&redtower_client::Keyspace::default(), &secret),
                policy: Policy::default(),
                base_ms: unix_ms(time::OffsetDateTime::now_utc()),
                base: Instant::now(),
                state: Mutex::default(),
                watches: OnceLock::new(),
            }),
        }
    }

    fn policy_mut(&mut self) -> &mut Policy {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => &mut inner.policy,
            None => panic!("configure a MemoryStore before cloning it"),
        }
    }

    /// See [`RedisStore::idle_timeout`](crate::RedisStore::idle_timeout). Defaults to none.
    ///
    /// # Panics
    ///
    /// If the store was already cloned (configure it first).
    #[must_use]
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.policy_mut().idle = Some(idle);
        self
    }

    /// See [`RedisStore::absolute_timeout`](crate::RedisStore::absolute_timeout). Defaults to
    /// 7 days.
    ///
    /// # Panics
    ///
    /// If the store was already cloned.
    #[must_use]
    pub fn absolute_timeout(mut self, absolute: Duration) -> Self {
        self.policy_mut().absolute = absolute;
        self
    }

    /// See [`RedisStore::max_data_size`](crate::RedisStore::max_data_size). Defaults to 16 KiB.
    ///
    /// # Panics
    ///
    /// If the store was already cloned.
    #[must_use]
    pub fn max_data_size(mut self, bytes: usize) -> Self {
        self.policy_mut().max_data = bytes;
        self
    }

    /// See [`RedisStore::touch_interval`](crate::RedisStore::touch_interval). Defaults to 1 s.
    ///
    /// # Panics
    ///
    /// If the store was already cloned.
    #[must_use]
    pub fn touch_interval(mut self, interval: Duration) -> Self {
        self.policy_mut().touch_interval = interval;
        self
    }

    /// See [`RedisStore::max_sessions_per_user`](crate::RedisStore::max_sessions_per_user).
    /// Defaults to 100.
    ///
    /// 0 is taken as 1.
    ///
    /// # Panics
    ///
    /// If the store was already cloned.
    #[must_use]
    pub fn max_sessions_per_user(mut self, max: usize) -> Self {
        self.policy_mut().max_per_user = max.max(1);
        self
    }

    /// See [`RedisStore::max_watches`](crate::RedisStore::max_watches). Defaults to 10,000.
    ///
    /// # Panics
    ///
    /// If the store was already cloned.
    #[must_use]
    pub fn max_watches(mut self, max: usize) -> Self {
        self.policy_mut().max_watches = max;
        self
    }

    /// See [`RedisStore::watch_interval`](crate::RedisStore::watch_interval). Defaults to
    /// 250 ms.
    ///
    /// # Panics
    ///
    /// If the store was already cloned.
    #[must_use]
    pub fn watch_interval(mut self, interval: Duration) -> Self {
        self.policy_mut().watch_interval = interval;
        self
    }

    /// How many sessions are watched now (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.inner.watches.get().map_or(0, |w| w.len())
    }

    /// How many index entries `user` has (live or not yet pruned). For tests of the cap.
    pub fn index_len(&self, user: &str) -> usize {
        self.lock().users.get(user).map_or(0, |u| u.index.len())
    }

    /// How many session records the store holds (live or not yet swept).
    pub fn records(&self) -> usize {
        self.lock().records.len()
    }

    /// How many users have an index entry (live or not yet pruned). For tests of index hygiene.
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
    /// Redis expires them). For tests of index hygiene.
    pub fn has_index(&self, user: &str) -> bool {
        let now = self.now();
        let mut st = self.lock();
        st.users.get_mut(user).is_some_and(|u| {
            u.index.prune(now);
            !u.index.is_empty()
        })
    }

    fn now(&self) -> i64 {
        self.inner.base_ms + ms(self.inner.base.elapsed())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
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
        let Inner { keys, policy, .. } = &*self.inner;
        let max = policy.max_per_user;
        let binding = binding_of(&record.data);
        let data = policy.encode(&record.data)?;
        let now = self.now();
        let x = now.saturating_add(ms(policy.absolute));
        let e = policy.expiry(unix_ms(record.expiry_date), x, now);
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
        let mut evicted = Vec::new();
        let bound = binding.map(|b| {
            let u = st.users.entry(b.user.clone()).or_default();
            if u.epoch_until <= now {
                // The epoch expired with the user's last session.
                u.epoch = 0;
            }
            u.index.prune(now);
            u.index.insert(handle.clone(), e);
            // The cap: revoke the soonest-expiring sessions beyond it (never the new one).
            while u.index.len() > max {
                let Some(old) = u.index.first_except(&handle) else {
                    break;
                };
                u.index.remove(&old);
                evicted.push(old);
            }
            u.epoch_until = u.epoch_until.max(e);
            let g = u.epoch;
            (b, g)
        });
        for old in evicted {
            st.records.remove(&old);
        }
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
        let Inner { keys, policy, .. } = &*self.inner;
        let handle = keys.handle(id);
        let now = self.now();
        let mut st = self.lock();
        let Some(rec) = st.live(&handle, now) else {
            return Ok(None);
        };
        let mut reindex = None;
        if now - rec.a >= ms(policy.touch_interval) {
            rec.a = now;
            if let Some(idle) = policy.idle {
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
        let Inner { keys, policy, .. } = &*self.inner;
        let data = policy.encode(&record.data)?;
        let handle = keys.handle(&record.id);
        let now = self.now();
        let mut st = self.lock();
        let Some(rec) = st.live(&handle, now) else {
            return Err(Error::Gone);
        };
        let e = policy.expiry(unix_ms(record.expiry_date), rec.x, now);
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
        let handle = self.inner.keys.handle(id);
        self.lock().kill(&handle);
        Ok(())
    }
}

#[async_trait]
impl UserSessions for MemoryStore {
    fn handle(&self, id: &Id) -> String {
        self.inner.keys.handle(id)
    }

    async fn list(&self, user: &str, current: Option<Id>) -> Result<Vec<SessionInfo>> {
        let now = self.now();
        let current = current.map(|id| self.inner.keys.handle(&id));
        let mut st = self.lock();
        let handles: Vec<String> = match st.users.get_mut(user) {
            Some(u) => {
                u.index.prune(now);
                u.index.handles()
            }
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for h in handles {
            let Some(rec) = st.live(&h, now) else {
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
                user_agent: meta.user_agent,
                ip: meta.ip,
                handle: h,
            });
        }
        out.sort_by_key(|i| i.created_at);
        Ok(out)
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
        }
        Ok(owned)
    }

    async fn revoke_all(&self, user: &str) -> Result<u64> {
        let now = self.now();
        let absolute = ms(self.inner.policy.absolute);
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
        Ok(n)
    }

    async fn revoke_others(&self, user: &str, current: &Id) -> Result<u64> {
        let now = self.now();
        let absolute = ms(self.inner.policy.absolute);
        let keep = self.inner.keys.handle(current);
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
        Ok(n)
    }

    fn watch(&self, id: &Id) -> Result<SessionWatch> {
        let Inner {
            policy, watches, ..
        } = &*self.inner;
        let watches =
            watches.get_or_init(|| Watches::new(policy.max_watches, policy.watch_interval));
        watches.watch(*id, || {
            let store = Arc::downgrade(&self.inner);
            Box::new(move |ids: Vec<Id>| {
                let answer = store.upgrade().map(|inner| {
                    let store = MemoryStore { inner };
                    let handles: Vec<String> =
                        ids.iter().map(|id| store.inner.keys.handle(id)).collect();
                    let now = store.now();
                    let st = store.lock();
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
