//! Cache-aside: [`Cache::get_or_fetch`] and its options ([`Fetch`]).

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::{Serialize, de::DeserializeOwned};

use super::{Cache, Filled, Freshness, Outcome, freshness, stats::bump};
use crate::{
    FetchError, Result,
    envelope::{Entry, FLAG_NEGATIVE},
    key::{Canonical, Key},
    store::{EntryKey, MAX_TTL},
};

/// Options for one cache-aside read, built by [`Cache::fetch`] and run with [`Fetch::run`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use redtower_cache::{Cache, MemoryStore};
///
/// let cache = Cache::new(MemoryStore::new());
/// let n: Option<u32> = cache
///     .fetch("stock:42")
///     .ttl(Duration::from_secs(60))
///     .stale_while_revalidate(Duration::from_secs(30))
///     .negative_ttl(Duration::from_secs(5))
///     .tags(["product:42"])
///     .run(|| async { Ok::<_, std::io::Error>(None) })
///     .await
///     .unwrap();
/// assert_eq!(n, None);
/// # }
/// ```
#[derive(Debug)]
#[must_use]
pub struct Fetch<'a> {
    cache: &'a Cache,
    key: &'a str,
    ttl: Duration,
    swr: Duration,
    sie: Duration,
    negative_ttl: Option<Duration>,
    tags: Vec<String>,
}

impl<'a> Fetch<'a> {
    /// How long a value is fresh. Defaults to 60 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// After the TTL, the value is still served for this long while one refresh runs in the
    /// background (never on the caller's path). Defaults to zero (no stale serving).
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.swr = window;
        self
    }

    /// After the TTL, the value is still served for this long when the fetcher fails.
    /// Defaults to zero.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.sie = window;
        self
    }

    /// Caches a negative result (a value that serializes to JSON `null`, such as `None`) for
    /// this long. Defaults to off: negative results are returned but not stored.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Tags the value, for [`Cache::invalidate_tag`]. Each tag costs one extra `GET` per hit
    /// (sent concurrently with the entry's). Defaults to none.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Returns the cached value, or runs `fetch` (once per key across all callers and
    /// instances at a time) and caches its value.
    ///
    /// * A fresh value is returned as is; a stale one (within
    ///   [`stale_while_revalidate`](Self::stale_while_revalidate)) is returned at once while
    ///   `fetch` refreshes it in the background.
    /// * Errors from `fetch` are never stored; a value within
    ///   [`stale_if_error`](Self::stale_if_error) is returned instead when there is one.
    /// * When the store fails, `fetch` runs (fail-open) and the failure is counted.
    /// * An entry that cannot be decoded as `T` is a miss and is overwritten.
    ///
    /// `fetch` must be `'static` because a refresh may outlive the call: clone what it needs
    /// (pools, clients) into it.
    ///
    /// # Errors
    ///
    /// [`FetchError::Fetch`] when `fetch` failed and no stale value covers for it, and
    /// [`FetchError::Serialize`] when the value cannot be serialized to JSON.
    pub async fn run<T, E, F, Fut>(self, fetch: F) -> Result<T, FetchError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let cache = self.cache;
        let key = aside_key(self.key);
        let found = cache.read(&key, &self.tags).await;
        let now = cache.now_ms();
        let mut seen = 0;
        let mut fallback = None;
        if let Some(e) = found {
            seen = e.stored_at;
            match freshness(&e, now) {
                Freshness::Fresh => {
                    if let Ok(v) = decode::<T>(&e) {
                        cache.record("hit", "aside");
                        return Ok(v);
                    }
                    bump_corrupt(cache);
                }
                Freshness::Stale => {
                    if let Ok(v) = decode::<T>(&e) {
                        cache.record("stale", "aside");
                        let template = self.template();
                        cache.spawn_refresh(key, seen, self.tags.clone(), move || async move {
                            match fetch().await {
                                Ok(v) => template.outcome(&v).1,
                                Err(_) => Outcome::Nothing,
                            }
                        });
                        return Ok(v);
                    }
                    bump_corrupt(cache);
                }
                Freshness::ErrorOnly => fallback = Some(e),
                Freshness::Dead => {}
            }
        }
        cache.record("miss", "aside");
        let template = self.template();
        let filled = cache
            .fill(&key, &self.tags, seen, move || async move {
                match fetch().await {
                    Ok(v) => match template.outcome(&v) {
                        (Ok(()), outcome) => (Ok(v), outcome),
                        (Err(e), _) => (Err(FetchError::Serialize(e)), Outcome::Nothing),
                    },
                    Err(e) => (Err(FetchError::Fetch(e)), Outcome::Nothing),
                }
            })
            .await;
        let result = match filled {
            Filled::Led(r) => r,
            Filled::Shared(e, f) => match decode::<T>(&e) {
                Ok(v) => Ok(v),
                // Another call site stored a different type under this key: fetch ourselves.
                Err(_) => f().await.0,
            },
            // The fill we waited for produced nothing shareable: fetch ourselves.
            Filled::Own(f) => f().await.0,
        };
        match result {
            Err(FetchError::Fetch(e)) => match fallback.and_then(|s| decode::<T>(&s).ok()) {
                Some(v) => {
                    cache.record("stale", "aside");
                    Ok(v)
                }
                None => Err(FetchError::Fetch(e)),
            },
            r => r,
        }
    }

    /// How this read turns a fetched value into an entry.
    fn template(&self) -> EntryTemplate {
        EntryTemplate {
            digest: *aside_key(self.key).digest(),
            ttl: self.ttl,
            swr: self.swr,
            sie: self.sie,
            negative_ttl: self.negative_ttl,
            now: {
                let store = self.cache.inner.store.clone();
                Arc::new(move || store.now_ms())
            },
        }
    }
}

fn bump_corrupt(cache: &Cache) {
    bump(&cache.inner.stats.corrupt);
}

/// How a fetched value becomes an entry: its key digest, lifetimes and clock.
struct EntryTemplate {
    digest: [u8; 32],
    ttl: Duration,
    swr: Duration,
    sie: Duration,
    negative_ttl: Option<Duration>,
    now: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl EntryTemplate {
    /// Encodes a fetched value into an entry and decides whether to store it.
    fn outcome<T: Serialize>(&self, v: &T) -> (Result<(), serde_json::Error>, Outcome) {
        let body = match serde_json::to_vec(v) {
            Ok(b) => Bytes::from(b),
            Err(e) => return (Err(e), Outcome::Nothing),
        };
        let negative = body.as_ref() == b"null";
        let ttl = match (negative, self.negative_ttl) {
            (true, Some(n)) => n,
            (true, None) => {
                return (
                    Ok(()),
                    Outcome::Share(self.entry(body, Duration::ZERO, true)),
                );
            }
            (false, _) => self.ttl,
        }
        .min(MAX_TTL);
        let entry = self.entry(body, ttl, negative);
        let keep = ttl.saturating_add(self.swr.max(self.sie));
        if ttl.is_zero() {
            return (Ok(()), Outcome::Share(entry));
        }
        (Ok(()), Outcome::Store(entry, keep))
    }

    fn entry(&self, body: Bytes, ttl: Duration, negative: bool) -> Entry {
        let now = (self.now)();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let fresh_until = now.saturating_add(ms(ttl));
        Entry {
            flags: if negative { FLAG_NEGATIVE } else { 0 },
            status: StatusCode::OK,
            stored_at: now,
            fresh_until,
            stale_until: fresh_until.saturating_add(ms(self.swr.min(MAX_TTL))),
            error_until: fresh_until.saturating_add(ms(self.sie.min(MAX_TTL))),
            key_digest: self.digest,
            tags: Vec::new(),
            headers: HeaderMap::new(),
            body,
        }
    }
}

fn decode<T: DeserializeOwned>(e: &Entry) -> Result<T, serde_json::Error> {
    serde_json::from_slice(&e.body)
}

pub(super) fn aside_key(key: &str) -> Key {
    let mut c = Canonical::new("aside");
    c.push(key.as_bytes());
    Key::new(c)
}

impl Cache {
    /// Returns the value cached under `key`, or runs `fetch`, caches its value for `ttl` and
    /// returns it. The shortcut for [`fetch(key).ttl(ttl).run(fetch)`](Fetch::run), whose docs
    /// list the guarantees (single-flight across instances, fail-open, errors never stored).
    ///
    /// Values are stored as JSON (any `serde` type; `0`, `false`, `""` and `[]` are values,
    /// not misses).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use redtower_cache::{Cache, MemoryStore};
    ///
    /// let cache = Cache::new(MemoryStore::new());
    /// let ttl = Duration::from_secs(60);
    /// let a: u32 = cache.get_or_fetch("answer", ttl, || async { Ok::<_, String>(42) }).await.unwrap();
    /// // Cached: the second fetcher never runs.
    /// let b: u32 = cache.get_or_fetch("answer", ttl, || async { Ok::<_, String>(0) }).await.unwrap();
    /// assert_eq!((a, b), (42, 42));
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`Fetch::run`].
    pub async fn get_or_fetch<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Duration,
        fetch: F,
    ) -> Result<T, FetchError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.fetch(key).ttl(ttl).run(fetch).await
    }

    /// Options for reading `key` (TTL, stale windows, negative caching, tags); finish with
    /// [`Fetch::run`].
    pub fn fetch<'a>(&'a self, key: &'a str) -> Fetch<'a> {
        Fetch {
            cache: self,
            key,
            ttl: Duration::from_secs(60),
            swr: Duration::ZERO,
            sie: Duration::ZERO,
            negative_ttl: None,
            tags: Vec::new(),
        }
    }

    /// The store key of the cache-aside key `key` (for tools and tests; see
    /// [`RedisStore::entry_key`](crate::RedisStore::entry_key) for the Redis key).
    pub fn entry_key(&self, key: &str) -> EntryKey {
        aside_key(key).entry().clone()
    }

    /// Deletes the value cached under `key` (a cache-aside key), everywhere.
    ///
    /// # Errors
    ///
    /// When the store fails: the value may still be cached.
    pub async fn invalidate(&self, key: &str) -> Result<()> {
        let key = aside_key(key);
        self.invalidate_group(key.entry().group()).await
    }
}
