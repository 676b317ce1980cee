//! A freshly started instance is decided by Redis from its very first request: no request
//! fails open while the first connection is being made, and two fresh instances share one
//! fill (the handler runs once). Standalone and Cluster, on fresh client handles each round.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, http::Request, routing::get};
use http_body_util::BodyExt;
use redtower_cache::{Cache, RedisStore, ResponseCacheLayer};
use redtower_client::{Redis, RedisConfig};
use redtower_testkit::{LogBuffer, unique_prefix};
use tower::ServiceExt;

const ROUNDS: usize = 50;

/// Every WARN (or worse) the cache logs, from any thread of any test in this binary.
fn warnings() -> &'static LogBuffer {
    static LOG: OnceLock<LogBuffer> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = LogBuffer::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("redtower::cache=warn")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        log
    })
}

/// One fresh instance: its own client handle (not waited for), cache and route.
fn instance(url: &str, prefix: &str, calls: Arc<AtomicUsize>) -> (Cache, Router) {
    // A generous command timeout: a loaded machine may take a while to connect, and the
    // first connection is waited for up to it.
    let config = RedisConfig::from_url(url)
        .unwrap()
        .key_prefix(prefix)
        .command_timeout(Duration::from_secs(10));
    let redis = Redis::new(config).unwrap();
    let store = RedisStore::new(redis).timeout(Duration::from_secs(10));
    let cache = Cache::builder(store)
        .lock_ttl(Duration::from_secs(30))
        .lock_wait(Duration::from_secs(30))
        .build();
    let route = Router::new().route(
        "/products/featured",
        get(move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                "[\"tea\"]"
            }
        })
        .layer(ResponseCacheLayer::new(
            cache.clone(),
            Duration::from_secs(60),
        )),
    );
    (cache, route)
}

async fn get_featured(app: Router) -> (u16, String) {
    let resp = app
        .oneshot(
            Request::get("/products/featured")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn first_requests_are_decided_by_redis(url: &str, test: &str) {
    let log = warnings();
    for round in 0..ROUNDS {
        let prefix = unique_prefix(&format!("{test}-{round}"));
        let calls = Arc::new(AtomicUsize::new(0));
        let (cache_a, a) = instance(url, &prefix, calls.clone());
        let (cache_b, b) = instance(url, &prefix, calls.clone());
        // The first request of each instance, at once, before either has connected.
        let (ra, rb) = tokio::join!(get_featured(a), get_featured(b));
        assert_eq!(ra, (200, "[\"tea\"]".to_owned()), "round {round}");
        assert_eq!(rb, (200, "[\"tea\"]".to_owned()), "round {round}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "round {round}: one shared fill for two fresh instances"
        );
        for cache in [&cache_a, &cache_b] {
            assert_eq!(
                cache.stats().fail_open,
                0,
                "round {round}: no request failed open"
            );
        }
        assert_eq!(cache_a.stats().stored + cache_b.stats().stored, 1);
    }
    let text = log.text();
    assert!(
        !text.contains("failing open"),
        "no failure-policy log line; got:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_share_the_first_fill_standalone() {
    first_requests_are_decided_by_redis(&redtower_testkit::shared_url(), "boot-standalone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_share_the_first_fill_on_a_cluster() {
    first_requests_are_decided_by_redis(&redtower_testkit::shared_cluster().url(), "boot-cluster")
        .await;
}
