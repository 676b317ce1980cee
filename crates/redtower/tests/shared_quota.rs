//! One budget for an HTTP route and a queue's job starts, on real Redis.
#![cfg(all(feature = "jobs", feature = "ratelimit"))]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, routing::get};
use http::{Request, StatusCode};
use redtower::{
    client::{Redis, RedisConfig},
    jobs::{self, Job, JobContext, JobError, JobState, Queue, Worker},
    quota::SharedQuota,
    ratelimit::{self, Global, Policy, Quota, RateLimitLayer},
};
use tower::ServiceExt;

#[derive(serde::Serialize, serde::Deserialize)]
struct Charge {
    n: u32,
}

impl Job for Charge {
    const NAME: &'static str = "charge";
}

async fn status(app: &Router) -> StatusCode {
    let req = Request::get("/pay").body(Body::empty()).unwrap();
    app.clone().oneshot(req).await.unwrap().status()
}

/// Five calls an hour to the provider: three HTTP requests and two jobs spend them; the third
/// job waits (no attempt used, the queue holds) and the next HTTP request is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_and_job_starts_share_one_budget() {
    let redis = Redis::new(
        RedisConfig::from_url(&redtower_testkit::shared_url())
            .unwrap()
            .key_prefix(redtower_testkit::unique_prefix("shared-quota")),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    let provider = Policy::new(
        "provider",
        Quota::new(5, Duration::from_secs(3600)).unwrap(),
    );
    let limits = ratelimit::RedisStore::new(redis.clone());
    let app = Router::new().route("/pay", get(|| async { "paid" })).layer(
        RateLimitLayer::with_store(limits.clone())
            .route("/pay", [provider])
            .key(Global),
    );
    for _ in 0..3 {
        assert_eq!(status(&app).await, StatusCode::OK);
    }

    let store = jobs::RedisStore::new(redis.clone());
    let queue = Queue::<Charge>::new(store.clone(), "payments");
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(queue.add(Charge { n }).attempts(1).await.unwrap());
    }
    let ran = Arc::new(AtomicU32::new(0));
    let r = ran.clone();
    let worker = Worker::new(store, "payments")
        .concurrency(1)
        .start_limiter(SharedQuota::new(limits, provider))
        .handle::<Charge>(move |_c: Charge, _ctx: JobContext| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok::<(), JobError>(())
            }
        })
        .start();
    let mut counts = queue.counts().await.unwrap();
    for _ in 0..500 {
        if counts.completed == 2 && counts.scheduled == 1 {
            break;
        }
        // Polls for the worker to reach the refused job.
        tokio::time::sleep(Duration::from_millis(20)).await;
        counts = queue.counts().await.unwrap();
    }
    assert_eq!(
        (counts.completed, counts.scheduled, counts.ready),
        (2, 1, 2),
        "two jobs spent the rest of the budget; the third waits, the queue holds"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    let waiting = queue.get(&ids[2]).await.unwrap().unwrap();
    assert_eq!(waiting.state, JobState::Scheduled);
    assert_eq!(
        waiting.attempts_made, 0,
        "waiting for the quota uses no attempt"
    );
    assert!(
        waiting.due_at_ms.unwrap() >= waiting.created_at_ms + 60_000,
        "it waits for the policy's retry time (one call per 12 minutes)"
    );
    assert_eq!(status(&app).await, StatusCode::TOO_MANY_REQUESTS);
    worker.shutdown().await.unwrap();
}
