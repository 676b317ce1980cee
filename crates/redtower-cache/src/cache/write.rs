//! Write-through and batch reads for cache-aside users: [`Cache::set`], [`Cache::get_many`].

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::{Serialize, de::DeserializeOwned};

use super::{Cache, Freshness, aside::aside_key, freshness, stats::bump};
use crate::{Error, Result, envelope::Entry, store::MAX_TTL};

impl Cache {
    /// Stores `value` under the cache-aside key `key`, fresh for `ttl`, replacing what is
    /// there (write-through: after updating the source of truth, put the new value in the
    /// cache instead of only invalidating it). The value is read back by
    /// [`get_or_fetch`](Self::get_or_fetch), [`fetch`](Self::fetch) and
    /// [`get_many`](Self::get_many) as JSON, like a fetched one, on every instance.
    ///
    /// One `SET` on Redis. A fill that started before this call may still store its older
    /// value after it (the cache does not order writes from different callers).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use redtower_cache::{Cache, MemoryStore};
    ///
    /// let cache = Cache::new(MemoryStore::new());
    /// cache.set("price:tea", &8u32, Duration::from_secs(60)).await.unwrap();
    /// let price: u32 = cache
    ///     .get_or_fetch("price:tea", Duration::from_secs(60), || async { Ok::<_, String>(7) })
    ///     .await
    ///     .unwrap();
    /// assert_eq!(price, 8); // the fetcher did not run
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] when `value` cannot be serialized; a store error when the store
    /// failed (the old value may still be cached).
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<()> {
        self.set_tagged(key, value, ttl, &[] as &[&str]).await
    }

    /// [`set`](Self::set), with tags for [`invalidate_tag`](Self::invalidate_tag) (like
    /// [`Fetch::tags`](crate::Fetch::tags); each tag costs one extra read per hit).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use redtower_cache::{Cache, MemoryStore};
    ///
    /// let cache = Cache::new(MemoryStore::new());
    /// let ttl = Duration::from_secs(60);
    /// cache.set_tagged("price:tea", &8u32, ttl, &["prices"]).await.unwrap();
    /// cache.invalidate_tag("prices").await.unwrap();
    /// assert_eq!(cache.get_many::<u32>(&["price:tea"]).await, [None]);
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`set`](Self::set).
    pub async fn set_tagged<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
        tags: &[impl AsRef<str>],
    ) -> Result<()> {
        let body = Bytes::from(serde_json::to_vec(value).map_err(Error::Serialize)?);
        let key = aside_key(key);
        let ttl = ttl.min(MAX_TTL);
        let now = self.now_ms();
        let fresh_until = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let mut entry = Entry {
            flags: 0,
            status: StatusCode::OK,
            stored_at: now,
            fresh_until,
            stale_until: fresh_until,
            error_until: fresh_until,
            key_digest: *key.digest(),
            tags: Vec::new(),
            headers: HeaderMap::new(),
            body,
        };
        let store = &self.inner.store;
        if !tags.is_empty() {
            let tags: Vec<String> = tags.iter().map(|t| t.as_ref().to_owned()).collect();
            let generations = self.guard(store.ensure_tags(&tags, ttl)).await?;
            entry.tags = tags.into_iter().zip(generations).collect();
        }
        // This instance's L1 must not keep serving the old value.
        self.invalidate_l1_group(key.entry().group());
        let bytes = entry.encode().map_err(|error| {
            tracing::warn!(target: "redtower::cache", cache = self.name(), %error, "value too large for the envelope; not stored");
            Error::Serialize(<serde_json::Error as serde::ser::Error>::custom(error))
        })?;
        self.guard(store.put(key.entry(), bytes, ttl, None)).await?;
        bump(&self.inner.stats.stored);
        Ok(())
    }

    /// The fresh values cached under the cache-aside keys `keys`, in order (`None` for a
    /// miss, a stale or negative entry, or a value that does not decode as `T`). Never calls a
    /// fetcher and never fails: a store failure reads as misses (fail-open, counted).
    ///
    /// The reads leave together: on Redis they are pipelined on the shared connection (and
    /// with [`RedisStore::coalesce_reads`](crate::RedisStore::coalesce_reads), sent as one
    /// `MGET` per batch), so a batch costs one round trip per node, on Cluster too (each
    /// key is its own slot group).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use redtower_cache::{Cache, MemoryStore};
    ///
    /// let cache = Cache::new(MemoryStore::new());
    /// cache.set("user:1", "ada", Duration::from_secs(60)).await.unwrap();
    /// cache.set("user:3", "grace", Duration::from_secs(60)).await.unwrap();
    /// let names: Vec<Option<String>> = cache.get_many(&["user:1", "user:2", "user:3"]).await;
    /// assert_eq!(names, [Some("ada".into()), None, Some("grace".into())]);
    /// # }
    /// ```
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[impl AsRef<str>]) -> Vec<Option<T>> {
        let reads = keys.iter().map(|k| async move {
            let key = aside_key(k.as_ref());
            self.read(&key, &[]).await
        });
        let found = futures::future::join_all(reads).await;
        let now = self.now_ms();
        found
            .into_iter()
            .map(|e| {
                let v = e
                    .filter(|e| freshness(e, now) == Freshness::Fresh)
                    .and_then(|e| serde_json::from_slice(&e.body).ok());
                self.record(if v.is_some() { "hit" } else { "miss" }, "aside");
                v
            })
            .collect()
    }
}
