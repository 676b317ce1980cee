//! The behaviour every `CacheStore` must have, written once and run per backend
//! (memory in `tests/memory.rs`, Redis standalone and Cluster in `tests/redis.rs`).

#![allow(dead_code)]

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use redtower_cache::{
    Cache, CacheStore, EntryKey, Error, FetchError, LockToken, Result,
    bans::{self, Bans},
};

const MIN: Duration = Duration::from_secs(60);

/// Runs each named check against a store made by `$make(test_name)` (an async fn).
#[macro_export]
macro_rules! conformance {
    ($make:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let store = $make(stringify!($check)).await;
                conformance::$check(store).await;
            }
        )*
    };
}

/// Every check, for the macro.
#[macro_export]
macro_rules! all_conformance {
    ($make:path) => {
        conformance!($make;
            get_put_round_trip,
            variants_are_invalidated_with_their_group,
            expired_variants_leave_the_variant_bound,
            lock_is_exclusive_and_fenced,
            lost_lock_never_clobbers_a_newer_fill,
            tag_generations,
            a_lookup_reads_entry_tags_and_bans_together,
            get_or_fetch_caches_falsy_values,
            fetch_errors_are_never_stored,
            negative_results_only_with_negative_ttl,
            invalidate_removes_a_value,
            invalidate_tag_drops_tagged_values,
            undecodable_entry_is_a_miss_and_overwritten,
            concurrent_get_or_fetch_runs_the_fetcher_once,
            a_fill_landing_before_the_lock_is_shared,
            a_fill_landing_while_waiting_for_the_lock_is_shared,
            a_ban_covers_older_entries_under_its_prefix,
            a_ban_replaces_the_bans_it_covers,
            the_ban_list_is_bounded_and_over_invalidates,
            invalidate_prefix_misses_matching_keys_only,
        );
    };
}

fn key(group: &str, variant: Option<&str>) -> EntryKey {
    EntryKey::new(group, variant.map(str::to_owned))
}

pub(crate) async fn get_put_round_trip(store: impl CacheStore) {
    let k = key("g1", None);
    assert_eq!(store.get(&k).await.unwrap(), None);
    assert!(
        store
            .put(&k, Bytes::from_static(b"v1"), MIN, None)
            .await
            .unwrap()
    );
    assert_eq!(store.get(&k).await.unwrap().unwrap(), "v1");
    assert!(
        store
            .put(&k, Bytes::from_static(b"v2"), MIN, None)
            .await
            .unwrap()
    );
    assert_eq!(store.get(&k).await.unwrap().unwrap(), "v2");
    // Binary-safe.
    let bin = Bytes::from((0..=255u8).collect::<Vec<_>>());
    store.put(&k, bin.clone(), MIN, None).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap().unwrap(), bin);
    assert!(store.now_ms() > 1_600_000_000_000);
}

pub(crate) async fn variants_are_invalidated_with_their_group(store: impl CacheStore) {
    let plain = key("g2", None);
    let a = key("g2", Some("va"));
    let b = key("g2", Some("vb"));
    let other = key("g3", Some("va"));
    for k in [&plain, &a, &b, &other] {
        store
            .put(k, Bytes::from_static(b"x"), MIN, None)
            .await
            .unwrap();
    }
    store.invalidate("g2").await.unwrap();
    for k in [&plain, &a, &b] {
        assert_eq!(store.get(k).await.unwrap(), None, "{k}");
    }
    assert!(store.get(&other).await.unwrap().is_some());
    // A group without entries is fine.
    store.invalidate("nothing-here").await.unwrap();
}

/// Variants sent once (junk `Accept-Language` values) fill a group's variant bound only while
/// their entries live: once they expired, a new variant is stored again, even though another
/// variant of the group kept being refreshed with a long TTL the whole time.
pub(crate) async fn expired_variants_leave_the_variant_bound(store: impl CacheStore) {
    const MAX: usize = redtower_cache::RedisStore::DEFAULT_MAX_VARIANTS;
    const SHORT: Duration = Duration::from_millis(300);
    let real = key("g4", Some("real"));
    let fresh = key("g4", Some("new"));
    let put = |k: EntryKey, ttl: Duration| {
        let store = &store;
        async move {
            store
                .put(&k, Bytes::from_static(b"x"), ttl, None)
                .await
                .unwrap()
        }
    };
    assert!(put(real.clone(), MIN).await);
    for i in 1..MAX {
        let junk = key("g4", Some(&format!("junk-{i}")));
        assert!(put(junk, SHORT).await, "variant {i} of {MAX} is stored");
    }
    assert!(
        !put(fresh.clone(), MIN).await,
        "the group holds its most variants"
    );
    assert!(store.get(&fresh).await.unwrap().is_none());
    // Keep the real variant refreshed (each refresh extends the group's index), and try the new
    // variant until the junk entries have expired: a bounded wait, generous for a busy machine.
    let started = tokio::time::Instant::now();
    let stored = loop {
        assert!(
            put(real.clone(), MIN).await,
            "the real variant stays stored"
        );
        if started.elapsed() > SHORT && put(fresh.clone(), MIN).await {
            break true;
        }
        if started.elapsed() > Duration::from_secs(15) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        stored,
        "a new variant is stored once the junk variants expired"
    );
    assert_eq!(store.get(&fresh).await.unwrap().unwrap(), "x");
    assert_eq!(store.get(&real).await.unwrap().unwrap(), "x");
    // The index still finds every live variant for invalidation.
    store.invalidate("g4").await.unwrap();
    assert!(store.get(&fresh).await.unwrap().is_none());
    assert!(store.get(&real).await.unwrap().is_none());
}

pub(crate) async fn lock_is_exclusive_and_fenced(store: impl CacheStore) {
    let k = key("g4", None);
    let t1 = store.try_lock(&k, MIN).await.unwrap().expect("free lock");
    assert!(store.try_lock(&k, MIN).await.unwrap().is_none());
    // A variant has its own lock.
    assert!(
        store
            .try_lock(&key("g4", Some("v")), MIN)
            .await
            .unwrap()
            .is_some()
    );
    let stranger = {
        let other = key("g5", None);
        store.try_lock(&other, MIN).await.unwrap().unwrap()
    };
    assert!(
        !store.unlock(&k, &stranger).await.unwrap(),
        "wrong token must not unlock"
    );
    assert!(store.try_lock(&k, MIN).await.unwrap().is_none());
    assert!(store.unlock(&k, &t1).await.unwrap());
    assert!(!store.unlock(&k, &t1).await.unwrap(), "released twice");
    assert!(store.try_lock(&k, MIN).await.unwrap().is_some());
}

pub(crate) async fn lost_lock_never_clobbers_a_newer_fill(store: impl CacheStore) {
    let k = key("g6", None);
    let old = store.try_lock(&k, MIN).await.unwrap().unwrap();
    // The lock is lost (released by someone else's compare-and-delete after expiry) and a
    // newer fill lands.
    assert!(store.unlock(&k, &old).await.unwrap());
    let newer = store.try_lock(&k, MIN).await.unwrap().unwrap();
    assert!(
        store
            .put(&k, Bytes::from_static(b"newer"), MIN, Some(&newer))
            .await
            .unwrap()
    );
    // The fill put released the lock.
    let probe = store
        .try_lock(&k, MIN)
        .await
        .unwrap()
        .expect("fill released the lock");
    store.unlock(&k, &probe).await.unwrap();
    // The old holder finishes late: not written.
    assert!(
        !store
            .put(&k, Bytes::from_static(b"old"), MIN, Some(&old))
            .await
            .unwrap()
    );
    assert_eq!(store.get(&k).await.unwrap().unwrap(), "newer");
    // With no entry at all, a late fill is still useful and is written.
    let empty = key("g7", None);
    assert!(
        store
            .put(&empty, Bytes::from_static(b"late"), MIN, Some(&old))
            .await
            .unwrap()
    );
    assert_eq!(store.get(&empty).await.unwrap().unwrap(), "late");
}

pub(crate) async fn tag_generations(store: impl CacheStore) {
    let tags = vec!["t:a".to_owned(), "t:b".to_owned()];
    assert_eq!(store.tag_generations(&tags).await.unwrap(), vec![0, 0]);
    let g = store.ensure_tags(&tags, MIN).await.unwrap();
    assert!(g.iter().all(|g| *g != 0));
    assert_ne!(g[0], g[1]);
    assert_eq!(
        store.ensure_tags(&tags, MIN).await.unwrap(),
        g,
        "stable once created"
    );
    assert_eq!(store.tag_generations(&tags).await.unwrap(), g);
    store.bump_tag("t:a").await.unwrap();
    assert_eq!(store.tag_generations(&tags).await.unwrap(), vec![0, g[1]]);
    let g2 = store.ensure_tags(&tags, MIN).await.unwrap();
    assert_ne!(g2[0], g[0], "a bumped tag gets a new generation");
    assert_eq!(g2[1], g[1]);
}

/// `lookup` answers what `get`, `tag_generations` and `bans` answer, read together (on a
/// Redis Cluster, keys of several slots).
pub(crate) async fn a_lookup_reads_entry_tags_and_bans_together(store: impl CacheStore) {
    let k = key("lookup", None);
    let other = key("lookup", Some("v"));
    let tags: Vec<String> = (0..5).map(|i| format!("lookup:tag:{i}")).collect();
    let found = store.lookup(&k, &tags, true).await.unwrap();
    assert_eq!(found.value, None);
    assert_eq!(found.generations, vec![0; 5]);
    assert!(found.bans.as_deref().is_some_and(Bans::is_empty));

    store
        .put(&k, Bytes::from_static(b"entry"), MIN, None)
        .await
        .unwrap();
    store
        .put(&other, Bytes::from_static(b"variant"), MIN, None)
        .await
        .unwrap();
    let generations = store.ensure_tags(&tags[1..3], MIN).await.unwrap();
    store.ban_prefix("/lookup/").await.unwrap();
    let found = store.lookup(&k, &tags, true).await.unwrap();
    assert_eq!(found.value.as_deref(), Some(&b"entry"[..]));
    assert_eq!(
        found.generations,
        vec![0, generations[0], generations[1], 0, 0]
    );
    assert_eq!(found.bans, Some(store.bans().await.unwrap()));
    assert_eq!(found.bans.map(|b| b.prefixes.len()), Some(1));

    // Without tags or bans: the entry alone (here, the variant).
    let found = store.lookup(&other, &[], false).await.unwrap();
    assert_eq!(found.value.as_deref(), Some(&b"variant"[..]));
    assert!(found.generations.is_empty());
    assert!(found.bans.is_none());

    // Concurrent lookups (coalesced batches on Redis, with more distinct keys than a batch
    // scans) each get their own values.
    let keys: Vec<EntryKey> = (0..48).map(|i| key(&format!("lookup-{i}"), None)).collect();
    for (i, k) in keys.iter().enumerate().step_by(2) {
        let value = Bytes::from(format!("value-{i}"));
        store.put(k, value, MIN, None).await.unwrap();
    }
    let lookups = keys.iter().enumerate().map(|(i, k)| {
        let store = &store;
        let tags = &tags;
        async move {
            (
                i,
                store.lookup(k, &tags[i % 5..], i % 3 == 0).await.unwrap(),
            )
        }
    });
    for (i, found) in futures::future::join_all(lookups).await {
        let expected = (i % 2 == 0).then(|| format!("value-{i}"));
        assert_eq!(
            found.value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
            expected
        );
        let all = [0, generations[0], generations[1], 0, 0];
        assert_eq!(found.generations, all[i % 5..].to_vec(), "lookup {i}");
        assert_eq!(found.bans.is_some(), i % 3 == 0);
    }
}

pub(crate) async fn get_or_fetch_caches_falsy_values(store: impl CacheStore) {
    let cache = Cache::new(store);
    async fn twice<T>(cache: &Cache, key: &str, first: T, second: T) -> (T, T)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + Clone + 'static,
    {
        let a = cache
            .get_or_fetch(key, MIN, move || async move { Ok::<_, String>(first) })
            .await
            .unwrap();
        let b = cache
            .get_or_fetch(key, MIN, move || async move { Ok::<_, String>(second) })
            .await
            .unwrap();
        (a, b)
    }
    assert_eq!(twice(&cache, "zero", 0u32, 9).await, (0, 0));
    assert_eq!(twice(&cache, "false", false, true).await, (false, false));
    assert_eq!(
        twice(&cache, "empty", String::new(), "x".into()).await,
        (String::new(), String::new())
    );
    assert_eq!(
        twice(&cache, "list", Vec::<u8>::new(), vec![1]).await,
        (vec![], vec![])
    );
    assert_eq!(cache.stats().fetches, 4);
    assert_eq!(cache.stats().hits, 4);
}

pub(crate) async fn fetch_errors_are_never_stored(store: impl CacheStore) {
    let cache = Cache::new(store);
    let err: Result<u32, _> = cache
        .get_or_fetch("flaky", MIN, || async { Err::<u32, _>("db down") })
        .await;
    assert!(matches!(err, Err(FetchError::Fetch("db down"))));
    let ok: u32 = cache
        .get_or_fetch("flaky", MIN, || async { Ok::<_, &str>(5) })
        .await
        .unwrap();
    assert_eq!(ok, 5, "the error was not cached");
    assert_eq!(cache.stats().stored, 1);
}

pub(crate) async fn negative_results_only_with_negative_ttl(store: impl CacheStore) {
    let cache = Cache::new(store);
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let c = calls.clone();
        let v: Option<u8> = cache
            .fetch("absent")
            .ttl(MIN)
            .run(move || async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(None)
            })
            .await
            .unwrap();
        assert_eq!(v, None);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "None is not cached by default"
    );
    for _ in 0..2 {
        let c = calls.clone();
        let v: Option<u8> = cache
            .fetch("absent-neg")
            .ttl(MIN)
            .negative_ttl(MIN)
            .run(move || async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(None)
            })
            .await
            .unwrap();
        assert_eq!(v, None);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "None cached with a negative TTL"
    );
}

pub(crate) async fn invalidate_removes_a_value(store: impl CacheStore) {
    let cache = Cache::new(store);
    let v: u32 = cache
        .get_or_fetch("inv", MIN, || async { Ok::<_, String>(1) })
        .await
        .unwrap();
    assert_eq!(v, 1);
    cache.invalidate("inv").await.unwrap();
    let v: u32 = cache
        .get_or_fetch("inv", MIN, || async { Ok::<_, String>(2) })
        .await
        .unwrap();
    assert_eq!(v, 2);
}

pub(crate) async fn invalidate_tag_drops_tagged_values(store: impl CacheStore) {
    let cache = Cache::new(store);
    let get = |key: &'static str, tag: &'static str, v: u32| {
        let cache = cache.clone();
        async move {
            cache
                .fetch(key)
                .ttl(MIN)
                .tags([tag])
                .run(move || async move { Ok::<_, String>(v) })
                .await
                .unwrap()
        }
    };
    assert_eq!(get("p1", "product", 1).await, 1);
    assert_eq!(get("p2", "product", 2).await, 2);
    assert_eq!(get("u1", "user", 3).await, 3);
    assert_eq!(get("p1", "product", 10).await, 1, "cached");
    cache.invalidate_tag("product").await.unwrap();
    assert_eq!(get("p1", "product", 10).await, 10);
    assert_eq!(get("p2", "product", 20).await, 20);
    assert_eq!(get("u1", "user", 30).await, 3, "other tags untouched");
    assert_eq!(
        get("p1", "product", 100).await,
        10,
        "refilled under the new generation"
    );
}

pub(crate) async fn undecodable_entry_is_a_miss_and_overwritten(store: impl CacheStore) {
    let cache = Cache::new(store);
    let k = cache.entry_key("corrupt");
    cache
        .store()
        .put(
            &k,
            Bytes::from_static(b"{\"not\":\"an envelope\"}"),
            MIN,
            None,
        )
        .await
        .unwrap();
    let v: u32 = cache
        .get_or_fetch("corrupt", MIN, || async { Ok::<_, String>(7) })
        .await
        .unwrap();
    assert_eq!(v, 7);
    assert_eq!(cache.stats().corrupt, 1);
    let stored = cache.store().get(&k).await.unwrap().unwrap();
    assert!(stored.starts_with(b"RTC"), "overwritten with an envelope");
    let v: u32 = cache
        .get_or_fetch("corrupt", MIN, || async { Ok::<_, String>(8) })
        .await
        .unwrap();
    assert_eq!(v, 7);
}

pub(crate) async fn concurrent_get_or_fetch_runs_the_fetcher_once(store: impl CacheStore) {
    let cache = Cache::new(store);
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch("hot", MIN, move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, String>(42u32)
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 42);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// What a [`Racy`] store and its test share: the timing it simulates.
#[derive(Debug, Default)]
struct Race {
    /// The next reads that find nothing, as reads do that ran just before another fill landed.
    misses: AtomicUsize,
    /// The last entry written.
    last_put: Mutex<Option<(EntryKey, Bytes)>>,
    /// The token of another instance's fill in the making and the lock attempts counted since
    /// it was armed: that fill (the last entry written, filled again under the token) lands and
    /// releases its lock just before the second attempt, between a waiting caller's poll of the
    /// entry and its next try for the lock.
    armed: Mutex<Option<(LockToken, usize)>>,
}

/// A store that lands other instances' fills at the worst moments (see [`Race`]).
#[derive(Debug)]
struct Racy<S> {
    inner: S,
    race: Arc<Race>,
}

fn racy<S: CacheStore>(inner: S) -> (Cache, Arc<Race>) {
    let race = Arc::new(Race::default());
    let cache = Cache::new(Racy {
        inner,
        race: race.clone(),
    });
    (cache, race)
}

#[async_trait]
impl<S: CacheStore> CacheStore for Racy<S> {
    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }
    async fn get(&self, key: &EntryKey) -> Result<Option<Bytes>> {
        let late = self
            .race
            .misses
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let found = self.inner.get(key).await?;
        Ok(if late { None } else { found })
    }
    async fn put(
        &self,
        key: &EntryKey,
        value: Bytes,
        ttl: Duration,
        token: Option<&LockToken>,
    ) -> Result<bool> {
        *self.race.last_put.lock().unwrap() = Some((key.clone(), value.clone()));
        self.inner.put(key, value, ttl, token).await
    }
    async fn invalidate(&self, group: &str) -> Result<()> {
        self.inner.invalidate(group).await
    }
    async fn try_lock(&self, key: &EntryKey, ttl: Duration) -> Result<Option<LockToken>> {
        let land = {
            let mut armed = self.race.armed.lock().unwrap();
            match armed.as_mut() {
                Some((_, attempts)) if *attempts == 1 => armed.take().map(|(token, _)| token),
                Some((_, attempts)) => {
                    *attempts += 1;
                    None
                }
                None => None,
            }
        };
        if let Some(token) = land {
            let (k, v) = self.race.last_put.lock().unwrap().clone().unwrap();
            assert!(self.inner.put(&k, v, MIN, Some(&token)).await?);
        }
        self.inner.try_lock(key, ttl).await
    }
    async fn unlock(&self, key: &EntryKey, token: &LockToken) -> Result<bool> {
        self.inner.unlock(key, token).await
    }
    async fn tag_generations(&self, tags: &[String]) -> Result<Vec<u64>> {
        self.inner.tag_generations(tags).await
    }
    async fn ensure_tags(&self, tags: &[String], ttl: Duration) -> Result<Vec<u64>> {
        self.inner.ensure_tags(tags, ttl).await
    }
    async fn bump_tag(&self, tag: &str) -> Result<()> {
        self.inner.bump_tag(tag).await
    }
}

/// A call whose read missed just before another fill landed (and released its lock) takes the
/// lock, finds that fill, and shares it instead of fetching again.
pub(crate) async fn a_fill_landing_before_the_lock_is_shared(store: impl CacheStore) {
    let (cache, race) = racy(store);
    let first: u32 = cache
        .get_or_fetch("late", MIN, || async { Ok::<_, String>(1) })
        .await
        .unwrap();
    assert_eq!(first, 1);
    race.misses.store(1, Ordering::SeqCst);
    let second: u32 = cache
        .get_or_fetch("late", MIN, || async { Ok::<_, String>(2) })
        .await
        .unwrap();
    assert_eq!(second, 1, "the landed fill is served, not refetched");
    let stats = cache.stats();
    assert_eq!((stats.fetches, stats.remote_fills), (1, 1));
    assert_eq!(
        race.misses.load(Ordering::SeqCst),
        0,
        "the late read happened"
    );
}

/// A call that waits for another instance's fill and polls the entry just before that fill
/// lands (and releases its lock) takes the lock, finds the fill, and shares it instead of
/// fetching again: the fetcher runs once across instances even when the fill lands between a
/// poll and the next lock attempt.
pub(crate) async fn a_fill_landing_while_waiting_for_the_lock_is_shared(store: impl CacheStore) {
    let (cache, race) = racy(store);
    let first: u32 = cache
        .get_or_fetch("relock", MIN, || async { Ok::<_, String>(1) })
        .await
        .unwrap();
    assert_eq!(first, 1);
    // Another instance's fill of the same key in the making: no entry yet, its lock held.
    let (k, _) = race.last_put.lock().unwrap().clone().unwrap();
    cache.store().invalidate(k.group()).await.unwrap();
    let other = cache
        .store()
        .try_lock(&k, MIN)
        .await
        .unwrap()
        .expect("free lock");
    *race.armed.lock().unwrap() = Some((other, 0));
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let second: u32 = cache
        .get_or_fetch("relock", MIN, move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(2)
        })
        .await
        .unwrap();
    assert!(
        race.armed.lock().unwrap().is_none(),
        "the other fill landed while this call waited"
    );
    assert_eq!(second, 1, "the landed fill is served, not refetched");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let stats = cache.stats();
    assert_eq!((stats.fetches, stats.remote_fills), (1, 1));
}

/// Whether `bans` cover a key stored at `stored_at`.
fn banned(bans: &Bans, key: &str, stored_at: u64) -> bool {
    bans.bans(&[key.as_bytes()], stored_at)
}

/// A ban covers entries stored until it whose key starts with its prefix, and nothing else;
/// entries stored well after it (beyond any clock allowance) are not covered.
pub(crate) async fn a_ban_covers_older_entries_under_its_prefix(store: impl CacheStore) {
    assert!(store.bans().await.unwrap().is_empty());
    let before = store.now_ms();
    store.ban_prefix("/products/").await.unwrap();
    let bans = store.bans().await.unwrap();
    assert_eq!(bans.prefixes.len(), 1);
    assert_eq!(bans.horizon, 0);
    assert!(banned(&bans, "/products/42?page=2", before));
    assert!(banned(&bans, "/products/", before));
    assert!(!banned(&bans, "/products", before));
    assert!(!banned(&bans, "/about", before));
    let hour_later = before + 3_600_000;
    assert!(!banned(&bans, "/products/42", hour_later));
    // Read again: the same list (on Redis, from this instance's copy of it).
    assert_eq!(store.bans().await.unwrap(), bans);
}

/// A ban of a shorter prefix replaces the bans of longer ones it covers.
pub(crate) async fn a_ban_replaces_the_bans_it_covers(store: impl CacheStore) {
    store.ban_prefix("price:tea:").await.unwrap();
    store.ban_prefix("price:cup:").await.unwrap();
    store.ban_prefix("stock:").await.unwrap();
    assert_eq!(store.bans().await.unwrap().prefixes.len(), 3);
    store.ban_prefix("price:").await.unwrap();
    let mut prefixes: Vec<String> = store
        .bans()
        .await
        .unwrap()
        .prefixes
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    prefixes.sort();
    assert_eq!(prefixes, ["price:", "stock:"]);
}

/// Past `MAX_BANS` the oldest ban is dropped and folded into the horizon: entries stored
/// before it are banned whatever their key (more misses, never a banned entry served).
pub(crate) async fn the_ban_list_is_bounded_and_over_invalidates(store: impl CacheStore) {
    let before = store.now_ms();
    for i in 0..=bans::MAX_BANS {
        store.ban_prefix(&format!("k{i}:")).await.unwrap();
    }
    let list = store.bans().await.unwrap();
    assert_eq!(list.prefixes.len(), bans::MAX_BANS);
    assert!(list.horizon >= before);
    // One of the oldest bans went into the horizon: every prefix's old entries are still
    // banned, and so is any other old entry.
    assert!((0..=bans::MAX_BANS).all(|i| banned(&list, &format!("k{i}:x"), before)));
    assert!(banned(&list, "k0:x", before));
    assert!(banned(&list, "unrelated", before));
    assert!(!banned(&list, "unrelated", before + 3_600_000));
}

/// Through the cache: a prefix purge makes the matching cache-aside values misses (on the
/// next read), leaves the others, and a refill is served again.
pub(crate) async fn invalidate_prefix_misses_matching_keys_only(store: impl CacheStore) {
    let store = Arc::new(store);
    let off = Cache::new(store.clone());
    assert!(matches!(
        off.invalidate_prefix("price:").await,
        Err(Error::PrefixPurgeOff)
    ));
    let cache = Cache::builder(store).prefix_purge(true).build();
    for key in ["price:tea", "price:cup", "stock:tea"] {
        cache.set(key, &1u32, MIN).await.unwrap();
    }
    cache.invalidate_prefix("price:").await.unwrap();
    assert_eq!(
        cache
            .get_many::<u32>(&["price:tea", "price:cup", "stock:tea"])
            .await,
        [None, None, Some(1)]
    );
    assert!(matches!(
        cache.invalidate_prefix(&"p".repeat(1025)).await,
        Err(Error::PrefixTooLong)
    ));
    // A later fill is served: poll, since entries stored within the store's clock allowance
    // of the ban (on Redis, `RedisStore::clock_skew`, 1 s by default) are banned too.
    for _ in 0..400 {
        cache.set("price:tea", &2u32, MIN).await.unwrap();
        if cache.get_many::<u32>(&["price:tea"]).await == [Some(2)] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a value stored after the ban was never served");
}
