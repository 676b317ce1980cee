//! `GET /api/hello` behind `tower_governor` (in-process GCRA keyed on the peer IP), with a
//! quota large enough that nothing is refused during a load run. `RATELIMIT_HEADERS=on` adds
//! its `x-ratelimit-limit` / `x-ratelimit-remaining` headers (`use_headers`; default: none).

use std::sync::Arc;

use axum::{Router, routing::get};
use redtower_baselines::{Error, headers_setting, hello, port, serve};
use tower_governor::{GovernorLayer, governor::GovernorConfigBuilder};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let port = port()?;
    let mut builder = GovernorConfigBuilder::default();
    builder.per_nanosecond(1).burst_size(1_000_000_000);
    let hello = Router::new().route("/api/hello", get(hello));
    let app = if headers_setting()? == Some(true) {
        let config = builder
            .use_headers()
            .finish()
            .ok_or("invalid governor quota")?;
        hello.layer(GovernorLayer::new(Arc::new(config)))
    } else {
        let config = builder.finish().ok_or("invalid governor quota")?;
        hello.layer(GovernorLayer::new(Arc::new(config)))
    };
    serve(app, port).await
}
