//! `GET /api/hello` behind `tower_governor` (in-process GCRA keyed on the peer IP), with a
//! quota large enough that nothing is refused during a load run.

use std::sync::Arc;

use axum::{Router, routing::get};
use redtower_baselines::{Error, hello, port, serve};
use tower_governor::{GovernorLayer, governor::GovernorConfigBuilder};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let port = port()?;
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000_000)
        .finish()
        .ok_or("invalid governor quota")?;
    let app = Router::new()
        .route("/api/hello", get(hello))
        .layer(GovernorLayer::new(Arc::new(config)));
    serve(app, port).await
}
