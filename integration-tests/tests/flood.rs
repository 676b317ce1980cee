//! A flood of hostile requests through the example app's public routes, with bounded counts:
//! logins for one user, random channels, random query strings, SSE opens with hostile
//! `Last-Event-ID`. Redis memory and the process's memory stay under the documented limits,
//! every answer is a 2xx, a 4xx or a 503 (never another 5xx, never a hang), and a normal
//! user is served within 1 s throughout.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use redtower_testkit::{RedisServer, unique_prefix};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

mod common;

use common::TestApp;

/// How far Redis's `used_memory` may grow during the flood.
const REDIS_GROWTH_LIMIT: i64 = 32 << 20;
/// How far the process's resident memory may grow during the flood.
const RSS_GROWTH_LIMIT: i64 = 256 << 20;
/// The slowest a normal user's request may be answered during the flood.
const NORMAL_USER_BOUND: Duration = Duration::from_secs(1);

fn used_memory(server: &RedisServer) -> i64 {
    let info = server
        .cmd(&["INFO", "memory"])
        .as_text()
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO memory")
}

fn rss() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn browser() -> Client {
    Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn random() -> String {
    format!("{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// Runs `n` requests made by `make`, 16 at a time; returns every status seen.
async fn flood<F, Fut>(n: usize, make: F) -> Vec<StatusCode>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = StatusCode>,
{
    futures::stream::iter(0..n)
        .map(make)
        .buffer_unordered(16)
        .collect()
        .await
}

fn assert_acceptable(phase: &str, statuses: &[StatusCode]) {
    for s in statuses {
        assert!(
            s.is_success() || s.is_client_error() || *s == StatusCode::SERVICE_UNAVAILABLE,
            "{phase}: answered {s}"
        );
    }
}

/// Status of a request; a stream is dropped as soon as its headers arrived.
async fn status(req: reqwest::RequestBuilder) -> StatusCode {
    match req.send().await {
        Ok(res) => res.status(),
        Err(e) if e.is_timeout() => panic!("a request hung: {e}"),
        Err(e) => panic!("a request failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hostile_requests_stays_bounded() {
    let server = RedisServer::start();
    let app = Arc::new(
        TestApp::spawn(
            Some(&server.url()),
            &unique_prefix("flood"),
            &[("WORKER", "off"), ("API_RATE_LIMIT", "1000000/1h")],
        )
        .await,
    );
    let redis_before = used_memory(&server);
    let rss_before = rss();

    // A normal user, served throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let normal = {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let me = browser();
            let res = me
                .post(app.url("/login"))
                .json(&json!({"user": "normal"}))
                .send()
                .await;
            assert_eq!(res.unwrap().status(), StatusCode::OK);
            let (mut served, mut slowest) = (0u32, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                for path in ["/me", "/products/featured", "/api/hello"] {
                    let started = Instant::now();
                    let res = me.get(app.url(path)).send().await.unwrap();
                    assert_eq!(res.status(), StatusCode::OK, "{path}");
                    let _ = res.bytes().await;
                    slowest = slowest.max(started.elapsed());
                    served += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (served, slowest)
        })
    };

    // 1. Logins for one user.
    let logins = flood(300, |_| {
        let app = app.clone();
        async move {
            status(
                browser()
                    .post(app.url("/login"))
                    .json(&json!({"user": "mallory"})),
            )
            .await
        }
    })
    .await;
    assert_acceptable("logins", &logins);

    // 2. Streams of random channels, opened and dropped.
    let opens = flood(2_000, |_| {
        let app = app.clone();
        async move { status(browser().get(app.url(&format!("/events/{}", random())))).await }
    })
    .await;
    assert_acceptable("random channels", &opens);

    // 3. Publishes to random channels by one logged-in user.
    let mallory = browser();
    let res = mallory
        .post(app.url("/login"))
        .json(&json!({"user": "mallory"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success() || res.status() == StatusCode::TOO_MANY_REQUESTS);
    let publishes = flood(1_000, |i| {
        let (app, mallory) = (app.clone(), mallory.clone());
        async move {
            status(
                mallory
                    .post(app.url(&format!("/events/{}", random())))
                    .json(&json!({ "n": i, "pad": "x".repeat(1_000) })),
            )
            .await
        }
    })
    .await;
    assert_acceptable("publishes", &publishes);

    // 4. Random query strings on a cached route.
    let calls_before: Value = browser()
        .get(app.url("/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let queries = flood(2_000, |_| {
        let app = app.clone();
        async move {
            status(browser().get(app.url(&format!("/products/featured?r={}", random())))).await
        }
    })
    .await;
    assert_acceptable("random queries", &queries);
    let calls_after: Value = browser()
        .get(app.url("/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let handler_calls = calls_after["featured_db_calls"].as_u64().unwrap()
        - calls_before["featured_db_calls"].as_u64().unwrap();
    assert!(
        handler_calls <= 1,
        "2,000 random query strings ran the handler {handler_calls} times"
    );

    // 5. Stream opens with hostile Last-Event-ID values.
    let hostile = [
        "0",
        "x:0",
        "x:18446744073709551615",
        "18446744073709551615:18446744073709551615",
        "not an id /../ {}",
        ":",
        "-1:-1",
    ];
    let resumes = flood(700, |i| {
        let app = app.clone();
        async move {
            status(
                browser()
                    .get(app.url("/events/news"))
                    .header("last-event-id", hostile[i % hostile.len()]),
            )
            .await
        }
    })
    .await;
    assert_acceptable("hostile resumes", &resumes);

    stop.store(true, Ordering::Relaxed);
    let (served, slowest) = normal.await.unwrap();
    assert!(served > 0);
    assert!(
        slowest < NORMAL_USER_BOUND,
        "a normal request took {slowest:?}"
    );

    // mallory's sessions are capped: 300 logins and one more hold 100 sessions.
    let res = mallory.get(app.url("/me/sessions")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let sessions: Value = res.json().await.unwrap();
    let n = sessions.as_array().map_or(0, Vec::len);
    assert_eq!(n, 100, "mallory holds {n} sessions");

    let redis_growth = used_memory(&server) - redis_before;
    let rss_growth = rss() - rss_before;
    eprintln!(
        "flood: {} logins, {} random streams, {} publishes, {} random queries ({handler_calls} handler calls), {} hostile resumes; \
         redis +{} KiB, rss +{} KiB; normal user: {served} requests, slowest {slowest:?}; mallory sessions {n}",
        logins.len(),
        opens.len(),
        publishes.len(),
        queries.len(),
        resumes.len(),
        redis_growth / 1024,
        rss_growth / 1024
    );
    assert!(
        redis_growth < REDIS_GROWTH_LIMIT,
        "redis grew by {redis_growth} bytes"
    );
    assert!(
        rss_growth < RSS_GROWTH_LIMIT,
        "the process grew by {rss_growth} bytes"
    );
    if let Ok(app) = Arc::try_unwrap(app) {
        app.stop().await;
    }
}
