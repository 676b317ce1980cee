//! Session benchmarks (see BENCHMARKS.md): an authenticated route that reads the session,
//! through `SessionLayer` + `RedisStore`, through tower-sessions 0.14 +
//! `tower-sessions-redis-store` (which loads and saves on every request to slide the expiry),
//! and with no session layer, all against one local `redis-server` started by the bench.

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::time::Duration;

use axum::{Router, body::Body, http::Request, routing::get};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use redtower_client::{Redis, RedisConfig};
use redtower_session::{
    AuthSession, MemoryStore, RedisStore, SessionMeta, bind_user,
    tower_sessions::{Session, cookie::Key},
};
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
    res.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("cookie")
        .to_owned()
}

async fn redtower_login(session: Session) {
    bind_user(&session, "alice", SessionMeta::new())
        .await
        .expect("login");
}

async fn redtower_read(auth: AuthSession) -> String {
    auth.user
}

fn redtower_app<S>(store: S) -> Router
where
    S: redtower_session::UserSessions + Clone,
{
    Router::new()
        .route("/login", axum::routing::post(redtower_login))
        .route("/read", get(redtower_read))
        .layer(redtower_session::SessionLayer::new(store, Key::generate()).with_secure(false))
}

fn baseline_app() -> Router {
    Router::new().route("/read", get(|| async { String::from("alice") }))
}

fn ts_app(client: fred::clients::Client) -> Router {
    use tower_sessions_014::{Expiry, Session, SessionManagerLayer};
    let store = tower_sessions_redis_store::RedisStore::new(client);
    Router::new()
        .route(
            "/login",
            axum::routing::post(|s: Session| async move {
                s.insert("user", "alice").await.expect("insert");
            }),
        )
        .route(
            "/read",
            get(|s: Session| async move {
                s.get::<String>("user")
                    .await
                    .expect("get")
                    .unwrap_or_default()
            }),
        )
        .layer(
            SessionManagerLayer::new(store)
                .with_secure(false)
                .with_always_save(true)
                .with_expiry(Expiry::OnInactivity(time::Duration::minutes(30))),
        )
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
        let redis = Redis::new(
            RedisConfig::from_url(&server.url())
                .expect("url")
                .key_prefix("bench"),
        )
        .expect("redis");
        redis
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("ready");
        let store =
            RedisStore::new(redis.clone(), [7u8; 32]).idle_timeout(Duration::from_secs(1800));
        let fred_client = redis.dedicated().expect("client");
        fred::interfaces::ClientLike::wait_for_connect(&fred_client)
            .await
            .expect("connect");
        let apps = vec![
            ("no_session_layer", baseline_app()),
            ("redtower_memory", redtower_app(MemoryStore::new())),
            ("redtower_redis", redtower_app(store)),
            ("tower_sessions_redis_store", ts_app(fred_client)),
        ];
        let mut cookies = Vec::new();
        for (name, app) in &apps {
            cookies.push(if *name == "no_session_layer" {
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
