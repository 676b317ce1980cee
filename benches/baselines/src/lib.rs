//! Shared start-up code of the baseline apps that `cargo xtask bench` measures redtower
//! against. Each binary serves one small axum app on `127.0.0.1:<port>`, the port taken from
//! the first argument or `PORT`, Redis from `REDIS_URL`:
//!
//! * `naive-limiter`: `GET /api/hello` behind the blog post's limiter ported to Rust as
//!   literally as possible: a fred pipeline of `INCR` + `EXPIRE` on every request;
//! * `governor`: `GET /api/hello` behind `tower_governor` (in-process GCRA, peer-IP key);
//! * `memory-limiter`: the same minimal app as `governor`, behind redtower's `RateLimitLayer`
//!   on a `MemoryStore` instead (the like-for-like comparison with `tower_governor`);
//! * `tower-sessions-redis`: `POST /login` and `GET /whoami` through `tower-sessions` +
//!   `tower-sessions-redis-store`.

use std::{net::SocketAddr, time::Duration};

use axum::{Json, Router};
use redtower_client::{Redis, RedisConfig};
use serde_json::{Value, json};

/// The example app's allocator (jemalloc), for every baseline binary: a run compares the
/// servers' code, not their allocators.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An error while starting a baseline.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The port: the first argument, else `PORT`.
///
/// # Errors
///
/// When neither is a port number.
pub fn port() -> Result<u16, Error> {
    let raw = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORT").ok())
        .ok_or("usage: <binary> <port> (or PORT=...)")?;
    Ok(raw.trim().parse()?)
}

/// A connected [`Redis`] handle for `REDIS_URL` (waits up to 10 s for the server).
///
/// # Errors
///
/// When `REDIS_URL` is missing or invalid, or the server does not answer.
pub async fn redis() -> Result<Redis, Error> {
    let url = std::env::var("REDIS_URL").map_err(|_| "REDIS_URL is not set")?;
    let redis = Redis::new(RedisConfig::from_url(&url)?.key_prefix("baseline"))?;
    redis.wait_ready(Duration::from_secs(10)).await?;
    Ok(redis)
}

/// Whether the limiter writes rate limit headers: `RATELIMIT_HEADERS=on` or `off`, else
/// `default` (each limiter's own default: `tower_governor` none, redtower the draft fields).
pub fn headers_setting() -> Result<Option<bool>, Error> {
    match std::env::var("RATELIMIT_HEADERS").as_deref() {
        Err(_) | Ok("default") => Ok(None),
        Ok("on") => Ok(Some(true)),
        Ok("off") => Ok(Some(false)),
        Ok(other) => {
            Err(format!("RATELIMIT_HEADERS={other:?}: expected on, off or default").into())
        }
    }
}

/// `{"hello":"world"}`, the body of every `/api/hello`.
pub async fn hello() -> Json<Value> {
    Json(json!({"hello": "world"}))
}

/// Serves `router` on `127.0.0.1:port` with peer addresses available, until the process is
/// killed.
///
/// # Errors
///
/// When the port cannot be bound.
pub async fn serve(router: Router, port: u16) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
