//! [`MemoryStore`]: the in-process backend (moka), with the same semantics as Redis.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use bytes::Bytes;
use moka::{Expiry, sync::Cache as Moka};
use tokio::time::Instant;

use super::{CacheStore, EntryKey, LockToken, MAX_TTL, later, new_generation};
use crate::{Result, bans::Bans};

#[derive(Clone)]
struct Stored {
    value: Bytes,
    deadline: Instant,
    ttl: Duration,
}

struct ByTtl;

impl Expiry<String, Stored> for ByTtl {
    fn expire_after_create(
        &self,
        _: &String,
        v: &Stored,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.ttl.min(MAX_TTL))
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Stored,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl.min(MAX_TTL))
    }
}

/// An in-process [`CacheStore`] for single-instance apps, the example app without Redis, and
/// tests. Entries are bounded by total size (moka, TinyLFU eviction) and expire on their TTL.
///
/// Time follows `tokio::time` (anchored to the wall clock when the store is created), so tests
/// can `tokio::time::pause()` and `advance()` through freshness and stale windows. Cloning is
/// cheap and clones share the entries.
///
/// ```
/// use redtower_cache::{Cache, MemoryStore};
///
/// let cache = Cache::new(MemoryStore::new());
/// # let _ = cache;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
    max_variants: usize,
}

struct Inner {
    entries: Moka<String, Stored>,
    locks: Mutex<HashMap<String, (String, Instant)>>,
    /// Per group: each variant and its entry's deadline.
    index: Mutex<HashMap<String, HashMap<String, Instant>>>,
    tags: Mutex<HashMap<String, (u64, Instant)>>,
    /// The prefix bans: copied on write, so a read is one `Arc` clone.
    bans: Mutex<Arc<Bans>>,
    anchor_ms: u64,
    anchor: Instant,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.inner.entries.entry_count())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// The default bound on stored bytes: 64 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

    /// A store holding up to [`DEFAULT_MAX_BYTES`](Self::DEFAULT_MAX_BYTES) of entries.
    pub fn new() -> Self {
        Self::with_max_bytes(Self::DEFAULT_MAX_BYTES)
    }

    /// A store holding up to `max_bytes` of entries (keys and values); the least useful are
    /// evicted beyond it.
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        let entries = Moka::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Stored| {
                u32::try_from(k.len() + v.value.len() + 64).unwrap_or(u32::MAX)
            })
            .expire_after(ByTtl)
            .build();
        let anchor_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            inner: Arc::new(Inner {
                entries,
                locks: Mutex::default(),
                index: Mutex::default(),
                tags: Mutex::default(),
                bans: Mutex::new(Bans::none()),
                anchor_ms,
                anchor: Instant::now(),
            }),
            max_variants: Self::DEFAULT_MAX_VARIANTS,
        }
    }

    /// The default bound on variants per group: 64 (as
    /// [`RedisStore::DEFAULT_MAX_VARIANTS`](crate::RedisStore::DEFAULT_MAX_VARIANTS)).
    pub const DEFAULT_MAX_VARIANTS: usize = 64;

    /// The most variants one group (one URI) holds; past it a new variant is not stored. See
    /// [`RedisStore::max_variants`](crate::RedisStore::max_variants). Defaults to
    /// [`DEFAULT_MAX_VARIANTS`](Self::DEFAULT_MAX_VARIANTS) (64), at least 1.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use redtower_cache::{CacheStore, EntryKey, MemoryStore};
    ///
    /// let store = MemoryStore::new().max_variants(1);
    /// let en = EntryKey::new("uri", Some("en".to_owned()));
    /// let fr = EntryKey::new("uri", Some("fr".to_owned()));
    /// let ttl = Duration::from_secs(60);
    /// assert!(store.put(&en, Bytes::from_static(b"hello"), ttl, None).await.unwrap());
    /// assert!(!store.put(&fr, Bytes::from_static(b"salut"), ttl, None).await.unwrap());
    /// assert!(store.get(&fr).await.unwrap().is_none());
    /// # }
    /// ```
    #[must_use]
    pub fn max_variants(mut self, n: usize) -> Self {
        self.max_variants = n.max(1);
        self
    }

    /// The number of live entries (approximate, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.inner.entries.run_pending_tasks();
        self.inner.entries.entry_count()
    }

    fn entry_name(key: &EntryKey) -> String {
        key.to_string()
    }

    fn lock_name(key: &EntryKey) -> String {
        format!("{key}:lk")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn sweep<V>(map: &mut HashMap<String, V>, now: Instant, deadline: impl Fn(&V) -> Instant) {
    if map.len() > 1024 {
        map.retain(|_, v| deadline(v) > now);
    }
}

#[async_trait]
impl CacheStore for MemoryStore {
    fn now_ms(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.inner.anchor);
        self.inner
            .anchor_ms
            .saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    async fn get(&self, key: &EntryKey) -> Result<Option<Bytes>> {
        let name = Self::entry_name(key);
        Ok(match self.inner.entries.get(&name) {
            Some(s) if s.deadline > Instant::now() => Some(s.value),
            Some(_) => {
                self.inner.entries.invalidate(&name);
                None
            }
            None => None,
        })
    }

    async fn put(
        &self,
        key: &EntryKey,
        value: Bytes,
        ttl: Duration,
        token: Option<&LockToken>,
    ) -> Result<bool> {
        let now = Instant::now();
        let name = Self::entry_name(key);
        if let Some(token) = token {
            let mut locks = lock(&self.inner.locks);
            let lock_name = Self::lock_name(key);
            let ours = matches!(locks.get(&lock_name), Some((t, d)) if *t == token.0 && *d > now);
            if ours {
                locks.remove(&lock_name);
            } else if matches!(self.inner.entries.get(&name), Some(s) if s.deadline > now) {
                return Ok(false);
            }
        }
        if let Some(variant) = key.variant() {
            let mut index = lock(&self.inner.index);
            sweep(&mut index, now, |v| {
                v.values().max().copied().unwrap_or(now)
            });
            let members = index.entry(key.group().to_owned()).or_default();
            // Variants whose entries expired no longer count against the bound.
            members.retain(|_, deadline| *deadline > now);
            if !members.contains_key(variant) && members.len() >= self.max_variants {
                return Ok(false);
            }
            members.insert(variant.to_owned(), later(now, ttl));
        }
        self.inner.entries.insert(
            name,
            Stored {
                value,
                deadline: later(now, ttl),
                ttl,
            },
        );
        Ok(true)
    }

    async fn invalidate(&self, group: &str) -> Result<()> {
        let variants = lock(&self.inner.index).remove(group);
        self.inner.entries.invalidate(group);
        if let Some(variants) = variants {
            for v in variants.into_keys() {
                self.inner
                    .entries
                    .invalidate(&EntryKey::new(group, Some(v)).to_string());
            }
        }
        Ok(())
    }

    async fn try_lock(&self, key: &EntryKey, ttl: Duration) -> Result<Option<LockToken>> {
        let now = Instant::now();
        let mut locks = lock(&self.inner.locks);
        sweep(&mut locks, now, |v| v.1);
        let name = Self::lock_name(key);
        if matches!(locks.get(&name), Some((_, d)) if *d > now) {
            return Ok(None);
        }
        let token = LockToken::generate();
        locks.insert(name, (token.0.clone(), later(now, ttl)));
        Ok(Some(token))
    }

    async fn unlock(&self, key: &EntryKey, token: &LockToken) -> Result<bool> {
        let now = Instant::now();
        let mut locks = lock(&self.inner.locks);
        let name = Self::lock_name(key);
        if matches!(locks.get(&name), Some((t, d)) if *t == token.0 && *d > now) {
            locks.remove(&name);
            return Ok(true);
        }
        Ok(false)
    }

    async fn tag_generations(&self, tags: &[String]) -> Result<Vec<u64>> {
        let now = Instant::now();
        let map = lock(&self.inner.tags);
        Ok(tags
            .iter()
            .map(|t| match map.get(t) {
                Some((g, d)) if *d > now => *g,
                _ => 0,
            })
            .collect())
    }

    async fn ensure_tags(&self, tags: &[String], ttl: Duration) -> Result<Vec<u64>> {
        let now = Instant::now();
        let mut map = lock(&self.inner.tags);
        sweep(&mut map, now, |v| v.1);
        Ok(tags
            .iter()
            .map(|t| {
                let slot = map
                    .entry(t.clone())
                    .or_insert_with(|| (new_generation(), later(now, ttl)));
                if slot.1 <= now {
                    *slot = (new_generation(), later(now, ttl));
                }
                slot.1 = slot.1.max(later(now, ttl));
                slot.0
            })
            .collect())
    }

    async fn bump_tag(&self, tag: &str) -> Result<()> {
        lock(&self.inner.tags).remove(tag);
        Ok(())
    }

    async fn ban_prefix(&self, prefix: &str) -> Result<()> {
        let now = self.now_ms();
        let max_age = u64::try_from(MAX_TTL.as_millis()).unwrap_or(u64::MAX);
        let mut bans = lock(&self.inner.bans);
        let mut next = Bans::clone(&bans);
        next.add(prefix, now, now, max_age);
        *bans = Arc::new(next);
        Ok(())
    }

    async fn bans(&self) -> Result<Arc<Bans>> {
        Ok(lock(&self.inner.bans).clone())
    }
}
