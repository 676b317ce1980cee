//! Session benchmarks (see BENCHMARKS.md): an authenticated route that reads the session,
//! through `SessionLayer` + `RedisStore`, through tower-sessions 0.14 +
//! `tower-sessions-redis-store` (which loads and saves on every request to slide the expiry),
//! and with no session layer, all against one local `redis-server` started by the bench. The
//! requests go to the router in process (no sockets); `http_load` measures over HTTP.

#![allow(missing_docs)] // criterion_group! generates an undocumented function

mod common;

use std::time::Duration;

use axum::{Router, body::Body, http::Request};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tower::ServiceExt as _;

const CONCURRENCY: usize = 64;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn login_cookie(app: &Router) -> String {
    let res = app
        .clone()
        .oneshot(
            Request::post("/login")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("login");
    common::cookie_pair(res.headers()["set-cookie"].to_str().expect("ascii"))
}

async fn burst(app: &Router, cookie: &str, n: usize) {
    let reqs = (0..n).map(|_| {
        let req = Request::get("/read")
            .header("cookie", cookie)
            .body(Body::empty())
            .expect("request");
        app.clone().oneshot(req)
    });
    for res in futures::future::join_all(reqs).await {
        assert!(res.expect("response").status().is_success());
    }
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let server = redtower_testkit::RedisServer::start();
    let (apps, cookies) = rt.block_on(async {
        let apps = common::apps(&server.url()).await;
        let mut cookies = Vec::new();
        for (name, app) in &apps {
            cookies.push(if *name == common::VARIANTS[0] {
                String::new()
            } else {
                login_cookie(app).await
            });
        }
        (apps, cookies)
    });

    let mut group = c.benchmark_group("read_route");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    for ((name, app), cookie) in apps.iter().zip(&cookies) {
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("sequential", name), cookie, |b, cookie| {
            b.to_async(&rt).iter(|| burst(app, cookie, 1));
        });
        group.throughput(Throughput::Elements(CONCURRENCY as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("concurrent_{CONCURRENCY}"), name),
            cookie,
            |b, cookie| {
                b.to_async(&rt).iter(|| burst(app, cookie, CONCURRENCY));
            },
        );
    }
    group.finish();
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
