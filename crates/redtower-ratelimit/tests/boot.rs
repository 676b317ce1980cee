//! A freshly started process is not in an outage: its first requests, sent while its first
//! connection to Redis is still being made, are decided by Redis, not by the failure policy.

use std::{net::SocketAddr, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo, routing::get};
use http::{Request, StatusCode};
use redtower_client::{Redis, RedisConfig};
use redtower_ratelimit::{CircuitBreaker, Policy, Quota, RateLimitLayer, RedisStore, nonzero};
use redtower_testkit::{LogBuffer, unique_prefix};
use tower::ServiceExt;

const CLIENTS: usize = 50;

/// One fresh process: a new `Redis` handle and layer, and its first request sent at once
/// (no `wait_ready`). Returns the status and the `RateLimit` header.
async fn first_request(
    url: &str,
    i: usize,
    coalesce: bool,
    timeout: Duration,
) -> (StatusCode, Option<String>) {
    let redis = Redis::new(
        RedisConfig::from_url(url)
            .unwrap()
            .key_prefix(unique_prefix(&format!("boot-{i}")))
            // The wait for the first connection is bounded by the client's command timeout:
            // room for a loaded machine.
            .command_timeout(Duration::from_secs(10)),
    )
    .unwrap();
    assert!(
        !redis.has_connected(),
        "the request must race the connection"
    );
    let layer = RateLimitLayer::new(
        RedisStore::new(redis).coalesce(coalesce),
        Policy::new("api", Quota::per_hour(nonzero!(10))),
    )
    // A breaker that one failure would open: a failure at boot would show.
    .timeout(timeout)
    .circuit_breaker(CircuitBreaker {
        failures: 1,
        cool_down: Duration::from_secs(60),
    });
    let app = Router::new()
        .route("/", get(|| async { "hi" }))
        .layer(layer);
    let peer: SocketAddr = "198.51.100.1:1".parse().unwrap();
    let res = app
        .oneshot(
            Request::get("/")
                .extension(ConnectInfo(peer))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let header = res
        .headers()
        .get("ratelimit")
        .map(|v| v.to_str().unwrap().to_owned());
    (res.status(), header)
}

fn boot(url: String) {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _tracing = tracing::subscriber::set_default(subscriber);
    // One thread: the subscriber set above sees every event of the requests.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let results = futures::future::join_all(
            // Fifty processes' handshakes share one thread here: a layer timeout with room for
            // that on a loaded machine (the wait for the first connection happens before the
            // timeout starts anyway: see `the_wait_for_the_first_connection_is_outside_the_timeout`).
            (0..CLIENTS).map(|i| first_request(&url, i, i % 2 == 0, Duration::from_secs(2))),
        )
        .await;
        let text = logs.text();
        for (i, (status, header)) in results.into_iter().enumerate() {
            assert_eq!(status, StatusCode::OK, "client {i}");
            // Decided by Redis: one of ten used, nine left.
            let header =
                header.unwrap_or_else(|| panic!("client {i}: no RateLimit header; logs: {text}"));
            assert!(header.starts_with("\"api\";r=9;t="), "client {i}: {header}");
        }
    });
    let text = logs.text();
    assert!(!text.contains("failure policy"), "{text}");
    assert!(!text.contains("rate limit store"), "{text}");
}

#[test]
fn first_requests_of_fresh_processes_are_decided_by_redis() {
    boot(redtower_testkit::shared_url());
}

#[test]
fn first_requests_of_fresh_processes_are_decided_by_a_cluster() {
    boot(redtower_testkit::shared_cluster().url());
}

/// The layer's own timeout (100 ms by default) does not include the wait for the first
/// connection: a server that answers nothing for longer than that while the process starts
/// still decides the first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_the_first_connection_is_outside_the_timeout() {
    let server = redtower_testkit::RedisServer::start();
    server.pause();
    let url = server.url();
    let first =
        tokio::spawn(async move { first_request(&url, 0, true, Duration::from_millis(100)).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !first.is_finished(),
        "the request waits for the first connection"
    );
    server.resume();
    let (status, header) = first.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let header = header.expect("decided by Redis");
    assert!(header.starts_with("\"api\";r=9;t="), "{header}");
}

/// A process started while Redis is unreachable applies its failure policy (Redis really is
/// unreachable), but that is no evidence against a connection that was up: the breaker stays
/// closed, and the first request after Redis appears is decided by Redis, not held off for a
/// cool-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_the_first_connection_never_open_the_breaker() {
    let port = redtower_testkit::free_port();
    let redis = Redis::new(
        RedisConfig::from_url(&format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .key_prefix(unique_prefix("never-connected"))
            .command_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    let layer = RateLimitLayer::new(
        RedisStore::new(redis.clone()),
        Policy::new("api", Quota::per_hour(nonzero!(10))),
    )
    .circuit_breaker(CircuitBreaker {
        failures: 1,
        cool_down: Duration::from_secs(3600),
    });
    let app = Router::new()
        .route("/", get(|| async { "hi" }))
        .layer(layer);
    let send = || {
        let peer: SocketAddr = "198.51.100.2:1".parse().unwrap();
        app.clone().oneshot(
            Request::get("/")
                .extension(ConnectInfo(peer))
                .body(Body::empty())
                .unwrap(),
        )
    };
    for _ in 0..3 {
        let res = send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "fail open");
        assert!(res.headers().get("ratelimit").is_none(), "not decided");
    }
    let _server = redtower_testkit::RedisServer::options().port(port).start();
    redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    let res = send().await.unwrap();
    let header = res
        .headers()
        .get("ratelimit")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        header.as_deref().map(|h| h.starts_with("\"api\";r=9;t=")),
        Some(true),
        "decided by Redis at once: {header:?}"
    );
}
