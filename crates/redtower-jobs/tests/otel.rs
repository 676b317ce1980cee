//! With the `opentelemetry` feature: the worker's span for a job is the OpenTelemetry child of
//! the span that enqueued it, on memory and on Redis (a real server from the testkit), and
//! every attempt of a retried job joins the same trace.
#![cfg(feature = "opentelemetry")]

use std::{sync::Arc, time::Duration};

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{
    Backoff, Job, JobContext, JobError, MemoryStore, Queue, QueueStore, RedisStore, Worker,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Serialize, Deserialize)]
struct Ship {
    fail_first: bool,
}

impl Job for Ship {
    const NAME: &'static str = "ship";
}

/// A subscriber exporting every span to memory, as this thread's default (the tests run on
/// a current-thread runtime, so the worker's tasks see it too).
fn otel() -> (
    InMemorySpanExporter,
    SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let guard = tracing::subscriber::set_default(subscriber);
    (exporter, provider, guard)
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

async fn enqueue_and_run(store: Arc<dyn QueueStore>) {
    let (exporter, provider, _guard) = otel();
    let queue = Queue::<Ship>::new(store.clone(), "ship");
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let worker = Worker::new(store, "ship")
        .handle::<Ship>(|job: Ship, ctx: JobContext| async move {
            tracing::info!("shipping");
            if job.fail_first && ctx.attempt() == 1 {
                return Err(JobError::retry("not yet"));
            }
            Ok(())
        })
        .on_completed(move |_| {
            let tx = done_tx.clone();
            async move {
                let _ = tx.send(());
            }
        })
        .start();

    let request = tracing::info_span!("request");
    let request_cx = {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        request.context()
    };
    let id = async {
        queue
            .add(Ship { fail_first: true })
            .backoff(Backoff::fixed(Duration::from_millis(1)))
            .await
            .unwrap()
    }
    .instrument(request.clone())
    .await;
    drop(request);
    // Completed after one retry: both attempts ran.
    done_rx.recv().await.unwrap();
    worker.shutdown().await.unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let request = named(&spans, "request")[0];
    let trace_id = request.span_context.trace_id();
    assert_eq!(
        {
            use opentelemetry::trace::TraceContextExt;
            request_cx.span().span_context().trace_id()
        },
        trace_id
    );
    let enqueue = named(&spans, "redtower.jobs.enqueue");
    assert_eq!(enqueue.len(), 1);
    let enqueue = enqueue[0];
    assert_eq!(enqueue.span_context.trace_id(), trace_id);
    assert_eq!(enqueue.parent_span_id, request.span_context.span_id());
    assert_eq!(attr(enqueue, "outcome").as_deref(), Some("new"));
    assert_eq!(attr(enqueue, "job.id"), Some(id.to_string()));

    let mut runs = named(&spans, "redtower.jobs.run");
    runs.sort_by_key(|s| attr(s, "job.attempt"));
    assert_eq!(runs.len(), 2, "one span per attempt");
    for (run, (attempt, outcome)) in runs.iter().zip([("1", "retrying"), ("2", "completed")]) {
        assert_eq!(run.span_context.trace_id(), trace_id, "same trace");
        assert_eq!(run.parent_span_id, enqueue.span_context.span_id());
        assert!(
            run.parent_span_is_remote,
            "the parent came through the store"
        );
        assert_eq!(attr(run, "job.attempt").as_deref(), Some(attempt));
        assert_eq!(attr(run, "outcome").as_deref(), Some(outcome));
        assert_eq!(attr(run, "job.id"), Some(id.to_string()));
        assert_eq!(attr(run, "queue").as_deref(), Some("ship"));
    }
    let hooks = named(&spans, "redtower.jobs.hook");
    let completed = hooks
        .iter()
        .find(|h| attr(h, "hook").as_deref() == Some("completed"))
        .unwrap();
    assert_eq!(completed.span_context.trace_id(), trace_id);
    assert_eq!(completed.parent_span_id, runs[1].span_context.span_id());
    assert_ne!(runs[1].parent_span_id, SpanId::INVALID);
}

/// Without a context stored (a job added outside any span), the attempt's span starts a trace
/// of its own.
async fn no_context_is_a_root(store: Arc<dyn QueueStore>) {
    let (exporter, provider, _guard) = otel();
    let queue = Queue::<Ship>::new(store.clone(), "plain");
    // Added with no OpenTelemetry layer in place: nothing is captured.
    let id = {
        let _none = tracing::subscriber::set_default(tracing_subscriber::registry());
        queue.add(Ship { fail_first: false }).await.unwrap()
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = Worker::new(store, "plain")
        .handle::<Ship>(|_: Ship, _: JobContext| async { Ok(()) })
        .on_completed(move |_| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
            }
        })
        .start();
    rx.recv().await.unwrap();
    worker.shutdown().await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let run = named(&spans, "redtower.jobs.run")[0];
    assert_eq!(run.parent_span_id, SpanId::INVALID);
    assert_eq!(attr(run, "job.id"), Some(id.to_string()));
}

#[tokio::test]
async fn memory_worker_span_is_a_child_of_the_enqueue_span() {
    enqueue_and_run(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn memory_job_without_context_starts_a_trace() {
    no_context_is_a_root(Arc::new(MemoryStore::new())).await;
}

async fn redis_store(test: &str) -> Arc<dyn QueueStore> {
    let redis = Redis::new(
        RedisConfig::from_url(&redtower_testkit::shared_url())
            .unwrap()
            .key_prefix(redtower_testkit::unique_prefix(test)),
    )
    .unwrap();
    redis.wait_ready(Duration::from_secs(10)).await.unwrap();
    Arc::new(RedisStore::new(redis))
}

#[tokio::test]
async fn redis_worker_span_is_a_child_of_the_enqueue_span() {
    enqueue_and_run(redis_store("otel-child").await).await;
}

#[tokio::test]
async fn redis_job_without_context_starts_a_trace() {
    no_context_is_a_root(redis_store("otel-root").await).await;
}
