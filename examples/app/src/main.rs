//! Run with: `cargo run -p redtower-example` (see the crate docs for the environment).

use redtower_example::{Config, app, backend, shutdown_signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let config = Config::from_env()?;
    let backend = backend(&config)?;
    let listener = tokio::net::TcpListener::bind(&config.bind).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(backend))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}
