//! [`RedisStore`]: the shared backend. One `GET` per hit, Lua for fenced fills.

use std::{
    fmt,
    future::Future,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use bytes::Bytes;
use redtower_client::{
    Key, Namespace, NearCache, NearCacheConfig, Redis, Script, Stamp,
    fred::{
        interfaces::{ClientLike, KeysInterface, SetsInterface, SortedSetsInterface},
        types::{Expiration, SetOptions, Value, config::Options},
    },
};

use super::{CacheStore, EntryKey, LockToken, Lookup, lookup_each, new_generation, ttl_ms};
use crate::{Error, Result};

mod bans;
mod reads;

use reads::Reads;

static PUT: LazyLock<Script> =
    LazyLock::new(|| Script::new("cache_put", include_str!("../lua/put.lua")));
static UNLOCK: LazyLock<Script> =
    LazyLock::new(|| Script::new("cache_unlock", include_str!("../lua/unlock.lua")));
static ENSURE_TAG: LazyLock<Script> =
    LazyLock::new(|| Script::new("cache_ensure_tag", include_str!("../lua/ensure_tag.lua")));

/// The Redis [`CacheStore`]: entries shared by every instance, Cluster-safe.
///
/// Keys (prefix `rt` by default, from the [`Redis`] handle's keyspace):
///
/// | key | what | TTL |
/// | --- | --- | --- |
/// | `rt:c:{<h>}` | an entry (binary envelope); `<h>` = hash of the cache-aside key or URI | fresh + stale windows |
/// | `rt:c:{<h>}:<v>` | one variant of a response that varies on request headers | same |
/// | `rt:c:{<h>}:ix` | the variants of `<h>` (for invalidation and the [`max_variants`](Self::max_variants) bound): a sorted set scored by each variant's expiry, unix ms | longest variant |
/// | `rt:c:{<h>}[:<v>]:lk` | the fill lock (`SET NX PX`, fencing token) | lock TTL |
/// | `rt:c:t:{<tag>}` | a tag's generation | longest entry filled under it |
/// | `rt:c:b:{bans}` | the version of the prefix ban list (`<version>:<horizon>`), read with each entry by a cache with [`prefix_purge`](crate::CacheBuilder::prefix_purge) | [`Cache::MAX_TTL`](crate::Cache::MAX_TTL) after the last ban |
/// | `rt:c:b:{bans}:l` | the prefix bans (hash: prefix -> ban time, unix ms), at most [`MAX_BANS`](crate::bans::MAX_BANS) | same |
///
/// An entry, its variants, index and lock share the hash tag `<h>`, so each script touches one
/// slot. Tags live in their own slots and are only read or written one at a time.
///
/// A hit is exactly one `GET` (plus one `GET` per tag for tagged entries, sent concurrently).
/// Every command has a short timeout (see [`timeout`](Self::timeout)) and fails at once while
/// the connection is down, so an outage costs a request almost nothing: the
/// [`Cache`](crate::Cache) then fails open. Before the first connection, operations wait for
/// it instead (see [`CacheStore::ready`]): a fresh process is not in an outage.
///
/// # Retry safety
///
/// fred re-sends a command that was in flight when its connection closed. Each command here is
/// either harmless to run twice or sent once:
///
/// | operation | changes state | re-sent? | why it is safe |
/// | --- | --- | --- | --- |
/// | `get`, `tag_generations`, `lookup` (`GET`/`MGET`) | no | no (one attempt, fail-fast) | reads |
/// | `put` (script `cache_put`) | entry, lock, variant index | yes | idempotent: a re-send finds its own lock released and its own bytes stored and answers 1 again |
/// | `unlock` (script `cache_unlock`) | deletes the lock | yes | compare-and-delete fenced by the token: a re-send finds the lock gone or another holder's |
/// | `ensure_tags` (script `cache_ensure_tag`) | creates a generation, extends its TTL | yes | create-if-missing: a re-send returns the generation the first run created |
/// | `try_lock` (`SET NX PX`) | takes the lock | no (one attempt) | a re-send would find its own lock and report it held by another: sent once; a lost reply fails open and the lock expires after its TTL |
/// | `invalidate` (`ZRANGE` + `DEL`), `bump_tag` (`UNLINK`) | deletes | no (one attempt) | deleting twice is deleting once |
/// | `ban_prefix` (script `cache_ban`) | adds a ban, drops covered ones, bumps the list's version | yes | a re-send re-records the same prefix a few ms later: it also bans the entries stored in between (misses, never a banned entry served) |
/// | `bans` (`GET` of the version; script `cache_bans` when it moved) | no | no | reads |
///
/// ```no_run
/// use redtower_cache::{Cache, RedisStore};
/// use redtower_client::{Redis, RedisConfig};
///
/// # async fn run() -> Result<(), redtower_client::Error> {
/// let redis = Redis::new(RedisConfig::from_env()?)?;
/// let cache = Cache::new(RedisStore::new(redis));
/// # let _ = cache;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    redis: Redis,
    entries: Namespace,
    tags: Namespace,
    options: Options,
    timeout: Duration,
    /// The coalescing queue of `GET`s; `None` when turned off.
    reads: Option<Arc<Reads>>,
    coalesce: bool,
    /// Whether the client has been fully connected once (see [`CacheStore::ready`]).
    settled: Arc<AtomicBool>,
    max_variants: usize,
    /// The tracked tier (entries and tag generations by Redis key), when turned on.
    near: Option<Near>,
    /// The prefix ban keys and the list last read.
    bans: Arc<bans::BanState>,
    /// See [`clock_skew`](Self::clock_skew).
    clock_skew: Duration,
}

/// The tracked tier and the coalescing queue of the reads that fill it (sent on the tracked
/// connection, so Redis tracks each key read).
#[derive(Clone)]
struct Near {
    /// A key's value, or `None` for a key that does not exist: Redis tracks a read of a
    /// missing key like any other, so its creation drops the absence as it would a value.
    cache: NearCache<Option<Bytes>>,
    reads: Option<Arc<Reads>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("redis", &self.redis)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisStore {
    /// The default per-command timeout: 500 ms.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

    /// The default bound on variants per group: 64.
    pub const DEFAULT_MAX_VARIANTS: usize = 64;

    /// The most variants one group (one URI) holds: a response that varies on request headers
    /// (`Vary`, [`key_headers`](crate::ResponseCacheLayer::key_headers)) gets one entry per
    /// distinct value, and clients choose the values. Past the bound a new variant is not
    /// stored (the request is answered by the handler, as a miss); the variants already stored
    /// stay until they expire or are invalidated. Only live variants count: a variant leaves the
    /// bound when its entry expires, so values sent once (junk `Accept-Language` values) stop
    /// counting after their TTL even while other variants of the URI keep being refreshed.
    /// Defaults to
    /// [`DEFAULT_MAX_VARIANTS`](Self::DEFAULT_MAX_VARIANTS) (64), at least 1.
    ///
    /// ```no_run
    /// # fn run(redis: redtower_client::Redis) {
    /// use redtower_cache::RedisStore;
    ///
    /// // A route that varies on Accept-Language for a dozen languages.
    /// let store = RedisStore::new(redis).max_variants(16);
    /// # let _ = store;
    /// # }
    /// ```
    #[must_use]
    pub fn max_variants(mut self, n: usize) -> Self {
        self.max_variants = n.max(1);
        self
    }

    /// A store over `redis`, under its keyspace's namespace `c`.
    pub fn new(redis: Redis) -> Self {
        let entries = redis.keyspace().namespace("c");
        let tags = redis.keyspace().namespace("c:t");
        let bans = Arc::new(bans::BanState::new(&redis.keyspace().namespace("c:b")));
        let mut store = Self {
            redis,
            entries,
            tags,
            options: Options::default(),
            timeout: Self::DEFAULT_TIMEOUT,
            reads: None,
            coalesce: true,
            settled: Arc::new(AtomicBool::new(false)),
            max_variants: Self::DEFAULT_MAX_VARIANTS,
            near: None,
            bans,
            clock_skew: Self::DEFAULT_CLOCK_SKEW,
        };
        store.configure();
        store
    }

    /// The default [`clock_skew`](Self::clock_skew): 1 s.
    pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(1);

    /// How far the clocks of the instances sharing this store may be from Redis' clock, for
    /// prefix bans ([`Cache::invalidate_prefix`](crate::Cache::invalidate_prefix)). A ban is
    /// recorded at Redis' time plus this allowance, and an entry carries its instance's time of
    /// storing; an entry stored up to this long after the ban is banned too, so an instance
    /// whose clock runs ahead cannot keep an older entry alive. In exchange, entries refilled
    /// under a banned prefix within this time of the ban are misses again (one more fill).
    /// Defaults to [`DEFAULT_CLOCK_SKEW`](Self::DEFAULT_CLOCK_SKEW) (1 s).
    #[must_use]
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew.min(Duration::from_secs(3600));
        self
    }

    /// Whether concurrent reads are coalesced (default `true`): `GET`s that requests issue
    /// while another read of this store is in flight leave together as one `MGET` (one per
    /// hash slot on a Cluster). Each request still waits for exactly one round trip; under
    /// load the client, the kernel and redis-server handle one command for many hits. Off,
    /// every read is its own `GET`.
    #[must_use]
    pub fn coalesce_reads(mut self, on: bool) -> Self {
        self.coalesce = on;
        self.configure();
        self
    }

    /// Puts a coherent in-process tier in front of this store (see
    /// [`NearCache`](redtower_client::NearCache)): entries and tag generations read on this
    /// instance are kept in process and dropped as soon as Redis reports the key changed, by
    /// any instance (a fill, an [`invalidate`](crate::Cache::invalidate),
    /// an [`invalidate_tag`](crate::Cache::invalidate_tag), an expiry). A hit then costs no
    /// round trip. `None` turns it off (the default).
    ///
    /// The [`Cache`](crate::Cache) over this store also keeps each entry it read through the
    /// tier *decoded* (see [`CacheStore::stamp`]), under a stamp of every key the read touched
    /// (the entry, its tags' generations, the ban list's version): a repeated hit is a map
    /// lookup and a few atomic loads, no key derivation and no decoding. The stamp ends when
    /// any of those keys' pushes is applied, or the tier flushes, so decoded entries follow
    /// exactly the consistency below. They have a budget of their own, the size of the tier's
    /// (entries, bytes, maximum age): with the tier on, up to twice its `max_bytes` is held in
    /// process.
    ///
    /// Consistency with the tier on: a change made through *this* store is visible to this
    /// instance at once; a change made elsewhere is visible here once its invalidation push
    /// arrived (one push delay after the writer's reply, on loopback well under a millisecond),
    /// and at the latest after the tier's maximum age. While tracking is not established
    /// (start-up, a reconnect, a Cluster topology change) the tier is empty and every read goes
    /// to Redis. On a server without RESP3 or `CLIENT TRACKING` the tier turns itself off with
    /// one warning, and reads go to Redis.
    ///
    /// Must be called inside a Tokio runtime (the tier's connection starts at once).
    ///
    /// ```no_run
    /// # fn run(redis: redtower_client::Redis) {
    /// use redtower_cache::RedisStore;
    /// use redtower_client::NearCacheConfig;
    ///
    /// let store = RedisStore::new(redis)
    ///     .near_cache(Some(NearCacheConfig::new("cache").max_bytes(128 << 20)));
    /// # let _ = store;
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    #[must_use]
    pub fn near_cache(mut self, config: Option<NearCacheConfig>) -> Self {
        self.near = config.map(|config| Near {
            cache: NearCache::new(&self.redis, config, |v: &Option<Bytes>| {
                v.as_ref().map_or(0, Bytes::len)
            })
            .expect("the near-cache's client builds from a configuration that already built one"),
            reads: None,
        });
        self.configure();
        self
    }

    /// The tracked tier, when [turned on](Self::near_cache): for its statistics and state.
    /// It holds each key's value, and `None` for a tag generation or the ban list's version
    /// read while it did not exist (a tag never purged, no prefix purge yet): hits read neither
    /// from Redis. An entry read while absent is not held: a request that waited for another
    /// instance's fill reads the entry again and must find it.
    pub fn near(&self) -> Option<&NearCache<Option<Bytes>>> {
        self.near.as_ref().map(|n| &n.cache)
    }

    fn configure(&mut self) {
        let options = self.command_options();
        let (coalesce, cluster) = (self.coalesce, self.redis.is_cluster());
        if let Some(near) = &mut self.near {
            near.reads = coalesce.then(|| {
                Arc::new(Reads::new(
                    near.cache.tracked_client().clone(),
                    options,
                    cluster,
                ))
            });
        }
        self.options = self.command_options();
        self.reads = self.coalesce.then(|| {
            Arc::new(Reads::new(
                self.redis.client().clone(),
                self.options.clone(),
                self.redis.is_cluster(),
            ))
        });
    }

    /// How long one cache command may take before the cache gives up on it and fails open.
    /// Defaults to [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT) (500 ms). Size it to your largest
    /// entries; with [coalesced reads](Self::coalesce_reads) one `MGET` carries up to 64 of
    /// them, and a read's timeout counts from when it was queued.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self.configure();
        self
    }

    /// The Redis handle.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    fn command_options(&self) -> Options {
        Options {
            timeout: Some(self.timeout),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        }
    }

    /// The Redis key of an entry (see the table above), for inspecting it in Redis; the key
    /// of a cache-aside value is `store.entry_key(&cache.entry_key("price:tea"))`.
    pub fn entry_key(&self, key: &EntryKey) -> Key {
        let k = self.entries.key(key.group());
        match key.variant() {
            Some(v) => k.push(v),
            None => k,
        }
    }

    fn lock_key_for(&self, key: &EntryKey) -> Key {
        self.entry_key(key).push("lk")
    }

    fn index_key_for(&self, group: &str) -> Key {
        self.entries.key(group).push("ix")
    }

    fn tag_key_for(&self, tag: &str) -> Key {
        self.tags.key(tag)
    }

    /// A read through the tracked tier: a hit, or a read on the tracked connection whose value
    /// is kept unless an invalidation raced it. `Err(key)` while the tier does not serve: the
    /// caller reads from the main connection.
    async fn near_get(
        &self,
        near: &Near,
        key: Key,
        hold_absent: bool,
    ) -> std::result::Result<Result<Option<Bytes>>, Key> {
        if let Some(hit) = near.cache.get(key.as_str()) {
            return Ok(Ok(hit));
        }
        // Taken before the read is sent: see `NearCache::insert`.
        let ticket = near.cache.ticket(key.as_str());
        if !ticket.is_tracked() {
            return Err(key);
        }
        let name = key.as_str().to_owned();
        let value = match &near.reads {
            Some(reads) => match reads.get(key).await {
                Ok(r) => r.map_err(fred),
                Err(key) => self.near_read_one(near, &ticket, key).await,
            },
            None => self.near_read_one(near, &ticket, key).await,
        };
        let value = match value {
            Ok(v) => v,
            Err(e) => return Ok(Err(e.into())),
        };
        if value.is_some() || hold_absent {
            near.cache.insert(ticket, &name, value.clone());
        }
        Ok(Ok(value))
    }

    async fn near_read_one(
        &self,
        near: &Near,
        ticket: &redtower_client::Ticket,
        key: Key,
    ) -> redtower_client::Result<Option<Bytes>> {
        let client = near.cache.client_for(ticket).with_options(&self.options);
        Box::pin(client.get::<Option<Bytes>, _>(key))
            .await
            .map_err(fred)
    }

    /// Reads one key the way entries are read: the tracked tier, the coalesced read queue,
    /// or one `GET`. On the hit path fred's own per-command timeout (`options`) bounds it, so
    /// no second timer is armed here.
    ///
    /// `hold_absent`: whether the tier may keep "absent" for the key (tag generations and the
    /// ban version, read on every hit). Never for entries: a request that waited for another
    /// instance's fill reads the entry again, and must not find an absence that the fill's
    /// invalidation push has not dropped yet.
    pub(crate) async fn read_key(&self, mut k: Key, hold_absent: bool) -> Result<Option<Bytes>> {
        if let Some(near) = &self.near {
            match self.near_get(near, k, hold_absent).await {
                Ok(r) => return r,
                Err(back) => k = back,
            }
        }
        if let Some(reads) = &self.reads {
            match reads.get(k).await {
                Ok(r) => return Ok(r.map_err(fred)?),
                // Not queued (no runtime for the queue's task): read directly.
                Err(back) => k = back,
            }
        }
        let client = self.redis.client().with_options(&self.options);
        // Boxed, so that fred's (large) future is not part of every coalesced read's future.
        Ok(Box::pin(client.get::<Option<Bytes>, _>(k))
            .await
            .map_err(fred)?)
    }

    /// Drops `keys` from this instance's tier at once (their pushes come after the write's
    /// reply), and voids reads of them in flight.
    fn near_forget<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        if let Some(near) = &self.near {
            for key in keys {
                near.cache.invalidate(key);
            }
        }
    }

    async fn bounded<T>(&self, fut: impl Future<Output = redtower_client::Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::Timeout(self.timeout)),
        }
    }
}

/// The keys of a store's internals, for this crate's tests.
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
impl RedisStore {
    /// The Redis key of an entry's fill lock.
    pub fn lock_key(&self, key: &EntryKey) -> Key {
        self.lock_key_for(key)
    }

    /// The Redis key of a group's variant index.
    pub fn index_key(&self, group: &str) -> Key {
        self.index_key_for(group)
    }

    /// The Redis key of a tag's generation.
    pub fn tag_key(&self, tag: &str) -> Key {
        self.tag_key_for(tag)
    }

    /// The Redis keys of the prefix ban list's version and of the list.
    pub fn ban_keys(&self) -> (Key, Key) {
        let (v, l) = self.ban_key_refs();
        (v.clone(), l.clone())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn fred(e: redtower_client::fred::error::Error) -> redtower_client::Error {
    redtower_client::Error::from(e)
}

#[async_trait]
impl CacheStore for RedisStore {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn is_ready(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    fn connections(&self) -> u64 {
        self.redis.connections()
    }

    async fn ready(&self) -> Result<()> {
        // Before the first connection fred fails fail-fast commands with `Canceled`: wait for
        // it (up to the client's command timeout) instead, outside this store's own timeout.
        // (`first_connection` waits for fred's `Connected` state: on a Cluster, every primary.)
        self.redis.first_connection().await?;
        self.settled.store(true, Ordering::Release);
        Ok(())
    }

    async fn get(&self, key: &EntryKey) -> Result<Option<Bytes>> {
        self.read_key(self.entry_key(key), false).await
    }

    async fn put(
        &self,
        key: &EntryKey,
        value: Bytes,
        ttl: Duration,
        token: Option<&LockToken>,
    ) -> Result<bool> {
        let keys = vec![
            self.entry_key(key),
            self.lock_key_for(key),
            self.index_key_for(key.group()),
        ];
        let args: Vec<Value> = vec![
            Value::Bytes(value),
            Value::from(ttl_ms(ttl).to_string()),
            Value::from(token.map_or("", LockToken::as_str).to_owned()),
            Value::from(key.variant().unwrap_or("").to_owned()),
            Value::from(self.max_variants.to_string()),
        ];
        let n: Result<i64> = self.bounded(PUT.run(&self.redis, keys.clone(), args)).await;
        // Also on an error: the script may have run.
        self.near_forget([keys[0].as_str()]);
        Ok(n? == 1)
    }

    async fn invalidate(&self, group: &str) -> Result<()> {
        let index = self.index_key_for(group);
        let client = self.redis.client().with_options(&self.options);
        let variants: Vec<String> = {
            let client = client.clone();
            let index = index.clone();
            self.bounded(async move {
                match client
                    .zrange(index.clone(), 0, -1, None, false, None, false)
                    .await
                {
                    // An index written as a plain set by an earlier version of this store.
                    Err(e) if e.details().starts_with("WRONGTYPE") => {
                        client.smembers(index).await.map_err(fred)
                    }
                    r => r.map_err(fred),
                }
            })
            .await?
        };
        let mut keys: Vec<String> = Vec::with_capacity(variants.len() + 2);
        keys.push(self.entries.key(group).into_string());
        keys.push(index.into_string());
        for v in &variants {
            keys.push(self.entries.key(group).push(v.as_str()).into_string());
        }
        // Same hash tag: one multi-key DEL is valid on a Cluster.
        let forget = keys.clone();
        let deleted = self
            .bounded(async move { client.del::<i64, _>(keys).await.map_err(fred) })
            .await;
        self.near_forget(forget.iter().map(String::as_str));
        deleted.map(|_| ())
    }

    async fn try_lock(&self, key: &EntryKey, ttl: Duration) -> Result<Option<LockToken>> {
        let token = LockToken::generate();
        let k = self.lock_key_for(key);
        let client = self.redis.client().with_options(&self.options);
        let px = i64::try_from(ttl_ms(ttl)).unwrap_or(i64::MAX);
        let value = token.0.clone();
        let reply: Value = self
            .bounded(async move {
                client
                    .set(
                        k,
                        value,
                        Some(Expiration::PX(px)),
                        Some(SetOptions::NX),
                        false,
                    )
                    .await
                    .map_err(fred)
            })
            .await?;
        Ok((!reply.is_null()).then_some(token))
    }

    async fn unlock(&self, key: &EntryKey, token: &LockToken) -> Result<bool> {
        let n: i64 = self
            .bounded(UNLOCK.run(
                &self.redis,
                vec![self.lock_key_for(key)],
                vec![token.0.clone()],
            ))
            .await?;
        Ok(n == 1)
    }

    async fn tag_generations(&self, tags: &[String]) -> Result<Vec<u64>> {
        let keys: Vec<Key> = tags.iter().map(|t| self.tag_key_for(t)).collect();
        // The common case: every tag through the read queue at once, queued in the same pass
        // as the entry's read, so on a standalone server entry and generations leave as one
        // `MGET` (and no per-tag future is built).
        let keys = match (&self.near, &self.reads) {
            (None, Some(reads)) => match reads.get_many(keys).await {
                Ok(values) => {
                    return Ok(values.map_err(fred)?.into_iter().map(generation).collect());
                }
                Err(keys) => keys,
            },
            _ => keys,
        };
        let reads = keys.into_iter().map(|k| self.read_key(k, true));
        let values = tokio::time::timeout(self.timeout, futures::future::try_join_all(reads))
            .await
            .map_err(|_| Error::Timeout(self.timeout))??;
        Ok(values.into_iter().map(generation).collect())
    }

    async fn ensure_tags(&self, tags: &[String], ttl: Duration) -> Result<Vec<u64>> {
        let ttl = ttl_ms(ttl).to_string();
        let runs = tags.iter().map(|t| {
            let k = self.tag_key_for(t);
            let args = vec![new_generation().to_string(), ttl.clone()];
            async move {
                ENSURE_TAG
                    .run::<String, _, _>(&self.redis, vec![k], args)
                    .await
            }
        });
        let values = self
            .bounded(async move { futures::future::try_join_all(runs).await })
            .await;
        let keys: Vec<Key> = tags.iter().map(|t| self.tag_key_for(t)).collect();
        self.near_forget(keys.iter().map(Key::as_str));
        Ok(values?
            .into_iter()
            .map(|s| s.parse().unwrap_or(0))
            .collect())
    }

    async fn bump_tag(&self, tag: &str) -> Result<()> {
        let k = self.tag_key_for(tag);
        let client = self.redis.client().with_options(&self.options);
        let forget = k.clone();
        let unlinked = self
            .bounded(async move { client.unlink::<i64, _>(k).await.map_err(fred) })
            .await;
        self.near_forget([forget.as_str()]);
        unlinked.map(|_| ())
    }

    async fn ban_prefix(&self, prefix: &str) -> Result<()> {
        self.record_ban(prefix).await
    }

    async fn bans(&self) -> Result<Arc<crate::Bans>> {
        self.read_bans().await
    }

    async fn lookup(&self, key: &EntryKey, tags: &[String], bans: bool) -> Result<Lookup> {
        // Without the tracked tier, every key of the lookup (entry, tag generations, ban
        // version) is one coalesced read: one queue entry, and one `MGET` on a standalone
        // server (one per slot on a Cluster).
        let (None, Some(reads)) = (&self.near, &self.reads) else {
            return lookup_each(self, key, tags, bans).await;
        };
        let mut keys = Vec::with_capacity(tags.len() + 2);
        keys.push(self.entry_key(key));
        keys.extend(tags.iter().map(|t| self.tag_key_for(t)));
        if bans {
            keys.push(self.ban_key_refs().0.clone());
        }
        let mut values = match reads.get_many(keys).await {
            Ok(values) => values.map_err(fred)?.into_iter(),
            // Not queued (no runtime for the queue's task): read on their own.
            Err(_) => return lookup_each(self, key, tags, bans).await,
        };
        let value = values.next().flatten();
        let generations = values.by_ref().take(tags.len()).map(generation).collect();
        let bans = match bans {
            true => Some(self.bans_at(values.next().flatten()).await?),
            false => None,
        };
        Ok(Lookup::new(value, generations, bans))
    }

    fn tracked_tier(&self) -> Option<NearCacheConfig> {
        self.near.as_ref().map(|n| n.cache.config().clone())
    }

    fn stamp(&self, key: &EntryKey, tags: &[String], bans: bool) -> Option<Stamp> {
        let near = &self.near.as_ref()?.cache;
        let entry = self.entry_key(key);
        let tags: Vec<Key> = tags.iter().map(|t| self.tag_key_for(t)).collect();
        let (version, _) = self.ban_key_refs();
        let keys = std::iter::once(&entry)
            .chain(&tags)
            .chain(bans.then_some(version))
            .map(Key::as_str);
        near.stamp(keys)
    }
}

/// A tag's generation from its stored value, decimal digits (0 when absent or unreadable).
fn generation(v: Option<Bytes>) -> u64 {
    let Some(digits) = v.filter(|b| !b.is_empty()) else {
        return 0;
    };
    digits
        .iter()
        .try_fold(0u64, |n, &c| {
            let digit = c.checked_sub(b'0').filter(|d| *d <= 9)?;
            n.checked_mul(10)?.checked_add(u64::from(digit))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_decimal_u64s_or_zero() {
        let g = |s: &'static str| generation(Some(Bytes::from_static(s.as_bytes())));
        assert_eq!(generation(None), 0);
        assert_eq!(g(""), 0);
        assert_eq!(g("0"), 0);
        assert_eq!(g("42"), 42);
        assert_eq!(g("18446744073709551615"), u64::MAX);
        assert_eq!(g("18446744073709551616"), 0, "overflow");
        assert_eq!(g("12a"), 0);
        assert_eq!(g("-1"), 0);
        assert_eq!(g(" 1"), 0);
    }
}
