//! The redtower example app: one axum service wiring in every redtower layer.
//!
//! Run with: `cargo run -p redtower-example` (no Redis needed: every feature then runs on its
//! in-process backend), or `REDIS_URL=redis://127.0.0.1:6379 cargo run -p redtower-example` to
//! share everything between instances. The routes and environment variables are listed in
//! `examples/app/README.md`.
//!
//! Each feature is one module with its backend, its layers and its routes, written the way an
//! application should write it (copy the one you need):
//!
//! * [`cache`]: `GET /products/featured`, a slow "database" call behind
//!   [`ResponseCacheLayer`](redtower_cache::ResponseCacheLayer);
//! * [`ratelimit`]: `GET /api/hello` behind [`RateLimitLayer`](redtower_ratelimit::RateLimitLayer)
//!   per client IP, and the limits handlers check themselves;
//! * [`sessions`]: `/login`, `/me`, `/me/sessions`, `/logout-others`, `/logout-everywhere`:
//!   sessions with revocation;
//! * [`events`]: `GET|POST /events/{channel}`: pub/sub to the browser over SSE;
//! * [`orders`]: `POST /orders`, a flow of jobs: `ship-order` (attempts, backoff, a group
//!   per customer) after its children `reserve-stock` and `charge-payment` (delayed), run by
//!   workers; `GET /orders/{id}`; `GET /orders/{id}/events`, the shipping job's progress steps
//!   and result over SSE for the session that placed the order;
//! * [`prometheus`]: `GET /metrics`, every crate's metrics for Prometheus, behind a bearer
//!   token (`METRICS_TOKEN`) or on a separate admin address (`METRICS_ADDR`); off by default;
//! * [`probes`] (benchmark probes, for the load harness): `GET /plain`, `GET /whoami`,
//!   `GET /api/stacked` (no layer, a session read alone, and the rate limit + session + cache
//!   stacked) and `GET /stats`.
//!
//! This file only wires them: [`Services`] builds every backend once, [`app`] assembles the
//! router (each layer where it is used: routes that read no session stay outside the session
//! layer).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::{Html, IntoResponse, Response},
    routing::get,
};
use redtower_client::Redis;
use redtower_pubsub::CancellationToken;
use serde_json::json;

pub mod cache;
pub mod config;
pub mod error;
pub mod events;
pub mod orders;
pub mod probes;
pub mod prometheus;
pub mod ratelimit;
pub mod sessions;
pub mod telemetry;

pub use config::{Config, Rate};
pub use orders::Workers;

/// The largest body `POST /events/{channel}` and the JSON routes accept.
pub const MAX_BODY: usize = 64 * 1024;

/// Everything the routes share: one of each backend, built once in `main`.
///
/// Cloning is one reference-count bump: axum clones the router's state for every request,
/// so the state is one `Arc` rather than a struct of configuration and handles.
#[derive(Clone)]
pub struct Services(Arc<ServicesInner>);

/// The fields of [`Services`], reached through `Deref`.
#[doc(hidden)]
pub struct ServicesInner {
    config: Config,
    redis: Option<Redis>,
    limits: ratelimit::RateLimits,
    cache: cache::ResponseCache,
    sessions: sessions::Sessions,
    events: events::Events,
    shipping: orders::Shipping,
    /// The Prometheus handle, when `/metrics` is served somewhere.
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl std::fmt::Debug for ServicesInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServicesInner").finish_non_exhaustive()
    }
}

impl std::ops::Deref for Services {
    type Target = ServicesInner;

    fn deref(&self) -> &ServicesInner {
        &self.0
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

/// An error while building the services.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Redis configuration.
    #[error(transparent)]
    Redis(#[from] redtower_client::Error),
    /// Pub/sub store.
    #[error(transparent)]
    PubSub(#[from] redtower_pubsub::Error),
    /// A rate limit.
    #[error("rate limit: {0}")]
    RateLimit(#[from] redtower_ratelimit::ConfigError),
    /// The session store (a secret too short).
    #[error("sessions: {0}")]
    Session(#[from] redtower_session::Error),
}

impl Services {
    /// Builds every backend: in-process when `config.redis` is `None`, else over Redis
    /// (connected lazily, so the app starts while Redis is down).
    ///
    /// # Errors
    ///
    /// When a configuration value cannot be used.
    pub fn new(config: Config) -> Result<Self, BuildError> {
        let redis = match &config.redis {
            None => {
                tracing::info!(
                    "REDIS_URL is not set: every feature runs on its in-process backend"
                );
                None
            }
            Some(redis_config) => {
                let redis = Redis::new(redis_config.clone())?;
                tracing::info!(url = %redis_config.redacted_url(), "using Redis");
                Some(redis)
            }
        };
        let redis_ref = redis.as_ref();
        let limits = ratelimit::RateLimits::new(&config, redis_ref);
        let sessions = sessions::Sessions::new(&config, redis_ref, &limits)?;
        let events = events::Events::new(&config, redis_ref, &limits)?;
        let shipping = orders::Shipping::new(
            &config,
            redis_ref,
            events.pubsub().clone(),
            &limits,
            events.shutdown_token(),
        )?;
        // Installed before any request, so every metric from the first one on is recorded.
        let metrics = config.metrics_enabled().then(prometheus::handle);
        Ok(Self(Arc::new(ServicesInner {
            metrics,
            cache: cache::ResponseCache::new(&config, redis_ref),
            limits,
            sessions,
            events,
            shipping,
            redis,
            config,
        })))
    }

    /// With Redis, waits for the first connection up to
    /// [`redis_connect_wait`](Config::redis_connect_wait) (`REDIS_CONNECT_WAIT`), so that the
    /// first requests are served by Redis rather than by the failure policies. Returns whether
    /// Redis is up; when it is not, logs one warning and the app runs degraded (each layer
    /// follows its failure policy, `/health` answers 503) until Redis is reached. Returns
    /// `true` at once without Redis.
    pub async fn wait_for_redis(&self) -> bool {
        let Some(redis) = &self.redis else {
            return true;
        };
        let wait = self.config.redis_connect_wait;
        match redis.wait_ready(wait).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(
                    url = %redis.config().redacted_url(),
                    waited = ?wait,
                    %error,
                    "Redis is not reachable: starting degraded (failure policies apply until it is)"
                );
                false
            }
        }
    }

    fn backend_name(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    /// Cancelled on shutdown: ends every open SSE stream.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.events.shutdown_token()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts the order workers in this process (`orders`: `ship-order` and the sweep;
    /// `order-prep`: `reserve-stock` and `charge-payment`). Stop them with
    /// [`Workers::shutdown`], which hands unfinished jobs back to the queues.
    pub fn start_worker(&self) -> Workers {
        self.shipping.start_worker()
    }

    /// The job counts of one of the order queues ([`orders::SHIP_QUEUE`],
    /// [`orders::PREP_QUEUE`]), for dashboards and tests.
    ///
    /// # Errors
    ///
    /// When the store fails.
    pub async fn queue_counts(
        &self,
        queue: &str,
    ) -> Result<redtower_jobs::Counts, redtower_jobs::Error> {
        self.shipping.counts(queue).await
    }
}

/// `GET /metrics` without a token, to serve on the admin address `METRICS_ADDR`; `None` when
/// it is not set.
pub fn metrics_router(services: &Services) -> Option<Router> {
    services.config.metrics_addr?;
    let handle = services.metrics.clone()?;
    Some(prometheus::routes(handle, None))
}

/// The app's router. Serve it with `into_make_service_with_connect_info::<SocketAddr>()` so
/// rate limits see client addresses.
///
/// # Errors
///
/// When a rate limit from the configuration is invalid.
pub fn app(services: &Services) -> Result<Router, BuildError> {
    let config = &services.config;
    // Routes that never read a session stay outside the session layer: each layer goes
    // where it is used, so a public route pays for no cookie parsing or session setup.
    let public = Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .merge(services.events.public_routes())
        .merge(probes::public_routes())
        .merge(services.cache.routes())
        .merge(services.limits.routes(config)?)
        .merge(services.shipping.routes());
    let with_session = Router::new()
        .merge(services.sessions.routes(config)?)
        .merge(
            services
                .events
                .session_routes(services.sessions.users().clone()),
        )
        .merge(services.shipping.session_routes(config, &services.limits)?)
        .merge(probes::session_routes(services)?);
    let with_session = services.sessions.layer(with_session);
    // `GET /metrics` here only behind `METRICS_TOKEN`.
    let public = match (&services.metrics, &config.metrics_token) {
        (Some(handle), Some(token)) => {
            public.merge(prometheus::routes(handle.clone(), Some(token.clone())))
        }
        _ => public,
    };
    Ok(public
        .merge(with_session)
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // One `http.request` span per request, around every layer (see `telemetry`).
        .layer(telemetry::trace_requests())
        .with_state(services.clone())
        // `/plain` goes through no layer at all, not even the body limit.
        .merge(probes::plain_router()))
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../assets/index.html"))
}

async fn health(State(services): State<Services>) -> Response {
    match &services.redis {
        None => Json(json!({"status": "ok", "backend": "memory"})).into_response(),
        Some(redis) => {
            if redis.health().await.is_up() {
                Json(json!({"status": "ok", "backend": "redis"})).into_response()
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"status": "degraded", "backend": "redis"})),
                )
                    .into_response()
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
}
