//! `GET /api/hello` behind the blog post's limiter, ported literally: `INCR` and `EXPIRE` of
//! `rate_limit:<ip>` in one pipeline on every request, allowed while the count is at most
//! `LIMIT` (default 4,000,000,000, so that nothing is refused during a load run).

use std::net::SocketAddr;

use axum::{
    Router,
    extract::{ConnectInfo, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use redtower_baselines::{Error, hello, port, redis, serve};
use redtower_client::{Redis, fred::interfaces::KeysInterface};

#[derive(Clone)]
struct Limiter {
    redis: Redis,
    limit: i64,
    window_secs: i64,
}

async fn rate_limit(State(limiter): State<Limiter>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string());
    let key = format!("rate_limit:{ip}");
    let pipeline = limiter.redis.client().pipeline();
    let _: Result<(), _> = pipeline.incr::<(), _>(&key).await;
    let _: Result<(), _> = pipeline
        .expire::<(), _>(&key, limiter.window_secs, None)
        .await;
    match pipeline.all::<(i64, i64)>().await {
        Ok((count, _)) if count > limiter.limit => (
            StatusCode::TOO_MANY_REQUESTS,
            [("x-ratelimit-remaining", "0")],
            "rate limit exceeded",
        )
            .into_response(),
        // Like the original, a Redis error lets the request through.
        _ => next.run(req).await,
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let port = port()?;
    let limit = std::env::var("LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000_000_000);
    let limiter = Limiter {
        redis: redis().await?,
        limit,
        window_secs: 3600,
    };
    let app = Router::new()
        .route("/api/hello", get(hello))
        .layer(middleware::from_fn_with_state(limiter, rate_limit));
    serve(app, port).await
}
