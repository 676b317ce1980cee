//! With the `opentelemetry` feature: a publish stores its span's W3C trace context with the
//! event, and an SSE delivery span is that publish span's child, on memory and on Redis (a
//! real server from the testkit).
#![cfg(feature = "opentelemetry")]

use std::time::Duration;

use axum::{Router, body::Body};
use http_body_util::BodyExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use redtower_client::{Redis, RedisConfig};
use redtower_pubsub::{PubSub, Received, RedisStore, SseEndpoint};
use tower::ServiceExt;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

async fn publish_then_deliver(pubsub: PubSub) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    // DEBUG and up: delivery spans are DEBUG. This thread's default: the test runs on a
    // current-thread runtime, and the stream is polled here.
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test"))),
    );
    let sse = SseEndpoint::new(pubsub.clone());
    let app = Router::new().route("/events/{channel}", sse.method_router());
    let res = app
        .oneshot(
            http::Request::get("/events/traced")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
    let mut body = res.into_body();
    let mut sub = pubsub.subscribe("traced").await.unwrap();

    let request = tracing::info_span!("request");
    let id = pubsub
        .publish("traced", &serde_json::json!({"n": 1}))
        .instrument(request.clone())
        .await
        .unwrap();
    drop(request);

    let Received::Event(event) = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
    else {
        panic!("no event");
    };
    assert_eq!(event.id(), &id);
    let cx = event
        .trace_context()
        .expect("the publish stored its context");

    // The stream writes the event: its delivery span.
    let mut seen = String::new();
    while !seen.contains(&id.to_string()) {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let request = named(&spans, "request")[0];
    let publish = named(&spans, "redtower.pubsub.publish")[0];
    let subscribe = named(&spans, "redtower.pubsub.subscribe")[0];
    let trace_id = request.span_context.trace_id();
    assert_eq!(publish.span_context.trace_id(), trace_id);
    assert_eq!(publish.parent_span_id, request.span_context.span_id());
    // The stored context names the publish span.
    assert_eq!(
        cx.traceparent(),
        format!("00-{}-{}-01", trace_id, publish.span_context.span_id())
    );
    let deliver = named(&spans, "redtower.pubsub.deliver");
    assert_eq!(deliver.len(), 1);
    assert_eq!(deliver[0].span_context.trace_id(), trace_id);
    assert_eq!(deliver[0].parent_span_id, publish.span_context.span_id());
    assert!(deliver[0].parent_span_is_remote);
    assert_ne!(subscribe.span_context.trace_id(), trace_id);
}

#[tokio::test]
async fn memory_delivery_is_a_child_of_the_publish() {
    publish_then_deliver(PubSub::memory()).await;
}

#[tokio::test]
async fn redis_delivery_is_a_child_of_the_publish() {
    let redis = Redis::new(
        RedisConfig::from_url(&redtower_testkit::shared_url())
            .unwrap()
            .key_prefix(redtower_testkit::unique_prefix("ps-otel")),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    publish_then_deliver(PubSub::new(RedisStore::new(redis))).await;
}
