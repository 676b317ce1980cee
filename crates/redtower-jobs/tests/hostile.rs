//! Arithmetic from input and from Redis never panics: backoff from any stored record (negative,
//! huge, float, NaN-like jitter), any attempt number, any delay, lease or retry delay. Property
//! tests over the computations, and the extremes through both stores.

use std::time::Duration;

use proptest::prelude::*;
use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{
    Backoff, Job, JobState, MemoryStore, NewJob, Queue, QueueStore, RedisStore, Settle, Settled,
    WorkRequest,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ping;

impl Job for Ping {
    const NAME: &'static str = "ping";
}

/// JSON numbers a corrupted or hand-written record may hold.
fn hostile_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        Just("1e308".to_owned()),
        Just("-0.0".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
    ]
}

proptest! {
    /// Any backoff read back from a record either is rejected (a typed error: its job goes
    /// dead) or computes delays for every attempt without panicking, capped at 100 years, with
    /// jitter never above the delay.
    #[test]
    fn stored_backoff_never_panics(
        kind in prop_oneof![Just("fixed"), Just("exponential")],
        base in hostile_number(),
        max in hostile_number(),
        jitter in hostile_number(),
        attempt in any::<u32>(),
    ) {
        let json = format!(r#"{{"k":"{kind}","ms":{base},"max":{max},"j":{jitter}}}"#);
        if let Ok(b) = serde_json::from_str::<Backoff>(&json) {
            let d = b.delay(attempt);
            prop_assert!(d <= Duration::from_secs(100 * 365 * 24 * 3600));
            prop_assert!(b.delay_with_jitter(attempt) <= d);
        } else {
            // Only a negative delay is refused.
            prop_assert!(base.starts_with('-') || max.starts_with('-'), "{json}");
        }
    }

    /// Backoff built in code from any duration and any jitter ratio (NaN, infinite, negative,
    /// above 1) computes every delay without panicking.
    #[test]
    fn built_backoff_never_panics(
        base_ms in any::<u64>(),
        max_ms in any::<u64>(),
        ratio in any::<f64>(),
        attempt in any::<u32>(),
    ) {
        for b in [
            Backoff::fixed(Duration::from_millis(base_ms)),
            Backoff::exponential(Duration::from_millis(base_ms)),
        ] {
            let b = b.max(Duration::from_millis(max_ms)).jitter(ratio);
            let d = b.delay(attempt);
            prop_assert!(b.delay_with_jitter(attempt) <= d);
            if attempt > 0 && max_ms > 0 {
                prop_assert!(d <= Duration::from_millis(max_ms));
            }
        }
    }
}

/// Extremes through a store: `Duration::MAX` delays, leases and retry delays are accepted and
/// saturate; nothing panics and the job is where it should be.
async fn extremes(store: std::sync::Arc<dyn QueueStore>) {
    let queue = Queue::<Ping>::new(store.clone(), "hostile");
    let far = queue.add(Ping).delay(Duration::MAX).await.unwrap();
    assert_eq!(
        queue.get(&far).await.unwrap().unwrap().state,
        JobState::Scheduled
    );
    let id = queue
        .add(Ping)
        .attempts(u32::MAX)
        .backoff(Backoff::exponential(Duration::MAX).max(Duration::MAX))
        .await
        .unwrap();
    let job = store
        .work("hostile", WorkRequest::new(vec![], 10, Duration::MAX))
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(job.lease.id, id);
    assert!(job.backoff.delay(u32::MAX) > Duration::from_secs(3600));
    let reply = store
        .work(
            "hostile",
            WorkRequest::new(
                vec![(
                    job.lease,
                    Settle::Retry {
                        delay: Duration::MAX,
                        error: "later".into(),
                    },
                )],
                0,
                Duration::MAX,
            )
            .max_stalls(u32::MAX)
            .retention(redtower_jobs::Retention {
                completed_count: u64::MAX,
                completed_age: Duration::MAX,
                dead_count: u64::MAX,
                dead_age: Duration::MAX,
            }),
        )
        .await
        .unwrap();
    assert_eq!(reply.settled, vec![Settled::Retrying]);
    assert!(reply.next_due.is_some());
    let c = queue.counts().await.unwrap();
    assert_eq!((c.scheduled, c.ready, c.active), (2, 0, 0));
    // Retention at its extremes keeps finished jobs (it does not wrap to "keep none").
    let next = queue.add(Ping).await.unwrap();
    let job = store
        .work("hostile", WorkRequest::new(vec![], 1, Duration::MAX))
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(job.lease.id, next);
    let keep_all = redtower_jobs::Retention {
        completed_count: u64::MAX,
        completed_age: Duration::MAX,
        dead_count: u64::MAX,
        dead_age: Duration::MAX,
    };
    let done = store
        .work(
            "hostile",
            WorkRequest::new(vec![(job.lease, Settle::Complete)], 0, Duration::MAX)
                .retention(keep_all),
        )
        .await
        .unwrap();
    assert_eq!(done.settled, vec![Settled::Completed]);
    assert_eq!(
        queue.get(&next).await.unwrap().unwrap().state,
        JobState::Completed
    );
    // Hostile store-level input: a priority and attempts beyond the queue's checks.
    let mut raw = NewJob::new("ping", "null");
    raw.priority = u32::MAX;
    raw.max_attempts = 0;
    raw.delay = Duration::MAX;
    store.enqueue("hostile", vec![raw]).await.unwrap();
    assert_eq!(queue.counts().await.unwrap().scheduled, 3);
}

#[tokio::test(start_paused = true)]
async fn extremes_memory() {
    extremes(std::sync::Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extremes_redis() {
    let redis = Redis::new(
        RedisConfig::from_url(&redtower_testkit::shared_url())
            .unwrap()
            .key_prefix(redtower_testkit::unique_prefix("hostile")),
    )
    .unwrap();
    extremes(std::sync::Arc::new(RedisStore::new(redis))).await;
}

/// Worker settings at their extremes are clamped: the worker starts, runs and stops.
#[tokio::test(start_paused = true)]
async fn worker_settings_at_extremes() {
    let store = MemoryStore::new();
    let queue = Queue::<Ping>::new(store.clone(), "w");
    let id = queue.add(Ping).await.unwrap();
    let worker = redtower_jobs::Worker::new(store, "w")
        .lease(Duration::MAX)
        .poll_interval(Duration::MAX)
        .grace(Duration::MAX)
        .timeout(Duration::MAX)
        .max_stalls(u32::MAX)
        .concurrency(usize::MAX)
        .handle::<Ping>(|_: Ping, _| async { Ok(()) })
        .start();
    for _ in 0..100 {
        if queue.get(&id).await.unwrap().unwrap().state == JobState::Completed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        queue.get(&id).await.unwrap().unwrap().state,
        JobState::Completed
    );
    worker.shutdown().await.unwrap();
}
