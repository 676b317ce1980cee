//! The tracked in-process tier in front of the Redis store: two instances (two stores with
//! their own Redis clients) on standalone, Cluster and Sentinel. Invalidations, tag
//! invalidations and fills on one are seen by the other once the invalidation push is
//! delivered (`NearCache::sync`: an event, not a clock), and hits cost no round trip.

use std::time::Duration;

use redtower_cache::{Cache, RedisStore};
use redtower_client::{NearCacheConfig, Redis, RedisConfig};
use redtower_testkit::{RedisCluster, RedisSentinel, RedisServer, unique_prefix};

const TTL: Duration = Duration::from_secs(60);

async fn instance(url: &str, prefix: &str) -> (Cache, RedisStore) {
    let redis = Redis::new(RedisConfig::from_url(url).unwrap().key_prefix(prefix)).unwrap();
    redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    let store = RedisStore::new(redis).near_cache(Some(NearCacheConfig::new("cache")));
    assert!(
        store
            .near()
            .unwrap()
            .wait_ready(Duration::from_secs(20))
            .await,
        "tracking never came on"
    );
    (Cache::new(store.clone()), store)
}

async fn fetch(cache: &Cache, key: &str, value: u32) -> u32 {
    cache
        .get_or_fetch(key, TTL, move || async move { Ok::<_, String>(value) })
        .await
        .unwrap()
}

async fn fetch_tagged(cache: &Cache, key: &str, value: u32) -> u32 {
    cache
        .fetch(key)
        .ttl(TTL)
        .tags(["menu"])
        .run(move || async move { Ok::<_, String>(value) })
        .await
        .unwrap()
}

/// Hits served in process: raw values of the tier, and decoded entries kept under a stamp.
fn in_process_hits(cache: &Cache, store: &RedisStore) -> u64 {
    store.near().unwrap().stats().hits + cache.stats().near_hits
}

/// The commands the server has processed so far (`INFO stats`).
fn commands_processed(server: &RedisServer) -> u64 {
    let info = server.cmd(&["INFO", "stats"]).as_text().unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

async fn two_instances_stay_coherent(url: &str) {
    let prefix = unique_prefix("near");
    let (a, store_a) = instance(url, &prefix).await;
    let (b, store_b) = instance(url, &prefix).await;
    let near_b = store_b.near().unwrap();
    for round in 0..20u32 {
        let base = round * 10;
        // B fills, then serves from its tier.
        let key = format!("price:{round}");
        assert_eq!(fetch(&b, &key, base + 1).await, base + 1);
        // B's own fill sends B a push (B's read of the missing key was tracked); once it is
        // applied, the next read is kept and the one after is a hit.
        near_b.sync().await.unwrap();
        let hits = in_process_hits(&b, &store_b);
        assert_eq!(fetch(&b, &key, 999).await, base + 1);
        assert_eq!(fetch(&b, &key, 999).await, base + 1);
        assert!(
            in_process_hits(&b, &store_b) > hits,
            "no tier hit: {:?} {:?}",
            near_b.stats(),
            b.stats()
        );
        // A invalidates: once the push is delivered, B fetches anew.
        a.invalidate(&key).await.unwrap();
        near_b.sync().await.unwrap();
        assert_eq!(fetch(&b, &key, base + 2).await, base + 2);
        // A fills after an invalidation: B serves A's value, not its own old one.
        a.invalidate(&key).await.unwrap();
        assert_eq!(fetch(&a, &key, base + 3).await, base + 3);
        near_b.sync().await.unwrap();
        assert_eq!(fetch(&b, &key, 999).await, base + 3);
        // A tag invalidation on A reaches B's tier (the tag's generation key is tracked).
        let tagged = format!("menu:{round}");
        assert_eq!(fetch_tagged(&b, &tagged, base + 4).await, base + 4);
        assert_eq!(fetch_tagged(&b, &tagged, 999).await, base + 4);
        a.invalidate_tag("menu").await.unwrap();
        near_b.sync().await.unwrap();
        assert_eq!(fetch_tagged(&b, &tagged, base + 5).await, base + 5);
    }
    // A's own invalidations are visible to A at once, without waiting for the push.
    let near_a = store_a.near().unwrap();
    assert_eq!(fetch(&a, "own", 1).await, 1);
    near_a.sync().await.unwrap();
    assert_eq!(fetch(&a, "own", 9).await, 1);
    assert_eq!(fetch(&a, "own", 9).await, 1);
    a.invalidate("own").await.unwrap();
    assert_eq!(fetch(&a, "own", 2).await, 2);
    assert!(in_process_hits(&a, &store_a) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coherent_across_instances_standalone() {
    let server = RedisServer::start();
    two_instances_stay_coherent(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coherent_across_instances_cluster() {
    let cluster = RedisCluster::start();
    two_instances_stay_coherent(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coherent_across_instances_sentinel() {
    let sentinel = RedisSentinel::start();
    two_instances_stay_coherent(&sentinel.url()).await;
}

/// A tier hit sends nothing to Redis: after the first read, a thousand reads of the same
/// entry leave the server's command count where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_hit_costs_no_round_trip() {
    let server = RedisServer::start();
    let (cache, store) = instance(&server.url(), &unique_prefix("near")).await;
    assert_eq!(fetch(&cache, "hot", 7).await, 7);
    store.near().unwrap().sync().await.unwrap();
    assert_eq!(fetch(&cache, "hot", 0).await, 7);
    let mut monitor = server.monitor();
    let before = commands_processed(&server);
    for _ in 0..1000 {
        assert_eq!(fetch(&cache, "hot", 0).await, 7);
    }
    // The first INFO counts; a flush of the tier at start-up (the first connection's
    // event) may cost a re-read.
    let after = commands_processed(&server);
    let seen = monitor.take();
    assert!(
        after - before <= 3,
        "hits reached Redis: {:?}",
        &seen[..seen.len().min(20)]
    );
    assert!(in_process_hits(&cache, &store) >= 1000);
    // Past the first hits, entries are served decoded: no key derivation, no decoding.
    assert!(cache.stats().near_hits >= 999, "{:?}", cache.stats());
}

/// With prefix purge on, a tier hit still sends nothing to Redis (the ban list's version is
/// tracked like an entry), and a prefix purge on one instance is seen by the other once its
/// invalidation push is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_purge_through_the_tier() {
    let server = RedisServer::start();
    let prefix = unique_prefix("near");
    let instance = |skew: Duration| {
        let (url, prefix) = (server.url(), prefix.clone());
        async move {
            let (_, store) = instance(&url, &prefix).await;
            let store = store.clock_skew(skew);
            (
                Cache::builder(store.clone()).prefix_purge(true).build(),
                store,
            )
        }
    };
    // No clock allowance on A, the banning instance: B's refill below is then not banned.
    let (a, _) = instance(Duration::ZERO).await;
    let (b, store_b) = instance(Duration::ZERO).await;
    let near_b = store_b.near().unwrap();
    assert_eq!(fetch(&b, "price:tea", 1).await, 1);
    assert_eq!(fetch(&b, "stock:tea", 1).await, 1);
    a.invalidate_prefix("other:").await.unwrap();
    near_b.sync().await.unwrap();
    assert_eq!(fetch(&b, "price:tea", 9).await, 1);
    near_b.sync().await.unwrap();

    let before = commands_processed(&server);
    for _ in 0..1000 {
        assert_eq!(fetch(&b, "price:tea", 9).await, 1);
    }
    assert!(
        commands_processed(&server) - before <= 3,
        "hits reached Redis"
    );

    a.invalidate_prefix("price:").await.unwrap();
    near_b.sync().await.unwrap();
    assert_eq!(fetch(&b, "price:tea", 2).await, 2);
    assert_eq!(fetch(&b, "stock:tea", 9).await, 1);
}

/// A key read while it does not exist is held in the tier as absent: a hit whose tag was never
/// purged, with prefix purge on and no purge yet, sends nothing to Redis (neither the tag's
/// generation nor the ban list's version exists). The first purge on another instance creates
/// those keys, and that creation reaches this tier like any write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_keys_are_held_and_dropped_when_created() {
    let server = RedisServer::start();
    let prefix = unique_prefix("near");
    let instance = || {
        let (url, prefix) = (server.url(), prefix.clone());
        async move {
            let (_, store) = instance(&url, &prefix).await;
            (
                Cache::builder(store.clone()).prefix_purge(true).build(),
                store,
            )
        }
    };
    let (a, _) = instance().await;
    let (b, store_b) = instance().await;
    let near_b = store_b.near().unwrap();
    assert_eq!(fetch_tagged(&b, "menu:tea", 1).await, 1);
    near_b.sync().await.unwrap();
    assert_eq!(fetch_tagged(&b, "menu:tea", 9).await, 1);
    near_b.sync().await.unwrap();

    let mut monitor = server.monitor();
    let before = commands_processed(&server);
    for _ in 0..1000 {
        assert_eq!(fetch_tagged(&b, "menu:tea", 9).await, 1);
    }
    let seen = monitor.take();
    assert!(
        commands_processed(&server) - before <= 3,
        "hits reached Redis: {:?}",
        &seen[..seen.len().min(20)]
    );

    // The first purges create the tag's generation and the ban list's version: B's tier
    // drops its absences once the pushes are delivered.
    a.invalidate_tag("menu").await.unwrap();
    near_b.sync().await.unwrap();
    assert_eq!(fetch_tagged(&b, "menu:tea", 2).await, 2);
    a.invalidate_prefix("menu:").await.unwrap();
    near_b.sync().await.unwrap();
    assert_eq!(fetch_tagged(&b, "menu:tea", 3).await, 3);

    // A missing entry read on B, then written on A: B reads A's value, not the absence.
    assert_eq!(b.get_many::<u32>(&["fresh"]).await, vec![None]);
    a.set("fresh", &5u32, TTL).await.unwrap();
    near_b.sync().await.unwrap();
    assert_eq!(b.get_many::<u32>(&["fresh"]).await, vec![Some(5)]);
}
