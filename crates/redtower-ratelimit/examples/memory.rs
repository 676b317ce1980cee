//! Rate limit one route with the in-process store: `GET /api` allows 5 requests a minute per
//! client IP, then answers 429 with `Retry-After`; `GET /` is not limited.
//!
//! Run with `cargo run -p redtower-ratelimit --example memory`, then
//! `for i in $(seq 7); do curl -si localhost:3000/api | head -1; done`.
//! `ADDR` sets the listen address (default `127.0.0.1:3000`).

use std::net::SocketAddr;

use axum::{Router, routing::get};
use redtower_ratelimit::{MemoryStore, Quota, RateLimitLayer, nonzero};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One store per process; every layer built on it counts in it.
    let limit = RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(nonzero!(5)));
    let app = Router::new()
        .route(
            "/api",
            get(|| async { "hello from a limited route\n" }).layer(limit),
        )
        .route("/", get(|| async { "not limited\n" }));

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // The default key is the peer address, which axum provides through `ConnectInfo`.
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
