//! Session loads through the tracked in-process tier, across two instances (two stores with
//! their own Redis clients) on standalone, Cluster and Sentinel: a load of an unchanged session
//! is served in process, and a revoke, revoke-all, logout or save on one instance is seen by
//! the other once Redis' invalidation push is applied (`NearCache::sync`, an event), while
//! other tasks keep loading the session: no load that starts after that point succeeds with a
//! revoked session or returns the old data.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use redtower_client::{NearCacheConfig, Redis, RedisConfig};
use redtower_session::{Binding, RedisStore, SessionMeta, USER_KEY, UserSessions as _};
use redtower_testkit::{RedisCluster, RedisSentinel, RedisServer, unique_prefix};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tower_sessions_core::{
    SessionStore as _,
    session::{Id, Record},
};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

async fn instance(url: &str, prefix: &str) -> RedisStore {
    // Long enough that loads within a round need no touch, so the tier serves them.
    instance_touching(url, prefix, Duration::from_secs(30)).await
}

async fn instance_touching(url: &str, prefix: &str, touch: Duration) -> RedisStore {
    let redis = Redis::new(RedisConfig::from_url(url).unwrap().key_prefix(prefix)).unwrap();
    redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    let store = RedisStore::new(redis, SECRET)
        .unwrap()
        .touch_interval(touch)
        .near_cache(Some(NearCacheConfig::new("sessions")))
        .unwrap();
    assert!(
        store
            .near()
            .unwrap()
            .wait_ready(Duration::from_secs(20))
            .await,
        "tracking never came on"
    );
    store
}

fn bound(user: &str, n: u64) -> Record {
    let binding = serde_json::to_value(Binding::new(user, SessionMeta::new())).unwrap();
    Record {
        id: Id::default(),
        data: HashMap::from([(USER_KEY.to_owned(), binding), ("n".to_owned(), json!(n))]),
        expiry_date: OffsetDateTime::now_utc() + Duration::from_secs(3600),
    }
}

fn n_of(record: &Record) -> u64 {
    record.data.get("n").and_then(Value::as_u64).unwrap()
}

/// How the session ends (or changes) on instance A.
#[derive(Debug, Clone, Copy)]
enum Change {
    Revoke,
    RevokeAll,
    Logout,
    Save,
}

async fn revocations_reach_the_other_instance(url: &str) {
    let prefix = unique_prefix("near");
    let a = instance(url, &prefix).await;
    let b = instance(url, &prefix).await;
    let near_b = b.near().unwrap().clone();
    let changes = [
        Change::Revoke,
        Change::RevokeAll,
        Change::Logout,
        Change::Save,
    ];
    for round in 0..40u64 {
        let change = changes[(round % 4) as usize];
        let user = format!("user{round}");
        let mut record = bound(&user, 1);
        a.create(&mut record).await.unwrap();
        let id = record.id;
        // B loads it twice: the second load is a tier hit.
        assert_eq!(n_of(&b.load(&id).await.unwrap().unwrap()), 1);
        let hits = near_b.stats().hits;
        assert_eq!(n_of(&b.load(&id).await.unwrap().unwrap()), 1);
        assert!(
            near_b.stats().hits > hits,
            "no tier hit: {:?}",
            near_b.stats()
        );
        // Load from B continuously while A changes the session. `done` is set once A's call
        // returned and B applied the pushes sent before it; a load that starts after that
        // must see the change.
        let done = Arc::new(AtomicBool::new(false));
        let checked = Arc::new(AtomicU64::new(0));
        let loaders: Vec<_> = (0..4)
            .map(|_| {
                let (b, done, checked) = (b.clone(), done.clone(), checked.clone());
                tokio::spawn(async move {
                    let mut after = 0;
                    while after < 20 {
                        let started_after = done.load(Ordering::Acquire);
                        let loaded = b.load(&id).await.unwrap();
                        if started_after {
                            after += 1;
                            checked.fetch_add(1, Ordering::Relaxed);
                            match change {
                                Change::Save => assert_eq!(
                                    loaded.as_ref().map(n_of),
                                    Some(2),
                                    "old data after the save"
                                ),
                                _ => assert!(
                                    loaded.is_none(),
                                    "{change:?}: a revoked session loaded"
                                ),
                            }
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        match change {
            Change::Revoke => assert!(a.revoke(&user, &a.handle(&id)).await.unwrap()),
            Change::RevokeAll => assert_eq!(a.revoke_all(&user).await.unwrap(), 1),
            Change::Logout => a.delete(&id).await.unwrap(),
            Change::Save => {
                record.data.insert("n".to_owned(), json!(2));
                a.save(&record).await.unwrap();
            }
        }
        near_b.sync().await.unwrap();
        done.store(true, Ordering::Release);
        for loader in loaders {
            loader.await.unwrap();
        }
        assert_eq!(checked.load(Ordering::Relaxed), 80);
    }
    let stats = near_b.stats();
    assert!(stats.invalidations >= 40, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_across_instances_standalone() {
    let server = RedisServer::start();
    revocations_reach_the_other_instance(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_across_instances_cluster() {
    let cluster = RedisCluster::start();
    revocations_reach_the_other_instance(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_across_instances_sentinel() {
    let sentinel = RedisSentinel::start();
    revocations_reach_the_other_instance(&sentinel.url()).await;
}

/// A repeated load of an unchanged session is served decoded: one hit per load, where a load
/// through the raw tier looks up two keys (the record and the user's epoch), so the decoded
/// map is what answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_load_is_served_decoded() {
    let server = RedisServer::start();
    let a = instance(&server.url(), &unique_prefix("near")).await;
    let near = a.near().unwrap().clone();
    let mut record = bound("carol", 7);
    a.create(&mut record).await.unwrap();
    for _ in 0..2 {
        assert_eq!(n_of(&a.load(&record.id).await.unwrap().unwrap()), 7);
    }
    let before = near.stats();
    for _ in 0..100 {
        assert_eq!(n_of(&a.load(&record.id).await.unwrap().unwrap()), 7);
    }
    let after = near.stats();
    assert_eq!(after.hits - before.hits, 100, "{before:?} -> {after:?}");
    assert_eq!(after.misses, before.misses, "{before:?} -> {after:?}");
}

/// A revocation on this instance is seen by this instance before the call returns, with no
/// push needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_revocations_are_immediate() {
    let server = RedisServer::start();
    let a = instance(&server.url(), &unique_prefix("near")).await;
    for _ in 0..20 {
        let mut record = bound("alice", 1);
        a.create(&mut record).await.unwrap();
        assert!(a.load(&record.id).await.unwrap().is_some());
        assert!(a.load(&record.id).await.unwrap().is_some());
        a.revoke_all("alice").await.unwrap();
        assert!(a.load(&record.id).await.unwrap().is_none());
    }
}

/// Calls of a command so far (`INFO commandstats`).
fn calls(server: &RedisServer, command: &str) -> u64 {
    let info = server.cmd(&["INFO", "commandstats"]).as_text().unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// A hot session across touch intervals: each interval, the load that finds a touch due runs
/// the load script, which touches, and the loads after it are served in process again. The
/// script runs about once per interval (and per task loading at that moment), not for every
/// load near the end of each interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_session_runs_the_script_about_once_per_touch() {
    let server = RedisServer::start();
    let touch = Duration::from_millis(300);
    let store = instance_touching(&server.url(), &unique_prefix("near"), touch).await;
    let mut record = bound("hot", 1);
    store.create(&mut record).await.unwrap();
    let id = record.id;
    let before = calls(&server, "evalsha") + calls(&server, "eval");
    const TASKS: u64 = 4;
    let started = std::time::Instant::now();
    let span = Duration::from_millis(900);
    let loaders: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut loads = 0u64;
                while started.elapsed() < span {
                    assert_eq!(n_of(&store.load(&id).await.unwrap().unwrap()), 1);
                    loads += 1;
                    tokio::task::yield_now().await;
                }
                loads
            })
        })
        .collect();
    let mut loads = 0;
    for l in loaders {
        loads += l.await.unwrap();
    }
    let scripts = calls(&server, "evalsha") + calls(&server, "eval") - before;
    // At most 4 touches fall in the span; each may be run by every task loading then.
    let most = (span.as_millis() / touch.as_millis() + 1) as u64 * TASKS;
    assert!(
        scripts <= most,
        "{scripts} script runs for {loads} loads (at most {most} expected)"
    );
    assert!(
        loads > scripts * 4,
        "{scripts} script runs for {loads} loads"
    );
}
