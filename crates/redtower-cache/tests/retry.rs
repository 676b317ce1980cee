//! Retry safety: each state-changing store operation is run through a proxy that loses its
//! reply after Redis ran it (the client re-sends it, or gives up on it), and the outcome is
//! checked to have happened exactly once.

use std::time::Duration;

use bytes::Bytes;
use redtower_cache::{Cache, CacheStore, CircuitBreaker, EntryKey, RedisStore};
use redtower_client::{
    Redis, RedisConfig,
    fred::interfaces::{KeysInterface, SortedSetsInterface},
};
use redtower_testkit::{FaultProxy, RedisServer, unique_prefix};

const MIN: Duration = Duration::from_secs(60);

struct Rig {
    _server: RedisServer,
    proxy: FaultProxy,
    redis: Redis,
    store: RedisStore,
}

async fn rig(test: &str) -> Rig {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let config = RedisConfig::from_url(&proxy.url())
        .unwrap()
        .key_prefix(unique_prefix(test))
        .command_timeout(Duration::from_secs(10));
    let redis = Redis::new(config).unwrap();
    redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    let store = RedisStore::new(redis.clone()).timeout(Duration::from_secs(10));
    // Load every script first, so the armed request is the operation itself (not NOSCRIPT).
    let warm = EntryKey::new("warm", None);
    let token = store.try_lock(&warm, MIN).await.unwrap().unwrap();
    store
        .put(&warm, Bytes::from_static(b"w"), MIN, Some(&token))
        .await
        .unwrap();
    store.unlock(&warm, &token).await.unwrap();
    store.ensure_tags(&["warm".to_owned()], MIN).await.unwrap();
    Rig {
        _server: server,
        proxy,
        redis,
        store,
    }
}

impl Rig {
    async fn exists(&self, key: &str) -> bool {
        self.redis.client().exists::<i64, _>(key).await.unwrap() == 1
    }

    fn lost(&self) -> u64 {
        self.proxy.lost_replies()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_put_whose_reply_is_lost_is_written_once_and_reported_written() {
    let rig = rig("retry-put").await;
    let k = EntryKey::new("g", None);
    let token = rig.store.try_lock(&k, MIN).await.unwrap().unwrap();
    rig.proxy.lose_next_reply();
    let written = rig
        .store
        .put(&k, Bytes::from_static(b"v1"), MIN, Some(&token))
        .await
        .unwrap();
    assert_eq!(rig.lost(), 1, "the reply was lost after the script ran");
    assert!(written, "the re-sent script recognises its own write");
    assert_eq!(
        rig.store.get(&k).await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    let lock = rig.store.lock_key(&k).into_string();
    assert!(!rig.exists(&lock).await, "the lock was released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_put_whose_reply_is_lost_is_indexed_once() {
    let rig = rig("retry-put-variant").await;
    let k = EntryKey::new("g", Some("v".to_owned()));
    rig.proxy.lose_next_reply();
    assert!(
        rig.store
            .put(&k, Bytes::from_static(b"x"), MIN, None)
            .await
            .unwrap()
    );
    assert_eq!(rig.lost(), 1);
    let index = rig.store.index_key("g").into_string();
    let members: Vec<String> = rig
        .redis
        .client()
        .zrange(index.as_str(), 0, -1, None, false, None, false)
        .await
        .unwrap();
    assert_eq!(members, ["v"]);
    assert_eq!(rig.store.get(&k).await.unwrap().as_deref(), Some(&b"x"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlock_whose_reply_is_lost_releases_only_its_own_lock() {
    let rig = rig("retry-unlock").await;
    let k = EntryKey::new("g", None);
    let token = rig.store.try_lock(&k, MIN).await.unwrap().unwrap();
    rig.proxy.lose_next_reply();
    // Whatever it answers (the re-send finds the lock gone), the lock is released once.
    let _ = rig.store.unlock(&k, &token).await.unwrap();
    assert_eq!(rig.lost(), 1);
    let lock = rig.store.lock_key(&k).into_string();
    assert!(!rig.exists(&lock).await);
    // The next holder's lock is never deleted by the old token.
    let next = rig.store.try_lock(&k, MIN).await.unwrap();
    assert!(next.is_some());
    rig.proxy.lose_next_reply();
    assert!(!rig.store.unlock(&k, &token).await.unwrap());
    assert!(rig.exists(&lock).await, "another holder's lock stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_tags_whose_reply_is_lost_returns_the_generation_it_created() {
    let rig = rig("retry-tag").await;
    let tags = ["t".to_owned()];
    rig.proxy.lose_next_reply();
    let first = rig.store.ensure_tags(&tags, MIN).await.unwrap();
    assert_eq!(rig.lost(), 1);
    let stored: String = rig
        .redis
        .client()
        .get(rig.store.tag_key("t").into_string().as_str())
        .await
        .unwrap();
    assert_eq!(first, [stored.parse::<u64>().unwrap()]);
    assert_eq!(rig.store.ensure_tags(&tags, MIN).await.unwrap(), first);
    assert_eq!(rig.store.tag_generations(&tags).await.unwrap(), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_reply_is_lost_is_not_re_sent_and_the_fill_fails_open() {
    let rig = rig("retry-lock").await;
    let k = EntryKey::new("g", None);
    rig.proxy.lose_next_reply();
    // Sent once: the lost reply is an error, never a lock mistaken for another holder's.
    assert!(
        rig.store
            .try_lock(&k, Duration::from_secs(2))
            .await
            .is_err()
    );
    assert_eq!(rig.lost(), 1);
    let lock = rig.store.lock_key(&k).into_string();
    let pttl: i64 = rig.redis.client().pttl(lock.as_str()).await.unwrap();
    assert!(
        pttl > 0 && pttl <= 2000,
        "the orphaned lock expires on its own: {pttl}"
    );

    // Through the cache: the fetch runs (fail-open) and its value is returned.
    let cache = Cache::new(rig.store.clone());
    rig.proxy.lose_next_reply();
    let v: u32 = cache
        .get_or_fetch("k", MIN, || async { Ok::<_, String>(5) })
        .await
        .unwrap();
    assert_eq!(v, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_bump_whose_reply_is_lost_happened_and_is_safe_to_repeat() {
    let rig = rig("retry-bump").await;
    let tags = ["t".to_owned()];
    let before = rig.store.ensure_tags(&tags, MIN).await.unwrap();
    rig.proxy.lose_next_reply();
    // Sent once: the caller sees the lost reply as an error...
    assert!(rig.store.bump_tag("t").await.is_err());
    assert_eq!(rig.lost(), 1);
    // ...but the bump ran, and repeating it is harmless.
    rig.redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    assert_eq!(rig.store.tag_generations(&tags).await.unwrap(), [0]);
    rig.store.bump_tag("t").await.unwrap();
    let after = rig.store.ensure_tags(&tags, MIN).await.unwrap();
    assert_ne!(
        after, before,
        "entries filled under the old generation stay invalid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_closes_the_breaker_before_its_cooldown() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let redis = Redis::new(
        RedisConfig::from_url(&proxy.url())
            .unwrap()
            .key_prefix(unique_prefix("breaker-reconnect")),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    let store = RedisStore::new(redis.clone()).timeout(Duration::from_millis(200));
    // Open on the first outage, with a cool-down far longer than the test: only the reconnect
    // can close the breaker.
    let cache = Cache::builder(store)
        .circuit_breaker(
            CircuitBreaker::default()
                .failures(1)
                .cool_down(Duration::from_secs(600)),
        )
        .build();
    let get = |value: u32| {
        let cache = cache.clone();
        async move {
            cache
                .get_or_fetch("k", MIN, move || async move { Ok::<_, String>(value) })
                .await
                .unwrap()
        }
    };
    assert_eq!(get(1).await, 1, "stored");

    // Redis stops answering: the read times out, the cache fails open and its breaker opens.
    proxy.set(redtower_testkit::Fault::BlackHole);
    assert_eq!(get(2).await, 2, "failed open");
    assert_eq!(get(3).await, 3, "breaker open: the store is skipped");
    let fail_open = cache.stats().fail_open;

    // The connection comes back (a new one): the next read is served by Redis again.
    let before = redis.connections();
    proxy.set(redtower_testkit::Fault::PassThrough);
    proxy.reset_all();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while redis.connections() == before {
        assert!(std::time::Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        get(4).await,
        1,
        "served by Redis again, long before the cooldown"
    );
    assert_eq!(cache.stats().fail_open, fail_open);
}
