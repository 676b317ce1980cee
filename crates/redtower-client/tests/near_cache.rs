//! The near-cache against real Redis: coherence across two handles (two app instances) on
//! standalone, Cluster and Sentinel, reads racing writes, cut connections, memory bounds, and
//! servers without tracking.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use fred::{
    clients::Client,
    interfaces::{ClientLike, KeysInterface, TrackingInterface},
};
use redtower_client::{NearCache, NearCacheConfig, Redis, RedisConfig, Stamp};
use redtower_testkit::{Fault, FaultProxy, LogBuffer, RedisCluster, RedisSentinel, RedisServer};

const READY: Duration = Duration::from_secs(10);

async fn handle(url: &str) -> Redis {
    let redis = Redis::new(RedisConfig::from_url(url).unwrap()).unwrap();
    redis.wait_ready(READY).await.unwrap();
    redis
}

fn tier(redis: &Redis, config: NearCacheConfig) -> NearCache<String> {
    NearCache::new(redis, config, |v: &String| v.len()).unwrap()
}

async fn load(near: &NearCache<String>, key: &str) -> Option<String> {
    let owned = key.to_owned();
    near.get_or_load(key, |client: Client| async move {
        client.get::<Option<String>, _>(owned).await
    })
    .await
    .unwrap()
}

async fn set(redis: &Redis, key: &str, value: &str) {
    redis
        .client()
        .set::<(), _, _>(key, value, None, None, false)
        .await
        .unwrap();
}

/// Instance B caches a key; instance A writes it; once A's write returned and B applied the
/// pushes sent before it (`sync`), B no longer serves the old value, and its next read is
/// cached again.
async fn writes_on_one_instance_reach_the_other(url: &str) {
    let a = handle(url).await;
    let b = handle(url).await;
    let near = tier(&b, NearCacheConfig::new("test"));
    assert!(near.wait_ready(READY).await, "tracking never came on");
    let key = "rt:t:{coherence}:k";
    for round in 0..50 {
        let old = format!("v{round}");
        let new = format!("v{}", round + 1);
        set(&a, key, &old).await;
        near.sync().await.unwrap();
        let stamp = near.stamp([key, "rt:t:{coherence}:other"]).unwrap();
        assert_eq!(load(&near, key).await.as_deref(), Some(old.as_str()));
        assert_eq!(near.get(key).as_deref(), Some(old.as_str()), "not cached");
        assert!(stamp.is_current());
        set(&a, key, &new).await;
        near.sync().await.unwrap();
        assert_eq!(
            near.get(key),
            None,
            "stale after the write and one delivery"
        );
        assert!(!stamp.is_current(), "a stamp outlived its key's write");
        assert_eq!(load(&near, key).await.as_deref(), Some(new.as_str()));
    }
    // A delete and an expiry invalidate too.
    a.client().del::<(), _>(key).await.unwrap();
    near.sync().await.unwrap();
    assert_eq!(near.get(key), None);
    assert_eq!(load(&near, key).await, None);
    let stats = near.stats();
    assert!(stats.invalidations >= 50, "{stats:?}");
    assert!(stats.hits >= 50, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coherence_standalone() {
    let server = RedisServer::start();
    writes_on_one_instance_reach_the_other(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coherence_cluster() {
    let cluster = RedisCluster::start();
    writes_on_one_instance_reach_the_other(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coherence_sentinel() {
    let sentinel = RedisSentinel::start();
    writes_on_one_instance_reach_the_other(&sentinel.url()).await;
}

/// Many tasks interleave writes (on instance A) and reads (through B's tier) of a few hot
/// keys. Each writer publishes a version only after its `SET` returned and B's `sync`
/// returned; every read that starts after that must see at least that version.
async fn racing_reads_and_writes(url: &str) {
    let a = handle(url).await;
    let b = handle(url).await;
    let near = tier(&b, NearCacheConfig::new("race"));
    assert!(near.wait_ready(READY).await);
    const KEYS: usize = 4;
    const WRITES: u64 = 150;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("rt:t:{{hot{i}}}:k")).collect();
    let committed: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    for key in &keys {
        set(&a, key, "0").await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..8 {
        let near = near.clone();
        let keys = keys.clone();
        let committed = committed.clone();
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            let mut i = r;
            // Half the readers keep a value derived from each read (here: parsed) under a
            // stamp taken before the read, and use it while the stamp is current.
            let mut kept: Vec<Option<(u64, Stamp)>> = (0..KEYS).map(|_| None).collect();
            while !done.load(Ordering::Acquire) {
                let k = i % KEYS;
                i += 1;
                let floor = committed[k].load(Ordering::Acquire);
                let seen = match &kept[k] {
                    Some((v, stamp)) if stamp.is_current() => *v,
                    _ => {
                        let stamp = near.stamp([keys[k].as_str()]);
                        let v: u64 = load(&near, &keys[k]).await.unwrap().parse().unwrap();
                        if r % 2 == 1 {
                            kept[k] = stamp.map(|s| (v, s));
                        }
                        v
                    }
                };
                assert!(seen >= floor, "stale read of {}: {seen} < {floor}", keys[k]);
                reads += 1;
                if reads.is_multiple_of(16) {
                    tokio::task::yield_now().await;
                }
            }
            reads
        }));
    }
    let mut writers = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        let a = a.clone();
        let near = near.clone();
        let key = key.clone();
        let committed = committed.clone();
        writers.push(tokio::spawn(async move {
            for version in 1..=WRITES {
                set(&a, &key, &version.to_string()).await;
                near.sync().await.unwrap();
                committed[k].store(version, Ordering::Release);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::Release);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    let stats = near.stats();
    assert!(reads > 0);
    assert!(stats.hits > 0, "the tier never served: {stats:?}");
    assert!(stats.invalidations > 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_standalone() {
    let server = RedisServer::start();
    racing_reads_and_writes(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_cluster() {
    let cluster = RedisCluster::start();
    racing_reads_and_writes(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_sentinel() {
    let sentinel = RedisSentinel::start();
    racing_reads_and_writes(&sentinel.url()).await;
}

/// Waits (on the tier's change events, not a clock) until `done` holds.
async fn until(near: &NearCache<String>, what: &str, done: impl Fn(&NearCache<String>) -> bool) {
    let mut changes = near.changes();
    let wait = async {
        while !done(near) {
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(READY, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", near.stats()));
}

/// The tracked connection is cut while another instance writes: the push is lost with the
/// connection, so the tier flushes, stops serving, and the read after the reconnect is new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connection_flushes_the_tier() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let a = handle(&server.url()).await;
    let b = handle(&proxy.url()).await;
    let near = tier(&b, NearCacheConfig::new("cut"));
    assert!(near.wait_ready(READY).await);
    let key = "rt:t:{cut}:k";
    for round in 0..5 {
        set(&a, key, &format!("old{round}")).await;
        near.sync().await.unwrap();
        let stamp = near.stamp([key]).expect("the tier serves");
        assert_eq!(load(&near, key).await, Some(format!("old{round}")));
        assert!(near.contains(key));
        assert!(stamp.is_current());
        let flushes = near.stats().flushes;
        // New connections are refused and live ones closed: the tracked connection is down
        // while A writes, so the push for this write can never arrive.
        proxy.set(Fault::Refuse);
        proxy.reset_all();
        until(&near, "the flush", |n| n.stats().flushes > flushes).await;
        assert!(!near.contains(key), "a flush left the entry");
        assert!(!stamp.is_current(), "a stamp outlived the flush");
        assert!(near.stamp([key]).is_none(), "stamped while not tracked");
        assert_eq!(near.get(key), None, "served while not tracked");
        set(&a, key, &format!("new{round}")).await;
        proxy.set(Fault::PassThrough);
        assert!(near.wait_ready(READY).await, "tracking did not come back");
        assert_eq!(load(&near, key).await, Some(format!("new{round}")));
        // And tracking works again on the new connection.
        set(&a, key, &format!("newer{round}")).await;
        near.sync().await.unwrap();
        assert_eq!(load(&near, key).await, Some(format!("newer{round}")));
    }
}

/// A server restart (all tracking state lost) flushes the tier too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_flushes_the_tier() {
    let mut server = RedisServer::start();
    let b = handle(&server.url()).await;
    let near = tier(&b, NearCacheConfig::new("restart"));
    assert!(near.wait_ready(READY).await);
    let key = "rt:t:{restart}:k";
    set(&b, key, "before").await;
    assert_eq!(load(&near, key).await.as_deref(), Some("before"));
    let flushes = near.stats().flushes;
    server.restart();
    until(&near, "the flush", |n| n.stats().flushes > flushes).await;
    assert!(!near.contains(key));
    assert!(near.wait_ready(READY).await);
    set(&b, key, "after").await;
    assert_eq!(load(&near, key).await.as_deref(), Some("after"));
}

/// Many distinct keys: the tier holds no more than its entry and byte budgets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_bounded() {
    let server = RedisServer::start();
    let redis = handle(&server.url()).await;
    let by_count = tier(&redis, NearCacheConfig::new("count").max_entries(100));
    let by_bytes = tier(
        &redis,
        NearCacheConfig::new("bytes")
            .max_entries(1_000_000)
            .max_bytes(32 << 10),
    );
    assert!(by_count.wait_ready(READY).await && by_bytes.wait_ready(READY).await);
    let big = "x".repeat(1024);
    for i in 0..2000 {
        let key = format!("rt:t:{{m}}:{i}");
        set(&redis, &key, if i % 2 == 0 { "v" } else { &big }).await;
        load(&by_count, &key).await;
        load(&by_bytes, &key).await;
    }
    let count = by_count.stats();
    let bytes = by_bytes.stats();
    assert!(
        count.inserts >= 2000 && bytes.inserts >= 2000,
        "{count:?} {bytes:?}"
    );
    assert!(count.entries <= 100, "{count:?}");
    assert!(bytes.weighted_bytes <= 32 << 10, "{bytes:?}");
    // Values over the size cap are never stored.
    let capped = tier(&redis, NearCacheConfig::new("cap").max_entry_bytes(100));
    assert!(capped.wait_ready(READY).await);
    set(&redis, "rt:t:{m}:big", &big).await;
    assert_eq!(
        load(&capped, "rt:t:{m}:big").await.as_deref(),
        Some(big.as_str())
    );
    assert!(!capped.contains("rt:t:{m}:big"));
}

/// A server that cannot speak RESP3 (here: `HELLO` renamed away, as on Redis 5): the tier is
/// disabled with one warning, and reads still work, through the main connection.
#[tokio::test(flavor = "current_thread")]
async fn without_resp3_the_tier_is_off_with_one_warning() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = RedisServer::options()
        .arg_values("rename-command", &["HELLO", "hello-off"])
        .start();
    let redis = handle(&server.url()).await;
    let near = tier(&redis, NearCacheConfig::new("resp2"));
    let mut changes = near.changes();
    tokio::time::timeout(READY, async {
        while !near.is_disabled() {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("the tier was not disabled");
    assert!(!near.is_ready());
    set(&redis, "rt:t:{r}:k", "v").await;
    assert_eq!(load(&near, "rt:t:{r}:k").await.as_deref(), Some("v"));
    assert_eq!(near.get("rt:t:{r}:k"), None);
    let text = logs.text();
    assert_eq!(
        text.matches("client-side caching unavailable").count(),
        1,
        "{text}"
    );
    assert!(text.contains("WARN"), "{text}");
}

/// The measurement behind the tracking mode: 2 instances each read a tenth of 1,000 keys,
/// then a writer rewrites every key. In the default mode an instance hears about the keys it
/// read; in `BCAST` on the prefix, about every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_mode_push_volume() {
    let server = RedisServer::start();
    let writer = handle(&server.url()).await;
    const KEYS: usize = 1000;
    let mut default_pushes = 0;
    let mut bcast_pushes = 0;
    for instance in 0..2 {
        // Default mode: a near-cache.
        let redis = handle(&server.url()).await;
        let near = tier(&redis, NearCacheConfig::new("mode"));
        assert!(near.wait_ready(READY).await);
        // BCAST: a raw RESP3 client on the prefix.
        let mut config = fred::types::config::Config::from_url(&server.url()).unwrap();
        config.version = fred::types::RespVersion::RESP3;
        let bcast = fred::clients::Client::new(config, None, None, None);
        bcast.init().await.unwrap();
        let heard = Arc::new(AtomicU64::new(0));
        {
            let heard = heard.clone();
            let _task = bcast.on_invalidation(move |inv| {
                heard.fetch_add(inv.keys.len() as u64, Ordering::Relaxed);
                Ok(())
            });
        }
        bcast
            .start_tracking("rt:t:mode:", true, false, false, false)
            .await
            .unwrap();
        for i in (instance..KEYS).step_by(10) {
            let key = format!("rt:t:mode:{i}");
            set(&writer, &key, "0").await;
            load(&near, &key).await;
        }
        near.sync().await.unwrap();
        let before = near.stats().invalidations;
        heard.store(0, Ordering::Relaxed);
        for i in 0..KEYS {
            set(&writer, &format!("rt:t:mode:{i}"), "1").await;
        }
        near.sync().await.unwrap();
        // BCAST announces every write under the prefix: wait for all of them (or time out).
        let _ = tokio::time::timeout(READY, async {
            while heard.load(Ordering::Relaxed) < KEYS as u64 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        default_pushes += near.stats().invalidations - before;
        bcast_pushes += heard.load(Ordering::Relaxed);
        let _ = bcast.quit().await;
    }
    eprintln!(
        "tracking_mode_push_volume: default mode {default_pushes} keys pushed, BCAST {bcast_pushes} (2 instances, {KEYS} writes)"
    );
    assert!(
        default_pushes > 0 && default_pushes <= 200,
        "{default_pushes}"
    );
    assert!(
        bcast_pushes > default_pushes * 5,
        "{bcast_pushes} vs {default_pushes}"
    );
}

/// A Cluster slot moves to another primary: a read answered `MOVED` makes the client re-read
/// the topology, and the whole tier is flushed (keys of other slots too) before it serves
/// again; tracking then works on the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_move_flushes_the_tier() {
    let cluster = RedisCluster::start();
    let a = handle(&cluster.url()).await;
    let b = handle(&cluster.url()).await;
    let near = tier(&b, NearCacheConfig::new("move"));
    assert!(near.wait_ready(READY).await);
    let (moved, other) = ("rt:t:{move}:k", "rt:t:{stay}:k");
    let slot = fred::util::redis_keyslot(b"move");
    assert_ne!(fred::util::redis_keyslot(b"stay"), slot);
    let from = cluster.node_for_slot(slot);
    let to = cluster
        .nodes()
        .iter()
        .find(|n| n.port() != from.port())
        .expect("another primary");
    set(&a, moved, "v1").await;
    set(&a, other, "o1").await;
    near.sync().await.unwrap();
    assert_eq!(load(&near, moved).await.as_deref(), Some("v1"));
    assert_eq!(load(&near, other).await.as_deref(), Some("o1"));
    assert!(near.contains(moved) && near.contains(other));
    let id = |n: &RedisServer| n.cmd(&["CLUSTER", "MYID"]).as_text().unwrap();
    let (from_id, to_id) = (id(from), id(to));
    let slot_arg = slot.to_string();
    to.cmd(&["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id]);
    from.cmd(&["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id]);
    let port = to.port().to_string();
    from.cmd(&["MIGRATE", "127.0.0.1", &port, moved, "0", "5000"]);
    for node in cluster.nodes() {
        node.cmd(&["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
    }
    // MIGRATE deleted the key on its old owner, which told B: once that push is applied, the
    // key is no longer served from the tier.
    near.sync().await.unwrap();
    assert!(!near.contains(moved), "the migrated key stayed in the tier");
    let flushes = near.stats().flushes;
    // B's next read of the moved key goes to the old owner, is answered MOVED, and fred
    // re-reads the topology: a cluster change.
    assert_eq!(load(&near, moved).await.as_deref(), Some("v1"));
    until(&near, "the flush", |n| n.stats().flushes > flushes).await;
    assert!(
        !near.contains(other),
        "a key of another slot survived the flush"
    );
    assert!(near.wait_ready(READY).await);
    // Tracking works on the new owner.
    assert_eq!(load(&near, moved).await.as_deref(), Some("v1"));
    set(&a, moved, "v2").await;
    near.sync().await.unwrap();
    assert_eq!(near.get(moved), None);
    assert_eq!(load(&near, moved).await.as_deref(), Some("v2"));
}
