//! Clock skew on real Redis (standalone and Cluster): a producer whose clock runs 5 minutes
//! ahead, a producer on the true clock and a worker whose clock runs 7 minutes behind share a
//! queue. The offsets are injected through [`Clock`], the only way the crate reads a local wall
//! clock, and are checked to be in effect. Delays, the retry backoff schedule and every stored
//! timestamp still follow Redis `TIME`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use redtower_client::{Key, Redis, RedisConfig, Script};
use redtower_jobs::{
    Backoff, Clock, Job, JobContext, JobError, JobId, JobInfo, JobState, Queue, RedisStore, Worker,
};
use redtower_testkit::unique_prefix;
use serde::{Deserialize, Serialize};

const AHEAD: Duration = Duration::from_secs(5 * 60);
const BEHIND: Duration = Duration::from_secs(7 * 60);
const DELAY_MS: u64 = 2_000;
const BACKOFF_MS: u64 = 1_000;
/// How late after its due time a job may start and still count as on time. Generous for a
/// loaded CI machine, and far below the 5 and 7 minute offsets a leaking local clock would add.
const SLACK_MS: u64 = 10_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Tick {
    label: String,
    /// Attempts that fail before one succeeds.
    fail: u32,
}

impl Job for Tick {
    const NAME: &'static str = "tick";
}

static TIME: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        "skew_time_ms",
        "local t = redis.call('TIME') return t[1] * 1000 + math.floor(t[2] / 1000)",
    )
});

/// Redis `TIME` in ms on the node holding the queue (the key routes the call on Cluster).
async fn redis_ms(redis: &Redis, probe: &Key) -> u64 {
    TIME.run::<u64, _, _>(redis, vec![probe.clone()], Vec::<String>::new())
        .await
        .unwrap()
}

/// Per job label: (attempt, Redis time when the attempt started).
type Runs = HashMap<String, Vec<(u32, u64)>>;

async fn info(queue: &Queue<Tick>, id: &JobId) -> JobInfo {
    queue.get(id).await.unwrap().unwrap()
}

async fn skewed_producers_and_worker(url: &str, test: &str) {
    let redis = Redis::new(
        RedisConfig::from_url(url)
            .unwrap()
            .key_prefix(unique_prefix(test)),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let store = RedisStore::new(redis.clone());
    let q = "skew";
    let probe = redis.keyspace().namespace("q").key(q).push("time-probe");

    let fast = Queue::<Tick>::new(store.clone(), q).clock(Clock::system().ahead(AHEAD));
    let truth = Queue::<Tick>::new(store.clone(), q);

    // The offsets are really in effect: the crate sees these clocks 5 minutes apart from Redis.
    let skew = fast.clock_skew().await.unwrap();
    assert!(
        skew.is_ahead() && skew.magnitude().abs_diff(AHEAD) < Duration::from_secs(5),
        "producer clock: {skew}"
    );
    let skew = truth.clock_skew().await.unwrap();
    assert!(
        skew.magnitude() < Duration::from_secs(5),
        "true clock: {skew}"
    );
    let slow_clock = Clock::system().behind(BEHIND);
    let slow = Queue::<Tick>::new(store.clone(), q).clock(slow_clock.clone());
    let skew = slow.clock_skew().await.unwrap();
    assert!(
        !skew.is_ahead() && skew.magnitude().abs_diff(BEHIND) < Duration::from_secs(5),
        "worker clock: {skew}"
    );

    let runs: Arc<Mutex<Runs>> = Arc::default();
    let worker = {
        let (runs, redis, probe) = (runs.clone(), redis.clone(), probe.clone());
        Worker::new(store.clone(), q)
            .clock(slow_clock.clone())
            .concurrency(4)
            .poll_interval(Duration::from_millis(250))
            .handle::<Tick>(move |job: Tick, ctx: JobContext| {
                let (runs, redis, probe) = (runs.clone(), redis.clone(), probe.clone());
                async move {
                    let at = redis_ms(&redis, &probe).await;
                    runs.lock()
                        .unwrap()
                        .entry(job.label)
                        .or_default()
                        .push((ctx.attempt(), at));
                    if ctx.attempt() <= job.fail {
                        return Err(JobError::retry("not yet"));
                    }
                    Ok(())
                }
            })
            .start()
    };

    let begin = redis_ms(&redis, &probe).await;
    let mut ids = Vec::new();
    for (producer, label) in [(&fast, "fast producer"), (&truth, "true producer")] {
        let before = redis_ms(&redis, &probe).await;
        let id = producer
            .add(Tick {
                label: label.into(),
                fail: 0,
            })
            .delay(Duration::from_millis(DELAY_MS))
            .await
            .unwrap();
        let after = redis_ms(&redis, &probe).await;
        let i = info(producer, &id).await;
        assert!(
            (before..=after).contains(&i.created_at_ms),
            "{label}: added at {} (Redis time was {before}..={after})",
            i.created_at_ms
        );
        if i.state == JobState::Scheduled {
            assert_eq!(i.due_at_ms, Some(i.created_at_ms + DELAY_MS), "{label}");
        }
        ids.push((label, id, DELAY_MS));
    }
    let retried = fast
        .add(Tick {
            label: "retried".into(),
            fail: 2,
        })
        .attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(BACKOFF_MS)))
        .await
        .unwrap();
    ids.push(("retried", retried, 0));

    // Wait for all three, bounded in wall time far below the offsets.
    for _ in 0..600 {
        let mut done = true;
        for (_, id, _) in &ids {
            done &= info(&truth, id).await.state == JobState::Completed;
        }
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end = redis_ms(&redis, &probe).await;
    worker.shutdown().await.unwrap();
    let runs = runs.lock().unwrap().clone();

    for (label, id, delay) in &ids {
        let i = info(&truth, id).await;
        assert_eq!(
            i.state,
            JobState::Completed,
            "{label}: not completed within 30 s ({i:?}; runs {runs:?})"
        );
        let starts = &runs[*label];
        let due = i.created_at_ms + delay;
        // Not run before its delay in Redis time, and promptly after it.
        let (_, first) = starts[0];
        assert!(
            first >= due,
            "{label}: ran at {first}, due at {due} (Redis time)"
        );
        assert!(
            first < due + SLACK_MS,
            "{label}: ran at {first}, {} ms after due",
            first - due
        );
        // Completion stamped with Redis time, not the worker's clock (7 minutes behind).
        let fin = i.finished_at_ms.expect("finish time");
        let (_, last) = *starts.last().unwrap();
        assert!(
            fin >= last && fin <= end,
            "{label}: finished at {fin}, last run {last}, Redis now {end}"
        );
        assert!(fin >= begin);
    }

    // The retry schedule: 1 s then 2 s of Redis time after each failed attempt started.
    let starts = &runs["retried"];
    assert_eq!(
        starts.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "{starts:?}"
    );
    for (n, pair) in starts.windows(2).enumerate() {
        let want = BACKOFF_MS << n;
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap >= want && gap < want + SLACK_MS,
            "attempt {} started {gap} ms after attempt {}, backoff {want} ms",
            n + 2,
            n + 1
        );
    }
    assert_eq!(info(&truth, &ids[2].1).await.attempts_made, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_skewed_producers_and_worker_follow_redis_time() {
    skewed_producers_and_worker(&redtower_testkit::shared_url(), "skew").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_skewed_producers_and_worker_follow_redis_time() {
    skewed_producers_and_worker(&redtower_testkit::shared_cluster().url(), "skew-cluster").await;
}
