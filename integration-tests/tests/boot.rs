//! A freshly started instance is served by Redis from its first request: the rate limit counts
//! it and the response cache fills once for two instances, standalone and on a Cluster, with
//! no failure policy applied; and the app waits for Redis before accepting traffic.

#[allow(dead_code)] // `spawn` is for the other test binaries
mod common;

use std::sync::OnceLock;

use common::TestApp;
use redtower_testkit::{LogBuffer, unique_prefix};
use reqwest::{Client, StatusCode};
use serde_json::Value;

fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("warn")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

fn log_text() -> String {
    logs().text()
}

/// Two instances started at once on a fresh prefix; requests sent the moment their ports
/// accept connections, alternating between them.
async fn boot_pair(url: &str, round: usize) {
    let prefix = unique_prefix(&format!("boot-{round}"));
    let env = [
        ("API_RATE_LIMIT", "4/1h"),
        ("WORKER", "off"),
        ("FEATURED_DELAY_MS", "200"),
    ];
    let (a, b) = tokio::join!(
        TestApp::spawn_at_once(Some(url), &prefix, &env),
        TestApp::spawn_at_once(Some(url), &prefix, &env),
    );
    let http = Client::new();

    // The featured list, asked of both at once: one fill for both. (Behind a load balancer
    // both see the same Host; the cache key includes it.)
    let featured = |app: &TestApp| {
        http.get(app.url("/products/featured"))
            .header("host", "shop.example")
            .send()
    };
    let (fa, fb) = tokio::join!(featured(&a), featured(&b));
    assert_eq!(fa.unwrap().status(), StatusCode::OK);
    assert_eq!(fb.unwrap().status(), StatusCode::OK);
    let calls = |app: &TestApp| {
        let http = http.clone();
        let url = app.url("/stats");
        async move {
            let stats: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            stats["featured_db_calls"].as_u64().unwrap()
        }
    };
    let (ca, cb) = tokio::join!(calls(&a), calls(&b));
    assert_eq!(
        ca + cb,
        1,
        "round {round}: the handler ran {ca} + {cb} times"
    );

    // The rate limit counts every request of both instances from the first one.
    for (i, app) in [&a, &b, &a, &b, &a].into_iter().enumerate() {
        let res = http.get(app.url("/api/hello")).send().await.unwrap();
        if i < 4 {
            assert_eq!(res.status(), StatusCode::OK, "round {round}, request {i}");
            assert_eq!(
                res.headers()
                    .get("x-ratelimit-remaining")
                    .map(|v| v.to_str().unwrap().to_owned()),
                Some((3 - i).to_string()),
                "round {round}, request {i}"
            );
        } else {
            assert_eq!(
                res.status(),
                StatusCode::TOO_MANY_REQUESTS,
                "round {round}, request {i}"
            );
        }
    }
    a.stop().await;
    b.stop().await;
}

async fn boot_rounds(url: &str, rounds: usize) {
    logs();
    for round in 0..rounds {
        boot_pair(url, round).await;
    }
    let text = log_text();
    assert!(
        !text.contains("failure policy") && !text.contains("Canceled"),
        "a layer applied its failure policy while Redis was up:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_are_served_by_redis_from_the_first_request() {
    boot_rounds(&redtower_testkit::shared_url(), 25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_on_a_cluster_are_served_by_redis_from_the_first_request() {
    boot_rounds(&redtower_testkit::shared_cluster().url(), 25).await;
}
