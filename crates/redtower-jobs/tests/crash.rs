//! Reliability on real Redis: a worker process killed with SIGKILL mid-job, and a chaos loop
//! (workers crashing at random, Redis with AOF restarted). Clock skew: `clock_skew.rs`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use fred::interfaces::HashesInterface;
use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{
    Job, JobContext, JobError, JobOptions, JobState, Lease, Queue, QueueStore, RedisStore,
    Retention, Settle, Settled, WorkRequest, Worker,
};
use redtower_testkit::{RedisServer, unique_prefix};
use serde::{Deserialize, Serialize};

mod instance;

#[derive(Serialize, Deserialize)]
struct Crash {
    n: u32,
}

impl Job for Crash {
    const NAME: &'static str = "crash";
}

async fn connect(url: &str, prefix: &str) -> Redis {
    let redis = Redis::new(RedisConfig::from_url(url).unwrap().key_prefix(prefix)).unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    redis
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_job_is_reprocessed_once_and_stale_token_rejected() {
    let url = redtower_testkit::shared_url();
    let prefix = unique_prefix("crash");
    let redis = connect(&url, &prefix).await;
    let store = RedisStore::new(redis.clone());
    let queue = Queue::<Crash>::new(store.clone(), "crash");
    let id = queue.add(Crash { n: 1 }).await.unwrap();

    let (mut child, line) = instance::start("crash_worker", &url, &prefix, "crash").await;
    assert_eq!(line, format!("started {id} 1"));

    // The child's lease token, straight from Redis.
    let lease_key = redis.keyspace().namespace("q").key("crash").push("lease");
    let stale_token: String = redis
        .client()
        .hget(lease_key.as_str(), id.as_str())
        .await
        .unwrap();
    child.kill().await.unwrap(); // SIGKILL mid-job
    let killed_at = Instant::now();

    let completions = Arc::new(AtomicU32::new(0));
    let c2 = completions.clone();
    let worker = Worker::new(store.clone(), "crash")
        .poll_interval(Duration::from_millis(100))
        .handle::<Crash>(move |_job: Crash, ctx: JobContext| {
            let c = c2.clone();
            async move {
                assert_eq!(ctx.attempt(), 1, "a lost lease does not use an attempt");
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<(), JobError>(())
            }
        })
        .start();
    for _ in 0..200 {
        if queue.counts().await.unwrap().completed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let info = queue.get(&id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Completed);
    assert_eq!(info.stalls, 1, "reprocessed because the lease expired");
    assert!(killed_at.elapsed() < Duration::from_secs(5));

    // The killed worker's late result is fenced out.
    let late = store
        .work(
            "crash",
            WorkRequest::new(
                vec![(
                    Lease {
                        id: id.clone(),
                        token: stale_token,
                    },
                    Settle::Complete,
                )],
                0,
                Duration::from_secs(30),
            ),
        )
        .await
        .unwrap();
    assert_eq!(late.settled, vec![Settled::Stale]);
    worker.shutdown().await.unwrap();
    assert_eq!(
        completions.load(Ordering::SeqCst),
        1,
        "exactly one completion"
    );
    let c = queue.counts().await.unwrap();
    assert_eq!(
        (c.completed, c.ready, c.active, c.scheduled, c.dead),
        (1, 0, 0, 0, 0)
    );
}

#[derive(Serialize, Deserialize)]
struct Noop {
    n: u32,
}

impl Job for Noop {
    const NAME: &'static str = "noop";
}

/// 10,000 jobs; workers crash (abort) and restart at random; Redis (AOF) restarts once. Every
/// job completes, none is lost, a job runs twice only after a lease expired, counts add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_workers_crash_and_redis_restarts() {
    const N: u32 = 10_000;
    let server = Arc::new(Mutex::new(RedisServer::options().aof(true).start()));
    let url = server.lock().unwrap().url();
    let redis = connect(&url, "chaos").await;
    let store = RedisStore::new(redis.clone()).events_max_len(100);
    let queue = Queue::<Noop>::new(store.clone(), "chaos");
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        queue
            .add_bulk(chunk.iter().map(|&n| (Noop { n }, JobOptions::new())))
            .await
            .unwrap();
    }
    assert_eq!(queue.counts().await.unwrap().ready, u64::from(N));

    let runs: Arc<Vec<AtomicU32>> = Arc::new((0..N).map(|_| AtomicU32::new(0)).collect());
    let start_worker = |runs: Arc<Vec<AtomicU32>>| {
        Worker::new(store.clone(), "chaos")
            .concurrency(50)
            .lease(Duration::from_millis(800))
            .max_stalls(1_000)
            .poll_interval(Duration::from_millis(200))
            .retention(Retention {
                completed_count: 100_000,
                ..Retention::default()
            })
            .handle::<Noop>(move |job: Noop, _ctx: JobContext| {
                let runs = runs.clone();
                async move {
                    runs[job.n as usize].fetch_add(1, Ordering::Relaxed);
                    Ok::<(), JobError>(())
                }
            })
            .start()
    };
    let mut workers: Vec<_> = (0..3).map(|_| start_worker(runs.clone())).collect();
    let started = Instant::now();
    let mut restarted = false;
    let mut kills = 0;
    loop {
        let c = queue.counts().await;
        if let Ok(c) = c
            && c.completed == u64::from(N)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "chaos did not finish: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100 + rand::random::<u64>() % 150)).await;
        // Crash a random worker and start a fresh one.
        let i = rand::random::<u32>() as usize % workers.len();
        workers.swap_remove(i).abort();
        kills += 1;
        workers.push(start_worker(runs.clone()));
        if !restarted && started.elapsed() > Duration::from_millis(400) {
            restarted = true;
            let s = server.clone();
            tokio::task::spawn_blocking(move || s.lock().unwrap().restart())
                .await
                .unwrap();
        }
    }
    for w in workers {
        w.shutdown().await.unwrap();
    }
    assert!(restarted && kills > 3);
    let c = queue.counts().await.unwrap();
    assert_eq!(
        (c.completed, c.ready, c.active, c.scheduled, c.dead),
        (u64::from(N), 0, 0, 0, 0)
    );

    // Every payload completed exactly once as a job (no job lost or duplicated by the queue).
    let done = queue
        .list(JobState::Completed, 0, N as usize + 10)
        .await
        .unwrap();
    assert_eq!(done.len(), N as usize);
    let mut seen = vec![false; N as usize];
    let mut stalls: HashMap<u32, u32> = HashMap::new();
    for info in &done {
        let n = info.decode::<Noop>().unwrap().n;
        assert!(!seen[n as usize], "payload {n} completed twice");
        seen[n as usize] = true;
        stalls.insert(n, info.stalls);
    }
    // Ran at least once; more only after lost leases.
    let mut duplicates = 0;
    for n in 0..N {
        let r = runs[n as usize].load(Ordering::Relaxed);
        assert!(r >= 1, "payload {n} never ran");
        if r > 1 {
            duplicates += 1;
            assert!(
                r - 1 <= stalls[&n],
                "payload {n} ran {r} times with {} lease expiries",
                stalls[&n]
            );
        }
    }
    let jobs_key = redis.keyspace().namespace("q").key("chaos").push("jobs");
    let records: u64 = redis.client().hlen(jobs_key.as_str()).await.unwrap();
    assert_eq!(records, u64::from(N));
    eprintln!(
        "chaos: {kills} worker crashes, 1 redis restart, {duplicates} duplicate runs, {:?}",
        started.elapsed()
    );
}
