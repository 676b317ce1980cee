//! Run with: `cargo run -p redtower-example` (see `examples/app/README.md` for the environment).

use std::net::SocketAddr;

use redtower_example::{Config, Services, app, metrics_router, shutdown_signal, telemetry};

/// jemalloc instead of the system allocator. The request paths allocate many small, short-lived
/// buffers across tasks (Redis frames, keys, replies); under load glibc's malloc spent about a
/// sixth of the CPU time of a cache hit read from Redis in its free lists and consolidation,
/// and jemalloc's per-thread caches serve the same at a fraction of that.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs; and OTLP trace export only when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = telemetry::init()?;
    let config = Config::from_env()?;
    let services = Services::new(config.clone())?;
    // Accept traffic once Redis answers (or REDIS_CONNECT_WAIT has passed), so the first
    // requests are decided by Redis, not by the failure policies.
    services.wait_for_redis().await;
    let worker = config.worker.then(|| services.start_worker());
    let router = app(&services)?;

    if let (Some(addr), Some(metrics)) = (config.metrics_addr, metrics_router(&services)) {
        // The admin address: `GET /metrics` without a token, stopped with the process.
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, metrics).await {
                tracing::warn!(%error, "the metrics listener stopped");
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(&config.bind).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let stop = services.shutdown_token();
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        stop.cancel(); // ends open SSE streams, so the server can stop
    })
    .await?;
    if let Some(worker) = worker {
        // Unfinished jobs go back to the queue at once for another instance.
        let report = worker.shutdown().await?;
        tracing::info!(?report, "worker stopped");
    }
    telemetry.shutdown().await;
    Ok(())
}
