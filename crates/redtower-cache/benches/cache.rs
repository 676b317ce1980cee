//! Response cache benchmarks: a cached route (hit) against the same handler without the layer,
//! measured in the same run. Each iteration sends a batch of concurrent requests, so the
//! numbers are throughput. Redis comes from `REDIS_URL` or a `redis-server` started here.
//!
//! Run with: `cargo bench -p redtower-cache --bench cache`
#![allow(missing_docs)]

use std::{hint::black_box, time::Duration};

use axum::{Router, body::Body, http::Request, routing::get};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use redtower_cache::{Cache, MemoryStore, RedisStore, ResponseCacheLayer, envelope::Entry};
use redtower_client::{Redis, RedisConfig};
use tower::ServiceExt;

const BATCH: usize = 32;

fn json_1kb() -> String {
    let items: Vec<String> = (0..24)
        .map(|i| format!("{{\"id\":{i:03},\"name\":\"product {i:03}\",\"price\":12.5}}"))
        .collect();
    let mut s = format!("[{}]", items.join(","));
    while s.len() < 1024 {
        s.push(' ');
    }
    s
}

fn router(layer: Option<ResponseCacheLayer>, delay: Duration) -> Router {
    let body = json_1kb();
    let handler = get(move || {
        let body = body.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            ([(http::header::CONTENT_TYPE, "application/json")], body)
        }
    });
    let handler = match layer {
        Some(layer) => handler.layer(layer),
        None => handler,
    };
    Router::new().route("/products/featured", handler)
}

async fn batch(app: &Router) {
    let requests = (0..BATCH).map(|_| {
        let app = app.clone();
        async move {
            let req = Request::get("/products/featured")
                .body(Body::empty())
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            black_box(resp.into_body().collect().await.unwrap().to_bytes());
        }
    });
    futures::future::join_all(requests).await;
}

fn redis_url(rt: &tokio::runtime::Runtime) -> (Option<redtower_testkit::RedisServer>, String) {
    let _guard = rt.enter();
    match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = redtower_testkit::RedisServer::start();
            let url = server.url();
            (Some(server), url)
        }
    }
}

fn layer(cache: Cache) -> ResponseCacheLayer {
    ResponseCacheLayer::new(cache, Duration::from_secs(300))
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_server, url) = redis_url(&rt);
    let redis = rt.block_on(async {
        let redis = Redis::new(
            RedisConfig::from_url(&url)
                .unwrap()
                .key_prefix(format!("bench-{:x}", rand::random::<u32>())),
        )
        .unwrap();
        redis.wait_ready(Duration::from_secs(10)).await.unwrap();
        redis
    });
    let redis_cache = || Cache::new(RedisStore::new(redis.clone()));
    let l1_cache = || {
        Cache::builder(RedisStore::new(redis.clone()))
            .l1(1000, Duration::from_secs(1))
            .build()
    };

    let mut g = c.benchmark_group("trivial_handler_1kb");
    g.throughput(Throughput::Elements(BATCH as u64));
    let routes = [
        ("uncached", router(None, Duration::ZERO)),
        ("hit_l1", router(Some(layer(l1_cache())), Duration::ZERO)),
        (
            "hit_redis",
            router(Some(layer(redis_cache())), Duration::ZERO),
        ),
        (
            "hit_memory",
            router(Some(layer(Cache::new(MemoryStore::new()))), Duration::ZERO),
        ),
    ];
    for (name, app) in &routes {
        rt.block_on(batch(app));
        g.bench_with_input(BenchmarkId::new("get", name), app, |b, app| {
            b.to_async(&rt).iter(|| batch(app));
        });
    }
    g.finish();

    let mut g = c.benchmark_group("handler_50ms_1kb");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    let slow = Duration::from_millis(50);
    let routes = [
        ("uncached", router(None, slow)),
        ("hit_redis", router(Some(layer(redis_cache())), slow)),
    ];
    for (name, app) in &routes {
        rt.block_on(batch(app));
        g.bench_with_input(BenchmarkId::new("get", name), app, |b, app| {
            b.to_async(&rt).iter(|| batch(app));
        });
    }
    g.finish();

    let mut g = c.benchmark_group("envelope");
    let entry = Entry {
        flags: 0,
        status: StatusCode::OK,
        stored_at: 1,
        fresh_until: 2,
        stale_until: 3,
        error_until: 4,
        key_digest: [0; 32],
        tags: Vec::new(),
        headers: {
            let mut h = HeaderMap::new();
            h.insert("content-type", "application/json".parse().unwrap());
            h
        },
        body: Bytes::from(vec![b'x'; 128 * 1024]),
    };
    let bytes = entry.encode().unwrap();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("decode_128k", |b| {
        b.iter(|| Entry::decode(black_box(&bytes)).unwrap())
    });
    g.bench_function("encode_128k", |b| {
        b.iter(|| black_box(&entry).encode().unwrap())
    });
    g.finish();
}

criterion_group! {
    name = cache;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(cache);
