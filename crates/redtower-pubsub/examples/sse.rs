//! Publish/subscribe over server-sent events: `POST /events/{channel}` publishes its JSON body
//! (202 `{"id": ...}`), `GET /events/{channel}` streams the channel, resuming from
//! `Last-Event-ID` after a reconnect.
//!
//! Run with `cargo run -p redtower-pubsub --example sse` (in process), or with
//! `REDIS_URL=redis://127.0.0.1:6379` to fan events out to every instance. Then
//! `curl -N localhost:3000/events/news` in one terminal and
//! `curl -d '{"title":"hello"}' -H content-type:application/json localhost:3000/events/news`
//! in another. `ADDR` sets the listen address (default `127.0.0.1:3000`).

use axum::Router;
use redtower_client::{Redis, RedisConfig};
use redtower_pubsub::{CancellationToken, PubSub, RedisStore, SseEndpoint};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One `PubSub` per process: Redis when `REDIS_URL` is set, in process otherwise.
    let pubsub = match std::env::var("REDIS_URL") {
        Ok(_) => PubSub::new(RedisStore::new(Redis::new(RedisConfig::from_env()?)?)),
        Err(_) => PubSub::memory(),
    };
    // Cancelled on shutdown: ends every open stream, so the server can stop.
    let shutdown = CancellationToken::new();
    let sse = SseEndpoint::new(pubsub).shutdown(shutdown.clone());
    // Anyone may read and publish here: see `SseEndpoint::authorizer` to restrict it.
    let app = Router::new().route(
        "/events/{channel}",
        sse.method_router().merge(sse.publish_method_router()),
    );

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        })
        .await?;
    Ok(())
}
