//! The apps both benchmarks measure: an authenticated route (`GET /read`) that reads the
//! session and returns the user id, plus `POST /login` to get a cookie.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use axum::{Router, routing::get};
use redtower_client::{Redis, RedisConfig};
use redtower_session::{
    AuthSession, MemoryStore, RedisStore, SessionBackend, SessionMeta, bind_user,
    tower_sessions::{Session, cookie::Key},
};

/// The variants, in report order; the first is the baseline.
pub const VARIANTS: [&str; 4] = [
    "no_session_layer",
    "redtower_memory",
    "redtower_redis",
    "tower_sessions_redis_store",
];

async fn redtower_login(session: Session) {
    bind_user(&session, "alice", SessionMeta::new())
        .await
        .expect("login");
}

async fn redtower_read(auth: AuthSession) -> String {
    auth.user
}

/// `SessionLayer` (signed cookie) over `store`.
pub fn redtower_app<S: SessionBackend + Clone>(store: S) -> Router {
    Router::new()
        .route("/login", axum::routing::post(redtower_login))
        .route("/read", get(redtower_read))
        .layer(redtower_session::SessionLayer::new(store, Key::generate()).secure(false))
}

/// The same handler without a session layer.
pub fn baseline_app() -> Router {
    Router::new().route("/read", get(|| async { String::from("alice") }))
}

/// tower-sessions 0.14 + tower-sessions-redis-store 0.16: with `always_save` and an
/// inactivity expiry it loads (`GET`) and saves (`SET XX`) the record on every request.
pub fn ts_app(client: fred::clients::Client) -> Router {
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

/// A connected `Redis` handle on `url` with key prefix `bench`.
pub async fn redis(url: &str) -> Redis {
    let redis =
        Redis::new(RedisConfig::from_url(url).expect("url").key_prefix("bench")).expect("redis");
    redis
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("ready");
    redis
}

/// Every variant's app, in [`VARIANTS`] order, on the Redis at `url`.
pub async fn apps(url: &str) -> Vec<(&'static str, Router)> {
    let redis = redis(url).await;
    let store = RedisStore::new(redis.clone(), [7u8; 32])
        .unwrap()
        .idle_timeout(Duration::from_secs(1800));
    let fred_client = redis.dedicated().expect("client");
    fred::interfaces::ClientLike::wait_for_connect(&fred_client)
        .await
        .expect("connect");
    vec![
        (VARIANTS[0], baseline_app()),
        (VARIANTS[1], redtower_app(MemoryStore::new())),
        (VARIANTS[2], redtower_app(store)),
        (VARIANTS[3], ts_app(fred_client)),
    ]
}

/// The `name=value` part of a `Set-Cookie` header.
pub fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().to_owned()
}
