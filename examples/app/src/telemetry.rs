//! Logs, and OpenTelemetry traces when a collector is configured.
//!
//! [`init`] installs the app's `tracing` subscriber: the log lines (filtered by `RUST_LOG`,
//! default `info`) and, only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an OpenTelemetry layer
//! exporting spans over OTLP (HTTP/protobuf, `http://host:4318`) in batches. Without the
//! variable nothing else is installed and no span leaves the process. The exporter reads the
//! other `OTEL_*` variables itself (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`,
//! headers, timeout); the service name defaults to `redtower-example`.
//!
//! What ends up in a trace: [`trace_requests`]' `http.request` span for each request (exported
//! as `<method> <route>`, a child of the caller's `traceparent`, if any), the layers' spans (`redtower.ratelimit`,
//! `redtower.session`, `redtower.cache`: DEBUG, exported as `OTEL_TRACES_FILTER` allows, by
//! default `info,redtower=debug`), `redtower.jobs.enqueue`, the worker's `redtower.jobs.run`
//! for each attempt (its child through the job's stored trace context, on whichever instance
//! runs it), and `redtower.pubsub.publish` / `redtower.pubsub.deliver` for events.

use std::time::Duration;

use axum::{
    extract::{MatchedPath, Request},
    response::Response,
};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use redtower_client::TraceContext;
use tower_http::{
    classify::{ServerErrorsAsFailures, SharedClassifier},
    trace::TraceLayer,
};
use tracing::{Span, Subscriber};
use tracing_subscriber::{
    EnvFilter, Layer, layer::SubscriberExt, registry::LookupSpan, util::SubscriberInitExt,
};

/// The variable that turns OpenTelemetry export on.
pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Which spans are exported (an `EnvFilter`); defaults to [`DEFAULT_TRACES_FILTER`].
pub const TRACES_FILTER: &str = "OTEL_TRACES_FILTER";
/// Every span at INFO, and the layers' DEBUG spans.
pub const DEFAULT_TRACES_FILTER: &str = "info,redtower=debug";

/// What [`init`] installed; [`shutdown`](Self::shutdown) flushes it.
#[derive(Debug, Default)]
#[must_use = "call shutdown() at exit, or spans still in the batch are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Setting up the exporter failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A filter in `OTEL_TRACES_FILTER` or `RUST_LOG` does not parse.
    #[error("trace filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber was already installed.
    #[error("tracing subscriber: {0}")]
    Init(#[from] tracing_subscriber::util::TryInitError),
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still in the batch and stops the exporter. Blocks up to the
    /// exporter's timeout, on a blocking thread.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = done {
            tracing::warn!(%error, "flushing the last spans failed");
        }
    }
}

/// Installs the global subscriber: logs, plus OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set (see the [module docs](self)).
///
/// # Errors
///
/// When the exporter cannot be built, a filter does not parse, or a subscriber is already
/// installed.
pub fn init() -> Result<Telemetry, TelemetryError> {
    let logs = tracing_subscriber::fmt::layer()
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let endpoint = std::env::var(OTLP_ENDPOINT)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let Some(endpoint) = endpoint else {
        tracing_subscriber::registry().with(logs).try_init()?;
        return Ok(Telemetry::default());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("redtower-example");
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    let filter = match std::env::var(TRACES_FILTER) {
        Ok(f) if !f.trim().is_empty() => EnvFilter::try_new(f)?,
        _ => EnvFilter::try_new(DEFAULT_TRACES_FILTER)?,
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(otel_layer(&provider).with_filter(filter))
        .try_init()?;
    tracing::info!(%endpoint, "exporting traces over OTLP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The `tracing-opentelemetry` layer over `provider` (the app's, or a test's in-memory one).
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("redtower-example"))
}

/// The request tracing layer of [`trace_requests`].
pub type RequestTraceLayer = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request) -> Span,
    (),
    fn(&Response, Duration, &Span),
    (),
    (),
    (),
>;

/// An `http.request` span per request (INFO, `otel.kind = server`, exported as
/// `<method> <route>`, such as `POST /orders`), a child of the request's W3C `traceparent` when
/// it carries a valid one; the route template, never the raw path, and the response status.
/// tower-http's [`TraceLayer`] with this app's span and no events of its own: when the span is
/// filtered out (`RUST_LOG=warn` and no collector), a request pays for nothing but the check.
pub fn trace_requests() -> RequestTraceLayer {
    TraceLayer::new_for_http()
        .make_span_with(request_span as fn(&Request) -> Span)
        .on_request(())
        .on_response(record_status as fn(&Response, Duration, &Span))
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

/// The span of one request; its fields are only computed when the span is enabled.
fn request_span(req: &Request) -> Span {
    let route = || {
        req.extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str)
    };
    let method = req.method().as_str();
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        otel.name = format!("{method} {}", route()),
        http.request.method = method,
        http.route = route(),
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if !span.is_disabled()
        && let Some(parent) = caller_context(req.headers())
    {
        parent.set_parent_of(&span);
    }
    span
}

/// Records the response's status on the request's span.
fn record_status(res: &Response, _latency: Duration, span: &Span) {
    span.record("http.response.status_code", res.status().as_u16());
    if res.status().is_server_error() {
        span.record("otel.status_code", "error");
    }
}

/// The caller's W3C trace context (`traceparent`, `tracestate`), when it sent a valid one.
fn caller_context(headers: &http::HeaderMap) -> Option<TraceContext> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    TraceContext::new(header("traceparent")?, header("tracestate"))
}
