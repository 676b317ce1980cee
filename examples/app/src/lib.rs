//! The redtower example app: one axum service that wires in the redtower layers.
//!
//! Run with: `cargo run -p redtower-example` (no Redis needed: every feature then runs on its
//! in-process backend), or `REDIS_URL=redis://127.0.0.1:6379 cargo run -p redtower-example`.
//!
//! Routes so far: `GET /health`. The feature routes arrive with their layers.

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use redtower_client::{Redis, RedisConfig};
use serde_json::json;

/// Where the app keeps its state: Redis, or in-process backends.
#[derive(Debug, Clone)]
pub enum Backend {
    /// In-process backends; nothing is shared between instances.
    Memory,
    /// Redis, shared by every instance.
    Redis(Redis),
}

/// The app's configuration, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `BIND`, default `127.0.0.1:3000`.
    pub bind: String,
    /// `REDIS_URL` (with `REDIS_KEY_PREFIX`, default `redtower-example`), or `None` for memory.
    pub redis: Option<RedisConfig>,
}

impl Config {
    /// Reads `BIND`, `REDIS_URL` and `REDIS_KEY_PREFIX`.
    ///
    /// # Errors
    ///
    /// A message naming the invalid variable.
    pub fn from_env() -> Result<Self, String> {
        let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
        let redis = match std::env::var("REDIS_URL") {
            Ok(url) if !url.trim().is_empty() => {
                let prefix = std::env::var("REDIS_KEY_PREFIX")
                    .unwrap_or_else(|_| "redtower-example".to_owned());
                Some(
                    RedisConfig::from_env()
                        .map_err(|e| e.to_string())?
                        .key_prefix(prefix),
                )
            }
            _ => None,
        };
        Ok(Self { bind, redis })
    }
}

/// Connects to the configured backend (lazily: the app starts while Redis is down).
///
/// # Errors
///
/// When the Redis configuration is invalid.
pub fn backend(config: &Config) -> Result<Backend, redtower_client::Error> {
    match &config.redis {
        None => {
            tracing::info!("REDIS_URL is not set: every feature runs on its in-process backend");
            Ok(Backend::Memory)
        }
        Some(redis) => {
            tracing::info!(url = %redis.redacted_url(), "using Redis");
            Ok(Backend::Redis(Redis::new(redis.clone())?))
        }
    }
}

/// The app's router.
pub fn app(backend: Backend) -> Router {
    Router::new()
        .route("/health", get(health))
        .with_state(backend)
}

async fn health(State(backend): State<Backend>) -> impl IntoResponse {
    match backend {
        Backend::Memory => (
            StatusCode::OK,
            Json(json!({"status": "ok", "backend": "memory"})),
        ),
        Backend::Redis(redis) => {
            let health = redis.health().await;
            if health.is_up() {
                (
                    StatusCode::OK,
                    Json(json!({"status": "ok", "backend": "redis"})),
                )
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"status": "degraded", "backend": "redis"})),
                )
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
    // Leave in-flight requests a moment; the server stops accepting at once.
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn health_on_memory() {
        let res = app(Backend::Memory)
            .oneshot(Request::get("/health").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, json!({"status": "ok", "backend": "memory"}));
    }
}
