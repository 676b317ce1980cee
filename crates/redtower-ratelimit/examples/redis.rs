//! Rate limit one route with Redis: every instance of the app shares the counters. `GET /api`
//! allows 5 requests a minute per client IP, then answers 429 with
//! `Retry-After`; if Redis is down, the layer fails open (the default failure policy).
//!
//! Run with `REDIS_URL=redis://127.0.0.1:6379 cargo run -p redtower-ratelimit --example redis`
//! (start two on different `ADDR`s: they share the limit).
//! `ADDR` sets the listen address (default `127.0.0.1:3000`).

use std::net::SocketAddr;

use axum::{Router, routing::get};
use redtower_client::{Redis, RedisConfig};
use redtower_ratelimit::{Policy, Quota, RateLimitLayer, RedisStore, nonzero};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `REDIS_URL` plus the other `REDIS_*` settings; connects in the background.
    let redis = Redis::new(RedisConfig::from_env()?)?;
    let policy = Policy::new("api", Quota::per_minute(nonzero!(5)));
    let limit = RateLimitLayer::new(RedisStore::new(redis), policy)
        .legacy_headers(true) // also `X-RateLimit-*`
        .build()?;
    let app = Router::new()
        .route(
            "/api",
            get(|| async { "hello from a limited route\n" }).layer(limit),
        )
        .route("/", get(|| async { "not limited\n" }));

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
