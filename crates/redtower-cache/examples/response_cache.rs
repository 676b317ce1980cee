//! Cache one route's responses: `GET /report` takes a second to compute; the cache keeps its
//! answer 60 s (then serves it stale for 30 s more while one background call refreshes it).
//! Responses carry `X-Cache: MISS|HIT|STALE` and `Age`.
//!
//! Run with `cargo run -p redtower-cache --example response_cache` (in process), or with
//! `REDIS_URL=redis://127.0.0.1:6379` to share the cache between instances; then
//! `curl -si localhost:3000/report` twice. `ADDR` sets the listen address (default
//! `127.0.0.1:3000`).

use std::{sync::Arc, time::Duration};

use axum::{Router, routing::get};
use redtower_cache::{Cache, CacheStore, MemoryStore, RedisStore, ResponseCacheLayer};
use redtower_client::{Redis, RedisConfig};

/// The slow handler the cache protects.
async fn report() -> String {
    tokio::time::sleep(Duration::from_secs(1)).await;
    format!("report computed at {:?}\n", std::time::SystemTime::now())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Redis when `REDIS_URL` is set, in process otherwise: the same code either way.
    let store: Arc<dyn CacheStore> = match std::env::var("REDIS_URL") {
        Ok(_) => Arc::new(RedisStore::new(Redis::new(RedisConfig::from_env()?)?)),
        Err(_) => Arc::new(MemoryStore::new()),
    };
    let cache = Cache::new(store);
    let layer = ResponseCacheLayer::new(cache, Duration::from_secs(60))
        .stale_while_revalidate(Duration::from_secs(30))
        .route_name("/report"); // the route's label in metrics
    let app = Router::new()
        .route("/report", get(report).layer(layer))
        .route("/", get(|| async { "try GET /report\n" }));

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
