//! `Accept-Encoding` buckets with a compression layer inside the cache: every client gets a
//! coding it accepts, and a client that sends no `Accept-Encoding` never gets a compressed
//! body. On the memory backend and on Redis.

use std::time::Duration;

use axum::{
    Router,
    body::Body,
    http::{Request, header},
    routing::get,
};
use http_body_util::BodyExt;
use redtower_cache::{Cache, MemoryStore, RedisStore, ResponseCacheLayer};
use redtower_client::{Redis, RedisConfig};
use redtower_testkit::unique_prefix;
use tower::ServiceExt;
use tower_http::compression::CompressionLayer;

fn text() -> String {
    "featured products, ".repeat(200)
}

fn app(cache: Cache) -> Router {
    Router::new().route(
        "/r",
        get(|| async { ([(header::CONTENT_TYPE, "text/plain")], text()) })
            .layer::<_, std::convert::Infallible>(CompressionLayer::new())
            .layer(ResponseCacheLayer::new(cache, Duration::from_secs(60))),
    )
}

async fn send(app: &Router, accept: Option<&str>) -> (Option<String>, Vec<u8>) {
    let mut req = Request::get("/r");
    if let Some(a) = accept {
        req = req.header(header::ACCEPT_ENCODING, a);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let coding = resp
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (coding, body)
}

/// Whether `coding` is one that `accept` allows (the test's own reading of RFC 9110 12.5.3,
/// for the values used here).
fn allowed(accept: &str, coding: &str) -> bool {
    let mut star = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap().trim().to_ascii_lowercase();
        let q0 = parts.any(|p| p.trim() == "q=0");
        if name == "*" {
            star = Some(!q0);
        } else if name == coding {
            return !q0;
        }
    }
    star.unwrap_or(false)
}

async fn no_client_gets_a_coding_it_did_not_ask_for(cache: Cache, backend: &str) {
    let app = app(cache);
    let attacks = [
        "deflate",
        "compress",
        "*",
        "gzip",
        "gzip;q=0, deflate",
        "deflate;q=0, gzip",
        "identity;q=0, *",
        "br",
        "zstd, deflate",
    ];
    for round in 0..3 {
        for accept in attacks {
            let (coding, _) = send(&app, Some(accept)).await;
            if let Some(coding) = coding {
                assert!(
                    allowed(accept, &coding),
                    "{backend} round {round}: {coding} sent for Accept-Encoding: {accept}"
                );
            }
            let (coding, body) = send(&app, None).await;
            assert_eq!(
                coding, None,
                "{backend} round {round}: no Accept-Encoding after {accept:?}"
            );
            assert_eq!(body, text().as_bytes(), "{backend}: the plain body");
            let (coding, body) = send(&app, Some("deflate;q=0, gzip;q=0")).await;
            assert_eq!(coding, None, "{backend}: q=0 is honoured");
            assert_eq!(body, text().as_bytes());
        }
    }
    // Entries were stored and are served: a deflate client hits its own bucket.
    let (first, _) = send(&app, Some("deflate")).await;
    assert_eq!(first.as_deref(), Some("deflate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_variants_on_memory() {
    no_client_gets_a_coding_it_did_not_ask_for(Cache::new(MemoryStore::new()), "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_variants_on_redis() {
    let config = RedisConfig::from_url(&redtower_testkit::shared_url())
        .unwrap()
        .key_prefix(unique_prefix("encoding"));
    let redis = Redis::new(config).unwrap();
    redis.wait_ready(Duration::from_secs(20)).await.unwrap();
    let cache = Cache::new(RedisStore::new(redis).timeout(Duration::from_secs(10)));
    no_client_gets_a_coding_it_did_not_ask_for(cache, "redis").await;
}
