//! Metrics counters (labelled by policy, never by subject) and WARN once per outage transition.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, body::Body, extract::ConnectInfo, routing::get};
use http::{Request, StatusCode};
use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use redtower_ratelimit::{
    Decision, MemoryStore, Policy, Quota, RateLimitLayer, RateLimitStore, Subject, nonzero,
};
use redtower_testkit::LogBuffer;
use tower::ServiceExt;

/// Counts every counter increment by `name{labels}`.
#[derive(Default, Clone)]
struct Counts(Arc<Mutex<BTreeMap<String, u64>>>);

struct One(String, Counts);

impl CounterFn for One {
    fn increment(&self, value: u64) {
        *self.1.0.lock().unwrap().entry(self.0.clone()).or_default() += value;
    }
    fn absolute(&self, _: u64) {}
}

impl metrics::Recorder for Counts {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        Counter::from_arc(Arc::new(One(name, self.clone())))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl Counts {
    fn get(&self, name: &str) -> u64 {
        self.0.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, Default)]
struct Switch {
    down: Arc<AtomicBool>,
    memory: MemoryStore,
}

#[async_trait::async_trait]
impl RateLimitStore for Switch {
    async fn check(
        &self,
        s: &Subject,
        p: &[Policy],
        cost: u32,
    ) -> redtower_ratelimit::Result<Decision> {
        if self.down.load(Ordering::SeqCst) {
            return Err(redtower_ratelimit::Error::Timeout(
                std::time::Duration::ZERO,
            ));
        }
        self.memory.check(s, p, cost).await
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn counters_by_policy_and_one_warn_per_transition() {
    let counts = Counts::default();
    let _metrics = metrics::set_default_local_recorder(&counts);
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _tracing = tracing::subscriber::set_default(subscriber);

    let store = Switch::default();
    let layer = RateLimitLayer::new(
        store.clone(),
        Policy::new("api", Quota::per_hour(nonzero!(2))),
    )
    .policy(Policy::new("dry", Quota::per_hour(nonzero!(1))).shadow(true))
    .denied_cache(100);
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    let send = || {
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        app.clone().oneshot(
            Request::get("/")
                .extension(ConnectInfo(peer))
                .body(Body::empty())
                .unwrap(),
        )
    };
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        send().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        counts.get("redtower_ratelimit_allowed_total{policy=api}"),
        2
    );
    assert_eq!(
        counts.get("redtower_ratelimit_allowed_total{policy=dry}"),
        1
    );
    assert_eq!(
        counts.get("redtower_ratelimit_shadow_limited_total{policy=dry}"),
        2
    );
    assert_eq!(
        counts.get("redtower_ratelimit_limited_total{policy=api}"),
        1
    );
    assert_eq!(
        counts.get("redtower_ratelimit_local_cache_hit_total{policy=api}"),
        1
    );

    store.down.store(true, Ordering::SeqCst);
    let other = || {
        let peer: SocketAddr = "192.0.2.2:1".parse().unwrap();
        app.clone().oneshot(
            Request::get("/")
                .extension(ConnectInfo(peer))
                .body(Body::empty())
                .unwrap(),
        )
    };
    for _ in 0..10 {
        assert_eq!(other().await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        counts.get("redtower_ratelimit_fail_open_total{policy=api}"),
        10
    );
    store.down.store(false, Ordering::SeqCst);
    tokio::time::advance(std::time::Duration::from_secs(1)).await;
    for _ in 0..3 {
        let _ = other().await.unwrap();
    }
    let text = logs.text();
    assert_eq!(text.matches("WARN").count(), 1, "{text}");
    assert_eq!(
        text.matches("rate limit store recovered").count(),
        1,
        "{text}"
    );
    assert!(!text.contains("192.0.2"), "no subject in logs: {text}");
    let keys = counts
        .0
        .lock()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(!keys.contains("192.0.2"), "no subject in metrics: {keys}");
}
