//! `GET /metrics`: every redtower crate's metrics (and anything else recorded through the
//! [`metrics`] facade) in the Prometheus text format, rendered by
//! [`metrics-exporter-prometheus`](metrics_exporter_prometheus) without its own HTTP listener.
//!
//! Off by default (no recorder is installed, so recording costs nothing). Two ways to turn it
//! on, usable together:
//!
//! * `METRICS_TOKEN` (16+ characters): `GET /metrics` on the app's own address, answered only
//!   with `Authorization: Bearer <token>` (401 otherwise). In Prometheus:
//!   `authorization: { credentials: <token> }` in the scrape config.
//! * `METRICS_ADDR` (`127.0.0.1:9100`): `GET /metrics` on a separate admin address, without a
//!   token: keep that address off the public network (loopback, a private interface or a
//!   firewall rule).
//!
//! The exporter's recorder is process-wide: [`handle`] installs it once per process, however
//! many times the app is built (tests build it many times).

use std::{sync::OnceLock, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// How often histograms are drained into their summaries (the exporter leaves it to the
/// caller when it runs no listener of its own).
const UPKEEP: Duration = Duration::from_secs(5);

/// The bearer token `GET /metrics` on the app's address asks for (`METRICS_TOKEN`). Only its
/// SHA-256 is kept, so it never shows in a `Debug` print of the configuration, and a check
/// compares digests, whose time says nothing about how much of a guess was right.
#[derive(Clone, PartialEq, Eq)]
pub struct MetricsToken([u8; 32]);

impl MetricsToken {
    /// The shortest token accepted.
    pub const MIN_LEN: usize = 16;

    /// A token; `None` when shorter than [`MIN_LEN`](Self::MIN_LEN).
    pub fn new(token: &str) -> Option<Self> {
        (token.len() >= Self::MIN_LEN).then(|| Self(Sha256::digest(token.as_bytes()).into()))
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`.
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|presented| {
                <[u8; 32]>::from(Sha256::digest(presented.trim().as_bytes())) == self.0
            })
    }
}

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(..)")
    }
}

/// The process's Prometheus handle: installs the exporter's recorder as the global
/// [`metrics`] recorder on the first call, and starts its upkeep thread. When another
/// recorder was installed first, logs a warning and returns a handle that renders nothing.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed: /metrics renders nothing");
                return handle;
            }
            let upkeep = handle.clone();
            let started = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(error) = started {
                tracing::warn!(%error, "metrics upkeep thread not started: histograms are drained on each scrape only");
            }
            handle
        })
        .clone()
}

/// What the `/metrics` routes need.
#[derive(Clone)]
struct Scrape {
    handle: PrometheusHandle,
    token: Option<MetricsToken>,
}

/// `GET /metrics` rendering `handle`; with `token`, only for `Authorization: Bearer <token>`.
pub(crate) fn routes<S>(handle: PrometheusHandle, token: Option<MetricsToken>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape { handle, token })
}

async fn scrape(State(scrape): State<Scrape>, headers: HeaderMap) -> Response {
    if let Some(token) = &scrape.token {
        if !token.authorizes(&headers) {
            let error = ApiError::new(StatusCode::UNAUTHORIZED, "a bearer token is required");
            return ([(header::WWW_AUTHENTICATE, "Bearer")], error).into_response();
        }
    }
    // Histograms are drained here too, so a scrape sees every sample recorded before it.
    scrape.handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        scrape.handle.render(),
    )
        .into_response()
}
