//! `GET /api/hello` behind redtower's `RateLimitLayer` on a `MemoryStore` (one GCRA policy
//! keyed on the peer IP, default `RateLimit-Policy` / `RateLimit` headers), in the same minimal
//! app as `governor`: the two binaries differ only in the limiter layer. `RATELIMIT_HEADERS=off`
//! turns the headers off, `on` (or `default`) keeps the draft fields.

use axum::{Router, routing::get};
use redtower_baselines::{Error, headers_setting, hello, port, serve};
use redtower_ratelimit::{Headers, MemoryStore, PeerIp, Quota, RateLimitLayer, nonzero};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let port = port()?;
    // Like `governor`'s (one per nanosecond, a burst of 10^9), so large that nothing is refused
    // during a load run.
    let quota = Quota::per_second(nonzero!(4_000_000_000));
    let headers = Headers {
        draft: headers_setting()? != Some(false),
        legacy: false,
    };
    let limit = RateLimitLayer::new(MemoryStore::new(), quota)
        .key(PeerIp)
        .headers(headers)
        .build()?;
    let app = Router::new().route("/api/hello", get(hello)).layer(limit);
    serve(app, port).await
}
