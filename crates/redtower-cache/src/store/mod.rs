//! [`CacheStore`]: the few atomic operations the cache needs, and its two backends.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use redtower_client::{NearCacheConfig, Stamp};

use crate::{Result, bans::Bans};

pub(crate) mod memory;
pub(crate) mod redis;

/// Where one entry lives: a `group` (the hashed primary key: the cache-aside key, or the request
/// URI of a response) and, for responses that vary on request headers, a `variant` inside it.
///
/// Both are base64url digests produced by the cache. On Redis the group is the Cluster hash tag,
/// so an entry, its variants, its fill lock and its variant index share one slot:
/// `rt:c:{<group>}`, `rt:c:{<group>}:<variant>`, `rt:c:{<group>}:lk`, `rt:c:{<group>}:ix`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryKey {
    group: String,
    variant: Option<String>,
}

impl EntryKey {
    /// A key from its parts (digests built by the cache; any text is escaped by the stores).
    pub fn new(group: impl Into<String>, variant: Option<String>) -> Self {
        Self {
            group: group.into(),
            variant,
        }
    }

    /// The group (primary key digest).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The variant digest, if the entry is one variant of its group.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }
}

impl fmt::Display for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "{}:{}", self.group, v),
            None => f.write_str(&self.group),
        }
    }
}

/// Proof of holding an entry's fill lock (a fencing token): unlocking and filling check it, so
/// a holder whose lock expired can neither release nor clobber a newer holder's work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LockToken(pub(crate) String);

impl LockToken {
    /// A new unique token (128 random bits), for a store's
    /// [`try_lock`](CacheStore::try_lock).
    pub fn generate() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()))
    }

    /// The token text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The storage operations of the cache, written once per backend.
///
/// Every write carries a TTL: nothing a store writes lives forever. A conformance suite in the
/// crate's tests runs the same checks against [`MemoryStore`](crate::MemoryStore) and
/// [`RedisStore`](crate::RedisStore) (standalone and Cluster).
#[async_trait]
pub trait CacheStore: fmt::Debug + Send + Sync + 'static {
    /// The current time in unix milliseconds, the time base of stored entries.
    ///
    /// [`RedisStore`](crate::RedisStore) uses the wall clock (entries are shared between
    /// instances); [`MemoryStore`](crate::MemoryStore) follows `tokio::time`, so tests can
    /// pause and advance it.
    fn now_ms(&self) -> u64;

    /// Whether the store can take commands without waiting: for
    /// [`RedisStore`](crate::RedisStore), whether its first connection has been made (it
    /// stays `true` while a lost connection is re-established: that is an outage). Defaults to
    /// `true`.
    fn is_ready(&self) -> bool {
        true
    }

    /// Waits until the store can take commands: for [`RedisStore`](crate::RedisStore), its
    /// first connection, up to the Redis client's command timeout. The [`Cache`](crate::Cache)
    /// calls it while [`is_ready`](Self::is_ready) is `false`, before an operation and outside
    /// the operation's own short timeout, so the requests a freshly started process receives
    /// are decided by the store instead of failing open as if it were down. Defaults to
    /// returning at once.
    ///
    /// # Errors
    ///
    /// When the store could not be reached in time. The cache fails open, and does not count
    /// it as an outage for its circuit breaker.
    async fn ready(&self) -> Result<()> {
        Ok(())
    }

    /// How many connections the store has made so far, reconnections included (see
    /// [`Redis::connections`](redtower_client::Redis::connections)). The cache's circuit
    /// breaker closes as soon as this moves: the connection is back. The default, 0, never
    /// moves.
    fn connections(&self) -> u64 {
        0
    }

    /// The stored bytes of an entry, if present and not expired. On Redis this is one `GET`.
    async fn get(&self, key: &EntryKey) -> Result<Option<Bytes>>;

    /// Stores `value` for `ttl`. With a variant, the variant is added to its group's index
    /// (so [`invalidate`](Self::invalidate) finds it).
    ///
    /// With `token`: if the token still holds the entry's fill lock, the value is written and the
    /// lock released at once; if the lock was lost, the value is written only when no entry
    /// exists (it never overwrites a newer holder's fill). Returns whether it was written.
    async fn put(
        &self,
        key: &EntryKey,
        value: Bytes,
        ttl: Duration,
        token: Option<&LockToken>,
    ) -> Result<bool>;

    /// Deletes the group's entry and all its indexed variants.
    async fn invalidate(&self, group: &str) -> Result<()>;

    /// Tries to take the fill lock of `key` for `ttl` (`SET NX PX`). `None` if someone holds it.
    async fn try_lock(&self, key: &EntryKey, ttl: Duration) -> Result<Option<LockToken>>;

    /// Releases the fill lock if `token` still holds it (compare-and-delete). Returns whether
    /// it did.
    async fn unlock(&self, key: &EntryKey, token: &LockToken) -> Result<bool>;

    /// The current generation of each tag (0 for a tag never seen or expired).
    async fn tag_generations(&self, tags: &[String]) -> Result<Vec<u64>>;

    /// The generation of each tag for an entry about to be stored for `ttl`: a tag without one
    /// gets a new random non-zero generation, and each tag's TTL is extended to cover `ttl`,
    /// so an entry never outlives the generation it records.
    async fn ensure_tags(&self, tags: &[String], ttl: Duration) -> Result<Vec<u64>>;

    /// Invalidates every entry filled under `tag` in O(1): drops the tag's generation, so no
    /// stored entry matches it any more (the next fill draws a new random one).
    async fn bump_tag(&self, tag: &str) -> Result<()>;

    /// Bans every entry whose key starts with `prefix` and that was stored until now (see
    /// [`bans`](crate::bans)): records `(prefix, now)` in the store's one bounded ban list, so
    /// every instance's next read of such an entry is a miss. Past
    /// [`MAX_BANS`](crate::bans::MAX_BANS) the oldest ban is folded into the list's horizon
    /// (every entry stored before it is banned): more misses, never a banned entry served.
    ///
    /// The default refuses with [`Error::Unsupported`](crate::Error::Unsupported) (a store
    /// written before prefix bans); [`bans`](Self::bans) then has nothing to report.
    async fn ban_prefix(&self, prefix: &str) -> Result<()> {
        let _ = prefix;
        Err(crate::Error::Unsupported("prefix bans"))
    }

    /// The current bans (read together with an entry, so a hit stays one round trip). The
    /// default has none.
    async fn bans(&self) -> Result<Arc<Bans>> {
        Ok(Bans::none())
    }

    /// What one lookup of `key` reads: the entry's bytes, the current generation of each of
    /// `tags` and, with `bans`, the current [`bans`](Self::bans), read together so a lookup
    /// is one round trip. The default runs [`get`](Self::get),
    /// [`tag_generations`](Self::tag_generations) and [`bans`](Self::bans) concurrently;
    /// [`RedisStore`](crate::RedisStore) reads every key of a lookup as one coalesced read.
    ///
    /// ```
    /// use redtower_cache::{CacheStore, EntryKey, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> redtower_cache::Result<()> {
    /// let store = MemoryStore::new();
    /// let key = EntryKey::new("group", None);
    /// let found = store.lookup(&key, &["products".to_owned()], true).await?;
    /// assert!(found.value.is_none());
    /// assert_eq!(found.generations, vec![0]);
    /// assert!(found.bans.is_some_and(|b| b.is_empty()));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// When any of the reads fails.
    async fn lookup(&self, key: &EntryKey, tags: &[String], bans: bool) -> Result<Lookup> {
        lookup_each(self, key, tags, bans).await
    }

    /// The settings of the store's coherent in-process tier, when it has one
    /// ([`RedisStore::near_cache`](crate::RedisStore::near_cache)): the [`Cache`](crate::Cache)
    /// then also keeps *decoded* entries in process, in a budget of the same size (entries,
    /// bytes, maximum age), and serves each while its [`stamp`](Self::stamp) is current.
    /// Defaults to `None`.
    fn tracked_tier(&self) -> Option<NearCacheConfig> {
        None
    }

    /// A [`Stamp`] of every store key that a read of `key` with `tags` touches (the entry, the
    /// tags' generations and, with `bans`, the ban list's version), taken *before* that read:
    /// an entry decoded and validated from the read may be served while the stamp is current,
    /// as coherent as the tier's raw values. `None` when the store has no tracked tier or it
    /// does not serve now. Defaults to `None`.
    fn stamp(&self, key: &EntryKey, tags: &[String], bans: bool) -> Option<Stamp> {
        let _ = (key, tags, bans);
        None
    }
}

/// What one [`lookup`](CacheStore::lookup) read.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Lookup {
    /// The entry's stored bytes, if present and not expired.
    pub value: Option<Bytes>,
    /// The current generation of each tag asked for, in order (0 for a tag never seen or
    /// expired).
    pub generations: Vec<u64>,
    /// The current bans, when asked for.
    pub bans: Option<Arc<Bans>>,
}

impl Lookup {
    /// A lookup's result from its parts (for stores that implement
    /// [`lookup`](CacheStore::lookup) themselves).
    pub fn new(value: Option<Bytes>, generations: Vec<u64>, bans: Option<Arc<Bans>>) -> Self {
        Self {
            value,
            generations,
            bans,
        }
    }
}

/// [`CacheStore::lookup`] as separate concurrent reads: the entry, the tags' generations and,
/// with `bans`, the bans.
pub(crate) async fn lookup_each<S: CacheStore + ?Sized>(
    store: &S,
    key: &EntryKey,
    tags: &[String],
    bans: bool,
) -> Result<Lookup> {
    let read = async {
        if tags.is_empty() {
            Ok((store.get(key).await?, Vec::new()))
        } else {
            futures::try_join!(store.get(key), store.tag_generations(tags))
        }
    };
    if !bans {
        let (value, generations) = read.await?;
        return Ok(Lookup::new(value, generations, None));
    }
    let ((value, generations), bans) = futures::try_join!(read, store.bans())?;
    Ok(Lookup::new(value, generations, Some(bans)))
}

/// The future of a forwarded store operation: the inner store's own (boxed) future.
type Forwarded<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A shared store is a store: an `Arc<dyn CacheStore>` chosen at run time (or an `Arc` of a
/// concrete store) passes to [`Cache::new`](crate::Cache::new) as it is.
///
/// Each operation hands back the inner store's future unchanged (no second allocation), so
/// a cache over an `Arc<dyn CacheStore>` costs one more pointer hop per operation than one
/// over the concrete store, and nothing else.
///
/// ```
/// use std::sync::Arc;
/// use redtower_cache::{Cache, CacheStore, MemoryStore, RedisStore};
///
/// # fn run(redis: Option<redtower_client::Redis>) {
/// let store: Arc<dyn CacheStore> = match redis {
///     Some(redis) => Arc::new(RedisStore::new(redis)),
///     None => Arc::new(MemoryStore::new()),
/// };
/// let cache = Cache::new(store);
/// # let _ = cache;
/// # }
/// # run(None);
/// ```
#[async_trait]
impl<T: CacheStore + ?Sized> CacheStore for Arc<T> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }

    fn is_ready(&self) -> bool {
        (**self).is_ready()
    }

    fn ready<'s, 'f>(&'s self) -> Forwarded<'f, ()>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).ready()
    }

    fn connections(&self) -> u64 {
        (**self).connections()
    }

    fn get<'s, 'k, 'f>(&'s self, key: &'k EntryKey) -> Forwarded<'f, Option<Bytes>>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        (**self).get(key)
    }

    fn put<'s, 'k, 't, 'f>(
        &'s self,
        key: &'k EntryKey,
        value: Bytes,
        ttl: Duration,
        token: Option<&'t LockToken>,
    ) -> Forwarded<'f, bool>
    where
        's: 'f,
        'k: 'f,
        't: 'f,
        Self: 'f,
    {
        (**self).put(key, value, ttl, token)
    }

    fn invalidate<'s, 'g, 'f>(&'s self, group: &'g str) -> Forwarded<'f, ()>
    where
        's: 'f,
        'g: 'f,
        Self: 'f,
    {
        (**self).invalidate(group)
    }

    fn try_lock<'s, 'k, 'f>(
        &'s self,
        key: &'k EntryKey,
        ttl: Duration,
    ) -> Forwarded<'f, Option<LockToken>>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        (**self).try_lock(key, ttl)
    }

    fn unlock<'s, 'k, 't, 'f>(
        &'s self,
        key: &'k EntryKey,
        token: &'t LockToken,
    ) -> Forwarded<'f, bool>
    where
        's: 'f,
        'k: 'f,
        't: 'f,
        Self: 'f,
    {
        (**self).unlock(key, token)
    }

    fn tag_generations<'s, 't, 'f>(&'s self, tags: &'t [String]) -> Forwarded<'f, Vec<u64>>
    where
        's: 'f,
        't: 'f,
        Self: 'f,
    {
        (**self).tag_generations(tags)
    }

    fn ensure_tags<'s, 't, 'f>(
        &'s self,
        tags: &'t [String],
        ttl: Duration,
    ) -> Forwarded<'f, Vec<u64>>
    where
        's: 'f,
        't: 'f,
        Self: 'f,
    {
        (**self).ensure_tags(tags, ttl)
    }

    fn bump_tag<'s, 't, 'f>(&'s self, tag: &'t str) -> Forwarded<'f, ()>
    where
        's: 'f,
        't: 'f,
        Self: 'f,
    {
        (**self).bump_tag(tag)
    }

    fn ban_prefix<'s, 'p, 'f>(&'s self, prefix: &'p str) -> Forwarded<'f, ()>
    where
        's: 'f,
        'p: 'f,
        Self: 'f,
    {
        (**self).ban_prefix(prefix)
    }

    fn bans<'s, 'f>(&'s self) -> Forwarded<'f, Arc<Bans>>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).bans()
    }

    fn lookup<'s, 'k, 't, 'f>(
        &'s self,
        key: &'k EntryKey,
        tags: &'t [String],
        bans: bool,
    ) -> Forwarded<'f, Lookup>
    where
        's: 'f,
        'k: 'f,
        't: 'f,
        Self: 'f,
    {
        (**self).lookup(key, tags, bans)
    }

    fn tracked_tier(&self) -> Option<NearCacheConfig> {
        (**self).tracked_tier()
    }

    fn stamp(&self, key: &EntryKey, tags: &[String], bans: bool) -> Option<Stamp> {
        (**self).stamp(key, tags, bans)
    }
}

/// The longest time anything is kept in a store: 365 days. Longer TTLs (a response's
/// `max-age=18446744073709551615`, a far `Expires`) are cut to it.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A TTL in milliseconds for the store: at least 1, at most [`MAX_TTL`].
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.min(MAX_TTL).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// `now + ttl` for in-process deadlines, with `ttl` cut to [`MAX_TTL`]: never overflows.
pub(crate) fn later(now: tokio::time::Instant, ttl: Duration) -> tokio::time::Instant {
    now.checked_add(ttl.min(MAX_TTL)).unwrap_or(now)
}

/// A non-zero random generation.
pub(crate) fn new_generation() -> u64 {
    rand::random::<u64>() | 1
}
