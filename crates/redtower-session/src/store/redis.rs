//! [`RedisStore`]: sessions in Redis, one Lua script (one round trip) per operation.

use std::{
    sync::{Arc, LazyLock, OnceLock},
    time::Duration,
};

use async_trait::async_trait;
use fred::{
    error::{Error as FredError, ErrorKind as FredErrorKind},
    types::Value,
};
use redtower_client::{
    Key, Redis, Script,
    batch::{Coalescer, Uncoalesced},
};
use tower_sessions_core::{
    SessionStore,
    session::{Id, Record},
    session_store,
};

use super::{SessionBackend, Settings, from_unix_ms, ms, to_store_error, unix_ms};
use crate::{
    ConfigError, Error, Result, SessionInfo, SessionMeta, UserSessions,
    keys::{Keys, bucket_of, valid_handle},
    telemetry,
    user::binding_of,
    watch::{SessionWatch, Watches},
};

mod alive;
mod loads;
mod near;

use alive::alive_batch;
use loads::{Loaded, Loads, MAX_BATCH, load_batch, short_reply};

macro_rules! script {
    ($name:ident, $file:literal) => {
        static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(
                concat!("session_", $file),
                concat!(
                    include_str!("../lua/common.lua"),
                    include_str!(concat!("../lua/", $file, ".lua"))
                ),
            )
        });
    };
}

script!(LOAD, "load");
script!(SAVE, "save");
script!(CREATE, "create");
script!(DELETE, "delete");
script!(LIST, "list");
script!(REVOKE, "revoke");
script!(REVOKE_ALL, "revoke_all");
script!(REVOKE_OTHERS, "revoke_others");
script!(ALIVE, "alive");

const CREATE_ATTEMPTS: usize = 8;

/// A [`SessionBackend`] in Redis, with the per-user index of [`UserSessions`]; also a drop-in
/// `tower-sessions` [`SessionStore`].
///
/// * Keys: `<prefix>:s:{<bucket>}:<HMAC(id)>` for a record (a HASH), and for each user
///   `<prefix>:s:{<bucket>}:u:<user>` (index, a ZSET scored by expiry) and
///   `<prefix>:s:{<bucket>}:g:<user>` (revocation epoch). A logged-in session's id carries its
///   user's bucket, so the record, index and epoch share a Cluster slot and every operation is
///   one atomic script.
/// * `create` never overwrites (it rolls a new id on collision), `save` only updates a live,
///   unrevoked record (a concurrent logout or revocation is never undone), `load` of a
///   missing, expired or revoked session is `None`.
/// * TTLs are set with millisecond precision (`PEXPIREAT`) from the record's expiry, capped by
///   the absolute timeout and the idle timeout; time is Redis `TIME`.
///
/// Cloning is cheap.
///
/// ```no_run
/// use std::time::Duration;
/// use redtower_client::{Redis, RedisConfig};
/// use redtower_session::RedisStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::new(RedisConfig::from_env()?)?;
/// let secret = std::env::var("SESSION_KEY_SECRET")?; // at least 32 bytes
/// let store = RedisStore::new(redis, secret.as_bytes())?
///     .idle_timeout(Duration::from_secs(30 * 60))
///     .absolute_timeout(Duration::from_secs(12 * 3600));
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    redis: Redis,
    keys: Keys,
    settings: Settings,
    /// Loads queued by concurrent requests, sent as one script call per slot (started on the
    /// first load, with the settings of that moment; a settings change starts a new one).
    loads: OnceLock<Arc<Loads>>,
    /// Whether loads are coalesced at all.
    coalesce: bool,
    /// Revocation watches (started on the first watch; a setting change starts new ones).
    watches: OnceLock<Arc<Watches>>,
    /// The tracked in-process tier, when turned on.
    near: Option<near::SessionTier>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("redis", &self.inner.redis)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// The shortest secret [`new`](Self::new) accepts, in bytes.
    pub const MIN_SECRET_LEN: usize = 32;

    /// A store on `redis`, deriving keys and handles from session ids with HMAC-SHA256 keyed by
    /// `secret`. Every instance of an app must use the same secret; changing it logs everyone
    /// out.
    ///
    /// # Errors
    ///
    /// [`ConfigError::SecretTooShort`] (in [`Error::Config`]) when `secret` is shorter than
    /// [`MIN_SECRET_LEN`](Self::MIN_SECRET_LEN) bytes.
    pub fn new(redis: Redis, secret: impl AsRef<[u8]>) -> Result<Self> {
        let secret = secret.as_ref();
        if secret.len() < Self::MIN_SECRET_LEN {
            return Err(ConfigError::SecretTooShort {
                len: secret.len(),
                min: Self::MIN_SECRET_LEN,
            }
            .into());
        }
        let keys = Keys::new(redis.keyspace(), secret);
        Ok(Self {
            inner: Arc::new(Inner {
                redis,
                keys,
                settings: Settings::default(),
                loads: OnceLock::new(),
                coalesce: true,
                watches: OnceLock::new(),
                near: None,
            }),
        })
    }

    /// Puts a coherent in-process tier in front of session loads (see
    /// [`NearCache`](redtower_client::NearCache)). `None` turns it off (the default).
    ///
    /// A load is answered in process when this instance read the record (and its user's
    /// revocation epoch) on its tracked connection and Redis has not reported either changed
    /// since, and the load script would change nothing (no touch due: see
    /// [`touch_interval`](Self::touch_interval)); otherwise the load script runs as without a
    /// tier. A record served so is also kept decoded (parsed), by session id, under a stamp of
    /// its record key and its user's epoch key: a repeated load derives no key and parses
    /// nothing, and the stamp ends exactly when the raw tier would drop either key. Decoded
    /// records have a budget of their own, the size of the tier's (about twice their JSON each).
    /// Consistency with the tier on:
    ///
    /// * a save, logout, revoke, revoke-all or revoke-others through *this* store drops the
    ///   session (or the user's epoch) from this instance's tier before the call returns;
    /// * the same on another instance reaches this tier with Redis' invalidation push, sent
    ///   when the change is made, so a request here is refused from the moment the push is
    ///   applied (one push delay after the revoking call's reply; on loopback well under a
    ///   millisecond). A request already being answered from the tier at that moment
    ///   completes, as one that read Redis just before the revocation would;
    /// * while tracking is not established (start-up, a lost or re-made connection, a Cluster
    ///   topology change) the tier is empty and every load runs the script;
    /// * on a server without RESP3 or `CLIENT TRACKING` the tier turns itself off with one
    ///   warning.
    ///
    /// Must be called inside a Tokio runtime (the tier's connection starts at once).
    ///
    /// # Errors
    ///
    /// When the tier's client cannot be built.
    pub fn near_cache(mut self, config: Option<redtower_client::NearCacheConfig>) -> Result<Self> {
        let tier = match config {
            Some(config) => Some(near::SessionTier::new(&self.inner.redis, config)?),
            None => None,
        };
        Arc::make_mut(&mut self.inner).near = tier;
        Ok(self)
    }

    /// The tracked tier, when [turned on](Self::near_cache): for its statistics and state.
    pub fn near(&self) -> Option<&redtower_client::NearCache<impl Clone + Send + Sync + 'static>> {
        self.inner.near.as_ref().map(near::SessionTier::cache)
    }

    /// Drops `key` from this instance's tier at once (after a write of this store).
    fn forget(&self, key: &Key) {
        if let Some(tier) = &self.inner.near {
            tier.forget(key);
        }
    }

    fn settings_mut(&mut self) -> &mut Settings {
        let inner = Arc::make_mut(&mut self.inner);
        inner.loads = OnceLock::new();
        inner.watches = OnceLock::new();
        &mut inner.settings
    }

    fn loads(&self) -> &Loads {
        self.inner.loads.get_or_init(|| {
            let redis = self.inner.redis.clone();
            let args = self.load_args();
            Arc::new(Coalescer::new(MAX_BATCH, move |batch: Vec<Key>| {
                let redis = redis.clone();
                async move { load_batch(&redis, args, batch).await }
            }))
        })
    }

    /// Sliding idle timeout: a session not used for this long expires, and every read or write
    /// pushes its expiry forward (reads do it without rewriting the record). Defaults to none
    /// (the record's own expiry, from [`SessionLayer::expiry`](crate::SessionLayer::expiry), is used
    /// as is).
    #[must_use]
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.settings_mut().idle = Some(idle);
        self
    }

    /// Absolute timeout: no activity extends a session beyond this much time after it was
    /// created (login). Defaults to 7 days.
    #[must_use]
    pub fn absolute_timeout(mut self, absolute: Duration) -> Self {
        self.settings_mut().absolute = absolute;
        self
    }

    /// The largest serialized session data accepted, in bytes; a bigger save fails. Defaults to
    /// 16 KiB.
    #[must_use]
    pub fn max_data_size(mut self, bytes: usize) -> Self {
        self.settings_mut().max_data = bytes;
        self
    }

    /// Whether concurrent loads are coalesced (default `true`): the loads that requests make
    /// while another load of this store is in flight leave together as one script call (one
    /// per hash slot on a Cluster, at most 64), which loads them one after another; a session
    /// asked for by several of them (one browser's parallel requests) is read once and its
    /// answer shared. A lone load leaves at once. Off, every load is its own script call.
    #[must_use]
    pub fn coalesce_loads(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.inner).coalesce = on;
        self
    }

    /// A read updates "last seen" and slides the idle timeout at most once per this interval.
    /// Defaults to 1 second.
    #[must_use]
    pub fn touch_interval(mut self, interval: Duration) -> Self {
        self.settings_mut().touch_interval = interval;
        self
    }

    /// The most sessions one user has at once. Logging in beyond it revokes the user's session
    /// that expires soonest (the oldest one; with an idle timeout, the least recently used),
    /// in the same atomic step, so the index, [`list`](UserSessions::list) and
    /// [`revoke_all`](UserSessions::revoke_all) never handle more than this many entries and a
    /// flood of logins for one user cannot grow Redis. Defaults to 100; 0 is taken as 1.
    ///
    /// ```
    /// use redtower_session::MemoryStore;
    ///
    /// let store = MemoryStore::new().max_sessions_per_user(5);
    /// # let _ = store;
    /// ```
    #[must_use]
    pub fn max_sessions_per_user(mut self, max: usize) -> Self {
        self.settings_mut().max_per_user = max.max(1);
        self
    }

    /// The most sessions watched at once through [`UserSessions::watch`]; one more watch fails
    /// with [`Error::TooManyWatches`]. Defaults to 10,000.
    #[must_use]
    pub fn max_watches(mut self, max: usize) -> Self {
        self.settings_mut().max_watches = max;
        self
    }

    /// How often the watched sessions are checked, all of them together (one round trip on a
    /// standalone server, two on a Cluster): a [`UserSessions::watch`] resolves within about
    /// this much time plus the check after its session ends. Defaults to 250 ms.
    #[must_use]
    pub fn watch_interval(mut self, interval: Duration) -> Self {
        self.settings_mut().watch_interval = interval;
        self
    }

    /// How many sessions are watched now (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.inner.watches.get().map_or(0, |w| w.len())
    }

    /// The Redis handle.
    pub fn redis(&self) -> &Redis {
        &self.inner.redis
    }

    /// The key of the record of session `id` (for inspection and operations).
    pub fn record_key(&self, id: &Id) -> Key {
        self.inner.keys.record(id)
    }

    /// The key of `user`'s session index (a ZSET of handles scored by expiry in ms).
    pub fn index_key(&self, user: &str) -> Key {
        self.inner.keys.index(user)
    }

    /// The key of `user`'s revocation epoch.
    pub fn epoch_key(&self, user: &str) -> Key {
        self.inner.keys.epoch(user)
    }

    async fn create_inner(&self, record: &mut Record) -> Result<()> {
        self.create_with(record, Keys::new_id).await
    }

    /// Waits for the first connection of a fresh handle (a process that just started is not in
    /// an outage); at once afterwards.
    async fn ready(&self) -> Result<()> {
        self.inner.redis.first_connection().await?;
        Ok(())
    }

    /// `create` with the ids drawn by `next_id` (from the bucket asked for): ids are random in
    /// production; tests draw colliding ones.
    async fn create_with(
        &self,
        record: &mut Record,
        mut next_id: impl FnMut(u16) -> Id,
    ) -> Result<()> {
        let Inner {
            redis,
            keys,
            settings,
            ..
        } = &*self.inner;
        let binding = binding_of(&record.data);
        let data = settings.encode(&record.data)?;
        let wanted = unix_ms(record.expiry_date);
        self.ready().await?;
        for _ in 0..CREATE_ATTEMPTS {
            let bucket = match &binding {
                Some(b) => keys.user_bucket(&b.user),
                None => rand::random::<u16>() >> 2,
            };
            let id = next_id(bucket);
            let handle = keys.handle(&id);
            let mut key_list = vec![keys.record_by_handle(bucket_of(&id), &handle)];
            let mut args: Vec<Value> = vec![
                data.clone().into(),
                wanted.into(),
                settings.idle_ms().into(),
                ms(settings.absolute).into(),
                handle.into(),
                // The creation token that makes a re-send of this call harmless.
                format!("{:032x}", rand::random::<u128>()).into(),
                settings.max_per_user_arg().into(),
            ];
            if let Some(b) = &binding {
                key_list.push(keys.epoch(&b.user));
                key_list.push(keys.index(&b.user));
                args.push(b.user.clone().into());
                args.push(serde_json::to_string(&b.meta)?.into());
            }
            let reply: String = CREATE.run(redis, key_list, args).await?;
            if reply == "COLLISION" {
                tracing::warn!(target: "redtower::session", "session id collision; retrying");
                continue;
            }
            record.id = id;
            if let Ok(e) = reply.parse::<i64>() {
                record.expiry_date = from_unix_ms(e);
            }
            return Ok(());
        }
        Err(Error::Collision)
    }

    /// Loads coalesce (see [`coalesce_loads`](Self::coalesce_loads)); each request still waits
    /// for one round trip.
    async fn load_inner(&self, id: &Id) -> Result<Option<Record>> {
        let touch_ms = ms(self.inner.settings.touch_interval);
        if let Some(record) = self
            .inner
            .near
            .as_ref()
            .and_then(|t| t.decoded(id, touch_ms))
        {
            return Ok(Some(record));
        }
        let key = self.inner.keys.record(id);
        if !self.inner.redis.has_connected() {
            Box::pin(self.ready()).await?;
        }
        if let Some(tier) = &self.inner.near {
            match Box::pin(tier.load(&key, touch_ms)).await {
                Ok(near::Found::Hit(fields, stamp)) => {
                    let record = Record {
                        id: *id,
                        data: serde_json::from_str(&fields.data)?,
                        expiry_date: from_unix_ms(fields.expiry),
                    };
                    if let Some(stamp) = stamp {
                        tier.keep(&record, &fields, stamp);
                    }
                    return Ok(Some(record));
                }
                Ok(near::Found::Missing) => return Ok(None),
                // The script decides (and touches, or deletes a revoked session).
                Ok(near::Found::Script) => {}
                Err(e) => return Err(Error::Redis(e.into())),
            }
        }
        let loaded = if self.inner.coalesce {
            match self.loads().call(key).await {
                Ok(r) => r,
                // Not queued (no runtime for the queue's task): load it on its own.
                Err(Uncoalesced::NotSent(key)) => Box::pin(self.load_alone(key)).await,
                Err(Uncoalesced::Dropped) => Err(FredError::new(
                    FredErrorKind::Canceled,
                    "the session load's batch was dropped",
                )),
            }
        } else {
            Box::pin(self.load_alone(key)).await
        };
        let Some((data, expiry)) = loaded.map_err(|e| Error::Redis(e.into()))? else {
            return Ok(None);
        };
        Ok(Some(Record {
            id: *id,
            data: serde_json::from_str(&data)?,
            expiry_date: from_unix_ms(expiry.parse().unwrap_or(0)),
        }))
    }

    /// The load script's arguments: idle timeout and touch interval, in ms.
    fn load_args(&self) -> [i64; 2] {
        [
            self.inner.settings.idle_ms(),
            ms(self.inner.settings.touch_interval),
        ]
    }

    async fn load_alone(&self, key: Key) -> Loaded {
        load_batch(&self.inner.redis, self.load_args(), vec![key])
            .await
            .pop()
            .unwrap_or_else(|| Err(short_reply()))
    }

    async fn save_inner(&self, record: &Record) -> Result<()> {
        let Inner {
            redis,
            keys,
            settings,
            ..
        } = &*self.inner;
        let data = settings.encode(&record.data)?;
        self.ready().await?;
        let key = keys.record(&record.id);
        let reply: Result<String> = SAVE
            .run(
                redis,
                vec![key.clone()],
                vec![
                    Value::from(data),
                    unix_ms(record.expiry_date).into(),
                    settings.idle_ms().into(),
                ],
            )
            .await
            .map_err(Error::from);
        // Also on an error: the script may have run.
        self.forget(&key);
        let reply = reply?;
        if reply == "GONE" {
            return Err(Error::Gone);
        }
        Ok(())
    }

    async fn delete_inner(&self, id: &Id) -> Result<()> {
        let Inner { redis, keys, .. } = &*self.inner;
        self.ready().await?;
        let key = keys.record(id);
        let deleted: redtower_client::Result<i64> = DELETE
            .run(redis, vec![key.clone()], Vec::<Value>::new())
            .await;
        self.forget(&key);
        deleted?;
        Ok(())
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.create_inner(record).await.map_err(to_store_error)
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.save_inner(record).await.map_err(to_store_error)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        self.load_inner(id).await.map_err(to_store_error)
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.delete_inner(id).await.map_err(to_store_error)
    }
}

#[async_trait]
impl SessionBackend for RedisStore {
    async fn create_record(&self, record: &mut Record) -> Result<()> {
        self.create_inner(record).await
    }

    async fn save_record(&self, record: &Record) -> Result<()> {
        self.save_inner(record).await
    }

    async fn load_record(&self, id: &Id) -> Result<Option<Record>> {
        self.load_inner(id).await
    }

    async fn delete_record(&self, id: &Id) -> Result<()> {
        self.delete_inner(id).await
    }

    fn connections(&self) -> u64 {
        self.redis().connections()
    }

    fn has_connected(&self) -> bool {
        self.redis().has_connected()
    }
}

fn parse_i64(s: &str) -> i64 {
    s.parse().unwrap_or(0)
}

#[async_trait]
impl UserSessions for RedisStore {
    fn handle(&self, id: &Id) -> String {
        self.inner.keys.handle(id)
    }

    async fn list(&self, user: &str, current: Option<Id>) -> Result<Vec<SessionInfo>> {
        Ok(self.list_and_expired(user, current).await?.0)
    }

    async fn list_and_expired(
        &self,
        user: &str,
        current: Option<Id>,
    ) -> Result<(Vec<SessionInfo>, Vec<String>)> {
        let Inner {
            redis,
            keys,
            settings,
            ..
        } = &*self.inner;
        self.ready().await?;
        let reply: Vec<Value> = LIST
            .run(
                redis,
                vec![keys.index(user), keys.epoch(user)],
                vec![
                    Value::from(keys.record_prefix(keys.user_bucket(user))),
                    settings.max_per_user_arg().into(),
                ],
            )
            .await?;
        let mut reply = reply.into_iter();
        let rows: Vec<Vec<String>> = match reply.next() {
            Some(v) => v.convert().map_err(redtower_client::Error::from)?,
            None => Vec::new(),
        };
        let expired: Vec<String> = match reply.next() {
            Some(v) => v.convert().map_err(redtower_client::Error::from)?,
            None => Vec::new(),
        };
        let current = current.map(|id| keys.handle(&id));
        let mut out: Vec<SessionInfo> = rows
            .into_iter()
            .filter_map(|row| <[String; 5]>::try_from(row).ok())
            .map(|[handle, c, a, e, m]| {
                let meta: SessionMeta = serde_json::from_str(&m).unwrap_or_default();
                SessionInfo {
                    current: current.as_deref() == Some(handle.as_str()),
                    handle,
                    created_at: from_unix_ms(parse_i64(&c)),
                    last_seen_at: from_unix_ms(parse_i64(&a)),
                    expires_at: from_unix_ms(parse_i64(&e)),
                    device: meta.device(),
                    user_agent: meta.user_agent,
                    ip: meta.ip,
                }
            })
            .collect();
        out.sort_by_key(|i| i.created_at);
        Ok((out, expired))
    }

    async fn revoke(&self, user: &str, handle: &str) -> Result<bool> {
        if !valid_handle(handle) {
            return Ok(false);
        }
        let Inner { redis, keys, .. } = &*self.inner;
        let bucket = keys.user_bucket(user);
        self.ready().await?;
        let record = keys.record_by_handle(bucket, handle);
        let n: redtower_client::Result<i64> = REVOKE
            .run(
                redis,
                vec![record.clone(), keys.index(user)],
                vec![user.to_owned()],
            )
            .await;
        self.forget(&record);
        let n = n?;
        if n == 1 {
            telemetry::revoked("one", 1);
        }
        Ok(n == 1)
    }

    async fn revoke_all(&self, user: &str) -> Result<u64> {
        let Inner {
            redis,
            keys,
            settings,
            ..
        } = &*self.inner;
        self.ready().await?;
        let epoch = keys.epoch(user);
        let n: redtower_client::Result<i64> = REVOKE_ALL
            .run(
                redis,
                vec![epoch.clone(), keys.index(user)],
                vec![
                    Value::from(keys.record_prefix(keys.user_bucket(user))),
                    ms(settings.absolute).into(),
                    settings.max_per_user_arg().into(),
                ],
            )
            .await;
        // Every cached session of the user is checked against this epoch.
        self.forget(&epoch);
        let n = u64::try_from(n?).unwrap_or(0);
        telemetry::revoked("all", n);
        Ok(n)
    }

    async fn revoke_others(&self, user: &str, current: &Id) -> Result<u64> {
        let Inner {
            redis,
            keys,
            settings,
            ..
        } = &*self.inner;
        let bucket = keys.user_bucket(user);
        // A current id of another bucket cannot be this user's session: nothing to keep, and
        // the record key must share the user's slot, so a key of the bucket that exists for no
        // session stands in for it.
        let current = if bucket_of(current) == bucket {
            keys.record(current)
        } else {
            keys.record_by_handle(bucket, "none")
        };
        self.ready().await?;
        let epoch = keys.epoch(user);
        let forget = [epoch.clone(), current.clone()];
        let n: redtower_client::Result<i64> = REVOKE_OTHERS
            .run(
                redis,
                vec![epoch, keys.index(user), current],
                vec![
                    Value::from(keys.record_prefix(bucket)),
                    ms(settings.absolute).into(),
                    user.to_owned().into(),
                    settings.max_per_user_arg().into(),
                ],
            )
            .await;
        for key in &forget {
            self.forget(key);
        }
        let n = u64::try_from(n?).unwrap_or(0);
        telemetry::revoked("others", n);
        Ok(n)
    }

    fn watch(&self, id: &Id) -> Result<SessionWatch> {
        let Inner {
            redis,
            keys,
            settings,
            watches,
            ..
        } = &*self.inner;
        let watches =
            watches.get_or_init(|| Watches::new(settings.max_watches, settings.watch_interval));
        watches.watch(*id, || {
            let redis = redis.clone();
            let keys = keys.clone();
            Box::new(move |ids: Vec<Id>| {
                let redis = redis.clone();
                let keys: Vec<Key> = ids.iter().map(|id| keys.record(id)).collect();
                Box::pin(async move { alive_batch(&redis, keys).await })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request's load future is moved (into `async_trait`'s box, then into the
    /// awaiting state); fred's futures are kilobytes, so only the rare uncoalesced path holds
    /// them, boxed.
    #[tokio::test]
    async fn a_coalesced_load_future_stays_small() {
        let config = redtower_client::RedisConfig::from_url("redis://127.0.0.1:1").unwrap();
        let store = RedisStore::new(Redis::new(config).unwrap(), [7u8; 32]).unwrap();
        let id = Id(1);
        let load = store.load_inner(&id);
        assert!(
            std::mem::size_of_val(&load) <= 512,
            "{} bytes",
            std::mem::size_of_val(&load)
        );
    }

    /// `create` never overwrites: an id that is taken is drawn again, and after
    /// `CREATE_ATTEMPTS` taken ids the create fails, the existing session untouched.
    #[tokio::test]
    async fn create_draws_again_when_the_id_is_taken() {
        let config = redtower_client::RedisConfig::from_url(&redtower_testkit::shared_url())
            .unwrap()
            .key_prefix(redtower_testkit::unique_prefix("session-unit"));
        let redis = Redis::new(config).unwrap();
        redis.wait_ready(Duration::from_secs(10)).await.unwrap();
        let store = RedisStore::new(redis, [7u8; 32]).unwrap();
        let record = |who: &str| Record {
            id: Id::default(),
            data: [("who".to_owned(), serde_json::json!(who))].into(),
            expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        };
        let mut first = record("first");
        store.create(&mut first).await.unwrap();
        let taken = first.id;

        let mut drawn = Vec::new();
        let mut second = record("second");
        store
            .create_with(&mut second, |bucket| {
                let id = if drawn.is_empty() {
                    taken
                } else {
                    Keys::new_id(bucket)
                };
                drawn.push(id);
                id
            })
            .await
            .unwrap();
        assert_eq!(drawn.len(), 2, "drawn again after the collision");
        assert_eq!(second.id, drawn[1]);
        assert_ne!(second.id, taken);

        let mut third = record("third");
        let err = store.create_with(&mut third, |_| taken).await.unwrap_err();
        assert!(matches!(err, Error::Collision), "{err:?}");

        for (id, who) in [(taken, "first"), (second.id, "second")] {
            let loaded = store.load(&id).await.unwrap().unwrap();
            assert_eq!(loaded.data["who"], serde_json::json!(who));
        }
    }

    #[test]
    fn scripts_compile_in() {
        assert!(LOAD.sha1().len() == 40);
        let _ = bucket_of(&Id(0));
    }
}
