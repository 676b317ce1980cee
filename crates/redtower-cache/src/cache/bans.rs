//! Purge by prefix: [`Cache::invalidate_prefix`] records a ban in the store; lookups of a
//! cache with [`prefix_purge`](super::CacheBuilder::prefix_purge) read the bans with the entry
//! and treat a banned entry as a miss (see [`bans`](crate::bans)).

use super::Cache;
use crate::{
    Error, Result,
    bans::{self, Bans, MAX_PREFIX_LEN},
    envelope::Entry,
    key::Key,
};

impl Cache {
    /// Invalidates every entry whose key starts with `prefix`, on every instance, in O(1): a
    /// cache-aside value whose key starts with it (`"price:"`), and a response whose request
    /// path and query start with it (`"/products/"`, on every host). The empty prefix
    /// invalidates everything.
    ///
    /// The store records one ban (prefix, time) in its bounded ban list; each instance's next
    /// read of an entry stored before the ban is a miss (entries are dropped lazily, by their
    /// next fill or their TTL). This instance's L1 drops matching entries at once; other
    /// instances' L1 entries live at most the L1 TTL. See [`bans`](crate::bans) for the bound
    /// and the clock allowance on Redis ([`RedisStore::clock_skew`](crate::RedisStore::clock_skew)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use redtower_cache::{Cache, MemoryStore};
    ///
    /// let cache = Cache::builder(MemoryStore::new()).prefix_purge(true).build();
    /// cache.set("price:tea", &8u32, Duration::from_secs(60)).await.unwrap();
    /// cache.set("stock:tea", &3u32, Duration::from_secs(60)).await.unwrap();
    /// cache.invalidate_prefix("price:").await.unwrap();
    /// assert_eq!(cache.get_many::<u32>(&["price:tea", "stock:tea"]).await, [None, Some(3)]);
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::PrefixPurgeOff`] when the cache was built without
    /// [`prefix_purge`](super::CacheBuilder::prefix_purge) (its lookups would not honour the
    /// ban), [`Error::PrefixTooLong`] for a prefix over
    /// [`MAX_PREFIX_LEN`](crate::bans::MAX_PREFIX_LEN) bytes, and store failures: the ban may not
    /// have been recorded (retry: banning twice is harmless).
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<()> {
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(Error::PrefixTooLong);
        }
        self.ban(prefix).await
    }

    /// Records a ban of `prefix` in the store and drops matching entries from this L1.
    async fn ban(&self, prefix: &str) -> Result<()> {
        if !self.inner.settings.prefix_purge {
            return Err(Error::PrefixPurgeOff);
        }
        if let Some(l1) = &self.inner.l1 {
            let prefix = prefix.to_owned();
            let _ = l1.invalidate_entries_if(move |k, _| {
                bans::target(k).is_some_and(|t| bans::starts_with(&t, prefix.as_bytes()))
            });
        }
        self.inner.store.ban_prefix(prefix).await
    }

    /// Invalidates the responses of one path and query (`"/products/42"`, `"/search?q=tea"`),
    /// on every host and every instance, and the cache-aside value whose key is exactly
    /// `path_and_query`: [`invalidate_prefix`](Self::invalidate_prefix) for that one key (one
    /// ban). The query is matched as the cache keys it: parameters a route's
    /// [`QueryKey`](crate::QueryKey) leaves out are not part of it. This is what the `PURGE`
    /// method of [`purge::PurgeMethodLayer`](crate::purge::PurgeMethodLayer) does.
    ///
    /// # Errors
    ///
    /// As [`invalidate_prefix`](Self::invalidate_prefix).
    pub async fn invalidate_uri(&self, path_and_query: &str) -> Result<()> {
        if path_and_query.len() > MAX_PREFIX_LEN {
            return Err(Error::PrefixTooLong);
        }
        let mut exact = String::with_capacity(path_and_query.len() + 1);
        exact.push_str(path_and_query);
        exact.push('\0');
        self.ban(&exact).await
    }

    /// Whether lookups honour prefix bans (see
    /// [`prefix_purge`](super::CacheBuilder::prefix_purge)).
    pub fn prefix_purge(&self) -> bool {
        self.inner.settings.prefix_purge
    }

    /// Whether a ban covers `entry`, found under `key`.
    pub(super) fn banned(&self, key: &Key, entry: &Entry, bans: Option<&Bans>) -> bool {
        let Some(bans) = bans.filter(|b| !b.is_empty()) else {
            return false;
        };
        let banned = match bans::target(key.canonical()) {
            Some(t) => bans.bans(&t, entry.stored_at),
            None => entry.stored_at <= bans.horizon,
        };
        if banned {
            tracing::debug!(target: "redtower::cache", cache = self.name(), "entry banned by a prefix purge; treating as a miss");
        }
        banned
    }
}
