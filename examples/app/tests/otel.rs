//! OpenTelemetry end to end: `POST /orders` makes ONE trace holding the HTTP request, the
//! adding of the order's flow, the workers' runs of its three jobs (the `reserve-stock` and
//! `charge-payment` children and the `ship-order` parent, on other tasks, through the jobs'
//! stored trace context), the publish of the "shipped" event and its delivery to an open SSE
//! stream (through the event's stored trace context). On a testkit Redis and on the
//! in-process backends. Spans go to the SDK's in-memory exporter; the assertions are on trace
//! ids and parent links, never on timing.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use axum::{body::Body, extract::ConnectInfo};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use redtower_example::{Config, Services, app, telemetry};
use tower::ServiceExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt};

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef-otel";

/// One exporter for the test binary: the subscriber is global, so the worker's tasks, on any
/// runtime thread, report to it. Tests tell their spans apart by trace id.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let filter = EnvFilter::new(telemetry::DEFAULT_TRACES_FILTER);
        let subscriber = tracing_subscriber::registry()
            .with(telemetry::otel_layer(&provider).with_filter(filter));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        // The provider lives as long as the test binary.
        std::mem::forget(provider);
        exporter
    })
}

fn services(redis_url: Option<&str>) -> Services {
    let prefix = redtower_testkit::unique_prefix("otel");
    let mut vars = vec![
        ("SESSION_SECRET", SECRET.to_owned()),
        ("ORDER_SHIP_DELAY_MS", "0".to_owned()),
        ("REDIS_KEY_PREFIX", prefix),
    ];
    if let Some(url) = redis_url {
        vars.push(("REDIS_URL", url.to_owned()));
    }
    let config =
        Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .unwrap();
    Services::new(config).unwrap()
}

fn request(method: &str, uri: &str, body: Body) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    req
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The spans of trace `id`, by name (each name once in this trace, except as noted).
struct Trace {
    spans: Vec<SpanData>,
}

impl Trace {
    fn one(&self, name: &str) -> &SpanData {
        let found: Vec<_> = self.spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span in {:#?}", self.names());
        found[0]
    }

    fn names(&self) -> Vec<(String, SpanId, SpanId)> {
        self.spans
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    s.span_context.span_id(),
                    s.parent_span_id,
                )
            })
            .collect()
    }

    /// Whether `ancestor` is `span`'s parent, grandparent, ... within this trace.
    fn descends(&self, span: &SpanData, ancestor: &SpanData) -> bool {
        let by_id: HashMap<SpanId, &SpanData> = self
            .spans
            .iter()
            .map(|s| (s.span_context.span_id(), s))
            .collect();
        let mut parent = span.parent_span_id;
        while parent != SpanId::INVALID {
            if parent == ancestor.span_context.span_id() {
                return true;
            }
            parent = match by_id.get(&parent) {
                Some(s) => s.parent_span_id,
                None => return false,
            };
        }
        false
    }
}

/// The spans of `trace_id` once every one of `names` is among them.
async fn wait_for_trace(trace_id: TraceId, names: &[&str]) -> Trace {
    wait_for_spans(trace_id, names, 1).await
}

/// The spans of `trace_id` once every one of `names` is among them, at least `each` times.
async fn wait_for_spans(trace_id: TraceId, names: &[&str], each: usize) -> Trace {
    let started = Instant::now();
    loop {
        let spans: Vec<SpanData> = exporter()
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace_id)
            .collect();
        if names
            .iter()
            .all(|n| spans.iter().filter(|s| s.name == *n).count() >= each)
        {
            return Trace { spans };
        }
        let have: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "trace {trace_id} still lacks some of {names:?}: {have:?}"
        );
        // A span is exported when it closes, on whichever task ends it (the hook's span closes
        // after the event is already delivered); the exporter offers no notification.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn order_is_one_trace(services: Services) {
    exporter();
    let worker = services.start_worker();
    let router = app(&services).unwrap();

    // A live stream on the updates channel, opened first (its own trace).
    let sse = router
        .clone()
        .oneshot(request("GET", "/events/order:updates", Body::empty()))
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    let mut sse = sse.into_body();

    // The caller's trace: the request span is its child, and everything below joins it.
    let trace_id = TraceId::from(rand::random::<u128>() | 1);
    let caller_span = SpanId::from(rand::random::<u64>() | 1);
    let mut post = request(
        "POST",
        "/orders",
        Body::from(r#"{"email":"ada@example.com","item":"book"}"#),
    );
    post.headers_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let res = router.clone().oneshot(post).await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let placed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let order_id = placed["order_id"].as_str().unwrap().to_owned();
    let job_id = placed["job_id"].as_str().unwrap().to_owned();

    // The "shipped" event reaches the stream.
    let mut seen = String::new();
    while !(seen.contains(&order_id) && seen.contains("shipped")) {
        let frame = tokio::time::timeout(Duration::from_secs(20), sse.frame())
            .await
            .expect("the shipped event within 20 s")
            .expect("the stream stays open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }

    let trace = wait_for_trace(
        trace_id,
        &[
            // The `http.request` span, exported under its `otel.name`.
            "POST /orders",
            "redtower.ratelimit",
            "redtower.jobs.flow",
            "redtower.jobs.run",
            "redtower.jobs.hook",
            "redtower.pubsub.publish",
            "redtower.pubsub.deliver",
        ],
    )
    .await;
    // One run per job of the flow: the two children's and the parent's.
    let trace = match trace
        .spans
        .iter()
        .filter(|s| s.name == "redtower.jobs.run")
        .count()
    {
        3 => trace,
        _ => wait_for_spans(trace_id, &["redtower.jobs.run"], 3).await,
    };
    let http = trace.one("POST /orders");
    assert_eq!(
        http.parent_span_id, caller_span,
        "a child of the caller's span"
    );
    assert!(http.parent_span_is_remote);
    assert_eq!(attr(http, "http.route").as_deref(), Some("/orders"));
    assert_eq!(
        attr(http, "http.response.status_code").as_deref(),
        Some("202")
    );
    let limit = trace.one("redtower.ratelimit");
    // Under the session layer, which records the order in the session that placed it.
    assert!(trace.descends(limit, http), "{:#?}", trace.names());
    assert_eq!(attr(limit, "outcome").as_deref(), Some("allowed"));

    // The flow: added under the request; its parent is the `ship-order` job.
    let flow = trace.one("redtower.jobs.flow");
    assert!(trace.descends(flow, http), "{:#?}", trace.names());
    assert_eq!(attr(flow, "job.id"), Some(job_id.clone()));
    assert_eq!(attr(flow, "queue").as_deref(), Some("orders"));
    assert_eq!(attr(flow, "job.name").as_deref(), Some("ship-order"));
    assert_eq!(attr(flow, "flow.children").as_deref(), Some("2"));
    assert_eq!(attr(flow, "outcome").as_deref(), Some("new"));
    // No single add: the flow adds the order's jobs.
    assert!(
        trace
            .spans
            .iter()
            .all(|s| s.name != "redtower.jobs.enqueue"),
        "{:#?}",
        trace.names()
    );

    // The workers' spans: on other tasks, each a child of the flow's span through its job;
    // the children on `order-prep`, the parent on `orders`.
    let runs: Vec<&SpanData> = trace
        .spans
        .iter()
        .filter(|s| s.name == "redtower.jobs.run")
        .collect();
    let mut jobs: Vec<(String, String)> = runs
        .iter()
        .map(|r| (attr(r, "queue").unwrap(), attr(r, "job.name").unwrap()))
        .collect();
    jobs.sort();
    assert_eq!(
        jobs,
        [
            ("order-prep".to_owned(), "charge-payment".to_owned()),
            ("order-prep".to_owned(), "reserve-stock".to_owned()),
            ("orders".to_owned(), "ship-order".to_owned()),
        ]
    );
    for run in &runs {
        assert_eq!(run.parent_span_id, flow.span_context.span_id());
        assert!(run.parent_span_is_remote, "the parent came with the job");
        assert_eq!(attr(run, "outcome").as_deref(), Some("completed"));
    }
    let run = *runs
        .iter()
        .find(|r| attr(r, "queue").as_deref() == Some("orders"))
        .unwrap();
    assert_eq!(attr(run, "job.id"), Some(job_id));

    // The hook publishes the shipped event under the run (so do the job's progress events, on
    // its own channel); the delivery on `order:updates` is the shipped publish's child.
    let deliver = trace.one("redtower.pubsub.deliver");
    let publish = trace
        .spans
        .iter()
        .find(|s| {
            s.name == "redtower.pubsub.publish"
                && s.span_context.span_id() == deliver.parent_span_id
        })
        .expect("the delivery's publish is in the trace");
    assert!(trace.descends(publish, run), "{:#?}", trace.names());
    assert_eq!(attr(publish, "outcome").as_deref(), Some("published"));
    assert!(
        deliver.parent_span_is_remote,
        "the parent came with the event"
    );

    // The stream's own span is not part of the order's trace.
    assert!(
        trace
            .spans
            .iter()
            .all(|s| s.name != "redtower.pubsub.subscribe")
    );

    drop(sse);
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_over_redis() {
    let services = services(Some(&redtower_testkit::shared_url()));
    assert!(services.wait_for_redis().await);
    order_is_one_trace(services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_in_memory() {
    order_is_one_trace(services(None)).await;
}

/// Sends `req` under a fresh caller trace; returns the response and that trace's id.
async fn traced(router: &axum::Router, mut req: Request<Body>) -> (http::Response<Body>, TraceId) {
    let trace_id = TraceId::from(rand::random::<u128>() | 1);
    let parent = SpanId::from(rand::random::<u64>() | 1);
    req.headers_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent}-01").parse().unwrap(),
    );
    (router.clone().oneshot(req).await.unwrap(), trace_id)
}

async fn outcome_of(trace_id: TraceId, span: &str) -> Option<String> {
    let trace = wait_for_trace(trace_id, &[span]).await;
    attr(trace.one(span), "outcome")
}

/// The layers' spans record what they did: the response cache (miss, then hit) and the
/// session (none, new, loaded), each in the request's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_spans_record_their_outcomes() {
    exporter();
    let services = services(None);
    let router = app(&services).unwrap();
    let featured = || {
        let mut req = request("GET", "/products/featured", Body::empty());
        req.headers_mut()
            .insert("host", "shop.example".parse().unwrap());
        req
    };
    for want in ["miss", "hit"] {
        let (res, trace_id) = traced(&router, featured()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            outcome_of(trace_id, "redtower.cache").await.as_deref(),
            Some(want)
        );
    }

    let (res, trace_id) = traced(&router, request("GET", "/me", Body::empty())).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        outcome_of(trace_id, "redtower.session").await.as_deref(),
        Some("none")
    );
    let login = request("POST", "/login", Body::from(r#"{"user":"ada"}"#));
    let (res, trace_id) = traced(&router, login).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        outcome_of(trace_id, "redtower.session").await.as_deref(),
        Some("new")
    );
    let cookie = res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let mut me = request("GET", "/me", Body::empty());
    me.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (res, trace_id) = traced(&router, me).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        outcome_of(trace_id, "redtower.session").await.as_deref(),
        Some("loaded")
    );
}
