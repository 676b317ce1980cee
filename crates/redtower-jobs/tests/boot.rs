//! The boot window: a queue and a worker built on a `Redis` handle that was created a moment
//! ago (its first connection still being made) work at once, decided by Redis, with nothing
//! logged as a failure. Standalone and Cluster.

use std::{sync::OnceLock, time::Duration};

use futures::future::join_all;
use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{Job, JobContext, JobError, Queue, RedisStore, Worker};
use redtower_testkit::{LogBuffer, unique_prefix};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Boot {
    n: u32,
}

impl Job for Boot {
    const NAME: &'static str = "boot";
}

fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
}

/// No warning or error from the job queue, and no lost connection.
fn assert_nothing_logged() {
    let text = logs().text();
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("redtower::jobs") || l.contains("connection lost"))
        .collect();
    assert!(failures.is_empty(), "failures were logged:\n{text}");
}

fn fresh(url: &str, prefix: &str) -> Redis {
    Redis::new(RedisConfig::from_url(url).unwrap().key_prefix(prefix)).unwrap()
}

/// 50 fresh clients each add a job the moment they are built: every add is decided by Redis
/// (no error, nothing logged) and each adds exactly one job.
async fn fifty_fresh_producers(url: String) {
    logs();
    let prefix = unique_prefix("boot-producers");
    let ids = join_all((0..50u32).map(|n| {
        let (url, prefix) = (url.clone(), prefix.clone());
        async move {
            let redis = fresh(&url, &prefix);
            let queue = Queue::<Boot>::new(RedisStore::new(redis.clone()), "boot");
            let id = queue.add(Boot { n }).await;
            redis.quit().await;
            id.unwrap_or_else(|e| panic!("add {n} on a fresh client failed: {e}"))
        }
    }))
    .await;
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 50, "every add made its own job: {ids:?}");

    let check = fresh(&url, &prefix);
    check.wait_ready(Duration::from_secs(10)).await.unwrap();
    let queue = Queue::<Boot>::new(RedisStore::new(check.clone()), "boot");
    let counts = queue.counts().await.unwrap();
    assert_eq!(counts.ready, 50, "exactly one job per add: {counts:?}");
    let mut seen: Vec<u32> = queue
        .list(redtower_jobs::JobState::Ready, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|j| j.decode::<Boot>().unwrap().n)
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    check.quit().await;
    assert_nothing_logged();
}

/// Fresh processes that start a worker and add a job at once: every job runs, once, and
/// nothing is logged as a failure.
async fn fresh_workers(url: String) {
    logs();
    let prefix = unique_prefix("boot-workers");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handles = join_all((0..10u32).map(|n| {
        let (url, prefix, tx) = (url.clone(), prefix.clone(), tx.clone());
        async move {
            let redis = fresh(&url, &prefix);
            let store = RedisStore::new(redis.clone());
            let worker = Worker::new(store.clone(), "boot")
                .handle::<Boot>(move |job: Boot, _ctx: JobContext| {
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send(job.n);
                        Ok::<(), JobError>(())
                    }
                })
                .start();
            Queue::<Boot>::new(store, "boot")
                .add(Boot { n })
                .await
                .unwrap_or_else(|e| panic!("add {n} on a fresh client failed: {e}"));
            (worker, redis)
        }
    }))
    .await;
    let mut ran = Vec::new();
    while ran.len() < 10 {
        let n = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("every job runs")
            .unwrap();
        ran.push(n);
    }
    for (worker, redis) in handles {
        worker.shutdown().await.unwrap();
        redis.quit().await;
    }
    // Nothing more ran meanwhile: each job ran once.
    while let Ok(n) = rx.try_recv() {
        ran.push(n);
    }
    ran.sort_unstable();
    assert_eq!(ran, (0..10).collect::<Vec<_>>());
    assert_nothing_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_producers_standalone() {
    fifty_fresh_producers(redtower_testkit::shared_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_producers_cluster() {
    fifty_fresh_producers(redtower_testkit::shared_cluster().url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_workers_standalone() {
    fresh_workers(redtower_testkit::shared_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_workers_cluster() {
    fresh_workers(redtower_testkit::shared_cluster().url()).await;
}
