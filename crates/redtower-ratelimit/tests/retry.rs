//! Retry safety of the check script: it changes state and is not idempotent, so it is sent
//! once. Through a fault proxy that loses replies after Redis ran the command, a check is
//! counted at most once, never twice.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redtower_client::{Redis, RedisConfig};
use redtower_ratelimit::{
    ManualClock, Policy, Quota, RateLimitStore, RedisStore, Subject, nonzero,
};
use redtower_testkit::{FaultProxy, RedisServer, unique_prefix};

async fn connect(url: &str, test: &str) -> Redis {
    let redis = Redis::new(
        RedisConfig::from_url(url)
            .unwrap()
            .key_prefix(unique_prefix(test)),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    redis
}

/// A fixed window far larger than the test: every check is admitted, and the window's count
/// in Redis is the number of times the script consumed a request. The store's clock is fixed,
/// so no window boundary is crossed.
fn policies() -> [Policy; 1] {
    [Policy::new(
        "n",
        Quota::per_day(nonzero!(1_000_000)).fixed_window(),
    )]
}

/// The count the script stored for `subject` (0 when none).
fn count(server: &RedisServer, store: &RedisStore, subject: &Subject) -> u64 {
    let key = store.key(subject, "n");
    match server.cmd(&["GET", key.as_str()]).as_text() {
        // '<window> <count> <previous>'
        Some(state) => state.split(' ').nth(1).unwrap().parse().unwrap(),
        None => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_counts_the_check_once() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let redis = connect(&proxy.url(), "lost-reply").await;
    let clock = ManualClock::new();
    for coalesce in [true, false] {
        let store = RedisStore::new(redis.clone())
            .coalesce(coalesce)
            .clock(clock.clone());
        let s = Subject::new(format!("lost-{coalesce}"));
        let p = policies();
        assert_eq!(
            store.check(&s, &p, 1).await.unwrap().remaining(),
            Some(999_999)
        );

        let lost_before = proxy.lost_replies();
        proxy.lose_next_reply();
        let lost = store.check(&s, &p, 1).await;
        assert_eq!(proxy.lost_replies(), lost_before + 1, "coalesce {coalesce}");
        assert!(
            lost.is_err(),
            "coalesce {coalesce}: the loss is reported, not re-sent"
        );
        assert_eq!(
            count(&server, &store, &s),
            2,
            "coalesce {coalesce}: the lost check ran once, and was not sent again"
        );

        // Once reconnected, the next check sees exactly those two.
        redis.wait_ready(Duration::from_secs(10)).await.unwrap();
        let next = loop {
            match store.check(&s, &p, 1).await {
                Ok(d) => break d,
                // Still reconnecting: fail fast, and nothing ran.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        assert_eq!(next.remaining(), Some(999_997), "coalesce {coalesce}");
        assert_eq!(count(&server, &store, &s), 3, "coalesce {coalesce}");
    }
}

/// The counts the script stored for `subjects` (0 when none), read in a few `MGET`s.
fn counts(server: &RedisServer, store: &RedisStore, subjects: &[Subject]) -> Vec<u64> {
    let keys: Vec<String> = subjects
        .iter()
        .map(|s| store.key(s, "n").as_str().to_owned())
        .collect();
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(1_000) {
        let mut args = vec!["MGET"];
        args.extend(chunk.iter().map(String::as_str));
        for reply in server.cmd(&args).into_array() {
            out.push(match reply.as_text() {
                Some(state) => state.split(' ').nth(1).unwrap().parse().unwrap(),
                None => 0,
            });
        }
    }
    out
}

/// 10,000 checks, each of its own subject, from concurrent tasks (coalesced into batches)
/// while the proxy loses one reply in 50 and resets every connection every ~300 ms: no check
/// is ever counted twice, every check Redis admitted is counted once, and a check that failed
/// is counted at most once (its batch may have run before the reply was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_never_double_counts() {
    const CHECKS: usize = 10_000;
    const TASKS: usize = 16;
    let server = RedisServer::start();
    let proxy = Arc::new(FaultProxy::start(server.port()).unwrap());
    let redis = connect(&proxy.url(), "chaos").await;
    let store = RedisStore::new(redis).clock(ManualClock::new());
    let subjects: Arc<Vec<Subject>> = Arc::new(
        (0..CHECKS)
            .map(|i| Subject::new(format!("chaos-{i}")))
            .collect(),
    );
    // Per check: 1 admitted, 2 failed.
    let outcome: Arc<Vec<AtomicU64>> = Arc::new((0..CHECKS).map(|_| AtomicU64::new(0)).collect());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();

    proxy.lose_replies(1, 50);
    let resets = {
        let proxy = proxy.clone();
        let next = next.clone();
        tokio::spawn(async move {
            let mut resets = 0u64;
            while next.load(Ordering::Relaxed) < CHECKS as u64 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                proxy.reset_all();
                resets += 1;
            }
            resets
        })
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (store, subjects) = (store.clone(), subjects.clone());
            let (outcome, next) = (outcome.clone(), next.clone());
            tokio::spawn(async move {
                let p = policies();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= CHECKS {
                        break;
                    }
                    match store.check(&subjects[i], &p, 1).await {
                        Ok(d) => {
                            assert!(d.is_allowed());
                            outcome[i].store(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            outcome[i].store(2, Ordering::Relaxed);
                            // Reconnecting: let the client get there instead of spinning.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let resets = resets.await.unwrap();
    proxy.lose_replies(0, 0);
    let elapsed = started.elapsed();

    let counted = counts(&server, &store, &subjects);
    let (mut admitted, mut failed, mut failed_but_ran, mut twice) = (0, 0, 0, 0);
    for (i, &n) in counted.iter().enumerate() {
        match outcome[i].load(Ordering::Relaxed) {
            1 => {
                admitted += 1;
                assert_eq!(n, 1, "check {i} was admitted: counted {n} times");
            }
            2 => {
                failed += 1;
                failed_but_ran += usize::from(n == 1);
            }
            other => panic!("check {i} never finished ({other})"),
        }
        twice += usize::from(n > 1);
    }
    let total: u64 = counted.iter().sum();
    eprintln!(
        "chaos: {CHECKS} checks in {elapsed:?}: {admitted} admitted by Redis, {failed} failed \
         ({} replies lost, {resets} resets of every connection, {} connections accepted); \
         counted in Redis: {total} ({failed_but_ran} failed checks had run before their reply \
         was lost); counted twice: {twice}",
        proxy.lost_replies(),
        proxy.connections_accepted(),
    );
    assert_eq!(twice, 0, "no check is counted twice");
    assert_eq!(admitted + failed, CHECKS);
    assert!(proxy.lost_replies() > 0, "faults were injected");
    assert!(admitted > CHECKS / 2, "most checks got through: {admitted}");
}
