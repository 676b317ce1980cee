//! With the `opentelemetry` feature: the worker's span for a job is the OpenTelemetry child of
//! the span that enqueued it, on memory and on Redis (a real server from the testkit), and
//! every attempt of a retried job joins the same trace; a flow's children and parent join the
//! trace of the span that added the flow.
#![cfg(feature = "opentelemetry")]

use std::{sync::Arc, time::Duration};

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{
    Backoff, Flow, Job, JobContext, JobError, MemoryStore, Queue, QueueStore, RedisStore, Worker,
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

#[derive(Serialize, Deserialize)]
struct Pick {
    sku: String,
}

impl Job for Pick {
    const NAME: &'static str = "pick";
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

/// A flow added under a request span: one `redtower.jobs.flow` span, the request's child;
/// every child's attempt and the parent's are its children (on their own queues), all in the
/// request's trace. Adding the same flow again is recorded as `existing`.
async fn flow_is_one_trace(store: Arc<dyn QueueStore>) {
    let (exporter, provider, _guard) = otel();
    let shipping = Queue::<Ship>::new(store.clone(), "flow-ship");
    let picking = Queue::<Pick>::new(store.clone(), "flow-pick");
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let pickers = Worker::new(store.clone(), "flow-pick")
        .handle::<Pick>(|p: Pick, ctx: JobContext| async move {
            ctx.set_flow_result(&p.sku)?;
            Ok::<_, JobError>(())
        })
        .start();
    let shippers = Worker::new(store, "flow-ship")
        .handle::<Ship>(|_: Ship, ctx: JobContext| async move {
            assert_eq!(ctx.children().len(), 2);
            Ok::<_, JobError>(())
        })
        .on_completed(move |_| {
            let tx = done_tx.clone();
            async move {
                let _ = tx.send(());
            }
        })
        .start();

    let request = tracing::info_span!("request");
    let flow = || {
        Flow::new(&shipping, Ship { fail_first: false })
            .id("order-1")
            .child("mug", &picking, Pick { sku: "MUG".into() })
            .child("card", &picking, Pick { sku: "CARD".into() })
    };
    let ids = flow().add().instrument(request.clone()).await.unwrap();
    drop(request);
    done_rx.recv().await.unwrap();
    // The same flow again, in a span of its own: nothing is added.
    let again = tracing::info_span!("retry");
    let same = flow().add().instrument(again.clone()).await.unwrap();
    drop(again);
    assert!(same.existing);
    assert_eq!(same.parent, ids.parent);
    pickers.shutdown().await.unwrap();
    shippers.shutdown().await.unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let request = named(&spans, "request")[0];
    let trace_id = request.span_context.trace_id();
    let flows = named(&spans, "redtower.jobs.flow");
    assert_eq!(flows.len(), 2);
    let flow = flows
        .iter()
        .find(|s| s.span_context.trace_id() == trace_id)
        .expect("the first add's span is in the request's trace");
    assert_eq!(flow.parent_span_id, request.span_context.span_id());
    assert_eq!(attr(flow, "outcome").as_deref(), Some("new"));
    assert_eq!(attr(flow, "job.id"), Some(ids.parent.to_string()));
    assert_eq!(attr(flow, "queue").as_deref(), Some("flow-ship"));
    assert_eq!(attr(flow, "job.name").as_deref(), Some("ship"));
    assert_eq!(attr(flow, "flow.children").as_deref(), Some("2"));
    let retry = named(&spans, "retry")[0];
    let second = flows
        .iter()
        .find(|s| s.parent_span_id == retry.span_context.span_id())
        .expect("the second add's span is the retry's child");
    assert_eq!(attr(second, "outcome").as_deref(), Some("existing"));
    assert_eq!(attr(second, "job.id"), Some(ids.parent.to_string()));

    let runs = named(&spans, "redtower.jobs.run");
    assert_eq!(
        runs.len(),
        3,
        "two children and the parent, one attempt each"
    );
    let mut expected: Vec<(String, String)> = ids
        .children
        .iter()
        .map(|(_, id)| ("flow-pick".to_owned(), id.to_string()))
        .collect();
    expected.push(("flow-ship".to_owned(), ids.parent.to_string()));
    expected.sort();
    let mut seen: Vec<(String, String)> = runs
        .iter()
        .map(|r| (attr(r, "queue").unwrap(), attr(r, "job.id").unwrap()))
        .collect();
    seen.sort();
    assert_eq!(seen, expected);
    for run in runs {
        assert_eq!(run.span_context.trace_id(), trace_id, "same trace");
        assert_eq!(run.parent_span_id, flow.span_context.span_id());
        assert!(
            run.parent_span_is_remote,
            "the parent came through the store"
        );
        assert_eq!(attr(run, "outcome").as_deref(), Some("completed"));
    }
}

/// A flow whose creator stopped after adding the parent: the worker that adds its children
/// from the stored specs gives them the flow's trace context (kept in the specs).
async fn half_added_flow_keeps_the_trace(store: Arc<dyn QueueStore>) {
    use opentelemetry::trace::TraceId;
    let (exporter, provider, _guard) = otel();
    let trace_id = TraceId::from(rand::random::<u128>() | 1);
    let flow_span = SpanId::from(rand::random::<u64>() | 1);
    let traceparent = format!("00-{trace_id}-{flow_span}-01");
    // Step 1 of `Flow::add` only, as a creator killed right after it leaves it.
    let backoff = serde_json::to_value(Backoff::default()).unwrap();
    let spec = serde_json::json!([{
        "queue": "half-pick", "key": "mug", "name": "pick", "data": r#"{"sku":"MUG"}"#,
        "max": 3, "backoff": backoff, "prio": 0, "delay_ms": 0, "tc": traceparent,
    }]);
    let parent = store
        .add_parent(
            "half-ship",
            redtower_jobs::NewJob::new("ship", r#"{"fail_first":false}"#),
            vec![redtower_jobs::FlowDep::new(
                "mug",
                redtower_jobs::ChildFailure::FailParent,
            )],
            spec.to_string(),
        )
        .await
        .unwrap();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let shippers = Worker::new(store.clone(), "half-ship")
        .poll_interval(Duration::from_millis(50))
        .flow_unsealed_after(Duration::from_millis(100))
        .handle::<Ship>(|_: Ship, _: JobContext| async { Ok::<_, JobError>(()) })
        .on_completed(move |_| {
            let tx = done_tx.clone();
            async move {
                let _ = tx.send(());
            }
        })
        .start();
    let pickers = Worker::new(store, "half-pick")
        .handle::<Pick>(|_: Pick, _: JobContext| async { Ok::<_, JobError>(()) })
        .start();
    done_rx.recv().await.unwrap();
    shippers.shutdown().await.unwrap();
    pickers.shutdown().await.unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let runs = named(&spans, "redtower.jobs.run");
    let pick = runs
        .iter()
        .find(|r| attr(r, "queue").as_deref() == Some("half-pick"))
        .expect("the child ran");
    assert_eq!(pick.span_context.trace_id(), trace_id);
    assert_eq!(pick.parent_span_id, flow_span);
    assert!(pick.parent_span_is_remote);
    let ship = runs
        .iter()
        .find(|r| attr(r, "queue").as_deref() == Some("half-ship"))
        .expect("the parent ran");
    assert_eq!(attr(ship, "job.id"), Some(parent.id().to_string()));
}

#[tokio::test]
async fn memory_half_added_flow_keeps_the_trace() {
    half_added_flow_keeps_the_trace(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn redis_half_added_flow_keeps_the_trace() {
    half_added_flow_keeps_the_trace(redis_store("otel-half").await).await;
}

#[tokio::test]
async fn memory_flow_jobs_are_children_of_the_flow_span() {
    flow_is_one_trace(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn redis_flow_jobs_are_children_of_the_flow_span() {
    flow_is_one_trace(redis_store("otel-flow").await).await;
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
