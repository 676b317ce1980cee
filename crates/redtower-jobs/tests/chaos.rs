//! Chaos: 10,000 jobs added and run through a proxy that loses one reply in 50 and resets every
//! connection every 300 ms. Every job is added once, runs once, and its completion hook runs
//! once; nothing is left behind.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{Job, JobContext, JobError, Queue, QueueStore, RedisStore, Retention, Worker};
use redtower_testkit::{FaultProxy, unique_prefix};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Chaos {
    n: u32,
}

impl Job for Chaos {
    const NAME: &'static str = "chaos";
}

const JOBS: u32 = 10_000;

async fn connect(url: &str, prefix: &str) -> Redis {
    let redis = Redis::new(RedisConfig::from_url(url).unwrap().key_prefix(prefix)).unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    redis
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_through_lost_replies_and_resets() {
    let server = redtower_testkit::shared();
    let proxy = Arc::new(FaultProxy::start(server.port()).unwrap());
    let prefix = unique_prefix("chaos");
    let store = RedisStore::new(connect(&proxy.url(), &prefix).await);
    let direct = RedisStore::new(connect(&server.url(), &prefix).await);
    let queue = Queue::<Chaos>::new(store.clone(), "chaos");

    let runs = Arc::new(Mutex::new(HashMap::<u32, u32>::new()));
    let hooks = Arc::new(Mutex::new(HashMap::<u32, u32>::new()));
    let hooked = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (r, h, hc) = (runs.clone(), hooks.clone(), hooked.clone());
            Worker::new(store.clone(), "chaos")
                .concurrency(50)
                .poll_interval(Duration::from_millis(200))
                .retention(Retention {
                    completed_count: 2 * u64::from(JOBS),
                    ..Retention::default()
                })
                .handle::<Chaos>(move |job: Chaos, _ctx: JobContext| {
                    let r = r.clone();
                    async move {
                        *r.lock().unwrap().entry(job.n).or_default() += 1;
                        Ok::<(), JobError>(())
                    }
                })
                .on_completed(move |f| {
                    let (h, hc) = (h.clone(), hc.clone());
                    async move {
                        let n = f.decode::<Chaos>().unwrap().n;
                        *h.lock().unwrap().entry(n).or_default() += 1;
                        hc.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .start()
        })
        .collect();

    // Chaos on: one reply in 50 lost, every connection reset every 300 ms.
    proxy.lose_replies(1, 50);
    let resets = proxy.reset_every(Duration::from_millis(300));

    let started = Instant::now();
    let caller_retries = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    // Each add carries its own idempotency key and is retried by the caller until it answers:
    // the documented way to add exactly once over a faulty network.
    let ids: Vec<_> = stream::iter(0..JOBS)
        .map(|n| {
            let (queue, retries) = (queue.clone(), caller_retries.clone());
            let first_error = first_error.clone();
            async move {
                loop {
                    match queue
                        .add(Chaos { n })
                        .idempotency_key(format!("chaos-{n}"))
                        .await
                    {
                        Ok(id) => return id,
                        Err(e) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert(e.to_string());
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let added_in = started.elapsed();

    let deadline = Instant::now() + Duration::from_secs(45);
    while hooked.load(Ordering::Relaxed) < u64::from(JOBS) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ran_in = started.elapsed();
    resets.stop();
    proxy.lose_replies(0, 0);
    // Let late duplicates, if any, show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for w in workers {
        w.shutdown().await.unwrap();
    }

    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    let runs = runs.lock().unwrap().clone();
    let hooks = hooks.lock().unwrap().clone();
    let duplicates =
        runs.values().filter(|c| **c > 1).count() + hooks.values().filter(|c| **c > 1).count();
    let losses = (0..JOBS)
        .filter(|n| !runs.contains_key(n) || !hooks.contains_key(n))
        .count();
    let counts = direct.counts("chaos").await.unwrap();
    eprintln!(
        "chaos: {JOBS} adds ({} caller retries) in {added_in:?}, all run in {ran_in:?}; \
         faults: {} replies lost, {} resets, {} connections; \
         duplicates={duplicates} losses={losses}; store: {counts:?}; \
         first add error seen by the caller: {:?}",
        caller_retries.load(Ordering::Relaxed),
        proxy.lost_replies(),
        proxy.resets(),
        proxy.connections_accepted(),
        first_error.lock().unwrap().clone(),
    );
    assert!(
        proxy.lost_replies() > 0 && proxy.resets() > 0,
        "faults were injected"
    );
    assert_eq!(unique.len(), JOBS as usize, "one job per add");
    assert_eq!(duplicates, 0, "no job ran twice, no hook ran twice");
    assert_eq!(losses, 0, "every job ran and was reported");
    assert_eq!(
        (
            counts.completed,
            counts.ready,
            counts.active,
            counts.scheduled,
            counts.dead
        ),
        (u64::from(JOBS), 0, 0, 0, 0),
        "nothing stranded"
    );
}
